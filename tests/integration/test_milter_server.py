"""The asyncio milter server over real loopback sockets: conversations, listeners, the
milter's own hostile-input and command_timeout cases. What every front end shares
(garbage, idle timeout, connection cap, drain, abort, back-pressure) is in
test_connection_loop.py."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from listgate.errors import ListgateError
from listgate.milter import (
    POSTFIX_OFFER,
    Abort,
    Continue,
    EnvelopeFrom,
    EnvelopeRecipient,
    Macro,
    Negotiate,
    NegotiateReply,
    QuitNoClose,
    Reply,
    ReplyCode,
    encode,
    reply_decoder,
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


# ----------------------------------------------------------------- command_timeout

OPTNEG = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)


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


def test_command_timeout_runs_per_packet() -> None:
    """command_timeout runs from the first byte of each packet to its last: packets that
    each arrive within it are served, however long the conversation takes (here a MACRO
    packet, which gets no reply, then MAIL and RCPT, each over 0.4 s, each read ending
    one packet and starting the next)."""
    config = make_config({"command_timeout": 0.6, "idle_timeout": 30})
    with run_daemon(config) as d:
        sock = raw_connect(d.port)
        sock.sendall(OPTNEG)
        macro = encode(Macro(b"M", (("{client_addr}", "192.0.2.7"),)))
        mail = encode(EnvelopeFrom("<outsider@example.net>"))
        rcpt = encode(EnvelopeRecipient("<list@example.org>"))
        sock.sendall(macro[:3])
        for done, started in ((macro, mail), (mail, rcpt)):
            time.sleep(0.4)
            sock.sendall(done[3:] + started[:3])  # one packet ends, the next one starts
        time.sleep(0.4)
        sock.sendall(rcpt[3:])
        decoder = reply_decoder()
        replies: list[object] = []
        while len(replies) < 2:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {replies}"
            decoder.feed(chunk)
            while (msg := decoder.next_message()) is not None:
                replies.append(msg)
        assert isinstance(replies[0], NegotiateReply)
        assert replies[1] == ReplyCode(550, "5.7.1", REJECT_TEXT)
        sock.close()


# ----------------------------------------------------------------- listgate check --via


def test_check_via_reports_the_daemons_reply(daemon: Daemon) -> None:
    """ask_daemon (listgate check --via) returns the daemon's verdict and SMTP reply."""
    reply = asyncio.run(ask_daemon(daemon.spec, "outsider@example.net", "list@example.org"))
    assert reply.verdict.value == "reject"
    assert reply.smtp_reply == f"550 5.7.1 {REJECT_TEXT}"
