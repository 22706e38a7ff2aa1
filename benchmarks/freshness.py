"""Time-to-follow: how long listgate keeps the old verdict after a change made in Mailman.

Starts real Mailman 3 cores (tests/mailman_harness.py; needs .venv-mailman), one plain and
one with listgate's plugin enabled in its mailman.cfg, and the whole listgate daemon
(``listgate.app.serve``) in this process, asked through its milter over loopback. For each
kind of change of issue #13's table it makes the change through Mailman's REST API on
``--repeat`` lists (a fresh list and sender each, the old verdict cached first; one at a
time, except waits bound by a TTL, which run side by side),
then asks every ``--interval`` seconds until listgate gives the new verdict, and prints
p50/p99 (and max) of the seconds that took, per mode:

- ``before``: listgate as it was before #13 (no ``reject_max_age``: emulated by an
  unbounded one), shipped TTLs, no plugin;
- ``after``: the shipped defaults (``reject_max_age`` = 2 s), no plugin;
- ``feed``: the plugin notifying listgate's ``[events]`` listener, every TTL one hour.

Changes: subscribe a refused sender; add it to ``accept_these_nonmembers``; open the list
(``default_nonmember_action`` reject → accept); ban a member (accept → reject: a missed
reject, not a false one). A wait is cut at ``--cap`` seconds (shown as ">cap").

Run: .venv/bin/python benchmarks/freshness.py            (modes before,after,feed; ~3 min)
     .venv/bin/python benchmarks/freshness.py --quick    (after,feed, 2 repeats, waits
                                                         cut at 5 s; ~20 s)
"""

from __future__ import annotations

import argparse
import math
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from feed_helpers import plugin_config, plugin_site  # noqa: E402
from mailman_harness import MailmanCore, free_port  # noqa: E402
from mailmanclient.restobjects.mailinglist import MailingList  # noqa: E402

from tests.fresh_helpers import DaemonThread, daemon_config  # noqa: E402

MEMBER = "member@example.org"


@dataclass(frozen=True)
class Change:
    """One kind of change: what it does, and the verdicts before and after it."""

    name: str
    make: Callable[[MailmanCore, MailingList, str], object]
    before: str
    after: str


CHANGES = (
    Change("subscribe a refused sender", lambda c, ml, who: c.subscribe(ml, who),
           "reject", "accept"),
    Change("add it to accept_these_nonmembers",
           lambda c, ml, who: c.set_settings(ml, accept_these_nonmembers=[who]),
           "reject", "accept"),
    Change("open the list (nonmember reject -> accept)",
           lambda c, ml, who: c.set_settings(ml, default_nonmember_action="accept"),
           "reject", "accept"),
    Change("ban a member", lambda c, ml, who: c.ban(ml, MEMBER), "accept", "reject"),
)
HOUR = 3600.0


@contextmanager
def mode_world(mode: str, base: Path) -> Iterator[tuple[MailmanCore, DaemonThread]]:
    """A core and a listgate daemon for *mode* (see the module docstring)."""
    sections: dict[str, dict[str, object]] = {}
    extra, pythonpath = "", []
    if mode == "before":
        sections["cache"] = {"reject_max_age": 1e9}
    elif mode == "feed":
        secret_file = base / "events-secret"
        secret_file.write_text(secrets.token_hex(32) + "\n")
        port = free_port()
        _cfg, extra = plugin_config(base, [f"http://127.0.0.1:{port}/"], secret_file,
                                    heartbeat=1.0)
        pythonpath = [plugin_site(base)]
        sections["cache"] = {"ttl": HOUR, "negative_ttl": HOUR, "policy_ttl": HOUR,
                             "directory_ttl": HOUR}
        sections["events"] = {"listen": f"inet:127.0.0.1:{port}",
                              "secret_file": str(secret_file), "max_silence": 3.0}
    core = MailmanCore(base / "core", extra_config=extra, pythonpath=pythonpath)
    core.start()
    try:
        yield core, DaemonThread(daemon_config(core.url, core.auth, **sections))
    finally:
        core.close()


def one(core: MailmanCore, daemon: DaemonThread, change: Change, ml: MailingList,
        who: str, interval: float, cap: float, out: list[float]) -> None:
    """Make *change* on *ml*; ask every *interval* s until the new verdict; append the
    seconds (inf past *cap*)."""
    sender = MEMBER if change.after == "reject" else who
    ask = lambda: daemon.verdict(sender, ml.fqdn_listname)  # noqa: E731
    first = ask()
    if first != change.before:  # warmed in order before the threads started
        print(f"! {change.name}: {change.before} expected before the change, got {first}",
              file=sys.stderr)
        return
    change.make(core, ml, who)
    began = time.monotonic()
    while ask() != change.after:
        if time.monotonic() - began > cap:
            out.append(math.inf)
            return
        time.sleep(interval)
    out.append(time.monotonic() - began)


def ttl_bound(mode: str, change: Change) -> bool:
    """Whether following *change* in *mode* waits for a cache lifetime (no rule and no
    feed makes it faster)."""
    return mode == "before" or (mode == "after" and change.after == "reject")


def run_mode(mode: str, repeat: int, interval: float, cap: float) -> dict[str, list[float]]:
    """Seconds to follow, by change name, for *mode*."""
    with tempfile.TemporaryDirectory(prefix=f"freshness-{mode}-") as tmp, \
            mode_world(mode, Path(tmp)) as (core, daemon):
        jobs = []
        for change in CHANGES:
            for _ in range(repeat):
                ml = core.new_list({"default_nonmember_action": "reject"})
                core.subscribe(ml, MEMBER)
                jobs.append((change, ml, f"s{secrets.token_hex(4)}@example.net"))
        results: dict[str, list[float]] = {c.name: [] for c in CHANGES}
        with daemon:
            if mode == "feed":  # wait for the first heartbeat
                assert daemon.daemon is not None
                assert daemon.daemon.feed is not None
                deadline = time.monotonic() + 10
                while not daemon.daemon.feed.healthy() and time.monotonic() < deadline:
                    time.sleep(0.05)
            for change, ml, who in jobs:  # warm the cache, one at a time (a cold Mailman
                sender = MEMBER if change.after == "reject" else who  # is slow)
                for _ in range(10):
                    if daemon.verdict(sender, ml.fqdn_listname) != "tempfail":
                        break
            def runs(change: Change, ml: MailingList, who: str) -> threading.Thread:
                return threading.Thread(target=one, args=(core, daemon, change, ml, who,
                                                          interval, cap, results[change.name]))

            # Waits bound by a TTL run side by side (they would take hours one by one);
            # the others one at a time, so that 40 pollers do not measure their own load.
            slow = [(c, m, w) for c, m, w in jobs if ttl_bound(mode, c)]
            threads = [runs(*job) for job in slow]
            for t in threads:
                t.start()
            for job in jobs:
                if job not in slow:
                    t = runs(*job)
                    t.start()
                    t.join()
            for t in threads:
                t.join()
        return results


def pct(values: list[float], q: float) -> float:
    """The *q* quantile (nearest rank) of *values*."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def shown(seconds: float, cap: float) -> str:
    return f">{cap:g} s" if seconds == math.inf else f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="modes after,feed with 2 repeats (a smoke run)")
    parser.add_argument("--modes", default=None, help="comma-separated: before,after,feed")
    parser.add_argument("--repeat", type=int, default=None, help="changes per kind (10)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between asks")
    parser.add_argument("--cap", type=float, default=None,
                        help="longest wait, seconds (130; --quick: 5)")
    args = parser.parse_args()
    modes = (args.modes or ("after,feed" if args.quick else "before,after,feed")).split(",")
    repeat = args.repeat or (2 if args.quick else 10)
    args.cap = args.cap or (5.0 if args.quick else 130.0)
    table: dict[str, dict[str, list[float]]] = {}
    for mode in modes:
        began = time.monotonic()
        table[mode] = run_mode(mode, repeat, args.interval, args.cap)
        print(f"# mode {mode}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    print(f"Seconds listgate keeps the old verdict after a change through Mailman's REST "
          f"API (asked every {args.interval:g} s; {repeat} changes per kind; p50 / p99 / max)")
    print()
    print("| change | verdict | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for change in CHANGES:
        cells = []
        for mode in modes:
            v = table[mode][change.name]
            if not v:
                cells.append("no result")
                continue
            cells.append(" / ".join(shown(x, args.cap) for x in
                                    (statistics.median(v), pct(v, 0.99), max(v))))
        print(f"| {change.name} | {change.before} -> {change.after} | " + " | ".join(cells)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
