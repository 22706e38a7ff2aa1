"""listgate behind a real Sendmail 8.17 (Debian's sendmail-bin, unpacked, never installed).

sendmail.cf is built with m4 and Debian's sendmail-cf macros from a private .mc that
contains the shipped deploy/sendmail/listgate.mc (``INPUT_MAIL_FILTER(..., F=T)``), its
socket pointed at this module's listgate. One private Sendmail daemon serves the module
on four ports, each with its own listgate milter: "main" (static map, the shipped
filter line), "down" (a listgate that one test stops), "headers" (static map, the list
decides at end of headers) and "mailman" (Mailman backend, a real core). Accepted mail
goes over LMTP to the aiosmtpd sink. Sendmail runs in private mount+UTS namespaces under
strace; the last test reads the trace. The scenarios every MTA shares come from
mta_scenarios.py (the ``Test*`` classes). Run with ``-s`` to see the SMTP transcripts
(also saved in each test's tmp dir as ``smtp-transcripts.txt``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import recorded_smtp
from .harness import (
    ALICE,
    BOB,
    LIST,
    MEMBER,
    OUTSIDER,
    POSTERS,
    ListgateProcess,
    LmtpSink,
    SmtpSessions,
    accepts_connections,
    free_port,
    instance_lifetime,
    message_bytes,
    new_token,
    serving,
    traversable_tmpdir,
)
from .mailman_fixtures import MailmanListgate, MailmanWorld
from .mta_harness import SendmailInstance, SendmailListener, TracedDaemon
from .mta_scenarios import (
    SENDMAIL,
    Gate,
    LoopbackScenarios,
    MailmanScenarios,
    MtaEnv,
    StaticMapScenarios,
    TransactionScenarios,
    deliver,
    transaction,
)

DATA_GO = SENDMAIL.data_go
TRY_LATER = "451 4.3.2 Please try again later"
"""Sendmail's reply while the F=T filter cannot be reached."""
LISTENERS = ("main", "down", "headers", "mailman")
mail_ok, rcpt_ok, rejection = SENDMAIL.mail_ok, SENDMAIL.rcpt_ok, SENDMAIL.rejection
ALONE = "452 4.5.3 Too many recipients: send the list post in a transaction of its own"
"""listgate's 452 for a recipient that would share a transaction with a pending list:
Sendmail passes it on as it is (no ``<rcpt>...`` prefix, unlike a 5xx)."""
SENDMAIL_FILES = ("sendmail.mc", "sendmail.cf", "smtp-traffic.log", "strace.log", "daemon.out")
"""What a test report keeps of the Sendmail instance."""


# --------------------------------------------------------------------------- fixtures


SendmailEnv = MtaEnv[SendmailInstance]
"""The module's Sendmail and the listgate milter spec each of its listeners uses."""


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
    with instance_lifetime(
        sendmail, base, lambda: tmp_path_factory.mktemp("sendmail"), SENDMAIL_FILES
    ):
        yield MtaEnv(sendmail, SENDMAIL, milter)


def _static_listgate(
    workdir: Path, milter: str, extra_toml: str = ""
) -> Iterator[ListgateProcess]:
    lg = ListgateProcess(workdir, [milter], POSTERS)
    lg.config_path.write_text(lg.config_path.read_text() + extra_toml)
    yield from serving(lg)


@pytest.fixture(scope="module")
def listgate_main(
    sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The listgate (static map) that listener "main" uses."""
    yield from _static_listgate(tmp_path_factory.mktemp("listgate-sm"),
                                sendmail_env.specs["main"])


@pytest.fixture(scope="module")
def listgate_headers(
    sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """listgate (static map) with ``decide_at = "headers"`` for the list, listener
    "headers"."""
    yield from _static_listgate(
        tmp_path_factory.mktemp("listgate-sm-headers"), sendmail_env.specs["headers"],
        f'\n[lists.{json.dumps(LIST)}]\ndecide_at = "headers"\n',
    )


@pytest.fixture(scope="module")
def listgate_mailman(
    world: MailmanWorld, sendmail_env: SendmailEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate with the Mailman backend (empty cache at start), listener "mailman"."""
    yield from serving(MailmanListgate(tmp_path_factory.mktemp("listgate-sm-mailman"),
                                       [sendmail_env.specs["mailman"]], world.core))


@pytest.fixture(scope="module")
def gate(sendmail_env: SendmailEnv, listgate_main: ListgateProcess) -> Gate:
    """Listener "main" and its listgate, for the shared scenarios."""
    return sendmail_env.gate("main", listgate_main)


@pytest.fixture(scope="module")
def mailman_gate(sendmail_env: SendmailEnv, listgate_mailman: MailmanListgate) -> Gate:
    """Listener "mailman" and its listgate, for the shared Mailman scenarios."""
    return sendmail_env.gate("mailman", listgate_mailman)


@pytest.fixture(scope="module")
def traced_daemon(sendmail_env: SendmailEnv) -> TracedDaemon:
    """The Sendmail daemon's strace."""
    assert sendmail_env.instance.daemon is not None
    return sendmail_env.instance.daemon


@pytest.fixture
def smtp(
    sendmail_env: SendmailEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SmtpSessions]:
    """Recorded SMTP sessions (see :func:`conftest.recorded_smtp`)."""
    sendmail = sendmail_env.instance
    yield from recorded_smtp(
        request, tmp_path, {name: sendmail.port(name) for name in LISTENERS},
        sendmail.describe, ("listgate_main", "listgate_headers", "listgate_mailman"),
    )


# --------------------------------------------------------------------------- static map


class TestStaticMap(TransactionScenarios, StaticMapScenarios):
    """The static-map scenarios of every MTA, on listener "main"."""


def test_nonmember_gets_listgates_exact_550(
    sendmail_env: SendmailEnv, listgate_main: ListgateProcess, smtp: SmtpSessions,
) -> None:
    """A nonmember gets 550 5.7.1 with listgate's text after Sendmail's ``<rcpt>...``;
    DATA is refused and nothing is queued."""
    c = transaction(smtp, sendmail_env.mta, "main", OUTSIDER, "nonmember posts to the list")
    assert c.rcpt(LIST).line == rejection(OUTSIDER, LIST)
    assert c.command("DATA").code == 503
    assert sendmail_env.instance.queued() == []
    assert listgate_main.decided(OUTSIDER, LIST, "reject")


def test_listgate_stopped_gives_4xx_and_nothing_is_delivered(
    sendmail_env: SendmailEnv, sink: LmtpSink, smtp: SmtpSessions, tmp_path: Path
) -> None:
    """F=T: listgate stopped in the middle of a transaction: the next RCPT and DATA get
    451 (never 250, although alice was accepted); a new session gets 451 at MAIL; DATA
    is refused and nothing is delivered."""
    spec = sendmail_env.specs["down"]
    lg = ListgateProcess(tmp_path, [spec], POSTERS)
    lg.start()
    token = new_token()
    try:
        c = transaction(smtp, sendmail_env.mta, "down", MEMBER,
                        "listgate stops in the middle of a transaction")
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
    assert sendmail_env.instance.queued() == []
    assert sink.deliveries_for(token) == []


# --------------------------------------------------------------------------- headers mode


def test_headers_nonmember_is_refused_at_end_of_headers(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """decide_at = "headers": a nonmember envelope is accepted at RCPT (pending); with
    From: a nonmember too, the DATA reply is listgate's 550 and nothing is delivered."""
    c = transaction(smtp, sendmail_env.mta, "headers", OUTSIDER,
                    "nonmember envelope, From: nonmember")
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [LIST], token))
    assert first.line == DATA_GO
    assert final is not None
    assert final.line == f"550 5.7.1 <{OUTSIDER}> is not allowed to post to <{LIST}>"
    assert c.reset().code == 250
    assert sendmail_env.instance.queued() == []
    assert sink.deliveries_for(token) == []


def test_headers_member_from_header_admits_the_post(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """decide_at = "headers": a nonmember envelope (a forwarder, say) with From: a member
    is delivered, as Mailman would accept it."""
    c = transaction(smtp, sendmail_env.mta, "headers", OUTSIDER,
                    "nonmember envelope, From: member")
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    deliver(c, sendmail_env.mta, sink, OUTSIDER, [LIST], header_from=MEMBER)


def test_headers_pending_list_after_accepted_recipient_gets_452(
    sendmail_env: SendmailEnv, listgate_headers: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """decide_at = "headers": the pending list after an accepted recipient gets 452 4.5.3,
    and so does every recipient after a pending list; the others are delivered."""
    c = transaction(smtp, sendmail_env.mta, "headers", OUTSIDER,
                    "accepted recipient, then pending list")
    assert c.rcpt(ALICE).line == rcpt_ok(ALICE)
    assert c.rcpt(LIST).line == ALONE
    deliver(c, sendmail_env.mta, sink, OUTSIDER, [ALICE])
    assert c.mail(OUTSIDER).line == mail_ok(OUTSIDER)
    assert c.rcpt(LIST).line == rcpt_ok(LIST)
    assert c.rcpt(BOB).line == ALONE
    assert c.reset().code == 250


# --------------------------------------------------------------------------- Mailman


class TestMailman(MailmanScenarios):
    """The Mailman-backend scenarios of every MTA, on listener "mailman"."""


# --------------------------------------------------------------------------- network


class TestLoopback(LoopbackScenarios):
    """Sendmail's strace, read after every other test of the module (keep this class last)."""
