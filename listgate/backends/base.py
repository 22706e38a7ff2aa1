"""The membership backend protocol: what the gate asks a backend, and how.

Invariants:
- ``lookup_now`` never does I/O and never blocks: it answers from memory or returns
  ``PENDING``, and then the caller awaits ``lookup`` for the same request.
- ``None`` from either lookup means "the recipient is not a list" (not gated); a
  ``PostingFacts`` means it is a list, with the backend's view of the sender.
- Backends raise only ``BackendError`` (``BackendUnavailable``, ``ListNotFound``) on purpose;
  the library errors they see are translated at their boundary. The failure policy is not
  theirs to apply: ``listgate.gate.Gate`` does it.
- ``aclose`` releases what the backend holds (HTTP sessions...) and may be called once.
"""

from __future__ import annotations

import enum
from typing import Protocol, TypeAlias

from listgate.engine import PostingFacts
from listgate.model import PostingRequest

__all__ = ["PENDING", "LookupNow", "MembershipBackend", "Pending"]


class Pending(enum.Enum):
    """The fast path cannot answer without I/O; await ``MembershipBackend.lookup``."""

    PENDING = "pending"


PENDING = Pending.PENDING
"""The one value of ``Pending``."""

LookupNow: TypeAlias = PostingFacts | Pending | None
"""What ``MembershipBackend.lookup_now`` returns."""


class MembershipBackend(Protocol):
    """Answers "may this sender post to this recipient, and is it a list at all?"."""

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from memory: facts, None (not a list), or ``PENDING`` when I/O is needed."""
        ...

    async def lookup(self, request: PostingRequest) -> PostingFacts | None:
        """Answer, doing I/O if needed; may raise ``BackendUnavailable``/``BackendError``."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources."""
        ...

    def describe(self) -> str:
        """One line for logs, e.g. "static map, 3 lists"."""
        ...
