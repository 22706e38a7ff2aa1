"""The policy front end: which requests are judged, PolicyRequest → PostingRequest,
Decision → action (with the real gate over a static map), and the session bytes in and
bytes out (PolicySession)."""

from __future__ import annotations

import pytest

from listgate.decision.engine import DecideAt, ListOverrides, ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.errors import ProtocolError
from listgate.facts.static import StaticBackend
from listgate.frontends.policy import (
    DUNNO,
    PROVISIONAL_NOTE,
    UNJUDGED_WARNING,
    PolicyAnswer,
    PolicySession,
    answer_for,
    posting_request,
)
from listgate.frontends.session import NEED_DATA, PAUSED, Notice
from listgate.policyd import (
    PolicyLimits,
    PolicyProtocolError,
    PolicyRequest,
    PolicyStateError,
    encode_request,
)

LIST = "list@example.org"
REJECT_TEXT = "<outsider@example.net> is not allowed to post to <list@example.org>"


def rcpt(sender: str, recipient: str, **attrs: str) -> PolicyRequest:
    """A Postfix RCPT-state request."""
    return PolicyRequest.from_attributes({
        "request": "smtpd_access_policy", "protocol_state": "RCPT",
        "sender": sender, "recipient": recipient, **attrs,
    })


def _decision(verdict: Verdict, code: int | None, dsn: str | None, text: str,
              provisional: bool = False) -> Decision:
    return Decision(verdict, code, dsn, text, ("test",), LIST, provisional)


# ----------------------------------------------------------------- requests


def test_rcpt_request_becomes_a_normalised_posting_request() -> None:
    """Sender and recipient are normalised; client, queue id and SASL login are carried."""
    req = rcpt("Outsider@Example.NET", "<LIST@example.org.>", client_address="192.0.2.7",
               queue_id="4VxYz1abcD", sasl_username="outsider")
    assert posting_request(req) == PostingRequest(
        sender="outsider@example.net", recipient="list@example.org",
        client_address="192.0.2.7", queue_id="4VxYz1abcD", auth_user="outsider",
    )


def test_empty_optional_attributes_become_none() -> None:
    """Postfix sends queue_id= (first recipient), sasl_username= and the null sender as ''."""
    assert posting_request(rcpt("", LIST, queue_id="", sasl_username="")) == PostingRequest(
        sender="", recipient=LIST, client_address=None, queue_id=None, auth_user=None,
    )


def test_quoted_and_source_routed_recipients_are_normalised() -> None:
    """The RFC 5321 spellings that Postfix may pass through reach the list address."""
    for spelling in ('"list"@example.org', "@relay.example:list@example.org"):
        request = posting_request(rcpt("a@b.example", spelling))
        assert request is not None
        assert request.recipient == LIST


@pytest.mark.parametrize(
    "state", ["CONNECT", "EHLO", "HELO", "MAIL", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN", ""]
)
def test_states_other_than_rcpt_are_not_judged(state: str) -> None:
    """Any protocol_state but RCPT gives None (the server answers DUNNO)."""
    req = PolicyRequest.from_attributes({"request": "smtpd_access_policy",
                                         "protocol_state": state, "sender": "x@y",
                                         "recipient": LIST})
    assert posting_request(req) is None


def test_rcpt_state_is_case_insensitive_but_request_type_is_checked() -> None:
    """protocol_state=rcpt is judged; a request that is not smtpd_access_policy is not."""
    assert posting_request(rcpt("a@b.example", LIST, protocol_state="rcpt")) is not None
    assert posting_request(rcpt("a@b.example", LIST, request="junk")) is None
    assert posting_request(PolicyRequest.from_attributes({"protocol_state": "RCPT"})) is None


# ----------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("decision", "action"),
    [
        (_decision(Verdict.ACCEPT, None, None, ""), DUNNO),
        (_decision(Verdict.ACCEPT, 250, "2.0.0", "ignored"), DUNNO),
        (_decision(Verdict.REJECT, 550, "5.7.1", "<a@b> may not post"),
         "550 5.7.1 <a@b> may not post"),
        (_decision(Verdict.REJECT, 554, "5.7.0", "no"), "554 5.7.0 no"),
        (_decision(Verdict.REJECT, None, None, "no"), "550 5.7.1 no"),
        (_decision(Verdict.REJECT, 550, "5.7.1", ""), "550 5.7.1"),
        (_decision(Verdict.TEMPFAIL, 451, "4.3.0", "try later"), "451 4.3.0 try later"),
        (_decision(Verdict.TEMPFAIL, 452, None, "later"), "452 4.3.0 later"),
    ],
    ids=["accept", "accept-with-code", "reject", "reject-554", "reject-defaults",
         "reject-no-text", "tempfail", "tempfail-no-dsn"],
)
def test_answer_for(decision: Decision, action: str) -> None:
    """ACCEPT → DUNNO (never OK); REJECT/TEMPFAIL → CODE DSN TEXT from the decision."""
    assert answer_for(decision) == PolicyAnswer(action)


def test_provisional_reject_is_dunno_with_a_note() -> None:
    """A headers-mode provisional REJECT cannot wait for headers: DUNNO, and the log says why."""
    answer = answer_for(_decision(Verdict.REJECT, 550, "5.7.1", "no", provisional=True))
    assert answer == PolicyAnswer(DUNNO, PROVISIONAL_NOTE)
    assert "Mailman decides" in answer.note


# ----------------------------------------------------------------- with the real gate


def _gate(decide_at: DecideAt = DecideAt.RCPT) -> Gate:
    return Gate(StaticBackend({LIST: ["member@example.com"]}), ReplyTexts(),
                default=ListOverrides(decide_at=decide_at))


def _action(gate: Gate, sender: str, recipient: str) -> PolicyAnswer:
    request = posting_request(rcpt(sender, recipient))
    assert request is not None
    decision = gate.decide_now(request)
    assert decision is not None
    return answer_for(decision)


def test_gate_decisions_become_postfix_actions() -> None:
    """Member → DUNNO, non-member → 550 5.7.1 with listgate's text, other recipient → DUNNO."""
    gate = _gate()
    assert _action(gate, "Member@Example.com", LIST) == PolicyAnswer(DUNNO)
    assert _action(gate, "outsider@example.net", LIST) == PolicyAnswer(f"550 5.7.1 {REJECT_TEXT}")
    assert _action(gate, "outsider@example.net", "alice@example.org") == PolicyAnswer(DUNNO)


def test_headers_mode_non_member_gets_dunno_not_a_reject() -> None:
    """With decide_at = "headers" a non-member's envelope is not enough to reject: DUNNO."""
    answer = _action(_gate(DecideAt.HEADERS), "outsider@example.net", LIST)
    assert answer == PolicyAnswer(DUNNO, PROVISIONAL_NOTE)


# ----------------------------------------------------------------- the session


def wire(sender: str, recipient: str, **attrs: str) -> bytes:
    """The bytes of a Postfix RCPT-state request."""
    return encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                           "sender": sender, "recipient": recipient, **attrs})


@pytest.mark.parametrize("chunk", [None, 1, 7], ids=["whole", "chunk1", "chunk7"])
def test_session_bytes_in_bytes_out(chunk: int | None) -> None:
    """Pipelined requests: each RCPT is one posting request answered with its decision's
    action, the others DUNNO at once with a notice; all replies in request order."""
    gate = _gate()
    session = PolicySession()
    data = (wire("outsider@example.net", LIST, queue_id="Q1")
            + encode_request({"request": "smtpd_access_policy", "protocol_state": "DATA"})
            + wire("Member@Example.com", LIST))
    events: list[object] = []
    out = b""
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        session.receive_data(piece)
        while (event := session.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, PostingRequest):
                assert session.next_event() is PAUSED
                decision = gate.decide_now(event)
                assert decision is not None
                session.decide(decision)
        out += session.data_to_send()
    assert events == [
        PostingRequest("outsider@example.net", LIST, queue_id="Q1"),
        Notice("smtpd_access_policy/DATA", UNJUDGED_WARNING, ("smtpd_access_policy", "DATA")),
        PostingRequest("member@example.com", LIST),
    ]
    assert out == (f"action=550 5.7.1 {REJECT_TEXT}\n\n"
                   "action=DUNNO\n\naction=DUNNO\n\n").encode()
    assert session.requests == 3
    assert session.buffered == 0


def test_session_notice_shows_missing_values_as_a_dash() -> None:
    """A request without request= or protocol_state= is answered DUNNO; its notice names
    them "-" (the key keeps them empty)."""
    session = PolicySession()
    session.receive_data(encode_request({"sender": "x@y"}))
    notice = session.next_event()
    assert notice == Notice("/", UNJUDGED_WARNING, ("-", "-"))
    assert session.data_to_send() == b"action=DUNNO\n\n"
    assert UNJUDGED_WARNING % ("a", "b") == (
        "policy request=a protocol_state=b answered DUNNO: listgate judges only "
        "request=smtpd_access_policy at protocol_state=RCPT; put check_policy_service in "
        "smtpd_recipient_restrictions (logged once)")


def test_session_shows_the_reply_and_its_note() -> None:
    """shown_reply gives the action, and why a provisional REJECT became DUNNO."""
    session = PolicySession()
    session.receive_data(wire("a@b.example", LIST) + wire("a@b.example", LIST))
    assert isinstance(session.next_event(), PostingRequest)
    provisional = _decision(Verdict.REJECT, 550, "5.7.1", "no", provisional=True)
    session.decide(provisional)
    assert session.shown_reply(provisional) == f"DUNNO ({PROVISIONAL_NOTE})"
    assert isinstance(session.next_event(), PostingRequest)
    reject = _decision(Verdict.REJECT, 550, "5.7.1", "no")
    session.decide(reject)
    assert session.shown_reply(reject) == "550 5.7.1 no"
    assert session.data_to_send() == b"action=DUNNO\n\naction=550 5.7.1 no\n\n"


def test_session_refuses_a_decision_nobody_asked_for() -> None:
    """decide without a pending posting request is a PolicyStateError (a ProtocolError)."""
    session = PolicySession()
    with pytest.raises(PolicyStateError):
        session.decide(_decision(Verdict.ACCEPT, None, None, ""))
    assert session.data_to_send() == b""


def test_session_protocol_error_after_complete_requests() -> None:
    """Requests before a defect are still answered; then next_event raises the defect,
    a ProtocolError, on every call."""
    session = PolicySession(PolicyLimits(max_line_length=64))
    session.receive_data(wire("a@b.example", "other@example.org") + b"garbage\n")
    request = session.next_event()
    assert isinstance(request, PostingRequest)
    session.decide(_decision(Verdict.ACCEPT, None, None, ""))
    with pytest.raises(PolicyProtocolError) as first:
        session.next_event()
    assert isinstance(first.value, ProtocolError)
    with pytest.raises(PolicyProtocolError):
        session.next_event()
    assert session.data_to_send() == b"action=DUNNO\n\n"
