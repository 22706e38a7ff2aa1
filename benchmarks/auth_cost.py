"""What require_authenticated costs: messages decided per second, in one process, through
the milter session (listgate.frontends.milter) and the gate, as the connection loop drives
them (decide_now first, else await decide), with SPF and DKIM checked over a real NSD on
loopback (tests/dns_server.py).

    .venv/bin/python benchmarks/auth_cost.py [--messages N] [--smoke]

Rows:
- plain, as before: a list without the option, the negotiation of a site with no such
  list (MAIL and RCPT only; the MTA sends no header, body or HELO).
- plain, auth negotiated: the same list on a site where another list requires
  authentication (verify): header fields, EOH, the first body chunk (answered SKIP), EOM.
- require_authenticated, SPF pass: a member's envelope proven by SPF (cached after the
  first message) at RCPT; the body is skipped.
- require_authenticated, DKIM in-process: from a client SPF excludes, so every message is
  kept and its DKIM signature verified (dkimpy; the key cached by the resolver) at EOM.
These rows have no socket I/O to the MTA: they isolate the decision path. With
``--postfix``, smtp-source (500 messages, 10 sessions, median of 3) also sends through a
private Postfix (tests/e2e/harness.py) to the plain list, with listgate negotiating as a
site without and with a require_authenticated list (the round trips of EOH and the
skipped first body chunk are then paid), and to the require_authenticated list (SPF
pass from 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from dns_server import MEMBER, start_auth_dns  # noqa: E402

from listgate.app import auth_stage, build_gate  # noqa: E402
from listgate.config import parse_config  # noqa: E402
from listgate.decision.model import PostingRequest  # noqa: E402
from listgate.frontends.milter import MilterSession, milter_options  # noqa: E402
from listgate.frontends.session import NEED_DATA  # noqa: E402
from listgate.milter import (  # noqa: E402
    POSTFIX_OFFER,
    Abort,
    Body,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Macro,
    encode,
)

PLAIN = "plain@example.org"
AUTH = "auth@example.org"


def config(nameserver: str, with_auth_list: bool) -> dict[str, object]:
    data: dict[str, object] = {
        "milter": {"listen": "inet:127.0.0.1:1"},
        "static": {"posters": {PLAIN: [MEMBER], AUTH: [MEMBER]}},
    }
    if with_auth_list:
        data["lists"] = {AUTH: {"require_authenticated": True}}
        data["auth"] = {"nameservers": [nameserver], "dns_timeout": 5.0}
    return data


def transaction(recipient: str, client: str, message: bytes, full: bool) -> bytes:
    """One transaction's packets as Postfix sends them (with the negotiation's steps)."""
    out = [encode(Macro(b"M", (("{client_addr}", client), ("i", "QID")))),
           encode(EnvelopeFrom(f"<{MEMBER}>")), encode(EnvelopeRecipient(f"<{recipient}>"))]
    if full:
        head, _, body = message.partition(b"\r\n\r\n")
        for line in head.decode().replace("\r\n ", "\n ").split("\r\n"):
            name, _, value = line.partition(":")
            out.append(encode(Header(name, value)))
        out += [encode(EndOfHeaders()), encode(Body(body)), encode(EndOfMessage())]
    else:
        out.append(encode(EndOfMessage()))
    out.append(encode(Abort()))
    return b"".join(out)


async def drive(data: dict[str, object], recipient: str, client: str, message: bytes,
                count: int) -> tuple[float, int]:
    """Messages per second through one session and the gate, and how many decisions
    were made at end of message; every verdict must be accept."""
    cfg = parse_config(data)
    gate = build_gate(cfg)
    stage = auth_stage(cfg)
    session = MilterSession(milter_options(1 << 20, auth=stage), stage)
    session.receive_data(encode(POSTFIX_OFFER) + encode(Helo("client.example")))
    while session.next_event() is not NEED_DATA:
        pass
    packets = transaction(recipient, client, message, full=stage is not None)
    at_eom = 0
    started = 0.0
    for i in range(count + 20):  # the first 20 warm the caches and are not timed
        if i == 20:
            started = time.perf_counter()
        session.receive_data(packets)
        while (event := session.next_event()) is not NEED_DATA:
            assert isinstance(event, PostingRequest), event
            decision = gate.decide_now(event)
            if decision is None:
                decision = await gate.decide(event)
            if event.evidence is not None and event.evidence.message is not None:
                at_eom += 1
                assert decision.verdict.value == "accept", decision
            session.decide(decision)
        session.data_to_send()
    elapsed = time.perf_counter() - started
    await gate.backend.aclose()
    return count / elapsed, at_eom


def postfix_rates(dns_address: str, base: Path) -> list[tuple[str, float]]:
    """Messages/s through Postfix and listgate for the three smtp-source runs."""
    import json
    import shutil
    import statistics
    import subprocess

    from e2e.harness import (
        Listener,
        LmtpSink,
        PostfixInstance,
        find_binary,
        free_port,
        traversable_tmpdir,
    )
    from support import ListgateServe

    pf_base = traversable_tmpdir("lg-authbench-")  # Postfix's user must enter it

    sink = LmtpSink()
    sink.start()
    servers = []
    listeners = []
    for name, with_auth in (("none", False), ("auth", True)):
        port = free_port()
        data = config(dns_address, with_auth)
        lines = [f'[milter]\nlisten = "inet:127.0.0.1:{port}"', "[static.posters]"]
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in
                  data["static"]["posters"].items()]  # type: ignore[index]
        if with_auth:
            lines += [f"[lists.{json.dumps(AUTH)}]", "require_authenticated = true",
                      "[auth]", f"nameservers = [{json.dumps(dns_address)}]"]
        (base / name).mkdir()
        lg = ListgateServe(base / name, "\n".join(lines) + "\n",
                           wait_for=[f"inet:127.0.0.1:{port}"], ready_line=None)
        lg.start()
        servers.append(lg)
        listeners.append(Listener(name, free_port(), f"inet:127.0.0.1:{port}"))
    postfix = PostfixInstance(pf_base, listeners, sink.port)
    postfix.create()
    postfix.start()
    rows = []
    try:
        for title, listener, rcpt in (
            ("Postfix: plain list, site without auth list", "none", PLAIN),
            ("Postfix: plain list, site with auth list", "auth", PLAIN),
            ("Postfix: require_authenticated list, SPF pass", "auth", AUTH),
        ):
            rates = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run(
                    [find_binary("smtp-source"), "-m", "500", "-s", "10", "-l", "2000",
                     "-f", MEMBER, "-t", rcpt,
                     f"127.0.0.1:{postfix.listeners[listener].port}"],
                    check=True, capture_output=True, timeout=300)
                rates.append(500 / (time.perf_counter() - started))
            postfix.wait_queue_empty(60)
            rows.append((title, statistics.median(rates)))
    finally:
        postfix.stop()
        for lg in servers:
            lg.stop()
        sink.stop()
        shutil.rmtree(pf_base, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a few hundred messages")
    parser.add_argument("--postfix", action="store_true",
                        help="also send with smtp-source through a private Postfix")
    args = parser.parse_args()
    count = 200 if args.smoke else args.messages
    with tempfile.TemporaryDirectory(prefix="lg-authbench-") as tmp:
        dns = start_auth_dns(Path(tmp))
        try:
            body = b"x" * 2000 + b"\r\n"
            plain = (f"From: <{MEMBER}>\r\nTo: <{AUTH}>\r\nSubject: bench\r\n"
                     "Message-ID: <b@example.com>\r\n\r\n").encode() + body
            signed = dns.example.sign(plain, "example.com")
            ns = dns.server.address
            rows = [
                ("plain list, as before", config(ns, False), PLAIN, "127.0.0.1", plain),
                ("plain list, auth negotiated", config(ns, True), PLAIN, "127.0.0.1", plain),
                ("require_authenticated, SPF pass", config(ns, True), AUTH, "127.0.0.1",
                 plain),
                ("require_authenticated, DKIM in-process", config(ns, True), AUTH,
                 "127.0.0.2", signed),
            ]
            print("| case | messages | judged at EOM (DKIM) | messages/s |\n|---|---|---|---|")
            for name, data, rcpt, client, msg in rows:
                n = count if "DKIM" not in name else max(50, count // 4)
                rate, at_eom = asyncio.run(drive(data, rcpt, client, msg, n))
                print(f"| {name} | {n} | {at_eom} | {rate:,.0f} |")
            if args.postfix:
                for name, rate in postfix_rates(ns, Path(tmp)):
                    print(f"| {name} | 500 x 3 | 0 | {rate:,.0f} |")
        finally:
            dns.server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
