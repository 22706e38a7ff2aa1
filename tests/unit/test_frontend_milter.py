"""The milter front end: negotiation options, Decision → reply, per-connection session."""

from __future__ import annotations

import pytest

from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.frontends.milter import ALONE_REPLY, MilterSession, milter_options, reply_for
from listgate.milter import (
    NEED_DATA,
    POSTFIX_OFFER,
    Abort,
    Continue,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Macro,
    MacroStage,
    MilterConnection,
    ProtocolFlag,
    ReplyCode,
    encode,
)

from .milter import CHUNKED, pieces


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


def _run(session: MilterSession, data: bytes, chunk: int | None,
         conn: MilterConnection | None = None) -> tuple[MilterConnection, list[PostingRequest]]:
    """Feed *data* after OPTNEG, routing events to *session* like the server does."""
    if conn is None:
        conn = MilterConnection(milter_options(1024 * 1024))
        data = encode(POSTFIX_OFFER) + data
    requests: list[PostingRequest] = []
    for piece in pieces(data, chunk):
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, EnvelopeFrom):
                session.on_mail(event, conn)
            elif isinstance(event, EnvelopeRecipient):
                requests.append(session.request_for(event, conn))
                conn.send(Continue())
            elif isinstance(event, Abort):
                session.on_abort()
        conn.data_to_send()
    return conn, requests


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
    """on_mail stores the envelope sender in normalised form."""
    session = MilterSession()
    data = b"".join(encode(p) for p in (MAIL_MACROS, EnvelopeFrom(raw),
                                         EnvelopeRecipient("<List@Example.org>")))
    _, requests = _run(session, data, chunk)
    assert session.sender == normalised
    assert requests[0].sender == normalised
    assert requests[0].recipient == "list@example.org"


@CHUNKED
def test_session_picks_macros(chunk: int | None) -> None:
    """auth_authen and client_addr come from MAIL macros; 'i' with the RCPT stage winning."""
    session = MilterSession()
    data = b"".join(encode(p) for p in (
        MAIL_MACROS, EnvelopeFrom("<a@example.com>"),
        Macro(b"R"), EnvelopeRecipient("<list@example.org>"),
        Macro(b"R", (("i", "QID-R"),)), EnvelopeRecipient("<other@example.org>"),
    ))
    _, requests = _run(session, data, chunk)
    assert session.auth_user == "poster@mx.example"
    assert session.client_address == "192.0.2.7"
    assert requests == [
        PostingRequest("a@example.com", "list@example.org", "192.0.2.7", "QID-M",
                       "poster@mx.example"),
        PostingRequest("a@example.com", "other@example.org", "192.0.2.7", "QID-R",
                       "poster@mx.example"),
    ]


@CHUNKED
def test_session_without_macros(chunk: int | None) -> None:
    """Without macros (or with an empty auth_authen) the optional fields are None."""
    session = MilterSession()
    data = b"".join(encode(p) for p in (
        Macro(b"M", (("{auth_authen}", ""),)), EnvelopeFrom("<a@example.com>"),
        EnvelopeRecipient("<list@example.org>"),
    ))
    _, requests = _run(session, data, chunk)
    assert requests == [PostingRequest("a@example.com", "list@example.org")]
    assert session.auth_user is None


@CHUNKED
def test_session_resets_on_abort(chunk: int | None) -> None:
    """ABORT forgets sender and login but keeps the client address for the connection."""
    session = MilterSession()
    first = b"".join(encode(p) for p in (
        MAIL_MACROS, EnvelopeFrom("<a@example.com>"), EnvelopeRecipient("<l@example.org>"),
        Abort(),
    ))
    conn, _ = _run(session, first, chunk)
    assert session.sender is None
    assert session.auth_user is None
    assert session.client_address == "192.0.2.7"
    second = b"".join(encode(p) for p in (
        Macro(b"M"), EnvelopeFrom("<b@example.com>"), EnvelopeRecipient("<l@example.org>"),
    ))
    _, requests = _run(session, second, chunk, conn)
    assert requests == [PostingRequest("b@example.com", "l@example.org", "192.0.2.7")]


# ------------------------------------------------------------------ headers mode


LIST_ADDR = "list@example.org"


def _rcpt_decision(verdict: Verdict, *, provisional: bool, list_address: str | None = LIST_ADDR,
                   ) -> Decision:
    if verdict is Verdict.ACCEPT:
        return Decision(verdict, None, None, "", ("test",), list_address, provisional)
    return Decision(verdict, 550, "5.7.1", "no", ("test",), list_address, provisional)


def _headers_session(*rcpts: tuple[str, Decision]) -> tuple[MilterSession, MilterConnection,
                                                            list[object]]:
    """A transaction from m@example.com to *rcpts* (each answered with its decision),
    then a From: and a Subject: header; the RCPT replies."""
    conn = MilterConnection(milter_options(1024 * 1024, headers=True))
    session = MilterSession()
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
