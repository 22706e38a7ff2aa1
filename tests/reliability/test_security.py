"""Security: hostile sender addresses, the REST password, and socket permissions.

- Senders containing ``*``, ``%``, ``_``, quotes, CR, LF, NUL, 300-byte local parts or
  UTF-8 (SMTPUTF8) never match a member they are not, and never put a line break (or
  anything but printable text) into an SMTP reply, a policy reply or a log line: through
  the milter (a real listener), the policy front end, the engine, and, for the SQL LIKE
  characters ``*``, ``%`` and ``_``, against a real Mailman core.
- The Mailman REST password (and its base64 ``Authorization`` form) never appears in
  the daemon's log (debug level, provoked REST errors: HTTP 500, refused, timeout), in
  its argv or environment, in exception texts, or in ``listgate config check``.
- A unix socket is created with the configured mode, whatever the umask.
(Running as root without ``--allow-root`` is refused: tests/integration/
test_daemon_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import secrets
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from listgate.config import CacheConfig, config_to_dict, load_config, parse_config
from listgate.decision.engine import ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import PostingRequest, Verdict, normalize_address
from listgate.errors import BackendUnavailable
from listgate.facts.static import StaticBackend
from listgate.frontends.policy import answer_for, posting_request
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import MailmanClient
from listgate.milter.constants import MAX_REPLY_TEXT
from listgate.policyd import PolicyRequest, ReplyReader, format_action
from tests.integration.conftest import run_daemon

from .helpers import BlockingMilter, FaultProxy, Serve, free_port, packet, toml, wait_until

LIST = "list@example.org"
MEMBERS = ["member@example.com", "user_1@example.com", "a%b@example.com",
           "jörg@bücher.example", "x" * 300 + "@example.com"]
"""Posters of LIST: plain, with the LIKE characters '_' and '%', UTF-8, a 300-byte local."""

# sender -> does it match a member? (Only the same mailbox, spelt as SMTP allows.)
SENDERS: dict[str, bool] = {
    "member@example.com": True,
    "<MEMBER@Example.COM>": True,
    '"member"@example.com': True,  # a quoted dot-atom is the same mailbox
    "*@example.com": False,
    "memb*@example.com": False,
    "*": False,
    "%@example.com": False,
    "member%@example.com": False,
    "m_mber@example.com": False,
    "_ember@example.com": False,
    "user_1@example.com": True,
    "userx1@example.com": False,  # '_' as a LIKE wildcard would match
    "user%@example.com": False,
    "a%b@example.com": True,
    "axxb@example.com": False,  # '%' as a LIKE wildcard would match
    "a%%b@example.com": False,
    '"mem ber"@example.com': False,
    '"member@example.com"@evil.example': False,
    "member@example.com.evil.example": False,
    "member@example.com\r\n250 2.1.5 Ok": False,
    "member@example.com\n550 x": False,
    "member@example.com\r": True,  # surrounding whitespace is trimmed, as Postfix does
    "member@example.com\0": False,
    "\0member@example.com": False,
    "member\x7f@example.com": False,
    "jörg@bücher.example": True,
    "JÖRG@BÜCHER.EXAMPLE": True,
    "jorg@bucher.example": False,
    "用户@例子.广告": False,
    "x" * 300 + "@example.com": True,
    "x" * 299 + "@example.com": False,
    "x" * 301 + "@example.com": False,
    "y" * 300 + "@example.com": False,
    "\udcff\udcfe@example.com": False,  # bytes that are not UTF-8 (surrogateescape)
}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _gate() -> Gate:
    return Gate(StaticBackend({LIST: MEMBERS}), ReplyTexts())


@pytest.mark.parametrize("sender", list(SENDERS), ids=[repr(s)[:40] for s in SENDERS])
def test_engine_matches_only_the_same_mailbox_and_replies_stay_one_line(sender: str) -> None:
    """The engine (given the address as the front ends normalise it): verdict as in
    SENDERS; a reject's SMTP reply is one printable line."""
    d = asyncio.run(_gate().decide(PostingRequest(normalize_address(sender), LIST)))
    assert d.verdict is (Verdict.ACCEPT if SENDERS[sender] else Verdict.REJECT), d
    if d.smtp_reply is not None:
        assert d.smtp_reply.startswith("550 5.7.1 <")
        assert d.smtp_reply.endswith(f"> is not allowed to post to <{LIST}>")
        assert not CONTROL.search(d.smtp_reply)
        assert d.smtp_reply.isprintable()
        assert len(d.smtp_reply.encode()) <= MAX_REPLY_TEXT


@pytest.mark.parametrize("sender", list(SENDERS), ids=[repr(s)[:40] for s in SENDERS])
def test_policy_front_end_reply_is_one_action(sender: str) -> None:
    """The policy front end: same verdict; the wire reply is exactly one action line."""
    request = PolicyRequest.from_attributes({
        "request": "smtpd_access_policy", "protocol_state": "RCPT",
        "sender": sender.strip("<>"), "recipient": LIST})
    posting = posting_request(request)
    assert posting is not None
    d = asyncio.run(_gate().decide(posting))
    assert d.verdict is (Verdict.ACCEPT if SENDERS[sender] else Verdict.REJECT)
    wire = format_action(answer_for(d).action)
    assert wire.count(b"\n") == 2
    assert wire.endswith(b"\n\n")
    assert b"\r" not in wire
    assert b"\0" not in wire
    reader = ReplyReader()
    reader.receive_data(wire)
    assert list(reader.next_reply()) == ["action"]  # type: ignore[arg-type]


def _milter_sender(sender: str) -> bytes:
    raw = sender.encode("utf-8", "surrogateescape")
    return raw if raw.startswith(b"<") else b"<" + raw + b">"


def test_through_the_milter_listener(caplog: pytest.LogCaptureFixture) -> None:
    """A real milter listener: each sender's MAIL/RCPT gets the verdict of SENDERS (a NUL
    cannot travel inside a milter string: it ends the address, and what is before it
    is judged), a REPLYCODE that is one printable line of at most 980 bytes, and a
    decision log line without a control character."""
    posters = {LIST: MEMBERS}
    config = parse_config({"milter": {"listen": ["inet:127.0.0.1:0"]},
                           "static": {"posters": posters}}, "<security>")
    problems = []
    with caplog.at_level(logging.INFO, logger="listgate.decision"), run_daemon(config) as d:
        client = BlockingMilter(d.port)
        for sender, matches in SENDERS.items():
            wire_sender = _milter_sender(sender)
            if b"\0" in wire_sender:  # the NUL ends the address: what is before it counts
                before = wire_sender.split(b"\0")[0].decode()
                matches = normalize_address(before) in MEMBERS
            client.sock.sendall(packet(b"M", wire_sender + b"\0"))
            ident, payload, _ = client.rcpt(LIST)
            client.abort()
            if matches:
                if (ident, payload) != (b"c", b""):
                    problems.append(f"{sender!r}: {ident!r} {payload!r}")
                continue
            text = payload.rstrip(b"\0")
            if ident != b"y" or not text.startswith(b"550 5.7.1 <"):
                problems.append(f"{sender!r}: {ident!r} {payload!r}")
            if payload.count(b"\0") != 1 or CONTROL.search(text.decode("utf-8", "replace")):
                problems.append(f"{sender!r}: control character in {payload!r}")
            if len(text) > MAX_REPLY_TEXT:
                problems.append(f"{sender!r}: {len(text)} bytes")
        client.close()
    for record in caplog.records:
        if CONTROL.search(record.getMessage()):
            problems.append(f"log line with a control character: {record.getMessage()!r}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- real Mailman


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanCore]:
    c = MailmanCore(tmp_path_factory.mktemp("mm-security"), startup_timeout=90)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_like_characters_against_a_real_core(core: MailmanCore) -> None:
    """Mailman's members/find turns '*' into a SQL LIKE pattern in which '%' and '_' are
    live: no sender with '*', '%' or '_' is taken for a member it is not, and the members
    whose addresses really hold '_' or '%' are still recognised."""
    ml = core.new_list(settings={"default_nonmember_action": "reject"})
    uid = secrets.token_hex(3)
    alice, under, pct = f"alice{uid}@example.com", f"bob_{uid}@example.com", \
        f"c%{uid}@example.com"
    for member in (alice, under, pct):
        core.subscribe(ml, member)
    lst = str(ml.fqdn_listname)
    expect = {
        alice: Verdict.ACCEPT, under: Verdict.ACCEPT, pct: Verdict.ACCEPT,
        "*@example.com": Verdict.REJECT, f"alice{uid}*": Verdict.REJECT,
        "alice*@example.com": Verdict.REJECT, f"*{uid}@example.com": Verdict.REJECT,
        "%@example.com": Verdict.REJECT, f"alice{uid}%": Verdict.REJECT,
        f"a%{uid}@example.com": Verdict.REJECT, f"_lice{uid}@example.com": Verdict.REJECT,
        f"alice{uid}@example.co_": Verdict.REJECT, f"bobx{uid}@example.com": Verdict.REJECT,
        f"c{uid}@example.com": Verdict.REJECT, f"cxx{uid}@example.com": Verdict.REJECT,
        f"bob%{uid}@example.com": Verdict.REJECT, f"c_{uid}@example.com": Verdict.REJECT,
        f"*{uid}*": Verdict.REJECT,
    }

    async def run() -> dict[str, Verdict]:
        source = MailmanClient(core.url, core.user, core.password, timeout=5)
        gate = Gate(MailmanBackend(source, CacheConfig()), ReplyTexts())
        try:
            return {s: (await gate.decide(PostingRequest(s, lst))).verdict for s in expect}
        finally:
            await source.aclose()

    got = asyncio.run(run())
    assert got == expect


# --------------------------------------------------------------------------- the password


PASSWORD = "Pw-" + secrets.token_urlsafe(12)
USER = "restadmin"


def _secrets() -> list[bytes]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    return [PASSWORD.encode(), basic, basic.decode().encode("ascii")]


def _mailman_config(tmp_path: Path, url: str, port: int) -> str:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return toml({
        "milter": {"listen": f"inet:127.0.0.1:{port}"},
        "backend": {"type": "mailman"},
        "mailman": {"url": url, "user": USER, "password_file": str(secret), "timeout": 0.5},
        "log": {"level": "debug"},
    })


@pytest.mark.parametrize("fault", ["http-500", "refused", "timeout"])
def test_password_never_in_logs_argv_environ(tmp_path: Path, fault: str) -> None:
    """A daemon whose Mailman fails (HTTP 500 from a proxy, connection refused, no
    answer), logging at debug level: after RCPTs that make it call REST and fail, the
    password and its base64 basic-auth form are in none of: its log, /proc/PID/cmdline,
    /proc/PID/environ."""
    proxy = None
    if fault == "refused":
        url = f"http://127.0.0.1:{free_port()}/3.1"
    else:
        proxy = FaultProxy(free_port(), mode="500" if fault == "http-500" else "delay",
                           delay=5).start()
        url = proxy.url
    port = free_port()
    try:
        with Serve(tmp_path, _mailman_config(tmp_path, url, port),
                   wait_for=(f"inet:127.0.0.1:{port}",)).start() as daemon:
            client = BlockingMilter(port)
            for i in range(3):
                client.mail(f"s{i}@example.net")
                _, payload, _ = client.rcpt("list@example.org")
                assert payload.startswith(b"451 4.3.0 "), payload  # nothing known: tempfail
                client.abort()
            client.close()
            wait_until(lambda: "cannot decide" in daemon.log(), 5, "the failure warning")
            cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{daemon.pid}/environ").read_bytes()
        log = daemon.log().encode()
    finally:
        if proxy is not None:
            proxy.stop()
    if proxy is not None:
        assert proxy.requests > 0  # the REST calls were made (with the password)
    for secret in _secrets():
        assert secret not in log
        assert secret not in cmdline
        assert secret not in environ
    assert b"Mailman REST" in log  # the error itself is logged


@pytest.mark.parametrize("fault", ["http-500", "refused", "timeout", "reset"])
def test_password_never_in_exception_texts(fault: str) -> None:
    """MailmanClient's errors (and their tracebacks) never carry the password."""
    proxy = None
    if fault == "refused":
        url = f"http://127.0.0.1:{free_port()}/3.1"
    else:
        mode = {"http-500": "500", "timeout": "delay", "reset": "reset"}[fault]
        proxy = FaultProxy(free_port(), mode=mode, delay=5).start()
        url = proxy.url

    async def run() -> list[str]:
        source = MailmanClient(url, USER, PASSWORD, timeout=0.5)
        texts = []
        try:
            for call in (source.directory(), source.memberships("a@example.com"),
                         source.linked_addresses("a@example.com"), source.global_bans()):
                try:
                    await call
                except BackendUnavailable as exc:
                    texts += [str(exc), repr(exc),
                              "".join(traceback.format_exception(exc))]
                else:
                    raise AssertionError("no error")
        finally:
            await source.aclose()
        return texts

    try:
        texts = asyncio.run(run())
    finally:
        if proxy is not None:
            proxy.stop()
    assert len(texts) == 12
    for text in texts:
        for secret in _secrets():
            assert secret.decode() not in text


def test_password_never_in_config_output(tmp_path: Path) -> None:
    """repr/str of the loaded config, config_to_dict and ``listgate config check`` show
    the password as *** or not at all."""
    path = tmp_path / "listgate.toml"
    path.write_text(_mailman_config(tmp_path, "http://127.0.0.1:9/3.1", free_port()))
    config = load_config(path)
    inline = parse_config({"backend": {"type": "mailman"}, "mailman": {"password": PASSWORD}})
    shown = [repr(config), str(config), repr(config_to_dict(config)), repr(inline),
             str(inline.mailman), repr(config_to_dict(inline))]
    proc = subprocess.run([sys.executable, "-m", "listgate", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    shown += [proc.stdout, proc.stderr]
    for text in shown:
        assert PASSWORD not in text


# --------------------------------------------------------------------------- unix socket


@pytest.mark.parametrize("mode", ["0600", "0660", "0666"])
def test_unix_sockets_get_the_configured_mode(tmp_path: Path, mode: str) -> None:
    """A real daemon started with umask 000 and with umask 077: the milter and policy
    unix sockets have exactly the configured mode."""
    for umask in (0o000, 0o077):
        work = tmp_path / f"u{umask:o}"
        work.mkdir()
        milter, policy = work / "milter.sock", work / "policy.sock"
        config = toml({
            "milter": {"listen": f"unix:{milter}", "socket_mode": mode},
            "policy": {"listen": f"unix:{policy}", "socket_mode": mode},
        }) + f'[static.posters]\n"{LIST}" = ["member@example.com"]\n'
        with Serve(work, config, umask=umask,
                   wait_for=(f"unix:{milter}", f"unix:{policy}")).start():
            for path in (milter, policy):
                st = os.stat(path)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == int(mode, 8), (path, oct(st.st_mode))
        assert not milter.exists()
        assert not policy.exists()
