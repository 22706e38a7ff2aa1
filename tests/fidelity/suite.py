"""The differential run: generate, build the worlds in Mailman, ask listgate, post to
Mailman, compare.

Definitions (per mode, ``rcpt`` and ``headers``):

- **false reject**: listgate rejects a post that Mailman accepted or held (or that went
  to a service address, which no posting chain judges).
- **missed reject**: Mailman rejected or discarded the post, and listgate accepted it.

At RCPT listgate sees only the envelope sender. A ``rcpt``-mode reject of a post Mailman
let through is *excused* (an RCPT limitation, reported, not a false reject) only when the
post's acceptance demonstrably came from what RCPT cannot see: Mailman's own sender list
for the post (``msg.senders``) holds an address other than the envelope, **and** Mailman,
given the same post with the envelope as its only sender (a *twin*: ``From:`` the
envelope, no ``Reply-To:``/``Sender:``), rejects or discards it too (or the envelope is
the null sender, which Mailman never counts). Every other ``rcpt`` false reject counts.
In ``headers`` mode nothing is excused.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .generator import LOOP_KINDS, Batch, PostSpec, WorldSpec, generate
from .oracle import REFUSED, Delivery, MailmanOracle, Observation, delivery
from .verdicts import MODES, ModeVerdict, decide_all, write_config


@dataclass
class CaseResult:
    """Everything about one case, for reports and replay."""

    case_id: str
    seed: int
    world: int
    post: dict[str, Any]
    mailman: Observation
    mailman_senders: list[str]
    verdicts: dict[str, ModeVerdict]
    twin: Observation | None = None
    false_reject: dict[str, bool] = field(default_factory=dict)
    excused: dict[str, str] = field(default_factory=dict)
    """mode -> why a reject of a post Mailman let through is an RCPT limitation."""
    missed: dict[str, str] = field(default_factory=dict)
    """mode -> miss class."""

    def summary(self) -> str:
        v = {m: f"{self.verdicts[m].verdict}@{self.verdicts[m].phase}" for m in MODES}
        return (f"{self.case_id} (seed {self.seed}, world {self.world}): envelope "
                f"<{self.post['envelope']}> headers {self.post['headers']} rcpt "
                f"<{self.post['recipient']}> kinds {self.post['kinds']} | Mailman: "
                f"{self.mailman.outcome} ({self.mailman.chain} {self.mailman.chain_detail}) "
                f"senders {self.mailman_senders} | listgate {v} reasons "
                f"rcpt={self.verdicts['rcpt'].reasons} headers={self.verdicts['headers'].reasons}")


def _informative(post: PostSpec, senders: list[str]) -> bool:
    """Whether the envelope is all Mailman judged (so RCPT sees everything)."""
    return all(s == post.envelope.lower() for s in senders)


def _miss_class(mode: str, r: CaseResult, world: WorldSpec, post: PostSpec) -> str:
    verdict = r.verdicts[mode]
    reasons = " | ".join(verdict.reasons)
    if world.moderator_password and "moderator_password" in reasons:
        return "moderator_password: never rejected (an Approved: header may admit anyone)"
    if "sender decodes to" in reasons:
        return "envelope decoded (SRS/BATV/+tag) to a sender that may post; Mailman does not decode"
    if "through user's other address" in reasons and _several_subscribed(world, verdict):
        return ("a user with several subscribed addresses: listgate takes the most lenient "
                "(Mailman's order, creation order, is not visible through REST)")
    if "not rejected:" in reasons:
        return "a sender listgate cannot verify through REST is never the cause of a reject"
    if not r.mailman_senders:
        return "no valid sender: Mailman discards (no-senders); listgate judges the envelope"
    if mode == "headers" and verdict.phase == "rcpt":
        return ("accepted at RCPT and not judged at end of headers; Mailman decided on a "
                "header sender")
    if mode == "rcpt" and post.kinds.get("list-post") in LOOP_KINDS:
        return "List-Post: names the list (Mailman's loop rule), which RCPT cannot see"
    if mode == "rcpt" and not _informative(post, r.mailman_senders):
        return "Mailman refused because of a header sender, which RCPT cannot see"
    if r.mailman.chain is None and r.mailman.outcome == "discarded":
        return "Mailman never finished the post (no chain logged: shunted?)"
    return "UNEXPLAINED"


def _several_subscribed(world: WorldSpec, verdict: ModeVerdict) -> bool:
    text = " ".join(verdict.reasons)
    return any(len(u.address_subs) > 1 and any(a in text for a, _ in u.address_subs)
               for u in world.users)


def compare(r: CaseResult, world: WorldSpec, post: PostSpec) -> None:
    """Fill in false_reject / excused / missed for every mode."""
    refused = r.mailman.outcome in REFUSED
    for mode in MODES:
        v = r.verdicts[mode].verdict
        r.false_reject[mode] = False
        if v == "reject" and not refused:
            if mode == "rcpt" and not _informative(post, r.mailman_senders):
                if not post.envelope:
                    r.excused[mode] = "null envelope: Mailman never counts it as a sender"
                elif r.twin is not None and r.twin.outcome in REFUSED:
                    r.excused[mode] = (f"Mailman {r.twin.outcome} the envelope-only twin; "
                                       "accepted on a header sender")
            r.false_reject[mode] = mode not in r.excused
        elif v == "accept" and refused:
            r.missed[mode] = _miss_class(mode, r, world, post)


@dataclass
class RunStats:
    cases: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    false_rejects: dict[str, list[str]] = field(default_factory=lambda: {m: [] for m in MODES})
    missed: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {m: collections.Counter() for m in MODES})
    excused: collections.Counter[str] = field(default_factory=collections.Counter)
    rcpt_informative: int = 0
    errors: list[str] = field(default_factory=list)
    """Oracle conflicts, tempfails, sender-list disagreements: the harness's own problems."""
    sender_mismatches: list[str] = field(default_factory=list)
    """Posts where listgate.decision.senders.mailman_senders differs from Mailman's msg.senders."""
    twins: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))

    def add(self, r: CaseResult, informative: bool) -> None:
        self.cases += 1
        self.outcomes[r.mailman.outcome] += 1
        self.rcpt_informative += informative
        for mode in MODES:
            if r.false_reject[mode]:
                self.false_rejects[mode].append(r.summary())
            if mode in r.missed:
                self.missed[mode][r.missed[mode]] += 1
        for why in r.excused.values():
            self.excused[why.split(";")[0]] += 1

    def merge(self, other: RunStats) -> None:
        """Add *other*'s figures to these (a run made of several batches)."""
        self.cases += other.cases
        self.outcomes.update(other.outcomes)
        for mode in MODES:
            self.false_rejects[mode] += other.false_rejects[mode]
            self.missed[mode].update(other.missed[mode])
        self.excused.update(other.excused)
        self.rcpt_informative += other.rcpt_informative
        self.errors += other.errors
        self.sender_mismatches += other.sender_mismatches
        self.twins += other.twins
        for k, v in other.seconds.items():
            self.seconds[k] += v

    @property
    def refused(self) -> int:
        return self.outcomes["rejected"] + self.outcomes["discarded"]

    def miss_rate(self, mode: str) -> tuple[int, float, float]:
        """(misses, per refused post, per post)."""
        n = sum(self.missed[mode].values())
        return n, n / max(self.refused, 1), n / max(self.cases, 1)

    def report(self) -> str:
        lines = [f"cases: {self.cases}; Mailman outcomes: {dict(self.outcomes)}; "
                 f"refused (rejected+discarded): {self.refused}; "
                 f"decidable at RCPT (Mailman judged only the envelope): "
                 f"{self.rcpt_informative}; twins posted: {self.twins}"]
        for mode in MODES:
            n, per_refused, per_case = self.miss_rate(mode)
            lines.append(f"[{mode}] false rejects: {len(self.false_rejects[mode])}; missed "
                         f"rejects: {n} = {per_refused:.2%} of refused posts, "
                         f"{per_case:.2%} of all posts")
            for why, count in self.missed[mode].most_common():
                lines.append(f"    {count:5d}  {why}")
        if self.excused:
            lines.append("[rcpt] rejects of posts Mailman let through, excused as RCPT limits:")
            for why, count in self.excused.most_common():
                lines.append(f"    {count:5d}  {why}")
        lines.append(f"harness errors: {len(self.errors)}; sender-list mismatches: "
                     f"{len(self.sender_mismatches)}")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


class Runner:
    """Runs batches of generated cases against one oracle."""

    def __init__(self, oracle: MailmanOracle, workdir: Path) -> None:
        self.oracle = oracle
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        core = oracle.core
        self.configs = {
            mode: write_config(workdir / f"listgate-{mode}.toml", core.url, core.user,
                               core.password, mode)
            for mode in MODES
        }

    def run_batch(self, batch: Batch, stats: RunStats,
                  on_case: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
        t = time.monotonic()
        worlds = {w.index: w for w in batch.worlds}
        self.oracle.build_worlds(batch.worlds)
        stats.seconds["mailman setup"] += time.monotonic() - t

        t = time.monotonic()
        verdicts = decide_all(self.configs, batch.posts)
        stats.seconds["listgate"] += time.monotonic() - t

        t = time.monotonic()
        deliveries: list[Delivery] = [delivery(p, worlds[p.world]) for p in batch.posts]
        senders = self.oracle.senders(deliveries)
        twins = []
        for p, d in zip(batch.posts, deliveries, strict=True):
            if (not d.service and p.envelope and verdicts[p.case_id]["rcpt"].verdict == "reject"
                    and not _informative(p, senders[p.case_id])):
                twins.append(delivery(p, worlds[p.world], twin=True))
        stats.twins += len(twins)
        lmtp = self.oracle.deliver(deliveries + twins)
        observed = self.oracle.collect(deliveries + twins, lmtp)
        stats.seconds["mailman posts"] += time.monotonic() - t

        results = []
        for p in batch.posts:
            r = CaseResult(p.case_id, batch.seed, p.world, p.to_json(), observed[p.case_id],
                           senders[p.case_id], verdicts[p.case_id],
                           observed.get(f"{p.case_id}-t"))
            compare(r, worlds[p.world], p)
            stats.add(r, _informative(p, r.mailman_senders))
            self._check_harness(r, p, stats)
            results.append(r)
            if on_case is not None:
                on_case(r)
        return results

    @staticmethod
    def _check_harness(r: CaseResult, p: PostSpec, stats: RunStats) -> None:
        from .verdicts import eoh_request

        for obs in (r.mailman, r.twin):
            if obs is not None and obs.conflict:
                stats.errors.append(f"oracle conflict: {obs.conflict}: {r.summary()}")
        for mode in MODES:
            if r.verdicts[mode].verdict == "tempfail":
                stats.errors.append(f"listgate tempfail ({mode}): {r.summary()}")
        if r.mailman.outcome != "service":
            ours = [s for s in eoh_request(p).header_senders if s]
            if ours != list(dict.fromkeys(r.mailman_senders)):
                stats.sender_mismatches.append(
                    f"{r.case_id}: listgate {ours} vs Mailman {r.mailman_senders}")


def run(oracle: MailmanOracle, workdir: Path, seed: int, cases: int, *,
        batch_cases: int = 200, namespace: str | None = None,
        on_case: Callable[[CaseResult], None] | None = None,
        progress: Callable[[str], None] | None = None,
        keep_going: bool = False) -> tuple[RunStats, list[CaseResult]]:
    """Generate *cases* from *seed* and run them in batches of about *batch_cases*. With
    *keep_going*, a batch that fails (say, a REST error while building a world) is
    recorded as a harness error and the run goes on with the next batch."""
    full = generate(seed, cases, namespace=namespace)
    runner = Runner(oracle, workdir)
    stats = RunStats()
    results: list[CaseResult] = []
    by_world: dict[int, list[PostSpec]] = collections.defaultdict(list)
    for p in full.posts:
        by_world[p.world].append(p)
    chunk: list[WorldSpec] = []
    count = 0
    for w in full.worlds:
        chunk.append(w)
        count += len(by_world[w.index])
        if count >= batch_cases or w is full.worlds[-1]:
            posts = [p for cw in chunk for p in by_world[cw.index]]
            try:
                results += runner.run_batch(Batch(seed, full.namespace, chunk, posts), stats,
                                            on_case)
            except Exception as exc:
                if not keep_going:
                    raise
                stats.errors.append(f"batch of worlds {chunk[0].index}..{chunk[-1].index} "
                                    f"({len(posts)} cases) not run: {exc!r}"[:2000])
            if progress is not None:
                progress(f"{stats.cases}/{cases} cases; false rejects "
                         f"{ {m: len(v) for m, v in stats.false_rejects.items()} }; "
                         f"errors {len(stats.errors)}")
            chunk, count = [], 0
    return stats, results


def result_json(r: CaseResult) -> dict[str, Any]:
    return asdict(r)


__all__: Sequence[str] = ("CaseResult", "RunStats", "Runner", "compare", "result_json", "run")
