"""The long differential run (and the replay of any seed), outside pytest.

    .venv/bin/python tests/fidelity/run.py --seed 20261125 --cases 10000 --out DIR

Starts its own Mailman oracle (core + posting runners + SMTP sink, all on 127.0.0.1),
generates the cases from the seed, runs them in batches and writes to ``DIR``:
``results.jsonl`` (one JSON object per case: the post, Mailman's outcome and senders,
listgate's verdicts and reasons in both modes, the classification), ``summary.json`` and
``report.md`` (the numbers and every miss class, for ``docs/fidelity.md``). ``--only ID``
prints the given cases in full. The exit status is 1 if any false reject or harness error
was found.

``--timeline`` runs the differential suite with time instead (``fidelity.timeline``):
every world changes once between listgate's first decision and the posts; batches of
``--batch`` cases use the seeds SEED, SEED+1, ...
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fidelity.oracle import MailmanOracle  # noqa: E402
from fidelity.suite import CaseResult, RunStats, result_json, run  # noqa: E402
from fidelity.timeline import run_timeline  # noqa: E402
from fidelity.verdicts import MODES  # noqa: E402


def markdown(stats: RunStats, seed: int, cases: int, seconds: float,
             results: list[CaseResult]) -> str:
    out = [f"Seed {seed}, {cases} cases, {seconds / 60:.1f} min wall clock.", ""]
    out.append("| Mailman outcome | posts |")
    out.append("|---|---:|")
    for k in ("accepted", "held", "rejected", "discarded", "service"):
        out.append(f"| {k} | {stats.outcomes[k]} |")
    out += ["", f"Posts Mailman refused (rejected or discarded): {stats.refused}. Posts whose "
            f"only sender to Mailman was the envelope (decidable at RCPT): "
            f"{stats.rcpt_informative}. Envelope-only twins posted: {stats.twins}.", ""]
    out.append("| mode | false rejects | missed rejects | of refused posts | of all posts |")
    out.append("|---|---:|---:|---:|---:|")
    for mode in MODES:
        n, per_refused, per_case = stats.miss_rate(mode)
        out.append(f"| `{mode}` | {len(stats.false_rejects[mode])} | {n} | "
                   f"{per_refused:.2%} | {per_case:.2%} |")
    for mode in MODES:
        out += ["", f"Missed rejects in `{mode}` mode, by class:", ""]
        out.append("| posts | class | example |")
        out.append("|---:|---|---|")
        examples: dict[str, str] = {}
        for r in results:
            why = r.missed.get(mode)
            if why is not None and why not in examples:
                examples[why] = r.case_id
        for why, count in stats.missed[mode].most_common():
            out.append(f"| {count} | {why} | `{examples.get(why, '')}` |")
    if stats.excused:
        out += ["", "`rcpt` rejects of posts Mailman let through, excused as RCPT limits:", ""]
        out.append("| posts | why |")
        out.append("|---:|---|")
        for why, count in stats.excused.most_common():
            out.append(f"| {count} | {why} |")
    out += ["", f"Harness errors: {len(stats.errors)}. Posts whose sender list listgate "
            f"computes differently from Mailman: {len(stats.sender_mismatches)}."]
    for mode in MODES:
        for line in stats.false_rejects[mode]:
            out.append(f"- FALSE REJECT ({mode}): {line}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--cases", type=int, required=True)
    ap.add_argument("--out", type=Path, default=Path("fidelity-run"))
    ap.add_argument("--batch", type=int, default=200, help="cases per batch of worlds")
    ap.add_argument("--only", action="append", default=[], help="print this case in full")
    ap.add_argument("--timeline", action="store_true",
                    help="worlds change between listgate's first look and the posts")
    args = ap.parse_args(argv)
    # SIGTERM ends the run like ^C does: the oracle's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with (args.out / "results.jsonl").open("w") as fh, \
            MailmanOracle(args.out / "mailman") as oracle:

        def keep(r: CaseResult) -> None:
            fh.write(json.dumps(result_json(r), default=str) + "\n")
            if r.case_id in args.only:
                print(json.dumps(result_json(r), default=str, indent=2))

        def progress(line: str) -> None:
            print(f"[{(time.monotonic() - began) / 60:5.1f} min] {line}", flush=True)

        if args.timeline:
            stats, results = RunStats(), []
            done, batch_seed = 0, args.seed
            while done < args.cases:
                n = min(args.batch, args.cases - done)
                out, part = run_timeline(oracle, args.out / "work", batch_seed, n)
                stats.merge(out.stats)
                for r in part:
                    keep(r)
                results += part
                done += n
                batch_seed += 1
                progress(f"{done}/{args.cases} cases; changes {out.changes}; turned "
                         f"{out.turned}; changes not made {out.failed_changes}")
                stats.errors += [f"change not made: {c}" for c in out.failed_changes]
        else:
            stats, results = run(oracle, args.out / "work", args.seed, args.cases,
                                 batch_cases=args.batch, on_case=keep, progress=progress,
                                 keep_going=True)
    seconds = time.monotonic() - began
    report = stats.report()
    print(report)
    for mode in MODES:
        for line in stats.false_rejects[mode]:
            print(f"FALSE REJECT ({mode}): {line}")
    for line in stats.errors + stats.sender_mismatches:
        print(line)
    (args.out / "report.md").write_text(markdown(stats, args.seed, args.cases, seconds, results))
    (args.out / "summary.json").write_text(json.dumps({
        "seed": args.seed, "cases": args.cases, "seconds": seconds,
        "outcomes": dict(stats.outcomes), "refused": stats.refused,
        "rcpt_informative": stats.rcpt_informative, "twins": stats.twins,
        "false_rejects": {m: len(v) for m, v in stats.false_rejects.items()},
        "missed": {m: dict(stats.missed[m]) for m in MODES},
        "miss_rate": {m: stats.miss_rate(m) for m in MODES},
        "excused": dict(stats.excused), "errors": stats.errors,
        "sender_mismatches": stats.sender_mismatches,
    }, indent=2))
    bad = any(stats.false_rejects[m] for m in MODES) or stats.errors
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
