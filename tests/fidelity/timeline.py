"""The differential suite with time: worlds that change between posts.

Each generated world (``generator.generate``) gets one change, drawn from the same seed,
made through Mailman's REST API *after* listgate has decided every post of the world once
(so its caches hold the facts from before the change): a sender subscribed or
unsubscribed, banned or unbanned, put into ``accept_these_nonmembers`` or
``reject_these_nonmembers``, the list opened
(``default_nonmember_action`` accept) or closed (reject or discard), an address linked to
a member's user or unlinked. ``reject_max_age`` seconds after the changes, listgate
decides every post again with the same gates (the same caches), and the posts go to
Mailman, whose verdict, after the change, is the truth. A reject of a post Mailman lets
through is a false reject, as in ``suite.compare``: none is allowed.

Invariants:
- One seed gives the same worlds, posts and changes (the changes come from their own
  random stream, so the worlds and posts are those of ``generate(seed, cases)``; a
  change's target is drawn among the senders listgate refused first, which depends only
  on the seed too).
- The posts reach Mailman only after listgate's second decision, and nothing changes
  between the two.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from listgate.app import build_gate
from listgate.config import load_config
from listgate.decision.gate import Gate

from .generator import LIST_DOMAIN, Batch, PostSpec, WorldSpec, generate
from .oracle import MailmanOracle, delivery
from .suite import CaseResult, RunStats, _informative, compare
from .verdicts import MODES, ModeVerdict, _decide, write_config

REJECT_MAX_AGE = 2.0
"""listgate's default ``[cache] reject_max_age``: the posts are made this long after the
changes."""

TIGHTENING = ("unsubscribe", "ban", "reject", "close-reject", "close-discard", "unlink")
"""Changes that can turn an accept into a refusal: listgate may keep accepting for its
TTLs (a stale accept only lets Mailman decide after queueing)."""
STALE_ACCEPT = "a stale accept after a tightening change (the TTLs allow it)"

LOOSENING = ("subscribe", "unban", "accept", "open", "link")
"""Changes that can turn a refusal into an accept."""
LOOSENING_SHARE = 0.7
"""Share of worlds whose change is drawn among the loosening ones first."""

CHANGE_KINDS = ("subscribe", "unsubscribe", "ban", "unban", "accept", "reject", "open",
                "close", "link", "unlink")


@dataclass
class ChangeSpec:
    """One change to one world: its kind, the address it concerns, and how it is made."""

    world: int
    kind: str
    address: str
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    """(method, REST path, form data) in order."""

    def summary(self) -> str:
        return f"w{self.world} {self.kind} {self.address}"


def _list_id(world: WorldSpec) -> str:
    return f"{world.list_name}.{LIST_DOMAIN}"


def _target(rng: random.Random, posts: Sequence[PostSpec], refused: Collection[str]) -> str:
    """An address the world's posts use (so the change can alter their verdicts): one
    listgate refused before the change if there is one (*refused*: case ids)."""
    usable = [p for p in posts if p.envelope and "=" not in p.envelope]
    preferred = [p for p in usable if p.case_id in refused] or usable
    return rng.choice(preferred).envelope.lower() if preferred else f"nobody@{LIST_DOMAIN}"


def draw_change(rng: random.Random, world: WorldSpec, posts: Sequence[PostSpec],
                refused: Collection[str]) -> ChangeSpec:
    """One change for *world* that touches a sender of *posts* or the list's policy; a
    kind the world cannot have (no member to unsubscribe...) falls back to another."""
    lid = _list_id(world)
    kinds = list(CHANGE_KINDS)
    rng.shuffle(kinds)
    if rng.random() < LOOSENING_SHARE:  # where a stale reject would be a false one
        kinds.sort(key=lambda k: k not in LOOSENING)
    members = [a.lower() for a, _ in world.members]
    exact_bans = [b for b in world.list_bans if not b.startswith("^")]
    linked = [(u.addresses[0], a) for u in world.users for a in u.addresses[1:]]
    for kind in kinds:
        target = _target(rng, posts, refused)
        if kind == "subscribe" and target not in members:
            return ChangeSpec(world.index, kind, target, [("POST", "members", {
                "list_id": lid, "subscriber": target, "pre_verified": True,
                "pre_confirmed": True, "pre_approved": True,
                "send_welcome_message": False})])
        if kind == "unsubscribe" and members:
            who = rng.choice(members)
            return ChangeSpec(world.index, kind, who,
                              [("DELETE", f"lists/{lid}/member/{quote(who, safe='@')}", None)])
        if kind == "ban":
            who = rng.choice([target, *members[:1]])
            return ChangeSpec(world.index, kind, who,
                              [("POST", f"lists/{lid}/bans", {"email": who})])
        if kind == "unban" and exact_bans:
            who = rng.choice(exact_bans)
            return ChangeSpec(world.index, kind, who,
                              [("DELETE", f"lists/{lid}/bans/{quote(who, safe='@')}", None)])
        if kind == "accept":
            return ChangeSpec(world.index, kind, target, [("PATCH", f"lists/{lid}/config",
                                                           {"accept_these_nonmembers": target})])
        if kind == "reject":
            return ChangeSpec(world.index, kind, target, [("PATCH", f"lists/{lid}/config",
                                                           {"reject_these_nonmembers": target})])
        if kind == "open":
            return ChangeSpec(world.index, kind, "", [("PATCH", f"lists/{lid}/config",
                                                       {"default_nonmember_action": "accept"})])
        if kind == "close":
            action = rng.choice(("reject", "discard"))
            return ChangeSpec(world.index, f"close-{action}", "", [
                ("PATCH", f"lists/{lid}/config", {"default_nonmember_action": action})])
        if kind == "link" and world.users and target not in members:
            owner = world.users[0].addresses[0]
            return ChangeSpec(world.index, kind, target, [
                ("POST", f"users/{quote(owner, safe='@')}/addresses",
                 {"email": target, "absorb_existing": True})])
        if kind == "unlink" and linked:
            _, who = rng.choice(linked)
            return ChangeSpec(world.index, kind, who,
                              [("DELETE", f"addresses/{quote(who, safe='@')}/user", None)])
    return ChangeSpec(world.index, "open", "", [("PATCH", f"lists/{lid}/config",
                                                  {"default_nonmember_action": "accept"})])


def draw_changes(batch: Batch, refused: set[str]) -> dict[int, ChangeSpec]:
    """A change per world of *batch*, from the seed's own stream of changes, aimed at the
    senders of posts listgate refused (*refused*: case ids) where it can."""
    rng = random.Random(f"{batch.seed}/timeline")
    by_world: dict[int, list[PostSpec]] = {}
    for p in batch.posts:
        by_world.setdefault(p.world, []).append(p)
    return {w.index: draw_change(rng, w, by_world.get(w.index, []), refused)
            for w in batch.worlds}


@dataclass
class TimelineStats:
    """A timeline run: the suite's stats after the changes, and how many verdicts the
    changes turned."""

    stats: RunStats = field(default_factory=RunStats)
    changes: dict[str, int] = field(default_factory=dict)
    turned: dict[str, int] = field(default_factory=dict)
    """Per mode: posts whose listgate verdict changed between its two decisions (the
    cache followed a change)."""
    failed_changes: list[str] = field(default_factory=list)


def _apply(oracle: MailmanOracle, change: ChangeSpec) -> str | None:
    """Make *change* through REST; why it could not be made, or None."""
    for method, path, data in change.requests:
        r = oracle.http.request(method, path, data=data)
        if r.status_code >= 400:
            return f"{change.summary()}: {method} {path}: HTTP {r.status_code} {r.text[:200]}"
    return None


async def _decide_twice(
    gates: dict[str, Gate], posts: Sequence[PostSpec],
    between: Callable[[dict[str, dict[str, ModeVerdict]]], None], wait: float,
) -> tuple[dict[str, dict[str, ModeVerdict]], dict[str, dict[str, ModeVerdict]]]:
    async def every() -> dict[str, dict[str, ModeVerdict]]:
        limit = asyncio.Semaphore(8)

        async def one(p: PostSpec) -> tuple[str, dict[str, ModeVerdict]]:
            async with limit:
                return p.case_id, await _decide(gates, p)

        return dict(await asyncio.gather(*(one(p) for p in posts)))

    before = await every()
    await asyncio.to_thread(between, before)
    await asyncio.sleep(wait)
    return before, await every()


def run_timeline(oracle: MailmanOracle, workdir: Path, seed: int, cases: int, *,
                 reject_max_age: float = REJECT_MAX_AGE) -> tuple[TimelineStats, list[CaseResult]]:
    """Generate, build, decide, change, wait, decide again, post, compare."""
    batch = generate(seed, cases)
    changes: dict[int, ChangeSpec] = {}
    worlds = {w.index: w for w in batch.worlds}
    out = TimelineStats()
    core = oracle.core
    workdir.mkdir(parents=True, exist_ok=True)
    configs = {mode: write_config(workdir / f"timeline-{mode}.toml", core.url, core.user,
                                  core.password, mode) for mode in MODES}
    oracle.build_worlds(batch.worlds)

    def change_all(before: dict[str, dict[str, ModeVerdict]]) -> None:
        refused = {case for case, v in before.items() if v["rcpt"].verdict == "reject"}
        changes.update(draw_changes(batch, refused))
        for change in changes.values():
            why = _apply(oracle, change)
            if why is None:
                out.changes[change.kind] = out.changes.get(change.kind, 0) + 1
            else:
                out.failed_changes.append(why)

    async def decide() -> tuple[dict[str, dict[str, ModeVerdict]],
                                dict[str, dict[str, ModeVerdict]]]:
        rcpt = build_gate(load_config(configs["rcpt"]))
        gates = {"rcpt": rcpt,
                 "headers": build_gate(load_config(configs["headers"]), rcpt.backend)}
        try:
            return await _decide_twice(gates, batch.posts, change_all, reject_max_age)
        finally:
            await rcpt.backend.aclose()

    t = time.monotonic()
    before, after = asyncio.run(decide())
    out.stats.seconds["listgate"] += time.monotonic() - t
    deliveries = [delivery(p, worlds[p.world]) for p in batch.posts]
    senders = oracle.senders(deliveries)
    twins = [delivery(p, worlds[p.world], twin=True)
             for p, d in zip(batch.posts, deliveries, strict=True)
             if not d.service and p.envelope and after[p.case_id]["rcpt"].verdict == "reject"
             and not _informative(p, senders[p.case_id])]
    out.stats.twins += len(twins)
    lmtp = oracle.deliver(deliveries + twins)
    observed = oracle.collect(deliveries + twins, lmtp)
    results = []
    for p in batch.posts:
        r = CaseResult(p.case_id, seed, p.world, p.to_json(), observed[p.case_id],
                       senders[p.case_id], after[p.case_id], observed.get(f"{p.case_id}-t"))
        compare(r, worlds[p.world], p)
        for mode, why in list(r.missed.items()):
            if why == "UNEXPLAINED" and changes[p.world].kind in TIGHTENING:
                r.missed[mode] = STALE_ACCEPT
        out.stats.add(r, _informative(p, r.mailman_senders))
        for obs in (r.mailman, r.twin):
            if obs is not None and obs.conflict:
                out.stats.errors.append(f"oracle conflict: {obs.conflict}: {r.summary()}")
        for mode in MODES:
            if before[p.case_id][mode].verdict != after[p.case_id][mode].verdict:
                out.turned[mode] = out.turned.get(mode, 0) + 1
        results.append(r)
    return out, results
