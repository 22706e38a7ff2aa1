"""The ``listgate`` command line.

Invariants:
- ``main(argv)`` returns the exit status instead of exiting, so tests call it directly.
- Configuration problems print one line per problem, each naming its key, and exit 2
  (``serve``) or 1 (``config check``); they never print a traceback. ``config check``
  prints ``config_warnings`` in the same form (and exits 0); ``serve`` logs them.
- ``check`` and ``lists`` print their answer and nothing else at the default log level:
  other libraries log only warnings unless ``[log] level = "debug"`` (``setup_logging``).
- ``check`` exits 0 for accept, 1 for reject, 2 for tempfail or error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from listgate import __version__
from listgate.config import (
    EXAMPLE_CONFIG_PATH,
    Config,
    config_to_dict,
    config_warnings,
    load_config,
)
from listgate.decision.auth import SpfResult
from listgate.decision.model import (
    Decision,
    Evidence,
    PostingRequest,
    Verdict,
    normalize_address,
)
from listgate.decision.senders import mailman_senders
from listgate.errors import ConfigError, ListgateError
from listgate.log import setup_logging

__all__ = ["build_parser", "main"]

EXIT_FOR_VERDICT = {Verdict.ACCEPT: 0, Verdict.REJECT: 1, Verdict.TEMPFAIL: 2}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so docs can be generated from it)."""
    parser = argparse.ArgumentParser(
        prog="listgate",
        description="Decide Mailman list postings at SMTP RCPT time (milter).",
    )
    parser.add_argument("--version", action="version", version=f"listgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_help = f"TOML configuration file (default: the shipped example, {EXAMPLE_CONFIG_PATH})"
    p = sub.add_parser("serve", help="run the milter daemon in the foreground")
    p.add_argument("--config", "-c", type=Path, help=config_help)
    p.add_argument(
        "--allow-root",
        action="store_true",
        help="run even as root (by default listgate refuses: run it as its own user)",
    )

    p = sub.add_parser("check", help="explain the verdict for SENDER posting to LIST")
    p.add_argument("sender", metavar="SENDER", help="envelope sender ('<>' = null sender)")
    p.add_argument("list", metavar="LIST", help="recipient address (a list posting address)")
    p.add_argument("--config", "-c", type=Path, help=config_help)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--from",
        dest="header_from",
        action="append",
        default=[],
        metavar="HEADER_ADDR",
        help="a From: header address (repeatable): judge as at end of headers, like Mailman",
    )
    p.add_argument(
        "--spf",
        choices=[r.value for r in SpfResult],
        help="explain offline as if SPF gave this result for SENDER's domain "
        "(require_authenticated lists; no DNS is asked)",
    )
    p.add_argument(
        "--dkim-domain",
        dest="dkim_domains",
        action="append",
        default=[],
        metavar="D",
        help="explain offline as if the message had a valid DKIM signature with d=D "
        "(repeatable; no DNS is asked)",
    )
    p.add_argument(
        "--via",
        metavar="SOCKETSPEC",
        help="ask a running daemon over the milter protocol (e.g. inet:127.0.0.1:8890)",
    )

    p = sub.add_parser("lists", help="show each known list, its gate mode and nonmember action")
    p.add_argument("--config", "-c", type=Path, help=config_help)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("check", help="validate a config file and print the effective config")
    c.add_argument("file", nargs="?", type=Path, help=config_help)
    c = csub.add_parser(
        "init",
        help="write a complete, commented config (static map, or from Mailman's mailman.cfg)",
    )
    from listgate import config_init

    config_init.add_arguments(c)
    return parser


def _load(path: Path | None) -> Config:
    return load_config(path if path is not None else EXAMPLE_CONFIG_PATH)


def _load_for_command(path: Path | None) -> Config | None:
    """The config for a one-shot command, with logging set up; None (after printing one
    line per problem) when it is unusable."""
    try:
        config = _load(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return None
    setup_logging(config.log.level_number)
    return config


def _print_config_error(exc: ConfigError) -> None:
    where = f"{exc.source}: " if exc.source else ""
    for problem in exc.problems:
        print(f"listgate: {where}{problem}", file=sys.stderr)


def _cmd_serve(args: argparse.Namespace) -> int:
    from listgate.app import run

    if os.geteuid() == 0 and not args.allow_root:
        print(
            "listgate: refusing to run as root: run it as its own user (see "
            "deploy/systemd/listgate.service), or pass --allow-root",
            file=sys.stderr,
        )
        return 2
    try:
        config = _load(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    setup_logging(config.log.level_number, config.log.target, config.log.syslog_address)
    return run(config, args.config.resolve() if args.config is not None else None)


def _decision_dict(decision: Decision) -> dict[str, object]:
    return {
        "verdict": decision.verdict.value,
        "smtp_reply": decision.smtp_reply,
        "list": decision.list_address,
        "reasons": list(decision.reasons),
    }


def _cmd_check(args: argparse.Namespace) -> int:
    from listgate.app import build_gate

    config = _load_for_command(args.config)
    if config is None:
        return 2
    if args.via:
        return _check_via(args)
    sender = normalize_address(args.sender)
    request = PostingRequest(sender, normalize_address(args.list))
    if args.header_from:
        senders = mailman_senders([("From", a) for a in args.header_from], sender)
        request = dataclasses.replace(request, header_senders=senders or (sender,))
    authenticator = None
    if args.spf is not None or args.dkim_domains:
        from listgate.auth.authenticator import GivenResults

        authenticator = GivenResults(
            SpfResult(args.spf) if args.spf is not None else None, tuple(args.dkim_domains)
        )
        request = dataclasses.replace(request, evidence=Evidence(
            header_from=tuple(normalize_address(a) for a in args.header_from)))
    gate = build_gate(config, authenticator=authenticator)

    async def ask() -> Decision:
        try:
            return await gate.decide(request)
        finally:
            await gate.backend.aclose()

    decision = asyncio.run(ask())
    if args.json:
        print(json.dumps(_decision_dict(decision), indent=2))
    else:
        print(f"verdict: {decision.verdict.value}")
        print(f"reply:   {decision.smtp_reply or '250 (continue: the MTA accepts)'}")
        print("reasons:")
        for reason in decision.reasons:
            print(f"  - {reason}")
    return EXIT_FOR_VERDICT[decision.verdict]


def _check_via(args: argparse.Namespace) -> int:
    from listgate.server.client import ask_daemon

    try:
        reply = asyncio.run(
            ask_daemon(args.via, args.sender, args.list, header_from=args.header_from)
        )
    except (ListgateError, OSError, TimeoutError) as exc:
        print(f"listgate: cannot ask {args.via}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"via": args.via, **reply.as_dict()}, indent=2))
    else:
        print(f"verdict: {reply.verdict.value}")
        print(f"reply:   {reply.smtp_reply or '250 (continue: the MTA accepts)'}")
        print(f"via:     {args.via} (milter reply {reply.packet})")
    return EXIT_FOR_VERDICT[reply.verdict]


def _cmd_lists(args: argparse.Namespace) -> int:
    from listgate.app import build_gate

    config = _load_for_command(args.config)
    if config is None:
        return 2
    gate = build_gate(config)

    async def fetch() -> list[dict[str, object]]:
        try:
            policies = await gate.backend.list_policies()
        finally:
            await gate.backend.aclose()
        rows: list[dict[str, object]] = []
        for policy in policies:
            o = gate.overrides_for(policy.posting_address)
            rows.append({
                "list": policy.posting_address,
                "mode": o.mode.value,
                "decide_at": o.decide_at.value,
                "nonmembers": policy.default_nonmember_action.value,
                "members": policy.default_member_action.value,
                "hold": o.hold.value,
                "emergency": policy.emergency,
                "moderator_password": policy.moderator_password,
                "allow": list(o.allow),
                "require_authenticated": o.require_authenticated,
            })
        return rows

    try:
        rows = asyncio.run(fetch())
    except ListgateError as exc:
        print(f"listgate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'LIST':40} {'MODE':8} {'DECIDE':8} {'NONMEMBERS':10} NOTES")
    for r in rows:
        notes = []
        if r["emergency"]:
            notes.append("emergency: never rejected")
        if r["moderator_password"]:
            notes.append("moderator_password: Approved: may admit anyone")
        if r["hold"] == "reject":
            notes.append("holds rejected")
        if r["allow"]:
            notes.append(f"allow {len(r['allow'])}")  # type: ignore[arg-type]
        if r["require_authenticated"]:
            notes.append("members must be authenticated")
        print(f"{r['list']!s:40} {r['mode']!s:8} {r['decide_at']!s:8} "
              f"{r['nonmembers']!s:10} {'; '.join(notes)}")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.file)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    for warning in config_warnings(config):  # the lines ``serve`` logs at WARNING
        print(f"listgate: {config.source}: {warning}", file=sys.stderr)
    print(f"# {config.source}: OK")
    print(json.dumps(config_to_dict(config), indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "lists":
            return _cmd_lists(args)
        if args.config_command == "init":
            from listgate import config_init

            return config_init.run(args)
        return _cmd_config_check(args)
    except KeyboardInterrupt:
        return 130
