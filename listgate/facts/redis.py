"""The shared cache tier on Redis (or Valkey): one view of the facts for every MX host and
every worker process, so that Mailman is asked once, not once per process.

``RedisTier`` holds one client (redis-py's asyncio ``Redis``, which reconnects by itself)
and makes a ``RedisStore`` (a ``listgate.facts.cache.FactStore``) for each kind of fact;
the names and the invalidation message are ``listgate.facts.sharedkeys``.

- **Ages, not clocks.** A value is stored with *keep* (seconds from its fetch until it is
  of no use: TTL or negative TTL, plus stale-if-error) and the key's ``PX`` expiry set to
  run out exactly then (``keep - age``). A read takes ``GET`` and ``PTTL`` in one round
  trip; the value's age is ``keep - PTTL``. Elapsed time is measured by the Redis server
  alone, so hosts whose clocks disagree still agree on every age, and Redis deletes what
  no host may use any more.
- **Fetch once.** Before fetching a fact nobody has (``claim``), a host takes the lock
  ``SET lock NX PX`` (*lock_ttl*: one REST timeout). The others poll for the value
  (5 ms, doubling to 50 ms) for at most *wait* seconds (half the decision deadline), then
  fetch themselves: a holder that dies stalls nobody past *wait*, and its lock expires.
  The holder's ``put`` (or ``release``, when its fetch failed) deletes the lock if it is
  still its own (a compare-and-delete script).
- **Invalidate everywhere.** A write that replaces a different value (``SET ... GET``:
  a refetch found a change) is announced on the channel, so the other hosts drop their
  local copies. ``invalidate``/``clear`` queue the change; a background task
  deletes the shared keys and publishes one message in one ``MULTI``; until it has, this
  process does not read those keys (they hold what is being invalidated). A subscriber task
  hears every message (its own skipped by origin) and drops the named facts from the
  local tier only (``FactCache.forget``). When the subscription breaks (Redis down or
  restarted, a connection that stopped answering: a ``PING`` every second must be answered
  within three), it re-subscribes with backoff and then drops the whole local tier, since
  invalidations may have been missed meanwhile.
- **Never an outage.** Every call is bounded by ``timeout`` (``[cache] redis_timeout``);
  an error or timeout raises ``FactStoreError`` (the cache goes on without the tier), is
  counted, logged at most once a minute per kind, and opens a breaker: for
  ``RETRY_AFTER`` seconds no call is tried, so a Redis that hangs costs each lookup
  nothing more than a dict check. Garbage (a value that does not decode) is a miss,
  counted and logged.

Invariants:
- Nothing stored or published holds a secret: values are the JSON records of
  ``Codec.encode`` (list settings, addresses, roles), never a password; no pickle.
- Every Redis call of the lookup path is inside ``asyncio.timeout(timeout)`` and raises
  only ``FactStoreError`` out of this module; background tasks never raise.
- A message heard on the channel only ever *drops* local entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from cachetools import LRUCache
from redis.exceptions import RedisError

from listgate.events import RateLimit
from listgate.facts.cache import FactCache, FactStoreError, Stored
from listgate.facts.sharedkeys import (
    CHANNEL,
    Invalidation,
    InvalidationError,
    decode_invalidation,
    encode_invalidation,
    fact_name,
    kind_pattern,
    lock_name,
)

__all__ = ["Codec", "RedisStore", "RedisTier", "TierStats"]

log = logging.getLogger("listgate.cache")

V = TypeVar("V")

RETRY_AFTER = 1.0
"""Seconds without trying Redis after a failure."""
PING_EVERY = 1.0
"""Seconds between PINGs on the subscription."""
DEAF_AFTER = 3.0
"""Seconds without hearing anything on the subscription before it counts as broken."""
LOG_INTERVAL = 60.0
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_FAILURES = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


class Codec(Protocol[V]):
    """How one kind of fact becomes JSON and back; ``decode`` raises ``ValueError``,
    ``TypeError`` or ``KeyError`` for anything ``encode`` cannot produce."""

    def encode(self, value: V) -> object: ...
    def decode(self, data: Any) -> V: ...


@dataclass
class TierStats:
    """The shared tier's own counters (per-kind hits and errors are on each cache)."""

    errors: int = 0
    """Redis calls that failed or timed out."""
    skipped: int = 0
    """Calls not tried because a recent failure opened the breaker."""
    garbage: int = 0
    """Values or messages that did not decode."""
    locks_taken: int = 0
    lock_waits: int = 0
    """Claims that found another host fetching and waited."""
    lock_waits_served: int = 0
    """Of those, the ones the other host's result answered."""
    invalidations_sent: int = 0
    invalidations_received: int = 0
    resyncs: int = 0
    """Local tier dropped after the subscription broke and came back."""
    up: bool = False
    """The last call succeeded."""
    subscribed: bool = False
    """The invalidation channel is subscribed."""


class RedisTier:
    """One Redis connection for a backend's caches; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout: float = 0.2,
        lock_ttl: float = 5.0,
        wait: float = 2.5,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.client: aioredis.Redis = client or aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=256,
            decode_responses=False,
        )
        self.origin = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self.stats = TierStats()
        self._caches: dict[str, FactCache[str, Any]] = {}
        self._down_until = 0.0
        self._limit = RateLimit(LOG_INTERVAL)
        self._pending: Invalidation | None = None
        self._sending: Invalidation | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the coroutine *work* in the background (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def describe(self) -> str:
        """For logs: the URL (it never holds a password; config refuses one)."""
        return f"shared tier {self.url}"

    # ------------------------------------------------------------------ wiring

    def store(self, cache_name: str, codec: Codec[V]) -> RedisStore[V]:
        """The ``FactStore`` for the kind *cache_name*."""
        return RedisStore(self, cache_name, codec)

    def attach(self, cache: FactCache[str, Any]) -> None:
        """Let invalidations heard from other hosts drop *cache*'s entries."""
        self._caches[cache.name] = cache

    def start(self) -> None:
        """Start the subscriber (on the running loop); idempotent."""
        if self._listener is None and not self._closed:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def aclose(self) -> None:
        """Stop the background tasks (a pending invalidation gets one bounded try) and
        close the connections."""
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), 1.0)
        for task in (self._listener, self._flusher, *self._chores):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(*_FAILURES):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    # ------------------------------------------------------------------ health

    def _now(self) -> float:
        return time.monotonic()

    def available(self) -> bool:
        """False while the breaker is open (a recent failure): callers skip Redis."""
        if self._now() < self._down_until:
            self.stats.skipped += 1
            return False
        return True

    def failed(self, what: str, exc: BaseException) -> FactStoreError:
        """Count and log (rate-limited) a failed call, open the breaker; the error to raise."""
        self.stats.errors += 1
        self.stats.up = False
        self._down_until = self._now() + RETRY_AFTER
        why = str(exc) or type(exc).__name__
        self._warn("down", f"{self.describe()}: {what} failed ({why}); going on without "
                           f"it, retrying in {RETRY_AFTER:g} s")
        return FactStoreError(f"redis {what}: {why}")

    def succeeded(self) -> None:
        """Note a call that worked (logs the recovery once)."""
        if not self.stats.up and self.stats.errors:
            log.info("%s answers again", self.describe())
        self.stats.up = True

    def _warn(self, kind: str, text: str) -> None:
        held = self._limit.check(kind, self._now())
        if held is not None:
            more = f" ({held} more like it since the last line)" if held else ""
            log.warning("%s%s", text, more)

    def garbage(self, what: str) -> None:
        """Count and log (rate-limited) something that did not decode."""
        self.stats.garbage += 1
        self._warn("garbage", f"{self.describe()}: ignoring {what}")

    # ------------------------------------------------------------------ invalidation

    def publish(self, change: Invalidation) -> None:
        """Delete the shared keys of *change* and tell every host, in the background."""
        self._pending = change if self._pending is None else self._pending.merge(change)
        if self._flusher is None or self._flusher.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: nothing shared is running either
                self._pending = None
                return
            self._flusher = loop.create_task(self._flush())

    def unsent(self, kind: str, subject: str) -> bool:
        """Whether an invalidation of this fact has not reached Redis yet: until it has,
        the shared value is not read (it is the one being invalidated)."""
        for change in (self._pending, self._sending):
            if change is not None and (change.everything or kind in change.kinds
                                       or (kind, subject) in change.keys):
                return True
        return False

    def announce(self, change: Invalidation) -> None:
        """Tell every host to drop *change* locally, without deleting anything shared
        (the shared value is already the new one): a refetch found a change."""
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self.spawn(self._announce(change))

    async def _announce(self, change: Invalidation) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.publish(CHANNEL, encode_invalidation(change))
        except _FAILURES as exc:
            self.failed("PUBLISH", exc)
        else:
            self.stats.invalidations_sent += 1

    async def _flush(self) -> None:
        for delay in (0.0, 0.2, 0.5, 1.0, 2.0):
            await asyncio.sleep(delay)
            change = self._pending
            if change is None:
                return
            self._pending, self._sending = None, change
            try:
                await self._send(change)
            except _FAILURES as exc:
                self.failed("invalidate", exc)
                self._pending = change if self._pending is None else change.merge(
                    self._pending)
            else:
                self.stats.invalidations_sent += 1
                self.succeeded()
            finally:
                self._sending = None
        if self._pending is not None:
            self._warn("lost", f"{self.describe()}: could not publish an invalidation; "
                               "other hosts follow it at their TTLs or when they resync")
            self._pending = None

    async def _send(self, change: Invalidation) -> None:
        async with asyncio.timeout(max(self.timeout, 1.0)):
            async with self.client.pipeline(transaction=True) as pipe:
                names = change.names()
                if names:
                    pipe.unlink(*names)
                pipe.publish(CHANNEL, encode_invalidation(change))
                await pipe.execute()
        kinds = tuple(self._caches) if change.everything else tuple(change.kinds)
        for kind in kinds:  # SCAN is slower: bounded by a longer timeout of its own
            async with asyncio.timeout(10.0):
                batch: list[bytes] = []
                async for name in self.client.scan_iter(match=kind_pattern(kind), count=1000):
                    batch.append(name)
                    if len(batch) >= 1000:
                        await self.client.unlink(*batch)
                        batch.clear()
                if batch:
                    await self.client.unlink(*batch)

    def _heard(self, data: bytes) -> None:
        try:
            change = decode_invalidation(data)
        except InvalidationError as exc:
            self.garbage(f"a message on {CHANNEL}: {exc}")
            return
        if change.origin == self.origin:
            return
        self.stats.invalidations_received += 1
        if change.everything:
            self.forget_all()
            return
        for kind in change.kinds:
            cache = self._caches.get(kind)
            if cache is not None:
                cache.forget_all()
        for kind, subject in change.keys:
            cache = self._caches.get(kind)
            if cache is not None:
                cache.forget(subject)

    def forget_all(self) -> int:
        """Drop every local entry of every attached cache (not the shared ones)."""
        return sum(cache.forget_all() for cache in self._caches.values())

    async def _listen(self) -> None:
        """The subscriber: re-subscribes after any break, then drops the local tier."""
        broken = False
        backoff = 0.1
        while not self._closed:
            pubsub = self.client.pubsub()
            try:
                async with asyncio.timeout(max(self.timeout, 1.0)):
                    await pubsub.subscribe(CHANNEL)
                if broken:
                    dropped = self.forget_all()
                    self.stats.resyncs += 1
                    log.info("%s: subscribed again; dropped %d local entries (changes may "
                             "have been missed)", self.describe(), dropped)
                broken = False
                backoff = 0.1
                self.stats.subscribed = True
                self.succeeded()
                heard = pinged = self._now()
                while not self._closed:
                    message = await pubsub.get_message(timeout=0.25)
                    now = self._now()
                    if message is not None:
                        heard = now
                        if message.get("type") == "message":
                            self._heard(message["data"])
                    if now - pinged >= PING_EVERY:
                        pinged = now
                        async with asyncio.timeout(max(self.timeout, 1.0)):
                            await pubsub.ping()
                    if now - heard > DEAF_AFTER:
                        raise TimeoutError("no answer to PING on the subscription")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the subscriber die
                broken = True
                self.stats.subscribed = False
                self.failed("subscription", exc)
            finally:
                self.stats.subscribed = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 0.5)  # type: ignore[no-untyped-call]
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)


def _value_of(raw: bytes) -> object:
    """The ``v`` part of a stored value (None if it is garbage)."""
    try:
        data = json.loads(raw)
        return data.get("v") if isinstance(data, dict) else None
    except ValueError:
        return None


class RedisStore(Generic[V]):
    """The ``FactStore`` of one kind of fact in a ``RedisTier``."""

    def __init__(self, tier: RedisTier, kind: str, codec: Codec[V]) -> None:
        self.tier = tier
        self.kind = kind
        self.codec = codec
        self._locks: dict[str, str] = {}
        self._seen: LRUCache[str, bytes | None] = LRUCache(4096)
        """What ``get`` read for a key, until the ``claim`` that follows it (a ``get``
        that found a fresh value has no ``claim``: bounded, least recently used out)."""

    def _decode(self, raw: bytes | None, pttl: int) -> Stored[V] | None:
        if raw is None or pttl < 0:
            return None
        try:
            data = json.loads(raw)
            keep = float(data["k"])
            value = self.codec.decode(data["v"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.tier.garbage(f"the value of {self.kind}: {type(exc).__name__}")
            return None
        return Stored(value, max(0.0, keep - pttl / 1000.0))

    async def _read(self, name: str) -> tuple[bytes | None, Stored[V] | None]:
        async with self.tier.client.pipeline(transaction=True) as pipe:
            pipe.get(name)
            pipe.pttl(name)
            raw, pttl = await pipe.execute()
        return raw, self._decode(raw, int(pttl))

    async def get(self, key: str) -> Stored[V] | None:
        """The stored value and its age, or None (absent, being invalidated, or Redis
        unavailable)."""
        if self.tier.unsent(self.kind, key) or not self.tier.available():
            return None
        try:
            async with asyncio.timeout(self.tier.timeout):
                raw, stored = await self._read(fact_name(self.kind, key))
        except _FAILURES as exc:
            raise self.tier.failed("GET", exc) from None
        self.tier.succeeded()
        self._seen[key] = raw
        return stored

    async def claim(self, key: str) -> Stored[V] | None:
        """Take the fetch lock (None: fetch), or wait for the host that holds it. Only a
        value written since this process's ``get`` (a new fetch, not the stale value
        that ``get`` saw) ends the wait."""
        seen = self._seen.pop(key, None)
        if self.tier.unsent(self.kind, key) or not self.tier.available():
            return None
        tier = self.tier
        token = secrets.token_hex(8)
        lock = lock_name(self.kind, key)
        name = fact_name(self.kind, key)
        try:
            async with asyncio.timeout(tier.timeout):
                async with tier.client.pipeline(transaction=True) as pipe:
                    pipe.set(lock, token, nx=True, px=max(1, int(tier.lock_ttl * 1000)))
                    pipe.get(name)
                    pipe.pttl(name)
                    taken, raw, pttl = await pipe.execute()
        except _FAILURES as exc:
            raise tier.failed("SET NX", exc) from None
        stored = self._decode(raw, int(pttl)) if raw != seen else None
        if taken:
            if stored is not None:  # filled since our GET: no need to fetch
                self._unlock_later(key, token)
                return stored
            tier.stats.locks_taken += 1
            self._locks[key] = token
            return None
        if stored is not None:
            return stored
        tier.stats.lock_waits += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + tier.wait
        delay = 0.005
        while loop.time() + delay < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            try:
                async with asyncio.timeout(tier.timeout):
                    async with tier.client.pipeline(transaction=True) as pipe:
                        pipe.get(name)
                        pipe.pttl(name)
                        pipe.exists(lock)
                        raw, pttl, locked = await pipe.execute()
            except _FAILURES as exc:
                raise tier.failed("GET", exc) from None
            stored = self._decode(raw, int(pttl)) if raw != seen else None
            if stored is not None:
                tier.stats.lock_waits_served += 1
                return stored
            if not locked:  # the holder gave up (or died and its lock expired)
                return None
        return None

    async def put(self, key: str, value: V, *, age: float, keep: float) -> None:
        """Store *value* (fetched *age* s ago) until *keep* s after its fetch; unlock."""
        token = self._locks.pop(key, None)
        if keep - age <= 0 or not self.tier.available():
            self._unlock_later(key, token)
            return
        encoded = self.codec.encode(value)
        body = json.dumps({"k": round(keep, 3), "v": encoded, "w": secrets.token_hex(4)},
                          separators=(",", ":"), sort_keys=True)
        try:
            async with asyncio.timeout(self.tier.timeout):
                async with self.tier.client.pipeline(transaction=True) as pipe:
                    pipe.set(fact_name(self.kind, key), body,
                             px=max(1, int((keep - age) * 1000)), get=True)
                    if token is not None:
                        pipe.eval(_RELEASE, 1, lock_name(self.kind, key), token)
                    old = (await pipe.execute())[0]
        except _FAILURES as exc:
            self._unlock_later(key, token)
            raise self.tier.failed("SET", exc) from None
        self.tier.succeeded()
        if old is not None and _value_of(old) != json.loads(json.dumps(encoded)):
            # A refetch found a change: other hosts may hold the old value locally.
            self.tier.announce(Invalidation(self.tier.origin,
                                            frozenset({(self.kind, key)})))

    def release(self, key: str) -> None:
        """Let go of the fetch lock of *key*, if this process holds it (background)."""
        self._unlock_later(key, self._locks.pop(key, None))

    def _unlock_later(self, key: str, token: str | None) -> None:
        if token is None:
            return
        with contextlib.suppress(RuntimeError):  # no loop: the lock expires by itself
            asyncio.get_running_loop()
            self.tier.spawn(self._unlock(key, token))

    async def _unlock(self, key: str, token: str) -> None:
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(self.tier.timeout):
                await self.tier.client.eval(_RELEASE, 1, lock_name(self.kind, key), token)

    def invalidate(self, key: str) -> None:
        """Delete the shared key and tell every host (background)."""
        self.tier.publish(Invalidation(self.tier.origin, frozenset({(self.kind, key)})))

    def clear(self) -> None:
        """Delete every shared key of this kind and tell every host (background)."""
        self.tier.publish(Invalidation(self.tier.origin, kinds=frozenset({self.kind})))

