"""listgate behind a real Sendmail 8.17 (Debian's sendmail-bin, unpacked, never installed).

sendmail.cf is built with m4 and Debian's sendmail-cf macros from a private .mc that
contains the shipped deploy/sendmail/listgate.mc (``INPUT_MAIL_FILTER(..., F=T)``), its
socket pointed at this module's listgate. One private Sendmail daemon serves the module
on four ports, each with its own listgate milter: "main" (static map, the shipped
filter line), "down" (a listgate that one test stops), "headers" (static map, the list
decides at end of headers) and "mailman" (Mailman backend, a real core). Accepted mail
goes over LMTP to the aiosmtpd sink. Sendmail runs in private mount+UTS namespaces under
strace; the last test reads the trace. Run with ``-s`` to see the SMTP transcripts (also
saved in each test's tmp dir as ``smtp-transcripts.txt``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from .conftest import _failed
from .harness import (
    LIST,
    MEMBER,
    OUTSIDER,
    POSTERS,
    ListgateProcess,
    LmtpSink,
    RecordingSMTP,
    accepts_connections,
    free_port,
    message_bytes,
    new_token,
    tail,
    traversable_tmpdir,
    wait_until,
)
from .mailman_fixtures import (
    CAROL_ALT,
    MailmanListgate,
    MailmanWorld,
    populate,
    require_mailman,
)
from .mta_harness import (
    MtaSessions,
    SendmailInstance,
    SendmailListener,
    network_calls,
    outbound_calls,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"
DATA_GO = "354 End data with <CR><LF>.<CR><LF>"
TRY_LATER = "451 4.3.2 Please try again later"
"""Sendmail's reply while the F=T filter cannot be reached."""
LISTENERS = ("main", "down", "headers", "mailman")


def mail_ok(sender: str) -> str:
    """Sendmail's MAIL reply."""
    return f"250 2.1.0 <{sender}>... Sender ok"


def rcpt_ok(rcpt: str) -> str:
    """Sendmail's RCPT reply."""
    return f"250 2.1.5 <{rcpt}>... Recipient ok"


def rejection(sender: str, lst: str = LIST) -> str:
    """listgate's 550 at RCPT as Sendmail sends it: ``<rcpt>... `` before listgate's text."""
    return f"550 5.7.1 <{lst}>... <{sender}> is not allowed to post to <{lst}>"


ALONE = "452 4.5.3 Too many recipients: send the list post in a transaction of its own"
"""listgate's 452 for a recipient that would share a transaction with a pending list:
Sendmail passes it on as it is (no ``<rcpt>...`` prefix, unlike a 5xx)."""


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class SendmailEnv:
    """The module's Sendmail and the milter each of its listeners uses."""

    sendmail: SendmailInstance
    milter: dict[str, str]
    """listener -> listgate [milter] listen spec."""


@pytest.fixture(scope="module")
def sendmail_env(
    sink: LmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SendmailEnv]:
    """A private Sendmail daemon with listeners main, down, headers and mailman."""
    base = traversable_tmpdir("lg-e2e-sm-")
    milter = {name: f"inet:127.0.0.1:{free_port()}" for name in LISTENERS}
    sendmail = SendmailInstance(
        base, [SendmailListener(name, free_port(), milter[name]) for name in LISTENERS],
        sink.port,
    )
    try:
        sendmail.create()
        sendmail.start()
        yield SendmailEnv(sendmail, milter)
    finally:
        try:
            sendmail.stop()
        finally:
            keep = tmp_path_factory.mktemp("sendmail")
            for name in ("sendmail.mc", "sendmail.cf", "smtp-traffic.log", "strace.log",
                         "daemon.out"):
                if (base / name).exists():
                    shutil.copy(base / name, keep / name)
            shutil.rmtree(base, ignore_errors=True)


def _static_listgate(
    workdir: Path, milter: str, extra_toml: str = ""
) -> Iterator[ListgateProcess]:
    lg = ListgateProcess(workdir, [milter], POSTERS)
    lg.config_path.write_text(lg.config_path.read_text() + extra_toml)
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@pytest.fixture(scope="module")
def listgate_main(
    sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The listgate (static map) that listener "main" uses."""
    yield from _static_listgate(tmp_path_factory.mktemp("listgate-sm"),
                                sendmail_env.milter["main"])


@pytest.fixture(scope="module")
def listgate_headers(
    sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """listgate (static map) with ``decide_at = "headers"`` for the list, listener
    "headers"."""
    yield from _static_listgate(
        tmp_path_factory.mktemp("listgate-sm-headers"), sendmail_env.milter["headers"],
        f'\n[lists.{json.dumps(LIST)}]\ndecide_at = "headers"\n',
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanWorld]:
    """A running Mailman core with the test list and its posters."""
    require_mailman()
    core = MailmanCore(tmp_path_factory.mktemp("mailman-core"))
    core.start()
    try:
        yield populate(core)
    finally:
        core.stop()


@pytest.fixture(scope="module")
def listgate_mailman(
    world: MailmanWorld, sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate with the Mailman backend (empty cache at start), listener "mailman"."""
    lg = MailmanListgate(tmp_path_factory.mktemp("listgate-sm-mailman"),
                         [sendmail_env.milter["mailman"]], world.core)
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@pytest.fixture
def smtp(
    sendmail_env: SendmailEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MtaSessions]:
    """Recorded SMTP sessions; transcripts printed (``-s``) and saved in tmp_path."""
    ports = {name: sendmail_env.sendmail.port(name) for name in LISTENERS}
    sessions = MtaSessions(ports, request.node.name)
    yield sessions
    text = sessions.close()
    (tmp_path / "smtp-transcripts.txt").write_text(text)
    print(f"\n{text}", end="")
    if _failed(request):
        print(sendmail_env.sendmail.describe())
        for name in ("listgate_main", "listgate_headers", "listgate_mailman"):
            if name in request.fixturenames:
                lg = request.getfixturevalue(name)
                print(f"=== {name} stderr, tail ===\n{tail(lg.stderr_text())}")


# --------------------------------------------------------------------------- helpers


def deliver(
    client: RecordingSMTP, env: SendmailEnv, sink: LmtpSink, sender: str, expect: list[str],
    header_from: str | None = None,
) -> str:
    """DATA (From: *header_from* or the envelope) after MAIL/RCPT: 354, then 250 with the
    queue id; delivered to exactly *expect*, once each, with the envelope sender kept;
    the message's token."""
    token = new_token()
    first, final = client.data_message(message_bytes(header_from or sender, expect, token))
    assert first.line == DATA_GO
    assert final is not None, "no reply after the message body"
    assert final.code == 250, final
    assert final.text.endswith(" Message accepted for delivery"), final
    sink.wait_for(token, expect)
    env.sendmail.wait_queue_empty()
    assert sink.recipients_for(token) == sorted(r.lower() for r in expect), "wrong or duplicate"
    assert [d.mail_from for d in sink.deliveries_for(token)] == [sender]
    return token


def decisions(lg: ListgateProcess) -> list[str]:
    """listgate's decision log lines so far."""
    return [ln for ln in lg.stderr_text().splitlines() if "listgate.decision" in ln]


def session(smtp: MtaSessions, listener: str, sender: str, title: str) -> RecordingSMTP:
    """A recorded session: EHLO and MAIL *sender* (both 250)."""
    c = smtp.connect(listener, title)
    assert c.hello().code == 250
    assert c.mail(sender).line == mail_ok(sender)
    return c


# --------------------------------------------------------------------------- static map


def test_member_is_accepted_and_delivered_once(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """A member gets 250 at RCPT and the post reaches the sink exactly once."""
    c = session(smtp, "main", MEMBER, "member posts to the list")
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    deliver(c, sendmail_env, sink, MEMBER, [LIST])
    assert any(f"from=<{MEMBER}> to=<{LIST}>" in ln and "verdict=accept" in ln
               for ln in decisions(listgate_main))


def test_nonmember_gets_listgates_exact_550(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """A nonmember gets 550 5.7.1 with listgate's text after Sendmail's ``<rcpt>...``;
    DATA is refused and nothing is queued."""
    c = session(smtp, "main", OUTSIDER, "nonmember posts to the list")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.command("DATA").code == 503
    assert sendmail_env.sendmail.queued() == []
    assert any(f"from=<{OUTSIDER}> to=<{LIST}>" in ln and "verdict=reject" in ln
               for ln in decisions(listgate_main))


def test_multi_recipient_only_the_list_is_refused(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """alice, list, bob from a nonmember: 250/550/250, and DATA reaches alice and bob only."""
    c = session(smtp, "main", OUTSIDER, "nonmember to alice, list, bob")
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.rcpt(BOB).line == rcpt_ok(BOB)
    deliver(c, sendmail_env, sink, OUTSIDER, [ALICE, BOB])


def test_two_transactions_in_one_session(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """One SMTP session, three transactions on one milter connection: a nonmember's post
    (list refused, alice delivered), a member's post (delivered), a nonmember again
    (refused)."""
    c = session(smtp, "main", OUTSIDER, "three transactions, one session")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    deliver(c, sendmail_env, sink, OUTSIDER, [ALICE])
    assert c.mail(MEMBER).line == mail_ok(MEMBER)
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    deliver(c, sendmail_env, sink, MEMBER, [LIST])
    assert c.mail(OUTSIDER).line == mail_ok(OUTSIDER)
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.reset().code == 250


def test_listgate_stopped_gives_4xx_and_nothing_is_delivered(
    sendmail_env: SendmailEnv, sink: LmtpSink, smtp: MtaSessions, tmp_path: Path
) -> None:
    """F=T: listgate stopped in the middle of a transaction: the next RCPT and DATA get
    451 (never 250, although alice was accepted); a new session gets 451 at MAIL; DATA
    is refused and nothing is delivered."""
    spec = sendmail_env.milter["down"]
    lg = ListgateProcess(tmp_path, [spec], POSTERS)
    lg.start()
    token = new_token()
    try:
        c = session(smtp, "down", MEMBER, "listgate stops in the middle of a transaction")
        assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    finally:
        assert lg.stop() == 0, lg.stderr_text()
    assert not accepts_connections(spec), "something still listens"
    assert c.rcpt(LIST).line == TRY_LATER
    first_data, final = c.data_message(message_bytes(MEMBER, [ALICE, LIST], token))
    assert first_data.line == TRY_LATER
    assert final is None

    down = smtp.connect("down", "listgate stopped")
    assert down.hello().code == 250
    assert down.mail(MEMBER).line == TRY_LATER
    assert down.rcpt(LIST).code == 503
    first_data, final = down.data_message(message_bytes(MEMBER, [LIST], token))
    assert first_data.code == 503, first_data
    assert final is None
    assert sendmail_env.sendmail.queued() == []
    assert sink.deliveries_for(token) == []


# --------------------------------------------------------------------------- headers mode


def test_headers_nonmember_is_refused_at_end_of_headers(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """decide_at = "headers": a nonmember envelope is accepted at RCPT (pending); with
    From: a nonmember too, the DATA reply is listgate's 550 and nothing is delivered."""
    c = session(smtp, "headers", OUTSIDER, "nonmember envelope, From: nonmember")
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [LIST], token))
    assert first.line == DATA_GO
    assert final is not None
    assert final.line == f"550 5.7.1 <{OUTSIDER}> is not allowed to post to <{LIST}>"
    assert c.reset().code == 250
    assert sendmail_env.sendmail.queued() == []
    assert sink.deliveries_for(token) == []


def test_headers_member_from_header_admits_the_post(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """decide_at = "headers": a nonmember envelope (a forwarder, say) with From: a member
    is delivered, as Mailman would accept it."""
    c = session(smtp, "headers", OUTSIDER, "nonmember envelope, From: member")
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    deliver(c, sendmail_env, sink, OUTSIDER, [LIST], header_from=MEMBER)


def test_headers_pending_list_after_accepted_recipient_gets_452(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """decide_at = "headers": the pending list after an accepted recipient gets 452 4.5.3,
    and so does every recipient after a pending list; the others are delivered."""
    c = session(smtp, "headers", OUTSIDER, "accepted recipient, then pending list")
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    assert c.rcpt(LIST).line == ALONE
    deliver(c, sendmail_env, sink, OUTSIDER, [ALICE])
    assert c.mail(OUTSIDER).line == mail_ok(OUTSIDER)
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    assert c.rcpt(BOB).line == ALONE
    assert c.reset().code == 250


# --------------------------------------------------------------------------- Mailman


def test_mailman_member_is_accepted(
    world: MailmanWorld, sendmail_env: SendmailEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend, first lookup (nothing cached): the member gets 250, delivered."""
    assert decisions(listgate_mailman) == [], "this must be the listgate's first request"
    lst = world.list_address
    c = session(smtp, "mailman", MEMBER, "member, cold cache")
    assert c.rcpt(lst).line == rcpt_ok(lst)
    deliver(c, sendmail_env, sink, MEMBER, [lst])


def test_mailman_nonmember_gets_550(
    world: MailmanWorld, sendmail_env: SendmailEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend: a nonmember of a list that rejects nonmembers gets listgate's 550;
    alice in the same transaction is delivered."""
    lst = world.list_address
    c = session(smtp, "mailman", OUTSIDER, "nonmember")
    assert c.rcpt(lst).line == rejection(OUTSIDER, lst)
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    deliver(c, sendmail_env, sink, OUTSIDER, [ALICE])


def test_mailman_linked_address_is_accepted(
    world: MailmanWorld, sendmail_env: SendmailEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend: an address linked to a subscribed member's user (not itself
    subscribed) may post: 250 and delivered."""
    lst = world.list_address
    c = session(smtp, "mailman", CAROL_ALT, "linked address")
    assert c.rcpt(lst).line == rcpt_ok(lst)
    deliver(c, sendmail_env, sink, CAROL_ALT, [lst])


# --------------------------------------------------------------------------- network


def test_sendmail_queried_no_resolver_and_stayed_on_loopback(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: MtaSessions,
) -> None:
    """strace of every Sendmail process since the daemon started (this module's sessions,
    milter connections, deliveries): every connect/sendto/sendmsg went to 127.0.0.1 and
    none to port 53. The milter and sink connections are in the trace, so it saw them."""
    c = session(smtp, "main", OUTSIDER, "one more session for the trace")
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    deliver(c, sendmail_env, sink, OUTSIDER, [ALICE])
    daemon = sendmail_env.sendmail.daemon
    assert daemon is not None
    milter_port = int(sendmail_env.milter["main"].rsplit(":", 1)[1])

    def seen() -> set[int] | None:
        ports = {call.port for call in network_calls(daemon.trace())}
        return ports if {milter_port, sink.port} <= ports else None

    wait_until(seen, 10.0, "the milter and sink connections in the strace log")
    calls = network_calls(daemon.trace())
    print(f"{len(calls)} socket calls with a peer address; ports: "
          f"{sorted({call.port for call in calls})}")
    assert outbound_calls(calls) == []
