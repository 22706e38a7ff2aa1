"""The milter front end: negotiation options, Decision → reply, the session bytes in and
bytes out (MilterSession), and the headers-mode rules of one transaction
(MilterTransaction)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.errors import ProtocolError
from listgate.frontends.milter import (
    ALONE_REPLY,
    MilterSession,
    MilterTransaction,
    milter_options,
    reply_for,
)
from listgate.frontends.session import CLOSE, NEED_DATA, PAUSED
from listgate.milter import (
    POSTFIX_OFFER,
    Abort,
    Continue,
    EndOfHeaders,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    LocalProtocolError,
    Macro,
    MacroStage,
    MilterConnection,
    MilterOptions,
    NegotiateReply,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Reply,
    ReplyCode,
    encode,
)

from .milter import CHUNKED, pieces, replies_in, stream


def _decision(verdict: Verdict, code: int | None, dsn: str | None, text: str) -> Decision:
    return Decision(verdict, code, dsn, text, ("test",), "list@example.org")


@pytest.mark.parametrize(
    ("decision", "reply"),
    [
        (_decision(Verdict.ACCEPT, None, None, ""), Continue()),
        (_decision(Verdict.ACCEPT, 250, None, "ignored"), Continue()),
        (_decision(Verdict.REJECT, 550, "5.7.1", "<a@b> may not post"),
         ReplyCode(550, "5.7.1", "<a@b> may not post")),
        (_decision(Verdict.REJECT, 554, None, "no"), ReplyCode(554, None, "no")),
        (_decision(Verdict.TEMPFAIL, 451, "4.3.0", "try later"),
         ReplyCode(451, "4.3.0", "try later")),
        (_decision(Verdict.TEMPFAIL, 452, "4.5.3", ""), ReplyCode(452, "4.5.3", "")),
    ],
    ids=["accept", "accept-with-code", "reject", "reject-no-dsn", "tempfail",
         "tempfail-no-text"],
)
def test_reply_for(decision: Decision, reply: object) -> None:
    """ACCEPT → CONTINUE (never ACCEPT); REJECT/TEMPFAIL → REPLYCODE with code, DSN, text."""
    assert reply_for(decision) == reply


def test_reply_for_never_accept() -> None:
    """An accepted recipient is answered CONTINUE, which leaves the message to other steps."""
    assert type(reply_for(_decision(Verdict.ACCEPT, None, None, ""))) is Continue


def test_reply_for_tempfail_is_temporary() -> None:
    """A TEMPFAIL decision becomes a 4xx REPLYCODE, a REJECT a 5xx one."""
    temp = reply_for(_decision(Verdict.TEMPFAIL, 451, "4.3.0", "x"))
    perm = reply_for(_decision(Verdict.REJECT, 550, "5.7.1", "x"))
    assert isinstance(temp, ReplyCode)
    assert isinstance(perm, ReplyCode)
    assert temp.is_temporary
    assert not perm.is_temporary


@pytest.mark.parametrize("size", [13, 65536, 1024 * 1024], ids=str)
def test_milter_options(size: int) -> None:
    """listgate wants MAIL (no reply) and RCPT, the MAIL/RCPT macros, and the given limit."""
    options = milter_options(size)
    assert options.events == {EnvelopeFrom, EnvelopeRecipient}
    assert options.no_reply == {EnvelopeFrom}
    assert options.max_packet_size == size
    assert options.macros[MacroStage.ENVFROM] == ("{client_addr}", "{auth_authen}", "i")
    assert options.macros[MacroStage.ENVRCPT] == ("i",)
    assert int(options.actions) == 0


def test_milter_options_negotiate_with_postfix() -> None:
    """With Postfix's offer, listgate skips all but MAIL/RCPT and asks no reply to MAIL."""
    conn = MilterConnection(milter_options(1024 * 1024))
    conn.receive_data(encode(POSTFIX_OFFER))
    conn.next_event()
    n = conn.negotiated
    assert n is not None
    assert n.protocol & ProtocolFlag.NR_MAIL
    assert not n.expects_reply(EnvelopeFrom)
    assert n.expects_reply(EnvelopeRecipient)
    assert not n.skips(EnvelopeRecipient)


def converse(
    session: MilterSession,
    data: bytes,
    chunk: int | None,
    decisions: Sequence[Decision] = (),
    shown: list[str] | None = None,
) -> tuple[list[PostingRequest], bytes, bool]:
    """Feed *data* to *session* in pieces the way the connection loop does, answering the
    n-th posting request with the n-th of *decisions* (ACCEPT when they run out), and
    adding each reply as the decision log shows it to *shown*.

    Returns the posting requests, every byte the session queued, and whether it said
    CLOSE."""
    requests: list[PostingRequest] = []
    out = bytearray()
    closed = False
    for piece in pieces(data, chunk):
        session.receive_data(piece)
        while (event := session.next_event()) is not NEED_DATA:
            assert not closed, "nothing after CLOSE"
            if event is CLOSE:
                closed = True
                continue
            assert isinstance(event, PostingRequest), event
            requests.append(event)
            assert session.next_event() is PAUSED  # until it is decided
            index = len(requests) - 1
            decision = decisions[index] if index < len(decisions) else ACCEPT
            session.decide(decision)
            if shown is not None:
                shown.append(session.shown_reply(decision))
        out += session.data_to_send()
    return requests, bytes(out), closed


def session_replies(data: bytes) -> list[Reply]:
    """The replies in a session's output, after the OPTNEG reply."""
    replies = replies_in(data)
    assert isinstance(replies[0], NegotiateReply)
    return replies[1:]


LIST_ADDR = "list@example.org"
ACCEPT = Decision(Verdict.ACCEPT, None, None, "", ("test",), None)
MAIL_MACROS = Macro(b"M", (("{auth_authen}", "poster@mx.example"),
                           ("{client_addr}", "192.0.2.7"), ("i", "QID-M")))


@CHUNKED
@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("<Boss@Example.ORG>", "boss@example.org"), ("<>", ""), ("", ""),
     (" <member@example.com> ", "member@example.com"), ("plain@Example.com", "plain@example.com")],
    ids=["brackets-case", "null-sender", "empty", "spaces", "no-brackets"],
)
def test_session_normalises_sender(raw: str, normalised: str, chunk: int | None) -> None:
    """MAIL stores the envelope sender in normalised form; RCPT carries it."""
    session = MilterSession(milter_options(1024 * 1024))
    data = stream(POSTFIX_OFFER, MAIL_MACROS, EnvelopeFrom(raw),
                  EnvelopeRecipient("<List@Example.org>"))
    requests, out, _ = converse(session, data, chunk)
    assert session.transaction.sender == normalised
    assert requests[0].sender == normalised
    assert requests[0].recipient == "list@example.org"
    assert session_replies(out) == [Continue()]


@CHUNKED
def test_session_picks_macros(chunk: int | None) -> None:
    """auth_authen and client_addr come from MAIL macros; 'i' with the RCPT stage winning."""
    session = MilterSession(milter_options(1024 * 1024))
    data = stream(
        POSTFIX_OFFER, MAIL_MACROS, EnvelopeFrom("<a@example.com>"),
        Macro(b"R"), EnvelopeRecipient("<list@example.org>"),
        Macro(b"R", (("i", "QID-R"),)), EnvelopeRecipient("<other@example.org>"),
    )
    requests, _, _ = converse(session, data, chunk)
    assert session.transaction.auth_user == "poster@mx.example"
    assert session.transaction.client_address == "192.0.2.7"
    assert requests == [
        PostingRequest("a@example.com", "list@example.org", "192.0.2.7", "QID-M",
                       "poster@mx.example"),
        PostingRequest("a@example.com", "other@example.org", "192.0.2.7", "QID-R",
                       "poster@mx.example"),
    ]


@CHUNKED
def test_session_without_macros(chunk: int | None) -> None:
    """Without macros (or with an empty auth_authen) the optional fields are None."""
    session = MilterSession(milter_options(1024 * 1024))
    data = stream(
        POSTFIX_OFFER, Macro(b"M", (("{auth_authen}", ""),)), EnvelopeFrom("<a@example.com>"),
        EnvelopeRecipient("<list@example.org>"),
    )
    requests, _, _ = converse(session, data, chunk)
    assert requests == [PostingRequest("a@example.com", "list@example.org")]
    assert session.transaction.auth_user is None


@CHUNKED
def test_session_resets_on_abort(chunk: int | None) -> None:
    """ABORT forgets sender and login but keeps the client address for the connection."""
    session = MilterSession(milter_options(1024 * 1024))
    first = stream(
        POSTFIX_OFFER, MAIL_MACROS, EnvelopeFrom("<a@example.com>"),
        EnvelopeRecipient("<l@example.org>"), Abort(),
    )
    converse(session, first, chunk)
    assert session.transaction.sender is None
    assert session.transaction.auth_user is None
    assert session.transaction.client_address == "192.0.2.7"
    second = stream(
        Macro(b"M"), EnvelopeFrom("<b@example.com>"), EnvelopeRecipient("<l@example.org>"),
    )
    requests, _, _ = converse(session, second, chunk)
    assert requests == [PostingRequest("b@example.com", "l@example.org", "192.0.2.7")]


REJECT_550 = _decision(Verdict.REJECT, 550, "5.7.1", "<o@example.net> may not post")


@CHUNKED
def test_session_rcpt_mode_bytes_in_bytes_out(chunk: int | None) -> None:
    """RCPT mode: each RCPT is one posting request and its decision's reply; MAIL (no
    reply), ABORT and QUIT get none; QUIT is CLOSE; every reply is shown for the log."""
    session = MilterSession(milter_options(1024 * 1024))
    data = stream(
        POSTFIX_OFFER, MAIL_MACROS, EnvelopeFrom("<o@example.net>"),
        EnvelopeRecipient("<alice@example.org>"), EnvelopeRecipient("<list@example.org>"),
        Abort(), Abort(), Quit(),
    )
    shown: list[str] = []
    requests, out, closed = converse(session, data, chunk, [ACCEPT, REJECT_550], shown)
    assert [r.recipient for r in requests] == ["alice@example.org", "list@example.org"]
    assert session_replies(out) == [
        Continue(), ReplyCode(550, "5.7.1", "<o@example.net> may not post")]
    assert shown == ["continue", "550 5.7.1 <o@example.net> may not post"]
    assert closed
    assert session.requests == 2


@CHUNKED
def test_session_headers_mode_eoh_452_abort_quit_nc(chunk: int | None) -> None:
    """Headers mode, bytes in and out: a pending list recipient gets CONTINUE, a recipient
    after it 452 4.5.3 without a decision, EOH asks for the list's decision on Mailman's
    senders and replies with it; after ABORT (client address kept) a list accepted for
    good leaves nothing to judge, so EOH is answered CONTINUE without a decision; QUIT_NC
    forgets the client address; QUIT is CLOSE."""
    session = MilterSession(milter_options(1024 * 1024, headers=True))
    data = stream(
        POSTFIX_OFFER,
        MAIL_MACROS, EnvelopeFrom("<m@example.com>"),
        EnvelopeRecipient("<list@example.org>"),
        EnvelopeRecipient("<bob@example.org>"),
        Header("From", "Banned <banned@example.net>"), Header("Subject", "hello"),
        Macro(b"N", (("i", "QID-E"),)), EndOfHeaders(),
        Abort(),
        Macro(b"M"), EnvelopeFrom("<m2@example.com>"), EnvelopeRecipient("<list@example.org>"),
        Header("From", "m2@example.com"), EndOfHeaders(),
        Abort(), QuitNoClose(),
        EnvelopeFrom("<m3@example.com>"), EnvelopeRecipient("<list@example.org>"),
        Quit(),
    )
    provisional = Decision(Verdict.REJECT, 550, "5.7.1", "no", ("test",), LIST_ADDR, True)
    final_reject = _decision(Verdict.REJECT, 550, "5.7.1", "no")
    accept = Decision(Verdict.ACCEPT, None, None, "", ("test",), LIST_ADDR)
    tempfail = _decision(Verdict.TEMPFAIL, 451, "4.3.0", "try later")
    requests, out, closed = converse(
        session, data, chunk, [provisional, final_reject, accept, tempfail])
    assert session_replies(out) == [
        Continue(),  # RCPT list: pending
        ALONE_REPLY,  # RCPT bob: after a pending list recipient
        ReplyCode(550, "5.7.1", "no"),  # EOH: the list's final verdict
        Continue(),  # RCPT list (second transaction): accepted for good
        Continue(),  # EOH: nothing to judge
        ReplyCode(451, "4.3.0", "try later"),  # RCPT list after QUIT_NC
    ]
    assert requests == [
        PostingRequest("m@example.com", LIST_ADDR, "192.0.2.7", "QID-M", "poster@mx.example"),
        PostingRequest("m@example.com", LIST_ADDR, "192.0.2.7", "QID-E", "poster@mx.example",
                       header_senders=("banned@example.net", "m@example.com")),
        PostingRequest("m2@example.com", LIST_ADDR, "192.0.2.7"),
        PostingRequest("m3@example.com", LIST_ADDR),
    ]
    assert closed


def test_session_shows_why_a_headers_mode_recipient_got_continue() -> None:
    """The decision log shows a provisional CONTINUE as pending or as judged again."""
    session = MilterSession(milter_options(1024 * 1024, headers=True))
    data = stream(POSTFIX_OFFER, EnvelopeFrom("<m@example.com>"),
                  EnvelopeRecipient("<list@example.org>"))
    session.receive_data(data)
    assert isinstance(session.next_event(), PostingRequest)
    pending = Decision(Verdict.REJECT, 550, "5.7.1", "no", ("test",), LIST_ADDR, True)
    session.decide(pending)
    assert session.shown_reply(pending) == "continue (pending: judged at end of headers)"
    session.receive_data(stream(Abort(), EnvelopeFrom("<m@example.com>"),
                                EnvelopeRecipient("<list@example.org>")))
    assert isinstance(session.next_event(), PostingRequest)
    again = Decision(Verdict.ACCEPT, None, None, "", ("test",), LIST_ADDR, True)
    session.decide(again)
    assert session.shown_reply(again) == (
        "continue (judged again at end of headers if the only recipient)")


def test_session_answers_a_wanted_step_it_does_not_judge_with_continue() -> None:
    """A step the options ask to see but the session does not judge (HELO here) is
    answered CONTINUE at once, with no posting request."""
    options = MilterOptions(events=frozenset({EnvelopeFrom, EnvelopeRecipient, Helo}),
                            no_reply=frozenset({EnvelopeFrom}))
    session = MilterSession(options)
    requests, out, closed = converse(session, stream(POSTFIX_OFFER, Helo("client.example")),
                                     None)
    assert requests == []
    assert session_replies(out) == [Continue()]
    assert not closed


def test_session_refuses_a_decision_nobody_asked_for() -> None:
    """decide without a pending posting request is a LocalProtocolError (a ProtocolError)."""
    session = MilterSession(milter_options(1024 * 1024))
    with pytest.raises(LocalProtocolError):
        session.decide(ACCEPT)
    assert issubclass(LocalProtocolError, ProtocolError)


def test_session_protocol_error_is_raised_from_next_event() -> None:
    """Bytes that break the protocol raise a ProtocolError from next_event."""
    session = MilterSession(milter_options(1024 * 1024))
    session.receive_data(stream(EnvelopeRecipient("<x@example.org>")))
    with pytest.raises(ProtocolError, match="OPTNEG"):
        session.next_event()


# ------------------------------------------------------------------ headers mode



def _rcpt_decision(verdict: Verdict, *, provisional: bool, list_address: str | None = LIST_ADDR,
                   ) -> Decision:
    if verdict is Verdict.ACCEPT:
        return Decision(verdict, None, None, "", ("test",), list_address, provisional)
    return Decision(verdict, 550, "5.7.1", "no", ("test",), list_address, provisional)


def _headers_session(*rcpts: tuple[str, Decision]) -> tuple[MilterTransaction, MilterConnection,
                                                            list[object]]:
    """A transaction from m@example.com to *rcpts* (each answered with its decision),
    then a From: and a Subject: header; the RCPT replies."""
    conn = MilterConnection(milter_options(1024 * 1024, headers=True))
    session = MilterTransaction()
    session.on_mail(EnvelopeFrom("<m@example.com>"), conn)
    replies = []
    for rcpt, decision in rcpts:
        early = session.precheck_rcpt()
        event = EnvelopeRecipient(f"<{rcpt}>")
        replies.append(early or session.answer_rcpt(session.request_for(event, conn), decision))
    session.on_header(Header("From", "Banned <banned@example.net>"))
    session.on_header(Header("Subject", "hello"))
    return session, conn, replies


def test_headers_accepted_list_alone_is_judged_again_at_eoh() -> None:
    """A list accepted at RCPT on its envelope alone (provisional ACCEPT), alone in the
    transaction, is judged again at EOH on Mailman's senders (From: first), and a reject
    there becomes the EOH reply."""
    session, conn, replies = _headers_session(
        (LIST_ADDR, _rcpt_decision(Verdict.ACCEPT, provisional=True)))
    assert replies == [Continue()]
    request = session.eoh_request(conn)
    assert request is not None
    assert (request.recipient, request.header_senders) == (
        LIST_ADDR, ("banned@example.net", "m@example.com"))
    reply = session.answer_eoh(request, _rcpt_decision(Verdict.REJECT, provisional=False))
    assert reply == ReplyCode(550, "5.7.1", "no")
    assert session.eoh_request(conn) is None  # answered once


@pytest.mark.parametrize("order", ["list-first", "other-first"])
def test_headers_accepted_list_with_other_recipients_is_not_judged_again(order: str) -> None:
    """With another recipient accepted in the same transaction (before or after the
    list), a list accepted at RCPT stays accepted: EOH has nothing to judge, so a header
    sender can never get the other recipient refused."""
    lst = (LIST_ADDR, _rcpt_decision(Verdict.ACCEPT, provisional=True))
    other = ("alice@example.org", _rcpt_decision(Verdict.ACCEPT, provisional=False,
                                                 list_address=None))
    rcpts = (lst, other) if order == "list-first" else (other, lst)
    session, conn, replies = _headers_session(*rcpts)
    assert replies == [Continue(), Continue()]
    assert session.eoh_request(conn) is None


def test_rcpt_mode_accept_is_never_judged_again() -> None:
    """A final (non-provisional) ACCEPT at RCPT leaves nothing for EOH, and no header is
    kept."""
    session, conn, _ = _headers_session(
        (LIST_ADDR, _rcpt_decision(Verdict.ACCEPT, provisional=False)))
    assert session.eoh_request(conn) is None
    assert session.headers == []


def test_headers_pending_list_still_waits_for_eoh() -> None:
    """A provisional REJECT is pending (CONTINUE at RCPT, judged at EOH); a recipient after
    it gets 452 4.5.3; after an accepted recipient, the pending list gets 452 4.5.3."""
    session, conn, replies = _headers_session(
        (LIST_ADDR, _rcpt_decision(Verdict.REJECT, provisional=True)),
        ("bob@example.org", _rcpt_decision(Verdict.ACCEPT, provisional=False)))
    assert replies == [Continue(), ALONE_REPLY]
    request = session.eoh_request(conn)
    assert request is not None
    assert request.recipient == LIST_ADDR
    _, _, replies = _headers_session(
        ("bob@example.org", _rcpt_decision(Verdict.ACCEPT, provisional=False)),
        (LIST_ADDR, _rcpt_decision(Verdict.REJECT, provisional=True)))
    assert replies == [Continue(), ALONE_REPLY]


def test_headers_judgement_is_reset_by_abort() -> None:
    """ABORT ends the transaction: nothing is judged again at the next EOH."""
    session, conn, _ = _headers_session(
        (LIST_ADDR, _rcpt_decision(Verdict.ACCEPT, provisional=True)))
    session.on_abort()
    assert session.eoh_request(conn) is None
