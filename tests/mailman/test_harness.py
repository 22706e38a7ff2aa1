"""The Mailman harness against a real core: each helper's data is what Mailman's REST API
(and, for linked addresses, Mailman's own posting rule code) sees."""

from __future__ import annotations

import time

import httpx
import pytest
from mailman_harness import MailmanCore, MailmanStartError
from mailmanclient.restobjects.mailinglist import MailingList


def _find(rest: httpx.Client, list_id: str, email: str) -> list[dict[str, object]]:
    r = rest.get("members/find", params={"list_id": list_id, "subscriber": email})
    assert r.status_code == 200, r.text
    return list(r.json().get("entries", []))


def test_core_answers_versions(mailman_core: MailmanCore, rest: httpx.Client) -> None:
    """The core is Mailman 3.3.10 on 127.0.0.1, with the random admin credentials only."""
    assert mailman_core.url.startswith("http://127.0.0.1:")
    r = rest.get("system/versions")
    assert r.status_code == 200
    assert r.json()["mailman_version"].startswith("GNU Mailman 3.3.10")
    assert httpx.get(mailman_core.url + "/system/versions", auth=("x", "y")).status_code == 401


def test_subscribed_member_found(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """subscribe() makes an immediate member that members/find reports, with its action."""
    mailman_core.subscribe(mlist, "Alice@Example.com")
    mailman_core.subscribe(mlist, "mallory@example.com", moderation_action="hold")

    (alice,) = _find(rest, mlist.list_id, "alice@example.com")
    assert alice["role"] == "member"
    assert alice["email"] == "alice@example.com"
    assert "moderation_action" not in alice  # None: the list default applies
    (mallory,) = _find(rest, mlist.list_id, "mallory@example.com")
    assert mallory["moderation_action"] == "hold"
    assert _find(rest, mlist.list_id, "stranger@example.net") == []


def test_roles_and_nonmember_records(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """Owner, moderator and nonmember records exist with the given roles, names and actions."""
    owner = mailman_core.add_owner(mlist, "owner@example.org")
    mailman_core.add_moderator(mlist, "mod@example.org", "The Mod")
    mailman_core.add_nonmember(mlist, "friend@partner.example", "accept")
    mailman_core.add_nonmember(mlist, "plain@partner.example", None)

    assert owner.role == "owner"
    roles = {
        e["email"]: (e["role"], e.get("display_name"), e.get("moderation_action"))
        for e in rest.get("members/find", params={"list_id": mlist.list_id}).json()["entries"]
    }
    assert roles == {
        "owner@example.org": ("owner", "", "accept"),
        "mod@example.org": ("moderator", "The Mod", "accept"),
        "friend@partner.example": ("nonmember", "", "accept"),
        "plain@partner.example": ("nonmember", "", None),
    }


def test_list_settings_stick(mailman_core: MailmanCore, rest: httpx.Client) -> None:
    """set_settings (and new_list(settings=...)) changes the list config that REST returns."""
    ml = mailman_core.new_list(settings={"default_nonmember_action": "reject"})
    try:
        mailman_core.set_settings(
            ml,
            default_member_action="hold",
            accept_these_nonmembers=["^.*@trusted\\.example$", "single@partner.example"],
            hold_these_nonmembers=["^hold"],
            reject_these_nonmembers=["^spam.*@"],
            discard_these_nonmembers=["junk@bad.example"],
            emergency=True,
        )
        cfg = rest.get(f"lists/{ml.list_id}/config").json()
        assert cfg["default_nonmember_action"] == "reject"
        assert cfg["default_member_action"] == "hold"
        assert cfg["accept_these_nonmembers"] == [
            "^.*@trusted\\.example$",
            "single@partner.example",
        ]
        assert cfg["hold_these_nonmembers"] == ["^hold"]
        assert cfg["reject_these_nonmembers"] == ["^spam.*@"]
        assert cfg["discard_these_nonmembers"] == ["junk@bad.example"]
        assert cfg["emergency"] is True
    finally:
        mailman_core.delete_list(ml)


def test_moderator_password_is_stored_hashed(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """moderator_password is settable over REST, stored as a sha512_crypt hash, never unset."""
    assert rest.get(f"lists/{mlist.list_id}/config").json()["moderator_password"] is None
    cfg = mailman_core.set_settings(mlist, moderator_password="s3cret")
    stored = cfg["moderator_password"]
    assert stored.startswith("$6$")
    assert "s3cret" not in stored
    # Saving other settings through mailmanclient sends only the changed keys: hash intact.
    mailman_core.set_settings(mlist, emergency=True)
    assert rest.get(f"lists/{mlist.list_id}/config").json()["moderator_password"] == stored
    with pytest.raises(ValueError, match="None"):
        mailman_core.set_settings(mlist, moderator_password=None)


def test_linked_address_is_same_user(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """link_address gives both addresses one user_id, also when either already had a User."""
    # A fresh user, the subscribed primary's user, and absorbing a subscriber's own user.
    mailman_core.link_address("dave@example.com", "dave.alt@example.net")
    mailman_core.subscribe(mlist, "alice@example.com")
    mailman_core.link_address("alice@example.com", "alice.alt@example.net")
    mailman_core.subscribe(mlist, "erin.alt@example.net")
    mailman_core.link_address("erin@example.com", "erin.alt@example.net")

    for primary, other in [
        ("dave@example.com", "dave.alt@example.net"),
        ("alice@example.com", "alice.alt@example.net"),
        ("erin@example.com", "erin.alt@example.net"),
    ]:
        a, b = rest.get(f"users/{primary}"), rest.get(f"users/{other}")
        assert a.status_code == b.status_code == 200
        assert a.json()["user_id"] == b.json()["user_id"]
    # members/find?subscriber= matches the exact address only, not the user's other one.
    assert _find(rest, mlist.list_id, "alice.alt@example.net") == []


def test_linked_address_counts_as_member_for_mailman(
    mailman_core: MailmanCore, mlist: MailingList
) -> None:
    """Mailman's own _find_sender_member treats a linked address as the subscribed member."""
    mailman_core.subscribe(mlist, "frank@example.com")
    mailman_core.link_address("frank@example.com", "frank.alt@example.net")
    mailman_core.link_address("gina@example.com", "gina.alt@example.net")
    mailman_core.subscribe(mlist, "gina.alt@example.net")

    assert mailman_core.sender_member(
        mlist, "frank.alt@example.net", "gina@example.com", "stranger@example.net"
    ) == {
        "frank.alt@example.net": "frank@example.com",
        "gina@example.com": "gina.alt@example.net",
        "stranger@example.net": None,
    }


def test_bans_answer_200_or_404(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """bans/<email> answers 200 iff Mailman's is_banned(email) holds for that scope, else 404.

    lists/<id>/bans/<email> also covers global bans and ^patterns (the rule's own check);
    bans/<email> covers global bans only.
    """
    other = mailman_core.new_list()
    mailman_core.ban(mlist, "eve@example.com")
    mailman_core.ban(mlist, "^troll[0-9]+@")
    mailman_core.ban(None, "^spam.*@")
    mailman_core.ban(None, "gone@example.net")
    try:

        def status(scope: MailingList | None, email: str) -> int:
            prefix = "" if scope is None else f"lists/{scope.list_id}/"
            return rest.get(f"{prefix}bans/{email}").status_code

        assert status(mlist, "eve@example.com") == 200  # list, exact
        assert status(mlist, "troll42@example.com") == 200  # list, pattern
        assert status(mlist, "spammer@example.com") == 200  # global pattern
        assert status(mlist, "gone@example.net") == 200  # global exact
        assert status(mlist, "bob@example.com") == 404
        assert status(other, "eve@example.com") == 404  # another list's ban
        assert status(other, "troll42@example.com") == 404
        assert status(other, "spammer@example.com") == 200
        assert status(None, "eve@example.com") == 404
        assert status(None, "spammer@example.com") == 200
    finally:
        # Global bans would leak into later tests.
        mailman_core.unban(None, "^spam.*@")
        mailman_core.unban(None, "gone@example.net")
        mailman_core.delete_list(other)
    assert rest.get("bans/spammer@example.com").status_code == 404


def test_create_domain_with_alias(mailman_core: MailmanCore, rest: httpx.Client) -> None:
    """create_domain makes a domain with its alias_domain, and is idempotent."""
    mailman_core.create_domain("lists.example.net", alias_domain="alias.example.net")
    mailman_core.create_domain("lists.example.net", alias_domain="alias.example.net")
    ml = mailman_core.new_list(domain="lists.example.net")
    try:
        dom = rest.get("domains/lists.example.net").json()
        assert dom["alias_domain"] == "alias.example.net"
        assert ml.fqdn_listname.endswith("@lists.example.net")
    finally:
        mailman_core.delete_list(ml)
        rest.delete("domains/lists.example.net").raise_for_status()


def test_stop_and_start_keep_data(
    mailman_core: MailmanCore, mlist: MailingList, rest: httpx.Client
) -> None:
    """stop() makes REST unreachable; start() brings it back on the same port with the data."""
    mailman_core.subscribe(mlist, "stays@example.com", moderation_action="discard")
    mailman_core.set_settings(mlist, default_nonmember_action="discard")
    url = mailman_core.url

    mailman_core.stop()
    assert not mailman_core.is_running
    with pytest.raises(httpx.TransportError):
        rest.get("system/versions")

    mailman_core.start()
    assert mailman_core.is_running
    assert mailman_core.url == url
    (member,) = _find(rest, mlist.list_id, "stays@example.com")
    assert member["moderation_action"] == "discard"
    cfg = rest.get(f"lists/{mlist.list_id}/config").json()
    assert cfg["default_nonmember_action"] == "discard"


def test_dead_runner_fails_fast_with_its_log(tmp_path) -> None:
    """A runner that dies at start-up raises MailmanStartError with its traceback, quickly."""
    core = MailmanCore(
        tmp_path, extra_config="[database]\nclass: mailman.database.nosuch.Database\n"
    )
    began = time.monotonic()
    with pytest.raises(MailmanStartError, match="nosuch") as info:
        core.start()
    assert time.monotonic() - began < 15
    assert "exited with rc=" in str(info.value)
    assert not core.is_running
