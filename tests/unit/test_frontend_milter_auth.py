"""The milter front end with require_authenticated lists (AuthStage): what is negotiated,
which bodies are skipped, and the evidence each request carries."""

from __future__ import annotations

from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.frontends.milter import AuthStage, MilterSession, milter_options
from listgate.milter import (
    POSTFIX_OFFER,
    Body,
    Continue,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Macro,
    NegotiateReply,
    ProtocolFlag,
    ReplyCode,
    Skip,
)

from .milter import replies_in, stream
from .test_frontend_milter import converse, session_replies

LIST = "list@example.org"
ACCEPT = Decision(Verdict.ACCEPT, None, None, "", ("test",), LIST)
WAIT = Decision(Verdict.REJECT, 550, "5.7.1", "no", ("test",), LIST, provisional=True,
                awaits_proof=True)
REFUSE = Decision(Verdict.REJECT, 550, "5.7.1", "not authenticated", ("test",), LIST)
MACROS = Macro(b"M", (("{client_addr}", "192.0.2.7"), ("i", "QID")))


def message_stream(*, body: bytes = b"hello\r\n") -> bytes:
    return stream(
        POSTFIX_OFFER, Helo("client.example"), MACROS, EnvelopeFrom("<m@example.com>"),
        EnvelopeRecipient(f"<{LIST}>"), Header("From", " <m@example.com>"),
        Header("Subject", " hi"), EndOfHeaders(), Body(body), EndOfMessage(),
    )


def negotiated(auth: AuthStage | None) -> NegotiateReply:
    session = MilterSession(milter_options(1 << 20, auth=auth), auth)
    _requests, out, _ = converse(session, stream(POSTFIX_OFFER), None)
    reply = replies_in(out)[0]
    assert isinstance(reply, NegotiateReply)
    return reply


def test_negotiation_is_unchanged_without_an_authenticated_list() -> None:
    """No auth stage: body, EOH, headers and HELO are skipped as before."""
    protocol = ProtocolFlag(negotiated(None).protocol)
    assert protocol & ProtocolFlag.NOBODY
    assert protocol & ProtocolFlag.NOHDRS
    assert protocol & ProtocolFlag.NOHELO
    assert not protocol & ProtocolFlag.SKIP


def test_message_stage_asks_for_helo_headers_body_with_skip() -> None:
    """Verify mode: HELO without reply, headers without reply, the body (answered, so it
    can be skipped), SMFIP_SKIP and SMFIP_HDR_LEADSPC."""
    protocol = ProtocolFlag(negotiated(AuthStage.MESSAGE).protocol)
    assert not protocol & (ProtocolFlag.NOBODY | ProtocolFlag.NOHDRS | ProtocolFlag.NOHELO)
    assert protocol & ProtocolFlag.NR_HELO
    assert protocol & ProtocolFlag.NR_HDR
    assert not protocol & ProtocolFlag.NR_BODY
    assert protocol & ProtocolFlag.SKIP
    assert protocol & ProtocolFlag.HDR_LEADSPC


def test_headers_stage_never_asks_for_the_body() -> None:
    """Upstream mode: headers and EOH, never the body."""
    protocol = ProtocolFlag(negotiated(AuthStage.HEADERS).protocol)
    assert protocol & ProtocolFlag.NOBODY
    assert not protocol & ProtocolFlag.NOHDRS


def test_body_of_a_decided_transaction_is_skipped_at_its_first_chunk() -> None:
    """A recipient accepted at RCPT: the first body chunk gets SKIP, EOM CONTINUE, and no
    request is made after RCPT."""
    session = MilterSession(milter_options(1 << 20, auth=AuthStage.MESSAGE),
                            AuthStage.MESSAGE)
    requests, out, _ = converse(session, message_stream(), None, [ACCEPT])
    assert len(requests) == 1
    assert requests[0].evidence is not None
    assert requests[0].evidence.helo == "client.example"
    assert session_replies(out) == [Continue(), Continue(), Skip(), Continue()]


def test_waiting_recipient_is_judged_at_eom_with_the_whole_message() -> None:
    """A verdict awaiting proof is asked again at EOH, then at EOM with every header field
    (leading space kept) and the body; the EOM reply carries the final verdict."""
    session = MilterSession(milter_options(1 << 20, auth=AuthStage.MESSAGE),
                            AuthStage.MESSAGE)
    requests, out, _ = converse(session, message_stream(), None, [WAIT, WAIT, REFUSE])
    assert len(requests) == 3
    eom: PostingRequest = requests[2]
    assert eom.evidence is not None
    assert eom.evidence.message == (b"From: <m@example.com>\r\nSubject: hi\r\n\r\nhello\r\n")
    assert eom.evidence.header_from == ("m@example.com",)
    assert not eom.evidence.more
    assert requests[1].evidence is not None
    assert requests[1].evidence.more
    assert session_replies(out) == [Continue(), Continue(), Continue(),
                                    ReplyCode(550, "5.7.1", "not authenticated")]


def test_message_over_the_limit_is_not_kept() -> None:
    """Past max_message bytes the message is dropped (no DKIM proof) and the rest of the
    body skipped."""
    session = MilterSession(milter_options(1 << 20, auth=AuthStage.MESSAGE),
                            AuthStage.MESSAGE, max_message=40)
    requests, out, _ = converse(session, message_stream(body=b"x" * 100 + b"\r\n"), None,
                                [WAIT, WAIT, REFUSE])
    assert requests[2].evidence is not None
    assert requests[2].evidence.message is None
    assert session_replies(out)[2] == Skip()
