"""No silently ignored configuration, through the commands a postmaster runs: ``listgate
config check`` and ``listgate serve`` report every setting without effect with the same
lines (and exit 1 and 2), and both show the no-lists warning."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ListgateServe, free_port

from tests.unit.test_config_effect import NO_EFFECT, NO_LISTS_WARNING

CASES = [pytest.param(text, problems, id=case) for case, text, problems in NO_EFFECT]


def listgate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``listgate`` command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "listgate", *args], capture_output=True,
                          text=True, timeout=30, check=False)


@pytest.mark.parametrize(("text", "problems"), CASES)
def test_config_check_names_each_setting_without_effect(
    tmp_path: Path, text: str, problems: list[str]
) -> None:
    """``config check`` exits 1 with one ``listgate: FILE: key: ...`` line per problem."""
    path = tmp_path / "listgate.toml"
    path.write_text(text)
    result = listgate("config", "check", str(path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [f"listgate: {path}: {p}" for p in problems]


@pytest.mark.parametrize(("text", "problems"), CASES)
def test_serve_refuses_each_setting_without_effect(
    tmp_path: Path, text: str, problems: list[str]
) -> None:
    """``serve`` exits 2 before listening, with the very lines ``config check`` prints."""
    path = tmp_path / "listgate.toml"
    path.write_text(text)
    result = listgate("serve", "--allow-root", "--config", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"listgate: {path}: {p}" for p in problems]


def test_config_check_warns_about_a_static_map_without_lists(tmp_path: Path) -> None:
    """A static backend with no lists passes ``config check`` (exit 0) with the warning."""
    path = tmp_path / "listgate.toml"
    path.write_text('[milter]\nlisten = "inet:127.0.0.1:8890"\n')
    result = listgate("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"listgate: {path}: {NO_LISTS_WARNING}"]
    assert result.stdout.startswith(f"# {path}: OK\n")


def test_serve_warns_about_a_static_map_without_lists(
    serve_listgate: Callable[..., ListgateServe],
) -> None:
    """``serve`` starts on a static map without lists and logs the same warning, at
    WARNING, before it is ready."""
    spec = f"inet:127.0.0.1:{free_port()}"
    daemon = serve_listgate(f'[milter]\nlisten = "{spec}"\n', wait_for=(spec,))
    log = daemon.log()
    assert f" WARNING listgate: {NO_LISTS_WARNING}" in log
    assert log.index(NO_LISTS_WARNING) < log.index("listgate ready")
    assert daemon.stop() == 0
