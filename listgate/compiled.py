"""Which modules are compiled with mypyc, whether this process runs them compiled, and the
switch that runs the pure-Python sources instead.

The per-packet work of a session (the milter codec and state machine, the policy codec,
the front-end sessions, the decision core) is ordinary, ``mypy --strict`` Python that
``setup.py`` also compiles to C extension modules with mypyc; a compiled module does the
same work as its source, in about half the CPU. Each ``.py`` file stays in the package:
it is what runs where no compiler was available at install time (``setup.py`` then falls
back to pure Python and says so) and what ``LISTGATE_PURE=1`` selects.

Invariants:

- Pure and cheap: imports only the standard library; ``listgate/__init__.py`` imports it
  before any compiled module, so the switch works for the whole process.
- ``MODULES`` is the one list of compiled modules: ``setup.py`` reads it from this file
  (without importing the package) and the tests check it against what is installed.
- A compiled module never imports an uncompiled listgate class to derive from it, and is
  never monkeypatched or subclassed from Python (mypyc forbids both); the tests run on the
  compiled build, and the unit tests again with ``LISTGATE_PURE=1``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = ["MODULES", "PURE_ENV", "SourceFinder", "describe", "prefer_sources", "source_path",
           "stale", "status"]

PURE_ENV: Final = "LISTGATE_PURE"
"""Set to ``1`` to run every module from its Python source even where it was compiled."""

MODULES: Final[tuple[str, ...]] = (
    "listgate.sansio",
    "listgate.milter.codec",
    "listgate.milter.connection",
    "listgate.milter.constants",
    "listgate.milter.errors",
    "listgate.milter.messages",
    "listgate.milter.tables",
    "listgate.policyd.codec",
    "listgate.frontends.session",
    "listgate.frontends.milter",
    "listgate.frontends.policy",
    "listgate.decision",
    "listgate.decision.auth",
    "listgate.decision.engine",
    "listgate.decision.gate",
    "listgate.decision.model",
    "listgate.decision.recipients",
    "listgate.decision.rules",
    "listgate.decision.senders",
    "listgate.logline",
    "listgate.server.connection",
    "listgate.server.milter",
    "listgate.server.policy",
)
"""The modules ``setup.py`` compiles: the per-packet path of a session (layer 1) and the
one connection loop that drives it."""

_PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent


def source_path(module: str) -> Path:
    """The ``.py`` file of *module* (a package's ``__init__.py``)."""
    path = _PACKAGE_ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` sources ahead of their extension modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        source = source_path(fullname)
        if not source.is_file():
            return None
        is_package = source.name == "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, source,
            submodule_search_locations=[str(source.parent)] if is_package else None)


def prefer_sources() -> None:
    """Run the compiled modules from their ``.py`` sources in this process (idempotent;
    must run before any of them is imported)."""
    if not any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder())


def _is_compiled(module: ModuleType) -> bool:
    return not (module.__file__ or "").endswith(".py")


def status() -> str:
    """``compiled``, ``pure`` or ``mixed``: how the modules of ``MODULES`` run here."""
    states = {_is_compiled(importlib.import_module(name)) for name in MODULES}
    if states == {True}:
        return "compiled"
    return "pure" if states == {False} else "mixed"


def describe() -> str:
    """How the core runs, for the ready line: ``compiled (mypyc)``, ``pure Python``..."""
    state = status()
    if state == "compiled":
        return "compiled (mypyc)"
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"pure Python ({PURE_ENV}=1)"
    if state == "pure":
        return "pure Python (not compiled at install: more CPU per session)"
    return "partly compiled (a damaged install: reinstall listgate)"


def stale() -> list[str]:
    """Compiled modules whose source is newer than their build: a working tree edited
    since the last build (rebuild with ``pip install -e .``). mypyc puts the code of every
    module in one shared library and leaves a small per-module library that loads it; a
    module is as new as the newer of the two."""
    built: dict[str, float] = {}
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and not origin.endswith(".py"):
            built[name] = Path(origin).stat().st_mtime
    if not built:
        return []
    importlib.import_module(next(iter(built)))  # loads the shared library
    shared = [Path(file).stat().st_mtime for name, module in list(sys.modules.items())
              if name.endswith("__mypyc") and (file := getattr(module, "__file__", None))]
    newest_shared = max(shared, default=0.0)
    return [name for name, mtime in built.items()
            if source_path(name).stat().st_mtime > max(mtime, newest_shared)]

if os.environ.get(PURE_ENV, "") not in ("", "0"):
    prefer_sources()
