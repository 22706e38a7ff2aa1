"""Mailman's posting rules (listgate.decision.rules), checked against mailman-domain.md
§1.4-1.7 and §5."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from listgate.decision.rules import (
    Action,
    ListPolicy,
    Membership,
    Outcome,
    SenderFacts,
    mailman_outcome,
    matches_nonmember_entry,
)

LIST = "announce@example.org"
REJECT_LIST = ListPolicy(LIST, "announce.example.org", default_nonmember_action=Action.REJECT)
"""A list whose nonmember action is reject (the §5 table's list); members default to defer."""


def member(address: str, action: Action | None = None, via: str | None = None) -> SenderFacts:
    return SenderFacts(address, Membership(address if via is None else via, action, via))


def stranger(address: str, **kwargs: object) -> SenderFacts:
    return SenderFacts(address, **kwargs)  # type: ignore[arg-type]


ANNE = member("anne@example.com")
EVE = stranger("eve@example.net")


@dataclass(frozen=True)
class Case:
    id: str
    senders: tuple[SenderFacts, ...]
    expected: Action
    policy: ListPolicy = REJECT_LIST
    hints: tuple[SenderFacts, ...] = ()
    trust_approved: bool = True
    reason: str | None = None
    """A substring the first reason must contain, when it matters."""


def policy(**kwargs: object) -> ListPolicy:
    base: dict[str, object] = {"default_nonmember_action": Action.REJECT}
    base.update(kwargs)
    return ListPolicy(LIST, "announce.example.org", **base)  # type: ignore[arg-type]


CASES = [
    # §1.2 step 3 / §5 "Approved: header ... from a nonmember": ACCEPT, bypassing bans too.
    Case("approved-bypass-nonmember", (EVE,), Action.ACCEPT, policy(moderator_password=True),
         reason="moderator_password"),
    Case("approved-bypass-banned", (stranger("eve@example.net", banned=True),), Action.ACCEPT,
         policy(moderator_password=True)),
    Case("approved-bypass-emergency", (EVE,), Action.ACCEPT,
         policy(moderator_password=True, emergency=True)),
    Case("approved-not-trusted", (EVE,), Action.REJECT, policy(moderator_password=True),
         trust_approved=False),
    # §1.7: any banned sender -> discard, even when From: is a member.
    Case("banned-envelope-member-from", (ANNE, stranger("eve@example.net", banned=True)),
         Action.DISCARD, reason="banned: <eve@example.net>"),
    Case("banned-member-itself", (SenderFacts("anne@example.com", Membership(
        "anne@example.com", Action.ACCEPT), banned=True),), Action.DISCARD),
    Case("banned-beats-nonmember-accept-list", (stranger("eve@example.net", banned=True),),
         Action.DISCARD, policy(accept_these_nonmembers=("eve@example.net",))),
    # §1.2 step 7: emergency -> hold, members too (after bans).
    Case("emergency-holds-member", (member("anne@example.com", Action.ACCEPT),), Action.HOLD,
         policy(emergency=True), reason="emergency"),
    Case("emergency-holds-nonmember", (EVE,), Action.HOLD, policy(emergency=True)),
    Case("emergency-after-ban", (stranger("eve@example.net", banned=True),), Action.DISCARD,
         policy(emergency=True)),
    # §1.4: the first member in sender order decides.
    Case("first-member-decides", (EVE, member("anne@example.com", Action.REJECT),
                                  member("bob@example.com", Action.ACCEPT)), Action.REJECT),
    Case("member-in-reply-to-position", (EVE, stranger("x@example.net"), ANNE), Action.ACCEPT,
         reason="member <anne@example.com>"),
    Case("user-linked-address", (member("anne.alt@example.com", via="anne@example.com"),),
         Action.ACCEPT, reason="member through user's other address anne@example.com"),
    Case("user-linked-address-own-action",
         (member("anne.alt@example.com", Action.HOLD, via="anne@example.com"),), Action.HOLD),
    Case("member-action-over-default", (member("anne@example.com", Action.ACCEPT),),
         Action.ACCEPT, policy(default_member_action=Action.REJECT),
         reason="moderation_action=accept"),
    Case("member-action-discard", (member("anne@example.com", Action.DISCARD),),
         Action.DISCARD),
    Case("member-none-takes-default", (ANNE,), Action.HOLD,
         policy(default_member_action=Action.HOLD), reason="default_member_action=hold"),
    Case("member-defer-is-accept", (member("anne@example.com", Action.DEFER),), Action.ACCEPT),
    Case("member-default-defer-is-accept", (ANNE,), Action.ACCEPT),
    Case("member-beats-nonmember-record", (stranger("x@example.net",
                                                    nonmember_action=Action.DISCARD), ANNE),
         Action.ACCEPT),
    # §1.5: the nonmember record's own action beats the legacy lists (3.3.6, #978).
    Case("nonmember-record-beats-accept-list",
         (stranger("eve@example.net", nonmember_action=Action.REJECT),), Action.REJECT,
         policy(accept_these_nonmembers=("eve@example.net",)),
         reason="own moderation_action=reject"),
    Case("nonmember-record-accept-beats-reject-list",
         (stranger("eve@example.net", nonmember_action=Action.ACCEPT),), Action.ACCEPT,
         policy(reject_these_nonmembers=("eve@example.net",))),
    Case("nonmember-record-defer-is-accept",
         (stranger("eve@example.net", nonmember_action=Action.DEFER),), Action.ACCEPT,
         policy(discard_these_nonmembers=("eve@example.net",))),
    Case("nonmember-record-hold", (stranger("eve@example.net", nonmember_action=Action.HOLD),),
         Action.HOLD),
    Case("nonmember-senders-in-order", (stranger("a@x.org", nonmember_action=Action.DISCARD),
                                        stranger("b@x.org", nonmember_action=Action.ACCEPT)),
         Action.DISCARD),
    # §1.5: legacy lists in accept/hold/reject/discard order.
    Case("legacy-accept-before-hold", (EVE,), Action.ACCEPT,
         policy(hold_these_nonmembers=("eve@example.net",),
                accept_these_nonmembers=("eve@example.net",))),
    Case("legacy-hold-before-reject", (EVE,), Action.HOLD,
         policy(reject_these_nonmembers=("eve@example.net",),
                hold_these_nonmembers=("^eve@",)), reason="hold_these_nonmembers has ^eve@"),
    Case("legacy-reject-before-discard", (EVE,), Action.REJECT,
         policy(default_nonmember_action=Action.HOLD,
                discard_these_nonmembers=("eve@example.net",),
                reject_these_nonmembers=("eve@example.net",))),
    Case("legacy-discard", (EVE,), Action.DISCARD,
         policy(default_nonmember_action=Action.ACCEPT,
                discard_these_nonmembers=("eve@example.net",))),
    Case("legacy-second-sender-hits", (stranger("x@example.net"), EVE), Action.ACCEPT,
         policy(accept_these_nonmembers=("eve@example.net",))),
    # §1.5: ^regex is re.match: case-sensitive, anchored at the start only.
    Case("regex-start-anchored-only", (stranger("x@example.com.evil.net"),), Action.ACCEPT,
         policy(accept_these_nonmembers=(r"^.*@example\.com",))),
    Case("regex-with-dollar-anchored", (stranger("x@example.com.evil.net"),), Action.REJECT,
         policy(accept_these_nonmembers=(r"^.*@example\.com$",))),
    Case("regex-case-sensitive", (stranger("dora@example.com"),), Action.REJECT,
         policy(accept_these_nonmembers=(r"^Dora@",))),
    Case("regex-bad-skipped", (EVE,), Action.HOLD,
         policy(accept_these_nonmembers=("^(eve",), hold_these_nonmembers=("^eve",))),
    # §1.5/§5: exact entries are case-sensitive (an upper-case entry never matches).
    Case("exact-case-sensitive", (stranger("dora@example.com"),), Action.REJECT,
         policy(accept_these_nonmembers=("Dora@Example.com",))),
    Case("exact-match", (stranger("dora@example.com"),), Action.ACCEPT,
         policy(accept_these_nonmembers=("dora@example.com",))),
    # §1.5: '@fqdn_listname' entries, honoured in accept_these_nonmembers only (3.3.10, #794).
    Case("at-list-accept", (stranger("m@x.org", member_of=frozenset({"other@example.org"})),),
         Action.ACCEPT, policy(accept_these_nonmembers=("@other@example.org",))),
    Case("at-list-not-a-member-of-it", (stranger("m@x.org"),), Action.REJECT,
         policy(accept_these_nonmembers=("@other@example.org",))),
    # §1.3.0 / §1.5 "accept == defer": an accept hit means the post goes on -> accept.
    Case("accept-hit-is-accept-even-if-default-discard", (EVE,), Action.ACCEPT,
         policy(default_nonmember_action=Action.DISCARD,
                accept_these_nonmembers=("eve@example.net",))),
    # §1.5/§1.6: default_nonmember_action.
    Case("default-reject", (EVE,), Action.REJECT,
         reason="nonmember <eve@example.net>; default_nonmember_action=reject"),
    Case("default-hold", (EVE,), Action.HOLD, policy(default_nonmember_action=Action.HOLD)),
    Case("default-discard", (EVE,), Action.DISCARD,
         policy(default_nonmember_action=Action.DISCARD)),
    Case("default-defer-is-accept", (EVE,), Action.ACCEPT,
         policy(default_nonmember_action=Action.DEFER)),
    Case("list-defaults-hold-nonmembers", (EVE,), Action.HOLD, ListPolicy(LIST)),
    Case("null-sender-is-nonmember", (stranger(""),), Action.REJECT,
         reason="nonmember <>; default_nonmember_action=reject"),
    # §1.7/§5 owners and moderators who are not subscribed are nonmembers (REJECT).
    Case("unsubscribed-owner-is-nonmember", (stranger("owner@example.org"),), Action.REJECT),
    # Hints (SRS/BATV/+tag decodings): can only accept.
    Case("hint-accepts-member", (stranger("srs0=h=tt=example.com=anne@fwd.example"),),
         Action.ACCEPT, hints=(ANNE,), reason="sender decodes to <anne@example.com>"),
    Case("hint-nonmember-changes-nothing", (EVE,), Action.REJECT,
         hints=(stranger("eve2@example.net"),)),
    Case("hint-never-overrides-ban", (stranger("anne+x@example.com", banned=True),),
         Action.DISCARD, hints=(ANNE,)),
    Case("banned-hint-ignored", (EVE,), Action.REJECT,
         hints=(SenderFacts("anne@example.com", Membership("anne@example.com"), banned=True),)),
    Case("hint-never-stricter-than-accept", (ANNE,), Action.ACCEPT,
         hints=(stranger("x@y.org", banned=True), member("x@y.org", Action.REJECT))),
    Case("hint-never-stricter-than-hold", (EVE,), Action.HOLD,
         policy(default_nonmember_action=Action.HOLD),
         hints=(stranger("x@y.org", banned=True),)),
    Case("hint-not-consulted-for-emergency", (EVE,), Action.HOLD, policy(emergency=True),
         hints=(ANNE,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mailman_outcome(case: Case) -> None:
    """Each row: the action Mailman's posting chain takes, per the reference."""
    outcome = mailman_outcome(case.policy, case.senders, case.hints,
                              trust_approved=case.trust_approved)
    assert outcome.action is case.expected
    assert outcome.reasons
    if case.reason is not None:
        assert case.reason in outcome.reasons[0]


def test_outcome_is_never_defer() -> None:
    """DEFER never leaves mailman_outcome: it is accept (a rule that meets defer misses)."""
    for action in Action:
        for outcome in (
            mailman_outcome(policy(default_nonmember_action=action), [EVE]),
            mailman_outcome(policy(default_member_action=action), [ANNE]),
            mailman_outcome(policy(), [stranger("e@x.org", nonmember_action=action)]),
        ):
            assert outcome.action is not Action.DEFER


@pytest.mark.parametrize(
    ("entry", "address", "member_of", "expected"),
    [
        pytest.param("eve@x.org", "eve@x.org", frozenset(), True, id="exact"),
        pytest.param("Eve@x.org", "eve@x.org", frozenset(), False, id="exact-case"),
        pytest.param(r"^eve@", "eve@x.org", frozenset(), True, id="regex"),
        pytest.param(r"^EVE@", "eve@x.org", frozenset(), False, id="regex-case"),
        pytest.param(r"^.*@x\.org", "a@x.org.evil", frozenset(), True, id="regex-start-only"),
        pytest.param(r"^x", "eve@x.org", frozenset(), False, id="regex-not-search"),
        pytest.param("^(", "(@x.org", frozenset(), False, id="bad-regex"),
        pytest.param("@l@x.org", "m@y.org", frozenset({"l@x.org"}), True, id="at-list"),
        pytest.param("@l@x.org", "m@y.org", frozenset(), False, id="at-list-not-member"),
        pytest.param("@x.org", "m@x.org", frozenset(), False, id="at-domain-is-not-a-pattern"),
    ],
)
def test_matches_nonmember_entry(
    entry: str, address: str, member_of: frozenset[str], expected: bool
) -> None:
    """matches_nonmember_entry follows Mailman's entry test (regex, @list, exact)."""
    assert matches_nonmember_entry(entry, address, member_of) is expected


def test_at_list_references() -> None:
    """at_list_references names the @fqdn_listname entries of the accept list only."""
    p = policy(accept_these_nonmembers=("@a@x.org", "@x.org", "^@b@", "c@x.org"),
               hold_these_nonmembers=("@d@x.org",))
    assert p.at_list_references() == ("a@x.org",)


def test_action_parse() -> None:
    """Action.parse reads REST names; None stays None; unknown names raise."""
    assert Action.parse("defer") is Action.DEFER
    assert Action.parse(None) is None
    with pytest.raises(ValueError, match="bogus"):
        Action.parse("bogus")


def test_outcome_type() -> None:
    """mailman_outcome returns an Outcome whose reasons are non-empty strings."""
    outcome = mailman_outcome(REJECT_LIST, [EVE, ANNE])
    assert isinstance(outcome, Outcome)
    assert all(isinstance(r, str) and r for r in outcome.reasons)


# --------------------------------------------------------------------------- disagreements


@pytest.mark.parametrize("name", ["hold", "reject", "discard"])
def test_at_list_entry_ignored_outside_accept_list(name: str) -> None:
    """'@fqdn_listname' matches only in accept_these_nonmembers (§1.5, Mailman's _at_list);
    elsewhere it is compared as an exact address and never matches a sender."""
    p = policy(default_nonmember_action=Action.DEFER,
               **{f"{name}_these_nonmembers": ("@other@example.org",)})
    sender = stranger("m@x.org", member_of=frozenset({"other@example.org"}))
    assert mailman_outcome(p, [sender]).action is Action.ACCEPT


def test_no_valid_sender_is_discarded() -> None:
    """No sender at all: the no-senders rule (chain step 2, before approved) discards (§1.2)."""
    for p in (policy(default_nonmember_action=Action.HOLD), policy(moderator_password=True)):
        assert mailman_outcome(p, []).action is Action.DISCARD
