"""The differential suite learns time (``timeline``): worlds change between listgate's
first look and the posts, and Mailman's verdict after the change is the truth for posts
made ``reject_max_age`` later. CI runs a small fixed-seed part; the long run is
``tests/fidelity/run.py --timeline`` (docs/fidelity.md)."""

from __future__ import annotations

import os

import pytest

from .oracle import MailmanOracle
from .timeline import run_timeline
from .verdicts import MODES

SEED = 20261203
CASES = int(os.environ.get("LISTGATE_FIDELITY_TIMELINE_CASES", "60"))


def test_no_false_reject_after_a_change(oracle: MailmanOracle,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every world changes once after listgate cached its facts: zero false rejects in
    both modes reject_max_age later, every change was made, and some verdicts turned
    (so the cache really had to follow)."""
    out, results = run_timeline(oracle, tmp_path_factory.mktemp("timeline"), SEED, CASES)
    s = out.stats
    replay = (f"seed {SEED} ({CASES} cases); replay: .venv/bin/python tests/fidelity/run.py "
              f"--timeline --seed {SEED} --cases {CASES}")
    print(f"\ntimeline: {replay}\nchanges {out.changes}; verdicts turned {out.turned}\n"
          f"{s.report()}")
    problems = [f"FALSE REJECT ({mode}): {line}" for mode in MODES
                for line in s.false_rejects[mode]]
    problems += [f"HARNESS: {e}" for e in s.errors]
    problems += [f"CHANGE NOT MADE: {c}" for c in out.failed_changes]
    assert not problems, f"{replay}\n{s.report()}\n" + "\n".join(problems)
    assert len(results) == CASES
    assert sum(out.turned.values()) > 0, out.turned
