"""The compiled core (listgate.compiled, setup.py): what is compiled, the switch to the
sources, and that the suite tests the build it claims to."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

from support import REPO_ROOT, source_modules

from listgate import compiled

PURE = os.environ.get(compiled.PURE_ENV, "") not in ("", "0")


def _run(code: str, **env: str) -> str:
    """*code*'s output in a fresh interpreter started outside the checkout (as a daemon
    is: the compiled core must not depend on the current directory)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}, cwd="/").stdout.strip()


def test_the_install_under_test_is_compiled_unless_the_sources_were_asked_for() -> None:
    """The test command compiles the core (it installs the compiler): a build that fell
    back to pure Python fails here instead of passing the suite untested."""
    assert compiled.status() == ("pure" if PURE else "compiled")
    assert compiled.stale() == []


def test_pure_switch_runs_every_compiled_module_from_its_source() -> None:
    """LISTGATE_PURE=1 in a fresh interpreter: every module of MODULES comes from its .py
    file and the ready line's wording says why."""
    code = ("import importlib, listgate.compiled as c; "
            "print([importlib.import_module(m).__file__ for m in c.MODULES]); "
            "print(c.status()); print(c.describe())")
    files, status, described = _run(code, LISTGATE_PURE="1").splitlines()
    assert all(f.endswith(".py") for f in ast.literal_eval(files))
    assert status == "pure"
    assert described == "pure Python (LISTGATE_PURE=1)"


def test_without_the_switch_the_modules_are_the_extension_modules() -> None:
    """Without LISTGATE_PURE every module of MODULES is an extension module (the shipped
    build), and the ready line says so."""
    out = _run("import listgate.compiled as c; print(c.status(), c.describe())",
               **{compiled.PURE_ENV: ""})
    assert out == "compiled compiled (mypyc)"


def test_setup_compiles_exactly_the_listed_modules_and_they_exist() -> None:
    """setup.py reads MODULES from listgate/compiled.py (one list); each names a source
    file, and none is a module mypyc cannot compile (facts.py, errors)."""
    namespace: dict[str, object] = {"__file__": str(REPO_ROOT / "setup.py")}
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    wanted = (ast.FunctionDef, ast.Import, ast.ImportFrom, ast.Assign)  # not setup() itself
    body = [node for node in tree.body if isinstance(node, wanted)]
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), namespace)
    assert namespace["compiled_modules"]() == list(compiled.MODULES)  # type: ignore[operator]
    for name in compiled.MODULES:
        assert compiled.source_path(name).is_file(), name
    assert not {"listgate.decision.facts", "listgate.policyd.errors"} & set(compiled.MODULES)


def test_stale_names_a_module_whose_source_is_newer_than_its_build(tmp_path: Path) -> None:
    """A source edited after the build is reported (the suite then refuses to start);
    touching the source of a compiled module and asking in a fresh interpreter says so."""
    if PURE:
        assert compiled.stale() == []  # sources are never stale
        return
    source = compiled.source_path("listgate.decision.rules")
    before = source.stat()
    try:
        os.utime(source, (before.st_atime, time.time() + 3600))  # after any build
        assert _run("import listgate.compiled as c; print(c.stale())") == \
            "['listgate.decision.rules']"
    finally:
        os.utime(source, (before.st_atime, before.st_mtime))
    assert _run("import listgate.compiled as c; print(c.stale())") == "[]"


def test_source_modules_gives_subclassable_copies_and_leaves_the_package_alone() -> None:
    """support.source_modules: a source copy can be subclassed whatever the build, and
    sys.modules and the package attribute still hold the installed module afterwards."""
    import listgate.policyd as policyd_package
    import listgate.policyd.codec as installed

    copy = source_modules("listgate.policyd.codec")["listgate.policyd.codec"]

    class Sub(copy.PolicyConnection):  # type: ignore[misc,name-defined]
        __slots__ = ()

    assert copy is not installed
    assert copy.__file__.endswith(".py")
    assert Sub().buffered == 0
    assert sys.modules["listgate.policyd.codec"] is installed
    assert policyd_package.codec is installed
