"""Hostile bytes on the milter port of a real ``listgate serve`` process.

Each kind of junk (bad lengths, a truncated packet then silence, unknown commands,
missing NULs, wrong field counts, a MACRO for an unknown stage, HTTP, a TLS ClientHello,
RDP) closes its own connection, with one WARNING naming the connection and the peer's
port; a conversation opened before it is still served after each. Then the memory
check: 1,000 packets that each claim about 1 GiB (above the maximum, and, with
``max_packet_size`` raised to its 1 GiB ceiling, within it and held open) move the
daemon's VmRSS (from /proc/PID/status) by a few MiB, not by what they claim.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from .helpers import (
    OPTNEG,
    BlockingMilter,
    Serve,
    free_port,
    packet,
    raise_nofile,
    rss_kib,
    toml,
    wait_until,
)

REJECT = b"550 5.7.1 <outsider@example.net> is not allowed to post to <list@example.org>\0"
GIB = 1 << 30
CLAIMS = 1000


def _config(port: int, **milter: object) -> str:
    text = toml({"milter": {"listen": f"inet:127.0.0.1:{port}", **milter},
                 "log": {"level": "info"}})
    return text + '[static.posters]\n"list@example.org" = ["member@example.com"]\n'


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One daemon for the module: command_timeout 1 s, max_packet_size 1 GiB (so a ~1 GiB
    claim is *legal* and only the allocation strategy stands between it and the RAM)."""
    port = free_port()
    serve = Serve(tmp_path_factory.mktemp("hostile"),
                  _config(port, command_timeout=1.0, idle_timeout=60, max_packet_size=GIB,
                          max_connections=5000),
                  wait_for=(f"inet:127.0.0.1:{port}",))
    serve.start()
    yield serve
    serve.stop()


def _port(serve: Serve) -> int:
    return int(serve.wait_for[0].rsplit(":", 1)[1])


def check_served(client: BlockingMilter) -> None:
    """A member passes and an outsider gets the exact 550 on an already open connection."""
    client.mail("outsider@example.net")
    ident, payload, _ = client.rcpt("list@example.org")
    assert (ident, payload) == (b"y", REJECT)
    client.abort()
    client.mail("member@example.com")
    assert client.rcpt("list@example.org")[:2] == (b"c", b"")
    client.abort()


OPT = OPTNEG
HOSTILE = {
    "length-0": (b"\0\0\0\0O", "command length 0"),
    "length-0xffffffff": (b"\xff\xff\xff\xffO", "command length 4294967295 exceeds"),
    "above-max": (struct.pack(">I", GIB + 1) + b"L", f"command length {GIB + 1} exceeds"),
    "above-max-after-optneg": (OPT + struct.pack(">I", GIB + 1), "exceeds the maximum"),
    "truncated-then-silence": (OPT + struct.pack(">Ic", 50, b"M") + b"<trunc",
                               "incomplete packet for"),
    "unknown-command": (OPT + packet(b"Z", b"x"), "unknown command code b'Z'"),
    "unknown-command-first": (packet(b"\x01"), "unknown command code b'\\x01'"),
    "helo-missing-nul": (OPT + packet(b"H", b"hello"), "HELO: data is not NUL-terminated"),
    "mail-missing-nul": (OPT + packet(b"M", b"<a@b>"), "MAIL: data is not NUL-terminated"),
    "helo-two-fields": (OPT + packet(b"H", b"a\0b\0"), "HELO: expected 1 string(s), got 2"),
    "header-one-field": (OPT + packet(b"L", b"From\0"), "HEADER: expected 2 string(s), got 1"),
    "connect-no-family": (OPT + packet(b"C", b"host\0"), "CONNECT: address family is missing"),
    "optneg-short": (packet(b"O", b"\0\0\0\6"), "OPTNEG: 4 data bytes, need 12"),
    "macro-unknown-stage": (OPT + packet(b"D", b"Z{i}\0x\0"), "MACRO: for unknown command b'Z'"),
    "macro-for-optneg": (OPT + packet(b"D", b"O"), "MACRO: for unknown command b'O'"),
    "macro-odd-strings": (OPT + packet(b"D", b"R{i}\0"), "MACRO: a macro name has no value"),
    "rcpt-before-optneg": (packet(b"R", b"<x>\0"), "expected OPTNEG first"),
    "second-optneg": (OPT + OPT, "OPTNEG repeated"),
    "rcpt-outside-transaction": (OPT + packet(b"R", b"<x>\0"), "RCPT outside a transaction"),
    "http": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "looks like HTTP"),
    "http-post": (b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "looks like HTTP"),
    "tls-client-hello": (bytes.fromhex("160301020001") + b"\x00\x01\xfc\x03\x03"
                         + os.urandom(32), "looks like a TLS ClientHello"),
    "rdp": (bytes.fromhex("0300002f2ae00000000000436f6f6b69653a206d737473686173683d"),
            "looks like RDP/TPKT"),
}


def _closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def test_each_hostile_input_is_closed_logged_and_others_served(daemon: Serve) -> None:
    """Every case: the daemon closes that connection (within command_timeout + slack),
    logs one WARNING ``[cN] closing connection from 127.0.0.1:<its port>: <defect>``,
    and the conversation opened beforehand still gets correct verdicts."""
    port = _port(daemon)
    bystander = BlockingMilter(port)
    check_served(bystander)
    problems = []
    for name, (payload, defect) in HOSTILE.items():
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        local = sock.getsockname()[1]
        began = time.monotonic()
        sock.sendall(payload)
        received = _closed(sock, timeout=5)
        elapsed = time.monotonic() - began
        sock.close()
        if received and received[4:5] != b"O":
            problems.append(f"{name}: answered {received[:20]!r}")
        if elapsed > 3.0:
            problems.append(f"{name}: closed after {elapsed:.1f} s")
        pattern = re.compile(
            rf"WARNING listgate\.milter: \[c[0-9a-f]+\] closing connection from "
            rf"127\.0\.0\.1:{local}: .*{re.escape(defect)}"
        )
        try:
            wait_until(lambda p=pattern: p.search(daemon.log()), 3, f"log line for {name}")
        except AssertionError:
            problems.append(f"{name}: no log line matching {pattern.pattern!r}")
        check_served(bystander)
    bystander.close()
    assert not problems, "\n".join(problems) + "\n--- log tail ---\n" + daemon.log()[-3000:]


Held = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def _claim_many(port: int, count: int, head: bytes, held: Held | None) -> list[bytes]:
    """*count* concurrent connections each sending *head*. With *held*, keep them open
    (appended to *held*) and return once all were sent, else wait until each is closed
    and return what each received."""
    sem = asyncio.Semaphore(200)

    async def one() -> bytes:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            await writer.drain()
            if held is not None:
                held.append((reader, writer))
                return b""
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(count)))


def test_a_thousand_one_gib_claims_do_not_move_rss(daemon: Serve) -> None:
    """1,000 packets claiming ~1 GiB each, twice:

    1. 0xFFFFFFFF (above the 1 GiB maximum): each closed at once and logged;
    2. 0x3FFFFFFF (1 GiB - 1, legal here), each followed by 64 real bytes and held open
       together (1,000 partial packets in the daemon at once), then cut at
       command_timeout and logged.

    VmRSS grows by a few MiB (the connections themselves), never by the claimed
    1,000 GiB; a normal client is served throughout."""
    raise_nofile(4096)
    port = _port(daemon)
    bystander = BlockingMilter(port)
    check_served(bystander)
    log_before = daemon.log().count("closing connection")
    rss0 = rss_kib(daemon.pid)

    over = asyncio.run(_claim_many(port, CLAIMS, b"\xff\xff\xff\xffL", None))
    assert all(r == b"" for r in over)
    rss1 = rss_kib(daemon.pid)
    check_served(bystander)

    legal = OPTNEG + struct.pack(">I", GIB - 1) + b"L" + b"x" * 64

    async def hold_then_measure() -> tuple[int, list[bytes]]:
        held: Held = []
        await _claim_many(port, CLAIMS, legal, held)
        await asyncio.sleep(0.3)  # let the daemon read every one
        peak = rss_kib(daemon.pid)
        check_served(bystander)
        results = await asyncio.gather(
            *(asyncio.wait_for(r.read(), 10) for r, _ in held), return_exceptions=True
        )
        for _, w in held:
            w.close()
        return peak, [r for r in results if isinstance(r, bytes)]

    rss_peak, cut_replies = asyncio.run(hold_then_measure())
    assert len(cut_replies) == CLAIMS
    assert all(r[4:5] == b"O" for r in cut_replies)  # OPTNEG answered, then closed
    wait_until(lambda: daemon.log().count("closing connection") >= log_before + 2 * CLAIMS,
               10, "a log line per closed connection")
    time.sleep(0.2)
    rss2 = rss_kib(daemon.pid)
    check_served(bystander)
    bystander.close()
    log = daemon.log()
    assert log.count("exceeds the maximum 1073741824") >= CLAIMS
    assert log.count("incomplete packet for") >= CLAIMS
    figures = (f"VmRSS KiB: start {rss0}, after {CLAIMS} over-max claims {rss1}, "
               f"{CLAIMS} ~1 GiB claims held {rss_peak}, after they were cut {rss2}")
    print(figures)
    assert rss1 - rss0 < 8 * 1024, figures
    assert rss_peak - rss0 < 64 * 1024, figures
    assert rss2 - rss0 < 64 * 1024, figures
