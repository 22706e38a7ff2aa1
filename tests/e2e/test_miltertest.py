"""listgate driven by OpenDKIM's miltertest (an independent MTA-side milter client).

The Lua script (lua/listgate_rcpt.lua) negotiates with a version-6 offer (what Postfix 3.7
sends) or a version-2 offer (SMFI_V2_ACTS 0x3F, SMFI_V2_PROT 0x7F), runs member,
non-member, multi-recipient and abort-between-transactions sessions, and prints RESULT lines
that these tests parse.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import (
    LUA_DIR,
    POSTERS,
    ListgateProcess,
    MiltertestRun,
    find_binary,
    free_port,
    run_miltertest,
)

pytestmark = pytest.mark.miltertest

SCRIPT = LUA_DIR / "listgate_rcpt.lua"
# offer name -> (version, actions, protocol steps) the script offers
OFFERS = {"6": (6, 0x1FF, 0x1FFFFF), "2": (2, 0x3F, 0x7F)}
SMFIP_NORCPT = 0x8
SMFIP_NR_RCPT = 0x8000

Runner = Callable[..., MiltertestRun]


@pytest.fixture(scope="module")
def milter_spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A listgate listening on a free 127.0.0.1 port, for the whole module."""
    find_binary("miltertest")  # fail early with the install hint
    spec = f"inet:127.0.0.1:{free_port()}"
    lg = ListgateProcess(tmp_path_factory.mktemp("listgate-mt"), [spec], POSTERS)
    lg.start()
    try:
        yield spec
    finally:
        lg.stop()


@pytest.fixture(scope="module")
def miltertest_run(milter_spec: str) -> Runner:
    """Run the Lua script once per (offer, socket) and cache the outcome."""
    cache: dict[tuple[str, str], MiltertestRun] = {}
    port = milter_spec.rsplit(":", 1)[1]

    def run(offer: str, sock: str = "") -> MiltertestRun:
        key = (offer, sock)
        if key not in cache:
            defines = {"offer": offer, "sock": sock} if sock else {"offer": offer, "port": port}
            cache[key] = run_miltertest(SCRIPT, defines)
        return cache[key]

    return run


def results(run: MiltertestRun) -> dict[str, str]:
    """The RESULT lines of a run that completed, or fail with everything it printed."""
    assert run.returncode == 0, run.describe()
    assert "DONE" in run.stdout.splitlines(), run.describe()
    assert "ERROR" not in run.stdout, run.describe()
    return run.results


@pytest.mark.parametrize("offer", OFFERS)
def test_negotiation_stays_within_the_offer(offer: str, miltertest_run: Runner) -> None:
    """listgate's option reply requests only offered actions/steps and keeps RCPT with a reply."""
    run = miltertest_run(offer)
    got = results(run)
    version, offered_actions, offered_protocol = OFFERS[offer]
    assert got["offer"] == f"{version}/{offered_actions:#x}/{offered_protocol:#x}", run.describe()
    actions, protocol = int(got["actions"], 16), int(got["protocol"], 16)
    assert actions & ~offered_actions == 0, f"actions {actions:#x} not offered\n{run.describe()}"
    assert protocol & ~offered_protocol == 0, f"steps {protocol:#x} not offered\n{run.describe()}"
    assert not protocol & SMFIP_NORCPT, "listgate must see RCPT"
    assert not protocol & SMFIP_NR_RCPT, "listgate must reply to RCPT"


@pytest.mark.parametrize("offer", OFFERS)
def test_member_continues(offer: str, miltertest_run: Runner) -> None:
    """A member's RCPT to the list is answered with SMFIR_CONTINUE ('c')."""
    run = miltertest_run(offer)
    assert results(run)["member"] == "c", run.describe()


@pytest.mark.parametrize("offer", OFFERS)
def test_non_member_gets_reply_code(offer: str, miltertest_run: Runner) -> None:
    """A non-member's RCPT to the list is answered with SMFIR_REPLYCODE ('y')."""
    run = miltertest_run(offer)
    assert results(run)["nonmember"] == "y", run.describe()


@pytest.mark.parametrize("offer", OFFERS)
def test_multi_recipient(offer: str, miltertest_run: Runner) -> None:
    """alice, list, bob from a non-member are answered c, y, c."""
    run = miltertest_run(offer)
    assert results(run)["multi"] == "c,y,c", run.describe()


@pytest.mark.parametrize("offer", OFFERS)
def test_abort_resets_the_sender(offer: str, miltertest_run: Runner) -> None:
    """After SMFIC_ABORT the next transaction on the connection is decided on its own sender."""
    run = miltertest_run(offer)
    got = results(run)
    assert got["abort_outsider_then_member"] == "y|c", run.describe()
    assert got["abort_member_then_outsider"] == "c|y", run.describe()


def test_unix_socket(tmp_path: Path, miltertest_run: Runner) -> None:
    """The same decisions hold when listgate listens on a unix: socket."""
    spec = f"unix:{tmp_path / 'listgate.sock'}"
    lg = ListgateProcess(tmp_path, [spec], POSTERS)
    lg.start()
    try:
        run = miltertest_run("6", spec)
        got = results(run)
    finally:
        lg.stop()
    assert (got["member"], got["nonmember"], got["multi"]) == ("c", "y", "c,y,c"), run.describe()


def _optneg(spec: str, version: int, actions: int, protocol: int) -> tuple[bytes, bytes]:
    """Send one SMFIC_OPTNEG over a raw socket; return (reply command, reply data)."""
    host, _, port = spec.removeprefix("inet:").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        body = b"O" + struct.pack(">III", version, actions, protocol)
        s.sendall(struct.pack(">I", len(body)) + body)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    assert len(buf) >= 5, f"short or no OPTNEG reply: {buf!r}"
    length = struct.unpack(">I", buf[:4])[0]
    return buf[4:5], buf[5 : 4 + length]


@pytest.mark.parametrize("offer", OFFERS)
def test_optneg_reply_version(offer: str, milter_spec: str) -> None:
    """The OPTNEG reply's version is 2..offered (miltertest cannot see it; Postfix refuses more)."""
    version, actions, protocol = OFFERS[offer]
    cmd, data = _optneg(milter_spec, version, actions, protocol)
    assert cmd == b"O", (cmd, data)
    assert len(data) >= 12, data
    got_version, got_actions, got_protocol = struct.unpack(">III", data[:12])
    assert 2 <= got_version <= version, f"version {got_version} for an offer of {version}"
    assert got_actions & ~actions == 0
    assert got_protocol & ~protocol == 0
