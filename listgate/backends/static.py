"""``StaticBackend``: posting rights from an in-memory map, the default that needs no Mailman.

Invariants:
- Keys are list posting addresses, values the addresses allowed to post. Both sides are
  normalised with ``normalize_address`` at construction (case and one pair of angle brackets
  do not matter) and stored as frozensets; the map never changes afterwards.
- The null sender is never a poster, even if "" or "<>" was configured (it is dropped).
- ``lookup_now`` always answers (never ``PENDING``); ``lookup`` never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from listgate.backends.base import LookupNow
from listgate.engine import NULL_SENDER_REASON, PostingFacts
from listgate.model import PostingRequest, normalize_address

__all__ = ["StaticBackend"]

STATIC_POSTER_REASON = "static poster"


class StaticBackend:
    """Posting rights from a ``{list address: allowed posters}`` map."""

    __slots__ = ("_posters",)

    def __init__(self, posters: Mapping[str, Iterable[str]]) -> None:
        merged: dict[str, set[str]] = {}
        for list_address, allowed in posters.items():
            if isinstance(allowed, str):
                raise TypeError(
                    f"posters of {list_address!r} must be a collection of addresses, not a str"
                )
            key = normalize_address(list_address)
            if not key:
                raise ValueError("a list address must not be empty")
            merged.setdefault(key, set()).update(normalize_address(a) for a in allowed)
        self._posters: dict[str, frozenset[str]] = {
            key: frozenset(allowed - {""}) for key, allowed in merged.items()
        }

    def lists(self) -> tuple[str, ...]:
        """The gated list posting addresses, sorted."""
        return tuple(sorted(self._posters))

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from the map: None when the recipient is not a list."""
        return self._facts(request)

    def _facts(self, request: PostingRequest) -> PostingFacts | None:
        list_address = normalize_address(request.recipient)
        allowed = self._posters.get(list_address)
        if allowed is None:
            return None
        sender = normalize_address(request.sender)
        if not sender:
            return PostingFacts(list_address, False, (NULL_SENDER_REASON,))
        if sender in allowed:
            return PostingFacts(list_address, True, (STATIC_POSTER_REASON,))
        return PostingFacts(list_address, False, (f"not in static posters of {list_address}",))

    async def lookup(self, request: PostingRequest) -> PostingFacts | None:
        """The same answer as ``lookup_now`` (which never returns ``PENDING`` here)."""
        return self._facts(request)

    async def aclose(self) -> None:
        """Nothing to release."""

    def describe(self) -> str:
        """E.g. "static map, 3 lists"."""
        count = len(self._posters)
        return f"static map, {count} list{'' if count == 1 else 's'}"
