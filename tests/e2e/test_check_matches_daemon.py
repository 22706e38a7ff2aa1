"""``listgate check`` (offline, same config) agrees with the running daemon's answer
(``listgate check --via``) on every case of the Mailman test matrix (issue #3).

One real Mailman core (REST runner) holds the lists; one ``listgate serve`` subprocess
(backend mailman) listens on a free loopback milter port. For each case both commands run
as subprocesses with ``--json``; verdict, ``smtp_reply`` and exit status must be equal.
Run with ``-s`` to see the table of cases.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from .harness import REPO_ROOT, free_port, listgate_command, tail
from .mailman_fixtures import (
    CAROL_ALT,
    FRIEND,
    MEMBER,
    OUTSIDER,
    OWNER,
    MailmanListgate,
    populate,
    require_mailman,
)

UNSUBSCRIBED_OWNER = "chief@example.com"
"""An owner of the main list who is not subscribed: a nonmember to Mailman."""
BANNED = "banned@example.net"
"""Banned on the hold list, whose other nonmembers are held (so accepted at SMTP)."""
SRS_MEMBER = "SRS0=HHH=TT=example.com=member@fwd.example"
"""A forwarder's SRS envelope around MEMBER."""

EXIT = {"accept": 0, "reject": 1, "tempfail": 2}


@dataclass(frozen=True)
class Case:
    """One (sender, recipient) of the matrix and the verdict Mailman's chain implies."""

    name: str
    sender: str
    recipient: str
    expect: str


@dataclass(frozen=True)
class Matrix:
    """The running daemon, its config, and the cases."""

    daemon: MailmanListgate
    via: str
    cases: dict[str, Case]
    headers_list: str
    """A list that rejects nonmembers, with ``decide_at = "headers"`` in the config."""


@dataclass(frozen=True)
class Answer:
    """One ``listgate check ... --json`` run."""

    argv: list[str]
    rc: int
    out: dict[str, object]
    stdout: str
    stderr: str

    def describe(self) -> str:
        """The run, for assertion messages."""
        return f"$ {' '.join(self.argv)}\nrc={self.rc}\n{self.stdout}{self.stderr}"


CASE_NAMES = [
    "member", "nonmember", "subscribed-owner", "unsubscribed-owner", "accept-record",
    "linked-address", "list-owner", "list-request", "plus-tag-member",
    "plus-tag-nonmember", "banned", "null-sender", "star-sender", "emergency",
    "moderator-password", "hold", "srs-member",
]


def build_cases(main: str, emergency: str, modpass: str, hold: str) -> dict[str, Case]:
    """Every case, by name (the names of CASE_NAMES)."""
    local, _, domain = main.partition("@")
    cases = [
        Case("member", MEMBER, main, "accept"),
        Case("nonmember", OUTSIDER, main, "reject"),
        Case("subscribed-owner", OWNER, main, "accept"),
        Case("unsubscribed-owner", UNSUBSCRIBED_OWNER, main, "reject"),
        Case("accept-record", FRIEND, main, "accept"),
        Case("linked-address", CAROL_ALT, main, "accept"),
        Case("list-owner", OUTSIDER, f"{local}-owner@{domain}", "accept"),
        Case("list-request", OUTSIDER, f"{local}-request@{domain}", "accept"),
        Case("plus-tag-member", MEMBER, f"{local}+x@{domain}", "accept"),
        Case("plus-tag-nonmember", OUTSIDER, f"{local}+x@{domain}", "reject"),
        Case("banned", BANNED, hold, "reject"),
        Case("null-sender", "<>", main, "reject"),
        Case("star-sender", "*@example.org", main, "reject"),
        Case("emergency", OUTSIDER, emergency, "accept"),
        Case("moderator-password", OUTSIDER, modpass, "accept"),
        Case("hold", OUTSIDER, hold, "accept"),
        Case("srs-member", SRS_MEMBER, main, "accept"),
    ]
    assert [c.name for c in cases] == CASE_NAMES
    return {c.name: c for c in cases}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """A Mailman core with the matrix's lists and a listgate daemon asking it."""
    require_mailman()
    core = MailmanCore(tmp_path_factory.mktemp("mailman-core"))
    core.start()
    try:
        world = populate(core)
        client = core.client()
        core.add_owner(client.get_list(world.list_address), UNSUBSCRIBED_OWNER)
        reject = {"default_nonmember_action": "reject"}
        emergency = core.new_list(settings={**reject, "emergency": True})
        modpass = core.new_list(settings={**reject, "moderator_password": "secret"})
        hold = core.new_list(settings={"default_nonmember_action": "hold"})
        core.ban(hold, BANNED)
        headers = str(core.new_list(settings=reject).fqdn_listname)
        cases = build_cases(
            world.list_address, str(emergency.fqdn_listname), str(modpass.fqdn_listname),
            str(hold.fqdn_listname),
        )
        via = f"inet:127.0.0.1:{free_port()}"
        sections = {f"lists.{json.dumps(headers)}": {"decide_at": "headers"}}
        daemon = MailmanListgate(tmp_path_factory.mktemp("lg-check"), [via], core, sections)
        daemon.start()
        try:
            yield Matrix(daemon, via, cases, headers)
        finally:
            daemon.stop()
    finally:
        core.stop()


@pytest.fixture(scope="module")
def table() -> Iterator[list[tuple[str, ...]]]:
    """Rows of the summary table, printed at the end of the module (``-s``)."""
    rows: list[tuple[str, ...]] = []
    yield rows
    if rows:
        head = ("case", "sender", "recipient", "offline", "via", "smtp_reply")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        print("\n=== listgate check (offline) vs --via (daemon) ===")
        for row in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1])


def run_check(*args: str) -> Answer:
    """``listgate check ARGS... --json`` as a subprocess."""
    argv = [*listgate_command(), "check", *args, "--json"]
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=30, check=False,
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    return Answer(argv, proc.returncode, out, proc.stdout, proc.stderr)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_check_agrees_with_daemon(
    name: str, matrix: Matrix, table: list[tuple[str, ...]], tmp_path: Path
) -> None:
    """Offline ``listgate check`` and ``--via`` the daemon give one verdict, reply and rc."""
    case = matrix.cases[name]
    config = str(matrix.daemon.config_path)
    offline = run_check(case.sender, case.recipient, "--config", config)
    via = run_check(case.sender, case.recipient, "--via", matrix.via)
    table.append((
        name, case.sender, case.recipient, f"{offline.out.get('verdict')}/{offline.rc}",
        f"{via.out.get('verdict')}/{via.rc}", str(via.out.get("smtp_reply") or "-"),
    ))
    detail = assert_agree(offline, via, matrix.daemon)
    assert offline.out["verdict"] == case.expect, f"Mailman's chain says {case.expect}\n{detail}"


def assert_agree(offline: Answer, via: Answer, daemon: MailmanListgate) -> str:
    """Both runs printed JSON with the same verdict and smtp_reply, and the exit status of
    that verdict; return the details of both runs."""
    detail = (
        f"--- offline ---\n{offline.describe()}\n--- via ---\n{via.describe()}\n"
        f"--- daemon log (tail) ---\n{tail(daemon.stderr_text(), 15)}"
    )
    assert offline.out, f"offline check printed no JSON\n{detail}"
    assert via.out, f"--via check printed no JSON\n{detail}"
    assert via.out["verdict"] == offline.out["verdict"], detail
    assert via.out["smtp_reply"] == offline.out["smtp_reply"], detail
    assert via.rc == offline.rc == EXIT[str(offline.out["verdict"])], detail
    return detail


def test_check_agrees_with_daemon_on_headers_list(matrix: Matrix) -> None:
    """On a decide_at = "headers" list, offline check and --via agree for a nonmember."""
    offline = run_check(OUTSIDER, matrix.headers_list, "--config", str(matrix.daemon.config_path))
    via = run_check(OUTSIDER, matrix.headers_list, "--via", matrix.via)
    assert_agree(offline, via, matrix.daemon)
