"""Scouting (``listgate.facts.lookup.answer``): a lookup whose facts have expired starts
all their fetches side by side, going on with the older values only to find them, and
still answers from the facts as fetched: ``oldest``, ``within``, errors and the deadline
hold as before. Fetches are held in flight by an ``asyncio.Event``; time is a fake clock,
except for the deadline, which is real (and short)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest

from listgate.config import CacheConfig
from listgate.decision.engine import ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import PostingRequest, Verdict
from listgate.errors import BackendUnavailable, ListNotFound
from listgate.facts.cache import FactCache
from listgate.facts.lookup import NotCached, Reader, answer
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord
from tests.fakes import FakeClock, FakeMailmanRecords, FakeSource

TTL = 60.0
FOUR = ("policy", "bans", "memberships", "linked")


def ttl(_: object) -> float:
    """Every value lives TTL seconds."""
    return TTL


async def tick() -> None:
    """Let started tasks run until they wait (for the gate) or end."""
    for _ in range(10):
        await asyncio.sleep(0)


def expired(clock: FakeClock, keys: tuple[str, ...], *, stale_if_error: float = 0.0,
            age: float = TTL + 1) -> FactCache[str, object]:
    """A cache holding "old <key>" for each of *keys*, *age* seconds old (expired)."""
    c: FactCache[str, object] = FactCache("facts", 100, clock=clock,
                                          stale_if_error=stale_if_error)
    for key in keys:
        c.put(key, f"old {key}")
    clock.advance(age)
    return c


def reading(c: FactCache[str, object], source: FakeSource,
            keys: tuple[str, ...]) -> Callable[[Reader], tuple[object, ...]]:
    """An assembly that reads *keys* in order and answers their values."""

    def assemble(reader: Reader) -> tuple[object, ...]:
        return tuple(reader.read(c, key, ttl, source.fetcher(key)).value for key in keys)

    return assemble


def new(keys: tuple[str, ...]) -> dict[str, object]:
    return {key: f"new {key}" for key in keys}


# --------------------------------------------------------------------------- side by side


def test_expired_facts_are_fetched_side_by_side() -> None:
    """Four expired facts: all four fetches are in flight together before any ends (one
    fetch time, not four), each fetched once, and the answer is the fetched values."""
    clock = FakeClock()
    source = FakeSource(new(FOUR))

    async def go() -> None:
        c = expired(clock, FOUR)
        source.gate = asyncio.Event()
        lookup = asyncio.create_task(answer(reading(c, source, FOUR)))
        await tick()
        assert dict(source.calls) == dict.fromkeys(FOUR, 1)  # all started, none ended
        assert not lookup.done()
        source.gate.set()
        assert await lookup == tuple(new(FOUR).values())
        assert dict(source.calls) == dict.fromkeys(FOUR, 1)
        assert c.misses == 4

    asyncio.run(go())


def test_a_fact_with_no_value_still_stops_the_first_run() -> None:
    """A fact the cache has no value for stops the scouting run: the facts before it are
    fetched side by side with it, the one after it only once the run gets there."""
    clock = FakeClock()
    keys = ("a", "b", "c")
    source = FakeSource(new(keys))

    async def go() -> None:
        c = expired(clock, ("a", "c"))
        source.gate = asyncio.Event()
        lookup = asyncio.create_task(answer(reading(c, source, keys)))
        await tick()
        assert dict(source.calls) == {"a": 1, "b": 1}  # "c" waits for "b"
        source.gate.set()
        assert await lookup == ("new a", "new b", "new c")
        assert dict(source.calls) == {"a": 1, "b": 1, "c": 1}

    asyncio.run(go())


# --------------------------------------------------------------------------- the answer


def test_scouted_old_values_never_become_the_answer_nor_lower_oldest() -> None:
    """With ``within``, the older values scouting went on with are neither answered nor
    counted: ``oldest`` is that of the facts answered, each no older than ``within``."""
    clock = FakeClock()
    source = FakeSource(new(("a", "b", "c")))

    async def go() -> None:
        c: FactCache[str, object] = FactCache("facts", 10, clock=clock)
        for key in ("a", "b", "c"):
            c.put(key, f"old {key}")  # within TTL, not within 2 s
        clock.advance(4)
        c.put("d", "recent d")  # 1 s old when read: fresh within 2 s
        clock.advance(1)
        keys = ("a", "b", "d", "c")
        read = reading(c, source, keys)

        def with_oldest(reader: Reader) -> tuple[tuple[object, ...], float]:
            return read(reader), reader.oldest

        values, oldest = await answer(with_oldest, within=2.0)
        assert values == ("new a", "new b", "recent d", "new c")
        assert oldest == clock.now - 1  # "d"'s fetch time, not the old values' (now - 5)
        assert dict(source.calls) == {"a": 1, "b": 1, "c": 1}

    asyncio.run(go())


def test_a_fact_read_only_on_a_path_an_old_value_led_to_does_not_count() -> None:
    """A key read from an older value ("dir" named "k1", now "k2") is read by the
    scouting run only: "k1", fresh but 30 s old, counts neither in the answer nor in
    ``oldest``, which is that of "dir" and "k2" as fetched."""
    clock = FakeClock()
    source = FakeSource({"dir": "k2", "k1": "v1", "k2": "v2"})

    async def go() -> None:
        c: FactCache[str, object] = FactCache("facts", 10, clock=clock)
        c.put("dir", "k1")
        c.put("k2", "old v2")
        clock.advance(TTL + 1)
        c.put("k1", "cached v1")
        clock.advance(30)  # "dir" and "k2" expired; "k1" fresh, 30 s old

        def assemble(reader: Reader) -> tuple[object, float]:
            key = str(reader.read(c, "dir", ttl, source.fetcher("dir")).value)
            return reader.read(c, key, ttl, source.fetcher(key)).value, reader.oldest

        assert await answer(assemble) == ("v2", clock.now)  # not clock.now - 30
        assert dict(source.calls) == {"dir": 1, "k2": 1}

    asyncio.run(go())


# --------------------------------------------------------------------------- errors


def test_an_error_in_a_scouted_fetch_is_raised_where_the_fact_is_read() -> None:
    """One of three scouted fetches fails: the assembly meets its error where it reads
    that fact, as without scouting, and answers from it."""
    clock = FakeClock()
    source = FakeSource(new(("a", "b", "c")))
    source.errors["b"] = ListNotFound("no b")

    async def go() -> tuple[object, ...]:
        c = expired(clock, ("a", "b", "c"))

        def assemble(reader: Reader) -> tuple[object, ...]:
            a = reader.read(c, "a", ttl, source.fetcher("a")).value
            try:
                b = reader.read(c, "b", ttl, source.fetcher("b")).value
            except ListNotFound:
                b = "not found"
            return a, b, reader.read(c, "c", ttl, source.fetcher("c")).value

        return await answer(assemble)

    assert asyncio.run(go()) == ("new a", "not found", "new c")
    assert dict(source.calls) == {"a": 1, "b": 1, "c": 1}


def test_an_error_in_a_scouted_fetch_the_answer_does_not_read_never_leaks() -> None:
    """A key read from an older value ("dir" named "k1", now "k2") makes scouting fetch
    "k1" once, for nothing; that fetch fails: the answer is not affected and no task
    exception is left unretrieved."""
    clock = FakeClock()
    source = FakeSource({"dir": "k2", "k2": "v2"})
    source.errors["k1"] = BackendUnavailable("k1 down")
    reported: list[dict[str, Any]] = []

    async def go() -> object:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        c = expired(clock, ("k1", "k2"))
        c.put("dir", "k1")
        clock.advance(TTL + 1)

        def assemble(reader: Reader) -> object:
            key = str(reader.read(c, "dir", ttl, source.fetcher("dir")).value)
            return reader.read(c, key, ttl, source.fetcher(key)).value

        value = await answer(assemble)
        await tick()
        gc.collect()
        return value

    assert asyncio.run(go()) == "v2"
    assert dict(source.calls) == {"dir": 1, "k1": 1, "k2": 1}
    gc.collect()
    assert reported == []


# --------------------------------------------------------------------------- the deadline


def test_the_deadline_still_bounds_a_scouting_lookup() -> None:
    """Four expired facts, the source hung: at the deadline the stale values answer (all
    four fetched side by side, each once), and the fetches fill the cache afterwards."""
    clock = FakeClock()
    source = FakeSource(new(FOUR))

    async def go() -> None:
        c = expired(clock, FOUR, stale_if_error=600)
        source.gate = asyncio.Event()
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await answer(reading(c, source, FOUR), deadline=0.05)
        assert loop.time() - began < 0.5
        assert got == tuple(f"old {key}" for key in FOUR)
        assert dict(source.calls) == dict.fromkeys(FOUR, 1)
        source.gate.set()
        await tick()
        fresh = [c.peek(key, ttl) for key in FOUR]
        assert [f.value if f else None for f in fresh] == list(new(FOUR).values())

    asyncio.run(go())


def test_past_the_deadline_a_scouted_value_beyond_the_stale_window_does_not_answer() -> None:
    """An older value scouting went on with, past TTL + stale_if_error, is not served at
    the deadline: the lookup fails with NotCached as before."""
    clock = FakeClock()
    source = FakeSource(new(FOUR))

    async def go() -> None:
        c = expired(clock, FOUR, stale_if_error=10, age=TTL + 11)
        source.gate = asyncio.Event()
        with pytest.raises(NotCached):
            await answer(reading(c, source, FOUR), deadline=0.05)
        assert dict(source.calls) == dict.fromkeys(FOUR, 1)
        source.gate.set()
        await tick()

    asyncio.run(go())


# --------------------------------------------------------------------------- the refetch


class Held(FakeMailmanRecords):
    """Mailman's records in memory; while ``gate`` is a clear event, every call (counted
    as it starts) waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def _held(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def directory(self) -> Directory:
        found = await super().directory()
        await self._held()
        return found

    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord:
        found = await super().policy(fqdn, list_id)
        await self._held()
        return found

    async def global_bans(self) -> tuple[str, ...]:
        found = await super().global_bans()
        await self._held()
        return found

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        found = await super().memberships(address)
        await self._held()
        return found

    async def linked_addresses(self, address: str) -> tuple[str, ...] | None:
        found = await super().linked_addresses(address)
        await self._held()
        return found


def test_a_reject_refetch_fetches_its_facts_side_by_side() -> None:
    """The refetch before a reject on facts older than reject_max_age starts the list's
    policy, the site's bans, the sender's memberships and linked addresses together,
    each once, and rejects on them."""
    clock = FakeClock()
    records = Held()
    backend = MailmanBackend(records, CacheConfig(), clock=clock)  # type: ignore[arg-type]
    gate = Gate(backend, ReplyTexts())
    request = PostingRequest("stranger@example.org", FakeMailmanRecords.LIST)
    kinds = ("policy", "global_bans", "memberships", "linked")

    async def go() -> None:
        assert (await gate.decide(request)).verdict is Verdict.REJECT
        before = {kind: records.fetches[kind] for kind in kinds}
        clock.advance(2.5)  # older than reject_max_age, within every lifetime
        records.gate = asyncio.Event()
        deciding = asyncio.create_task(gate.decide(request))
        await tick()
        assert {kind: records.fetches[kind] - before[kind] for kind in kinds} == dict.fromkeys(
            kinds, 1)  # all four in flight, none ended
        assert not deciding.done()
        records.gate.set()
        assert (await deciding).verdict is Verdict.REJECT
        assert {kind: records.fetches[kind] - before[kind] for kind in kinds} == dict.fromkeys(
            kinds, 1)
        assert backend.reject_refetches()["fresh"] == 1

    asyncio.run(go())


# --------------------------------------------------------------------------- prefetch


def test_a_new_sender_has_its_memberships_and_linked_addresses_fetched_side_by_side() -> None:
    """A sender never seen (the cold path of a spam run): its memberships and its linked
    addresses are both in flight before either ends, each fetched once, and the nonmember
    is rejected on them."""
    clock = FakeClock()
    records = Held()
    backend = MailmanBackend(records, CacheConfig(), clock=clock)  # type: ignore[arg-type]
    gate = Gate(backend, ReplyTexts())

    async def go() -> None:
        warm = PostingRequest("someone.else@example.org", FakeMailmanRecords.LIST)
        assert (await gate.decide(warm)).verdict is Verdict.REJECT  # directory, policy...
        before = dict(records.fetches)
        records.gate = asyncio.Event()
        request = PostingRequest("stranger@example.org", FakeMailmanRecords.LIST)
        deciding = asyncio.create_task(gate.decide(request))
        await tick()
        started = {k: records.fetches[k] - before.get(k, 0) for k in records.fetches}
        assert {k: n for k, n in started.items() if n} == {"memberships": 1, "linked": 1}
        assert not deciding.done()
        records.gate.set()
        assert (await deciding).verdict is Verdict.REJECT
        assert records.fetches["linked"] - before["linked"] == 1

    asyncio.run(go())


def test_a_known_member_gets_no_linked_fetch_when_its_memberships_expire() -> None:
    """A member whose memberships expired: only they are fetched again (the held value
    says it is a member, so its linked addresses would not be read)."""
    clock = FakeClock()
    records = FakeMailmanRecords(members=("anne@example.com",))
    backend = MailmanBackend(records, CacheConfig(), clock=clock)  # type: ignore[arg-type]
    gate = Gate(backend, ReplyTexts())
    request = PostingRequest("anne@example.com", FakeMailmanRecords.LIST)

    async def go() -> None:
        assert (await gate.decide(request)).verdict is Verdict.ACCEPT
        before = dict(records.fetches)
        clock.advance(CacheConfig().ttl + 1)
        assert (await gate.decide(request)).verdict is Verdict.ACCEPT
        assert records.fetches["memberships"] - before["memberships"] == 1
        assert records.fetches["linked"] == before.get("linked", 0)

    asyncio.run(go())


def test_prefetch_starts_a_fetch_only_for_a_fact_neither_known_nor_fresh() -> None:
    """Reader.prefetch: a fresh fact is left alone (no fetch, no hit counted), a fact the
    lookup already read too; an expired one gets one fetch, which the later read joins."""
    clock = FakeClock()
    source = FakeSource({"a": "new a", "b": "new b"})

    async def go() -> None:
        c = expired(clock, ("a",))
        c.put("b", "fresh b")
        reader = Reader()
        reader.prefetch(c, "b", ttl, source.fetcher("b"))
        assert (source.calls["b"], c.hits) == (0, 0)
        source.gate = asyncio.Event()  # the fetch stays in flight
        reader.prefetch(c, "a", ttl, source.fetcher("a"))
        reader.prefetch(c, "a", ttl, source.fetcher("a"))
        await tick()
        assert (source.calls["a"], c.misses) == (1, 1)
        with pytest.raises(NotCached) as missing:
            reader.read(c, "a", ttl, source.fetcher("a"))  # joins it
        source.gate.set()
        await reader.learn(missing.value)
        assert reader.read(c, "a", ttl, source.fetcher("a")).value == "new a"
        assert source.calls["a"] == 1
        reader.prefetch(c, "a", ttl, source.fetcher("a"))
        assert source.calls["a"] == 1

    asyncio.run(go())
