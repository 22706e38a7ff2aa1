"""The require_authenticated rule (listgate.decision.auth + engine): which senders a
message proves, and what happens to the ones it does not."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from listgate.decision.auth import Authentication, SpfResult, proof
from listgate.decision.engine import (
    AUTH_REJECT_TEXT,
    DecideAt,
    GateMode,
    ListOverrides,
    ReplyTexts,
    decide,
)
from listgate.decision.facts import ListFacts
from listgate.decision.model import PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts

LIST = "announce@example.org"
MEMBER = "member@example.com"
TEXTS = ReplyTexts()
POLICY = ListPolicy(LIST, default_member_action=Action.ACCEPT,
                    default_nonmember_action=Action.REJECT)
ON = ListOverrides(require_authenticated=True)
OFF = ListOverrides()


def facts(*senders: SenderFacts, policy: ListPolicy = POLICY) -> ListFacts:
    return ListFacts(Resolution(Target.POSTING, LIST), policy, senders)


def member(address: str = MEMBER) -> SenderFacts:
    return SenderFacts(address, Membership(address))


def spf(result: SpfResult, domain: str = "example.com", **more: object) -> Authentication:
    return Authentication(spf=result, spf_domain=domain, **more)  # type: ignore[arg-type]


ORGS = MappingProxyType({"mail.example.com": "example.com", "example.com": "example.com",
                         "other.org": "other.org", "lists.example.com": "example.com"})


def test_list_without_the_option_never_asks_for_proof() -> None:
    """Without require_authenticated a member is accepted whatever SPF says."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, OFF, spf(SpfResult.FAIL))
    assert d.verdict is Verdict.ACCEPT


def test_member_with_spf_pass_is_accepted_and_the_reason_names_the_proof() -> None:
    """SPF pass for the envelope sender's domain proves the envelope sender."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, ON, spf(SpfResult.PASS))
    assert d.verdict is Verdict.ACCEPT
    assert "authenticated <member@example.com>: SPF pass for example.com" in d.reasons


@pytest.mark.parametrize("result", [SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL,
                                    SpfResult.NONE, SpfResult.PERMERROR])
def test_unproven_member_gets_the_auth_reply(result: SpfResult) -> None:
    """A member whose mail proves nothing is judged as a nonmember, with the issue's text."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, ON, spf(result))
    assert d.verdict is Verdict.REJECT
    assert d.smtp_reply == (
        f"550 5.7.1 <{MEMBER}> is a member of <{LIST}>, but this message is not "
        "authenticated as coming from that address (no SPF pass, no aligned DKIM signature)")
    assert not d.provisional
    assert AUTH_REJECT_TEXT.startswith("<{sender}>")


def test_spf_pass_for_another_domain_proves_nothing() -> None:
    """SPF is about the envelope sender's own domain only."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, ON,
               spf(SpfResult.PASS, "other.org"))
    assert d.verdict is Verdict.REJECT


def test_nonmember_verdict_does_not_depend_on_authentication() -> None:
    """A nonmember gets the list's usual reject text, authenticated or not."""
    outsider = SenderFacts("eve@example.net")
    d = decide(PostingRequest("eve@example.net", LIST), facts(outsider), TEXTS, ON,
               spf(SpfResult.PASS, "example.net"))
    assert d.text == f"<eve@example.net> is not allowed to post to <{LIST}>"


def test_pending_evidence_makes_a_provisional_reject_that_awaits_proof() -> None:
    """While DKIM may still come (end of message), the refusal waits for it."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, ON,
               spf(SpfResult.FAIL, pending=True))
    assert (d.verdict, d.provisional, d.awaits_proof) == (Verdict.REJECT, True, True)


def test_aligned_dkim_proves_the_from_address_relaxed() -> None:
    """d=mail.example.com proves From: member@example.com (same organizational domain)."""
    auth = Authentication(spf=SpfResult.FAIL, spf_domain="forwarder.net",
                          dkim_domains=("mail.example.com",), dkim_checked=True,
                          header_from=(MEMBER,), organizational=ORGS)
    request = PostingRequest("bounce@forwarder.net", LIST,
                             header_senders=(MEMBER, "bounce@forwarder.net"))
    assert proof(MEMBER, request, auth) == (
        "DKIM signature d=mail.example.com aligned with From: example.com")
    d = decide(request, facts(member(), SenderFacts("bounce@forwarder.net")), TEXTS, ON, auth)
    assert d.verdict is Verdict.ACCEPT


def test_dkim_of_another_domain_is_not_aligned() -> None:
    """A valid signature of other.org proves nothing about From: member@example.com."""
    auth = Authentication(dkim_domains=("other.org",), dkim_checked=True,
                          header_from=(MEMBER,), organizational=ORGS)
    request = PostingRequest(MEMBER, LIST, header_senders=(MEMBER,))
    d = decide(request, facts(member()), TEXTS, ON, auth)
    assert d.verdict is Verdict.REJECT
    assert "DKIM valid for other.org (not aligned)" in d.reasons[0]


def test_dkim_never_proves_an_address_that_is_not_in_from() -> None:
    """An aligned signature proves From: addresses only, not Reply-To:/Sender:."""
    auth = Authentication(dkim_domains=("example.com",), dkim_checked=True,
                          header_from=("other@example.com",), organizational=ORGS)
    assert proof(MEMBER, PostingRequest("x@y.org", LIST), auth) is None


def test_dns_temperror_is_451_never_550() -> None:
    """A check that could not finish answers 451 4.7.5."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, ON,
               spf(SpfResult.TEMPERROR))
    assert d.verdict is Verdict.TEMPFAIL
    assert d.smtp_reply is not None
    assert d.smtp_reply.startswith("451 4.7.5 ")


def test_monitor_mode_logs_would_reject_and_accepts() -> None:
    """Monitor mode accepts with a greppable reason."""
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS,
               ListOverrides(mode=GateMode.MONITOR, require_authenticated=True),
               spf(SpfResult.FAIL))
    assert d.verdict is Verdict.ACCEPT
    assert d.reasons[0].startswith("monitor mode: would reject: unauthenticated member <")


def test_sasl_proves_any_address() -> None:
    """A SASL-authenticated client proves every sender."""
    d = decide(PostingRequest(MEMBER, LIST, auth_user="member"), facts(member()), TEXTS, ON)
    assert d.verdict is Verdict.ACCEPT


def test_unproven_accepted_nonmember_loses_its_accept_entry() -> None:
    """accept_these_nonmembers needs a proven address too; reject lists still apply."""
    policy = ListPolicy(LIST, default_nonmember_action=Action.REJECT,
                        accept_these_nonmembers=("friend@example.com",))
    friend = SenderFacts("friend@example.com")
    d = decide(PostingRequest("friend@example.com", LIST), facts(friend, policy=policy),
               TEXTS, ON, spf(SpfResult.FAIL))
    assert d.verdict is Verdict.REJECT
    assert "an accepted nonmember" in d.text


def test_banned_sender_stays_banned_when_proven() -> None:
    """Proof never lifts a ban: a banned member is refused with the list's own text."""
    banned = SenderFacts(MEMBER, Membership(MEMBER), banned=True)
    d = decide(PostingRequest(MEMBER, LIST), facts(banned), TEXTS, ON, spf(SpfResult.PASS))
    assert d.verdict is Verdict.REJECT
    assert "not authenticated" not in d.text


def test_headers_list_waits_at_rcpt_as_before() -> None:
    """decide_at=headers keeps its provisional reject; the option adds awaits_proof."""
    overrides = ListOverrides(decide_at=DecideAt.HEADERS, require_authenticated=True)
    d = decide(PostingRequest(MEMBER, LIST), facts(member()), TEXTS, overrides,
               spf(SpfResult.NONE, pending=True))
    assert d.provisional
    assert d.awaits_proof
