"""Fakes shared by the tests: a clock moved by hand, a fact source, a second tier, and
Mailman's REST records in memory.

Nothing here fakes a component listgate talks to in production (Mailman, Postfix): these
stand in for listgate's own seams (the clock, ``FactCache``'s fetch and ``FactStore``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from listgate.decision.rules import Action, ListPolicy
from listgate.errors import BackendUnavailable
from listgate.facts.cache import FactStoreError, Stored
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord

K = TypeVar("K")
V = TypeVar("V")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


class FakeSource:
    """A source of facts by key, for ``FactCache``: ``fetcher(key)`` is the fetch.

    Answers ``values[key]`` (or ``default``) as it was when the fetch started, counting
    calls per key. ``down`` makes every
    fetch fail with ``BackendUnavailable``; ``errors[key]`` raises that error for the key;
    while ``gate`` is set (an ``asyncio.Event`` that is clear), fetches wait for it, so a
    test can hold them in flight."""

    def __init__(self, values: dict[str, object] | None = None, default: object = None) -> None:
        self.values: dict[str, object] = dict(values or {})
        self.default = default
        self.calls: Counter[str] = Counter()
        self.down = False
        self.errors: dict[str, Exception] = {}
        self.gate: asyncio.Event | None = None
        self.delay = 0.0

    def fetcher(self, key: str) -> Callable[[], Awaitable[object]]:
        """The fetch of *key*, as ``FactCache.get``/``Reader.read`` take it."""
        return lambda: self.fetch(key)

    async def fetch(self, key: str) -> object:
        """One fetch of *key*."""
        self.calls[key] += 1
        value = self.values.get(key, self.default)  # the answer as the fetch starts
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise BackendUnavailable(f"fake source down ({key})")
        if key in self.errors:
            raise self.errors[key]
        return value


class DictStore(Generic[K, V]):
    """A second tier in a dict, on a clock of its own (ages cross the boundary); ``down``
    makes every call fail with ``FactStoreError``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.items: dict[K, tuple[V, float, float]] = {}
        """key -> (value, fetched at, keep until), in this store's clock."""
        self.down = False
        self.gets = 0
        self.puts = 0
        self.released: list[K] = []
        """Keys whose fetch ended without a ``put`` (``FactStore.release``)."""

    def _check(self) -> None:
        if self.down:
            raise FactStoreError("fake store down")

    async def get(self, key: K) -> Stored[V] | None:
        self.gets += 1
        self._check()
        item = self.items.get(key)
        if item is None or self.clock() > item[2]:
            return None
        return Stored(item[0], self.clock() - item[1])

    async def put(self, key: K, value: V, *, age: float, keep: float) -> None:
        self.puts += 1
        self._check()
        now = self.clock()
        self.items[key] = (value, now - age, now - age + keep)

    def invalidate(self, key: K) -> None:
        self.items.pop(key, None)

    def clear(self) -> None:
        self.items.clear()

    async def claim(self, key: K) -> Stored[V] | None:
        return None  # one process: nobody else fetches for it

    def release(self, key: K) -> None:
        self.released.append(key)


class FakeMailmanRecords:
    """A ``listgate.mailman.backend.RecordSource`` in memory: one list whose members are
    ``members``; counts fetches by kind of fact."""

    LIST, LIST_ID = "list@example.org", "list.example.org"

    def __init__(self, members: tuple[str, ...] = ()) -> None:
        self.members = set(members)
        self.calls = 0
        self.fetches: Counter[str] = Counter()

    def _count(self, kind: str) -> None:
        self.calls += 1
        self.fetches[kind] += 1

    async def directory(self) -> Directory:
        self._count("directory")
        return Directory({self.LIST: self.LIST_ID}, {})

    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord:
        self._count("policy")
        policy = ListPolicy(fqdn, list_id, default_nonmember_action=Action.REJECT)
        return PolicyRecord(policy, ())

    async def global_bans(self) -> tuple[str, ...]:
        self._count("global_bans")
        return ()

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        self._count("memberships")
        if address in self.members:
            return (MembershipRecord(self.LIST_ID, "member", address, None),)
        return ()

    async def linked_addresses(self, address: str) -> tuple[str, ...] | None:
        self._count("linked")
        return ()

    async def aclose(self) -> None:
        return None

    def describe(self) -> str:
        return "fake Mailman records"
