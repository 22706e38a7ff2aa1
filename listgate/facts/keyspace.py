"""The key space of a backend's facts, and invalidation by kind, list, address or all.

Every cached fact has a namespaced key, ``FactKey(kind, subject)``: the *kind* names the
cache that holds it ("directory", "policy", "memberships"...), and the kind's *scope*
says what the subject is:

- ``Scope.SITE``: one fact for the whole site; the subject is "" (the list directory, the
  site's bans);
- ``Scope.LIST``: one fact per list; the subject is the list id (Mailman's ``list_id``,
  e.g. ``ann.example.org``: what Mailman's change events carry);
- ``Scope.ADDRESS``: one fact per email address; the subject is the normalised address.

A change feed (or an operator) drops exactly the affected facts through ``KeySpace``:
``invalidate(kind, subject)`` one fact, ``invalidate_list(list_id)`` every fact of that
list, ``invalidate_address(address)`` every fact of that address, ``invalidate_all()``
everything. ``str(FactKey)`` ("policy/ann.example.org") is the name a shared tier may
store a fact under (behind its own prefix and format version).

Invariants:
- Kind names are unique within a key space, and each kind has exactly one scope.
- Invalidation drops entries in every tier of the affected caches and detaches their
  fetches in flight (``FactCache.invalidate``), so no answer fetched before the
  invalidation is stored after it. It never waits and returns how many entries it dropped.
- An unknown kind is refused (``UnknownKind``), never silently ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from listgate.decision.model import normalize_address
from listgate.errors import ListgateError
from listgate.facts.cache import FactCache
from listgate.facts.contract import FetchObserver

__all__ = ["FactKey", "KeySpace", "Scope", "UnknownKind"]

V = TypeVar("V")

SITE_SUBJECT = ""
"""The subject of every fact of ``Scope.SITE``."""


class Scope(enum.Enum):
    """What the subject of a kind of fact is."""

    SITE = "site"
    LIST = "list"
    ADDRESS = "address"


@dataclass(frozen=True, slots=True)
class FactKey:
    """The namespaced key of one fact."""

    kind: str
    subject: str = SITE_SUBJECT

    def __str__(self) -> str:
        return f"{self.kind}/{self.subject}"


class UnknownKind(ListgateError):
    """An invalidation named a kind of fact the key space does not have."""


class KeySpace:
    """A backend's caches by kind, with their scopes; see the module docstring."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[Scope, FactCache[str, Any]]] = {}

    def add(self, cache: FactCache[str, V], scope: Scope) -> FactCache[str, V]:
        """Register *cache* as the kind ``cache.name`` of *scope*; returns it."""
        if cache.name in self._kinds:
            raise ValueError(f"kind {cache.name!r} is already in this key space")
        self._kinds[cache.name] = (scope, cache)
        return cache

    @property
    def caches(self) -> tuple[FactCache[str, Any], ...]:
        """Every cache, in the order added."""
        return tuple(cache for _, cache in self._kinds.values())

    def scope(self, kind: str) -> Scope:
        """The scope of *kind*; ``UnknownKind`` if there is none."""
        try:
            return self._kinds[kind][0]
        except KeyError:
            raise UnknownKind(
                f"no kind of fact {kind!r} (known: {', '.join(self._kinds)})"
            ) from None

    def set_observer(self, observer: FetchObserver | None) -> None:
        """Report every fetch's duration, of every kind, to *observer*."""
        for _, cache in self._kinds.values():
            cache.observer = observer

    def set_stale_if_error(self, seconds: float) -> None:
        """The stale-if-error window of every kind."""
        for _, cache in self._kinds.values():
            cache.stale_if_error = seconds

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, kind: str, subject: str = SITE_SUBJECT) -> int:
        """Drop the one fact ``FactKey(kind, subject)``; entries dropped (0 or 1)."""
        self.scope(kind)
        return int(self._kinds[kind][1].invalidate(subject))

    def invalidate_key(self, key: FactKey) -> int:
        """``invalidate(key.kind, key.subject)``."""
        return self.invalidate(key.kind, key.subject)

    def invalidate_list(self, list_id: str) -> int:
        """Drop every fact of scope LIST about *list_id*; entries dropped."""
        return self._invalidate_scope(Scope.LIST, list_id)

    def invalidate_address(self, address: str) -> int:
        """Drop every fact of scope ADDRESS about *address* (normalised here, as the keys
        are); entries dropped."""
        return self._invalidate_scope(Scope.ADDRESS, normalize_address(address))

    def invalidate_all(self) -> int:
        """Drop every fact of every kind; entries dropped."""
        return sum(cache.clear() for _, cache in self._kinds.values())

    def _invalidate_scope(self, scope: Scope, subject: str) -> int:
        return sum(
            int(cache.invalidate(subject))
            for kind_scope, cache in self._kinds.values()
            if kind_scope is scope
        )
