"""Fresh verdicts against a real Mailman 3.3.10 core, through listgate's milter (the whole
daemon, ``listgate.app.serve``): after each change an owner makes in Mailman, how soon
listgate gives Mailman's new verdict.

- Without the plugin: each reject→accept change of issue #13's table (subscribe, add to
  ``accept_these_nonmembers``, open the list) is followed within ``reject_max_age`` plus
  one refetch, although the TTLs alone would keep the 550 for 10 to 120 s.
- With listgate's plugin enabled in that Mailman's ``mailman.cfg`` and the daemon's
  ``[events]`` listener wired: every change kind, both directions (bans, unsubscribing
  and member moderation set to discard turn an accept into a 550), is followed within
  1 s, with hour-long TTLs; so is a ``-join`` mailed through Mailman's LMTP runner.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest
from feed_helpers import plugin_config, plugin_site
from mailman_harness import MailmanCore, free_port
from mailmanclient.restobjects.mailinglist import MailingList

from tests.fresh_helpers import DaemonThread, daemon_config, follow
from tests.mailman.test_feed import lmtp_mail

REJECT_MAX_AGE = 2.0
"""The default ``[cache] reject_max_age``."""
REFETCH = 1.0
"""Seconds for one refetch of a decision's facts (a few REST calls on loopback, on a
machine shared with other test processes)."""
FOLLOW = 1.0
"""Seconds within which a change is followed with the feed."""
RUNNER = 20.0
"""Seconds for Mailman's LMTP and command runners to act on a mailed command."""
HOUR = 3600.0


# --------------------------------------------------------------------------- no plugin


@pytest.fixture(scope="module")
def closed_lists(mailman_core: MailmanCore) -> Iterator[list[MailingList]]:
    """Lists that reject nonmembers, one per change (made before listgate starts, so its
    directory knows them); deleted after."""
    made = [mailman_core.new_list({"default_nonmember_action": "reject"})
            for _ in REJECT_TO_ACCEPT]
    yield made
    for ml in made:
        mailman_core.delete_list(ml)


@pytest.fixture(scope="module")
def plain(mailman_core: MailmanCore, closed_lists: list[MailingList]
          ) -> Iterator[DaemonThread]:
    """listgate with the shipped cache defaults over the session's core (no plugin)."""
    with DaemonThread(daemon_config(mailman_core.url, mailman_core.auth)) as daemon:
        yield daemon


ReChange = Callable[[MailmanCore, MailingList, str], object]
REJECT_TO_ACCEPT: dict[str, ReChange] = {
    "subscribe": lambda core, ml, who: core.subscribe(ml, who),
    "accept_these_nonmembers": lambda core, ml, who: core.set_settings(
        ml, accept_these_nonmembers=[who]),
    "open the list": lambda core, ml, who: core.set_settings(
        ml, default_nonmember_action="accept"),
}


@pytest.mark.parametrize("change", list(REJECT_TO_ACCEPT))
def test_without_plugin_a_reject_is_followed_within_reject_max_age(
    plain: DaemonThread, mailman_core: MailmanCore, closed_lists: list[MailingList],
    change: str,
) -> None:
    """The sender is refused (the refusal cached); after the change, listgate accepts
    within reject_max_age + one refetch (the TTLs are 10 s and 120 s)."""
    closed = closed_lists[list(REJECT_TO_ACCEPT).index(change)]
    who = f"new.{secrets.token_hex(3)}@example.net"
    ask = lambda: plain.verdict(who, closed.fqdn_listname)  # noqa: E731
    assert ask() == "reject"
    REJECT_TO_ACCEPT[change](mailman_core, closed, who)
    follow(ask, "accept", REJECT_MAX_AGE + REFETCH)


# --------------------------------------------------------------------------- the plugin


class Fed:
    """A Mailman core with listgate's plugin, notifying a listgate daemon's listener."""

    def __init__(self, core: MailmanCore, daemon: DaemonThread) -> None:
        self.core = core
        self.daemon = daemon

    def verdict(self, sender: str, ml: MailingList) -> str:
        return self.daemon.verdict(sender, ml.fqdn_listname)

    def flips(self, sender: str, ml: MailingList, change: Callable[[], object],
              before: str, after: str) -> float:
        """*before* now (cached); after *change*, *after* within FOLLOW seconds. The feed
        covers every fact, so no reject ever waited for a refetch."""
        assert self.verdict(sender, ml) == before
        change()
        took = follow(lambda: self.verdict(sender, ml), after, FOLLOW)
        assert self.daemon.daemon is not None
        assert sum(self.daemon.daemon.backend.reject_refetches().values()) == 0
        return took


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    """listgate with hour-long TTLs and its events listener, and a Mailman core (REST,
    LMTP, command and in runners) whose plugin notifies it (heartbeat 1 s)."""
    base = tmp_path_factory.mktemp("fresh-fed")
    secret_file = base / "events-secret"
    secret_file.write_text(secrets.token_hex(32) + "\n")
    port = free_port()
    _cfg, section = plugin_config(base, [f"http://127.0.0.1:{port}/"], secret_file,
                                  heartbeat=1.0)
    core = MailmanCore(base / "core", extra_config=section,
                       runners=("lmtp", "command", "in"), pythonpath=[plugin_site(base)])
    core.start()
    try:
        config = daemon_config(
            core.url, core.auth,
            cache={"ttl": HOUR, "negative_ttl": HOUR, "policy_ttl": HOUR,
                   "directory_ttl": HOUR},
            events={"listen": f"inet:127.0.0.1:{port}", "secret_file": str(secret_file),
                    "max_silence": 3.0},
        )
        with DaemonThread(config) as daemon:
            assert daemon.daemon is not None
            feed = daemon.daemon.feed
            assert feed is not None
            deadline = time.monotonic() + 10
            while not feed.healthy() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert feed.healthy(), "no heartbeat from the plugin"
            yield Fed(core, daemon)
    finally:
        core.close()


@pytest.fixture
def fed_list(fed: Fed) -> Iterator[MailingList]:
    """A list on the fed core that rejects nonmembers, with one member; deleted after.
    The new list itself is followed (the directory) within FOLLOW."""
    ml = fed.core.new_list({"default_nonmember_action": "reject"})
    fed.core.subscribe(ml, "member@example.org")
    follow(lambda: fed.verdict("stranger@example.net", ml), "reject", FOLLOW)
    yield ml
    fed.core.delete_list(ml)


def test_memberships_both_ways(fed: Fed, fed_list: MailingList) -> None:
    """Subscribe → accept, then unsubscribe → reject."""
    who = "joiner@example.net"
    fed.flips(who, fed_list, lambda: fed.core.subscribe(fed_list, who), "reject", "accept")
    member = fed.core.get_membership(fed_list, "member", who)
    fed.flips(who, fed_list, member.unsubscribe, "accept", "reject")


def test_member_moderation_both_ways(fed: Fed, fed_list: MailingList) -> None:
    """A member's moderation_action set to discard → reject; back to accept → accept."""
    member = fed.core.get_membership(fed_list, "member", "member@example.org")

    def moderate(action: str) -> Callable[[], None]:
        def change() -> None:
            member.moderation_action = action
            member.save()
        return change

    fed.flips("member@example.org", fed_list, moderate("discard"), "accept", "reject")
    fed.flips("member@example.org", fed_list, moderate("accept"), "reject", "accept")


@pytest.mark.parametrize("scope", ["list", "site"])
def test_bans_both_ways(fed: Fed, fed_list: MailingList, scope: str) -> None:
    """Banning a member (from the list, or site-wide) → reject; unbanning → accept."""
    target = fed_list if scope == "list" else None
    fed.flips("member@example.org", fed_list,
              lambda: fed.core.ban(target, "member@example.org"), "accept", "reject")
    fed.flips("member@example.org", fed_list,
              lambda: fed.core.unban(target, "member@example.org"), "reject", "accept")


def test_nonmember_lists_both_ways(fed: Fed, fed_list: MailingList) -> None:
    """accept_these_nonmembers gains the sender → accept; loses it → reject (an empty
    list cannot be sent through REST's form encoding: another entry replaces it)."""
    who = "friend@example.net"
    fed.flips(who, fed_list, lambda: fed.core.set_settings(
        fed_list, accept_these_nonmembers=[who]), "reject", "accept")
    fed.flips(who, fed_list, lambda: fed.core.set_settings(
        fed_list, accept_these_nonmembers=["someone.else@example.net"]), "accept", "reject")


def test_list_opened_and_closed(fed: Fed, fed_list: MailingList) -> None:
    """default_nonmember_action reject → accept → reject."""
    who = "anyone@example.net"
    fed.flips(who, fed_list, lambda: fed.core.set_settings(
        fed_list, default_nonmember_action="accept"), "reject", "accept")
    fed.flips(who, fed_list, lambda: fed.core.set_settings(
        fed_list, default_nonmember_action="reject"), "accept", "reject")


def test_user_link_both_ways(fed: Fed, fed_list: MailingList) -> None:
    """An address linked to a member's user posts as that member → accept; unlinked →
    reject."""
    other = "alias.of.member@example.net"
    fed.flips(other, fed_list, lambda: fed.core.link_address("member@example.org", other),
              "reject", "accept")

    def unlink() -> None:
        with fed.core.http() as rest:
            rest.delete(f"addresses/{other}/user").raise_for_status()

    fed.flips(other, fed_list, unlink, "accept", "reject")


def test_a_join_by_email_is_followed(fed: Fed, fed_list: MailingList) -> None:
    """A ``-join`` mailed through Mailman's LMTP runner (open subscription, verified
    address): listgate accepts within FOLLOW of Mailman's command runner subscribing."""
    core = fed.core
    core.set_settings(fed_list, subscription_policy="open")
    email = "by.mail@example.net"
    core.client().create_user(email, "pw-not-used")
    core.client().get_address(email).verify()
    assert fed.verdict(email, fed_list) == "reject"
    local, domain = fed_list.fqdn_listname.split("@")
    lmtp_mail(core, email, f"{local}-join@{domain}")()
    deadline = time.monotonic() + RUNNER
    while not [m for m in fed_list.members if m.email == email]:
        assert time.monotonic() < deadline, "Mailman did not act on the -join\n" + \
            core.log_tail()
        time.sleep(0.05)
    follow(lambda: fed.verdict(email, fed_list), "accept", FOLLOW)
