"""The asyncio milter server over real loopback sockets: conversations, hostile input,
limits, timeouts and drain."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from listgate.decision.facts import PENDING, ListFacts, LookupNow
from listgate.decision.model import PostingRequest
from listgate.errors import ListgateError
from listgate.facts.static import StaticBackend
from listgate.milter import (
    POSTFIX_OFFER,
    Abort,
    Continue,
    EnvelopeFrom,
    EnvelopeRecipient,
    Negotiate,
    QuitNoClose,
    Reply,
    ReplyCode,
)
from listgate.server.client import MilterClient, ask_daemon
from tests.integration.conftest import (
    Daemon,
    make_config,
    raw_connect,
    run_daemon,
    wait_closed_by_peer,
)

REJECT_TEXT = "<outsider@example.net> is not allowed to post to <list@example.org>"


async def _session(
    spec: str, sender: str, rcpts: Sequence[str], offer: Negotiate = POSTFIX_OFFER
) -> list[Reply | None]:
    async with await MilterClient.connect(spec, offer=offer) as client:
        await client.negotiate()
        await client.step(EnvelopeFrom(f"<{sender}>"), [("{mail_addr}", sender)])
        replies = [await client.step(EnvelopeRecipient(f"<{r}>")) for r in rcpts]
        await client.send(Abort())
        await client.send(Abort())
        return replies


def session(spec: str, sender: str, rcpts: Sequence[str], **kw: Negotiate) -> list[Reply | None]:
    """One Postfix-like milter conversation (ending A A Q); the final reply per RCPT."""
    return asyncio.run(_session(spec, sender, rcpts, **kw))


def assert_served(daemon: Daemon) -> None:
    """The daemon still answers a normal client correctly."""
    replies = session(daemon.spec, "outsider@example.net", ["list@example.org"])
    assert replies == [ReplyCode(550, "5.7.1", REJECT_TEXT)]


# ----------------------------------------------------------------- conversations


def test_member_nonmember_and_multi_recipient(daemon: Daemon) -> None:
    """Members get CONTINUE, non-members the exact 550 5.7.1 text, other recipients pass."""
    assert session(daemon.spec, "member@example.com", ["list@example.org"]) == [Continue()]
    assert session(daemon.spec, "outsider@example.net", ["list@example.org"]) == [
        ReplyCode(550, "5.7.1", REJECT_TEXT)
    ]
    assert session(
        daemon.spec,
        "outsider@example.net",
        ["alice@example.org", "list@example.org", "bob@example.org"],
    ) == [Continue(), ReplyCode(550, "5.7.1", REJECT_TEXT), Continue()]


def test_case_brackets_and_null_sender(daemon: Daemon) -> None:
    """Matching ignores case and brackets; the null sender is never a poster."""
    assert session(daemon.spec, "Member@EXAMPLE.com", ["LIST@example.org"]) == [Continue()]
    replies = asyncio.run(_null_sender(daemon.spec))
    assert replies == [ReplyCode(550, "5.7.1", "<> is not allowed to post to <list@example.org>")]


async def _null_sender(spec: str) -> list[Reply | None]:
    async with await MilterClient.connect(spec) as client:
        await client.negotiate()
        await client.step(EnvelopeFrom("<>"))
        return [await client.step(EnvelopeRecipient("<list@example.org>"))]


@pytest.mark.parametrize(
    "offer",
    [
        Negotiate(6, 0x1FF, 0x1FFFFF),
        Negotiate(2, 0x3F, 0x7F),
        Negotiate(2, 0, 0),
        Negotiate(4, 0x3F, 0x3FF),
    ],
    ids=["v6-postfix", "v2", "v2-zero-masks", "v4"],
)
def test_every_protocol_version_is_served(daemon: Daemon, offer: Negotiate) -> None:
    """Offers from v2 to v6 negotiate and get the same verdicts."""
    replies = session(
        daemon.spec, "outsider@example.net", ["a@example.org", "list@example.org"], offer=offer
    )
    assert replies == [Continue(), ReplyCode(550, "5.7.1", REJECT_TEXT)]


def test_two_transactions_and_quit_nc_on_one_connection(daemon: Daemon) -> None:
    """ABORT ends a transaction, QUIT_NC resets the connection; later ones are decided anew."""

    async def run() -> list[Reply | None]:
        out: list[Reply | None] = []
        async with await MilterClient.connect(daemon.spec) as client:
            await client.negotiate()
            for sender in ("outsider@example.net", "member@example.com"):
                await client.step(EnvelopeFrom(f"<{sender}>"))
                out.append(await client.step(EnvelopeRecipient("<list@example.org>")))
                await client.send(Abort())
            await client.send(QuitNoClose())
            await client.step(EnvelopeFrom("<member@example.com>"))
            out.append(await client.step(EnvelopeRecipient("<list@example.org>")))
        return out

    assert asyncio.run(run()) == [
        ReplyCode(550, "5.7.1", REJECT_TEXT),
        Continue(),
        Continue(),
    ]


def test_unix_socket_mode_and_cleanup(tmp_path: Path) -> None:
    """A unix: listener gets the configured mode, serves, and is removed at shutdown."""
    path = tmp_path / "milter.sock"
    config = make_config({"listen": f"unix:{path}", "socket_mode": "0600"})
    with run_daemon(config) as d:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert session(d.spec, "member@example.com", ["list@example.org"]) == [Continue()]
    assert not path.exists()


def test_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    """A socket file left by a dead process is removed and re-bound at start-up."""
    path = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with run_daemon(make_config({"listen": f"unix:{path}"})) as d:
        assert session(d.spec, "member@example.com", ["list@example.org"]) == [Continue()]


def test_regular_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    """listgate never deletes a non-socket file at its socket path; start-up fails."""
    path = tmp_path / "milter.sock"
    path.write_text("precious")
    with (
        pytest.raises(ListgateError, match="not a socket"),
        run_daemon(make_config({"listen": f"unix:{path}"})),
    ):
        pass
    assert path.read_text() == "precious"


def test_inet6_and_several_listeners(tmp_path: Path) -> None:
    """inet6:[::1] and a second inet: listener serve at the same time."""
    config = make_config({"listen": ["inet6:[::1]:0", "inet:127.0.0.1:0"]})
    with run_daemon(config) as d:
        assert d.addresses[0].startswith("inet6:[::1]:")
        for spec in d.addresses:
            assert session(spec, "member@example.com", ["list@example.org"]) == [Continue()]


def test_port_in_use_names_the_spec() -> None:
    """Binding a busy port fails with an error that names the listen spec."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with (
            pytest.raises(ListgateError, match=f"inet:127.0.0.1:{port}"),
            run_daemon(make_config({"listen": f"inet:127.0.0.1:{port}"})),
        ):
            pass
    finally:
        busy.close()


# ----------------------------------------------------------------- hostile input

OPTNEG = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)
GARBAGE = {
    "http-get": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "tls-client-hello": bytes.fromhex("1603010200010001fc0303") + os.urandom(32),
    "rdp": bytes.fromhex("0300002f2ae00000000000436f6f6b69653a"),
    "length-zero": b"\x00\x00\x00\x00O",
    "length-ffffffff": b"\xff\xff\xff\xffO",
    "above-max": struct.pack(">I", 1024 * 1024 + 1) + b"L",
    "unknown-command": struct.pack(">Ic", 1, b"Z"),
    "missing-nul": OPTNEG + struct.pack(">Ic", 6, b"H") + b"hello",
    "wrong-field-count": OPTNEG + struct.pack(">Ic", 5, b"H") + b"a\0b\0",
    "macro-unknown-stage": OPTNEG + struct.pack(">Ic", 3, b"D") + b"Z\0",
    "rcpt-before-optneg": struct.pack(">Ic", 4, b"R") + b"<x\0",
}


@pytest.mark.parametrize("payload", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_closes_only_that_connection(
    daemon: Daemon, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk on the port is closed and logged with a connection id; others are still served."""
    with caplog.at_level(logging.WARNING, logger="listgate.milter"):
        sock = raw_connect(daemon.port)
        sock.sendall(payload)
        wait_closed_by_peer(sock)
        sock.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("[c") and "closing connection" in m for m in warnings), warnings
    assert_served(daemon)


def test_open_conversation_survives_other_clients_garbage(daemon: Daemon) -> None:
    """A conversation opened before junk arrives on another connection still works after."""

    async def run() -> list[Reply | None]:
        async with await MilterClient.connect(daemon.spec) as client:
            await client.negotiate()
            await client.step(EnvelopeFrom("<outsider@example.net>"))
            for payload in GARBAGE.values():
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
                writer.write(payload)
                await asyncio.wait_for(reader.read(), 5)  # returns once the daemon closed it
                writer.close()
            return [await client.step(EnvelopeRecipient("<list@example.org>"))]

    assert asyncio.run(run()) == [ReplyCode(550, "5.7.1", REJECT_TEXT)]


def test_truncated_packet_is_cut_at_command_timeout() -> None:
    """A packet that starts and never completes is closed at command_timeout."""
    config = make_config({"command_timeout": 0.5, "idle_timeout": 30})
    with run_daemon(config) as d:
        sock = raw_connect(d.port)
        sock.sendall(OPTNEG + struct.pack(">Ic", 50, b"M") + b"<trunc")
        started = time.monotonic()
        received = wait_closed_by_peer(sock, timeout=5)
        elapsed = time.monotonic() - started
        assert received[4:5] == b"O"  # the OPTNEG reply came before the cut
        assert 0.4 <= elapsed < 3, elapsed
        assert_served(d)


def test_trickling_client_is_not_saved_by_trickling() -> None:
    """One byte at a time does not extend command_timeout (slowloris)."""
    config = make_config({"command_timeout": 0.6, "idle_timeout": 30})
    with run_daemon(config) as d:
        sock = raw_connect(d.port)
        sock.sendall(OPTNEG)
        started = time.monotonic()
        closed_at = None
        for byte in struct.pack(">Ic", 50, b"M") + b"<slow@example.net>" * 3:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic() - started
                break
            time.sleep(0.1)
        if closed_at is None:
            wait_closed_by_peer(sock, timeout=5)
            closed_at = time.monotonic() - started
        assert closed_at < 2.5, closed_at


def test_idle_connection_is_closed_at_idle_timeout() -> None:
    """A negotiated connection that sends nothing is closed after idle_timeout."""
    with run_daemon(make_config({"idle_timeout": 0.5})) as d:
        sock = raw_connect(d.port)
        sock.sendall(OPTNEG)
        started = time.monotonic()
        received = wait_closed_by_peer(sock, timeout=5)
        assert received[4:5] == b"O"  # it answered the negotiation first
        assert 0.4 <= time.monotonic() - started < 3


# ----------------------------------------------------------------- limits and lifecycle


def test_connection_cap_refuses_cleanly_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_connections new connections are closed at once; freed slots are reused."""
    with run_daemon(make_config({"max_connections": 3})) as d:
        held = [raw_connect(d.port) for _ in range(3)]
        for sock in held:
            sock.sendall(OPTNEG)
            assert sock.recv(100)[4:5] == b"O"
        with caplog.at_level(logging.WARNING, logger="listgate.server"):
            extra = raw_connect(d.port)
            assert wait_closed_by_peer(extra, timeout=5) == b""
        assert any("max_connections=3" in r.getMessage() for r in caplog.records)
        assert d.service.refused == 1
        held.pop().close()
        deadline = time.monotonic() + 5
        while len(d.service.active) > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert_served(d)
        for sock in held:
            sock.close()


class SlowBackend:
    """A backend whose answers need I/O: it waits until released."""

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
        return StaticBackend({"list@example.org": ["member@example.com"]}).lookup_now(request)

    async def aclose(self) -> None:
        return None

    def describe(self) -> str:
        return "slow test backend"

    def known_lists(self) -> tuple[str, ...]:
        return ("list@example.org",)


def test_drain_finishes_in_flight_command_then_closes() -> None:
    """On stop, an RCPT being decided still gets its reply; idle connections close; the
    listener stops accepting."""
    backend = SlowBackend()
    with run_daemon(make_config({"shutdown_timeout": 10}), backend) as d:
        backend.release = d.call(asyncio.Event)
        backend.started = d.call(asyncio.Event)
        idle = raw_connect(d.port)
        idle.sendall(OPTNEG)
        assert idle.recv(100)[4:5] == b"O"

        async def in_flight() -> Reply | None:
            async with await MilterClient.connect(d.spec) as client:
                await client.negotiate()
                await client.step(EnvelopeFrom("<member@example.com>"))
                return await client.step(EnvelopeRecipient("<list@example.org>"))

        result: list[Reply | None] = []
        t = threading.Thread(target=lambda: result.append(asyncio.run(in_flight())))
        t.start()
        assert (
            asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(backend.started.wait(), 5), d.loop
            ).result(6)
            is True
        )
        d.loop.call_soon_threadsafe(d.stop_event.set)
        assert wait_closed_by_peer(idle, timeout=5) == b""  # idle: closed at once
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            raw_connect(d.port, timeout=1)  # no longer listening
        d.loop.call_soon_threadsafe(backend.release.set)
        t.join(10)
        assert result == [Continue()]
        d.thread.join(10)
        assert not d.thread.is_alive()


def test_check_via_reports_the_daemons_reply(daemon: Daemon) -> None:
    """ask_daemon (listgate check --via) returns the daemon's verdict and SMTP reply."""
    reply = asyncio.run(ask_daemon(daemon.spec, "outsider@example.net", "list@example.org"))
    assert reply.verdict.value == "reject"
    assert reply.smtp_reply == f"550 5.7.1 {REJECT_TEXT}"
