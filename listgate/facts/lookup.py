"""One answer built from several cached facts: without waiting, or within a deadline.

A backend writes how facts combine into an answer as a plain synchronous function,
``assemble(reader) -> T``, that reads each fact with ``reader.read(cache, key, max_age,
fetch)``. ``read`` returns the fact (a ``Fetched``: value and fetch time) if it is known,
or raises ``NotCached`` after starting (or joining) its fetch; ``read_or`` answers a
stand-in instead while the fetch runs in the background. ``assemble`` never awaits
anything, so one run sees one state of the caches, and a reader understands it at once:
it is the answer, written as if every fact were at hand.

- ``answer_now(assemble)``, the no-wait fast path: one run; if a fact is not fresh in
  memory, its fetch has been started and the answer is ``PENDING`` (the caller then
  awaits ``answer`` for the same request, which joins that fetch).
- ``answer(assemble, deadline)``: the first run *scouts*: a fact that is not fresh but
  whose older value the cache still holds (of any age) has its fetch started (or
  joined), and the run goes on with the older value, only to find the next facts the
  answer needs and start their fetches too; a fact with no value at all stops the run
  (``NotCached``). So the facts an answer needs are fetched side by side, not one after
  the other (a reject's refetch with ``within``: the list's policy, the site's bans, each
  sender's memberships and linked addresses at once). If the first run used no older
  value, it is an ordinary run (its answer is the answer); otherwise its result, which
  rests on older values, is dropped, and ``answer`` awaits every fetch it started,
  keeping each outcome (value or error) in the reader. Then, as every run after it:
  each time a run stops at a missing fact, ``answer`` awaits that fact's fetch, keeps the
  outcome, and runs ``assemble`` again. At the deadline it runs ``assemble`` once more
  accepting values up to ``stale_if_error`` past their age limit; a fact still missing
  raises ``NotCached``. The fetches go on in the background and fill the caches.
  A key read from an older value (the list id of an older directory, the addresses of
  an older link) may name a fact the answer then does not need: scouting fetched it for
  nothing, once (single-flight), and the answer waits for it with the others, within the
  deadline.
- ``Reader.prefetch``: an assembly that knows it will probably read a fact after one
  that has no value at all (a sender never seen: its memberships, then its linked
  addresses) starts that fact's fetch first, so the two run side by side although the
  run stops at the first; the later ``read`` joins the fetch. It reads nothing and keeps
  nothing.

Invariants:
- ``assemble`` runs to its end or to the first missing fact and never suspends.
- Within one lookup every fact is read once: a reader keeps what it read fresh (or the
  error its fetch ended with) and gives the same to every later run, so each ordinary
  run gets further than the one before, and there are at most as many runs as the
  answer needs facts, plus two. An older value a scouting run goes on with is not kept:
  the runs after it read the fact as fetched.
- An error a fetch ended with is raised by ``read`` where the fact is read, so the
  assembly handles it as it would an error from awaiting the fetch itself; a fetch
  scouting started for a fact the answer does not read has its error kept, never raised.
- ``answer_now`` never waits, never scouts and never raises ``NotCached``; ``answer``
  raises it only at the deadline. ``NotCached`` never reaches the decision core.
- A reader knows how old the facts behind the answer are: ``oldest`` is the earliest
  ``fetched_at`` of every fact ``read`` by the runs whose result may be the answer (the
  older values a scouting run went on with never count, nor anything else that run read;
  ``read_or`` stand-ins do not count). With a ``within`` bound (``answer(..., within=s)``)
  a fact older than *s* seconds is not fresh, whatever its own lifetime says: it is
  fetched again (single-flight, as any miss). A fetch joined that way may have been
  started by a lookup without the bound and answer with a second tier's value older than
  *s* (``Fetched.shared``): that value is not used, and the fact is fetched again,
  bounded (a fetch bounded by *s* never answers with one). Past the deadline the stale
  window is the one of the fact's own lifetime, as without a bound.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from listgate.decision.facts import PENDING, Pending
from listgate.errors import ListgateError
from listgate.facts.cache import FactCache, Fetched

__all__ = ["NotCached", "Reader", "answer", "answer_now"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class NotCached(ListgateError):
    """A fact is not in memory; its fetch is in flight (``flight``). Raised by
    ``Reader.read`` for ``answer``/``answer_now`` to handle, and by ``answer`` at its
    deadline when a fact is neither fresh nor within its stale window."""

    def __init__(self, cache: FactCache[Any, Any], key: Hashable,
                 flight: asyncio.Task[Fetched[Any]]) -> None:
        super().__init__(f"{cache.name} {key!r}: not cached")
        self.slot: tuple[FactCache[Any, Any], Hashable] = (cache, key)
        self.flight = flight


Slot = tuple[FactCache[Any, Any], Hashable]
"""One fact of one lookup: its cache and its key."""


class Reader:
    """One lookup's view of the caches: each fact read once, then the same for every run."""

    __slots__ = ("_known", "_scouted", "accept_stale", "oldest", "within")

    def __init__(self, within: float = math.inf) -> None:
        self._known: dict[Slot, Fetched[Any] | Exception] = {}
        self._scouted: dict[Slot, asyncio.Task[Fetched[Any]]] | None = None
        """While a run scouts: the fetches it started (or joined) for facts it went on
        without; None otherwise."""
        self.accept_stale = False
        """Past the deadline: a value within ``stale_if_error`` past its age limit will do."""
        self.within = within
        """No fact older than this (seconds) is fresh in this lookup."""
        self.oldest = math.inf
        """The earliest ``fetched_at`` of the facts read so far (inf: none yet)."""

    def read(
        self,
        cache: FactCache[K, V],
        key: K,
        max_age: Callable[[V], float],
        fetch: Callable[[], Awaitable[V]],
        *,
        aged: bool = True,
    ) -> Fetched[V]:
        """The fact *key* of *cache*, with when it was fetched; ``NotCached`` (its fetch
        started or joined) when it is not fresh in memory, or raises the error its fetch
        ended with in this lookup. While scouting, a fact not fresh whose older value
        the cache holds answers that value (its fetch started or joined, and remembered).
        With *aged* false the fact's age neither counts for ``oldest`` nor is bounded by
        ``within`` (a fact no verdict rests on)."""
        slot = (cache, key)
        known = self._known.get(slot)
        if (known is not None and aged and type(known) is Fetched and known.shared
                and self._too_old(cache, known)):
            del self._known[slot]  # from a joined fetch without the bound: fetch again
            known = None
        if known is None:
            # The bound holds for the fetch too: a second tier (Redis) must not answer
            # it with a value older than *within* (a reject would rest on it).
            bounded = _bounded(max_age, self.within if aged else math.inf)
            fresh = cache.peek(key, bounded)
            if fresh is None:
                flight = cache.flight(key, bounded, fetch)
                fresh = cache.peek_stale(key, max_age) if self.accept_stale else None
                if fresh is None:
                    scouted = self._scouted
                    if scouted is None or (older := cache.held(key)) is None:
                        raise NotCached(cache, key, flight)
                    scouted[slot] = flight
                    return older  # neither kept nor counted: the answer never rests on it
            self._known[slot] = fresh
            if aged and fresh.fetched_at < self.oldest:
                self.oldest = fresh.fetched_at
            return fresh
        if isinstance(known, Exception):
            raise known
        if aged and known.fetched_at < self.oldest:
            self.oldest = known.fetched_at
        return known

    def _too_old(self, cache: FactCache[Any, Any], known: Fetched[Any]) -> bool:
        """Whether *known* is older than ``within`` (before the deadline only)."""
        return (self.within != math.inf and not self.accept_stale
                and cache.now() - known.fetched_at > self.within)

    def prefetch(
        self,
        cache: FactCache[K, V],
        key: K,
        max_age: Callable[[V], float],
        fetch: Callable[[], Awaitable[V]],
    ) -> None:
        """Start (or join) the fetch of fact *key* of *cache* unless it is known in this
        lookup or fresh in memory, without reading it: a ``read`` of it later joins the
        fetch (bounded by ``within`` as that read's would be). Counts no hit."""
        if (cache, key) in self._known:
            return
        bounded = _bounded(max_age, self.within)
        held = cache.held(key)
        if held is None or cache.now() - held.fetched_at > bounded(held.value):
            cache.flight(key, bounded, fetch)

    def read_or(
        self,
        cache: FactCache[K, V],
        key: K,
        max_age: Callable[[V], float],
        fetch: Callable[[], Awaitable[V]],
        fallback: V,
    ) -> V:
        """The fact *key* of *cache* if fresh in memory; otherwise *fallback*, while its
        fetch runs in the background (started or joined). Never raises ``NotCached``; like
        ``read``, it reads the fact once per lookup (a fallback is kept, of unknown age)."""
        known = self._known.get((cache, key))
        if isinstance(known, Fetched):
            return known.value  # type: ignore[no-any-return]
        fresh = cache.peek(key, max_age)
        if fresh is None:
            cache.flight(key, max_age, fetch)
            fresh = Fetched(fallback, -math.inf)
        self._known[(cache, key)] = fresh
        return fresh.value

    async def learn(self, missing: NotCached) -> None:
        """Await the fetch *missing* names and keep its outcome for the next run."""
        await self._learn(missing.slot, missing.flight)

    async def _learn(self, slot: Slot, flight: asyncio.Task[Fetched[Any]]) -> None:
        try:
            self._known[slot] = await asyncio.shield(flight)
        except Exception as exc:  # kept, and raised where the fact is read
            self._known[slot] = exc

    def scout(self) -> dict[Slot, asyncio.Task[Fetched[Any]]]:
        """From now on, until ``stop_scouting``, go on with the older value of a fact
        not fresh; the fetches started for them are gathered in the dict returned."""
        self._scouted = {}
        return self._scouted

    def stop_scouting(self) -> None:
        """Read as usual again; if the scouting run went on with any older value, forget
        ``oldest`` (that run's result is not the answer; the next runs count again)."""
        if self._scouted:
            self.oldest = math.inf
        self._scouted = None

    async def learn_all(self, flights: dict[Slot, asyncio.Task[Fetched[Any]]]) -> None:
        """Await every fetch of *flights* (started together, so this takes as long as the
        slowest) and keep each outcome for the next run."""
        for slot, flight in flights.items():
            await self._learn(slot, flight)

    def past_deadline(self) -> None:
        """From now on accept stale values, and forget the errors fetches ended with (a
        stale value in the cache may stand in for them)."""
        self.accept_stale = True
        for slot, known in list(self._known.items()):
            if isinstance(known, Exception):
                del self._known[slot]


def _bounded(max_age: Callable[[V], float], within: float) -> Callable[[V], float]:
    """*max_age*, capped at *within* seconds (itself when *within* is infinite)."""
    if within == math.inf:
        return max_age
    return lambda value: min(max_age(value), within)


def answer_now(assemble: Callable[[Reader], T]) -> T | Pending:
    """The answer from memory alone, or ``PENDING`` having started the missing fetch."""
    try:
        return assemble(Reader())
    except NotCached:
        return PENDING


async def answer(
    assemble: Callable[[Reader], T], deadline: float | None = None, *,
    within: float = math.inf,
) -> T:
    """The answer, awaiting the facts it needs; with a *deadline* (seconds), answered at
    the deadline from what is known, stale values included, or ``NotCached``. With
    *within*, no fact older than that many seconds counts as fresh (see ``Reader``)."""
    reader = Reader(within)
    if deadline is None:
        return await _settle(assemble, reader)
    try:
        async with asyncio.timeout(deadline):
            return await _settle(assemble, reader)
    except TimeoutError:
        pass
    reader.past_deadline()
    return assemble(reader)


async def _settle(assemble: Callable[[Reader], T], reader: Reader) -> T:
    flights = reader.scout()
    try:
        first = assemble(reader)
    except NotCached as missing:
        flights[missing.slot] = missing.flight
    except Exception:
        if not flights:  # an ordinary run: its error is the answer
            raise
        # resting on older values: the runs below decide on the facts as fetched
    else:
        if not flights:  # an ordinary run: every fact was fresh
            return first
    finally:
        reader.stop_scouting()
    await reader.learn_all(flights)
    while True:
        try:
            return assemble(reader)
        except NotCached as missing:
            await reader.learn(missing)
