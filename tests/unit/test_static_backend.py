"""Tests of StaticBackend: ListFacts, recipient resolution, null sender, the backend contract."""

from __future__ import annotations

import asyncio

import pytest

from listgate.decision.engine import ReplyTexts, decide
from listgate.decision.facts import FactSource, ListFacts
from listgate.decision.model import PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts
from listgate.facts.static import StaticBackend

LIST = "announce@example.org"
CLOSED = "closed@example.org"


def policy(address: str) -> ListPolicy:
    return ListPolicy(address, default_member_action=Action.ACCEPT,
                      default_nonmember_action=Action.REJECT)


def backend() -> StaticBackend:
    return StaticBackend({
        "<Announce@Example.ORG>": ["Boss@Example.org", "<deputy@example.org>"],
        CLOSED: [],
    })


def posting(address: str, *senders: SenderFacts) -> ListFacts:
    return ListFacts(Resolution(Target.POSTING, address), policy(address), senders)


def poster(address: str) -> SenderFacts:
    return SenderFacts(address, Membership(address))


NOT_A_LIST = ListFacts(Resolution(Target.NOT_A_LIST))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(PostingRequest("boss@example.org", LIST),
                     posting(LIST, poster("boss@example.org")), id="poster"),
        pytest.param(PostingRequest("deputy@example.org", LIST),
                     posting(LIST, poster("deputy@example.org")), id="bracketed-config-value"),
        pytest.param(PostingRequest("eve@example.com", LIST),
                     posting(LIST, SenderFacts("eve@example.com")), id="non-poster"),
        pytest.param(PostingRequest("", LIST), posting(LIST, SenderFacts("")), id="null-sender"),
        pytest.param(PostingRequest("boss@example.org", CLOSED),
                     posting(CLOSED, SenderFacts("boss@example.org")), id="closed-list"),
        pytest.param(PostingRequest("boss@example.org", "announce+tag@example.org"),
                     posting(LIST, poster("boss@example.org")), id="plus-tag-is-the-list"),
        pytest.param(PostingRequest("boss@example.org", "ANNOUNCE@example.org"),
                     posting(LIST, poster("boss@example.org")), id="recipient-case"),
        pytest.param(PostingRequest("boss@example.org", "announce-owner@example.org"),
                     NOT_A_LIST, id="no-service-addresses"),
        pytest.param(PostingRequest("boss@example.org", "someone@example.org"), NOT_A_LIST,
                     id="not-a-list"),
        pytest.param(PostingRequest("eve@example.com", LIST,
                                    header_senders=("eve@example.com", "boss@example.org")),
                     posting(LIST, SenderFacts("eve@example.com"), poster("boss@example.org")),
                     id="header-senders-in-order"),
    ],
)
def test_lookup_now(request_: PostingRequest, expected: ListFacts) -> None:
    """lookup_now answers ListFacts from the normalised map: posters are members."""
    assert backend().lookup_now(request_) == expected


@pytest.mark.parametrize(
    ("sender", "verdict", "reason"),
    [
        pytest.param("boss@example.org", Verdict.ACCEPT,
                     "member <boss@example.org>; default_member_action=accept", id="poster"),
        pytest.param("eve@example.com", Verdict.REJECT,
                     "nonmember <eve@example.com>; default_nonmember_action=reject",
                     id="non-poster"),
        pytest.param("", Verdict.REJECT, "nonmember <>; default_nonmember_action=reject",
                     id="null-sender"),
    ],
)
def test_static_facts_through_engine(sender: str, verdict: Verdict, reason: str) -> None:
    """A static list behaves as a Mailman list whose members accept and nonmembers reject."""
    request = PostingRequest(sender, LIST)
    decision = decide(request, backend().lookup_now(request), ReplyTexts())
    assert (decision.verdict, decision.reasons) == (verdict, (reason,))


@pytest.mark.parametrize("configured", ["", "<>", " < > "])
def test_null_sender_never_a_poster_even_if_configured(configured: str) -> None:
    """A configured "" or "<>" poster does not make the null sender a member."""
    b = StaticBackend({LIST: [configured, "boss@example.org"]})
    assert b.lookup_now(PostingRequest("", LIST)) == posting(LIST, SenderFacts(""))


def test_lookup_now_never_pending() -> None:
    """The static backend always answers synchronously."""
    b = backend()
    for sender in ("boss@example.org", "x@y", ""):
        for recipient in (LIST, "other@example.org"):
            assert isinstance(b.lookup_now(PostingRequest(sender, recipient)), ListFacts)


def test_async_lookup_matches_lookup_now_and_aclose() -> None:
    """lookup() gives the same answers as lookup_now(); aclose() completes."""
    b = backend()
    requests = [PostingRequest("boss@example.org", LIST), PostingRequest("e@x", LIST),
                PostingRequest("boss@example.org", "nolist@example.org")]

    async def run() -> list[ListFacts]:
        results = [await b.lookup(r) for r in requests]
        await b.aclose()
        return results

    assert asyncio.run(run()) == [b.lookup_now(r) for r in requests]


def test_known_lists_sorted_and_merged() -> None:
    """known_lists() is sorted and keys that normalise alike are merged."""
    b = StaticBackend({"b@x": ["p@x"], "a@x": [], "<B@X>": ["q@x"]})
    assert b.known_lists() == ("a@x", "b@x")
    assert b.lookup_now(PostingRequest("q@x", "b@x")) == posting("b@x", poster("q@x"))
    assert b.lookup_now(PostingRequest("p@x", "b@x")) == posting("b@x", poster("p@x"))


@pytest.mark.parametrize(("posters", "count"), [({}, "0 lists"), ({"a@x": []}, "1 list"),
                                                 ({"a@x": [], "b@x": []}, "2 lists")])
def test_describe(posters: dict[str, list[str]], count: str) -> None:
    """describe() names the backend and counts its lists."""
    assert StaticBackend(posters).describe() == f"static map, {count}"


def test_string_value_refused() -> None:
    """A bare string as posters (iterable of characters) is refused, not split."""
    with pytest.raises(TypeError, match="collection of addresses"):
        StaticBackend({LIST: "boss@example.org"})


def test_empty_list_address_refused() -> None:
    """An empty list address is refused."""
    with pytest.raises(ValueError, match="must not be empty"):
        StaticBackend({"<>": ["boss@example.org"]})


def test_satisfies_protocol() -> None:
    """StaticBackend is a FactSource (checked statically by mypy)."""
    b: FactSource = backend()
    assert b.describe().startswith("static map")
