"""listgate behind a real Postfix: SMTP replies at RCPT time and what gets delivered.

Postfix (private instance, see conftest.py) talks to listgate over the milter protocol and
delivers accepted mail over LMTP to an aiosmtpd sink. Run with ``-s`` to see the SMTP
transcripts; they are also saved as ``smtp-transcripts.txt`` in each test's tmp dir. The
scenarios every MTA shares come from mta_scenarios.py (class TestStaticMap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import PostfixEnv
from .harness import (
    ALICE,
    ANNOUNCE,
    LIST,
    MAIL_OK,
    MEMBER,
    NO_VALID_RCPT,
    OUTSIDER,
    RCPT_OK,
    ListgateProcess,
    LmtpSink,
    SmtpSessions,
    accepts_connections,
    ipv6_loopback_available,
    message_bytes,
    new_token,
    rejection,
)
from .mta_scenarios import POSTFIX_MILTER, Gate, Mta, StaticMapScenarios, deliver, transaction

pytestmark = pytest.mark.postfix

TEMPFAIL = "451 4.7.1 Service unavailable - try again later"


@pytest.fixture(scope="module")
def mta(postfix_env: PostfixEnv) -> Mta:
    """The shared Postfix, asking listgate's milter, for :mod:`mta_scenarios`."""
    return Mta(POSTFIX_MILTER, postfix_env.postfix)


@pytest.fixture(scope="module")
def gate(mta: Mta, listgate_main: ListgateProcess) -> Gate:
    """Listener "main" and the session-wide listgate, for the shared scenarios."""
    return Gate(mta, "main", listgate_main)


class TestStaticMap(StaticMapScenarios):
    """The static-map scenarios of every MTA, on listener "main"."""


def test_non_member_is_rejected_and_nothing_is_delivered(
    postfix_env: PostfixEnv, mta: Mta, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """A non-member gets listgate's exact 550 at RCPT and Postfix queues nothing for it."""
    mark = postfix_env.postfix.log_mark()
    seen = len(sink.deliveries)  # the sink is shared: earlier tests delivered to it
    c = transaction(smtp, mta, "main", OUTSIDER, "non-member posts to the list")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    outsider_token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [LIST], outsider_token))
    assert first.line == NO_VALID_RCPT
    assert final is None
    assert c.reset().code == 250
    # A second message in the same session is delivered; once it is, and the queue is
    # empty, the first one can no longer show up.
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, mta, sink, MEMBER, [LIST])
    assert sink.deliveries_for(outsider_token) == []
    assert not [d for d in sink.deliveries[seen:]
                if d.mail_from == OUTSIDER and LIST in d.rcpt_tos]
    postfix_env.postfix.wait_for_log(
        r"postfix-e2e/main/smtpd\[\d+\]: NOQUEUE: milter-reject: RCPT from \S+: "
        + rejection(OUTSIDER).replace(".", r"\.")
        + r"; from=<outsider@example\.net> to=<list@example\.org>",
        since=mark,
    )


@pytest.mark.parametrize(
    "order",
    ["outsider-then-member", "member-delivered-then-outsider", "member-rset-then-outsider"],
)
def test_two_transactions_in_one_session(
    order: str,
    postfix_env: PostfixEnv,
    mta: Mta,
    listgate_main: ListgateProcess,
    sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """Two transactions split by RSET in one SMTP session are each decided on their own sender."""
    c = smtp.connect("main", order)
    assert c.hello().code == 250
    if order == "outsider-then-member":
        assert c.mail(OUTSIDER).line == MAIL_OK
        assert c.rcpt(LIST).line == rejection(OUTSIDER)
        assert c.reset().code == 250
        assert c.mail(MEMBER).line == MAIL_OK
        assert c.rcpt(LIST).line == RCPT_OK
        deliver(c, mta, sink, MEMBER, [LIST])
    else:
        assert c.mail(MEMBER).line == MAIL_OK
        assert c.rcpt(LIST).line == RCPT_OK
        if order == "member-delivered-then-outsider":
            deliver(c, mta, sink, MEMBER, [LIST])
        assert c.reset().code == 250
        assert c.mail(OUTSIDER).line == MAIL_OK
        assert c.rcpt(LIST).line == rejection(OUTSIDER)
        assert c.command("DATA").line == NO_VALID_RCPT


def test_listgate_stopped_gives_451(
    postfix_env: PostfixEnv,
    mta: Mta,
    start_listgate: Callable[..., ListgateProcess],
    smtp: SmtpSessions,
) -> None:
    """With listgate terminated (nothing on its port), Postfix answers 451 4.7.1, not 250/550."""
    lg = start_listgate([postfix_env.down_milter])
    up = transaction(smtp, mta, "down", OUTSIDER, "listgate running")
    assert up.rcpt(LIST).line == rejection(OUTSIDER)  # this listener really uses this listgate
    up.close_politely()

    rc = lg.stop()
    assert rc is not None
    assert not accepts_connections(postfix_env.down_milter), "something still listens"

    mark = postfix_env.postfix.log_mark()
    down = smtp.connect("down", "listgate stopped")
    assert down.hello().code == 250
    mail = down.mail(MEMBER)
    # Postfix answers at MAIL (smtpd_delay_reject = yes) or at RCPT; either is fine.
    decisive = down.rcpt(LIST) if mail.code == 250 else mail
    assert decisive.line == TEMPFAIL
    port = postfix_env.down_milter.rsplit(":", 1)[1]
    postfix_env.postfix.wait_for_log(
        rf"warning: connect to Milter service inet:127\.0\.0\.1:{port}: Connection refused",
        since=mark,
    )


@pytest.mark.parametrize("transport", ["unix", "inet6"])
def test_other_socket_families(
    transport: str,
    postfix_env: PostfixEnv,
    mta: Mta,
    start_listgate: Callable[..., ListgateProcess],
    sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """listgate on a unix: socket and on inet6:[::1] decides correctly through Postfix."""
    if transport == "unix":
        # Postfix's smtpd runs as user postfix; it needs write permission on the socket.
        start_listgate([postfix_env.unix_milter], socket_mode="0666")
    else:
        assert ipv6_loopback_available(), (
            "::1 is not available on this machine (IPv6 disabled?); the inet6 test needs it"
        )
        start_listgate([postfix_env.inet6_milter])
    c = transaction(smtp, mta, transport, OUTSIDER, f"listgate on {transport}")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, mta, sink, MEMBER, [LIST])


def test_postfix_milter_protocol_2(
    postfix_env: PostfixEnv, mta: Mta, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """With Postfix speaking milter protocol version 2, the decisions are the same."""
    c = transaction(smtp, mta, "v2", OUTSIDER, "milter_protocol = 2")
    assert c.rcpt(ALICE).line == RCPT_OK
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, mta, sink, MEMBER, [LIST])


def test_membership_is_per_list(
    postfix_env: PostfixEnv, mta: Mta, listgate_main: ListgateProcess, smtp: SmtpSessions
) -> None:
    """A member of one list is refused by another list, with that list in the reply text."""
    c = transaction(smtp, mta, "main", MEMBER, "member of list posts to announce")
    assert c.rcpt(ANNOUNCE).line == rejection(MEMBER, ANNOUNCE)
    assert c.rcpt(LIST).line == RCPT_OK


def test_addresses_are_case_insensitive(
    postfix_env: PostfixEnv, listgate_main: ListgateProcess, smtp: SmtpSessions
) -> None:
    """Upper-case spellings of the member and the list address are matched case-insensitively."""
    c = smtp.connect("main", "mixed case")
    assert c.hello().code == 250
    assert c.mail("Member@Example.COM").line == MAIL_OK
    assert c.rcpt("LIST@Example.Org").line == RCPT_OK
    assert c.reset().code == 250
    assert c.mail("Outsider@Example.NET").line == MAIL_OK
    refused = c.rcpt("List@EXAMPLE.org")
    assert refused.code == 550, refused
    assert refused.text.startswith("5.7.1 <"), refused
    assert refused.text.lower() == rejection(OUTSIDER).lower()[4:], refused


def test_null_sender_is_never_a_poster(
    postfix_env: PostfixEnv, listgate_main: ListgateProcess, smtp: SmtpSessions
) -> None:
    """MAIL FROM:<> (bounces) is refused by the list but not by an ungated recipient."""
    c = smtp.connect("main", "null sender")
    assert c.hello().code == 250
    assert c.command("MAIL FROM:<>").line == MAIL_OK
    # deploy/listgate.toml.example: "the null sender shows as <>" in the reply text.
    assert c.rcpt(LIST).line == f"550 5.7.1 <> is not allowed to post to <{LIST}>"
    assert c.rcpt(ALICE).line == RCPT_OK


def test_without_milter_postfix_accepts_everyone(
    postfix_env: PostfixEnv, mta: Mta, sink: LmtpSink, smtp: SmtpSessions
) -> None:
    """Control: with smtpd_milters empty the same non-member post is accepted and delivered."""
    c = transaction(smtp, mta, "nomilter", OUTSIDER, "no milter")
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, mta, sink, OUTSIDER, [LIST])


def test_esmtp_parameters_do_not_confuse_the_decision(
    postfix_env: PostfixEnv, mta: Mta, listgate_main: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """MAIL/RCPT ESMTP parameters (SIZE, BODY, NOTIFY) reach the milter but not the decision."""
    c = smtp.connect("main", "ESMTP parameters")
    assert c.hello().code == 250
    assert c.command(f"MAIL FROM:<{OUTSIDER}> SIZE=400 BODY=8BITMIME").line == MAIL_OK
    assert c.command(f"RCPT TO:<{LIST}> NOTIFY=NEVER").line == rejection(OUTSIDER)
    assert c.reset().code == 250
    assert c.command(f"MAIL FROM:<{MEMBER}> SIZE=400 BODY=8BITMIME").line == MAIL_OK
    assert c.command(f"RCPT TO:<{LIST}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{LIST}").line == (
        RCPT_OK
    )
    deliver(c, mta, sink, MEMBER, [LIST])


def test_concurrent_sessions_are_independent(
    postfix_env: PostfixEnv, listgate_main: ListgateProcess, smtp: SmtpSessions
) -> None:
    """Sixteen simultaneous SMTP sessions, each with its own sender, all get their own answer."""
    senders = [MEMBER if i % 2 else OUTSIDER for i in range(16)]
    clients = [smtp.connect("main", f"concurrent #{i} from {s}") for i, s in enumerate(senders)]

    def session(i: int) -> list[str]:
        c, sender = clients[i], senders[i]
        other = OUTSIDER if sender == MEMBER else MEMBER
        lines = [c.hello().line.split()[0]]
        for who in (sender, other, sender):
            lines += [c.mail(who).line, c.rcpt(LIST).line, c.reset().line.split()[0]]
        return lines

    with ThreadPoolExecutor(len(clients)) as pool:
        got = list(pool.map(session, range(len(clients))))

    def verdict(sender: str) -> str:
        return RCPT_OK if sender == MEMBER else rejection(sender)

    for i, sender in enumerate(senders):
        other = OUTSIDER if sender == MEMBER else MEMBER
        want = ["250"]
        for who in (sender, other, sender):
            want += [MAIL_OK, verdict(who), "250"]
        assert got[i] == want, f"session {i} ({sender})"


def test_sigterm_during_a_postfix_session(
    postfix_env: PostfixEnv,
    mta: Mta,
    start_listgate: Callable[..., ListgateProcess],
    smtp: SmtpSessions,
) -> None:
    """SIGTERM while Postfix holds a milter connection: listgate exits, Postfix tempfails."""
    lg = start_listgate([postfix_env.down_milter])
    c = transaction(smtp, mta, "down", OUTSIDER, "SIGTERM mid-session")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)  # the milter connection is now open
    started = time.monotonic()
    assert lg.stop(timeout=10.0) == 0, lg.stderr_text()
    assert time.monotonic() - started < 5.0, "an idle milter connection held up the shutdown"
    # The session goes on without its milter: fail closed, never 250 for the list.
    assert c.rcpt(LIST).line == TEMPFAIL


@pytest.mark.parametrize(
    "spelling",
    ['"list"@example.org', "list@example.org.", "@relay.example:list@example.org"],
)
def test_other_spellings_of_the_list_address_are_gated(
    spelling: str,
    postfix_env: PostfixEnv,
    mta: Mta,
    listgate_main: ListgateProcess,
    sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """Spellings that Postfix delivers to list@example.org are refused for a non-member too."""
    c = transaction(smtp, mta, "main", OUTSIDER, f"non-member to {spelling}")
    reply = c.rcpt(spelling)
    if reply.code == 250:  # show that this really reaches the list before failing
        deliver(c, mta, sink, OUTSIDER, [LIST])
    assert reply.code == 550, f"{reply} -- and Postfix delivered the post to {LIST}"
