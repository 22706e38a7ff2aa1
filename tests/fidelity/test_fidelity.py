"""The differential suite: listgate against Mailman itself, on generated cases.

Every run: ``FIXED_CASES`` (300) cases from the fixed seed, plus ``RANDOM_CASES`` (100)
from a seed drawn anew each run and printed (``-s`` shows it; every failure message carries
it). Replay any seed with::

    .venv/bin/python tests/fidelity/run.py --seed SEED --cases N

Environment: ``LISTGATE_FIDELITY_SEED`` fixes the "random" seed, ``LISTGATE_FIDELITY_CASES``
and ``LISTGATE_FIDELITY_RANDOM_CASES`` change the counts.

Fails on: any false reject in either mode (see ``suite`` for what an RCPT limitation is),
an oracle conflict (what Mailman visibly did contradicts the chain it logged), a tempfail,
and any post whose sender list listgate computes differently from Mailman's own code.
Missed rejects are counted and classified, never a failure (listgate rejects only what it
is sure of); an unexplained miss class is printed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from .oracle import MailmanOracle
from .suite import CaseResult, RunStats, result_json, run
from .verdicts import MODES, auth_decisions, cli_check, eoh_decisions, from_only

FIXED_SEED = 20261125
FIXED_CASES = int(os.environ.get("LISTGATE_FIDELITY_CASES", "300"))
RANDOM_CASES = int(os.environ.get("LISTGATE_FIDELITY_RANDOM_CASES", "100"))
RANDOM_SEED = int(os.environ.get("LISTGATE_FIDELITY_SEED")
                  or random.SystemRandom().randrange(1, 1 << 32))
CLI_SAMPLE = 12


@dataclass
class Run:
    seed: int
    cases: int
    stats: RunStats
    results: list[CaseResult]
    workdir: Path

    @property
    def replay(self) -> str:
        return (f"seed {self.seed} ({self.cases} cases); replay: .venv/bin/python "
                f"tests/fidelity/run.py --seed {self.seed} --cases {self.cases}")


def _run(oracle: MailmanOracle, workdir: Path, seed: int, cases: int) -> Run:
    print(f"\nfidelity: seed {seed}, {cases} cases")
    stats, results = run(oracle, workdir, seed, cases, progress=lambda s: print("  " + s))
    out = Run(seed, cases, stats, results, workdir)
    with (workdir / "results.jsonl").open("w") as fh:
        for r in results:
            fh.write(json.dumps(result_json(r), default=str) + "\n")
    print(f"fidelity: {out.replay}\n{stats.report()}")
    return out


@pytest.fixture(scope="module")
def fixed_run(oracle: MailmanOracle, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(oracle, tmp_path_factory.mktemp("fidelity-fixed"), FIXED_SEED, FIXED_CASES)


@pytest.fixture(scope="module")
def random_run(oracle: MailmanOracle, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(oracle, tmp_path_factory.mktemp("fidelity-random"), RANDOM_SEED, RANDOM_CASES)


def _check(r: Run) -> None:
    s = r.stats
    problems = []
    for mode in MODES:
        for line in s.false_rejects[mode]:
            problems.append(f"FALSE REJECT ({mode}): {line}")
    problems += [f"HARNESS: {e}" for e in s.errors]
    problems += [f"SENDERS DIFFER: {m}" for m in s.sender_mismatches]
    unexplained = [f"{mode}: {c.summary()}" for c in r.results for mode, why in c.missed.items()
                   if why == "UNEXPLAINED"]
    if unexplained:
        print("unexplained missed rejects:\n  " + "\n  ".join(unexplained))
    assert not problems, f"{r.replay}\n{s.report()}\n" + "\n".join(problems)
    assert s.cases == r.cases


def test_fixed_seed(fixed_run: Run) -> None:
    """300 cases from the fixed seed: zero false rejects in rcpt and headers mode; every
    kind of Mailman outcome occurs (so the oracle really tells them apart)."""
    _check(fixed_run)
    seen = {k for k, v in fixed_run.stats.outcomes.items() if v}
    assert {"accepted", "held", "rejected", "discarded", "service"} <= seen, fixed_run.replay


def test_random_seed(random_run: Run) -> None:
    """A new seed every run (printed): zero false rejects in both modes."""
    _check(random_run)


def test_listgate_check_agrees(fixed_run: Run, oracle: MailmanOracle) -> None:
    """``listgate check`` (a subprocess, the same config) gives the verdicts the in-process
    gate gave, for a sample of the fixed run: without ``--from`` the RCPT verdict, with
    ``--from`` (posts whose sender headers are all From:) the end-of-headers verdict."""
    from .generator import generate

    batch = generate(FIXED_SEED, FIXED_CASES)
    posts = {p.case_id: p for p in batch.posts}
    rng = random.Random(FIXED_SEED)
    sample = rng.sample([r for r in fixed_run.results], CLI_SAMPLE)
    rcpt_config = fixed_run.workdir / "listgate-rcpt.toml"
    eoh = eoh_decisions(rcpt_config, [posts[r.case_id] for r in sample])
    mismatches = []
    for r in sample:
        post = posts[r.case_id]
        got = cli_check(rcpt_config, post, with_headers=False)
        if got["verdict"] != r.verdicts["rcpt"].verdict:
            mismatches.append(f"{r.case_id} rcpt: check {got} vs gate {r.verdicts['rcpt']}")
        if from_only(post):
            got = cli_check(rcpt_config, post, with_headers=True)
            want = eoh[r.case_id]
            if got["verdict"] != want.verdict or got["reasons"] != want.reasons:
                mismatches.append(f"{r.case_id} --from: check {got} vs gate {want}")
    assert not mismatches, "\n".join(mismatches)


AUTH_SAMPLE = int(os.environ.get("LISTGATE_FIDELITY_AUTH_CASES", "150"))


def test_require_authenticated(fixed_run: Run) -> None:
    """The same lists with require_authenticated (results given, no DNS), on a sample of
    the fixed run's posts to lists: an authenticated poster (envelope by SPF, every From:
    by an aligned DKIM signature) whose post has no Reply-To:/Sender: gets exactly the
    verdict of the list without the option (zero false rejects); a post that only a
    member made acceptable is refused when nothing is proven (a forged member post),
    unless the list's own nonmember rules admit it."""
    from .generator import generate

    batch = generate(FIXED_SEED, FIXED_CASES)
    posts = [p for p in batch.posts if p.kinds.get("recipient", "").startswith("posting")]
    posts = posts[:AUTH_SAMPLE]
    verdicts = auth_decisions(fixed_run.workdir / "listgate-headers.toml", posts)
    false_rejects, forged_refused, forged_admitted = [], 0, []
    for post in posts:
        v = verdicts[post.case_id]
        plain = "reply-to" not in post.kinds and "sender" not in post.kinds
        if plain and v["authenticated"].verdict != v["baseline"].verdict:
            false_rejects.append(f"{post.case_id} {post.kinds}: {v}")
        member_made = v["baseline"].verdict == "accept" and any(
            r.startswith("member ") for r in v["baseline"].reasons)
        if member_made:
            if v["forged"].verdict == "reject":
                forged_refused += 1
                assert "not authenticated" in (v["forged"].reply or ""), v
            elif any(r.startswith("member ") for r in v["forged"].reasons):
                forged_admitted.append(f"{post.case_id}: {v['forged']}")
    print(f"require_authenticated: {len(posts)} posts; forged member posts refused: "
          f"{forged_refused}")
    assert not false_rejects, "\n".join(false_rejects)
    assert not forged_admitted, "\n".join(forged_admitted)
    assert forged_refused > 0
