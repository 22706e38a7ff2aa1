"""How many Mailman REST calls the cached Mailman backend makes per RCPT.

Starts its own Mailman core (tests/mailman_harness.py, needs .venv-mailman), creates 20
lists with some members, then decides 10,000 PostingRequests over 1,000 distinct senders
and the 20 lists through Gate.decide (members and nonmembers mixed, fixed random seed,
50 in flight at a time) with the default CacheConfig, and prints the REST calls made
against the number of distinct (list, sender) pairs.

Two passes over the same requests, each with a fresh backend: one with the clock frozen
(no TTL can expire, so the figure is the cache's own bound; exit status 1 if its calls
exceed the distinct pairs), one on the real clock (a run longer than ``negative_ttl``
refetches the answers that would reject, so calls can exceed the pairs).

With ``--mix spam`` the requests look like a spam run against the lists instead: most
senders are new nonmembers (each seen once), some nonmembers repeat (a pool of
``SPAM_REPEATERS``), a few are members; requests are paced at ``--rate`` RCPT/s so that
the time between repeats is realistic. The real-clock passes then show what
``[cache] reject_max_age`` costs: ``before`` (unbounded: listgate before #13), ``after``
(the default 2 s), and ``feed`` (every TTL one hour, a healthy change feed vouching for
every fact: what the Mailman plugin allows while nothing changes).

``--hosts N`` spreads the same requests round-robin over N backends (N MX hosts, each
with its own in-process cache and REST connection pool) and counts the calls of all of
them; ``--redis`` gives every backend the shared tier (``[cache] redis_url``) on a private
redis-server started here (tests/redis_harness.py, Debian's redis-server), flushed
between passes; ``--frozen-only`` runs only the frozen-clock pass.

Run: .venv/bin/python benchmarks/rest_calls.py [--mix members|spam] [--rate N]
     [--hosts 3] [--redis] [--frozen-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mailman_harness import MailmanCore  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

from listgate.config import CacheConfig  # noqa: E402
from listgate.decision.engine import ReplyTexts  # noqa: E402
from listgate.decision.gate import Gate  # noqa: E402
from listgate.decision.model import PostingRequest  # noqa: E402
from listgate.mailman.backend import MailmanBackend  # noqa: E402
from listgate.mailman.client import MailmanClient  # noqa: E402

SEED = 20240601
LISTS = 20
SENDERS = 1000
MEMBERS_PER_LIST = 15
REQUESTS = 10_000
MEMBER_SHARE = 0.5
"""Share of requests whose sender is a member of the list posted to."""
IN_FLIGHT = 50
SPAM_NEW = 0.75
"""Spam mix: share of requests from a sender never seen before (a nonmember)."""
SPAM_MEMBERS = 0.05
"""Spam mix: share of requests from a member of the list."""
SPAM_REPEATERS = 200
"""Spam mix: the pool the remaining requests' (nonmember) senders repeat from."""


def build(core: MailmanCore, rng: random.Random) -> tuple[list[str], dict[str, list[str]]]:
    """20 lists (half reject nonmembers, half hold them) with members from the sender pool."""
    senders = [f"sender{i:04d}@bench{i % 7}.example" for i in range(SENDERS)]
    members: dict[str, list[str]] = {}
    for n in range(LISTS):
        action = "reject" if n % 2 == 0 else "hold"
        ml = core.new_list({"default_nonmember_action": action}, name=f"bench{n:02d}")
        chosen = rng.sample(senders, MEMBERS_PER_LIST)
        for email in chosen:
            core.subscribe(ml, email)
        members[ml.fqdn_listname] = chosen
    return senders, members


def workload(
    rng: random.Random, senders: list[str], members: dict[str, list[str]]
) -> list[PostingRequest]:
    """REQUESTS requests; every sender of the pool appears at least once."""
    lists = sorted(members)
    requests = [PostingRequest(s, rng.choice(lists)) for s in senders]
    while len(requests) < REQUESTS:
        fqdn = rng.choice(lists)
        pool = members[fqdn] if rng.random() < MEMBER_SHARE else senders
        requests.append(PostingRequest(rng.choice(pool), fqdn))
    rng.shuffle(requests)
    return requests


def spam_workload(
    rng: random.Random, members: dict[str, list[str]], count: int
) -> list[PostingRequest]:
    """*count* requests: SPAM_NEW new nonmembers, SPAM_MEMBERS members, the rest from
    SPAM_REPEATERS repeating nonmembers."""
    lists = sorted(members)
    repeaters = [f"bulk{i:04d}@spam{i % 13}.example" for i in range(SPAM_REPEATERS)]
    requests = []
    for n in range(count):
        fqdn = rng.choice(lists)
        roll = rng.random()
        if roll < SPAM_NEW:
            sender = f"new{n:06d}@spam{n % 17}.example"
        elif roll < SPAM_NEW + SPAM_MEMBERS:
            sender = rng.choice(members[fqdn])
        else:
            sender = rng.choice(repeaters)
        requests.append(PostingRequest(sender, fqdn))
    return requests


class Covering:
    """A healthy change feed that vouches for every fact (nothing changes in the run)."""

    def covers(self, fetched_at: float) -> bool:
        del fetched_at
        return True


class CountingSource(MailmanClient):
    """MailmanClient that also counts its fetches by kind of fact."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fetches: Counter[str] = Counter()

    async def directory(self):
        self.fetches["directory (3 calls)"] += 1
        return await super().directory()

    async def policy(self, fqdn, list_id):
        self.fetches["policy (2 calls)"] += 1
        return await super().policy(fqdn, list_id)

    async def global_bans(self):
        self.fetches["global_bans (1 call)"] += 1
        return await super().global_bans()

    async def memberships(self, address):
        self.fetches["memberships (1 call)"] += 1
        return await super().memberships(address)

    async def linked_addresses(self, address):
        self.fetches["linked (1-2 calls)"] += 1
        return await super().linked_addresses(address)


async def one_pass(
    core: MailmanCore, requests: list[PostingRequest], label: str, frozen: bool,
    settings: CacheConfig | None = None, *, rate: float = 0.0, feed: bool = False,
    hosts: int = 1, redis_url: str = "",
) -> bool:
    """Decide every request with fresh cached backends (*settings*, default CacheConfig;
    one per host, requests spread round-robin, sharing a Redis tier at *redis_url*), at
    most *rate* RCPT/s (0: as fast as IN_FLIGHT allows); with *feed*, a healthy change
    feed covers every fact. Print figures; calls <= pairs?"""
    from listgate.facts.redis import RedisTier

    sources = [CountingSource(core.url, core.user, core.password) for _ in range(hosts)]
    clock = (lambda: 0.0) if frozen else time.monotonic
    backends = [
        MailmanBackend(source, settings or CacheConfig(), clock=clock,
                       shared=RedisTier(redis_url) if redis_url else None)
        for source in sources
    ]
    for backend in backends:
        if feed:
            backend.follow_feed(Covering())
    gates = [Gate(backend, ReplyTexts()) for backend in backends]
    limit = asyncio.Semaphore(IN_FLIGHT)
    began = time.monotonic()

    async def one(n: int, request: PostingRequest) -> str:
        if rate:
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
        async with limit:
            return (await gates[n % hosts].decide(request)).verdict.value

    try:
        verdicts = Counter(await asyncio.gather(*(one(n, r) for n, r in enumerate(requests))))
        elapsed = time.monotonic() - began
    finally:
        for backend in backends:
            await backend.aclose()
    calls = sum(source.calls for source in sources)
    fetches: Counter[str] = Counter()
    refetches: Counter[str] = Counter()
    for source, backend in zip(sources, backends, strict=True):
        fetches.update(source.fetches)
        refetches.update(backend.reject_refetches())
    pairs = len({(r.recipient, r.sender) for r in requests})
    ok = calls <= pairs
    print(f"--- {label}; {hosts} host{'s' if hosts > 1 else ''}, shared tier "
          f"{'on' if redis_url else 'off'}")
    print(f"requests (RCPTs)           {len(requests)}")
    print(f"distinct senders           {len({r.sender for r in requests})}")
    print(f"distinct (list, sender)    {pairs}")
    print(f"REST calls                 {calls}")
    print(f"REST calls per RCPT        {calls / len(requests):.4f}")
    print(f"fetches by fact            {dict(fetches)}")
    print(f"verdicts                   {dict(sorted(verdicts.items()))}")
    print(f"elapsed                    {elapsed:.1f} s "
          f"({len(requests) / elapsed:.0f} RCPT/s, {IN_FLIGHT} in flight)")
    print(f"refetches before a reject  {dict(refetches)}")
    print(f"calls <= distinct pairs    {ok}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=("members", "spam"), default="members",
                        help="members: the pool mix (default); spam: mostly new nonmembers")
    parser.add_argument("--rate", type=float, default=None,
                        help="RCPT/s (default: unpaced; spam mix: 500)")
    parser.add_argument("--hosts", type=int, default=1, help="MX hosts (backends), >= 1")
    parser.add_argument("--redis", action="store_true", help="share a Redis tier")
    parser.add_argument("--frozen-only", action="store_true",
                        help="only the frozen-clock pass (the cache's own bound)")
    args = parser.parse_args()
    if args.hosts < 1:
        parser.error("--hosts must be >= 1")
    rate = args.rate if args.rate is not None else (500.0 if args.mix == "spam" else 0.0)
    rng = random.Random(SEED)
    with contextlib.ExitStack() as stack:
        server: RedisServer | None = None
        if args.redis:
            server = RedisServer(Path(stack.enter_context(tempfile.TemporaryDirectory()))
                                 / "redis")
            server.start()
            stack.callback(server.stop)
        run(rng, args, rate, server)


def run(rng: random.Random, args: argparse.Namespace, rate: float,
        server: RedisServer | None) -> None:
    """Every pass against a new Mailman core (the shared tier flushed between them)."""
    hosts: int = args.hosts
    redis_url = server.url if server is not None else ""

    def flush() -> None:
        if server is not None:
            server.cli("FLUSHALL")

    with MailmanCore() as core:
        began = time.monotonic()
        senders, members = build(core, rng)
        print(f"Mailman core up in {core.startup_seconds:.1f} s; {LISTS} lists, "
              f"{LISTS * MEMBERS_PER_LIST} subscriptions in {time.monotonic() - began:.1f} s; "
              f"seed {SEED}; mix {args.mix}; rate {rate or 'unpaced'}")
        requests = (workload(rng, senders, members) if args.mix == "members"
                    else spam_workload(rng, members, REQUESTS))
        s = CacheConfig()
        frozen_ok = asyncio.run(one_pass(
            core, requests, "default CacheConfig, clock frozen (no TTL can expire)", True,
            hosts=hosts, redis_url=redis_url))
        if args.frozen_only:
            print(f"--- calls <= distinct pairs: frozen clock {frozen_ok}")
            if not frozen_ok and args.mix == "members" and (hosts == 1 or redis_url):
                raise SystemExit(1)
            return
        flush()
        before = CacheConfig(reject_max_age=math.inf)
        asyncio.run(one_pass(
            core, requests,
            f"before #13: no reject_max_age, real clock (ttl {s.ttl:g} s, negative_ttl "
            f"{s.negative_ttl:g} s)", False, before, rate=rate, hosts=hosts, redis_url=redis_url))
        flush()
        real_ok = asyncio.run(one_pass(
            core, requests,
            f"default CacheConfig, real clock (ttl {s.ttl:g} s, negative_ttl "
            f"{s.negative_ttl:g} s, reject_max_age {s.reject_max_age:g} s)", False,
            rate=rate, hosts=hosts, redis_url=redis_url))
        flush()
        hour = CacheConfig(ttl=3600, negative_ttl=3600, policy_ttl=3600, directory_ttl=3600)
        asyncio.run(one_pass(
            core, requests, "change feed healthy, every TTL 1 h, real clock", False, hour,
            rate=rate, feed=True, hosts=hosts, redis_url=redis_url))
    print(f"--- calls <= distinct pairs: frozen clock {frozen_ok}, real clock {real_ok}")
    # A new nonmember costs 2 calls (spam mix); separate caches: each host asks again.
    if not frozen_ok and args.mix == "members" and (hosts == 1 or redis_url):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
