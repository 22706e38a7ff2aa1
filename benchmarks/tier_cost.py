"""What each cache tier costs per decision: the Mailman backend's gate decisions with the
local tier warm (shared tier off and on), answered by the shared tier (local tier
dropped before each decision), and fetched (both tiers empty: the source is an in-memory
fake that answers at once, so the figure is listgate's own cost around a REST call, lock
and write to Redis included).

Starts a private redis-server (tests/redis_harness.py; Debian's redis-server). One
decision at a time on one event loop, so the figures are latencies, not throughput under
concurrency (benchmarks/milter_load.py measures that).

Run: .venv/bin/python benchmarks/tier_cost.py [--decisions 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import FakeMailmanRecords  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

from listgate.config import CacheConfig  # noqa: E402
from listgate.decision.engine import ReplyTexts  # noqa: E402
from listgate.decision.gate import Gate  # noqa: E402
from listgate.decision.model import PostingRequest  # noqa: E402
from listgate.facts.redis import RedisTier  # noqa: E402
from listgate.mailman.backend import MailmanBackend  # noqa: E402

SENDERS = 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(label: str, backend: MailmanBackend, n: int,
                  before: Callable[[int], None]) -> None:
    gate = Gate(backend, ReplyTexts())
    members = [f"m{i}@example.net" for i in range(SENDERS)]
    times: list[float] = []
    for i in range(n):
        before(i)
        request = PostingRequest(members[i % SENDERS], FakeMailmanRecords.LIST)
        began = time.perf_counter()
        await gate.decide(request)
        times.append(time.perf_counter() - began)
    if label == "warm-up":
        return
    total = sum(times)
    print(f"| {label} | {n / total:,.0f} | {statistics.median(times) * 1e6:,.0f} µs "
          f"| {pct(times, 99) * 1e6:,.0f} µs |")


async def main(n: int, url: str, flush: Callable[[], None]) -> None:
    members = tuple(f"m{i}@example.net" for i in range(SENDERS))
    print("| tier answering | decisions/s | p50 | p99 |\n|---|---|---|---|")

    def nothing(_: int) -> None:
        return None

    for shared in (False, True):
        backend = MailmanBackend(FakeMailmanRecords(members), CacheConfig(),
                                 shared=RedisTier(url) if shared else None)
        await measure("warm-up", backend, SENDERS, nothing)
        await measure(f"local (shared tier {'on' if shared else 'off'})", backend, n, nothing)
        await backend.aclose()
    flush()
    warm = MailmanBackend(FakeMailmanRecords(members), CacheConfig(), shared=RedisTier(url))
    await measure("warm-up", warm, SENDERS, nothing)
    await asyncio.sleep(0.2)
    backend = MailmanBackend(FakeMailmanRecords(members), CacheConfig(), shared=RedisTier(url))
    await asyncio.sleep(0.2)

    def drop_local(_: int) -> None:
        for cache in backend.keys.caches:
            cache.forget_all()

    await measure("shared (local tier dropped before each)", backend, n // 4, drop_local)
    await backend.aclose()
    await warm.aclose()
    for shared in (False, True):
        flush()
        backend = MailmanBackend(FakeMailmanRecords(members), CacheConfig(),
                                 shared=RedisTier(url) if shared else None)

        def drop_all(_: int, backend: MailmanBackend = backend) -> None:
            for cache in backend.keys.caches:
                cache.forget_all()
            flush_facts()

        await measure(f"source, 0 ms fake (shared tier {'on' if shared else 'off'})",
                      backend, n // 20, drop_all)
        await backend.aclose()


_FLUSH: list[Callable[[], None]] = []
"""Empties the shared tier (set in ``__main__``)."""


def flush_facts() -> None:
    for flush in _FLUSH:
        flush()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            def flush() -> None:
                server.cli("FLUSHALL")

            _FLUSH.append(flush)
            asyncio.run(main(args.decisions, server.url, flush))
        finally:
            server.stop()
