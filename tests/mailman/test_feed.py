"""The change feed end to end: a real Mailman 3.3.10 core with listgate's plugin enabled in
its ``mailman.cfg`` notifies listgate's real events listener, and each kind of change that
can alter a verdict arrives as the right ``Invalidator`` call within 1 s, whichever Mailman
process made it (REST workers, the LMTP and command runners). A listgate that is down or
never answers costs Mailman's REST writes nothing (measured against a core without the
plugin).

Nothing of Mailman is faked; the listener's ``Invalidator`` is a recorder (the cache it
will drive is wired by the application).
"""

from __future__ import annotations

import smtplib
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from feed_helpers import Call, FeedWorld, ListenerThread, Unresponsive, covers, feed_world
from mailman_harness import MailmanCore
from mailmanclient.restobjects.mailinglist import MailingList

FOLLOW = 1.0
"""Seconds within which a REST change must reach the listener."""
RUNNER_FOLLOW = 15.0
"""Seconds for a change made by an e-mail command (LMTP runner, then the command runner's
queue poll, then its commit)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedWorld]:
    """A Mailman core with the plugin (REST, LMTP, command and in runners) and its
    listener."""
    with feed_world(tmp_path_factory.mktemp("feed"), runners=("lmtp", "command", "in")) as w:
        yield w


@pytest.fixture
def feed_list(world: FeedWorld) -> Iterator[MailingList]:
    """A new list on the plugin's core (its own notification already in), deleted after."""
    made: list[MailingList] = []
    follows(world, lambda: made.append(world.core.new_list()), covers("directory"))
    ml = made[0]
    assert world.recorder.wait_for(0, covers("lists", ml.list_id), FOLLOW)
    yield ml
    follows(world, lambda: world.core.delete_list(ml), covers("lists", ml.list_id))


def follows(world: FeedWorld, change: Callable[[], object],
            want: Callable[[list[Call]], bool], timeout: float = FOLLOW) -> float:
    """Make *change* (a Mailman write) and return how long after it returned *want* held
    of the listener's calls; fail if it did not within *timeout* seconds.

    A notification may arrive after the REST reply, so every write a test makes goes
    through here: a late one from the step before can then not pass for this one."""
    mark = world.recorder.mark()
    change()
    returned = time.monotonic()
    ok = world.recorder.wait_for(mark, want, timeout)
    assert ok, (f"not followed within {timeout} s; calls since: {world.recorder.since(mark)}\n"
                + world.core.log_tail())
    return time.monotonic() - returned


def test_memberships_both_ways(world: FeedWorld, feed_list: MailingList) -> None:
    """Subscribe, set a member's moderation_action, unsubscribe: the address each time."""
    core = world.core
    member = None

    def subscribe() -> None:
        nonlocal member
        member = core.subscribe(feed_list, "Sub.Scriber@Example.org")

    follows(world, subscribe, covers("addresses", "sub.scriber@example.org"))
    assert member is not None

    def moderate() -> None:
        member.moderation_action = "discard"
        member.save()

    follows(world, moderate, covers("addresses", "sub.scriber@example.org"))
    follows(world, member.unsubscribe, covers("addresses", "sub.scriber@example.org"))


def test_nonmember_records(world: FeedWorld, feed_list: MailingList) -> None:
    """A nonmember record given an action, and its action changed: the address."""
    core = world.core
    record = None

    def add() -> None:
        nonlocal record
        record = core.add_nonmember(feed_list, "outsider@example.net", "accept")

    follows(world, add, covers("addresses", "outsider@example.net"))
    assert record is not None

    def change() -> None:
        record.moderation_action = "reject"
        record.save()

    follows(world, change, covers("addresses", "outsider@example.net"))


def test_bans_list_and_global(world: FeedWorld, feed_list: MailingList) -> None:
    """A list ban and its removal: the list; a global ban and its removal: global bans."""
    core = world.core
    list_id = feed_list.list_id
    follows(world, lambda: core.ban(feed_list, "banned@example.net"), covers("lists", list_id))
    follows(world, lambda: core.unban(feed_list, "banned@example.net"),
            covers("lists", list_id))
    follows(world, lambda: core.ban(None, "^spam.*@example\\.net$"), covers("global_bans"))
    follows(world, lambda: core.unban(None, "^spam.*@example\\.net$"),
            covers("global_bans"))


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("accept_these_nonmembers", ["friend@example.net", "^.*@partner\\.example$"]),
        ("default_nonmember_action", "accept"),
        ("default_member_action", "hold"),
        ("emergency", True),
        ("moderator_password", "sesame"),
        ("acceptable_aliases", ["other@example.org"]),
    ],
)
def test_list_settings(world: FeedWorld, feed_list: MailingList, setting: str,
                       value: object) -> None:
    """Each verdict-relevant list setting changed through REST: the list."""
    follows(world, lambda: world.core.set_settings(feed_list, **{setting: value}),
            covers("lists", feed_list.list_id))


CLEAR_ALIASES = """\
from mailman.interfaces.mailinglist import IAcceptableAliasSet


def clear(mlist):
    IAcceptableAliasSet(mlist).clear()
"""


def test_cli_bulk_delete_of_acceptable_aliases(world: FeedWorld, feed_list: MailingList,
                                               tmp_path: Path) -> None:
    """A change made by the ``mailman`` CLI (a process that exits right after its commit)
    through a bulk DELETE (no ORM object: Mailman clears acceptable aliases so) arrives."""
    core = world.core
    follows(world, lambda: core.set_settings(feed_list, acceptable_aliases=["o@example.org"]),
            covers("lists", feed_list.list_id))
    (tmp_path / "lg_clear_aliases.py").write_text(CLEAR_ALIASES)
    done: list[subprocess.CompletedProcess[str]] = []
    follows(world, lambda: done.append(core.mailman_cli(
        "withlist", "-r", "lg_clear_aliases.clear", "-l", feed_list.fqdn_listname,
        pythonpath=[tmp_path])), covers("lists", feed_list.list_id))
    assert done[0].returncode == 0, done[0].stderr
    assert core.client().get_list(feed_list.fqdn_listname).settings["acceptable_aliases"] == []


def test_lists_created_and_deleted(world: FeedWorld) -> None:
    """A new list and a deleted one (with a ban, which Mailman bulk-deletes): the directory
    and the list."""
    core = world.core
    made: list[MailingList] = []
    follows(world, lambda: made.append(core.new_list()), covers("directory"))
    list_id = made[0].list_id
    assert any(c.kind == "lists" and list_id in c.keys for c in world.recorder.calls)
    follows(world, lambda: core.ban(made[0], "^x@"), covers("lists", list_id))
    mark = world.recorder.mark()
    follows(world, lambda: core.delete_list(made[0]), covers("directory"))
    assert world.recorder.wait_for(mark, covers("lists", list_id), FOLLOW)


def test_domains_and_alias_domains(world: FeedWorld) -> None:
    """A domain with an alias domain created, then deleted: the directory."""
    client = world.core.client()
    follows(world, lambda: client.create_domain("feed.example", alias_domain="feed.alias"),
            covers("directory"))
    follows(world, lambda: client.delete_domain("feed.example"), covers("directory"))


def test_address_linked_to_a_user_and_unlinked(world: FeedWorld) -> None:
    """Linking an address to a user (absorbing another) and unlinking it, adding a new
    address to a user, and choosing the user's preferred address: every address of the
    user (or users) involved."""
    core = world.core
    follows(world, lambda: core.client().create_user("second@example.net", "pw-not-used"),
            covers("addresses", "second@example.net"))  # absorbed below
    follows(world, lambda: core.link_address("first@example.net", "second@example.net"),
            covers("addresses", "first@example.net", "second@example.net"))
    with core.http() as rest:
        follows(world, lambda: rest.delete("addresses/second@example.net/user")
                .raise_for_status(),
                covers("addresses", "first@example.net", "second@example.net"))
    user = core.client().get_user("first@example.net")
    follows(world, lambda: user.add_address("third@example.net"),
            covers("addresses", "first@example.net", "third@example.net"))
    follows(world, lambda: core.client().get_address("third@example.net").verify(),
            covers("addresses", "third@example.net"))

    def prefer() -> None:
        user.preferred_address = "third@example.net"

    follows(world, prefer, covers("addresses", "first@example.net", "third@example.net"))


def test_no_op_writes_and_reads_send_nothing(world: FeedWorld, feed_list: MailingList) -> None:
    """A GET and a PATCH to the current value send no invalidation: the next call after
    them is the one for a real change."""
    core = world.core
    mark = world.recorder.mark()
    core.set_settings(feed_list, emergency=False)  # already False
    core.client().get_list(feed_list.fqdn_listname)
    time.sleep(0.2)  # what these could send would come now, before the real change's
    core.subscribe(feed_list, "real.change@example.org")
    assert world.recorder.wait_for(mark, covers("addresses", "real.change@example.org"),
                                   FOLLOW)
    calls = world.recorder.since(mark)
    assert [(c.kind, c.keys) for c in calls] == [("addresses", ("real.change@example.org",))]


def test_email_commands_through_lmtp(world: FeedWorld, feed_list: MailingList) -> None:
    """``-join`` and ``-leave`` mailed to the list through Mailman's LMTP runner: the
    command runner's commits reach the listener too."""
    core = world.core
    follows(world, lambda: core.set_settings(feed_list, subscription_policy="open",
                                             unsubscription_policy="open"),
            covers("lists", feed_list.list_id))
    email = "by.mail@example.net"
    follows(world, lambda: core.client().create_user(email, "pw-not-used"),
            covers("addresses", email))
    follows(world, lambda: core.client().get_address(email).verify(),
            covers("addresses", email))
    local, domain = feed_list.fqdn_listname.split("@")

    follows(world, lmtp_mail(core, email, f"{local}-join@{domain}"),
            covers("addresses", email), RUNNER_FOLLOW)
    assert [m.email for m in feed_list.members] == [email]
    follows(world, lmtp_mail(core, email, f"{local}-leave@{domain}"),
            covers("addresses", email), RUNNER_FOLLOW)
    assert list(feed_list.members) == []


def test_a_post_from_a_new_sender_is_not_a_change(world: FeedWorld,
                                                  feed_list: MailingList) -> None:
    """The in runner records every new sender (a new Address, then a nonmember record
    without an action of its own): that decides nothing, so nothing is sent for it."""
    core = world.core
    stranger = "stranger@example.net"
    mark = world.recorder.mark()
    lmtp_mail(core, stranger, feed_list.fqdn_listname)()
    deadline = time.monotonic() + RUNNER_FOLLOW
    while not feed_list.nonmembers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m.email for m in feed_list.nonmembers] == [stranger]
    # A change made after the in runner's commits: its notification comes after theirs.
    follows(world, lambda: core.subscribe(feed_list, "after.post@example.org"),
            covers("addresses", "after.post@example.org"))
    assert [c for c in world.recorder.since(mark) if stranger in c.keys or c.kind == "all"] \
        == []


def lmtp_mail(core: MailmanCore, sender: str, recipient: str) -> Callable[[], None]:
    """A function that hands a short message to Mailman's LMTP runner."""

    def send() -> None:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = recipient
        msg["Subject"] = "hello"
        msg["Message-ID"] = f"<{time.monotonic_ns()}@example.net>"
        msg.set_content("hello\n")
        with smtplib.LMTP("127.0.0.1", core.lmtp_port, timeout=30) as lmtp:
            lmtp.send_message(msg)

    return send


def test_heartbeats_keep_the_feed_healthy(world: FeedWorld) -> None:
    """Without changes the plugin's threads send heartbeats (1 s here): the listener counts
    them, sees no gap and calls the feed healthy; nothing is invalidated by them."""
    listener = world.listener
    before = listener.health()
    mark = world.recorder.mark()
    deadline = time.monotonic() + 5
    while listener.health().heartbeats <= before.heartbeats and time.monotonic() < deadline:
        time.sleep(0.1)
    health = listener.health()
    assert health.heartbeats > before.heartbeats
    assert health.gaps == 0
    assert health.refused["unauthorized"] == health.refused["malformed"] == 0
    assert health.healthy(time.monotonic(), 2.5)
    assert not health.healthy(time.monotonic() + 60, 2.5)
    assert world.recorder.since(mark) == []


def _paired_subscribes(plain: MailmanCore, plain_list: MailingList, feed: MailmanCore,
                       feed_list: MailingList, n: int, tag: str) -> tuple[list[float],
                                                                       list[float]]:
    """*n* REST subscribes on each core, alternating one by one so that both see the same
    load on a shared machine; the seconds each took (plain, feed)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        for side, (core, mlist) in enumerate(((plain, plain_list), (feed, feed_list))):
            began = time.perf_counter()
            core.subscribe(mlist, f"{tag}{side}-{i}-{time.monotonic_ns()}@example.org")
            times[side].append(time.perf_counter() - began)
    return times


def test_listgate_down_or_hung_costs_mailman_nothing(
    world: FeedWorld, feed_list: MailingList, mailman_core: MailmanCore
) -> None:
    """With the listener stopped (connection refused) and then replaced by a socket that
    accepts and never answers, 50 REST subscribes each take no longer than on a core
    without the plugin; when the listener is back, the changes made meanwhile arrive."""
    plain_list = mailman_core.new_list()
    mark = world.recorder.mark()
    n = 50
    samples: dict[str, list[float]] = {}
    world.listener.stop()
    hung: Unresponsive | None = None
    try:
        samples["no plugin (1)"], samples["listgate down"] = _paired_subscribes(
            mailman_core, plain_list, world.core, feed_list, n, "d")
        hung = Unresponsive(world.port)
        samples["no plugin (2)"], samples["listgate hung"] = _paired_subscribes(
            mailman_core, plain_list, world.core, feed_list, n, "h")
        assert hung.accepted, "the plugin never reached the unresponsive listener"
    finally:
        if hung is not None:
            hung.close()
        world.listener = ListenerThread(world.port, world.secret, world.recorder,
                                        request_timeout=1.0)
        world.listener.start()
        mailman_core.delete_list(plain_list)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    report = ", ".join(f"{k}: median {m * 1000:.1f} ms, max {max(samples[k]) * 1000:.1f} ms, "
                       f"total {sum(samples[k]):.2f} s (n={len(samples[k])})"
                       for k, m in medians.items())
    print(f"\nREST subscribe latency: {report}")
    for kind, base in (("listgate down", "no plugin (1)"), ("listgate hung", "no plugin (2)")):
        assert medians[kind] <= medians[base] * 1.5 + 0.010, report
        assert sum(samples[kind]) <= sum(samples[base]) * 1.5 + 0.5, report
    # Back up: the retries deliver what changed meanwhile (merged), no restart needed.
    wanted = {m.email for m in feed_list.members}
    assert len(wanted) == 2 * n
    assert world.recorder.wait_for(
        mark, lambda calls: any(c.kind == "all" for c in calls)
        or wanted <= {a for c in calls if c.kind == "addresses" for a in c.keys}, 5.0)
