"""The shared tier's names and invalidation message (``listgate.facts.sharedkeys``)."""

from __future__ import annotations

import pytest

from listgate.facts.sharedkeys import (
    CHANNEL,
    MAX_MESSAGE,
    Invalidation,
    InvalidationError,
    decode_invalidation,
    encode_invalidation,
    fact_name,
    lock_name,
)


def test_names_are_namespaced_and_versioned() -> None:
    """Facts, locks and the channel all live under listgate:v1:."""
    assert fact_name("policy", "ann.example.org") == "listgate:v1:policy:ann.example.org"
    assert fact_name("directory", "") == "listgate:v1:directory:"
    assert lock_name("memberships", "a@x") == "listgate:v1:lock:memberships:a@x"
    assert CHANNEL == "listgate:v1:invalidate"


def test_round_trip() -> None:
    """decode(encode(m)) == m, a subject with a slash included."""
    m = Invalidation("mx1/42/ab", frozenset({("memberships", "a/b@x"), ("directory", "")}),
                     frozenset({"policy"}))
    assert decode_invalidation(encode_invalidation(m)) == m
    everything = Invalidation("mm", everything=True)
    assert decode_invalidation(encode_invalidation(everything)) == everything


def test_too_large_becomes_everything() -> None:
    """A message over MAX_MESSAGE is sent as 'all'."""
    keys = frozenset(("memberships", f"{'x' * 300}{i}@x") for i in range(400))
    body = encode_invalidation(Invalidation("o", keys))
    assert len(body) <= MAX_MESSAGE
    assert decode_invalidation(body).everything


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "keys": "x"}', b'{"v": 1, "keys": ["nokind"]}',
    b'{"v": 1, "keys": ["lock/x"]}', b'{"v": 1, "all": "yes"}', b'{"v": 1, "kinds": [1]}',
    b'{"v": 1, "from": 7}',
])
def test_garbage_is_refused(body: bytes) -> None:
    """Anything encode cannot produce is an InvalidationError."""
    with pytest.raises(InvalidationError):
        decode_invalidation(body)
