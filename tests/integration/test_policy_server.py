"""The asyncio policy server over real sockets (127.0.0.1 and a unix socket in tmp_path):
many requests per connection, the decision log, the policy's own limits and hostile
input, and app wiring. What every front end shares (garbage, idle timeout, connection
cap, drain, abort, back-pressure) is in test_connection_loop.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from listgate.app import build_gate, build_policy_service, serve
from listgate.config import Config, parse_config
from listgate.decision.facts import FactSource
from listgate.policyd import encode_request
from tests.integration.conftest import Daemon, run_daemon
from tests.integration.frontends import LIST, MEMBER, OUTSIDER, POSTERS, PolicyPeer, rcpt

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


@contextmanager
def run_policy(config: Config, backend: FactSource | None = None) -> Iterator[Daemon]:
    """Start the policy service of *config* in a thread; drain it on exit."""
    with run_daemon(config, backend, build=build_policy_service) as d:
        yield d


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """The policy service with the default test config on a free 127.0.0.1 port."""
    with run_policy(make_config()) as d:
        yield d


class PolicyClient(PolicyPeer):
    """A blocking policy client (the MTA's side) over one socket."""

    @classmethod
    def tcp(cls, port: int, timeout: float = 5.0) -> PolicyClient:
        """Connect to 127.0.0.1:*port*."""
        return cls(port, timeout)

    @classmethod
    def unix(cls, path: str | Path, timeout: float = 5.0) -> PolicyClient:
        """Connect to a unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        return cls(sock)

    def ask_all(self, *requests: Mapping[str, str]) -> list[object]:
        """Send every request in one write (pipelined) and read one reply each."""
        self.sock.sendall(b"".join(encode_request(r) for r in requests))
        return self.replies(len(requests))


def assert_served(port: int) -> None:
    """A fresh connection still gets a correct answer."""
    client = PolicyClient.tcp(port)
    try:
        assert client.ask_all(rcpt(OUTSIDER, LIST)) == [REJECT]
    finally:
        client.close()


# ----------------------------------------------------------------- conversations


def test_many_requests_on_one_connection(daemon: Daemon) -> None:
    """Member, non-member, other recipient and other states, one after another on one socket."""
    client = PolicyClient.tcp(daemon.port)
    try:
        assert client.ask_all(rcpt(MEMBER, LIST)) == ["DUNNO"]
        assert client.ask_all(rcpt(OUTSIDER, LIST)) == [REJECT]
        assert client.ask_all(rcpt(OUTSIDER, "alice@example.org")) == ["DUNNO"]
        assert client.ask_all(rcpt(OUTSIDER, LIST, protocol_state="DATA")) == ["DUNNO"]
        assert client.ask_all(rcpt("<Member@Example.COM>", "LIST@example.org")) == ["DUNNO"]
        assert client.ask_all(rcpt("", LIST)) == [
            f"550 5.7.1 <> is not allowed to post to <{LIST}>"
        ]
        for _ in range(50):
            assert client.ask_all(rcpt(OUTSIDER, LIST)) == [REJECT]
    finally:
        client.close()
    assert daemon.service.accepted == 1


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    """Requests sent in one write get one reply each, in request order."""
    client = PolicyClient.tcp(daemon.port)
    try:
        requests = [rcpt(OUTSIDER, LIST), rcpt(MEMBER, LIST), rcpt(OUTSIDER, "bob@example.org")]
        assert client.ask_all(*requests * 20) == [REJECT, "DUNNO", "DUNNO"] * 20
    finally:
        client.close()


def test_request_split_into_single_bytes(daemon: Daemon) -> None:
    """A request trickled one byte per write is still one request and one reply."""
    client = PolicyClient.tcp(daemon.port)
    try:
        for byte in encode_request(rcpt(OUTSIDER, LIST)):
            client.sock.sendall(bytes([byte]))
        assert client.replies(1) == [REJECT]
    finally:
        client.close()


def test_crlf_and_unknown_attributes(daemon: Daemon) -> None:
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
            assert client.ask_all(rcpt(MEMBER, LIST), rcpt(OUTSIDER, LIST)) == ["DUNNO", REJECT]
        finally:
            client.close()
        assert d.service.addresses == [f"unix:{path}"]
    assert not path.exists()


def test_one_decision_log_line_per_judged_request(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A list decision logs one INFO line with the milter's fields; untouched recipients
    log nothing at INFO."""
    caplog.set_level(logging.INFO, logger="listgate.decision")
    client = PolicyClient.tcp(daemon.port)
    try:
        assert client.ask_all(rcpt(OUTSIDER, LIST, queue_id="4Vq1")) == [REJECT]
        assert client.ask_all(rcpt(OUTSIDER, "alice@example.org")) == ["DUNNO"]
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
    daemon: Daemon, caplog: pytest.LogCaptureFixture
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


def test_replies_before_the_defect_are_still_sent(daemon: Daemon) -> None:
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
        assert fits.ask_all(rcpt(OUTSIDER, LIST, helo_name="h" * 400)) == [REJECT]
        for c in (long_line, many, fits):
            c.close()


def _send_without_end(sock: socket.socket, total: int) -> None:
    for _ in range(total // 65536):
        sock.sendall(b"y" * 65536)


def test_huge_stream_without_newline_is_cut_early(daemon: Daemon) -> None:
    """Megabytes without a line end are refused after the first line's worth."""
    bad = PolicyClient.tcp(daemon.port)
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            _send_without_end(bad.sock, 2000 * 65536)
    finally:
        bad.close()
    assert_served(daemon.port)


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
        assert client.ask_all(rcpt(OUTSIDER, LIST), rcpt(MEMBER, LIST)) == [REJECT, "DUNNO"]
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
