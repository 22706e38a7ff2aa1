"""listgate against pymilter (libmilter) under a Postfix-like milter load, side by side.

One command runs everything and prints the tables (see docs/performance.md):

  .venv/bin/python benchmarks/milter_load.py            # full run, about 8 minutes
  .venv/bin/python benchmarks/milter_load.py --smoke    # CI: a few seconds, static only

1. Throughput and latency, static backend: listgate (``[static.posters]``, 1,000 allowed
   senders) and the pymilter gate (``benchmarks/pymilter_gate.py``, the same 1,000 in a
   set) run at the same time; the load (``benchmarks/loadgen.py``) alternates between
   them, cell by cell, ``--rounds`` times. Cells: concurrency 10, 100, 1,000 x 1 and 5
   recipients per session, 50 % member senders.
2. The same with listgate on the Mailman backend with a warm cache (a real Mailman core
   from tests/mailman_harness.py, with listgate's plugin enabled; every sender looked up
   before measuring), twice: without the change feed (the shipped cache settings: a
   reject older than ``reject_max_age`` is fetched again before it is sent), and with it
   (``[events]`` receiving the plugin's feed, which keeps cached rejects usable; one
   process, as ``workers = "auto"`` gives with a feed). The comparator is still the
   pymilter gate with its in-memory set, which never learns of a change in Mailman.
3. Idle connections: 10,000 negotiated milter connections held open; listgate's RSS.
4. Cold path: Mailman backend, empty cache, every session a new sender: RCPT latency
   against the latency of the REST calls a cold decision needs, made directly; a burst
   of concurrent RCPTs for one new sender (single flight) and the most connections
   listgate held open to Mailman (its pool bound).
5. Through real Postfix: smtp-source, 3,000 messages, 20 sessions in parallel, to a
   private instance (relay_transport = discard) with no milter, with listgate's milter,
   with listgate's policy front end (check_policy_service), with pymilter, and with
   benchmarks/nullmilter.c (built with cc if there is one): a C milter that answers with
   listgate's own negotiation and decides nothing, so its rate is the most any milter
   negotiating like listgate can reach on this machine; and the same C milter answering
   RCPT with ACCEPT (Postfix then skips it for the rest of the transaction), which shows
   what the stages after the first RCPT cost Postfix. The same C program as a policy
   service (DUNNO to everything) is the floor of any policy server; benchmarks/pyfloor.py
   is the Python floor of both (a uvloop server that answers with fixed bytes). Every
   round runs each setup once, in an order that rotates from round to round;
   ratios are the median of the per-round ratios (with their range), which cancels the
   machine's drift between rounds. Targets (#15): the policy front end at >= 95 % of no
   milter (must: 90 %), the milter at >= 95 % of the C null milter.

Every figure comes from the same run; ratios are listgate / pymilter (or / no milter).
The machine is shared: "other" is the CPU that neither the server nor the load
generator used during the window (other processes, kernel threads, idle = 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH), str(ROOT / "tests")]

from loadgen import LoadSpec, Population, hold_idle, run_load, run_native  # noqa: E402
from servers import (  # noqa: E402
    Listgate,
    NullMilter,
    PyFloor,
    Pymilter,
    Sampler,
    Server,
    build_c,
    cpu_seconds,
    free_port,
    process_tree,
    raise_nofile,
    rss_bytes,
    workdir,
)

try:
    from listgate.compiled import describe as core_build
except ImportError:  # a listgate from before the compiled core
    def core_build() -> str:
        return "pure Python (a listgate without listgate.compiled)"
try:
    from listgate.config import worker_count
except ImportError:  # a listgate from before workers = "auto" (1 process by default)
    def worker_count(workers: object) -> int:  # type: ignore[misc]
        return workers if isinstance(workers, int) else 1

MB = 1024 * 1024
LG_MILTER = "listgate-milter"
LG_POLICY = "listgate-policy"
NULL_MILTER = "null-milter-C"
LG_PURE = "listgate-pure"
"""The shipped defaults on the core's Python sources (LISTGATE_PURE=1): the before of
compiling it."""
NULL_ACCEPT = "null-milter-C-accept-rcpt"
PY_FLOOR = "python-floor"
"""benchmarks/pyfloor.py: the least a Python milter on uvloop costs."""
NULL_POLICY = "null-policy-C"
"""benchmarks/nullmilter.c as a policy server (DUNNO to everything): the floor of any
policy server."""
PY_FLOOR_POLICY = "python-floor-policy"
"""benchmarks/pyfloor.py as a policy server: the least a Python policy server costs."""


# ----------------------------------------------------------------------------- figures


def prioritize(pid: int | None, nice: int) -> None:
    """Nice *pid* (None: this process, inherited by everything it starts) and its
    scheduler autogroup: with autogroups, nice alone orders processes only within one
    session, and a busy shared machine would take whatever it wants from the run.
    Needs root to go below 0; silently left as is otherwise."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid or 0, nice)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid or 'self'}/autogroup").write_text(f"{nice}\n")


def _machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclass
class Cell:
    """One server's figures for one (backend, concurrency, recipients) cell."""

    sessions: list[float] = field(default_factory=list)
    rcpts: list[float] = field(default_factory=list)
    latencies: array = field(default_factory=lambda: array("I"))
    cpu: list[float] = field(default_factory=list)
    gen_cpu: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    """Server CPU (whole process tree, from /proc) per session, µs."""
    gen_us: list[float] = field(default_factory=list)
    """The generator's own CPU per session, µs."""
    rss: int = 0
    errors: int = 0
    wrong: int = 0
    first_error: str = ""

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))] / 1000.0

    @property
    def sess(self) -> float:
        return statistics.median(self.sessions) if self.sessions else 0.0

    @property
    def rcpt(self) -> float:
        return statistics.median(self.rcpts) if self.rcpts else 0.0


class WindowSampler(Sampler):
    """Server CPU/RSS plus the whole machine's busy time during the window."""

    def begin(self) -> None:
        self._m0 = _machine_busy()
        super().begin()

    def end(self) -> None:
        super().end()
        b1, t1 = _machine_busy()
        b0, t0 = self._m0
        self.machine_pct = 100.0 * (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)


def measure(server: Server, spec: LoadSpec, cell: Cell, gen=None) -> None:
    """One load against *server* into *cell*; *gen(spec, sampler)* runs it (default: the
    Python generator)."""
    sampler = WindowSampler(server.pid)
    result = (gen or run_load)(spec, sampler)
    if result.sessions:
        cell.cpu_us.append(sampler.cpu_pct / 100 * spec.seconds / result.sessions * 1e6)
        cell.gen_us.append(result.gen_cpu / result.sessions * 1e6)
    cell.sessions.append(result.sessions_per_s)
    cell.rcpts.append(result.rcpts_per_s)
    cell.latencies.extend(result.latencies_us)
    cell.cpu.append(sampler.cpu_pct)
    cell.gen_cpu.append(result.gen_cpu_pct)
    cell.other.append(max(0.0, sampler.machine_pct - sampler.cpu_pct - result.gen_cpu_pct))
    cell.rss = max(cell.rss, sampler.rss_peak)
    cell.errors += result.errors
    cell.wrong += result.wrong
    cell.first_error = cell.first_error or result.first_error


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def print_table(title: str, rows: list[tuple[int, int, Cell, Cell]], names: tuple[str, str]):
    a, b = names
    print(f"\n## {title}\n")
    head = (f"| conc | rcpt | {a} sess/s | {b} sess/s | ratio | {a} RCPT/s | {b} RCPT/s | ratio "
            f"| {a} p50 ms | {b} p50 ms | {a} p99 ms | {b} p99 ms | p99 ratio "
            f"| {a} CPU % | {b} CPU % | {a} mem MB | {b} mem MB | gen CPU % | other CPU % |")
    print(head)
    print("|" + "|".join("---:" for _ in range(head.count("|") - 1)) + "|")
    for conc, rcpts, x, y in rows:
        print(
            f"| {conc} | {rcpts} | {x.sess:,.0f} | {y.sess:,.0f} | {_ratio(x.sess, y.sess)} "
            f"| {x.rcpt:,.0f} | {y.rcpt:,.0f} | **{_ratio(x.rcpt, y.rcpt)}** "
            f"| {x.pct(50):.2f} | {y.pct(50):.2f} | {x.pct(99):.2f} | {y.pct(99):.2f} "
            f"| {_ratio(x.pct(99), y.pct(99))} "
            f"| {statistics.mean(x.cpu):.0f} | {statistics.mean(y.cpu):.0f} "
            f"| {x.rss / MB:.0f} | {y.rss / MB:.0f} "
            f"| {statistics.mean(x.gen_cpu + y.gen_cpu):.0f} "
            f"| {statistics.mean(x.other + y.other):.0f} |"
        )
    bad = [(c, r, n, cell) for c, r, x, y in rows for n, cell in ((a, x), (b, y))
           if cell.errors or cell.wrong]
    for conc, rcpts, name, cell in bad:
        print(f"  ! {name} c={conc} r={rcpts}: {cell.errors} errors, {cell.wrong} wrong "
              f"verdicts {cell.first_error}")
    sys.stdout.flush()


def run_matrix(title: str, lg: Server, pm: Server, pop: Population, args, gen=None) -> list:
    rows = []
    for conc in args.concurrency:
        for rcpts in args.rcpts:
            x, y = Cell(), Cell()
            for rnd in range(args.rounds):
                order = ((lg, x), (pm, y)) if rnd % 2 == 0 else ((pm, y), (lg, x))
                for server, cell in order:
                    spec = LoadSpec("127.0.0.1", server.port, conc, rcpts,
                                    member_share=args.member_share, seconds=args.seconds,
                                    warmup=args.warmup, procs=args.procs, population=pop,
                                    seed=rnd + 1)
                    measure(server, spec, cell, gen)
            rows.append((conc, rcpts, x, y))
            print(f"  [{title}] c={conc} r={rcpts}: listgate {x.rcpt:,.0f} RCPT/s, "
                  f"pymilter {y.rcpt:,.0f} RCPT/s ({_ratio(x.rcpt, y.rcpt)})", flush=True)
    print_table(title, rows, ("listgate", "pymilter"))
    return rows


# ----------------------------------------------------------------------------- headline


def _native(binary: Path, *, gate: bool = True, policy: bool = False):
    def gen(spec: LoadSpec, sampler) -> object:
        return run_native(binary, spec, sampler, gate=gate, policy=policy)
    return gen


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def headline(title: str, servers: list[tuple[str, Server, bool]], binary: Path, pop: Population,
             args, *, policy: bool = False, base: str = "pymilter") -> dict:
    """Every server of *servers* ((name, server, verdicts checked)) under the native
    generator, 1 RCPT per session, at each concurrency, rounds alternating (the order
    rotates each round); one table with sessions/s, latency and CPU per session."""
    cells: dict[tuple[str, int], Cell] = {}
    for conc in args.concurrency:
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for name, server, gate in order:
                cell = cells.setdefault((name, conc), Cell())
                spec = LoadSpec("127.0.0.1", server.port, conc, 1,
                                member_share=args.member_share, seconds=args.seconds,
                                warmup=args.warmup, population=pop, seed=rnd + 1)
                measure(server, spec, cell, _native(binary, gate=gate, policy=policy))
        print(f"  [{title}] c={conc}: " + ", ".join(
            f"{name} {cells[(name, conc)].sess:,.0f}/s" for name, _, _ in servers), flush=True)
    unit = "requests" if policy else "sessions"
    print(f"\n## {title}\n")
    print(f"| conc | server | {unit}/s | vs {base} | p50 ms | p99 ms | server CPU % "
          f"| server CPU µs per {unit[:-1]} | gen CPU % | gen CPU µs per {unit[:-1]} "
          f"| other CPU % | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out: dict[str, object] = {}
    for conc in args.concurrency:
        ref = cells.get((base, conc))
        for name, _, _ in servers:
            c = cells[(name, conc)]
            ratio = _ratio(c.sess, ref.sess) if ref is not None else "-"
            print(f"| {conc} | {name} | {c.sess:,.0f} | {ratio} | {c.pct(50):.2f} "
                  f"| {c.pct(99):.2f} | {statistics.mean(c.cpu):.0f} | {_med(c.cpu_us):,.0f} "
                  f"| {statistics.mean(c.gen_cpu):.0f} | {_med(c.gen_us):,.0f} "
                  f"| {statistics.mean(c.other):.0f} | {c.errors + c.wrong} |")
            out[f"{name} c={conc}"] = {
                "per_s": c.sess, "p50_ms": c.pct(50), "p99_ms": c.pct(99),
                "cpu_pct": statistics.mean(c.cpu), "cpu_us": _med(c.cpu_us),
                "gen_cpu_pct": statistics.mean(c.gen_cpu), "gen_us": _med(c.gen_us),
                "errors": c.errors, "wrong": c.wrong, "first_error": c.first_error}
            if c.errors or c.wrong:
                print(f"  ! {name} c={conc}: {c.errors} errors, {c.wrong} wrong verdicts "
                      f"{c.first_error}")
    sys.stdout.flush()
    return out


def log_cost(binary: Path, pop: Population, wd: Path, args) -> dict:
    """The shipped defaults with the decision log on (info, the default) and off
    (warning), alternating, at c=100: what the one line per decision costs."""
    conc = 100 if 100 in args.concurrency else args.concurrency[-1]
    info = Listgate(free_port(), wd, list_address=pop.list_address, allowed=pop.members,
                    log_level=None, workers=None, uvloop=None, max_connections=None)
    warn = Listgate(free_port(), wd, list_address=pop.list_address, allowed=pop.members,
                    log_level="warning", workers=None, uvloop=None, max_connections=None)
    info.start()
    warn.start()
    try:
        x, y = Cell(), Cell()
        for rnd in range(args.rounds):
            order = ((info, x), (warn, y)) if rnd % 2 == 0 else ((warn, y), (info, x))
            for server, cell in order:
                spec = LoadSpec("127.0.0.1", server.port, conc, 1,
                                member_share=args.member_share, seconds=args.seconds,
                                warmup=args.warmup, population=pop, seed=rnd + 1)
                measure(server, spec, cell, _native(binary))
    finally:
        info.stop()
        warn.stop()
    cost = 1 - x.sess / y.sess if y.sess else float("nan")
    print(f"\n## the decision log (shipped defaults, c={conc})\n")
    print("| [log] level | sessions/s | server CPU µs per session |\n|---|---:|---:|")
    print(f'| "info" (default: one line per list decision) | {x.sess:,.0f} | '
          f"{_med(x.cpu_us):,.0f} |")
    print(f'| "warning" | {y.sess:,.0f} | {_med(y.cpu_us):,.0f} |')
    print(f"\nthe info line costs {cost:.1%} of throughput (target <= 10 %): "
          f"{'OK' if cost <= 0.10 else 'MISSED'}", flush=True)
    return {"info_per_s": x.sess, "warning_per_s": y.sess, "cost": cost,
            "info_cpu_us": _med(x.cpu_us), "warning_cpu_us": _med(y.cpu_us)}


def cross_check(binary: Path, lg: Server, pm: Server, pop: Population, args) -> dict:
    """One cell (c=100, 1 RCPT) measured with both generators: the servers' CPU per
    session must agree within noise, whatever the generator's own cost."""
    conc = 100 if 100 in args.concurrency else args.concurrency[-1]
    cells = {(n, g): Cell() for n in ("listgate", "pymilter") for g in ("python", "native")}
    for rnd in range(args.rounds):
        for name, server in (("listgate", lg), ("pymilter", pm)):
            for g, gen in (("python", None), ("native", _native(binary))):
                spec = LoadSpec("127.0.0.1", server.port, conc, 1,
                                member_share=args.member_share, seconds=args.seconds,
                                warmup=args.warmup, procs=args.procs, population=pop,
                                seed=rnd + 1)
                measure(server, spec, cells[(name, g)], gen)
    print(f"\n## cross-check of the generators (c={conc}, 1 RCPT)\n")
    print("| server | generator | sessions/s | server CPU µs per session | gen CPU % "
          "| gen CPU µs per session |\n|---|---|---:|---:|---:|---:|")
    out = {}
    for (name, g), c in cells.items():
        print(f"| {name} | {g} | {c.sess:,.0f} | {_med(c.cpu_us):,.0f} "
              f"| {statistics.mean(c.gen_cpu):.0f} | {_med(c.gen_us):,.0f} |")
        out[f"{name} {g}"] = {"per_s": c.sess, "cpu_us": _med(c.cpu_us),
                              "gen_cpu_pct": statistics.mean(c.gen_cpu)}
    sys.stdout.flush()
    return out


# ----------------------------------------------------------------------------- mailman


MAILMAN_LIST = "bench"


@dataclass(frozen=True)
class Feed:
    """The change feed between the benchmark's Mailman core (listgate's plugin) and a
    listgate that sets ``[events]`` to it."""

    port: int
    secret_file: Path


def start_mailman(pop_size: int, nice: int = 0, feed: Feed | None = None):
    """A Mailman core with one list of *pop_size* members; with *feed*, listgate's plugin
    notifies its port (nothing listens there unless a listgate with ``[events]`` runs)."""
    from feed_helpers import plugin_config, plugin_site
    from mailman_harness import MailmanCore

    extra, pythonpath = "", []
    if feed is not None:
        _cfg, extra = plugin_config(feed.secret_file.parent,
                                    [f"http://127.0.0.1:{feed.port}/"], feed.secret_file,
                                    heartbeat=1.0)
        pythonpath = [plugin_site(feed.secret_file.parent)]
    core = MailmanCore(workers=2, extra_config=extra, pythonpath=pythonpath)
    core.start()
    if nice and core._proc is not None:  # Mailman runs in a session of its own
        for pid in process_tree(core._proc.pid):
            prioritize(pid, nice)
    ml = core.new_list({"default_nonmember_action": "reject"}, name=MAILMAN_LIST)
    fqdn = ml.fqdn_listname
    pop = Population.make(pop_size, fqdn)
    began = time.monotonic()
    subscribe_all(core, ml, pop.members)
    print(f"  Mailman core up in {core.startup_seconds:.1f} s; {len(pop.members)} members "
          f"subscribed to {fqdn} in {time.monotonic() - began:.1f} s", flush=True)
    return core, pop


def subscribe_all(core, ml, emails) -> None:
    """Subscribe with Mailman's own ``mailman addmembers`` (one process, straight into its
    database: seconds, where one REST call per member takes minutes)."""
    members = core.base_dir / "members.txt"
    members.write_text("\n".join(emails) + "\n")
    proc = subprocess.run(
        [str(core.venv / "bin" / "mailman"), "-C", str(core.config_path), "--run-as-root",
         "addmembers", "--no-welcome-msg", str(members), ml.fqdn_listname],
        capture_output=True, text=True, cwd=core.base_dir, env=core._runner_env(), timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mailman addmembers: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    count = len(ml.members)
    if count != len(emails):
        raise RuntimeError(f"mailman addmembers: {count} of {len(emails)} members subscribed")


def mailman_config(core, ttl: float, max_connections: int = 10, metrics: str = "",
                   feed: Feed | None = None) -> str:
    lines = [
        "[backend]",
        'type = "mailman"',
        "[mailman]",
        f'url = "{core.url}"',
        f'user = "{core.user}"',
        f'password = "{core.password}"',
        f"max_connections = {max_connections}",
        "[cache]",
        f"ttl = {ttl}",
        f"negative_ttl = {ttl}",
        f"policy_ttl = {ttl}",
        f"directory_ttl = {ttl}",
        "max_entries = 100000",
    ]
    if metrics:
        lines += ["[metrics]", f'listen = "{metrics}"']
    if feed is not None:
        lines += ["[events]", f'listen = "inet:127.0.0.1:{feed.port}"',
                  f'secret_file = "{feed.secret_file}"', "max_silence = 3.0"]
    return "\n".join(lines)


def wait_feed_healthy(metrics_port: int, timeout: float = 20.0) -> float:
    """Seconds until listgate reports the change feed healthy (a heartbeat arrived)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with contextlib.suppress(OSError):
            if _metric(metrics_port, "listgate_feed_healthy", {}, bare=True) == 1.0:
                return time.monotonic() - began
        time.sleep(0.2)
    raise RuntimeError(f"the change feed was not healthy within {timeout:g} s")


def warm(server: Server, pop: Population, procs: int, sweeps: int) -> float:
    """One session per sender, *sweeps* times: each worker process has its own cache and
    the kernel spreads connections over them, so one sweep leaves each worker about half
    warm; after k sweeps a sender is still cold in one worker with probability 2^-k."""
    began = time.monotonic()
    for sweep in range(sweeps):
        result = run_load(LoadSpec("127.0.0.1", server.port, 50, 1, seconds=120, warmup=0,
                                   procs=procs, population=pop, sweep=True, seed=sweep + 1))
        if result.errors or result.wrong:
            raise RuntimeError(f"warm-up: {result.errors} errors, {result.wrong} wrong "
                               f"verdicts {result.first_error}")
    return time.monotonic() - began


def mailman_tables(core, pop: Population, feed: Feed, native: Path | None, wd: Path, args,
                   report: dict) -> list[str]:
    """The warm-cache tables on the Mailman backend, without and with the change feed;
    the must targets they missed."""
    failures: list[str] = []
    uv = None if not args.no_uvloop else False
    for key, label, with_feed in (("mailman", "no change feed", False),
                                  ("mailman_feed", "change feed", True)):
        mport = free_port()
        config = mailman_config(core, 3600, metrics=f"127.0.0.1:{mport}",
                                feed=feed if with_feed else None)
        mlg = Listgate(free_port(), wd, list_address=pop.list_address, allowed=(),
                       mailman=config, workers=args.workers, uvloop=uv)
        mpm = Pymilter(free_port(), wd, list_address=pop.list_address, allowed=pop.members)
        mlg.start()
        mpm.start()
        try:
            processes = len(process_tree(mlg.pid)) - (1 if mlg.pid else 0) or 1
            note = ""
            if with_feed:
                note = f"; feed healthy after {wait_feed_healthy(mport):.1f} s"
            sweeps = 1 if processes == 1 else 4 * processes + 2
            took = warm(mlg, pop, args.procs, sweeps)
            print(f"  [{label}] listgate in {processes} process(es); cache warmed: {sweeps} x "
                  f"one session per sender ({2 * args.mailman_senders} senders) in "
                  f"{took:.1f} s{note}", flush=True)
            rows = run_matrix(f"Mailman backend, warm cache, {label}", mlg, mpm, pop, args,
                              None if native is None else _native(native))
            report[key] = _rows_json(rows)
            if with_feed:
                failures += _check(rows, key)
            else:
                # Without the feed every reject resting on facts older than [cache]
                # reject_max_age waits for a refetch (a stale reject is a false reject),
                # while pymilter's set never learns of a change: the rates are shown, and
                # only listgate's errors and wrong verdicts count against it here.
                print("  (no change feed: a reject older than reject_max_age is refetched "
                      "first; the must targets apply to the table with the feed)")
                failures += [f for f in _check(rows, key) if "errors" in f]
            if with_feed and _metric(mport, "listgate_feed_healthy", {}, bare=True) != 1.0:
                failures.append(f"{key}: the change feed was not healthy at the end")
        finally:
            mlg.stop()
            mpm.stop()
    return failures


# ----------------------------------------------------------------------------- cold path


def _metric(port: int, name: str, labels: dict[str, str], bare: bool = False) -> float:
    """The sum of metric *name* over the samples with *labels* (*bare*: a metric without
    labels)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + (" " if bare else "{")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:*port* (from /proc/net/tcp)."""
    count = 0
    want = f":{port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if parts[2].endswith(want) and parts[3] == "01":
                count += 1
    return count


def rest_latency(core, senders: list[str], concurrency: int) -> array:
    """Mailman's own latency for what a cold nonmember decision asks (members/find for the
    address, then users/<address>), made directly with httpx: one sample per sender."""
    from urllib.parse import quote, urlencode

    import httpx

    out = array("I")
    lock = threading.Lock()
    todo = list(senders)

    def work() -> None:
        with httpx.Client(base_url=core.url + "/", auth=core.auth, timeout=10) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    sender = todo.pop()
                t0 = time.perf_counter()
                client.get("members/find?" + urlencode({"subscriber": sender}))
                client.get(f"users/{quote(sender, safe='@')}")
                dt = int((time.perf_counter() - t0) * 1e6)
                with lock:
                    out.append(dt)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _pct(values, q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))] / 1000.0 if data else 0.0


def cold_path(core, pop: Population, wd: Path, args) -> dict:
    """Empty cache, every session a new nonmember.

    Latency: one cold decision at a time (Mailman, two gunicorn workers on SQLite, is a
    queue: at higher concurrency its own queueing swamps everything), alternating in
    slices with the same REST calls made directly, so both see the same Mailman. Then a
    flood (50 concurrent sessions, each a new sender) against the connection pool bound,
    and 50 concurrent sessions for one new sender against single flight."""
    max_conn = 4
    mport = free_port()
    lg = Listgate(free_port(), wd, list_address=pop.list_address, allowed=(),
                  mailman=mailman_config(core, 3600, max_conn, f"127.0.0.1:{mport}"),
                  uvloop=not args.no_uvloop)
    miss = {"cache": "memberships", "result": "miss"}
    lg.start()
    try:
        # the directory, list policy and site bans, as any running daemon has them
        run_load(LoadSpec("127.0.0.1", lg.port, 1, 1, seconds=1, warmup=0, procs=1,
                          population=pop))
        lat_lg, lat_rest = array("I"), array("I")
        slices = 6
        for n in range(slices):
            r = run_load(LoadSpec("127.0.0.1", lg.port, 1, 1, member_share=0.0,
                                  seconds=args.cold_seconds / slices, warmup=0.2, procs=1,
                                  population=pop, fresh_senders=True, seed=100 + n))
            lat_lg.extend(r.latencies_us)
            senders = [f"rest{n}x{i:05d}@elsewhere.example"
                       for i in range(max(20, len(r.latencies_us)))]
            lat_rest.extend(rest_latency(core, senders, 1))
            if r.errors or r.wrong:
                raise RuntimeError(f"cold path: {r.errors} errors, {r.wrong} wrong verdicts "
                                   f"{r.first_error}")
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _connections_to(core.port))
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        f0 = _metric(mport, "listgate_cache_requests_total", miss)
        flood = run_load(LoadSpec("127.0.0.1", lg.port, 50, 1, member_share=0.0, seconds=2.0,
                                  warmup=0, procs=1, population=pop, fresh_senders=True,
                                  seed=200))
        f1 = _metric(mport, "listgate_cache_requests_total", miss)
        one = Population((), (f"flight-{os.getpid()}@elsewhere.example",), pop.list_address)
        burst = run_load(LoadSpec("127.0.0.1", lg.port, 50, 1, member_share=0.0, seconds=0.3,
                                  warmup=0, procs=1, population=one))
        f2 = _metric(mport, "listgate_cache_requests_total", miss)
        stop.set()
        watcher.join()
    finally:
        lg.stop()
    return {
        "decisions": len(lat_lg),
        "lg_p50": _pct(lat_lg, 50), "lg_p99": _pct(lat_lg, 99),
        "rest_p50": _pct(lat_rest, 50), "rest_p99": _pct(lat_rest, 99),
        "flood_sessions": flood.sessions, "flood_fetches": f1 - f0,
        "flood_p99": flood.percentile_ms(99),
        "errors": flood.errors + burst.errors, "wrong": flood.wrong + burst.wrong,
        "burst_sessions": burst.sessions, "burst_fetches": f2 - f1,
        "pool": max_conn, "peak_connections": peak[0],
    }


# ----------------------------------------------------------------------------- idle


def idle_connections(server: Server, count: int, procs: int) -> tuple[int, int, int, str]:
    def measure_rss() -> int:
        time.sleep(1.0)
        return rss_bytes(process_tree(server.pid))

    before = rss_bytes(process_tree(server.pid))
    held, errors, lost, first, rss = hold_idle("127.0.0.1", server.port, count, procs,
                                               measure_rss)
    return held, rss, before, f"{errors} errors, {lost} closed while idle {first}".strip()


# ----------------------------------------------------------------------------- postfix


def _listgate_optneg_reply() -> bytes:
    """listgate's answer to Postfix's OPTNEG offer, from its own negotiation code."""
    from listgate.frontends.milter import milter_options
    from listgate.milter import POSTFIX_OFFER, MilterConnection, encode

    conn = MilterConnection(milter_options(1024 * 1024))
    conn.receive_data(encode(POSTFIX_OFFER))
    conn.next_event()
    return conn.data_to_send()


def _policy_listener(name: str, port: int):  # -> e2e.harness.Listener
    """An smtpd listener that asks the policy service on *port* at RCPT: smtpd keeps one
    connection per process open across SMTP sessions and asks once per RCPT (master.cf
    -o values cannot hold spaces; a comma separates the restriction from its argument)."""
    from e2e.harness import Listener

    return Listener(name, free_port(), "", overrides=(
        ("smtpd_recipient_restrictions", f"check_policy_service,inet:127.0.0.1:{port}"),))


def postfix_rate(lg: Listgate, pm: Server, pop: Population,
                 args) -> list[tuple[str, list[float], float, float | None]]:
    """(setup, messages/s of each round, median machine CPU µs per message, median CPU
    µs per message of the milter or policy server's own processes (None without one))
    for each Postfix setup; every round runs each setup once, one after the other."""
    from e2e.harness import Listener, PostfixInstance, find_binary, traversable_tmpdir

    smtp_source = find_binary("smtp-source")
    base = traversable_tmpdir("lg-bench-pf-")
    listeners = [
        Listener("none", free_port()),
        Listener(LG_MILTER, free_port(), f"inet:127.0.0.1:{lg.port}"),
        Listener("pymilter", free_port(), f"inet:127.0.0.1:{pm.port}"),
    ]
    if lg.policy_port is not None:
        # The same gate as a Postfix policy service: smtpd keeps one connection per
        # process open across SMTP sessions and asks once per RCPT (master.cf -o values
        # cannot hold spaces; a comma separates the restriction from its argument).
        listeners.append(_policy_listener(LG_POLICY, lg.policy_port))
    # The floor: a C milter that does nothing but answer with listgate's negotiation, so
    # Postfix sends it exactly the packets it sends listgate; and the same milter answering
    # RCPT with ACCEPT, which makes Postfix skip it for the rest of the transaction.
    nulls: list[Server] = []
    null_of: dict[str, Server] = {}
    binary = NullMilter.build(lg.workdir)
    if binary is not None:
        optneg = _listgate_optneg_reply()
        for name, accept in ((NULL_MILTER, False), (NULL_ACCEPT, True)):
            null = NullMilter(free_port(), lg.workdir, binary, optneg, accept_rcpt=accept)
            nulls.append(null)
            null_of[name] = null
            listeners.append(Listener(name, free_port(), f"inet:127.0.0.1:{null.port}"))
        # The same C server as a policy service: what any policy server costs Postfix.
        null = NullMilter(free_port(), lg.workdir, binary, b"")
        nulls.append(null)
        null_of[NULL_POLICY] = null
        listeners.append(_policy_listener(NULL_POLICY, null.port))
    # The Python floors: a uvloop milter that answers with fixed bytes, and a uvloop
    # policy server that answers DUNNO (what Python costs).
    floor = PyFloor(free_port(), lg.workdir, _listgate_optneg_reply())
    nulls.append(floor)
    listeners.append(Listener(PY_FLOOR, free_port(), f"inet:127.0.0.1:{floor.port}"))
    policy_floor = PyFloor(free_port(), lg.workdir, b"")
    nulls.append(policy_floor)
    listeners.append(_policy_listener(PY_FLOOR_POLICY, policy_floor.port))
    pf = PostfixInstance(base, listeners, sink_port=9)
    try:
        for null in nulls:
            null.start()
        pf.create()
        main_cf = pf.config_dir / "main.cf"
        text = re.sub(r"^relay_transport = .*$", "relay_transport = discard:relay-discarded",
                      main_cf.read_text(), flags=re.M)
        main_cf.write_text(text + "smtpd_client_connection_count_limit = 0\n"
                           "smtpd_client_connection_rate_limit = 0\n")
        pf.start()
    except BaseException:
        for null in nulls:
            null.stop()
        raise
    if args.nice and (master := pf.master_pid()):  # Postfix runs in its own session
        for pid in pf.processes() or [master]:
            prioritize(pid, args.nice)
    rates: dict[str, list[float]] = {lst.name: [] for lst in listeners}
    cpu: dict[str, list[float]] = {lst.name: [] for lst in listeners}
    own: dict[str, list[float]] = {lst.name: [] for lst in listeners}
    server_of: dict[str, Server] = {LG_MILTER: lg, LG_POLICY: lg, "pymilter": pm,
                                    PY_FLOOR: floor, PY_FLOOR_POLICY: policy_floor}
    server_of.update(null_of)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    try:
        for rnd in range(args.postfix_rounds):
            # The order rotates each round: no setup always runs first, or right after
            # the same one (Postfix's queue and the VM drift within a round too).
            for lst in listeners[rnd % len(listeners):] + listeners[:rnd % len(listeners)]:
                pf.wait_queue_empty(60)  # no delivery left over from the previous setup
                cmd = [smtp_source, "-m", str(args.postfix_messages), "-s", "20",
                       "-f", pop.members[0], "-t", pop.list_address, f"127.0.0.1:{lst.port}"]
                server = server_of.get(lst.name)
                tree = process_tree(server.pid) if server is not None else []
                own0 = cpu_seconds(tree)
                ticks = _machine_busy()[0]
                began = time.monotonic()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                elapsed = time.monotonic() - began
                ticks = _machine_busy()[0] - ticks
                if proc.returncode != 0:
                    raise RuntimeError(f"smtp-source via {lst.name}: {proc.stderr[-500:]}")
                rates[lst.name].append(args.postfix_messages / elapsed)
                cpu[lst.name].append(ticks * tick_us / args.postfix_messages)
                if tree:
                    own[lst.name].append((cpu_seconds(tree) - own0) * 1e6
                                         / args.postfix_messages)
        pf.wait_queue_empty(60)
        rejected = pf.maillog_text().count("reject: ")  # milter-reject: too
    finally:
        pf.stop()
        for null in nulls:
            null.stop()
        shutil.rmtree(base, ignore_errors=True)
    if rejected:
        print(f"  ! Postfix logged {rejected} rejections (expected none: every sender is "
              "a member)")
    return [(name, rates[name], statistics.median(cpu[name]),
             statistics.median(own[name]) if own[name] else None) for name in rates]


# ----------------------------------------------------------------------------- main


def describe_machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    from importlib.metadata import version

    import milter  # pymilter's C module

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    load = os.getloadavg()
    return (f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, pymilter {version('pymilter')} (libmilter "
            f"{'.'.join(map(str, milter.getversion()))}), uvloop {uv}; load average at start "
            f"{load[0]:.2f}")


def _autogroup() -> str:
    try:
        return Path("/proc/self/autogroup").read_text().split("nice")[1].strip()
    except (OSError, IndexError):
        return "n/a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CI mode: static backend only, c=10, 1 and 2 recipients, 1 s windows")
    ap.add_argument("--seconds", type=float, default=4.0, help="measurement window per load")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window")
    ap.add_argument("--rounds", type=int, default=2, help="alternations per cell")
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[10, 100, 1000])
    ap.add_argument("--rcpts", type=lambda s: [int(x) for x in s.split(",")], default=[5],
                    help="recipients per session in the static and Mailman tables (the "
                    "headline tables have 1)")
    ap.add_argument("--member-share", type=float, default=0.5)
    ap.add_argument("--senders", type=int, default=1000, help="allowed senders (and as many "
                    "outsiders)")
    ap.add_argument("--mailman-senders", type=int, default=150,
                    help="list members in Mailman (and as many outsiders): every worker "
                    "warms its own cache through Mailman's slow REST API")
    ap.add_argument("--workers", type=int, default=None,
                    help='listgate [milter] workers (default: the shipped default, "auto")')
    ap.add_argument("--no-uvloop", action="store_true", help="listgate on asyncio's own loop")
    ap.add_argument("--python-generator", action="store_true",
                    help="measure with the Python generator (loadgen.py) instead of the "
                    "native one (miltergen.c); --smoke uses it for the static table")
    ap.add_argument("--idle", type=int, default=10000, help="idle connections to hold")
    ap.add_argument("--cold-seconds", type=float, default=4.0)
    ap.add_argument("--postfix-messages", type=int, default=3000)
    ap.add_argument("--postfix-rounds", type=int, default=7)
    ap.add_argument("--skip", default="", help="comma list of: headline,policy,pure,log,"
                    "crosscheck,static,mailman,idle,cold,postfix")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--nice", type=int, default=-10,
                    help="scheduling priority for the run (servers, load, Postfix inherit "
                    "it) so that other work on a shared machine distorts less; 0 = as is")
    args = ap.parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    if args.smoke:
        args.seconds, args.warmup, args.rounds = 0.6, 0.2, 1
        args.concurrency, args.rcpts = [10], [1, 2]
        args.idle = 200
        args.skip |= {"mailman", "cold", "postfix", "log", "crosscheck"}
        args.python_generator = True
        args.nice = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile(20000)
    if args.nice:
        with contextlib.suppress(OSError):
            os.setsid()  # an autogroup of our own (fails if already a group leader)
        prioritize(None, args.nice)
    wd = workdir()
    pop = Population.make(args.senders)
    report: dict[str, object] = {"machine": describe_machine(), "args": {
        k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()}}
    report["core"] = core_build()
    print(f"# listgate vs pymilter: milter load benchmark\n\nmachine: {report['machine']}\n"
          f"listgate core: {report['core']}")
    native = build_c("miltergen", wd)
    null_bin = NullMilter.build(wd)
    workers = "auto (default)" if args.workers is None else args.workers
    python_static = (f" but the static one (Python generator, {args.procs} processes)"
                     if args.python_generator else "")
    print(f"load: native generator (benchmarks/miltergen.c, one process) for every table"
          f"{python_static}; "
          f"{args.seconds:g} s windows after {args.warmup:g} s warm-up, {args.rounds} rounds "
          f"alternating per cell, {args.member_share:.0%} member senders, {args.senders} "
          f"allowed senders; listgate: workers = {workers}, uvloop = {not args.no_uvloop}, "
          f'log level "info" (the default) in the headline tables, "warning" in the others '
          f"(neither gate logs per decision there); nice {os.getpriority(os.PRIO_PROCESS, 0)} "
          f"(autogroup {_autogroup()})", flush=True)
    uv = None if not args.no_uvloop else False
    n_workers = worker_count(args.workers or "auto")
    pm = Pymilter(free_port(), wd, list_address=pop.list_address, allowed=pop.members)
    failures: list[str] = []
    pm.start()
    try:
        if native is not None and null_bin is not None and not (
                {"headline", "policy"} <= args.skip):
            failures += run_headlines(native, null_bin, pm, pop, wd, args, report)
        if native is not None and "log" not in args.skip:
            report["log"] = log_cost(native, pop, wd, args)
            if report["log"]["cost"] > 0.10:
                failures.append("the info decision log costs more than 10 % at c=100")
        def fresh_listgate() -> Listgate:
            # Ports are picked just before the start: one picked minutes earlier may
            # meanwhile be the local end of one of the generators' many connections.
            return Listgate(free_port(), wd, list_address=pop.list_address,
                            allowed=pop.members, workers=args.workers, uvloop=uv,
                            policy_port=free_port())

        lg = fresh_listgate()
        lg.start()
        try:
            if native is not None and "crosscheck" not in args.skip:
                report["crosscheck"] = cross_check(native, lg, pm, pop, args)
            if "static" not in args.skip:
                gen = None if args.python_generator else _native(native)
                rows = run_matrix("static backend (1,000 allowed senders)", lg, pm, pop, args,
                                  gen)
                report["static"] = _rows_json(rows)
                failures += _check(rows, "static")
            if "idle" not in args.skip:
                lg.stop()
                default = f"workers = {args.workers or 'auto'}: {n_workers} processes"
                for label, workers in (("workers = 1", 1), (default, args.workers)):
                    if (label == "workers = 1" and n_workers == 1) or (
                            args.smoke and workers != 1):
                        continue
                    idle = Listgate(free_port(), wd, list_address=pop.list_address,
                                    allowed=pop.members, workers=workers, uvloop=uv)
                    idle.start()
                    try:
                        held, rss, base, note = idle_connections(idle, args.idle, args.procs)
                    finally:
                        idle.stop()
                    ok = held == args.idle and rss <= 200 * MB
                    print(f"\n## idle connections ({label})\n\n{held:,} of {args.idle:,} held "
                          f"open; listgate RSS {rss / MB:.0f} MB (idle before: "
                          f"{base / MB:.0f} MB; target <= 200 MB): "
                          f"{'OK' if ok else 'MISSED'} ({note})", flush=True)
                    report[f"idle {label}"] = {"held": held, "rss_mb": rss / MB,
                                               "base_mb": base / MB}
                    if not ok and workers == args.workers:
                        failures.append(f"idle: {held} held, {rss / MB:.0f} MB")
                lg = fresh_listgate()
                lg.start()
            if "postfix" not in args.skip:
                rows = postfix_rate(lg, pm, pop, args)
                report["postfix"] = {name: {"messages_per_s": statistics.median(rates),
                                            "rounds": rates, "cpu_us_per_message": us,
                                            "own_cpu_us_per_message": mine}
                                     for name, rates, us, mine in rows}
                failures += _print_postfix(rows, args)
        finally:
            lg.stop()
        if not ({"mailman", "cold"} <= args.skip):
            secret = wd / "events-secret"
            secret.write_text(os.urandom(32).hex() + "\n")
            feed = Feed(free_port(), secret)
            core, mpop = start_mailman(args.mailman_senders, args.nice, feed)
            try:
                if "mailman" not in args.skip:
                    failures += mailman_tables(core, mpop, feed, native, wd, args, report)
                if "cold" not in args.skip:
                    cold = cold_path(core, mpop, wd, args)
                    report["cold"] = cold
                    gap = cold["lg_p99"] - cold["rest_p99"]
                    print("\n## cold path (Mailman backend, empty cache, one decision at a "
                          "time, every session a new nonmember)\n")
                    print("| | p50 ms | p99 ms |\n|---|---:|---:|")
                    print(f"| listgate RCPT decision ({cold['decisions']:,}) | "
                          f"{cold['lg_p50']:.2f} | {cold['lg_p99']:.2f} |")
                    print(f"| Mailman REST, the same two calls made directly | "
                          f"{cold['rest_p50']:.2f} | {cold['rest_p99']:.2f} |")
                    print(f"\np99 gap {gap:+.2f} ms (target <= 2 ms): "
                          f"{'OK' if gap <= 2 else 'MISSED'}")
                    # Each worker process has its own cache, single flight and REST
                    # connection pool (docs/performance.md, "Known limits").
                    print(f"flood: 50 concurrent sessions, each a new sender, for 2 s: "
                          f"{cold['flood_sessions']:,} sessions, {cold['flood_fetches']:.0f} "
                          f"membership fetches, at most {cold['peak_connections']} connections "
                          f"to Mailman open at once (max_connections = {cold['pool']} in each "
                          f"of {n_workers} worker(s)), RCPT p99 {cold['flood_p99']:.0f} ms")
                    print(f"single flight: 50 concurrent sessions for one new sender "
                          f"({cold['burst_sessions']} in all) -> {cold['burst_fetches']:.0f} "
                          f"membership fetch(es) (at most one per worker: {n_workers}); "
                          f"{cold['errors']} errors, {cold['wrong']} wrong verdicts")
                    if gap > 2:
                        failures.append(f"cold: p99 gap {gap:.2f} ms")
                    if (cold["burst_fetches"] > n_workers
                            or cold["peak_connections"] > cold["pool"] * n_workers):
                        failures.append("cold: single flight or pool bound broken")
            finally:
                core.stop()
                core.close()
    finally:
        pm.stop()
        shutil.rmtree(wd, ignore_errors=True)
    print("\n## must targets\n")
    if failures:
        for f in failures:
            print(f"- MISSED: {f}")
    else:
        print("- all must targets held in this run")
    if args.json:
        report["missed"] = failures
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


class _PortOf(Server):
    """Another listener of a running server (its process tree, another port)."""

    def __init__(self, server: Server, port: int) -> None:
        super().__init__(port, server.workdir)
        self.proc = server.proc


def run_headlines(native: Path, null_bin: Path, pm: Server, pop: Population, wd: Path,
                  args, report: dict) -> list[str]:
    """The headline tables: listgate with the shipped defaults (a config with only the
    listeners and the posters map) against pymilter and the C null milter, then its
    policy front end against the C null policy server; the misses."""
    lgd = Listgate(free_port(), wd, list_address=pop.list_address, allowed=pop.members,
                   log_level=None, workers=None, uvloop=None, max_connections=None,
                   policy_port=free_port())
    # The same defaults on the core's Python sources: what compiling it (setup.py) buys.
    pure = Listgate(free_port(), wd, list_address=pop.list_address, allowed=pop.members,
                    log_level=None, workers=None, uvloop=None, max_connections=None,
                    policy_port=free_port(), pure=True)
    null = NullMilter(free_port(), wd, null_bin, _listgate_optneg_reply())
    npol = NullMilter(free_port(), wd, null_bin, b"")
    floor = PyFloor(free_port(), wd, _listgate_optneg_reply())
    failures: list[str] = []
    with_pure = "pure" not in args.skip
    started = (lgd, pure, null, npol, floor) if with_pure else (lgd, null, npol, floor)
    for server in started:
        server.start()
    try:
        if "headline" not in args.skip:
            rows = headline("milter: shipped defaults vs pymilter vs the C null milter "
                            "(1 RCPT per session)", [("listgate", lgd, True),
                            ("pymilter", pm, True), (NULL_MILTER, null, False),
                            (PY_FLOOR, floor, False)]
                            + ([(LG_PURE, pure, True)] if with_pure else []),
                            native, pop, args)
            report["headline"] = rows
            for conc in args.concurrency:
                x, y, z, f = (rows[f"{n} c={conc}"]
                              for n in ("listgate", "pymilter", NULL_MILTER, PY_FLOOR))
                if x["per_s"] < y["per_s"]:
                    failures.append(f"headline c={conc}: {x['per_s'] / y['per_s']:.2f}x pymilter")
                if conc == 10 and x["p99_ms"] > y["p99_ms"]:
                    failures.append(f"headline c=10: p99 {x['p99_ms']:.2f} > "
                                    f"{y['p99_ms']:.2f} ms")
                if x["errors"] or x["wrong"]:
                    failures.append(f"headline c={conc}: listgate errors or wrong verdicts")
                print(f"c={conc}: listgate {x['per_s'] / y['per_s']:.2f}x pymilter (goal 1.5x); "
                      f"CPU per session {x['cpu_us'] / z['cpu_us']:.1f}x the C null milter's "
                      f"(goal <= 4x; the Python floor: {f['cpu_us'] / z['cpu_us']:.1f}x)")
        if "policy" not in args.skip and lgd.policy_port is not None:
            policy_rows = [("listgate-policy", _PortOf(lgd, lgd.policy_port), True),
                           ("null-policy-C", npol, False)]
            if with_pure and pure.policy_port is not None:
                policy_rows.append((f"{LG_PURE}-policy", _PortOf(pure, pure.policy_port), True))
            report["policy"] = headline(
                "policy: shipped defaults vs the C null policy server (persistent "
                "connections, one RCPT request at a time each)",
                policy_rows, native, pop, args, policy=True, base="null-policy-C")
    finally:
        for server in started:
            server.stop()
    return failures


def _paired(rates: list[float], base: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios *rates* / *base*: a round runs
    every setup within seconds, so its ratio cancels the machine's slower drift."""
    ratios = [a / b for a, b in zip(rates, base, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _print_postfix(rows: list[tuple[str, list[float], float, float | None]],
                   args) -> list[str]:
    """The through-Postfix table and its targets; the misses."""
    rates = {name: r for name, r, _, _ in rows}
    none, floor = rates["none"], rates.get(NULL_MILTER)
    print(f"\n## through Postfix (smtp-source -m {args.postfix_messages} -s 20, "
          f"{args.postfix_rounds} rounds; medians, and the median of the per-round ratios "
          "with their range)\n")
    print("| setup | messages/s | vs no milter | vs the null milter | machine CPU µs/msg "
          "| milter's own CPU µs/msg |\n|---|---:|---:|---:|---:|---:|")

    def shown(ratio: tuple[float, float, float]) -> str:
        return f"{ratio[0]:.0%} ({ratio[1]:.0%}-{ratio[2]:.0%})"

    for name, r, us, mine in rows:
        vs_floor = shown(_paired(r, floor)) if floor else "-"
        print(f"| {name} | {statistics.median(r):,.0f} | {shown(_paired(r, none))} | "
              f"{vs_floor} | {us:,.0f} | {'-' if mine is None else f'{mine:,.0f}'} |")
    out = []
    print()
    if (policy := rates.get(LG_POLICY)) is not None:
        ratio = _paired(policy, none)
        print(f"listgate through Postfix, policy front end: {shown(ratio)} of no milter "
              f"(target >= 95 %: {'OK' if ratio[0] >= 0.95 else 'MISSED'}; must >= 90 %)")
        if ratio[0] < 0.9:
            out.append("postfix: listgate's policy front end below 90 % of no milter")
        floors = [(label, rates[name]) for label, name in (
            ("the C null policy server", NULL_POLICY),
            ("the Python floor policy server", PY_FLOOR_POLICY)) if name in rates]
        if floors:
            print("policy servers that decide nothing, through Postfix: " + "; ".join(
                f"{label} {shown(_paired(r, none))} of no milter" for label, r in floors)
                + "; listgate's policy front end " + "; ".join(
                f"{shown(_paired(policy, r))} of {label}'s rate" for label, r in floors))
    milter = rates[LG_MILTER]
    line = ("listgate through Postfix, milter front end: "
            f"{shown(_paired(milter, none))} of no milter")
    if floor:
        ratio = _paired(milter, floor)
        line += (f", {shown(ratio)} of the C null milter's rate (target >= 95 %): "
                 f"{'OK' if ratio[0] >= 0.95 else 'MISSED'}")
    print(line)
    if floor and (py := rates.get(PY_FLOOR)) is not None:
        print(f"the Python floor (benchmarks/pyfloor.py) through Postfix: "
              f"{shown(_paired(py, floor))} of the C null milter's rate; listgate's milter "
              f"{shown(_paired(milter, py))} of the Python floor's")
    return out


def _rows_json(rows) -> list[dict]:
    out = []
    for conc, rcpts, x, y in rows:
        out.append({"concurrency": conc, "rcpts": rcpts, **{
            f"{n}_{k}": v for n, c in (("listgate", x), ("pymilter", y)) for k, v in {
                "sessions_per_s": c.sess, "rcpts_per_s": c.rcpt, "p50_ms": c.pct(50),
                "p99_ms": c.pct(99), "cpu_pct": statistics.mean(c.cpu), "rss_mb": c.rss / MB,
                "errors": c.errors, "wrong": c.wrong}.items()}})
    return out


def _check(rows, label: str) -> list[str]:
    out = []
    for conc, rcpts, x, y in rows:
        if x.rcpt < y.rcpt:
            out.append(f"{label} c={conc} r={rcpts}: decisions/s {x.rcpt / y.rcpt:.2f}x pymilter")
        if conc == 10 and x.pct(99) > y.pct(99):
            out.append(f"{label} c={conc} r={rcpts}: p99 {x.pct(99):.2f} > {y.pct(99):.2f} ms")
        if x.errors or x.wrong:  # the comparator's own failures are shown, not counted
            out.append(f"{label} c={conc} r={rcpts}: listgate errors or wrong verdicts")
    return out


if __name__ == "__main__":
    sys.exit(main())
