"""The Postfix policy front end: which requests listgate judges, and how a decision
becomes an ``action=``.

Invariants:
- Pure: no I/O. ``PolicySession`` is the whole conversation as listgate holds it: bytes
  in, ``PostingRequest``s out, ``Decision``s in, ``action=`` bytes out (see
  ``listgate.frontends.session``). The asyncio layer only moves bytes and asks the gate.
- A connection carries any number of requests (Postfix keeps it open and reuses it).
  Each request gets exactly one reply, in order.
- Only **RCPT** is judged: a request whose ``protocol_state`` is not ``RCPT`` (or whose
  ``request`` is not ``smtpd_access_policy``) gets ``DUNNO`` without asking the gate, and
  a ``Notice`` keyed by its request and protocol state, so the operator hears once of a
  misplaced ``check_policy_service``. Put it in ``smtpd_recipient_restrictions``.
- One ``Decision`` becomes exactly one action: ACCEPT → ``DUNNO`` (never ``OK``, which
  would skip the restrictions after listgate), REJECT and TEMPFAIL → ``CODE DSN TEXT``
  with the decision's code, DSN and text (defaults ``550 5.7.1`` and ``451 4.3.0``).
  Postfix keeps that code and prefixes the text with ``<rcpt>: Recipient address
  rejected:``.
- Authenticated posters: the policy protocol shows no headers and no body, so only the
  SPF half works here: a request carries the HELO name (``Evidence``, no more to come),
  and a member of a ``require_authenticated`` list counts only with an SPF pass for the
  envelope sender (or SASL); a From: address can never be proven over this protocol.
- Headers mode cannot work here: the policy protocol asks once per RCPT and cannot wait
  for the headers. A *provisional* REJECT (``decide_at = "headers"``, the envelope sender
  may not post, the headers might still admit the post) is answered ``DUNNO``, so Mailman
  decides; listgate never rejects what it has not judged in full. The answer's ``note``
  says so, for the decision log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from listgate.decision.model import (
    Decision,
    Evidence,
    PostingRequest,
    Verdict,
    normalize_address,
)
from listgate.frontends.session import Event, Notice
from listgate.policyd import PolicyConnection, PolicyLimits, PolicyRequest, PolicyStateError
from listgate.sansio import NEED_DATA, PAUSED

__all__ = [
    "ACCESS_POLICY",
    "DUNNO",
    "JUDGED_STATE",
    "PROVISIONAL_NOTE",
    "UNJUDGED_WARNING",
    "PolicyAnswer",
    "PolicySession",
    "answer_for",
    "posting_request",
    "unjudged_notice",
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
UNJUDGED_WARNING = (
    "policy request=%s protocol_state=%s answered DUNNO: listgate judges only "
    "request=smtpd_access_policy at protocol_state=RCPT; put check_policy_service "
    "in smtpd_recipient_restrictions (logged once)"
)
"""The notice for a request that is not judged (values: request, protocol_state)."""

_DEFAULTS: dict[Verdict, tuple[int, str]] = {
    Verdict.REJECT: (550, "5.7.1"),
    Verdict.TEMPFAIL: (451, "4.3.0"),
}


@dataclass(frozen=True, slots=True, init=False)
class PolicyAnswer:
    """The action for one decision, and why it differs from the verdict (if it does).
    (``__init__`` written out: mypyc compiles it, not the one ``dataclasses`` makes.)"""

    action: str
    note: str = ""

    def __init__(self, action: str, note: str = "") -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "note", note)


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
        evidence=_evidence(request),
    )


def _evidence(request: PolicyRequest) -> Evidence | None:
    """The HELO name, for SPF (None when Postfix sent none)."""
    helo = request.attributes.get("helo_name", "")
    return Evidence(helo=helo) if helo else None


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


def unjudged_notice(request: PolicyRequest) -> Notice:
    """The notice that requests like *request* (not a RCPT) are answered ``DUNNO``."""
    return Notice(
        f"{request.request}/{request.protocol_state}",
        UNJUDGED_WARNING,
        (request.request or "-", request.protocol_state or "-"),
    )


class PolicySession:
    """One policy connection as listgate holds it (a ``listgate.frontends.session.Session``):
    a ``PolicyConnection`` for the protocol, and the rules above for what it means."""

    __slots__ = ("_answer", "_asked", "conn", "data_to_send", "receive_data", "requests")

    def __init__(self, limits: PolicyLimits | None = None) -> None:
        conn = self.conn = PolicyConnection(limits)
        self.receive_data: Callable[[bytes], None] = conn.receive_data
        """Add bytes from Postfix (the connection's own method: no extra call)."""
        self.data_to_send: Callable[[], bytes] = conn.data_to_send
        """Bytes to write to Postfix: the actions queued so far, in order."""
        self.requests = 0
        """Requests answered on this connection (judged or not)."""
        self._asked = False
        """A request returned by ``next_event`` waits for ``decide``."""
        self._answer = _ACCEPT
        """The answer to the last decision (for the decision log)."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a returned request."""
        return self.conn.buffered

    def next_event(self) -> Event:
        """The next RCPT request to decide, a ``Notice`` for a request answered ``DUNNO``
        unjudged, else ``NEED_DATA`` (``PAUSED`` while a decision is owed). Raises
        ``PolicyProtocolError``."""
        if self._asked:
            return PAUSED
        event = self.conn.next_event()
        if event is NEED_DATA:
            return event
        assert isinstance(event, PolicyRequest)
        request = posting_request(event)
        if request is None:
            self._reply(DUNNO)
            return unjudged_notice(event)
        self._asked = True
        return request

    def decide(self, decision: Decision) -> None:
        """Queue the action for the request last returned. Raises ``PolicyStateError``
        when no request waits for a decision."""
        if not self._asked:
            raise PolicyStateError("no posting request is waiting for a decision")
        self._asked = False
        answer = self._answer = answer_for(decision)
        self._reply(answer.action)

    def shown_reply(self, decision: Decision) -> str:
        """The action for *decision* as the decision log shows it (and why it differs
        from the verdict, if it does)."""
        answer = self._answer
        return f"{answer.action} ({answer.note})" if answer.note else answer.action

    def _reply(self, action: str) -> None:
        self.conn.send(action)
        self.requests += 1
