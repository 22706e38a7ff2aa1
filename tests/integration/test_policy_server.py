"""The asyncio policy server over real sockets (127.0.0.1 and a unix socket in tmp_path):
many requests per connection, hostile input, limits, timeouts, drain and app wiring."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from listgate.app import build_gate, build_policy_service, serve
from listgate.config import Config, parse_config
from listgate.decision.facts import PENDING, FactSource, ListFacts, LookupNow
from listgate.decision.model import PostingRequest
from listgate.facts.static import StaticBackend
from listgate.policyd import NEED_DATA, ReplyReader, encode_request
from listgate.server.policy import PolicyService

LIST = "list@example.org"
MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"
POSTERS = {LIST: [MEMBER]}
REJECT = f"550 5.7.1 <{OUTSIDER}> is not allowed to post to <{LIST}>"


def make_config(policy: Mapping[str, Any] | None = None, **sections: Any) -> Config:
    """A config with POSTERS, the milter on a free port and the policy listener as given."""
    data: dict[str, Any] = {
        "milter": {"listen": ["inet:127.0.0.1:0"]},
        "policy": {"listen": ["inet:127.0.0.1:0"], **(policy or {})},
        "static": {"posters": POSTERS},
        **sections,
    }
    return parse_config(data, "<test>")


@dataclass
class PolicyDaemon:
    """A PolicyService running on its own loop in a thread."""

    service: PolicyService
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop_event: asyncio.Event

    @property
    def port(self) -> int:
        """The TCP port of the first inet listener."""
        return int(self.service.addresses[0].rsplit(":", 1)[1])

    def call(self, fn: Any) -> Any:
        """Run *fn* on the daemon's loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        """Drain and stop; wait for the thread."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(15)
        assert not self.thread.is_alive(), "policy daemon did not stop"


@contextmanager
def run_policy(config: Config, backend: FactSource | None = None) -> Iterator[PolicyDaemon]:
    """Start the policy service of *config* in a thread; drain it on exit."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        service = build_policy_service(config, build_gate(config, backend))
        assert service is not None
        holder.update(loop=asyncio.get_running_loop(), stop=stop, service=service)
        try:
            await service.start()
        finally:
            ready.set()
        try:
            await stop.wait()
        finally:
            await service.stop()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            holder.setdefault("error", exc)
            ready.set()

    thread = threading.Thread(target=target, name="listgate-policy", daemon=True)
    thread.start()
    assert ready.wait(10), "policy daemon did not start"
    if "error" in holder:
        raise holder["error"]
    daemon = PolicyDaemon(holder["service"], holder["loop"], thread, holder["stop"])
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def daemon() -> Iterator[PolicyDaemon]:
    """The policy service with the default test config on a free 127.0.0.1 port."""
    with run_policy(make_config()) as d:
        yield d


def rcpt(sender: str, recipient: str, **extra: str) -> dict[str, str]:
    """The attributes of a Postfix RCPT-state request."""
    return {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": "127.0.0.1", "queue_id": "", "sender": sender,
        "recipient": recipient, "instance": "abc.1", **extra,
    }


class PolicyClient:
    """A blocking policy client (the MTA's side) over one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = ReplyReader()

    @classmethod
    def tcp(cls, port: int, timeout: float = 5.0) -> PolicyClient:
        """Connect to 127.0.0.1:*port*."""
        return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout))

    @classmethod
    def unix(cls, path: str | Path, timeout: float = 5.0) -> PolicyClient:
        """Connect to a unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        return cls(sock)

    def replies(self, count: int) -> list[str]:
        """Read *count* replies; their actions."""
        out: list[str] = []
        while len(out) < count:
            reply = self.reader.next_reply()
            if reply is NEED_DATA:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed by the server after {len(out)} replies")
                self.reader.receive_data(data)
                continue
            assert isinstance(reply, dict)
            assert set(reply) == {"action"}
            out.append(reply["action"])
        return out

    def ask(self, *requests: Mapping[str, str]) -> list[str]:
        """Send every request in one write (pipelined) and read one reply each."""
        self.sock.sendall(b"".join(encode_request(r) for r in requests))
        return self.replies(len(requests))

    def closed_by_peer(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; what it sent meanwhile."""
        self.sock.settimeout(timeout)
        received = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def assert_served(port: int) -> None:
    """A fresh connection still gets a correct answer."""
    client = PolicyClient.tcp(port)
    try:
        assert client.ask(rcpt(OUTSIDER, LIST)) == [REJECT]
    finally:
        client.close()


# ----------------------------------------------------------------- conversations


def test_many_requests_on_one_connection(daemon: PolicyDaemon) -> None:
    """Member, non-member, other recipient and other states, one after another on one socket."""
    client = PolicyClient.tcp(daemon.port)
    try:
        assert client.ask(rcpt(MEMBER, LIST)) == ["DUNNO"]
        assert client.ask(rcpt(OUTSIDER, LIST)) == [REJECT]
        assert client.ask(rcpt(OUTSIDER, "alice@example.org")) == ["DUNNO"]
        assert client.ask(rcpt(OUTSIDER, LIST, protocol_state="DATA")) == ["DUNNO"]
        assert client.ask(rcpt("<Member@Example.COM>", "LIST@example.org")) == ["DUNNO"]
        assert client.ask(rcpt("", LIST)) == [
            f"550 5.7.1 <> is not allowed to post to <{LIST}>"
        ]
        for _ in range(50):
            assert client.ask(rcpt(OUTSIDER, LIST)) == [REJECT]
    finally:
        client.close()
    assert daemon.service.accepted == 1


def test_pipelined_requests_are_answered_in_order(daemon: PolicyDaemon) -> None:
    """Requests sent in one write get one reply each, in request order."""
    client = PolicyClient.tcp(daemon.port)
    try:
        requests = [rcpt(OUTSIDER, LIST), rcpt(MEMBER, LIST), rcpt(OUTSIDER, "bob@example.org")]
        assert client.ask(*requests * 20) == [REJECT, "DUNNO", "DUNNO"] * 20
    finally:
        client.close()


def test_request_split_into_single_bytes(daemon: PolicyDaemon) -> None:
    """A request trickled one byte per write is still one request and one reply."""
    client = PolicyClient.tcp(daemon.port)
    try:
        for byte in encode_request(rcpt(OUTSIDER, LIST)):
            client.sock.sendall(bytes([byte]))
        assert client.replies(1) == [REJECT]
    finally:
        client.close()


def test_crlf_and_unknown_attributes(daemon: PolicyDaemon) -> None:
    """\\r\\n line endings and attributes listgate does not know are accepted."""
    client = PolicyClient.tcp(daemon.port)
    try:
        data = encode_request(rcpt(OUTSIDER, LIST, x_new_in_postfix_9="1")).replace(b"\n", b"\r\n")
        client.sock.sendall(data)
        assert client.replies(1) == [REJECT]
    finally:
        client.close()


def test_unix_socket_in_tmp_path(tmp_path: Path) -> None:
    """The same service on a unix socket, with the configured mode; removed on stop."""
    path = tmp_path / "policy.sock"
    config = make_config({"listen": f"unix:{path}", "socket_mode": "0600"})
    with run_policy(config) as d:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        client = PolicyClient.unix(path)
        try:
            assert client.ask(rcpt(MEMBER, LIST), rcpt(OUTSIDER, LIST)) == ["DUNNO", REJECT]
        finally:
            client.close()
        assert d.service.addresses == [f"unix:{path}"]
    assert not path.exists()


def test_one_decision_log_line_per_judged_request(
    daemon: PolicyDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A list decision logs one INFO line with the milter's fields; untouched recipients
    log nothing at INFO."""
    caplog.set_level(logging.INFO, logger="listgate.decision")
    client = PolicyClient.tcp(daemon.port)
    try:
        assert client.ask(rcpt(OUTSIDER, LIST, queue_id="4Vq1")) == [REJECT]
        assert client.ask(rcpt(OUTSIDER, "alice@example.org")) == ["DUNNO"]
    finally:
        client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "listgate.decision"]
    assert len(lines) == 1
    [line] = lines
    assert line.startswith("[c")
    for part in ("queue=4Vq1", "client=127.0.0.1", f"from=<{OUTSIDER}>", f"to=<{LIST}>",
                 f"list={LIST}", "verdict=reject", f"reply={REJECT}", "reason=", "latency="):
        assert part in line, part


def test_hostile_values_cannot_forge_log_lines(
    daemon: PolicyDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """Control and non-UTF-8 bytes in a sender are shown escaped in the one log line."""
    caplog.set_level(logging.INFO, logger="listgate.decision")
    client = PolicyClient.tcp(daemon.port)
    try:
        client.sock.sendall(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\n"
            b"sender=evil\x1b[2J\xff@example.net\nrecipient=list@example.org\n\n"
        )
        [action] = client.replies(1)
    finally:
        client.close()
    assert action.startswith("550 5.7.1 <evil?[2j?@example.net> is not allowed")
    [line] = [r.getMessage() for r in caplog.records if r.name == "listgate.decision"]
    assert "\x1b" not in line
    assert "\\x1b" in line


# ----------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a policy request\n",
        b"\n",
        b"=value\n\n",
        b"x" * 9000,
        b"GET / HTTP/1.0\r\n\r\n",
    ],
    ids=["no-equals", "empty-request", "empty-name", "oversized-line", "http"],
)
def test_garbage_closes_only_that_connection(
    daemon: PolicyDaemon, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage closes its connection with one WARNING; a parallel connection is unaffected."""
    caplog.set_level(logging.WARNING, logger="listgate.policy")
    bystander = PolicyClient.tcp(daemon.port)
    bad = PolicyClient.tcp(daemon.port)
    try:
        assert bystander.ask(rcpt(MEMBER, LIST)) == ["DUNNO"]
        bad.sock.sendall(garbage)
        assert bad.closed_by_peer() == b""
        assert bystander.ask(rcpt(OUTSIDER, LIST)) == [REJECT]
    finally:
        bad.close()
        bystander.close()
    assert_served(daemon.port)
    warnings = [r.getMessage() for r in caplog.records if r.name == "listgate.policy"
                and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "closing policy connection from 127.0.0.1:" in warnings[0]


def test_replies_before_the_defect_are_still_sent(daemon: PolicyDaemon) -> None:
    """Complete requests ahead of garbage in the same write get their replies, then close."""
    bad = PolicyClient.tcp(daemon.port)
    try:
        bad.sock.sendall(encode_request(rcpt(OUTSIDER, LIST)) + b"garbage\n")
        assert bad.closed_by_peer() == f"action={REJECT}\n\n".encode()
    finally:
        bad.close()


def test_configured_limits_close_the_connection() -> None:
    """max_line_length and max_attributes from [policy] are enforced per connection."""
    with run_policy(make_config({"max_line_length": 512, "max_attributes": 40})) as d:
        long_line = PolicyClient.tcp(d.port)
        long_line.sock.sendall(encode_request(rcpt(OUTSIDER, LIST, helo_name="h" * 600)))
        assert long_line.closed_by_peer() == b""
        many = PolicyClient.tcp(d.port)
        many.sock.sendall(encode_request({**rcpt(OUTSIDER, LIST),
                                          **{f"x{i}": "1" for i in range(40)}}))
        assert many.closed_by_peer() == b""
        fits = PolicyClient.tcp(d.port)
        assert fits.ask(rcpt(OUTSIDER, LIST, helo_name="h" * 400)) == [REJECT]
        for c in (long_line, many, fits):
            c.close()


def _send_without_end(sock: socket.socket, total: int) -> None:
    for _ in range(total // 65536):
        sock.sendall(b"y" * 65536)


def test_huge_stream_without_newline_is_cut_early(daemon: PolicyDaemon) -> None:
    """Megabytes without a line end are refused after the first line's worth."""
    bad = PolicyClient.tcp(daemon.port)
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            _send_without_end(bad.sock, 2000 * 65536)
    finally:
        bad.close()
    assert_served(daemon.port)


# ----------------------------------------------------------------- limits and lifecycle


def test_idle_timeout_closes_the_connection() -> None:
    """A connection that sends no complete request within idle_timeout is closed."""
    with run_policy(make_config({"idle_timeout": 0.3})) as d:
        client = PolicyClient.tcp(d.port)
        assert client.ask(rcpt(MEMBER, LIST)) == ["DUNNO"]
        client.sock.sendall(b"request=smtpd_access_policy\n")  # partial: does not extend it
        started = time.monotonic()
        assert client.closed_by_peer() == b""
        assert time.monotonic() - started < 3
        client.close()
        assert_served(d.port)


def test_max_connections_refuses_the_extra_connection() -> None:
    """Above max_connections a new connection is closed at once; the others still work."""
    with run_policy(make_config({"max_connections": 2})) as d:
        first, second = PolicyClient.tcp(d.port), PolicyClient.tcp(d.port)
        assert first.ask(rcpt(MEMBER, LIST)) == ["DUNNO"]
        assert second.ask(rcpt(MEMBER, LIST)) == ["DUNNO"]
        third = PolicyClient.tcp(d.port)
        assert third.closed_by_peer() == b""
        assert first.ask(rcpt(OUTSIDER, LIST)) == [REJECT]
        assert d.service.refused == 1
        for c in (first, second, third):
            c.close()


class SlowBackend:
    """A backend whose answers need I/O: each lookup waits until released."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.started: asyncio.Event | None = None

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        return PENDING

    async def lookup(self, request: PostingRequest) -> ListFacts:
        assert self.release is not None
        assert self.started is not None
        self.started.set()
        await self.release.wait()
        facts = StaticBackend(POSTERS).lookup_now(request)
        assert isinstance(facts, ListFacts)
        return facts

    async def aclose(self) -> None:
        return None

    def describe(self) -> str:
        return "slow test backend"

    def known_lists(self) -> tuple[str, ...]:
        return (LIST,)


def test_slow_backend_keeps_order_and_drain_answers_in_flight() -> None:
    """On stop the listener goes at once; the request in flight and the one received behind
    it are answered in order, then the connection closes."""
    backend = SlowBackend()
    with run_policy(make_config(), backend) as d:  # type: ignore[arg-type]
        backend.release = d.call(asyncio.Event)
        backend.started = d.call(asyncio.Event)
        client = PolicyClient.tcp(d.port)
        client.sock.sendall(encode_request(rcpt(OUTSIDER, LIST))
                            + encode_request(rcpt(MEMBER, LIST)))
        asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(backend.started.wait(), 5), d.loop
        ).result(6)
        d.loop.call_soon_threadsafe(d.stop_event.set)  # drain while the first is pending
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            PolicyClient.tcp(d.port, timeout=1)
        d.loop.call_soon_threadsafe(backend.release.set)
        assert client.closed_by_peer() == f"action={REJECT}\n\naction=DUNNO\n\n".encode()
        client.close()
        d.thread.join(10)
        assert not d.thread.is_alive()


def test_slow_backend_answers_every_request_in_order() -> None:
    """With every decision awaited, pipelined requests still get replies in order."""
    backend = SlowBackend()
    with run_policy(make_config(), backend) as d:  # type: ignore[arg-type]
        backend.release = d.call(asyncio.Event)
        backend.started = d.call(asyncio.Event)
        d.loop.call_soon_threadsafe(backend.release.set)
        client = PolicyClient.tcp(d.port)
        requests = [rcpt(OUTSIDER, LIST), rcpt(MEMBER, LIST)] * 10
        assert client.ask(*requests) == [REJECT, "DUNNO"] * 10
        client.close()


# ----------------------------------------------------------------- app wiring


def _serve_in_thread(config: Config) -> tuple[threading.Thread, asyncio.AbstractEventLoop,
                                               asyncio.Event]:
    holder: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        holder.update(loop=asyncio.get_running_loop(), stop=stop)
        await serve(config, stop, on_ready=lambda _milter: ready.set())

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "serve() did not become ready"
    return thread, holder["loop"], holder["stop"]


def test_serve_starts_and_drains_the_policy_listener(tmp_path: Path) -> None:
    """serve() starts the policy listener when [policy] listen is set and stops it on stop."""
    path = tmp_path / "p.sock"
    config = make_config({"listen": [f"unix:{path}"]})
    thread, loop, stop = _serve_in_thread(config)
    try:
        client = PolicyClient.unix(path)
        assert client.ask(rcpt(OUTSIDER, LIST), rcpt(MEMBER, LIST)) == [REJECT, "DUNNO"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
    assert not thread.is_alive()
    assert client.closed_by_peer() == b""  # drained: the idle connection was closed
    client.close()
    assert not path.exists()


def test_serve_without_policy_listen_opens_no_policy_socket(tmp_path: Path) -> None:
    """With the default [policy] listen = [] no policy listener is built."""
    config = parse_config({"milter": {"listen": "inet:127.0.0.1:0"}}, "<test>")
    assert config.policy.listen == ()
    assert build_policy_service(config, build_gate(config)) is None
    thread, loop, stop = _serve_in_thread(config)
    loop.call_soon_threadsafe(stop.set)
    thread.join(15)
    assert not thread.is_alive()
