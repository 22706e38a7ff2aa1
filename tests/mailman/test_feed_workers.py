"""The change feed with several worker processes, end to end: ``listgate serve`` with
``workers = 2`` (a supervisor and two workers, each with its own cache) over a real
Mailman 3.3.10 core whose listgate plugin notifies the supervisor's ``[events]``
listener; the supervisor relays each message to both workers.

Every decision is asked on a new milter connection, so the kernel spreads them over both
workers (SO_REUSEPORT); with 16 connections the chance that one worker saw none is
2^-15. Cache lifetimes are an hour: a worker that missed a change would keep its old
verdict for that long."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from feed_helpers import plugin_config, plugin_site
from mailman_harness import MailmanCore
from mailmanclient.restobjects.mailinglist import MailingList

from listgate.events import ChangeSet, Message, encode, sign
from listgate.milter import Continue, ReplyCode
from tests.integration.frontends import MilterPeer
from tests.integration.test_daemon_lifecycle import Proc, children, metric, running, scrape
from tests.integration.test_events_wiring import post
from tests.support import free_port

CONNECTIONS = 16
FOLLOW = 1.0
"""Seconds within which every worker follows a change (the plugin's POST, the relay)."""
MEMBER = "member@example.org"


@dataclass
class World:
    core: MailmanCore
    proc: Proc
    events_port: int
    secret: bytes

    def verdicts(self, sender: str, ml: MailingList) -> list[str]:
        """The verdict of one RCPT on each of CONNECTIONS new milter connections."""
        out = []
        for _ in range(CONNECTIONS):
            with MilterPeer(self.proc.milter_port, timeout=30.0) as peer:
                assert isinstance(peer, MilterPeer)
                peer.hello()
                reply = peer.ask(sender, ml.fqdn_listname)
            if isinstance(reply, Continue):
                out.append("accept")
            else:
                assert isinstance(reply, ReplyCode), reply
                out.append("reject" if reply.code // 100 == 5 else "tempfail")
        return out

    def follow(self, sender: str, ml: MailingList, want: str) -> float:
        """Seconds until every one of CONNECTIONS new connections answers *want*."""
        began = time.monotonic()
        while True:
            seen = self.verdicts(sender, ml)
            elapsed = time.monotonic() - began
            if set(seen) == {want}:
                return elapsed
            assert elapsed <= FOLLOW, f"{seen} {elapsed:.2f} s after the change"
            time.sleep(0.05)

    def metrics(self) -> str:
        return scrape(self.proc.metrics_port)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A plugin-enabled Mailman core (heartbeat 1 s) and ``listgate serve`` with two
    workers, hour-long TTLs, the feed and metrics; the feed healthy before the tests."""
    base = tmp_path_factory.mktemp("feed-workers")
    secret_file = base / "events-secret"
    secret_file.write_text(secrets.token_hex(32) + "\n")
    events_port, milter_port, metrics_port = free_port(), free_port(), free_port()
    _cfg, section = plugin_config(base, [f"http://127.0.0.1:{events_port}/"], secret_file,
                                  heartbeat=1.0)
    core = MailmanCore(base / "core", extra_config=section, pythonpath=[plugin_site(base)])
    core.start()
    user, password = core.auth
    text = f"""
[milter]
listen = "inet:127.0.0.1:{milter_port}"
workers = 2
[backend]
type = "mailman"
[mailman]
url = "{core.url}"
user = "{user}"
password = "{password}"
[cache]
ttl = 3600
negative_ttl = 3600
policy_ttl = 3600
directory_ttl = 3600
[events]
listen = "inet:127.0.0.1:{events_port}"
secret_file = "{secret_file}"
max_silence = 3.0
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    try:
        with running(Path(base), text, milter_port, metrics_port) as proc:
            assert len(children(proc.popen.pid)) == 2, proc.log()
            secret = secret_file.read_text().strip().encode()
            world = World(core, proc, events_port, secret)
            deadline = time.monotonic() + 15
            while (metric(world.metrics(), "listgate_feed_healthy") != 1.0
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            assert metric(world.metrics(), "listgate_feed_healthy") == 1.0, proc.log()
            yield world
    finally:
        core.close()


def test_every_worker_follows_changes_both_ways(world: World) -> None:
    """Both workers cache a verdict; after a ban every connection rejects within FOLLOW
    (a worker the message missed would accept for an hour), after unbanning and after
    subscribing a refused sender every one accepts; no reject waited for a refetch (the
    relayed feed covered each worker's facts)."""
    core = world.core
    ml = core.new_list({"default_nonmember_action": "reject"})
    try:
        core.subscribe(ml, MEMBER)
        stranger = f"new.{secrets.token_hex(3)}@example.net"
        world.follow(MEMBER, ml, "accept")  # the new list reached every worker
        assert set(world.verdicts(stranger, ml)) == {"reject"}
        core.ban(ml, MEMBER)
        world.follow(MEMBER, ml, "reject")
        core.unban(ml, MEMBER)
        world.follow(MEMBER, ml, "accept")
        core.subscribe(ml, stranger)
        world.follow(stranger, ml, "accept")
        page = world.metrics()
        assert sum(metric(page, "listgate_reject_refetches_total", result=r)
                   for r in ("fresh", "stale", "failed")) == 0, page
    finally:
        core.delete_list(ml)


def test_the_feed_is_logged_and_counted_once_not_per_worker(world: World) -> None:
    """The supervisor says it relays the feed; the feed's metrics come from it alone:
    healthy is 1, not the number of workers, and one signed change posted to the
    listener counts once (heartbeats carry no change)."""
    assert "change feed relayed to every worker" in world.proc.log()
    world.proc.wait_log("change feed healthy")  # the monitor polls: up to 0.75 s late
    page = world.metrics()
    assert metric(page, "listgate_feed_healthy") == 1.0
    before = metric(page, "listgate_feed_changes_total")
    now = time.time()
    body = encode(Message(f"test/{secrets.token_hex(4)}", now, 1, now,
                          ChangeSet(lists=frozenset({"nothing.example.org"}))))
    assert post(world.events_port, body, sign(world.secret, body)) == 204
    assert metric(world.metrics(), "listgate_feed_changes_total") == before + 1
    assert world.proc.log().count("change feed healthy") == 1


def test_a_worker_whose_feed_link_fails_is_replaced(world: World) -> None:
    """(Last in this module: it replaces a worker.) A stopped worker cannot take relayed
    messages: the relay closes its link, the supervisor has that worker drain and starts
    a new one with a new link, and every worker follows the feed again (a ban reaches
    all connections within FOLLOW)."""
    before = children(world.proc.popen.pid)
    assert len(before) == 2
    victim = before[0]
    addresses = frozenset(f"a{i:05d}@replaced.example" for i in range(1000))  # ~35 KB
    stream = f"test/{secrets.token_hex(4)}"
    os.kill(victim, signal.SIGSTOP)
    try:
        for seq in range(1, 41):  # a link's socket buffer holds a few hundred KB
            now = time.time()
            body = encode(Message(stream, now, seq, now, ChangeSet(addresses=addresses)))
            assert post(world.events_port, body, sign(world.secret, body)) == 204
            if "did not take a message" in world.proc.log():
                break
        else:
            raise AssertionError("the stopped worker's link never failed:\n"
                                 + world.proc.log())
    finally:
        os.kill(victim, signal.SIGCONT)
    world.proc.wait_log("lost its change-feed link", timeout=10)
    world.proc.wait_log("starting its replacement", timeout=30)
    after = children(world.proc.popen.pid)
    assert len(after) == 2, (before, after)
    assert victim not in after, (before, after)
    core = world.core
    ml = core.new_list({"default_nonmember_action": "reject"})
    try:
        core.subscribe(ml, MEMBER)
        world.follow(MEMBER, ml, "accept")
        core.ban(ml, MEMBER)
        world.follow(MEMBER, ml, "reject")
    finally:
        core.delete_list(ml)
