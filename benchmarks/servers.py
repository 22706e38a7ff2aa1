"""Milter servers under test (listgate, the pymilter comparator) as child processes, and a
sampler of their CPU time and memory from /proc (whole process tree: listgate's worker
processes and pymilter's threads count)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

PURE_ENV = "LISTGATE_PURE"
"""listgate.compiled.PURE_ENV (spelled out: the benchmark also runs older listgates)."""

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                out += [int(c) for c in kids.split()]
    return out


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of *pids* (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: Iterable[int]) -> int:
    """Memory of *pids*: the RSS of a single process; for several (listgate's supervisor
    and workers, which share pages after fork) the sum of their PSS, which counts each
    shared page once."""
    pids = list(pids)
    if len(pids) == 1:
        with contextlib.suppress(OSError, IndexError):
            return int(Path(f"/proc/{pids[0]}/statm").read_text().split()[1]) * _PAGE
        return 0
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class Sampler:
    """CPU and peak RSS of a process tree over a measurement window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_pct = 0.0
        self.rss_peak = 0
        self._t0 = 0.0
        self._c0 = 0.0

    def begin(self) -> None:
        self._pids = process_tree(self.pid)
        self._t0 = time.monotonic()
        self._c0 = cpu_seconds(self._pids)
        self.rss_peak = rss_bytes(self._pids)

    def wait_until(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.25, left))
            self.rss_peak = max(self.rss_peak, rss_bytes(self._pids))

    def end(self) -> None:
        elapsed = time.monotonic() - self._t0
        self.cpu_pct = 100.0 * (cpu_seconds(self._pids) - self._c0) / elapsed
        self.rss_peak = max(self.rss_peak, rss_bytes(self._pids))


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def raise_nofile(limit: int = 20000) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, limit)) if hard != resource.RLIM_INFINITY else max(soft, limit)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Server:
    """A child process listening on 127.0.0.1:*port*."""

    name = "server"

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}-{port}.log"

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: ours)."""
        return None

    def start(self) -> None:
        raise_nofile()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.command()), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=ROOT, env=self.environment(),
            )
        wait_port(self.port, self.proc, self.name)
        time.sleep(0.2)  # let worker processes (if any) bind too

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Listgate(Server):
    name = "listgate"

    def __init__(
        self, port: int, workdir: Path, *, list_address: str, allowed: Sequence[str],
        extra: str = "", log_level: str | None = "warning", workers: int | None = None,
        uvloop: bool | None = None, mailman: str | None = None,
        policy_port: int | None = None, max_connections: int | None = 15000,
        pure: bool = False,
    ) -> None:
        super().__init__(port, workdir)
        self.pure = pure
        """Run the core from its Python sources (LISTGATE_PURE=1), not the compiled build."""
        self.policy_port = policy_port
        """Also a [policy] listener (Postfix check_policy_service) on this port."""
        self.config = workdir / f"listgate-{port}.toml"
        lines = [
            "[milter]",
            f'listen = "inet:127.0.0.1:{port}"',
        ]
        if max_connections is not None:
            lines.append(f"max_connections = {max_connections}")
        if workers is not None:
            lines.append(f"workers = {workers}")
        if uvloop is not None:
            lines.append(f"uvloop = {'true' if uvloop else 'false'}")
        if policy_port is not None:
            lines += ["", "[policy]", f'listen = "inet:127.0.0.1:{policy_port}"']
        if log_level is not None:  # None: the shipped default (info)
            lines += ["", "[log]", f'level = "{log_level}"', ""]
        if mailman is None:
            lines += ["[static.posters]",
                      f"{toml_str(list_address)} = [" + ", ".join(map(toml_str, allowed)) + "]"]
        else:
            lines.append(mailman)
        lines.append(extra)
        self.config.write_text("\n".join(lines) + "\n")

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "listgate", "serve", "--config", str(self.config),
                "--allow-root"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
        if self.pure:
            env[PURE_ENV] = "1"
        return env


class Pymilter(Server):
    name = "pymilter"

    def __init__(self, port: int, workdir: Path, *, list_address: str,
                 allowed: Sequence[str]) -> None:
        super().__init__(port, workdir)
        self.allowed = workdir / f"allowed-{port}.txt"
        self.allowed.write_text("\n".join(allowed) + "\n")
        self.list_address = list_address

    def command(self) -> Sequence[str]:
        return [sys.executable, str(BENCH / "pymilter_gate.py"), str(self.port),
                self.list_address, str(self.allowed)]


class NullMilter(Server):
    """benchmarks/nullmilter.c: a C milter that answers OPTNEG with listgate's own
    negotiation and CONTINUEs every RCPT and EOM (the floor of what any milter costs)."""

    name = "nullmilter"

    def __init__(self, port: int, workdir: Path, binary: Path, optneg_reply: bytes,
                 *, accept_rcpt: bool = False) -> None:
        super().__init__(port, workdir)
        self.binary = binary
        self.optneg_reply = optneg_reply
        self.accept_rcpt = accept_rcpt
        """Answer RCPT with ACCEPT (the MTA skips the rest of the transaction)."""

    @classmethod
    def build(cls, workdir: Path) -> Path | None:
        """Compile nullmilter.c into *workdir*; None without a C compiler."""
        return build_c("nullmilter", workdir)

    def command(self) -> Sequence[str]:
        if not self.optneg_reply:
            return [str(self.binary), str(self.port), "policy"]
        return [str(self.binary), str(self.port), self.optneg_reply.hex(),
                *(["accept-rcpt"] if self.accept_rcpt else [])]


class PyFloor(Server):
    """benchmarks/pyfloor.py: a uvloop Protocol in Python that answers with fixed bytes
    (listgate's negotiation, CONTINUE to RCPT and EOM), one process per core: the floor
    of what any Python milter costs; with an empty negotiation, the floor of a Python
    policy server (DUNNO to every request)."""

    name = "pyfloor"

    def __init__(self, port: int, workdir: Path, optneg_reply: bytes) -> None:
        super().__init__(port, workdir)
        self.optneg_reply = optneg_reply

    def command(self) -> Sequence[str]:
        return [sys.executable, str(BENCH / "pyfloor.py"), str(self.port),
                self.optneg_reply.hex() if self.optneg_reply else "policy"]


def build_c(name: str, workdir: Path) -> Path | None:
    """Compile benchmarks/NAME.c with ``cc -O2`` into *workdir*; None without a C
    compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = workdir / name
    subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / f"{name}.c")], check=True)
    return out


def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="lg-bench-", dir="/tmp"))
    path.chmod(0o755)
    return path
