"""The shared cache tier against a real redis-server on loopback: several "hosts" (Mailman
backends, each with its own in-process cache) share one Redis and one counting source."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from listgate.config import CacheConfig
from listgate.decision.model import PostingRequest
from listgate.decision.rules import Action
from listgate.facts.redis import RedisTier
from listgate.facts.sharedkeys import CHANNEL, Invalidation, encode_invalidation
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import MembershipRecord
from tests.fakes import FakeMailmanRecords
from tests.redis_harness import Blackhole, RedisServer

T = TypeVar("T")
LIST = FakeMailmanRecords.LIST
DEADLINE = 2.0
COUNTING_DEADLINE = 5.0
"""[mailman] timeout's default: 1,000 lookups in one process on a loaded CI machine may
take a while; this test counts REST calls, the others measure time."""


class SlowRecords(FakeMailmanRecords):
    """The fake Mailman, each fetch taking *delay* seconds (a REST round trip)."""

    def __init__(self, members: tuple[str, ...] = (), delay: float = 0.05) -> None:
        super().__init__(members)
        self.delay = delay

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        await asyncio.sleep(self.delay)
        return await super().memberships(address)


def host(url: str, source: FakeMailmanRecords, deadline: float = DEADLINE) -> MailmanBackend:
    """One MX host: a backend with its own local tier over the shared Redis (locks and
    waits set from the deadline as ``listgate.facts.registry`` sets them)."""
    shared = RedisTier(url, timeout=0.2, lock_ttl=deadline, wait=deadline / 2)
    return MailmanBackend(source, CacheConfig(), deadline=deadline, shared=shared)


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())


async def close(*backends: MailmanBackend) -> None:
    for b in backends:
        await b.aclose()


async def member(backend: MailmanBackend, sender: str) -> bool:
    facts = await backend.lookup(PostingRequest(sender, LIST))
    return facts.senders[0].member is not None


def test_concurrent_lookups_over_three_hosts_fetch_once(redis_server: RedisServer) -> None:
    """1,000 concurrent identical lookups of a new sender over three hosts make as many
    source fetches as one host alone (the fetch lock holds the others back)."""
    async def body() -> tuple[int, int]:
        alone_source = SlowRecords(("new@example.net",))
        alone = host(redis_server.url, alone_source, COUNTING_DEADLINE)
        await asyncio.gather(*(member(alone, "new@example.net") for _ in range(1000)))
        await close(alone)
        redis_server.cli("FLUSHALL")
        source = SlowRecords(("new@example.net",))
        hosts = [host(redis_server.url, source, COUNTING_DEADLINE) for _ in range(3)]
        results = await asyncio.gather(*(member(hosts[i % 3], "new@example.net")
                                         for i in range(1000)))
        assert all(results)
        await close(*hosts)
        return alone_source.calls, source.calls

    alone, three = run(body)
    assert three == alone, (alone, three)


def test_fact_fetched_by_one_host_is_served_by_another(redis_server: RedisServer) -> None:
    """Host B answers from what host A fetched, without asking Mailman."""
    async def body() -> None:
        source = FakeMailmanRecords(("m@example.net",))
        a, b = host(redis_server.url, source), host(redis_server.url, source)
        assert await member(a, "m@example.net")
        before = source.calls
        assert await member(b, "m@example.net")
        assert source.calls == before
        assert sum(c.tier_hits for c in b.keys.caches) >= 4
        await close(a, b)

    run(body)


def test_invalidation_reaches_every_host_within_a_second(redis_server: RedisServer) -> None:
    """An invalidation on host A drops the fact on B and C within 1 s (pub/sub), and the
    shared key is gone."""
    async def body() -> None:
        source = FakeMailmanRecords()
        hosts = [host(redis_server.url, source) for _ in range(3)]
        for h in hosts:
            assert not await member(h, "late@example.net")
        await asyncio.sleep(0.3)  # subscribed
        source.members.add("late@example.net")
        started = time.monotonic()
        hosts[0].invalidate_address("late@example.net")
        while not all([h.lookup_now(PostingRequest("late@example.net", LIST)) is not None
                       and await member(h, "late@example.net") for h in hosts]):
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        await close(*hosts)

    run(body)


def test_plugin_redis_notify_is_followed_by_every_host(redis_server: RedisServer) -> None:
    """The Mailman plugin's ``notify: redis://...`` sender (its real thread) deletes the
    changed facts in Redis and publishes them: two hosts follow within 1 s, with the
    password read from redis_password_file."""
    from listgate.events import ChangeSet
    from listgate.mailman_plugin import Feed, PluginSettings

    async def body() -> None:
        source = FakeMailmanRecords()
        hosts = [host(redis_server.url, source) for _ in range(2)]
        for h in hosts:
            assert not await member(h, "y@example.net")
        await asyncio.sleep(0.3)
        source.members.add("y@example.net")
        feed = Feed(PluginSettings((redis_server.url,), b"", heartbeat=0.0))
        started = time.monotonic()
        feed.submit(ChangeSet(addresses=frozenset({"y@example.net"})))
        while not all([await member(h, "y@example.net") for h in hosts]):
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        assert all(h.shared is not None and h.shared.stats.invalidations_received == 1
                   for h in hosts)
        feed.drain(0.5)
        await close(*hosts)

    run(body)


def test_plugin_message_on_the_channel_drops_local_entries(
        redis_server: RedisServer) -> None:
    """A message published straight to Redis (as the Mailman plugin's redis:// notify does)
    is followed by every host within a second."""
    async def body() -> None:
        source = FakeMailmanRecords()
        hosts = [host(redis_server.url, source) for _ in range(2)]
        for h in hosts:
            assert not await member(h, "x@example.net")
        await asyncio.sleep(0.3)
        source.members.add("x@example.net")
        message = encode_invalidation(Invalidation(
            "mailman", frozenset({("memberships", "x@example.net")})))
        redis_server.cli("DEL", "listgate:v1:memberships:x@example.net")
        assert hosts[0].shared is not None
        await hosts[0].shared.client.publish(CHANNEL, message)
        started = time.monotonic()
        while not all([await member(h, "x@example.net") for h in hosts]):
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        await close(*hosts)

    run(body)


def test_lock_holder_gone_stalls_nobody_past_the_wait(redis_server: RedisServer) -> None:
    """A lock left by a host that died (never released) delays the others by at most
    ``wait``: they fetch themselves, within the deadline."""
    async def body() -> float:
        source = FakeMailmanRecords(("z@example.net",))
        b = host(redis_server.url, source)
        redis_server.cli("SET", "listgate:v1:lock:memberships:z@example.net", "dead", "PX",
                         "60000")
        started = time.monotonic()
        assert await member(b, "z@example.net")
        took = time.monotonic() - started
        await close(b)
        return took

    took = run(body)
    assert DEADLINE / 2 - 0.1 <= took < DEADLINE, took


def test_values_are_json_records_without_secrets(redis_server: RedisServer) -> None:
    """What the tier stores is versioned, namespaced JSON of the records, with a Redis
    expiry, and holds no password."""
    async def body() -> None:
        source = FakeMailmanRecords(("m@example.net",))
        a = host(redis_server.url, source)
        assert await member(a, "m@example.net")
        await close(a)

    run(body)
    keys = redis_server.cli("KEYS", "*")
    assert "listgate:v1:memberships:m@example.net" in keys
    assert "listgate:v1:policy:list.example.org" in keys
    assert "listgate:v1:lock:" not in keys  # released after the put
    raw = redis_server.cli("GET", "listgate:v1:memberships:m@example.net").split("\r\n")[1]
    data = json.loads(raw)
    assert data["v"] == [["list.example.org", "member", "m@example.net", None]]
    assert int(redis_server.cli("PTTL", "listgate:v1:memberships:m@example.net")[1:]) > 0
    assert "restpass" not in redis_server.cli("KEYS", "*")


def test_garbage_in_redis_is_a_miss(redis_server: RedisServer) -> None:
    """A value that does not decode is counted and ignored: Mailman answers."""
    async def body() -> None:
        source = FakeMailmanRecords(("m@example.net",))
        redis_server.cli("SET", "listgate:v1:memberships:m@example.net", "{garbage", "PX",
                         "60000")
        a = host(redis_server.url, source)
        assert await member(a, "m@example.net")
        assert a.shared is not None
        assert a.shared.stats.garbage >= 1
        await close(a)

    run(body)


async def _answers_within_deadline(backends: list[MailmanBackend], source: FakeMailmanRecords,
                                   tag: str) -> None:
    for i in range(5):
        sender = f"{tag}{i}@example.net"
        started = time.monotonic()
        results = await asyncio.gather(*(member(b, sender) for b in backends))
        assert time.monotonic() - started < DEADLINE
        assert results == [sender in source.members] * len(backends)


def test_redis_stopped_paused_restarted_never_an_outage(redis_server: RedisServer) -> None:
    """Redis stopped, paused (SIGSTOP) and restarted: every lookup answered within the
    deadline with the right answer; then the shared tier is used again by itself."""
    async def body() -> None:
        source = FakeMailmanRecords(tuple(f"{t}{i}@example.net" for t in "spr" for i in (0, 2)))
        hosts = [host(redis_server.url, source) for _ in range(2)]
        await _answers_within_deadline(hosts, source, "w")
        redis_server.pause()
        await _answers_within_deadline(hosts, source, "p")
        redis_server.resume()
        redis_server.stop()
        await _answers_within_deadline(hosts, source, "s")
        redis_server.start()
        await _answers_within_deadline(hosts, source, "r")
        tiers = [h.shared for h in hosts if h.shared is not None]
        assert all(t.stats.errors > 0 for t in tiers)
        started = time.monotonic()
        while not all(t.stats.up and t.stats.subscribed for t in tiers):
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # past the breaker
        assert await member(hosts[0], "again@example.net") is False
        before = source.calls
        assert await member(hosts[1], "again@example.net") is False
        assert source.calls == before  # B read what A fetched: the shared tier is back
        assert all(t.stats.resyncs >= 1 for t in tiers)
        await close(*hosts)

    run(body)


def test_a_socket_that_never_answers_is_no_outage(tmp_path: object) -> None:
    """Redis replaced by a socket that accepts and never answers: every lookup answered
    within the deadline, each costing at most one redis_timeout."""
    hole = Blackhole()
    try:
        async def body() -> None:
            source = FakeMailmanRecords(("b0@example.net",))
            b = host(f"redis://127.0.0.1:{hole.port}/0", source)
            await _answers_within_deadline([b], source, "b")
            assert b.shared is not None
            assert b.shared.stats.errors >= 1
            await close(b)

        run(body)
    finally:
        hole.close()


def test_negative_answers_expire_in_redis_too(redis_server: RedisServer) -> None:
    """The Redis expiry follows the answer: a nonmember's facts are kept negative_ttl +
    stale_if_error, a member's ttl + stale_if_error (seconds from the fetch)."""
    async def body() -> None:
        source = FakeMailmanRecords(("m@example.net",))
        settings = CacheConfig(ttl=60, negative_ttl=10, stale_if_error=5)
        shared = RedisTier(redis_server.url, timeout=0.2)
        a = MailmanBackend(source, settings, deadline=DEADLINE, shared=shared)
        assert await member(a, "m@example.net")
        assert not await member(a, "n@example.net")
        await close(a)

    run(body)
    member_ttl = int(redis_server.cli("PTTL", "listgate:v1:memberships:m@example.net")[1:])
    nonmember_ttl = int(redis_server.cli("PTTL", "listgate:v1:memberships:n@example.net")[1:])
    assert 60_000 < member_ttl <= 65_000
    assert 10_000 < nonmember_ttl <= 15_000
    assert Action.ACCEPT  # the codec round-trips actions (tests/unit covers each kind)


def test_a_refetch_that_finds_a_change_is_announced(redis_server: RedisServer) -> None:
    """Host A refetches an expired fact and finds it changed: host B, which would trust
    its own copy for a minute, drops it within a second and reads the new one."""
    async def body() -> None:
        source = FakeMailmanRecords()
        a = MailmanBackend(source, CacheConfig(negative_ttl=0.3), deadline=DEADLINE,
                           shared=RedisTier(redis_server.url))
        b = MailmanBackend(source, CacheConfig(negative_ttl=60), deadline=DEADLINE,
                           shared=RedisTier(redis_server.url))
        assert not await member(a, "c@example.net")
        assert not await member(b, "c@example.net")
        await asyncio.sleep(0.4)
        source.members.add("c@example.net")
        assert await member(a, "c@example.net")  # refetched: the write replaced a value
        started = time.monotonic()
        while not await member(b, "c@example.net"):
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        await close(a, b)

    run(body)


def test_redis_full_is_no_outage(redis_server: RedisServer) -> None:
    """A Redis out of memory (maxmemory, noeviction) refuses every write: lookups are
    answered right, the errors counted."""
    redis_server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.cli("CONFIG", "SET", "maxmemory", "1")

    async def body() -> None:
        source = FakeMailmanRecords(("f0@example.net",))
        b = host(redis_server.url, source)
        await _answers_within_deadline([b], source, "f")
        assert b.shared is not None
        assert b.shared.stats.errors >= 1
        await close(b)

    run(body)


def test_an_expired_shared_value_is_refetched_once(redis_server: RedisServer) -> None:
    """A value still in Redis but too old to use (kept for stale-if-error) is refetched
    by one host while the others wait for the new one, not by every host."""
    async def body() -> int:
        source = SlowRecords(("s@example.net",))
        settings = CacheConfig(ttl=0.3, negative_ttl=0.3)
        first = MailmanBackend(source, settings, deadline=DEADLINE,
                               shared=RedisTier(redis_server.url, wait=DEADLINE / 2))
        assert await member(first, "s@example.net")
        await close(first)
        await asyncio.sleep(0.4)
        hosts = [MailmanBackend(source, settings, deadline=DEADLINE,
                                shared=RedisTier(redis_server.url, wait=DEADLINE / 2))
                 for _ in range(3)]
        before = source.fetches["memberships"]
        assert all(await asyncio.gather(*(member(h, "s@example.net") for h in hosts)))
        await close(*hosts)
        return source.fetches["memberships"] - before

    assert run(body) == 1
