"""A generic cache of facts in front of a slow source: the in-process first tier.

``FactCache[K, V]`` holds one kind of fact (a list's policy, an address's memberships...)
keyed by ``K``. It caches *results* (never coroutines), each as ``Fetched[V]``: the value
and the time it was fetched (in the cache's clock), so a caller can tell how old the
facts behind an answer are. It has:

- **TTL by value**: the caller says how old a cached value may be, and may decide it from
  the value itself (``max_age(value)``): an answer that would accept can be trusted for
  ``ttl``, one that might reject only for a shorter ``negative_ttl``;
- **single-flight**: concurrent misses for one key share one fetch, which runs as its own
  task so that one caller going away does not cancel it for the others;
- **stale-if-error**: when a fetch fails with ``BackendUnavailable`` (source down, slow or
  broken), a value up to ``stale_if_error`` seconds past its age limit is served instead;
- **a second tier** (``FactStore``, e.g. a Redis shared by several hosts) consulted on a
  local miss before the source, and filled after each fetch from the source;
- **invalidation by key** (``invalidate``, ``clear``), which also detaches a fetch in
  flight for the key: its callers get its answer, but it is not stored;
- a bounded number of entries (``cachetools.LRUCache``) and an injectable clock.

Combining several facts into one answer, without waiting or within a deadline, is
``listgate.facts.lookup``; naming the kinds and invalidating across them is
``listgate.facts.keyspace``.

Invariants:
- Nothing here knows what a fact means: keys and values are type parameters, fetches are
  callables given by the caller.
- At most one fetch per key is in flight (``flight``). A value is stored only by the fetch
  that is current for its key: none started before an ``invalidate`` of that key stores.
- Only ``BackendUnavailable`` is papered over with a stale value; any other error (such as
  ``ListNotFound``, which is an answer) reaches every caller of that fetch.
- A second tier never fails a lookup: its ``FactStoreError`` is counted in
  ``tier_errors`` and the fetch goes on as if the tier had nothing. Before a fetch from the
  source the tier is asked to ``claim`` the key (a shared lock: another host may fetch
  it for us), and every claim ends in the tier's ``put`` or ``release``.
- ``forget``/``forget_all`` drop entries in this tier only: for a second tier that
  hears of an invalidation made elsewhere (``listgate.facts.redis``). Times cross the tier
  boundary as ages (seconds), never as clock readings: the clock here is per process.
- Counters: ``hits`` (a fresh value from memory), ``misses`` (a fetch started), ``stale``
  (a value served past its age limit), ``errors`` (a fetch failed and nothing stale could
  stand in); ``observer`` hears the duration of every fetch from the source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from cachetools import LRUCache

from listgate.errors import BackendUnavailable, ListgateError
from listgate.facts.contract import FetchObserver

__all__ = ["FactCache", "FactStore", "FactStoreError", "Fetched", "Stored"]

K = TypeVar("K")
V = TypeVar("V")
K_contra = TypeVar("K_contra", contravariant=True)

@dataclass(frozen=True, slots=True)
class Fetched(Generic[V]):
    """A cached value and when it was fetched from the source (in the cache's clock)."""

    value: V
    fetched_at: float
    shared: bool = False
    """Read from the second tier by a fetch, as fresh enough by the age limit of the
    lookup that started it (a lookup with a stricter one that joined it may not use it)."""


@dataclass(frozen=True, slots=True)
class Stored(Generic[V]):
    """A value read from a second tier, with its age: seconds since it was fetched."""

    value: V
    age: float


class FactStoreError(ListgateError):
    """A second tier could not answer (down, slow, garbage); the cache goes on without it."""


class FactStore(Protocol[K_contra, V]):
    """A tier behind the in-process cache: consulted on a local miss, filled after a fetch.

    Methods raise only ``FactStoreError``. Every key given to one store belongs to one
    kind of fact (one ``FactCache``), so the store knows how to name and encode it.
    """

    async def get(self, key: K_contra) -> Stored[V] | None:
        """The value stored for *key* with its age, however old, or None."""
        ...

    async def put(self, key: K_contra, value: V, *, age: float, keep: float) -> None:
        """Store *value*, fetched *age* seconds ago; it is of no use after *keep* seconds."""
        ...

    def invalidate(self, key: K_contra) -> None:
        """Forget *key* (a remote store may do it in the background)."""
        ...

    def clear(self) -> None:
        """Forget every key of this kind (a remote store may do it in the background)."""
        ...

    async def claim(self, key: K_contra) -> Stored[V] | None:
        """Called before fetching *key* from the source (nothing fresh was stored): a store
        shared by several processes may let one fetch while the others wait for its
        result, which it then returns (None: go and fetch; the fetch then ends in a
        ``put`` or a ``release`` of the key)."""
        ...

    def release(self, key: K_contra) -> None:
        """The fetch claimed for *key* ended without a ``put`` (it failed, or was
        invalidated): a store that made others wait (a lock) lets them go. Never raises."""
        ...


class FactCache(Generic[K, V]):
    """One kind of cached fact; see the module docstring."""

    def __init__(
        self,
        name: str,
        maxsize: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        stale_if_error: float = 0.0,
        tier: FactStore[K, V] | None = None,
    ) -> None:
        self.name = name
        """The kind of fact; the ``cache`` label of the metrics."""
        self._entries: LRUCache[K, Fetched[V]] = LRUCache(maxsize)
        self._inflight: dict[K, asyncio.Task[Fetched[V]]] = {}
        self._clock = clock
        self._tier = tier
        self.stale_if_error = stale_if_error
        """Seconds past its age limit a value may still be served when the source fails."""
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.errors = 0
        self.tier_hits = 0
        """Local misses answered by the second tier, fresh enough, without the source."""
        self.tier_errors = 0
        self.observer: FetchObserver | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        """The cache's clock."""
        return self._clock()

    # ------------------------------------------------------------------ reading

    def peek(self, key: K, max_age: Callable[[V], float]) -> Fetched[V] | None:
        """The cached value if it is fresh enough, else None; counts a hit. Never waits."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at <= max_age(entry.value):
            self.hits += 1
            return entry
        return None

    def peek_stale(self, key: K, max_age: Callable[[V], float]) -> Fetched[V] | None:
        """The cached value if it is at most ``stale_if_error`` seconds past its age
        limit, else None; counts it as stale. Never waits."""
        entry = self._entries.get(key)
        if entry is not None and (
            self._clock() - entry.fetched_at <= max_age(entry.value) + self.stale_if_error
        ):
            self.stale += 1
            return entry
        return None

    def held(self, key: K) -> Fetched[V] | None:
        """The cached value however old, or None; counts nothing, starts nothing, never
        waits (``listgate.facts.lookup`` scouts with it)."""
        return self._entries.get(key)

    def flight(
        self, key: K, max_age: Callable[[V], float], fetch: Callable[[], Awaitable[V]]
    ) -> asyncio.Task[Fetched[V]]:
        """The fetch in flight for *key*, started (a miss) if there is none. Never waits;
        await it through ``asyncio.shield`` so that a caller going away does not cancel it."""
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._fetch(key, max_age, fetch))
            self._inflight[key] = task
            task.add_done_callback(self._landed(key))
        return task

    async def get(
        self, key: K, max_age: Callable[[V], float], fetch: Callable[[], Awaitable[V]]
    ) -> Fetched[V]:
        """The value for *key*: cached if fresh, else fetched once for all callers."""
        fresh = self.peek(key, max_age)
        if fresh is not None:
            return fresh
        return await asyncio.shield(self.flight(key, max_age, fetch))

    # ------------------------------------------------------------------ writing

    def put(self, key: K, value: V) -> Fetched[V]:
        """Store *value* as fetched now (in this tier only)."""
        entry = Fetched(value, self._clock())
        self._entries[key] = entry
        return entry

    def invalidate(self, key: K) -> bool:
        """Forget *key* here and in the second tier, and detach its fetch in flight (which
        still answers its callers but stores nothing). Whether an entry was dropped."""
        dropped = self.forget(key)
        if self._tier is not None:
            self._tier.invalidate(key)
        return dropped

    def clear(self) -> int:
        """Forget every entry, here and in the second tier, and detach every fetch in
        flight. How many entries were dropped."""
        dropped = self.forget_all()
        if self._tier is not None:
            self._tier.clear()
        return dropped

    def forget(self, key: K) -> bool:
        """``invalidate`` in this tier only (the second tier told us it already dropped
        *key*). Whether an entry was dropped."""
        dropped = self._entries.pop(key, None) is not None
        self._inflight.pop(key, None)
        return dropped

    def forget_all(self) -> int:
        """``clear`` in this tier only. How many entries were dropped."""
        dropped = len(self._entries)
        self._entries.clear()
        self._inflight.clear()
        return dropped

    # ------------------------------------------------------------------ fetching

    def _landed(self, key: K) -> Callable[[asyncio.Task[Fetched[V]]], None]:
        def done(task: asyncio.Task[Fetched[V]]) -> None:
            if self._inflight.get(key) is task:
                del self._inflight[key]
            if not task.cancelled():
                task.exception()  # retrieved: waiters get it through the shield

        return done

    def _current(self, key: K) -> bool:
        """Whether the running fetch is still the one for *key* (not invalidated since)."""
        return self._inflight.get(key) is asyncio.current_task()

    async def _fetch(
        self, key: K, max_age: Callable[[V], float], fetch: Callable[[], Awaitable[V]]
    ) -> Fetched[V]:
        from_tier: Fetched[V] | None = None  # too old to use, unless the source fails
        if self._tier is not None:
            stored = await self._tier_get(key)
            if stored is not None:
                from_tier = Fetched(stored.value, self._clock() - stored.age)
                if stored.age <= max_age(stored.value):
                    self.tier_hits += 1
                    hit = Fetched(stored.value, from_tier.fetched_at, shared=True)
                    if self._current(key):
                        self._entries[key] = hit
                    return hit
            claimed = await self._tier_claim(key)
            if claimed is not None and claimed.age <= max_age(claimed.value):
                self.tier_hits += 1
                entry = Fetched(claimed.value, self._clock() - claimed.age, shared=True)
                if self._current(key):
                    self._entries[key] = entry
                return entry
        started = time.perf_counter()
        kept = False
        try:
            try:
                value = await fetch()
            except BackendUnavailable:  # an answer such as ListNotFound is never papered over
                self._observe(started)
                stale = self._stale_fallback(key, max_age, from_tier)
                if stale is not None:
                    self.stale += 1
                    return stale
                self.errors += 1
                raise
            self._observe(started)
            entry = Fetched(value, self._clock())
            if self._current(key):
                self._entries[key] = entry
                if self._tier is not None:
                    kept = True
                    await self._tier_put(key, value, max_age(value) + self.stale_if_error)
            return entry
        finally:
            if self._tier is not None and not kept:
                self._tier.release(key)

    def _stale_fallback(
        self, key: K, max_age: Callable[[V], float], from_tier: Fetched[V] | None
    ) -> Fetched[V] | None:
        """The newest value known for *key* (here, or read from the second tier by a fetch
        not invalidated since) if within ``stale_if_error`` past its age limit."""
        if self.stale_if_error <= 0:
            return None
        newest = self._entries.get(key)
        if from_tier is not None and self._current(key) and (
            newest is None or from_tier.fetched_at > newest.fetched_at
        ):
            newest = from_tier
        if newest is None:
            return None
        if self._clock() - newest.fetched_at <= max_age(newest.value) + self.stale_if_error:
            return newest
        return None

    def _observe(self, started: float) -> None:
        if self.observer is not None:
            self.observer(self.name, time.perf_counter() - started)

    async def _tier_get(self, key: K) -> Stored[V] | None:
        assert self._tier is not None
        try:
            return await self._tier.get(key)
        except FactStoreError:
            self.tier_errors += 1
            return None

    async def _tier_claim(self, key: K) -> Stored[V] | None:
        assert self._tier is not None
        try:
            return await self._tier.claim(key)
        except FactStoreError:
            self.tier_errors += 1
            return None

    async def _tier_put(self, key: K, value: V, keep: float) -> None:
        assert self._tier is not None
        try:
            await self._tier.put(key, value, age=0.0, keep=keep)
        except FactStoreError:
            self.tier_errors += 1
