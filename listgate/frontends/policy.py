"""The Postfix policy front end: which requests listgate judges, and how a decision
becomes an ``action=``.

Invariants:
- Pure: no I/O. The asyncio layer reads requests, asks the gate, and writes actions.
- Only **RCPT** is judged: a request whose ``protocol_state`` is not ``RCPT`` (or whose
  ``request`` is not ``smtpd_access_policy``) gets ``DUNNO`` without asking the gate.
  Put ``check_policy_service`` in ``smtpd_recipient_restrictions``.
- One ``Decision`` becomes exactly one action: ACCEPT → ``DUNNO`` (never ``OK``, which
  would skip the restrictions after listgate), REJECT and TEMPFAIL → ``CODE DSN TEXT``
  with the decision's code, DSN and text (defaults ``550 5.7.1`` and ``451 4.3.0``).
  Postfix keeps that code and prefixes the text with ``<rcpt>: Recipient address
  rejected:``.
- Headers mode cannot work here: the policy protocol asks once per RCPT and cannot wait
  for the headers. A *provisional* REJECT (``decide_at = "headers"``, the envelope sender
  may not post, the headers might still admit the post) is answered ``DUNNO``, so Mailman
  decides; listgate never rejects what it has not judged in full. The answer's ``note``
  says so, for the decision log.
"""

from __future__ import annotations

from dataclasses import dataclass

from listgate.decision.model import Decision, PostingRequest, Verdict, normalize_address
from listgate.policyd import PolicyRequest

__all__ = [
    "ACCESS_POLICY",
    "DUNNO",
    "JUDGED_STATE",
    "PROVISIONAL_NOTE",
    "PolicyAnswer",
    "answer_for",
    "posting_request",
]

DUNNO = "DUNNO"
"""Postfix: this restriction has no opinion; go on with the next one."""
JUDGED_STATE = "RCPT"
"""The only ``protocol_state`` listgate judges."""
ACCESS_POLICY = "smtpd_access_policy"
"""The ``request`` value the Postfix SMTP server sends."""
PROVISIONAL_NOTE = (
    "decide_at=headers cannot wait for the headers over the policy protocol; "
    "Mailman decides"
)

_DEFAULTS: dict[Verdict, tuple[int, str]] = {
    Verdict.REJECT: (550, "5.7.1"),
    Verdict.TEMPFAIL: (451, "4.3.0"),
}


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    """The action for one decision, and why it differs from the verdict (if it does)."""

    action: str
    note: str = ""


_ACCEPT = PolicyAnswer(DUNNO)


def posting_request(request: PolicyRequest) -> PostingRequest | None:
    """The posting request to judge for *request*, or None: answer ``DUNNO`` (not a RCPT
    of the Postfix SMTP server)."""
    if request.protocol_state.upper() != JUDGED_STATE or request.request != ACCESS_POLICY:
        return None
    return PostingRequest(
        sender=normalize_address(request.sender),
        recipient=normalize_address(request.recipient),
        client_address=request.client_address or None,
        queue_id=request.queue_id or None,
        auth_user=request.sasl_username or None,
    )


def answer_for(decision: Decision) -> PolicyAnswer:
    """The policy action that carries *decision* to Postfix."""
    if decision.verdict is Verdict.ACCEPT:
        return _ACCEPT
    if decision.provisional:
        return PolicyAnswer(DUNNO, PROVISIONAL_NOTE)
    default_code, default_dsn = _DEFAULTS[decision.verdict]
    parts = [str(decision.smtp_code or default_code), decision.dsn or default_dsn]
    if decision.text:
        parts.append(decision.text)
    return PolicyAnswer(" ".join(parts))
