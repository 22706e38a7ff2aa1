"""The backend contract as the daemon sees it: a ``FactSource`` plus declared capabilities.

The decision core needs only ``listgate.decision.facts.FactSource`` (``lookup_now``,
``lookup``...). The daemon also wires a backend's cache into the metrics, times its
fetches, hands it new cache lifetimes on reload, and (from a change feed) drops facts that
changed. Those are the optional capabilities below, declared with no-op defaults: a
backend subclasses ``Backend`` and overrides what it has, so nothing is ever looked up by
name (``getattr``), and a new backend without a cache is complete as it stands.

Invariants:
- Every backend the registry builds is a subclass of ``Backend``; the daemon calls these
  methods on any of them without checking. The ``FactSource`` methods have no default:
  mypy refuses to instantiate a subclass that lacks one.
- The defaults do nothing and report nothing: no caches, no fetches, 0 entries dropped.
- Invalidation follows ``listgate.facts.keyspace``: kinds of fact with a scope (site,
  list id, address); a backend without a cache has nothing to drop.
- No asyncio and no backend implementation is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from listgate.config import CacheConfig
from listgate.decision.facts import FactSource

__all__ = ["Backend", "CacheStats", "FeedCoverage", "FetchObserver"]

FetchObserver = Callable[[str, float], None]
"""Called with (kind of fact, seconds) after each fetch from the source."""


class CacheStats(Protocol):
    """What the metrics read of one cache (``listgate.facts.cache.FactCache``)."""

    @property
    def name(self) -> str:
        """The kind of fact; the ``cache`` label."""
        ...

    @property
    def hits(self) -> int:
        """Fresh answers from memory."""
        ...

    @property
    def misses(self) -> int:
        """Fetches started."""
        ...

    @property
    def stale(self) -> int:
        """Answers served past their age limit (the source failed, or the deadline passed)."""
        ...

    @property
    def errors(self) -> int:
        """Fetches that failed with nothing stale to serve."""
        ...

    def __len__(self) -> int:
        """Entries held."""
        ...


class FeedCoverage(Protocol):
    """Whether a healthy change feed covers a cached fact (``listgate.facts.feed``)."""

    def covers(self, fetched_at: float) -> bool:
        """True when every change since *fetched_at* (``time.monotonic``) has reached
        listgate, so the fact may stand behind a reject however old it is."""
        ...


class Backend(FactSource, Protocol):
    """A ``FactSource`` with the daemon's optional capabilities (no-op by default)."""

    def caches(self) -> tuple[CacheStats, ...]:
        """The caches to report in the metrics (cache introspection)."""
        return ()

    def observe_fetches(self, observer: FetchObserver) -> None:
        """Report every fetch's duration to *observer* (the latency histogram)."""
        del observer

    def reconfigure(self, cache: CacheConfig) -> None:
        """Apply new cache lifetimes (a reload); cached entries are kept."""
        del cache

    def invalidate(self, kind: str, subject: str = "") -> int:
        """Drop the one fact (kind, subject); entries dropped."""
        del kind, subject
        return 0

    def invalidate_list(self, list_id: str) -> int:
        """Drop every fact about the list *list_id*; entries dropped."""
        del list_id
        return 0

    def invalidate_address(self, address: str) -> int:
        """Drop every fact about *address*; entries dropped."""
        del address
        return 0

    def invalidate_all(self) -> int:
        """Drop every cached fact; entries dropped."""
        return 0

    def follow_feed(self, coverage: FeedCoverage | None) -> None:
        """From now on, let *coverage* (a change feed) vouch for old facts behind a
        reject; None: no feed, ``[cache] reject_max_age`` alone."""
        del coverage

    def reject_refetches(self) -> Mapping[str, int]:
        """Refetches before a reject, by result (fresh, stale, failed), for the metrics."""
        return {}

    def tier_stats(self) -> Mapping[str, float]:
        """The shared cache tier's counters by name (``listgate.facts.redis.TierStats``);
        empty without a shared tier."""
        return {}
