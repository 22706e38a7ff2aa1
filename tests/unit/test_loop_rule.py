"""Mailman's ``loop`` rule (``rules/loop.py``): a post whose ``List-Post:`` names the list
itself is discarded; listgate refuses it at end of headers when the list is the post's
only recipient. The rule, the engine and the milter transaction, without I/O."""

from __future__ import annotations

import pytest

from listgate.decision.engine import DecideAt, ListOverrides, ReplyTexts, decide
from listgate.decision.facts import ListFacts
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import (
    Action,
    ListPolicy,
    Membership,
    SenderFacts,
    is_loop,
    mailman_outcome,
)
from listgate.frontends.milter import MilterTransaction, milter_options
from listgate.milter import EnvelopeFrom, EnvelopeRecipient, Header, MilterConnection

LIST = "ann@example.org"
POLICY = ListPolicy(LIST, "ann.example.org", default_nonmember_action=Action.ACCEPT)
MEMBER = SenderFacts("m@example.com", Membership("m@example.com"))


@pytest.mark.parametrize(
    ("values", "loop"),
    [
        pytest.param(("ann@example.org",), True, id="bare"),
        pytest.param(("other@example.org", "ann@example.org"), True, id="second-header"),
        pytest.param(("<mailto:ann@example.org>",), False, id="mailto-is-no-loop-to-mailman"),
        pytest.param(("other@example.org",), False, id="another-list"),
        pytest.param((), False, id="none"),
    ],
)
def test_is_loop_compares_whole_values(values: tuple[str, ...], loop: bool) -> None:
    """Mailman compares each whole stripped, lower-cased value with the posting address."""
    assert is_loop(POLICY, values) is loop


def test_a_loop_is_discarded_before_bans_and_members() -> None:
    """A member's looped post is discarded, and no hint can admit it."""
    outcome = mailman_outcome(POLICY, [MEMBER], [MEMBER], list_posts=(LIST,))
    assert outcome.action is Action.DISCARD
    assert "loop" in outcome.reasons[0]
    assert mailman_outcome(POLICY, [MEMBER]).action is Action.ACCEPT


def test_approved_comes_before_the_loop() -> None:
    """Mailman's ``approved`` rule runs first: with a moderator password, never refused."""
    policy = ListPolicy(LIST, "ann.example.org", moderator_password=True)
    assert mailman_outcome(policy, [MEMBER], list_posts=(LIST,)).action is Action.ACCEPT
    assert mailman_outcome(policy, [MEMBER], list_posts=(LIST,),
                           trust_approved=False).action is Action.DISCARD


def test_the_engine_rejects_a_loop_at_end_of_headers() -> None:
    """With the List-Post values of the request, the engine answers REJECT."""
    facts = ListFacts(Resolution(Target.POSTING, LIST, "posting address"), POLICY, (MEMBER,))
    headers = ListOverrides(decide_at=DecideAt.HEADERS)
    request = PostingRequest("m@example.com", LIST, header_senders=("m@example.com",),
                             list_posts=(LIST,))
    assert decide(request, facts, ReplyTexts(), headers).verdict is Verdict.REJECT
    plain = PostingRequest("m@example.com", LIST, header_senders=("m@example.com",))
    assert decide(plain, facts, ReplyTexts(), headers).verdict is Verdict.ACCEPT


def _transaction(*recipients: str) -> tuple[MilterTransaction, MilterConnection]:
    conn = MilterConnection(milter_options(1 << 20, headers=True))
    tx = MilterTransaction()
    tx.on_mail(EnvelopeFrom("<m@example.com>"), conn)
    for rcpt in recipients:
        request = tx.request_for(EnvelopeRecipient(f"<{rcpt}>"), conn)
        tx.answer_rcpt(request, Decision(Verdict.ACCEPT, None, None, "", ("t",),
                                         LIST if rcpt == LIST else None, provisional=True))
    for field, value in (("From", "m@example.com"), ("List-Post", " <mailto:x@example.org>"),
                         ("list-post", "\r\n\tAnn@Example.org "), ("Subject", "hi")):
        tx.on_header(Header(field, value))
    return tx, conn


def test_the_milter_keeps_list_post_for_end_of_headers() -> None:
    """List-Post headers (any case, folded) reach the EOH request stripped and lower-cased;
    other headers that are not senders are not kept."""
    tx, conn = _transaction(LIST)
    request = tx.eoh_request(conn)
    assert request is not None
    assert request.list_posts == ("<mailto:x@example.org>", LIST)
    assert [f for f, _ in tx.headers] == ["From", "List-Post", "list-post"]


def test_a_loop_with_other_recipients_is_not_judged_at_end_of_headers() -> None:
    """With another recipient in the transaction, EOH judges nothing: the other
    recipient is never refused because of the list's loop rule."""
    tx, conn = _transaction(LIST, "bob@example.org")
    assert tx.eoh_request(conn) is None
