"""The generic fact cache on its own (listgate.facts: cache, lookup, keyspace) against a
fake source and a fake second tier: TTLs, bounds, single-flight, stale-if-error, the
deadline, invalidation, and the no-wait fast path. Time is a fake clock, except for the
deadline, which is real (and short)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest

from listgate.decision.facts import PENDING
from listgate.errors import BackendUnavailable, ListNotFound
from listgate.facts.cache import FactCache, Fetched
from listgate.facts.keyspace import FactKey, KeySpace, Scope, UnknownKind
from listgate.facts.lookup import NotCached, Reader, answer, answer_now
from tests.fakes import DictStore, FakeClock, FakeSource

TTL, NEGATIVE = 60.0, 10.0


def ttl(_: object) -> float:
    """Every value lives TTL seconds."""
    return TTL


def by_value(value: object) -> float:
    """A "member" lives TTL seconds, anything else (an answer that may reject) NEGATIVE."""
    return TTL if value == "member" else NEGATIVE


def cache(clock: FakeClock, *, maxsize: int = 100, stale_if_error: float = 0.0,
          tier: DictStore[str, object] | None = None, name: str = "facts"
          ) -> FactCache[str, object]:
    return FactCache(name, maxsize, clock=clock, stale_if_error=stale_if_error, tier=tier)


async def tick() -> None:
    """Let started fetch tasks run to their end (the fake source does not wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- hits and TTLs


def test_hit_after_one_fetch_with_fetched_at() -> None:
    """A second get is a hit with no fetch; the value carries the time it was fetched."""
    clock, source = FakeClock(), FakeSource({"a": 1})

    async def run() -> tuple[Fetched[object], Fetched[object], FactCache[str, object]]:
        c = cache(clock)
        first = await c.get("a", ttl, source.fetcher("a"))
        clock.advance(5)
        second = await c.get("a", ttl, source.fetcher("a"))
        return first, second, c

    first, second, c = asyncio.run(run())
    assert (first.value, second.value) == (1, 1)
    assert first.fetched_at == second.fetched_at == 1000.0
    assert source.calls["a"] == 1
    assert (c.hits, c.misses, len(c)) == (1, 1, 1)


def test_ttl_and_negative_ttl_by_value() -> None:
    """max_age is decided from the value: past NEGATIVE only the would-reject answer is
    refetched; past TTL the other one too."""
    clock = FakeClock()
    source = FakeSource({"member": "member", "stranger": "stranger"})

    async def run() -> list[tuple[int, int]]:
        c = cache(clock)
        seen = []
        for advance in (0, NEGATIVE - 1, 2, TTL - NEGATIVE - 2, 2):
            clock.advance(advance)
            for key in ("member", "stranger"):
                await c.get(key, by_value, source.fetcher(key))
            seen.append((source.calls["member"], source.calls["stranger"]))
        return seen

    # t=0: both fetched; t=9: cached; t=11: stranger again; t=59: stranger (age 48)
    # again; t=61: member too (age 61), stranger cached (age 2).
    assert asyncio.run(run()) == [(1, 1), (1, 1), (1, 2), (1, 3), (2, 3)]


def test_bounded_size_evicts_least_recently_used() -> None:
    """maxsize entries at most; the least recently used one goes and is fetched again."""
    clock, source = FakeClock(), FakeSource(default="v")

    async def run() -> tuple[int, FactCache[str, object]]:
        c = cache(clock, maxsize=2)
        for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
            await c.get(key, ttl, source.fetcher(key))
        before = source.calls["b"]
        await c.get("a", ttl, source.fetcher("a"))
        await c.get("b", ttl, source.fetcher("b"))
        return source.calls["b"] - before, c

    refetched, c = asyncio.run(run())
    assert refetched == 1
    assert len(c) == 2
    assert source.calls["a"] == 1


# --------------------------------------------------------------------------- single-flight


def test_single_flight_many_concurrent_lookups_one_fetch() -> None:
    """1,000 concurrent gets of a missing key make one fetch, and all get its value."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> tuple[set[object], FactCache[str, object]]:
        c = cache(clock)
        source.gate = asyncio.Event()
        waiting = [asyncio.create_task(c.get("a", ttl, source.fetcher("a")))
                   for _ in range(1000)]
        await tick()
        source.gate.set()
        got = await asyncio.gather(*waiting)
        return {f.value for f in got}, c

    values, c = asyncio.run(run())
    assert values == {"A"}
    assert source.calls["a"] == 1
    assert c.misses == 1


def test_a_caller_going_away_does_not_cancel_the_fetch_for_others() -> None:
    """Cancelling one waiter leaves the shared fetch running for the other waiters."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> object:
        c = cache(clock)
        source.gate = asyncio.Event()
        first = asyncio.create_task(c.get("a", ttl, source.fetcher("a")))
        second = asyncio.create_task(c.get("a", ttl, source.fetcher("a")))
        await tick()
        first.cancel()
        await tick()
        source.gate.set()
        return (await second).value

    assert asyncio.run(run()) == "A"
    assert source.calls["a"] == 1


# --------------------------------------------------------------------------- stale-if-error


def test_stale_if_error_window_then_failure() -> None:
    """Source down: an expired value is served within stale_if_error past its TTL (counted
    stale), and beyond it the fetch fails (counted as an error)."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> tuple[object, type[BaseException], FactCache[str, object]]:
        c = cache(clock, stale_if_error=100)
        await c.get("a", ttl, source.fetcher("a"))
        source.down = True
        clock.advance(TTL + 99)
        stale = (await c.get("a", ttl, source.fetcher("a"))).value
        clock.advance(2)
        with pytest.raises(BackendUnavailable) as failed:
            await c.get("a", ttl, source.fetcher("a"))
        return stale, failed.type, c

    stale, failed, c = asyncio.run(run())
    assert stale == "A"
    assert failed is BackendUnavailable
    assert (c.stale, c.errors) == (1, 1)


def test_no_stale_when_stale_if_error_is_zero() -> None:
    """stale_if_error = 0: an expired value is never served when the source fails."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> None:
        c = cache(clock, stale_if_error=0)
        await c.get("a", ttl, source.fetcher("a"))
        source.down = True
        clock.advance(TTL + 1)
        with pytest.raises(BackendUnavailable):
            await c.get("a", ttl, source.fetcher("a"))

    asyncio.run(run())


def test_an_answer_error_is_never_papered_over() -> None:
    """An error that is an answer (ListNotFound) reaches the caller even with a stale
    value at hand."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> None:
        c = cache(clock, stale_if_error=1000)
        await c.get("a", ttl, source.fetcher("a"))
        source.errors["a"] = ListNotFound("gone")
        clock.advance(TTL + 1)
        with pytest.raises(ListNotFound):
            await c.get("a", ttl, source.fetcher("a"))

    asyncio.run(run())


# --------------------------------------------------------------------------- lookups


def two_facts(c: FactCache[str, object], source: FakeSource) -> Callable[[Reader], str]:
    """An assembly that reads "a" then "b" and joins them."""

    def assemble(reader: Reader) -> str:
        a = reader.read(c, "a", ttl, source.fetcher("a")).value
        b = reader.read(c, "b", ttl, source.fetcher("b")).value
        return f"{a}{b}"

    return assemble


def test_answer_now_pending_starts_only_the_first_missing_fetch() -> None:
    """Cold: answer_now is PENDING, having started the fetch of the first missing fact
    only; answer then joins it (one fetch per fact in all); warm: answer_now answers."""
    clock, source = FakeClock(), FakeSource({"a": "A", "b": "B"})

    async def run() -> tuple[object, dict[str, int], str, object]:
        c = cache(clock)
        assemble = two_facts(c, source)
        cold = answer_now(assemble)
        await tick()
        after_now = dict(source.calls)
        awaited = await answer(assemble)
        return cold, after_now, awaited, answer_now(assemble)

    cold, after_now, awaited, warm = asyncio.run(run())
    assert cold is PENDING
    assert after_now == {"a": 1}
    assert awaited == warm == "AB"
    assert source.calls == {"a": 1, "b": 1}


def test_answer_now_never_suspends() -> None:
    """answer_now is an ordinary call: it returns within the same step of the loop,
    without yielding to other tasks, cold or warm."""
    clock, source = FakeClock(), FakeSource({"a": "A", "b": "B"})
    ran: list[str] = []

    async def run() -> list[object]:
        c = cache(clock)
        assemble = two_facts(c, source)
        other = asyncio.create_task(asyncio.sleep(0, "other"))
        other.add_done_callback(lambda _: ran.append("other"))
        results = [answer_now(assemble), answer_now(assemble)]
        assert ran == []  # nothing else ran in between
        await answer(assemble)
        results.append(answer_now(assemble))
        return results

    assert asyncio.run(run()) == [PENDING, PENDING, "AB"]


def test_a_lookup_reads_each_fact_once() -> None:
    """Across the runs of one lookup each fact is read (and counted) once: a warm fact
    read before a miss is not counted again when the assembly runs again."""
    clock, source = FakeClock(), FakeSource({"a": "A", "b": "B"})

    async def run() -> tuple[int, int]:
        c = cache(clock)
        await c.get("a", ttl, source.fetcher("a"))
        hits = c.hits
        await answer(two_facts(c, source))
        return c.hits - hits, c.misses

    assert asyncio.run(run()) == (1, 2)


def test_a_fetch_error_is_raised_where_the_fact_is_read() -> None:
    """The assembly sees a fetch's error where it reads the fact, and can answer from it."""
    clock, source = FakeClock(), FakeSource({"b": "B"})
    source.errors["a"] = ListNotFound("no a")

    def assemble(reader: Reader) -> str:
        try:
            return str(reader.read(c, "a", ttl, source.fetcher("a")).value)
        except ListNotFound:
            return "not found"

    async def run() -> str:
        return await answer(assemble)

    c: FactCache[str, object] = FactCache("facts", 10, clock=clock)
    assert asyncio.run(run()) == "not found"


# --------------------------------------------------------------------------- the deadline


def test_deadline_serves_stale_and_the_fetch_finishes_in_background() -> None:
    """A slow fetch past the deadline: the caller gets the stale value at the deadline; the
    fetch goes on and fills the cache when it ends."""
    clock, source = FakeClock(), FakeSource({"a": "old"})

    async def run() -> tuple[str, float, object, int]:
        c = cache(clock, stale_if_error=600)

        def assemble(reader: Reader) -> str:
            return str(reader.read(c, "a", ttl, source.fetcher("a")).value)

        await answer(assemble)
        clock.advance(TTL + 1)
        source.values["a"] = "new"
        source.gate = asyncio.Event()
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await answer(assemble, deadline=0.05)
        took = loop.time() - began
        source.gate.set()
        await tick()
        fresh = c.peek("a", ttl)
        return got, took, fresh.value if fresh else None, source.calls["a"]

    got, took, later, calls = asyncio.run(run())
    assert got == "old"
    assert took < 0.5
    assert later == "new"
    assert calls == 2


def test_deadline_with_nothing_cached_fails() -> None:
    """A slow fetch past the deadline and nothing cached: NotCached at the deadline."""
    clock, source = FakeClock(), FakeSource({"a": "A", "b": "B"})

    async def run() -> None:
        c = cache(clock, stale_if_error=600)
        source.gate = asyncio.Event()
        with pytest.raises(NotCached):
            await answer(two_facts(c, source), deadline=0.05)
        source.gate.set()
        await tick()
        assert c.peek("a", ttl) is not None

    asyncio.run(run())


def test_deadline_stale_beyond_window_fails() -> None:
    """At the deadline an entry past TTL + stale_if_error does not count: NotCached."""
    clock, source = FakeClock(), FakeSource({"a": "A"})

    async def run() -> None:
        c = cache(clock, stale_if_error=10)

        def assemble(reader: Reader) -> object:
            return reader.read(c, "a", ttl, source.fetcher("a")).value

        await answer(assemble)
        clock.advance(TTL + 11)
        source.gate = asyncio.Event()
        with pytest.raises(NotCached):
            await answer(assemble, deadline=0.05)
        source.gate.set()
        await tick()

    asyncio.run(run())


# --------------------------------------------------------------------------- invalidation


def keyspace(clock: FakeClock) -> tuple[KeySpace, dict[str, FactCache[str, Any]]]:
    ks = KeySpace()
    caches = {
        "directory": ks.add(FactCache("directory", 1, clock=clock), Scope.SITE),
        "policy": ks.add(FactCache("policy", 10, clock=clock), Scope.LIST),
        "memberships": ks.add(FactCache("memberships", 10, clock=clock), Scope.ADDRESS),
        "linked": ks.add(FactCache("linked", 10, clock=clock), Scope.ADDRESS),
    }
    caches["directory"].put("", "lists")
    for list_id in ("a.example.org", "b.example.org"):
        caches["policy"].put(list_id, f"policy of {list_id}")
    for address in ("anne@example.com", "bob@example.com"):
        caches["memberships"].put(address, "rows")
        caches["linked"].put(address, ())
    return ks, caches


def keys(caches: dict[str, FactCache[str, Any]]) -> set[str]:
    """Every key still cached, as "kind/subject"."""
    return {str(FactKey(kind, key)) for kind, c in caches.items()
            for key in ("", "a.example.org", "b.example.org", "anne@example.com",
                        "bob@example.com")
            if c.peek(key, lambda _: math.inf) is not None}


ALL = {"directory/", "policy/a.example.org", "policy/b.example.org",
       "memberships/anne@example.com", "memberships/bob@example.com",
       "linked/anne@example.com", "linked/bob@example.com"}


@pytest.mark.parametrize(
    ("invalidate", "dropped", "gone"),
    [
        pytest.param(lambda ks: ks.invalidate("policy", "a.example.org"), 1,
                     {"policy/a.example.org"}, id="one-key"),
        pytest.param(lambda ks: ks.invalidate("directory"), 1, {"directory/"}, id="site-key"),
        pytest.param(lambda ks: ks.invalidate_key(FactKey("linked", "bob@example.com")), 1,
                     {"linked/bob@example.com"}, id="fact-key"),
        pytest.param(lambda ks: ks.invalidate("policy", "c.example.org"), 0, set(),
                     id="absent-key"),
        pytest.param(lambda ks: ks.invalidate_list("b.example.org"), 1,
                     {"policy/b.example.org"}, id="list"),
        pytest.param(lambda ks: ks.invalidate_address("<Anne@Example.COM>"), 2,
                     {"memberships/anne@example.com", "linked/anne@example.com"},
                     id="address-normalised"),
        pytest.param(lambda ks: ks.invalidate_all(), 7, ALL, id="all"),
    ],
)
def test_invalidation_drops_exactly_the_affected_entries(
    invalidate: Callable[[KeySpace], int], dropped: int, gone: set[str]
) -> None:
    """Each invalidation entry point drops exactly the entries of its kind, list or
    address, and says how many."""
    ks, caches = keyspace(FakeClock())
    assert keys(caches) == ALL
    assert invalidate(ks) == dropped
    assert keys(caches) == ALL - gone


def test_invalidating_an_unknown_kind_is_refused() -> None:
    """A kind the key space does not have is an error, not a silent no-op."""
    ks, _ = keyspace(FakeClock())
    with pytest.raises(UnknownKind, match="no kind of fact 'members'"):
        ks.invalidate("members", "anne@example.com")
    with pytest.raises(ValueError, match="already"):
        ks.add(FactCache("policy", 1), Scope.LIST)


def test_a_fetch_in_flight_when_invalidated_is_not_stored() -> None:
    """Invalidated while its fetch is in flight: the waiters get that fetch's answer, but
    it is not cached, and the next lookup fetches again."""
    clock, source = FakeClock(), FakeSource({"a": "before"})

    async def run() -> tuple[object, object, int]:
        c = cache(clock)
        source.gate = asyncio.Event()
        waiting = asyncio.create_task(c.get("a", ttl, source.fetcher("a")))
        await tick()
        assert c.invalidate("a") is False  # nothing stored yet, the flight is detached
        source.values["a"] = "after"
        source.gate.set()
        old = (await waiting).value
        assert c.peek("a", ttl) is None
        new = (await c.get("a", ttl, source.fetcher("a"))).value
        return old, new, source.calls["a"]

    assert asyncio.run(run()) == ("before", "after", 2)


# --------------------------------------------------------------------------- second tier


def test_second_tier_answers_a_local_miss_and_is_filled_after_a_fetch() -> None:
    """A fetch from the source fills the second tier; another process's cache (a new
    FactCache over the same tier) then answers from it without the source, with the
    value's age carried over."""
    clock, source = FakeClock(), FakeSource({"a": "A"})
    store: DictStore[str, object] = DictStore(clock)

    async def run() -> tuple[Fetched[object], FactCache[str, object]]:
        await cache(clock, tier=store).get("a", ttl, source.fetcher("a"))
        clock.advance(5)
        other = cache(clock, tier=store)
        return await other.get("a", ttl, source.fetcher("a")), other

    got, other = asyncio.run(run())
    assert got.value == "A"
    assert got.fetched_at == 1000.0
    assert source.calls["a"] == 1
    assert (other.misses, other.tier_hits) == (1, 1)
    assert store.puts == 1


def test_second_tier_too_old_goes_to_the_source_and_stands_in_if_it_fails() -> None:
    """A tier value past max_age is not served while the source answers; when the source
    fails it is the stale value (within stale_if_error)."""
    clock, source = FakeClock(), FakeSource({"a": "old"})
    store: DictStore[str, object] = DictStore(clock)

    async def run() -> tuple[object, object]:
        await cache(clock, tier=store, stale_if_error=600).get("a", ttl, source.fetcher("a"))
        clock.advance(TTL + 1)
        source.values["a"] = "new"
        fresh = (await cache(clock, tier=store, stale_if_error=600)
                 .get("a", ttl, source.fetcher("a"))).value
        clock.advance(TTL + 1)
        source.down = True
        stale = (await cache(clock, tier=store, stale_if_error=600)
                 .get("a", ttl, source.fetcher("a"))).value
        return fresh, stale

    assert asyncio.run(run()) == ("new", "new")
    assert source.calls["a"] == 3


def test_second_tier_failing_is_never_a_lookup_failure() -> None:
    """A second tier that fails is counted and skipped: the source answers."""
    clock, source = FakeClock(), FakeSource({"a": "A"})
    store: DictStore[str, object] = DictStore(clock)
    store.down = True

    async def run() -> tuple[object, FactCache[str, object]]:
        c = cache(clock, tier=store)
        return (await c.get("a", ttl, source.fetcher("a"))).value, c

    value, c = asyncio.run(run())
    assert value == "A"
    assert c.tier_errors == 2  # the read before the fetch, the fill after it


def test_invalidation_reaches_the_second_tier() -> None:
    """invalidate and clear drop the key in the second tier too."""
    clock = FakeClock()
    store: DictStore[str, object] = DictStore(clock)
    store.items = {"a": ("A", 1000.0, 2000.0), "b": ("B", 1000.0, 2000.0)}
    c = cache(clock, tier=store)
    c.invalidate("a")
    assert set(store.items) == {"b"}
    c.clear()
    assert store.items == {}


def test_read_or_stands_in_while_the_fetch_runs_once_per_lookup() -> None:
    """read_or answers the fallback at once while the fact is fetched in the background,
    and starts that fetch once per lookup however often the lookup runs again (here the
    fetch fails before the second run); a later lookup answers the fetched value."""
    clock, source = FakeClock(), FakeSource({"dir": "fetched", "a": "A"})
    source.errors["dir"] = BackendUnavailable("down")

    async def run() -> tuple[str, int, str]:
        c = cache(clock)

        def assemble(reader: Reader) -> str:
            directory = reader.read_or(c, "dir", ttl, source.fetcher("dir"), "fallback")
            return f"{directory}+{reader.read(c, 'a', ttl, source.fetcher('a')).value}"

        first = await answer(assemble)  # runs twice: "a" was missing the first time
        await tick()
        fetches = source.calls["dir"]
        del source.errors["dir"]
        await answer(assemble)  # starts the fetch again, answers the fallback
        await tick()
        return first, fetches, await answer(assemble)

    first, fetches, later = asyncio.run(run())
    assert first == "fallback+A"
    assert fetches == 1
    assert later == "fetched+A"
