"""Building listgate (setup.py): where the core cannot be compiled, the wheel is pure
Python and the build says why; it never ships a half-compiled core."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO_ROOT


def _build_wheel(tmp_path: Path, **env: str) -> tuple[list[str], str]:
    """Build a wheel of a copy of the checkout (without its build products) with *env*;
    the names in the wheel and the build's output."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for name in ("listgate", "man"):
        shutil.copytree(REPO_ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = out.glob("listgate-*.whl")
    return zipfile.ZipFile(wheel).namelist(), proc.stdout + proc.stderr


@pytest.mark.parametrize(("env", "said"), [
    ({"CC": "false"}, "listgate: could not compile the core"),
    ({"LISTGATE_COMPILE": "0"}, ""),
], ids=["no-working-compiler", "LISTGATE_COMPILE=0"])
def test_wheel_without_a_compiled_core_is_whole_pure_python(
        tmp_path: Path, env: dict[str, str], said: str) -> None:
    """No C compiler (CC=false makes every compile fail), or LISTGATE_COMPILE=0: the wheel
    still builds, holds every source of the compiled modules and no extension module at
    all (not even mypyc's shared library), and a failed compile is reported."""
    names, output = _build_wheel(tmp_path, **env)
    assert [n for n in names if n.endswith(".so")] == []
    assert {"listgate/compiled.py", "listgate/milter/connection.py",
            "listgate/server/connection.py", "listgate/decision/engine.py"} <= set(names)
    assert said in output
