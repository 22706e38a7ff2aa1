"""The membership backend protocol: what the gate asks a backend, and how.

Invariants:
- ``lookup_now`` never does I/O and never blocks: it answers from memory or returns
  ``PENDING``, and then the caller awaits ``lookup`` for the same request.
- A lookup answers with ``ListFacts``: how the recipient resolves (not a list, a list's
  service address, a posting address) and, for a posting address, the list's policy and
  the facts of every sender in ``request.senders``.
- A backend raises ``BackendUnavailable`` only for recipients it knows to be lists (it
  resolves recipients from its cached list directory first), so mail to anyone else is
  never delayed by a backend outage.
- Backends raise only ``BackendError`` (``BackendUnavailable``, ``ListNotFound``) on purpose;
  the library errors they see are translated at their boundary. The failure policy is not
  theirs to apply: ``listgate.decision.gate.Gate`` does it.
- ``aclose`` releases what the backend holds (HTTP sessions...) and may be called once.
"""

from __future__ import annotations

import enum
from typing import Protocol, TypeAlias

from listgate.config import CacheConfig as CacheSettings
from listgate.decision.engine import ListFacts
from listgate.decision.model import PostingRequest
from listgate.decision.rules import ListPolicy

__all__ = ["PENDING", "CacheSettings", "LookupNow", "MembershipBackend", "Pending"]


class Pending(enum.Enum):
    """The fast path cannot answer without I/O; await ``MembershipBackend.lookup``."""

    PENDING = "pending"


PENDING = Pending.PENDING
"""The one value of ``Pending``."""

LookupNow: TypeAlias = ListFacts | Pending
"""What ``MembershipBackend.lookup_now`` returns."""


class MembershipBackend(Protocol):
    """Answers "may this sender post to this recipient, and is it a list at all?"."""

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from memory, or ``PENDING`` when I/O is needed."""
        ...

    async def lookup(self, request: PostingRequest) -> ListFacts:
        """Answer, doing I/O if needed; may raise ``BackendUnavailable``/``BackendError``."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources."""
        ...

    def describe(self) -> str:
        """One line for logs, e.g. "static map, 3 lists"."""
        ...

    def known_lists(self) -> tuple[str, ...]:
        """The posting addresses the backend currently knows, sorted."""
        ...

    async def list_policies(self) -> tuple[ListPolicy, ...]:
        """The posting policy of every list (for ``listgate lists``); may do I/O."""
        ...

