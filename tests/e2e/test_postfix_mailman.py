"""listgate behind a real Postfix, deciding with a real Mailman core (backend.type = "mailman").

Postfix (a private instance of this module, see mailman_fixtures.py) asks listgate over the
milter protocol; listgate asks the Mailman core that this module starts over REST; accepted
mail goes over LMTP to the aiosmtpd sink. The list rejects nonmembers
(``default_nonmember_action = "reject"``). Run with ``-s`` to see the SMTP transcripts;
they are also saved as ``smtp-transcripts.txt`` in each test's tmp dir.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from .conftest import _failed
from .harness import (
    LmtpSink,
    RecordingSMTP,
    message_bytes,
    new_token,
    tail,
    wait_until,
)
from .mailman_fixtures import (
    ALICE,
    ALONE,
    BANNED,
    CAROL_ALT,
    FRIEND,
    MAIL_OK,
    MEMBER,
    NO_VALID_RCPT,
    OUTSIDER,
    OWNER,
    RCPT_OK,
    SRS_SENDER,
    STRANGER,
    MailmanListgate,
    MailmanPostfix,
    MailmanWorld,
    Sessions,
    keep_postfix_logs,
    make_postfix,
    populate,
    rejection,
    require_mailman,
    tempfail,
    wait_for_rcpt,
)

pytestmark = pytest.mark.postfix

SHORT_CACHE = {"ttl": 0.5, "negative_ttl": 0.5, "stale_if_error": 0}


# --------------------------------------------------------------------------- fixtures


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
def mm_postfix(
    sink: LmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanPostfix]:
    """This module's Postfix instance: one listener per listgate setup."""
    env = make_postfix(sink.port)
    try:
        env.postfix.create()
        env.postfix.start()
        yield env
    finally:
        try:
            env.postfix.stop()
        finally:
            keep_postfix_logs(env, tmp_path_factory.mktemp("postfix-mailman"))


def _run_listgate(
    workdir: Path, env: MailmanPostfix, listener: str, world: MailmanWorld,
    sections: Mapping[str, Mapping[str, object]],
) -> Iterator[MailmanListgate]:
    lg = MailmanListgate(workdir, [env.milters[listener]], world.core, sections)
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


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


@pytest.fixture
def smtp(
    mm_postfix: MailmanPostfix, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Sessions]:
    """Recorded SMTP sessions; transcripts printed (``-s``) and saved in tmp_path."""
    sessions = Sessions(mm_postfix, request.node.name)
    mark = mm_postfix.postfix.log_mark()
    yield sessions
    text = sessions.close()
    (tmp_path / "smtp-transcripts.txt").write_text(text)
    print(f"\n{text}", end="")
    if _failed(request):
        print(f"=== Postfix maillog during the test ===\n{mm_postfix.postfix.log_since(mark)}")
        for name in ("lg_rcpt", "lg_headers"):
            if name in request.fixturenames:
                lg = request.getfixturevalue(name)
                print(f"=== {name} stderr, tail ===\n{tail(lg.stderr_text())}")


# --------------------------------------------------------------------------- helpers


def deliver(
    client: RecordingSMTP,
    env: MailmanPostfix,
    sink: LmtpSink,
    envelope: str,
    expect: list[str],
    header_from: str | None = None,
) -> str:
    """DATA (From: *header_from* or the envelope) after MAIL/RCPT; wait until delivered to
    exactly *expect*, once each, with the envelope sender kept; return the token."""
    token = new_token()
    message = message_bytes(header_from or envelope, expect, token)
    first, final = client.data_message(message)
    assert first.line == "354 End data with <CR><LF>.<CR><LF>"
    assert final is not None, "no reply after the message body"
    assert final.code == 250, final
    assert final.text.startswith("2.0.0 Ok: queued as "), final
    sink.wait_for(token, expect)
    env.postfix.wait_queue_empty()
    assert sink.recipients_for(token) == sorted(r.lower() for r in expect), "wrong or duplicate"
    assert [d.mail_from for d in sink.deliveries_for(token)] == [envelope]
    return token


def post(
    smtp: Sessions, env: MailmanPostfix, sink: LmtpSink, listener: str, sender: str,
    recipients: list[str], title: str,
) -> None:
    """One session: MAIL *sender*, RCPT each of *recipients* (all 250), delivered to them."""
    c = smtp.connect(listener, title)
    assert c.hello().code == 250
    assert c.mail(sender).line == MAIL_OK
    for rcpt in recipients:
        assert c.rcpt(rcpt).line == RCPT_OK, rcpt
    deliver(c, env, sink, sender, recipients)


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
    c: RecordingSMTP, env: MailmanPostfix, sink: LmtpSink, lst: str, refused_token: str
) -> None:
    """After a refused transaction: RSET, a member post in the same session is delivered;
    once the queue is empty the refused message can no longer show up."""
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK
    deliver(c, env, sink, MEMBER, [lst])
    assert sink.deliveries_for(refused_token) == []


def logged(lg: MailmanListgate, pattern: str, timeout: float = 5.0) -> str:
    """Wait until listgate's log has a line matching *pattern* (any case); return it."""

    def probe() -> str | None:
        lines = lg.stderr_text().splitlines()
        return next((ln for ln in lines if re.search(pattern, ln, re.IGNORECASE)), None)

    return wait_until(probe, timeout, f"listgate log line {pattern!r}",
                      detail=lambda: tail(lg.stderr_text()))


# --------------------------------------------------------------------------- RCPT mode


def test_member_post_is_delivered_once(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """A subscribed member gets 250 at RCPT and the post reaches the list address once."""
    post(smtp, mm_postfix, sink, "rcpt", MEMBER, [world.list_address], "member posts")


def test_nonmember_is_rejected_at_rcpt(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """A nonmember gets listgate's exact 550 5.7.1 at RCPT and nothing is delivered."""
    lst = world.list_address
    c = smtp.connect("rcpt", "nonmember posts")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(lst).line == rejection(OUTSIDER, lst)
    token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [lst], token))
    assert (first.line, final) == (NO_VALID_RCPT, None)
    refused_then_member_delivered(c, mm_postfix, sink, lst, token)


def test_subscribed_owner_posts(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """An owner who is also subscribed is a member: 250 and delivered."""
    post(smtp, mm_postfix, sink, "rcpt", OWNER, [world.list_address], "subscribed owner posts")


def test_accepted_nonmember_posts(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """A nonmember whose nonmember record says accept gets 250 and is delivered."""
    post(smtp, mm_postfix, sink, "rcpt", FRIEND, [world.list_address], "accepted nonmember")


def test_linked_second_address_posts(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """A member's second address, linked to her Mailman user, gets 250 and is delivered."""
    post(smtp, mm_postfix, sink, "rcpt", CAROL_ALT, [world.list_address], "linked address")


def test_owner_and_request_addresses_accept_anyone(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """<list>-owner@ and <list>-request@ are not gated: a nonmember's mail reaches both."""
    services = [world.service("owner"), world.service("request")]
    post(smtp, mm_postfix, sink, "rcpt", OUTSIDER, services, "nonmember to -owner, -request")


def test_plus_tagged_posting_address_is_gated(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_rcpt: MailmanListgate, smtp: Sessions
) -> None:
    """<list>+x@ is the posting address to Mailman: 550 for a nonmember, 250 for a member."""
    lst, tagged = world.list_address, world.tagged("x")
    c = smtp.connect("rcpt", "list+x")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(tagged).line == rejection(OUTSIDER, lst)
    assert c.reset().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(tagged).line == RCPT_OK


# --------------------------------------------------------------------------- headers mode


def test_headers_srs_forward_with_member_from_is_delivered(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """Headers mode: an SRS envelope of a nonmember with From: a member is delivered."""
    lst = world.list_address
    c = smtp.connect("headers", "SRS forward, From: member")
    assert c.hello().code == 250
    assert c.mail(SRS_SENDER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK  # pending: judged at end of headers
    deliver(c, mm_postfix, sink, SRS_SENDER, [lst], header_from=MEMBER)
    logged(lg_headers, rf"from=<{re.escape(SRS_SENDER)}> to=<{re.escape(lst)}> .*"
           r"reply=continue \(pending: judged at end of headers\)")


def test_headers_stranger_is_rejected_at_end_of_headers(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """Headers mode: envelope and From: a nonmember get 550 5.7.1 as the DATA reply."""
    lst = world.list_address
    c = smtp.connect("headers", "stranger, headers mode")
    assert c.hello().code == 250
    assert c.mail(STRANGER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK  # pending
    token = refused_after_data(c, STRANGER, lst, rejection(STRANGER, lst))
    # Postfix runs content milters after the whole message and logs END-OF-MESSAGE; the
    # "senders=" (read from the headers) shows listgate answered at end of headers.
    logged(lg_headers, rf"from=<{re.escape(STRANGER)}> to=<{re.escape(lst)}> "
           rf"senders={re.escape(STRANGER)} .*verdict=reject reply=550 5\.7\.1 ")
    refused_then_member_delivered(c, mm_postfix, sink, lst, token)


def test_headers_member_envelope_banned_from_is_rejected_at_end_of_headers(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """Headers mode: a member's envelope is accepted at RCPT, but with From: a banned
    address (Mailman would discard the post) the list, alone in its transaction, gets
    550 5.7.1 as the DATA reply and nothing is delivered."""
    lst = world.list_address
    c = smtp.connect("headers", "member envelope, From: banned")
    assert c.hello().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK
    token = refused_after_data(c, BANNED, lst, rejection(MEMBER, lst))
    logged(lg_headers, rf"from=<{re.escape(MEMBER)}> to=<{re.escape(lst)}> "
           rf"senders={re.escape(BANNED)},{re.escape(MEMBER)} .*verdict=reject "
           rf"reply=550 5\.7\.1 .*reason=banned: <{re.escape(BANNED)}>")
    refused_then_member_delivered(c, mm_postfix, sink, lst, token)


def test_headers_member_envelope_banned_from_with_other_recipient_is_delivered(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """Headers mode: the same post with a second, ordinary recipient is delivered to both:
    a refusal at end of headers would hit the other recipient too, so the RCPT verdict
    stands (Mailman decides the list's copy, as without listgate)."""
    lst = world.list_address
    c = smtp.connect("headers", "member envelope, From: banned, two recipients")
    assert c.hello().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    deliver(c, mm_postfix, sink, MEMBER, [lst, ALICE], header_from=BANNED)


def test_headers_pending_list_after_accepted_recipient_gets_452(
    world: MailmanWorld, mm_postfix: MailmanPostfix, lg_headers: MailmanListgate,
    sink: LmtpSink, smtp: Sessions,
) -> None:
    """Headers mode: a pending list recipient after an accepted one gets 452 4.5.3."""
    lst = world.list_address
    c = smtp.connect("headers", "accepted recipient, then pending list")
    assert c.hello().code == 250
    assert c.mail(STRANGER).line == MAIL_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    assert c.rcpt(lst).line == ALONE
    deliver(c, mm_postfix, sink, STRANGER, [ALICE])


# --------------------------------------------------------------------------- Mailman down


def test_mailman_down_tempfail_failopen_and_recovery(
    world: MailmanWorld, mm_postfix: MailmanPostfix, sink: LmtpSink, smtp: Sessions,
    tmp_path: Path,
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
            up = smtp.connect(listener, f"Mailman up ({listener})")
            assert up.hello().code == 250
            assert up.mail(MEMBER).line == MAIL_OK
            assert up.rcpt(lst).line == RCPT_OK
            up.close_politely()

        core.stop()
        try:
            tf_port, fo_port = mm_postfix.port("tempfail"), mm_postfix.port("failopen")
            wait_for_rcpt(tf_port, MEMBER, lst, lambda r: r.startswith("451 "),
                          "listgate to notice Mailman is down")

            down = smtp.connect("tempfail", "Mailman down, policy tempfail")
            assert down.hello().code == 250
            assert down.mail(MEMBER).line == MAIL_OK
            assert down.rcpt(lst).line == tempfail(MEMBER, lst)
            began = time.monotonic()
            assert down.rcpt(ALICE).line == RCPT_OK
            assert time.monotonic() - began < 1.0, "a non-list recipient waited for Mailman"
            deliver(down, mm_postfix, sink, MEMBER, [ALICE])

            open_ = smtp.connect("failopen", "Mailman down, policy accept")
            assert open_.hello().code == 250
            assert open_.mail(MEMBER).line == MAIL_OK
            assert open_.rcpt(lst).line == RCPT_OK
            deliver(open_, mm_postfix, sink, MEMBER, [lst])
            logged(failopen, rf"cannot decide {re.escape(MEMBER)} -> {re.escape(lst)} "
                   r"\(accept\): backend unavailable")
        finally:
            core.start()

        wait_for_rcpt(tf_port, MEMBER, lst, lambda r: r == RCPT_OK, "member 250 after restart")
        wait_for_rcpt(fo_port, OUTSIDER, lst, lambda r: r == rejection(OUTSIDER, lst),
                      "gating again under policy accept after restart")
        back = smtp.connect("tempfail", "Mailman back")
        assert back.hello().code == 250
        assert back.mail(MEMBER).line == MAIL_OK
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
