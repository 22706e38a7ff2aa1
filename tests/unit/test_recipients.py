"""Recipient resolution (listgate.decision.recipients), per mailman-domain.md §2 and §5."""

from __future__ import annotations

import pytest

from listgate.decision.recipients import (
    SUBADDRESSES,
    ListDirectory,
    Resolution,
    Target,
    resolve,
)

DIRECTORY = ListDirectory(
    frozenset({"list@example.org", "list-join@example.org", "test-join@example.org"}),
    alias_domains={"lists.example.net": "example.org"},
)
POSTING = Resolution(Target.POSTING, "list@example.org")


def service(sub: str, owner: str = "list@example.org") -> Resolution:
    return Resolution(Target.SERVICE, owner, sub)


RESOLVE = [
    pytest.param("list@example.org", DIRECTORY, POSTING, id="posting"),
    pytest.param("LIST@EXAMPLE.ORG", DIRECTORY, POSTING, id="upper-case"),
    pytest.param("list+x@example.org", DIRECTORY, POSTING, id="plus-tag-is-posting"),
    pytest.param("list+@example.org", DIRECTORY, POSTING, id="empty-plus-tag"),
    pytest.param("list-owner@example.org", DIRECTORY, service("owner"), id="owner"),
    pytest.param("list-owner+x@example.org", DIRECTORY, service("owner"), id="owner-plus"),
    pytest.param("list-request+foo@example.org", DIRECTORY, service("request"),
                 id="request-plus"),
    pytest.param("list-bounces+anne=example.com@example.org", DIRECTORY, service("bounces"),
                 id="verp-bounces"),
    pytest.param("list-confirm+abc@example.org", DIRECTORY, service("confirm"), id="confirm"),
    pytest.param("list-subscribe@example.org", DIRECTORY, service("subscribe"),
                 id="subscribe"),
    pytest.param("list-unsubscribe@example.org", DIRECTORY, service("unsubscribe"),
                 id="unsubscribe"),
    pytest.param("list-leave@example.org", DIRECTORY, service("leave"), id="leave"),
    pytest.param("list-join@example.org", DIRECTORY,
                 Resolution(Target.POSTING, "list-join@example.org"), id="join-list-exists"),
    pytest.param("list-join+x@example.org", DIRECTORY,
                 Resolution(Target.POSTING, "list-join@example.org"), id="join-list-plus"),
    pytest.param("list-join-request@example.org", DIRECTORY,
                 service("request", "list-join@example.org"), id="join-list-request"),
    pytest.param("other-join@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="join-of-no-list"),
    pytest.param("list-join@example.org", ListDirectory(frozenset({"list@example.org"})),
                 service("join"), id="join-list-absent"),
    pytest.param("list-bogus@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="bogus-suffix"),
    pytest.param("someone@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="not-a-list"),
    pytest.param("list@example.com", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="other-domain"),
    pytest.param("list@lists.example.net", DIRECTORY, POSTING, id="alias-domain"),
    pytest.param("list-owner@LISTS.example.net", DIRECTORY, service("owner"),
                 id="alias-domain-service"),
    pytest.param("+x@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="only-a-tag"),
    pytest.param("-owner@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST),
                 id="subaddress-without-name"),
    pytest.param("list", DIRECTORY, Resolution(Target.NOT_A_LIST), id="no-at"),
    pytest.param("@example.org", DIRECTORY, Resolution(Target.NOT_A_LIST), id="no-local"),
    pytest.param("list@", DIRECTORY, Resolution(Target.NOT_A_LIST), id="no-domain"),
    pytest.param("", DIRECTORY, Resolution(Target.NOT_A_LIST), id="empty"),
    pytest.param("list+x@example.org",
                 ListDirectory(frozenset({"list@example.org"}), verp_delimiter=""),
                 Resolution(Target.NOT_A_LIST), id="empty-verp-delimiter"),
    pytest.param("list-x@example.org",
                 ListDirectory(frozenset({"list@example.org"}), verp_delimiter="-"),
                 POSTING, id="other-verp-delimiter"),
    pytest.param("list-owner@example.org",
                 ListDirectory(frozenset({"list@example.org"}), service_addresses=False),
                 Resolution(Target.NOT_A_LIST), id="no-service-addresses"),
]


@pytest.mark.parametrize(("recipient", "directory", "expected"), RESOLVE)
def test_resolve(recipient: str, directory: ListDirectory, expected: Resolution) -> None:
    """resolve() follows Mailman's split_recipient and handle_RCPT (§2)."""
    assert resolve(recipient, directory) == expected


def test_subaddresses_are_mailmans() -> None:
    """SUBADDRESSES is Mailman's SUBADDRESS_NAMES (§2)."""
    assert frozenset({"bounces", "confirm", "join", "leave", "owner", "request", "subscribe",
                      "unsubscribe"}) == SUBADDRESSES


@pytest.mark.parametrize(
    ("resolution", "reason"),
    [
        pytest.param(POSTING, "posting address of list@example.org", id="posting"),
        pytest.param(service("owner"), "list-owner address of list@example.org: not gated",
                     id="service"),
        pytest.param(Resolution(Target.NOT_A_LIST), "not a list: not gated", id="not-a-list"),
    ],
)
def test_resolution_reason(resolution: Resolution, reason: str) -> None:
    """Each resolution explains itself in one line."""
    assert resolution.reason == reason
