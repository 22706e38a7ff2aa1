"""Authenticated posters end to end: a private Postfix relays to the LMTP sink through
listgate (``require_authenticated``), with SPF and DKIM published by a real NSD on
loopback; listgate verifies itself (listener "verify") or trusts OpenDKIM's
Authentication-Results: as a milter before it (listener "upstream")."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dns_server import MEMBER, AuthDns
from support import ListgateServe

from .harness import (
    CLIENT_HELO,
    LIST,
    Listener,
    LmtpSink,
    PostfixInstance,
    RecordingSMTP,
    Reply,
    Transcript,
    find_binary,
    free_port,
    message_bytes,
    new_token,
    traversable_tmpdir,
    wait_until,
)

pytestmark = pytest.mark.postfix

AUTHSERV_ID = "mx.feas.test"


def listgate_config(milter_port: int, auth: dict[str, object]) -> str:
    """A static map with one require_authenticated list, and [auth] as given."""
    q = json.dumps
    lines = [
        "[milter]", f'listen = "inet:127.0.0.1:{milter_port}"',
        "[static.posters]", f'{q(LIST)} = [{q(MEMBER)}]',
        f"[lists.{q(LIST)}]", "require_authenticated = true",
        "[auth]",
    ]
    for key, value in auth.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class AuthEnv:
    """What the tests drive."""

    postfix: PostfixInstance
    sink: LmtpSink
    dns: AuthDns
    verify: ListgateServe
    upstream: ListgateServe

    def client(self, listener: str, source: str = "127.0.0.1") -> RecordingSMTP:
        """An SMTP session to *listener* from *source* (another 127.0.0.x is another
        client for SPF)."""
        return SourcedSMTP(Transcript(listener), self.postfix.listeners[listener].port, source)


class SourcedSMTP(RecordingSMTP):
    """The harness's recording client, connecting from a chosen loopback address."""

    def __init__(self, transcript: Transcript, port: int, source: str) -> None:
        self.transcript = transcript
        smtplib.SMTP.__init__(self, "127.0.0.1", port, local_hostname=CLIENT_HELO,
                              timeout=20.0, source_address=(source, 0))


def _opendkim(base: Path, dns: AuthDns) -> tuple[subprocess.Popen[bytes], int]:
    """OpenDKIM (Debian's) verifying with the suite's NSD through its libunbound."""
    port = free_port()
    (base / "unbound.conf").write_text(
        "server:\n  do-not-query-localhost: no\n"
        f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{dns.server.port}\n')
    (base / "opendkim.conf").write_text(
        f"Mode v\nSocket inet:{port}@127.0.0.1\nAuthservID {AUTHSERV_ID}\n"
        f"AlwaysAddARHeader yes\nResolverConfiguration {base}/unbound.conf\n"
        f"Background no\nSyslog no\nUserID root\nPidFile {base}/opendkim.pid\n")
    proc = subprocess.Popen([find_binary("opendkim"), "-f", "-x", str(base / "opendkim.conf")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until(lambda: _listening(port), 10.0, f"opendkim on 127.0.0.1:{port}")
    return proc, port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def env(auth_dns: AuthDns) -> Iterator[AuthEnv]:
    """NSD, two listgates (verify, upstream), OpenDKIM and a Postfix with two listeners."""
    base = traversable_tmpdir("lg-auth-")
    sink = LmtpSink()
    sink.start()
    verify_port, upstream_port = free_port(), free_port()
    (base / "verify").mkdir()
    (base / "upstream").mkdir()
    verify = ListgateServe(base / "verify", listgate_config(verify_port, {
        "nameservers": [auth_dns.server.address], "dns_timeout": 1.0}),
        wait_for=[f"inet:127.0.0.1:{verify_port}"], ready_line=None)
    upstream = ListgateServe(base / "upstream", listgate_config(upstream_port, {
        "source": "upstream", "authserv_id": AUTHSERV_ID}),
        wait_for=[f"inet:127.0.0.1:{upstream_port}"], ready_line=None)
    for lg in (verify, upstream):
        lg.start()
    opendkim, od_port = _opendkim(base, auth_dns)
    postfix = PostfixInstance(base / "postfix", [
        Listener("verify", free_port(), f"inet:127.0.0.1:{verify_port}"),
        Listener("upstream", free_port(),
                 f"inet:127.0.0.1:{od_port},inet:127.0.0.1:{upstream_port}"),
    ], sink.port)
    postfix.create()
    postfix.start()
    try:
        yield AuthEnv(postfix, sink, auth_dns, verify, upstream)
    finally:
        postfix.stop()
        opendkim.kill()  # our own child; SIGTERM makes it linger for seconds
        opendkim.wait(10)
        for lg in (verify, upstream):
            lg.stop()
        sink.stop()


def post(env: AuthEnv, listener: str, message: bytes, source: str = "127.0.0.1",
         sender: str = MEMBER) -> tuple[Reply, Reply | None]:
    """MAIL, RCPT to the list, DATA: the RCPT reply and the final reply (None if the
    RCPT was refused)."""
    smtp = env.client(listener, source)
    try:
        smtp.hello()
        smtp.mail(sender)
        rcpt = smtp.rcpt(LIST)
        if rcpt.code != 250:
            return rcpt, None
        _data, final = smtp.data_message(message)
        return rcpt, final
    finally:
        smtp.close_politely()


def token_message(env: AuthEnv, *, sign: str | None = None, tamper: bool = False,
                  extra: bytes = b"", selector: str = "sel") -> tuple[str, bytes]:
    token = new_token()
    msg = extra + message_bytes(MEMBER, [LIST], token)
    if sign == "example.com":
        msg = env.dns.example.sign(msg, "example.com", selector)
    elif sign == "other.org":
        msg = env.dns.other.sign(msg, "other.org")
    if tamper:
        msg = msg.replace(b"token ", b"t0ken ")
    return token, msg


def delivered(env: AuthEnv, token: str, expect: bool) -> bool:
    if expect:
        env.sink.wait_for(token, [LIST])
        return True
    env.postfix.wait_queue_empty()
    return bool(env.sink.deliveries_for(token))


def test_member_with_aligned_dkim_is_delivered(env: AuthEnv) -> None:
    """From a client SPF excludes, a member's mail signed d=example.com passes at EOM."""
    token, msg = token_message(env, sign="example.com")
    rcpt, final = post(env, "verify", msg, source="127.0.0.2")
    assert rcpt.code == 250
    assert final is not None
    assert final.code == 250, final
    assert delivered(env, token, True)


def test_same_from_unsigned_is_refused_at_end_of_message(env: AuthEnv) -> None:
    """Unsigned, from an SPF-excluded client: judged as a nonmember, 550 after DATA."""
    token, msg = token_message(env)
    rcpt, final = post(env, "verify", msg, source="127.0.0.2")
    assert rcpt.code == 250  # pending: DKIM may still prove the From:
    assert final is not None
    assert final.line.startswith(f"550 5.7.1 <{MEMBER}> is a member of <{LIST}>, but this "
                                 "message is not authenticated"), final
    assert not delivered(env, token, False)


def test_member_envelope_with_spf_pass_is_accepted_at_rcpt(env: AuthEnv) -> None:
    """From 127.0.0.1 (in example.com's SPF record) the envelope sender is proven."""
    token, msg = token_message(env)
    rcpt, final = post(env, "verify", msg, source="127.0.0.1")
    assert rcpt.code == 250
    assert final is not None
    assert final.code == 250
    assert delivered(env, token, True)
    assert "authenticated <member@example.com>: SPF pass for example.com" in env.verify.log()


@pytest.mark.parametrize("case", ["tampered", "other-domain"])
def test_broken_or_unaligned_signature_is_refused(env: AuthEnv, case: str) -> None:
    """A body altered after signing, or a signature of other.org, proves nothing."""
    if case == "tampered":
        token, msg = token_message(env, sign="example.com", tamper=True)
    else:
        token, msg = token_message(env, sign="other.org")
    _rcpt, final = post(env, "verify", msg, source="127.0.0.2")
    assert final is not None
    assert final.code == 550, final
    assert not delivered(env, token, False)


def test_dns_server_stopped_is_451_within_the_deadline_never_550(env: AuthEnv) -> None:
    """With NSD stopped, the DKIM key (a selector never looked up, so not in listgate's
    resolver cache) cannot be fetched: 451 4.7.5 at end of message, within dns_timeout."""
    token, msg = token_message(env, sign="example.com", selector=new_token()[:12])
    env.dns.server.stop()
    try:
        started = time.monotonic()
        rcpt, final = post(env, "verify", msg, source="127.0.0.3")
        took = time.monotonic() - started
    finally:
        env.dns.server.start()
    assert rcpt.code == 250
    assert final is not None
    assert final.line.startswith("451 4.7.5 "), final
    assert took < 4.0  # two checks of at most dns_timeout = 1 s each, plus Postfix
    assert not delivered(env, token, False)


def test_upstream_opendkim_results_are_trusted(env: AuthEnv) -> None:
    """OpenDKIM before listgate adds Authentication-Results: dkim=pass; listgate sees it
    (Postfix shows later milters the headers earlier ones added) and accepts."""
    token, msg = token_message(env, sign="example.com")
    rcpt, final = post(env, "upstream", msg, source="127.0.0.2")
    assert rcpt.code == 250
    assert final is not None
    assert final.code == 250, (final, env.upstream.log()[-2000:])
    assert delivered(env, token, True)
    data = env.sink.deliveries_for(token)[0].data
    assert f"Authentication-Results: {AUTHSERV_ID};".encode() in data


@pytest.mark.parametrize(("forged", "why"), [
    # OpenDKIM removes a header with its authserv-id that has a dkim result ...
    (b"Authentication-Results: mx.feas.test; dkim=pass header.d=example.com\r\n",
     "no valid DKIM signature, results of mx.feas.test"),
    # ... but not one without: listgate then sees two and trusts neither.
    (b"Authentication-Results: mx.feas.test; spf=pass smtp.mailfrom=member@example.com;"
     b" dmarc=pass header.from=example.com\r\n",
     "2 Authentication-Results: from mx.feas.test, expected 1: one came from outside"),
])
def test_forged_authentication_results_from_the_client_are_not_trusted(
    env: AuthEnv, forged: bytes, why: str
) -> None:
    """A client's own Authentication-Results: with the trusted authserv-id (removed by
    OpenDKIM, or left and then outnumbering OpenDKIM's one) never proves the member."""
    token, msg = token_message(env, extra=forged)
    _rcpt, final = post(env, "upstream", msg, source="127.0.0.2")
    assert final is not None
    assert final.code == 550, final
    assert not delivered(env, token, False)
    assert why in env.upstream.log()
