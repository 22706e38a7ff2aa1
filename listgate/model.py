"""Domain values shared by the decision engine, the backends and the front ends.

Invariants:
- Pure: no I/O, no clock, no asyncio. Every value is a frozen dataclass or an enum.
- Addresses are compared in their normalised form (``normalize_address``): surrounding
  whitespace and one pair of angle brackets removed, lower-cased. The null sender is "".
- A ``Decision`` is complete: a front end renders it without consulting anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Decision",
    "PostingRequest",
    "Verdict",
    "normalize_address",
]


class Verdict(enum.Enum):
    """What the MTA is told to do with one recipient."""

    ACCEPT = "accept"
    """Let the recipient through (milter CONTINUE, policy DUNNO)."""
    REJECT = "reject"
    """Refuse permanently (5xx)."""
    TEMPFAIL = "tempfail"
    """Refuse for now (4xx); the sending MTA retries later."""


def normalize_address(raw: str) -> str:
    """Return *raw* as listgate compares it: trimmed, unbracketed, lower-cased.

    ``"<Boss@Example.ORG>"`` becomes ``"boss@example.org"``; ``"<>"`` and ``""`` become ``""``
    (the null sender, which is never a poster).
    """
    addr = raw.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    return addr.lower()


@dataclass(frozen=True, slots=True)
class PostingRequest:
    """One (sender, recipient) pair the MTA asks about, with what else it told us."""

    sender: str
    """Envelope sender, normalised ("" for the null sender)."""
    recipient: str
    """Envelope recipient, normalised."""
    client_address: str | None = None
    queue_id: str | None = None
    auth_user: str | None = None
    header_senders: tuple[str, ...] = ()
    """Normalised header sender addresses (From:, Sender:, Reply-To:) when known."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one ``PostingRequest``."""

    verdict: Verdict
    smtp_code: int | None
    """550, 451, ...; None for ACCEPT."""
    dsn: str | None
    """Enhanced status code such as "5.7.1"; None for ACCEPT."""
    text: str
    """Human text of the SMTP reply (without code and DSN); "" for ACCEPT."""
    reasons: tuple[str, ...]
    """Why, most important first: e.g. ("not a list: not gated",)."""
    list_address: str | None = None
    """The list posting address the recipient resolved to, if any."""

    @property
    def smtp_reply(self) -> str | None:
        """The one-line SMTP reply the MTA shows the client, or None for ACCEPT."""
        if self.smtp_code is None:
            return None
        parts = [str(self.smtp_code)]
        if self.dsn:
            parts.append(self.dsn)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)
