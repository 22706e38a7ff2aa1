"""Build step for what pyproject.toml cannot say: compile the per-packet cores with mypyc.

The modules of ``listgate.compiled.MODULES`` are built as C extension modules next to
their sources; everything else (and every ``.py`` file) is installed as usual. Without a
working C compiler, or with ``LISTGATE_COMPILE=0``, the build falls back to pure Python and
says so: listgate then works the same, at more CPU per session (docs/performance.md).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """``MODULES`` from listgate/compiled.py, read without importing the package."""
    tree = ast.parse((HERE / "listgate" / "compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "MODULES":
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: listgate/compiled.py has no MODULES")


def module_file(name: str) -> str:
    path = Path(*name.split("."))
    return str(path / "__init__.py") if (HERE / path).is_dir() else str(path.with_suffix(".py"))


class OptionalBuildExt(build_ext):
    """build_ext that installs pure Python when the C build fails (no compiler, no
    Python.h): it removes whatever it had built, so no half-compiled core is installed."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            sys.stderr.write(
                f"listgate: could not compile the core ({exc}); installing pure Python "
                "(the same behaviour, more CPU per session)\n")
            return
        # A library left as it was (its C unchanged) still dates from this build:
        # listgate.compiled.stale compares build and source times.
        for ext in self.extensions:
            Path(self.get_ext_fullpath(ext.name)).touch()


def ext_modules() -> list[object]:
    if os.environ.get("LISTGATE_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.stderr.write("listgate: mypyc is not available; installing pure Python\n")
        return []
    old = Path.cwd()
    os.chdir(HERE)
    try:
        # One shared library with a fixed name (listgate__mypyc): an editable install maps
        # that name, so rebuilding after the module list changed still finds it.
        # --no-site-packages: the analysis sees the standard library and listgate only,
        # as in pip's isolated build environment, wherever it runs (a compiled module
        # that reached a third-party package would compile here and fail there).
        return list(mypycify(["--no-site-packages",
                              *(module_file(m) for m in compiled_modules())],
                             opt_level="3", group_name="listgate", debug_level="0"))
    except (Exception, SystemExit) as exc:  # mypy's analysis failed (it printed why)
        sys.stderr.write(f"listgate: mypyc could not translate the core ({exc!r}); "
                         "installing pure Python\n")
        return []
    finally:
        os.chdir(old)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
