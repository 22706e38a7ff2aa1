"""The milter front end: what listgate negotiates, and how a decision is answered.

Invariants:
- Pure: no I/O. The asyncio layer feeds events in and writes the replies out.
- listgate asks the MTA for MAIL (no reply: SMFIP_NR_MAIL) and RCPT only; every other
  step is skipped where the MTA allows it (see ``MILTER_OPTIONS``). The client address
  and queue id come from macros, so CONNECT can be skipped too.
- One ``Decision`` becomes exactly one final reply: ACCEPT → CONTINUE (never ACCEPT,
  which would end milter processing for the whole message), REJECT and TEMPFAIL →
  REPLYCODE with the decision's code, DSN and text.
"""

from __future__ import annotations

from dataclasses import dataclass

from listgate.milter import (
    Continue,
    EnvelopeFrom,
    EnvelopeRecipient,
    MacroStage,
    MilterConnection,
    MilterOptions,
    Reply,
    ReplyCode,
)
from listgate.model import Decision, PostingRequest, Verdict, normalize_address

__all__ = ["MILTER_OPTIONS", "MilterSession", "milter_options", "reply_for"]

WANTED_MACROS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.ENVFROM: ("{client_addr}", "{auth_authen}", "i"),
    MacroStage.ENVRCPT: ("i",),
}
"""Macros listgate asks for (SETSYMLIST). They replace the MTA's configured lists for
listgate only: the client address and SASL login at MAIL, the queue id at RCPT (Postfix
knows it only from the second accepted recipient on; Sendmail already at MAIL)."""


def milter_options(max_packet_size: int) -> MilterOptions:
    """The negotiation listgate wants, with the configured packet limit."""
    return MilterOptions(
        events=frozenset({EnvelopeFrom, EnvelopeRecipient}),
        no_reply=frozenset({EnvelopeFrom}),
        macros=WANTED_MACROS,
        max_packet_size=max_packet_size,
    )


MILTER_OPTIONS = milter_options(1024 * 1024)
_CONTINUE = Continue()


def reply_for(decision: Decision) -> Reply:
    """The milter reply that carries *decision* to the MTA."""
    if decision.verdict is Verdict.ACCEPT or decision.smtp_code is None:
        return _CONTINUE
    return ReplyCode(decision.smtp_code, decision.dsn, decision.text)


@dataclass(slots=True)
class MilterSession:
    """Per-connection transaction state: who the current envelope sender is."""

    sender: str | None = None
    auth_user: str | None = None
    client_address: str | None = None

    def on_mail(self, event: EnvelopeFrom, conn: MilterConnection) -> None:
        """Remember the envelope sender (and the macros that came with it)."""
        self.sender = normalize_address(event.sender)
        self.auth_user = conn.macro("auth_authen") or None
        self.client_address = conn.macro("client_addr") or self.client_address

    def on_abort(self) -> None:
        """The transaction ended; the connection stays."""
        self.sender = None
        self.auth_user = None

    def request_for(self, event: EnvelopeRecipient, conn: MilterConnection) -> PostingRequest:
        """The posting request for one RCPT of the current transaction."""
        return PostingRequest(
            sender=self.sender or "",
            recipient=normalize_address(event.recipient),
            client_address=self.client_address,
            queue_id=conn.macro("i"),
            auth_user=self.auth_user,
        )
