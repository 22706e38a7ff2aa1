"""Tests of StaticBackend: normalisation, null sender, the MembershipBackend contract."""

from __future__ import annotations

import asyncio

import pytest

from listgate.backends import PENDING, MembershipBackend, StaticBackend
from listgate.engine import NULL_SENDER_REASON, PostingFacts
from listgate.model import PostingRequest

LIST = "announce@example.org"


def backend() -> StaticBackend:
    return StaticBackend({
        "<Announce@Example.ORG>": ["Boss@Example.org", "<deputy@example.org>"],
        "closed@example.org": [],
    })


@pytest.mark.parametrize(
    ("sender", "recipient", "expected"),
    [
        pytest.param("boss@example.org", LIST, PostingFacts(LIST, True, ("static poster",)),
                      id="poster"),
        pytest.param("<BOSS@example.ORG>", "<ANNOUNCE@example.org>",
                      PostingFacts(LIST, True, ("static poster",)), id="case-and-brackets"),
        pytest.param("deputy@example.org", LIST, PostingFacts(LIST, True, ("static poster",)),
                      id="bracketed-config-value"),
        pytest.param("eve@example.com", LIST,
                      PostingFacts(LIST, False, (f"not in static posters of {LIST}",)),
                      id="non-poster"),
        pytest.param("", LIST, PostingFacts(LIST, False, (NULL_SENDER_REASON,)),
                      id="null-sender"),
        pytest.param("boss@example.org", "closed@example.org",
                      PostingFacts("closed@example.org", False,
                                   ("not in static posters of closed@example.org",)),
                      id="closed-list"),
        pytest.param("boss@example.org", "someone@example.org", None, id="not-a-list"),
    ],
)
def test_lookup_now(sender: str, recipient: str, expected: PostingFacts | None) -> None:
    """lookup_now answers from the normalised map, ignoring case and angle brackets."""
    assert backend().lookup_now(PostingRequest(sender, recipient)) == expected


@pytest.mark.parametrize("configured", ["", "<>", " < > "])
def test_null_sender_never_a_poster_even_if_configured(configured: str) -> None:
    """A configured "" or "<>" poster does not let the null sender post."""
    b = StaticBackend({LIST: [configured, "boss@example.org"]})
    facts = b.lookup_now(PostingRequest("", LIST))
    assert isinstance(facts, PostingFacts)
    assert not facts.may_post


def test_lookup_now_never_pending() -> None:
    """The static backend always answers synchronously."""
    b = backend()
    for sender in ("boss@example.org", "x@y", ""):
        for recipient in (LIST, "other@example.org"):
            assert b.lookup_now(PostingRequest(sender, recipient)) is not PENDING


def test_async_lookup_matches_lookup_now_and_aclose() -> None:
    """lookup() gives the same answers as lookup_now(); aclose() completes."""
    b = backend()
    requests = [PostingRequest("boss@example.org", LIST), PostingRequest("e@x", LIST),
                PostingRequest("boss@example.org", "nolist@example.org")]

    async def run() -> list[PostingFacts | None]:
        results = [await b.lookup(r) for r in requests]
        await b.aclose()
        return results

    assert asyncio.run(run()) == [b.lookup_now(r) for r in requests]


def test_lists_sorted_and_merged() -> None:
    """lists() is sorted and keys that normalise alike are merged."""
    b = StaticBackend({"b@x": ["p@x"], "a@x": [], "<B@X>": ["q@x"]})
    assert b.lists() == ("a@x", "b@x")
    poster = PostingFacts("b@x", True, ("static poster",))
    assert b.lookup_now(PostingRequest("q@x", "b@x")) == poster
    assert b.lookup_now(PostingRequest("p@x", "b@x")) == poster


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
    """StaticBackend is a MembershipBackend (checked statically by mypy)."""
    b: MembershipBackend = backend()
    assert b.describe().startswith("static map")
