"""A short run of each atheris harness (fuzz/*.py), seeded from the Postfix captures: the
harnesses keep working and find nothing in a few thousand inputs. The long runs (at least
1,000,000 inputs each) are recorded in docs/reliability.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS = 3000


@pytest.mark.parametrize("harness", ["milter_codec", "policy_codec"])
def test_harness_runs_clean(harness: str, tmp_path: Path) -> None:
    """RUNS inputs, exit 0, no crash or hang artifact, and the corpus was seeded."""
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "fuzz" / f"{harness}.py"), f"-runs={RUNS}",
         "-timeout=10", "-rss_limit_mb=1024", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(rf"^Done {RUNS} runs in \d+ second", out, re.MULTILINE), out[-4000:]
    assert "INFO: seed corpus: files:" in out
    assert not list(tmp_path.glob("crash-*"))
    assert not list(tmp_path.glob("timeout-*"))
    assert len(list(corpus.iterdir())) >= 10
