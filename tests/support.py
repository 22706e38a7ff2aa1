"""Plain helpers shared by every test package: free loopback ports, polling, and
``listgate serve`` as a child process.

pytest puts tests/ on sys.path (tests/ has no ``__init__.py``), so helper modules import
this one as the top-level module ``support``; ``tests/conftest.py`` turns the most used
ones into fixtures.

Invariants:
- Everything listens on loopback only (127.0.0.1 / ::1).
- No helper sleeps for correctness: waits are polls bounded by a timeout, and a timeout
  is an ``AssertionError`` that says what was awaited.
- A ``ListgateServe`` runs in its own session and never outlives its test: ``stop``
  drains it with SIGTERM and kills it if it does not exit in time.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Self, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "listgate ready"
"""What ``listgate serve`` logs once every listener is up."""

T = TypeVar("T")


def source_modules(*names: str) -> dict[str, ModuleType]:
    """Fresh copies of listgate modules *names* run from their ``.py`` sources, even where
    the installed ones are compiled (``listgate.compiled``), with the compiled modules they
    import run from source too: e.g. to subclass one in a test, which mypyc forbids for a
    compiled class. ``sys.modules`` and the packages' attributes are left as they were."""
    from listgate.compiled import MODULES, SourceFinder

    saved = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    finder = SourceFinder()
    sys.meta_path.insert(0, finder)
    try:
        return {name: importlib.import_module(name) for name in names}
    finally:
        sys.meta_path.remove(finder)
        for name in MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        for name, module in saved.items():
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on *host* a moment ago (bind port 0, read it back, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll *probe* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}{extra}")
        time.sleep(interval)


def accepts_connections(spec: str) -> bool:
    """True if something accepts a connection on the listen *spec* (unix:, inet:, inet6:)."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(rest)
            return True
        if kind == "inet6":
            addr, _, port = rest[1:].partition("]:")
            with socket.create_connection((addr, int(port)), timeout=1):
                return True
        host, _, port = rest.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def listgate_command() -> list[str]:
    """How to run listgate: ``python -m listgate`` with this interpreter.

    ``LISTGATE_E2E_COMMAND`` replaces that prefix (shell words), e.g. to point the suite at
    an installed ``listgate`` script; the suite still passes ``serve --config FILE``.
    """
    override = os.environ.get("LISTGATE_E2E_COMMAND")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "listgate"]


class ListgateServe:
    """``listgate serve --allow-root --config FILE`` as a child process in its own
    session, its stdout and stderr appended to ``workdir/listgate.stderr``.

    ``start`` waits until every spec in *wait_for* accepts connections and, with
    *ready_line*, until that line is logged; a process that exits first fails the wait
    with its log. *nofile* and *umask* are applied in the child before it runs.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        wait_for: Sequence[str] = (),
        ready_line: str | None = READY_LINE,
        nofile: int | None = None,
        umask: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "listgate.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / "listgate.stderr"
        self.wait_for = tuple(wait_for)
        """listen specs ("inet:127.0.0.1:P" or "unix:/path") to wait for at start."""
        self.ready_line = ready_line
        self.nofile = nofile
        self.umask = umask
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def command(self) -> list[str]:
        """The full command line."""
        return [*listgate_command(), "serve", "--allow-root", "--config", str(self.config_path)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """What the process logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _preexec(self) -> None:
        if self.nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile, hard), hard))
        if self.umask is not None:
            os.umask(self.umask)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"listgate exited early with rc {self.proc.returncode}: {self.command}\n"
                f"--- listgate stderr ---\n{self.log()}"
            )
        if self.ready_line is not None and self.ready_line not in self.log():
            return False
        return all(accepts_connections(spec) for spec in self.wait_for)

    def start(self, timeout: float = 30.0) -> Self:
        """Start the process and wait until it is ready (see the class docstring)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=self._preexec,
            )
        try:
            wait_until(
                self._ready, timeout, f"listgate serve to be ready on {list(self.wait_for)}",
                interval=0.02,
                detail=lambda: f"command: {self.command}\n--- listgate stderr ---\n{self.log()}",
            )
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 15.0, *, must_exit: bool = False) -> int | None:
        """SIGTERM (drain) and wait up to *timeout* s, then SIGKILL; the exit status.
        With *must_exit*, needing SIGKILL is an ``AssertionError``."""
        if self.proc is None:
            return self.returncode
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                self.returncode = proc.returncode
                if must_exit:
                    raise AssertionError(
                        f"listgate did not exit within {timeout} s of SIGTERM (killed)\n"
                        f"--- listgate stderr ---\n{self.log()}"
                    ) from None
        self.returncode = proc.returncode
        return self.returncode

    def kill(self) -> None:
        """SIGKILL at once (after a failed start or a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self.returncode = self.proc.returncode
        self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill() if exc[0] is not None else self.stop()
