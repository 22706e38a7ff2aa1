"""The policy front end: which requests are judged, PolicyRequest → PostingRequest, and
Decision → action (with the real gate over a static map)."""

from __future__ import annotations

import pytest

from listgate.decision.engine import DecideAt, ListOverrides, ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.facts.static import StaticBackend
from listgate.frontends.policy import (
    DUNNO,
    PROVISIONAL_NOTE,
    PolicyAnswer,
    answer_for,
    posting_request,
)
from listgate.policyd import PolicyRequest

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
