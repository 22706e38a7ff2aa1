"""Logs that carry listgate's own lines, against a real Mailman core: at the default level a
daemon on the Mailman backend logs no line from another library (the REST calls are
there at debug), and ``listgate check``/``lists`` print their answer and nothing else."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mailman_harness import MailmanCore
from mailmanclient.restobjects.mailinglist import MailingList
from support import ListgateServe, free_port

from listgate.milter import Abort, EnvelopeFrom, EnvelopeRecipient
from listgate.server.client import MilterClient

MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                  r"(?P<logger>[^\s:]+): ")


@pytest.fixture
def gated_list(mailman_core: MailmanCore, mlist: MailingList) -> str:
    """The test list's posting address: MEMBER subscribed, nonmembers rejected."""
    mailman_core.set_settings(mlist, default_nonmember_action="reject")
    mailman_core.subscribe(mlist, MEMBER)
    return str(mlist.fqdn_listname)


def config_text(core: MailmanCore, tmp_path: Path, spec: str, log: str = "") -> Path:
    """A Mailman-backend config (the password in a 0600 file); *log* adds [log] keys."""
    password = tmp_path / "mailman.password"
    password.touch(mode=0o600)
    password.write_text(core.password + "\n")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[milter]\nlisten = "{spec}"\n[backend]\ntype = "mailman"\n'
        f"[mailman]\nurl = {json.dumps(core.url)}\nuser = {json.dumps(core.user)}\n"
        f"password_file = {json.dumps(str(password))}\n" + (f"[log]\n{log}\n" if log else "")
    )
    return path


def foreign_lines(log: str) -> list[str]:
    """Log lines not written by a ``listgate`` logger (or not in listgate's format)."""
    foreign = []
    for line in log.splitlines():
        match = LINE.match(line)
        logger = match.group("logger") if match else ""
        if logger != "listgate" and not logger.startswith("listgate."):
            foreign.append(line)
    return foreign


async def _rcpts(spec: str, list_address: str) -> None:
    async with await MilterClient.connect(spec) as client:
        await client.negotiate()
        for sender in (MEMBER, OUTSIDER, MEMBER):
            await client.step(EnvelopeFrom(f"<{sender}>"))
            await client.step(EnvelopeRecipient(f"<{list_address}>"))
            await client.send(Abort())


@pytest.fixture
def daemon_log(
    mailman_core: MailmanCore, gated_list: str, tmp_path: Path
) -> Iterator[Callable[[str], str]]:
    """``run(log_keys)``: serve on the Mailman backend with those [log] keys, send three
    RCPTs (member, nonmember, member), stop; the whole log."""
    started: list[ListgateServe] = []

    def run(log: str) -> str:
        workdir = tmp_path / f"run-{len(started)}"
        workdir.mkdir()
        spec = f"inet:127.0.0.1:{free_port()}"
        text = config_text(mailman_core, workdir, spec, log).read_text()
        serve = ListgateServe(workdir, text, wait_for=(spec,))
        started.append(serve)
        serve.start()
        asyncio.run(_rcpts(spec, gated_list))
        assert serve.stop() == 0, serve.log()
        return serve.log()

    yield run
    for serve in started:
        serve.kill()


def test_daemon_at_default_level_logs_only_listgate_lines(
    daemon_log: Callable[[str], str], gated_list: str
) -> None:
    """A daemon on the Mailman backend at the default level (no [log] level) logs no line
    from httpx, httpcore, mailmanclient or asyncio, while it decides real RCPTs."""
    log = daemon_log("")
    assert foreign_lines(log) == [], log
    assert f"<{OUTSIDER}> is not allowed to post to <{gated_list}>" in log, log
    assert "listgate ready" in log


def test_rest_traffic_is_visible_at_debug(daemon_log: Callable[[str], str]) -> None:
    """With [log] level = "debug" the same run shows the REST requests (httpx lines)."""
    log = daemon_log('level = "debug"')
    rest = [line for line in foreign_lines(log) if " httpx: HTTP Request: GET " in line]
    assert rest, log


def listgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "listgate", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("sender", "rc", "verdict"), [(MEMBER, 0, "accept"),
                                                       (OUTSIDER, 1, "reject")])
def test_check_prints_only_its_answer(
    mailman_core: MailmanCore, gated_list: str, tmp_path: Path,
    sender: str, rc: int, verdict: str,
) -> None:
    """``listgate check`` against the real core prints the verdict, reply and reasons on
    stdout and nothing at all on stderr."""
    config = config_text(mailman_core, tmp_path, "inet:127.0.0.1:8890")
    result = listgate("check", sender, gated_list, "--config", str(config))
    assert (result.returncode, result.stderr) == (rc, ""), result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"verdict: {verdict}"
    assert lines[1].startswith("reply:   ")
    assert lines[2] == "reasons:"
    assert len(lines) > 3
    assert all(line.startswith("  - ") for line in lines[3:]), result.stdout


def test_lists_prints_only_its_answer(
    mailman_core: MailmanCore, gated_list: str, tmp_path: Path
) -> None:
    """``listgate lists`` against the real core prints its table and nothing on stderr."""
    config = config_text(mailman_core, tmp_path, "inet:127.0.0.1:8890")
    result = listgate("lists", "--config", str(config))
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("LIST ")
    assert any(line.startswith(f"{gated_list} ") for line in lines[1:]), result.stdout
