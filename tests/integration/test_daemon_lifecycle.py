"""The daemon as a postmaster runs it: a real ``listgate serve`` process, its signals,
its systemd notifications and its /metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port

from listgate.milter import Abort, Continue, EnvelopeFrom, EnvelopeRecipient, ReplyCode
from listgate.server.client import MilterClient

REJECT = ReplyCode(
    550, "5.7.1", "<outsider@example.net> is not allowed to post to <list@example.org>"
)


def config_text(milter_port: int, metrics_port: int, extra: str = "") -> str:
    """A static-map config with the milter and metrics on loopback."""
    return f"""
[milter]
listen = "inet:127.0.0.1:{milter_port}"

[static.posters]
"list@example.org" = ["member@example.com"]

[metrics]
listen = "127.0.0.1:{metrics_port}"
{extra}
"""


@dataclass
class Proc:
    """A running ``listgate serve``."""

    popen: subprocess.Popen[bytes]
    config: Path
    milter_port: int
    metrics_port: int
    notify: socket.socket
    log_path: Path

    @property
    def spec(self) -> str:
        return f"inet:127.0.0.1:{self.milter_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def notifications(self, timeout: float = 5.0, until: str | None = None) -> list[str]:
        """sd_notify datagrams received so far (waiting for *until* if given)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
            if until is not None and until in got[-1]:
                break
        return got

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; log:\n{self.log()}")


def wait_every_reload(proc: Proc, timeout: float = 10.0) -> None:
    """Wait until every process serving connections (each worker, or the one process)
    has logged its reload: a connection may be in any of them."""
    serving = len(children(proc.popen.pid)) or 1
    deadline = time.monotonic() + timeout
    while proc.log().count("reloaded ") < serving and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def running(tmp_path: Path, text: str, milter_port: int, metrics_port: int = 0) -> Iterator[Proc]:
    """``listgate serve`` on *text* with NOTIFY_SOCKET set, until READY=1; SIGTERM (then
    SIGKILL) on exit."""
    cfg = tmp_path / "listgate.toml"
    cfg.write_text(text)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = tmp_path / "listgate.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "listgate", "serve", "--allow-root", "--config", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    proc = Proc(popen, cfg, milter_port, metrics_port, notify, log_path)
    try:
        ready = proc.notifications(until="READY=1", timeout=15)
        assert any("READY=1" in n for n in ready), (ready, proc.log())
        yield proc
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        notify.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Proc]:
    """``listgate serve`` with NOTIFY_SOCKET set, on free loopback ports."""
    milter_port, metrics_port = free_port(), free_port()
    with running(tmp_path, config_text(milter_port, metrics_port), milter_port,
                 metrics_port) as proc:
        yield proc


async def _one_rcpt(client: MilterClient, sender: str) -> object:
    await client.step(EnvelopeFrom(f"<{sender}>"))
    reply = await client.step(EnvelopeRecipient("<list@example.org>"))
    await client.send(Abort())
    return reply


def scrape(port: int) -> str:
    """The /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(page: str, name: str, **labels: str) -> float:
    """One sample's value from a /metrics page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in page.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if got == want:
            return float(value)
    return 0.0


def test_sighup_reload_applies_override_on_an_open_connection(daemon: Proc) -> None:
    """SIGHUP loads a new override; a connection opened before it keeps working and sees
    the new answer; systemd hears RELOADING=1 then READY=1."""

    async def run() -> list[object]:
        async with await MilterClient.connect(daemon.spec) as client:
            await client.negotiate()
            before = await _one_rcpt(client, "outsider@example.net")
            daemon.config.write_text(
                config_text(daemon.milter_port, daemon.metrics_port,
                            '[lists."list@example.org"]\nallow = ["@example.net"]\n')
            )
            daemon.popen.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_every_reload, daemon)
            after = await _one_rcpt(client, "outsider@example.net")
            return [before, after]

    before, after = asyncio.run(run())
    assert before == REJECT
    assert after == Continue()
    notes = "\n".join(daemon.notifications(until="READY=1"))
    assert "RELOADING=1" in notes
    assert notes.index("RELOADING=1") < notes.rindex("READY=1")
    assert "override allow @example.net" in daemon.log()


def test_sighup_with_a_bad_file_keeps_the_running_config(daemon: Proc) -> None:
    """A broken file on SIGHUP is logged key by key and the old configuration stays."""
    daemon.config.write_text(
        config_text(daemon.milter_port, daemon.metrics_port, "[milter]\nmax_connections = -1\n")
    )
    daemon.popen.send_signal(signal.SIGHUP)
    daemon.wait_log("reload failed, keeping the running configuration")

    async def run() -> object:
        async with await MilterClient.connect(daemon.spec) as client:
            await client.negotiate()
            return await _one_rcpt(client, "outsider@example.net")

    assert asyncio.run(run()) == REJECT
    assert daemon.popen.poll() is None


def test_metrics_move_after_real_decisions(daemon: Proc) -> None:
    """After real milter decisions, /metrics shows the decision counters moved and the
    connection gauge."""
    before = scrape(daemon.metrics_port)

    async def run() -> None:
        async with await MilterClient.connect(daemon.spec) as client:
            await client.negotiate()
            for sender in ("member@example.com", "outsider@example.net", "outsider@example.net"):
                await _one_rcpt(client, sender)
            page = await asyncio.to_thread(scrape, daemon.metrics_port)
            assert metric(page, "listgate_open_connections", service="milter") == 1

    asyncio.run(run())
    after = scrape(daemon.metrics_port)
    labels = {"frontend": "milter", "list": "list@example.org"}
    assert metric(after, "listgate_decisions_total", verdict="reject", **labels) == (
        metric(before, "listgate_decisions_total", verdict="reject", **labels) + 2
    )
    assert metric(after, "listgate_decisions_total", verdict="accept", **labels) == (
        metric(before, "listgate_decisions_total", verdict="accept", **labels) + 1
    )


def test_sigterm_drains_and_notifies_stopping(daemon: Proc) -> None:
    """SIGTERM: systemd hears STOPPING=1, the process exits 0 and removes nothing it
    should keep."""
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.popen.wait(15) == 0
    notes = "\n".join(daemon.notifications(timeout=2))
    assert "STOPPING=1" in notes
    assert "stopped" in daemon.log()


def test_refuses_to_run_as_root_unless_told(tmp_path: Path) -> None:
    """As root, ``listgate serve`` exits 2 with a clear message unless --allow-root."""
    if os.geteuid() != 0:
        pytest.fail("this suite runs as root (CI does); run it as root to check this")
    result = subprocess.run(
        [sys.executable, "-m", "listgate", "serve"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "refusing to run as root" in result.stderr


def children(pid: int) -> list[int]:
    """The child processes of *pid* (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def test_workers_are_supervised_through_reload_and_drain(tmp_path: Path) -> None:
    """With workers = 2 the supervisor tells systemd READY once both workers listen,
    passes SIGHUP on (each worker reloads) and drains both on SIGTERM (exit 0)."""
    milter_port = free_port()
    text = f'[milter]\nlisten = "inet:127.0.0.1:{milter_port}"\nworkers = 2\n' + (
        '[static.posters]\n"list@example.org" = ["member@example.com"]\n')
    with running(tmp_path, text, milter_port) as proc:
        assert len(children(proc.popen.pid)) == 2
        proc.wait_log("listgate supervising 2 workers")

        async def ask() -> object:
            async with await MilterClient.connect(proc.spec) as client:
                await client.negotiate()
                return await _one_rcpt(client, "outsider@example.net")

        assert asyncio.run(ask()) == REJECT
        proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while proc.log().count("reloaded ") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.log().count("reloaded ") == 2, proc.log()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0, proc.log()
        assert "STOPPING=1" in "\n".join(proc.notifications(timeout=2))
        assert proc.log().count("stopped") == 2


@contextlib.contextmanager
def silent_mailman_daemon(tmp_path: Path, extra: str = "") -> Iterator[Proc]:
    """``listgate serve`` on the Mailman backend whose REST port accepts connections
    (backlog) and never answers: a decision stays in flight for the 25 s REST timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        rest_port = silent.getsockname()[1]
        secret = tmp_path / "pw"
        secret.write_text("pw\n")
        milter_port = free_port()
        text = (f'[milter]\nlisten = "inet:127.0.0.1:{milter_port}"\nshutdown_timeout = 60\n'
                f'{extra}[backend]\ntype = "mailman"\n[mailman]\n'
                f'url = "http://127.0.0.1:{rest_port}/3.1"\n'
                f'password_file = "{secret}"\ntimeout = 25\n')
        with running(tmp_path, text, milter_port) as proc:
            yield proc


async def with_a_decision_in_flight(
    proc: Proc, stop: Callable[[asyncio.Task[object]], Awaitable[None]],
) -> None:
    """Leave a RCPT waiting for the silent REST API, then await *stop* (given the RCPT's
    task)."""
    async with await MilterClient.connect(proc.spec) as client:
        await client.negotiate()
        await client.step(EnvelopeFrom("<outsider@example.net>"))
        rcpt = asyncio.create_task(client.step(EnvelopeRecipient("<l@example.org>")))
        await asyncio.sleep(0.5)  # the decision waits for the silent REST API
        try:
            await stop(rcpt)
        finally:
            rcpt.cancel()
            await asyncio.gather(rcpt, return_exceptions=True)


def test_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    """A second SIGTERM while a decision is still in flight (Mailman does not answer)
    ends the drain at once: exit status 1, long before shutdown_timeout."""
    with silent_mailman_daemon(tmp_path) as proc:

        async def stop(rcpt: asyncio.Task[object]) -> None:
            began = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait_log, "draining")
            assert proc.popen.poll() is None, "the drain did not wait"
            assert not rcpt.done()
            proc.popen.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.popen.wait, 10)
            assert (code, time.monotonic() - began < 10) == (1, True), proc.log()

        asyncio.run(with_a_decision_in_flight(proc, stop))
    assert "SIGTERM received again: exiting at once" in proc.log()


def test_two_stop_signals_in_one_turn_still_exit_at_once(tmp_path: Path) -> None:
    """SIGTERM and SIGINT sent back to back (the supervisor passes a second stop signal on
    as SIGINT right after the first) may be handled in one turn of the loop, before the
    drain began: the process still exits at once, not after the decision in flight."""
    with silent_mailman_daemon(tmp_path, "workers = 1\n") as proc:

        async def stop(rcpt: asyncio.Task[object]) -> None:
            began = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.send_signal(signal.SIGINT)
            code = await asyncio.to_thread(proc.popen.wait, 20)
            assert (code, time.monotonic() - began < 5) == (1, True), proc.log()

        asyncio.run(with_a_decision_in_flight(proc, stop))
    assert "received again: exiting at once" in proc.log()


def test_default_workers_sum_metrics_reload_and_drain(tmp_path: Path) -> None:
    """The shipped defaults (no workers key: "auto", here 2 on this machine's cores, at
    least 2 forced by the test): /metrics is served by the supervisor and counts the
    decisions of every worker (each connection lands on either), a SIGHUP reaches every
    worker and ends with READY=1, and SIGTERM drains them all (exit 0)."""
    from listgate.config import worker_count

    milter_port, metrics_port = free_port(), free_port()
    text = config_text(milter_port, metrics_port)
    if worker_count("auto") < 2:  # a one-core machine: the default would be one process
        text = text.replace("[milter]\n", "[milter]\nworkers = 2\n")
    with running(tmp_path, text, milter_port, metrics_port) as proc:
        workers = children(proc.popen.pid)
        assert len(workers) >= 2
        sessions = 24

        async def one(sender: str) -> object:
            async with await MilterClient.connect(proc.spec) as client:
                await client.negotiate()
                return await _one_rcpt(client, sender)

        async def many() -> list[object]:
            return list(await asyncio.gather(*(
                one("outsider@example.net" if i % 2 else "member@example.com")
                for i in range(sessions))))

        replies = asyncio.run(many())
        assert replies.count(REJECT) == sessions // 2
        labels = {"frontend": "milter", "list": "list@example.org"}
        page = scrape(metrics_port)
        assert metric(page, "listgate_decisions_total", verdict="reject", **labels) == sessions // 2
        assert metric(page, "listgate_decisions_total", verdict="accept", **labels) == sessions // 2
        deadline = time.monotonic() + 5  # decision lines are written in batches
        while time.monotonic() < deadline:
            first_ids = [line for line in proc.log().splitlines()
                         if "listgate.decision: [c1] " in line]
            if len(first_ids) >= 2:
                break
            time.sleep(0.05)
        assert len(first_ids) >= 2, "every connection went to one worker: nothing was summed"
        proc.notifications(timeout=0.5)  # READY=1 of the start, read
        proc.popen.send_signal(signal.SIGHUP)
        notes = "\n".join(proc.notifications(until="READY=1", timeout=15))
        assert "RELOADING=1" in notes, (notes, proc.log())
        assert "READY=1" in notes, (notes, proc.log())
        assert notes.index("RELOADING=1") < notes.index("READY=1")
        assert proc.log().count("reloaded ") == len(workers), proc.log()
        assert asyncio.run(one("outsider@example.net")) == REJECT
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0, proc.log()
        assert "STOPPING=1" in "\n".join(proc.notifications(timeout=2))
        assert proc.log().count("stopped") == len(workers)


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL of the supervisor (which cannot pass anything on) still ends both workers
    within seconds, and the port is free again: no orphan keeps answering on it with an
    old configuration next to a restarted listgate."""
    milter_port = free_port()
    text = f'[milter]\nlisten = "inet:127.0.0.1:{milter_port}"\nworkers = 2\n' + (
        '[static.posters]\n"list@example.org" = ["member@example.com"]\n')
    with running(tmp_path, text, milter_port) as proc:
        workers = children(proc.popen.pid)
        assert len(workers) == 2
        proc.popen.kill()
        proc.popen.wait(5)

        def alive(pid: int) -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return False
            return state != "Z"

        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers), proc.log()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", milter_port), timeout=2).close()
