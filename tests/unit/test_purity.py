"""The layers' import rules, read from the source: the pure cores import nothing that does
I/O, keeps time or runs concurrently, and configuration is a leaf.

Pure cores (every module, found by globbing, so new modules are checked too):
``listgate/milter/*``, ``listgate/policyd/*``, ``listgate/decision/*`` except ``gate.py``
(it awaits the fact source), ``listgate/frontends/*``, ``listgate/listen.py`` and
``listgate/errors.py``. They may not import (directly, as a module or from it):

- I/O and concurrency: asyncio, socket, ssl, select, selectors, signal, subprocess,
  threading, multiprocessing, concurrent, os, io, pathlib, shutil, tempfile, sys,
  importlib, http, urllib.request, logging (a core returns what happened; the caller
  logs it);
- clocks and chance: time, datetime, random, secrets;
- the I/O libraries listgate uses: httpx, httpcore, mailmanclient, prometheus_client,
  uvloop;
- the layers above: listgate.server, listgate.facts, listgate.mailman,
  listgate.app, listgate.cli, listgate.metrics, listgate.log, listgate.config;

and may not call the builtins that do I/O or load code: open, print, input, exec, eval,
compile, __import__.

``listgate/config.py`` reads one file and a password file, so os, stat, tomllib and
logging's level names are allowed there; it may not import the concurrency and network
modules above, logging.handlers, the I/O libraries, or any layer above it other than
``listgate.log``'s constants. A fresh interpreter that imports it must not have loaded
asyncio, prometheus_client, httpx, httpcore or mailmanclient.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "listgate"

IO_AND_CONCURRENCY = (
    "asyncio", "socket", "ssl", "select", "selectors", "signal", "subprocess", "threading",
    "multiprocessing", "concurrent", "http", "urllib.request",
)
IO_LIBRARIES = ("httpx", "httpcore", "mailmanclient", "prometheus_client", "uvloop")
UPPER_LAYERS = (
    "listgate.server", "listgate.facts", "listgate.mailman",
    "listgate.app", "listgate.cli", "listgate.metrics",
)
PURE_FORBIDDEN = (
    *IO_AND_CONCURRENCY, *IO_LIBRARIES, *UPPER_LAYERS,
    "os", "io", "pathlib", "shutil", "tempfile", "sys", "importlib", "logging",
    "time", "datetime", "random", "secrets", "listgate.log", "listgate.logline",
    "listgate.config",
)
CONFIG_FORBIDDEN = (*IO_AND_CONCURRENCY, *IO_LIBRARIES, *UPPER_LAYERS, "logging.handlers")
IO_BUILTINS = frozenset({"open", "print", "input", "exec", "eval", "compile", "__import__"})


def pure_modules() -> list[Path]:
    """Every module of the pure cores, as files (found by glob)."""
    found = [
        *PACKAGE.glob("milter/*.py"),
        *PACKAGE.glob("policyd/*.py"),
        *(p for p in PACKAGE.glob("decision/*.py") if p.name != "gate.py"),
        *PACKAGE.glob("frontends/*.py"),
        PACKAGE / "listen.py",
        PACKAGE / "errors.py",
    ]
    return sorted(found)


def module_name(path: Path) -> str:
    """``listgate/milter/codec.py`` -> ``listgate.milter.codec``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, source: str | None = None) -> set[str]:
    """Every module *path* (or *source*, read as if it were at *path*) imports, absolute,
    with ``from m import x`` also giving ``m.x`` (x may be a submodule)."""
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    """The imports of *path* that are, or are inside, a forbidden module."""
    return sorted(
        name for name in imported_names(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def io_calls(path: Path) -> list[str]:
    """Calls of builtins that do I/O or load code, as "name (line N)"."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{node.func.id} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in IO_BUILTINS
    ]


def test_the_glob_finds_the_pure_cores() -> None:
    """The purity checks below run over the modules they are meant to (not over nothing)."""
    names = {module_name(p) for p in pure_modules()}
    assert {"listgate.milter.codec", "listgate.milter.connection", "listgate.policyd.codec",
            "listgate.decision.engine", "listgate.decision.rules",
            "listgate.frontends.milter", "listgate.listen"} <= names
    assert "listgate.decision.gate" not in names


@pytest.mark.parametrize("path", pure_modules(), ids=module_name)
def test_pure_module_imports_nothing_that_does_io(path: Path) -> None:
    """A pure core module imports no I/O, clock, concurrency or upper-layer module."""
    assert forbidden_imports(path, PURE_FORBIDDEN) == []


@pytest.mark.parametrize("path", pure_modules(), ids=module_name)
def test_pure_module_calls_no_io_builtin(path: Path) -> None:
    """A pure core module never calls open/print/input/exec/eval/compile/__import__."""
    assert io_calls(path) == []


def test_config_is_a_leaf() -> None:
    """config.py imports no server, metrics or backend module, and no network module."""
    assert forbidden_imports(PACKAGE / "config.py", CONFIG_FORBIDDEN) == []


def test_importing_config_loads_no_io_library() -> None:
    """A fresh interpreter importing listgate.config has not loaded asyncio,
    prometheus_client, httpx, httpcore, mailmanclient or a layer above config."""
    watched = ["asyncio", "prometheus_client", "httpx", "httpcore", "mailmanclient",
               *UPPER_LAYERS]
    code = ("import sys, listgate.config\n"
            f"print(sorted(m for m in {watched!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("source", [
    "import asyncio", "import logging.handlers", "from listgate.server import base",
    "from listgate import metrics", "from time import monotonic", "from ..log import printable",
])
def test_the_check_catches_a_forbidden_import(source: str) -> None:
    """The import reader sees each form of a forbidden import (so the checks can fail)."""
    names = imported_names(PACKAGE / "decision" / "probe.py", source)
    assert any(any(n == f or n.startswith(f + ".") for f in PURE_FORBIDDEN) for n in names)
