"""The milter benchmark still runs: ``benchmarks/milter_load.py --smoke`` starts listgate
(the shipped defaults: workers "auto", uvloop), the pymilter comparator and the C null
milter, drives them with the native generator (``miltergen.c``) for the headline tables
and with the Python generator for the static table, and prints the tables with ratios.

No timing is asserted here (CI machines are shared and small); the figures are in
docs/performance.md. What is asserted: the run exits 0, the table is there with a row per
cell, every reply was the expected verdict, and idle connections were held.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_milter_benchmark_smoke_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "milter_load.py"), "--smoke"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "## static backend" in out, out[-4000:]
    assert "## milter: shipped defaults vs pymilter vs the C null milter" in out, out[-4000:]
    assert re.search(r"^\| 10 \| listgate \| [\d,]+ \| \d+\.\d\dx \|", out, re.MULTILINE), (
        out[-4000:])
    assert "## policy: shipped defaults" in out, out[-4000:]
    header = next((line for line in out.splitlines() if line.startswith("| conc | rcpt |")), "")
    assert "listgate RCPT/s" in header, out[-4000:]
    assert "pymilter RCPT/s" in header, out[-4000:]
    assert "ratio" in header, out[-4000:]
    rows = re.findall(r"^\| 10 \| ([12]) \| .*\*\*\d+\.\d\dx\*\*", out, re.MULTILINE)
    assert rows == ["1", "2"], out[-4000:]
    assert "  ! " not in out, out[-4000:]  # no errors, no wrong verdicts
    assert re.search(r"^200 of 200 held open", out, re.MULTILINE), out[-4000:]
