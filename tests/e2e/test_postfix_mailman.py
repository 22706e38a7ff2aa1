"""listgate behind a real Postfix, deciding with a real Mailman core (backend.type = "mailman").

Postfix (a private instance of this module, see mailman_fixtures.py) asks listgate over the
milter protocol; listgate asks the Mailman core that this module starts over REST; accepted
mail goes over LMTP to the aiosmtpd sink. The list rejects nonmembers
(``default_nonmember_action = "reject"``). The Mailman scenarios every MTA shares come from
mta_scenarios.py (class TestMailman). Run with ``-s`` to see the SMTP transcripts; they are
also saved as ``smtp-transcripts.txt`` in each test's tmp dir.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from .conftest import POSTFIX_FILES, recorded_smtp
from .harness import (
    ALICE,
    MAIL_OK,
    MEMBER,
    NO_VALID_RCPT,
    OUTSIDER,
    RCPT_OK,
    LmtpSink,
    RecordingSMTP,
    SmtpSessions,
    instance_lifetime,
    message_bytes,
    new_token,
    rejection,
    serving,
    tail,
    wait_until,
)
from .mailman_fixtures import (
    ALONE,
    BANNED,
    FRIEND,
    OWNER,
    SRS_SENDER,
    STRANGER,
    MailmanListgate,
    MailmanPostfix,
    MailmanWorld,
    make_postfix,
    tempfail,
    wait_for_rcpt,
)
from .mta_scenarios import (
    POSTFIX_MILTER,
    Gate,
    MailmanScenarios,
    Mta,
    deliver,
    post,
    transaction,
)

pytestmark = pytest.mark.postfix

SHORT_CACHE = {"ttl": 0.5, "negative_ttl": 0.5, "stale_if_error": 0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mm_postfix(
    sink: LmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanPostfix]:
    """This module's Postfix instance: one listener per listgate setup."""
    env = make_postfix(sink.port)
    with instance_lifetime(
        env.postfix, env.base, lambda: tmp_path_factory.mktemp("postfix-mailman"), POSTFIX_FILES
    ):
        yield env


@pytest.fixture(scope="module")
def mta(mm_postfix: MailmanPostfix) -> Mta:
    """This module's Postfix, for :mod:`mta_scenarios`."""
    return Mta(POSTFIX_MILTER, mm_postfix.postfix)


def _run_listgate(
    workdir: Path, env: MailmanPostfix, listener: str, world: MailmanWorld,
    sections: Mapping[str, Mapping[str, object]],
) -> Iterator[MailmanListgate]:
    yield from serving(MailmanListgate(workdir, [env.milters[listener]], world.core, sections))


@pytest.fixture(scope="module")
def lg_rcpt(
    world: MailmanWorld, mm_postfix: MailmanPostfix, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate deciding at RCPT (the default), for listener "rcpt"."""
    yield from _run_listgate(tmp_path_factory.mktemp("lg-rcpt"), mm_postfix, "rcpt", world, {})


@pytest.fixture(scope="module")
def lg_headers(
    world: MailmanWorld, mm_postfix: MailmanPostfix, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate with ``[lists."<list>"] decide_at = "headers"``, for listener "headers"."""
    sections = {f"lists.{json.dumps(world.list_address)}": {"decide_at": "headers"}}
    yield from _run_listgate(
        tmp_path_factory.mktemp("lg-headers"), mm_postfix, "headers", world, sections
    )


@pytest.fixture(scope="module")
def mailman_gate(mta: Mta, lg_rcpt: MailmanListgate) -> Gate:
    """Listener "rcpt" and its listgate, for the shared Mailman scenarios."""
    return Gate(mta, "rcpt", lg_rcpt)


@pytest.fixture
def smtp(
    mm_postfix: MailmanPostfix, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SmtpSessions]:
    """Recorded SMTP sessions (see :func:`conftest.recorded_smtp`)."""
    postfix = mm_postfix.postfix
    mark = postfix.log_mark()
    yield from recorded_smtp(
        request, tmp_path, {name: lst.port for name, lst in postfix.listeners.items()},
        lambda: f"=== Postfix maillog during the test ===\n{postfix.log_since(mark)}",
        ("lg_rcpt", "lg_headers"),
    )


# --------------------------------------------------------------------------- helpers


def refused_after_data(c: RecordingSMTP, header_from: str, lst: str, reply: str) -> str:
    """DATA with From: *header_from* to *lst*: 354, then *reply* after the body; the
    message's token."""
    token = new_token()
    first, final = c.data_message(message_bytes(header_from, [lst], token))
    assert first.code == 354
    assert final is not None, "no reply after the message body"
    assert final.line == reply
    return token


def refused_then_member_delivered(
    c: RecordingSMTP, mta: Mta, sink: LmtpSink, lst: str, refused_token: str
) -> None:
    """After a refused transaction: RSET, a member post in the same session is delivered;
    once the queue is empty the refused message can no longer show up."""
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK
    deliver(c, mta, sink, MEMBER, [lst])
    assert sink.deliveries_for(refused_token) == []


def logged(lg: MailmanListgate, pattern: str, timeout: float = 5.0) -> str:
    """Wait until listgate's log has a line matching *pattern* (any case); return it."""

    def probe() -> str | None:
        lines = lg.stderr_text().splitlines()
        return next((ln for ln in lines if re.search(pattern, ln, re.IGNORECASE)), None)

    return wait_until(probe, timeout, f"listgate log line {pattern!r}",
                      detail=lambda: tail(lg.stderr_text()))


# --------------------------------------------------------------------------- RCPT mode


class TestMailman(MailmanScenarios):
    """The Mailman-backend scenarios of every MTA, on listener "rcpt" (keep this class
    first: its first test must be the listgate's first request)."""


def test_nonmember_is_rejected_at_rcpt(
    world: MailmanWorld, mta: Mta, lg_rcpt: MailmanListgate, sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """A nonmember gets listgate's exact 550 5.7.1 at RCPT and nothing is delivered."""
    lst = world.list_address
    c = transaction(smtp, mta, "rcpt", OUTSIDER, "nonmember posts")
    assert c.rcpt(lst).line == rejection(OUTSIDER, lst)
    token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [lst], token))
    assert (first.line, final) == (NO_VALID_RCPT, None)
    refused_then_member_delivered(c, mta, sink, lst, token)


@pytest.mark.parametrize(
    "sender", [pytest.param(OWNER, id="subscribed-owner"),
               pytest.param(FRIEND, id="accepted-nonmember")],
)
def test_subscribed_owner_and_accepted_nonmember_post(
    sender: str, world: MailmanWorld, mailman_gate: Gate, sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """An owner who is also subscribed (a member), and a nonmember whose nonmember record
    says accept, each get 250 at RCPT and are delivered."""
    post(smtp, mailman_gate, sink, sender, [world.list_address], f"{sender} posts")


def test_owner_and_request_addresses_accept_anyone(
    world: MailmanWorld, mailman_gate: Gate, sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """<list>-owner@ and <list>-request@ are not gated: a nonmember's mail reaches both."""
    services = [world.service("owner"), world.service("request")]
    post(smtp, mailman_gate, sink, OUTSIDER, services, "nonmember to -owner, -request")


def test_plus_tagged_posting_address_is_gated(
    world: MailmanWorld, mta: Mta, lg_rcpt: MailmanListgate, smtp: SmtpSessions
) -> None:
    """<list>+x@ is the posting address to Mailman: 550 for a nonmember, 250 for a member."""
    lst, tagged = world.list_address, world.tagged("x")
    c = transaction(smtp, mta, "rcpt", OUTSIDER, "list+x")
    assert c.rcpt(tagged).line == rejection(OUTSIDER, lst)
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(tagged).line == RCPT_OK


# --------------------------------------------------------------------------- headers mode


def test_headers_srs_forward_with_member_from_is_delivered(
    world: MailmanWorld, mta: Mta, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """Headers mode: an SRS envelope of a nonmember with From: a member is delivered."""
    lst = world.list_address
    c = transaction(smtp, mta, "headers", SRS_SENDER, "SRS forward, From: member")
    assert c.rcpt(lst).line == RCPT_OK  # pending: judged at end of headers
    deliver(c, mta, sink, SRS_SENDER, [lst], header_from=MEMBER)
    logged(lg_headers, rf"from=<{re.escape(SRS_SENDER)}> to=<{re.escape(lst)}> .*"
           r"reply=continue \(pending: judged at end of headers\)")


def test_headers_stranger_is_rejected_at_end_of_headers(
    world: MailmanWorld, mta: Mta, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """Headers mode: envelope and From: a nonmember get 550 5.7.1 as the DATA reply."""
    lst = world.list_address
    c = transaction(smtp, mta, "headers", STRANGER, "stranger, headers mode")
    assert c.rcpt(lst).line == RCPT_OK  # pending
    token = refused_after_data(c, STRANGER, lst, rejection(STRANGER, lst))
    # Postfix runs content milters after the whole message and logs END-OF-MESSAGE; the
    # "senders=" (read from the headers) shows listgate answered at end of headers.
    logged(lg_headers, rf"from=<{re.escape(STRANGER)}> to=<{re.escape(lst)}> "
           rf"senders={re.escape(STRANGER)} .*verdict=reject reply=550 5\.7\.1 ")
    refused_then_member_delivered(c, mta, sink, lst, token)


def test_headers_member_envelope_banned_from_is_rejected_at_end_of_headers(
    world: MailmanWorld, mta: Mta, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """Headers mode: a member's envelope is accepted at RCPT, but with From: a banned
    address (Mailman would discard the post) the list, alone in its transaction, gets
    550 5.7.1 as the DATA reply and nothing is delivered."""
    lst = world.list_address
    c = transaction(smtp, mta, "headers", MEMBER, "member envelope, From: banned")
    assert c.rcpt(lst).line == RCPT_OK
    token = refused_after_data(c, BANNED, lst, rejection(MEMBER, lst))
    logged(lg_headers, rf"from=<{re.escape(MEMBER)}> to=<{re.escape(lst)}> "
           rf"senders={re.escape(BANNED)},{re.escape(MEMBER)} .*verdict=reject "
           rf"reply=550 5\.7\.1 .*reason=banned: <{re.escape(BANNED)}>")
    refused_then_member_delivered(c, mta, sink, lst, token)


def test_headers_member_envelope_banned_from_with_other_recipient_is_delivered(
    world: MailmanWorld, mta: Mta, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """Headers mode: the same post with a second, ordinary recipient is delivered to both:
    a refusal at end of headers would hit the other recipient too, so the RCPT verdict
    stands (Mailman decides the list's copy, as without listgate)."""
    lst = world.list_address
    c = transaction(smtp, mta, "headers", MEMBER, "member envelope, From: banned, two recipients")
    assert c.rcpt(lst).line == RCPT_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    deliver(c, mta, sink, MEMBER, [lst, ALICE], header_from=BANNED)


def test_headers_pending_list_after_accepted_recipient_gets_452(
    world: MailmanWorld, mta: Mta, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: SmtpSessions,
) -> None:
    """Headers mode: a pending list recipient after an accepted one gets 452 4.5.3."""
    lst = world.list_address
    c = transaction(smtp, mta, "headers", STRANGER, "accepted recipient, then pending list")
    assert c.rcpt(ALICE).line == RCPT_OK
    assert c.rcpt(lst).line == ALONE
    deliver(c, mta, sink, STRANGER, [ALICE])


# --------------------------------------------------------------------------- Mailman down


def test_mailman_down_tempfail_failopen_and_recovery(
    world: MailmanWorld, mm_postfix: MailmanPostfix, mta: Mta, sink: LmtpSink,
    smtp: SmtpSessions, tmp_path: Path,
) -> None:
    """Mailman stopped: 451 (tempfail) or delivered (accept); back to 250/550 after restart."""
    core, lst = world.core, world.list_address
    started: list[MailmanListgate] = []
    for listener, policy in (("failopen", "accept"), ("tempfail", "tempfail")):
        (tmp_path / listener).mkdir()
        # One process: each worker has a cache of its own, and this test warms the cache
        # through one connection before it takes Mailman down.
        lg = MailmanListgate(
            tmp_path / listener, [mm_postfix.milters[listener]], core,
            {"cache": SHORT_CACHE, "failure": {"policy": policy},
             "milter": {"listen": [mm_postfix.milters[listener]], "workers": 1}},
        )
        started.append(lg)
    try:
        for lg in started:
            lg.start()
        failopen, _ = started
        # Warm both (directory and policy stay cached; the short-TTL answers expire).
        # failopen first, so its answers expire no later than tempfail's.
        for listener in ("failopen", "tempfail"):
            up = transaction(smtp, mta, listener, MEMBER, f"Mailman up ({listener})")
            assert up.rcpt(lst).line == RCPT_OK
            up.close_politely()

        core.stop()
        try:
            tf_port, fo_port = mm_postfix.port("tempfail"), mm_postfix.port("failopen")
            wait_for_rcpt(tf_port, MEMBER, lst, lambda r: r.startswith("451 "),
                          "listgate to notice Mailman is down")

            down = transaction(smtp, mta, "tempfail", MEMBER, "Mailman down, policy tempfail")
            assert down.rcpt(lst).line == tempfail(MEMBER, lst)
            began = time.monotonic()
            assert down.rcpt(ALICE).line == RCPT_OK
            assert time.monotonic() - began < 1.0, "a non-list recipient waited for Mailman"
            deliver(down, mta, sink, MEMBER, [ALICE])

            open_ = transaction(smtp, mta, "failopen", MEMBER, "Mailman down, policy accept")
            assert open_.rcpt(lst).line == RCPT_OK
            deliver(open_, mta, sink, MEMBER, [lst])
            logged(failopen, rf"cannot decide {re.escape(MEMBER)} -> {re.escape(lst)} "
                   r"\(accept\): backend unavailable")
        finally:
            core.start()

        wait_for_rcpt(tf_port, MEMBER, lst, lambda r: r == RCPT_OK, "member 250 after restart")
        wait_for_rcpt(fo_port, OUTSIDER, lst, lambda r: r == rejection(OUTSIDER, lst),
                      "gating again under policy accept after restart")
        back = transaction(smtp, mta, "tempfail", MEMBER, "Mailman back")
        assert back.rcpt(lst).line == RCPT_OK
        assert back.reset().code == 250
        assert back.mail(OUTSIDER).line == MAIL_OK
        assert back.rcpt(lst).line == rejection(OUTSIDER, lst)
    except BaseException:
        for lg in started:
            print(f"=== listgate {lg.listen} stderr, tail ===\n{tail(lg.stderr_text())}")
        raise
    finally:
        for lg in started:
            lg.stop()
