"""What the decision core asks of a fact source, and what it gets back: the contract every
backend (the static map, Mailman) implements.

The decision core owns this contract (dependency inversion): ``listgate.decision.gate``
asks a ``FactSource`` and decides from the ``ListFacts`` it answers with; the sources in
``listgate.facts`` and ``listgate.mailman`` import this module, never the other way round.
What the daemon needs beyond it (cache metrics, fetch timing, reload, invalidation) is
declared in ``listgate.facts.contract``.

Invariants:
- Pure: values and protocols only; no I/O, no clock, no asyncio (``async def`` in a
  protocol imports nothing).
- ``lookup_now`` never does I/O and never blocks: it answers from memory or returns
  ``PENDING``, and then the caller awaits ``lookup`` for the same request.
- A lookup answers with ``ListFacts``: how the recipient resolves (not a list, a list's
  service address, a posting address) and, for a posting address, the list's policy and
  the facts of every sender in ``request.senders``.
- A source raises ``BackendUnavailable`` only for recipients it knows to be lists (it
  resolves recipients from its list directory first), so mail to anyone else is never
  delayed by a backend outage.
- Sources raise only ``BackendError`` (``BackendUnavailable``, ``ListNotFound``) on
  purpose; the library errors they see are translated at their boundary. The failure
  policy is not theirs to apply: ``listgate.decision.gate.Gate`` does it.
- ``aclose`` releases what the source holds (HTTP sessions...) and may be called once.
- A source whose facts may be older than its ``reject_max_age`` says so with
  ``ListFacts.confirm``: awaiting it answers the same request from facts fetched again
  (within the source's own deadline, and without a further ``confirm``). The gate
  awaits it before it sends a reject; an accept never waits for it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from listgate.decision.model import PostingRequest
from listgate.decision.recipients import NOT_A_LIST, Resolution
from listgate.decision.rules import ListPolicy, SenderFacts

__all__ = ["PENDING", "FactSource", "ListFacts", "LookupNow", "Pending", "not_a_list"]


@dataclass(frozen=True, slots=True)
class ListFacts:
    """Everything a source found out for one request: how the recipient resolves and,
    for a posting address, the list's policy and what Mailman knows of each sender."""

    resolution: Resolution
    policy: ListPolicy | None = None
    """Present for a POSTING resolution."""
    senders: tuple[SenderFacts, ...] = ()
    """In Mailman's order (From:, envelope, Reply-To:, Sender:; at RCPT the envelope)."""
    hints: tuple[SenderFacts, ...] = ()
    """Other spellings of the envelope sender (SRS, BATV, +tag): may only accept."""
    confirm: Callable[[], Awaitable[ListFacts]] | None = field(
        default=None, compare=False, repr=False
    )
    """Set when these facts are too old to reject on: the same lookup from facts fetched
    again, to await before a reject is sent (None: fresh enough, or a source that keeps
    no old facts)."""


def not_a_list() -> ListFacts:
    """Facts for a recipient that is no list."""
    return ListFacts(NOT_A_LIST)


class Pending(enum.Enum):
    """The fast path cannot answer without I/O; await ``FactSource.lookup``."""

    PENDING = "pending"


PENDING = Pending.PENDING
"""The one value of ``Pending``."""

LookupNow: TypeAlias = ListFacts | Pending
"""What ``FactSource.lookup_now`` returns."""


class FactSource(Protocol):
    """Answers "may this sender post to this recipient, and is it a list at all?"."""

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from memory, or ``PENDING`` when I/O is needed."""
        ...

    async def lookup(self, request: PostingRequest) -> ListFacts:
        """Answer, doing I/O if needed; may raise ``BackendUnavailable``/``BackendError``."""
        ...

    async def aclose(self) -> None:
        """Release the source's resources."""
        ...

    def describe(self) -> str:
        """One line for logs, e.g. "static map, 3 lists"."""
        ...

    def known_lists(self) -> tuple[str, ...]:
        """The posting addresses the source currently knows, sorted."""
        ...

    async def list_policies(self) -> tuple[ListPolicy, ...]:
        """The posting policy of every list (for ``listgate lists``); may do I/O."""
        ...
