"""The shared tier's JSON codecs of the Mailman facts: exact round trips, garbage
refused, and the directory stored raw."""

from __future__ import annotations

import json

import pytest

from listgate.decision.rules import Action, ListPolicy
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord
from listgate.mailman.directory import view
from listgate.mailman.records_json import CODECS

SAMPLES = {
    "directory": view(Directory({"ann@example.org": "ann.example.org"},
                                {"lists.example.org": "example.org"}, "-")),
    "policy": PolicyRecord(ListPolicy(
        "ann@example.org", "ann.example.org", Action.HOLD, Action.REJECT,
        ("a@x", "^.*@y$", "@other@example.org"), ("h@x",), ("r@x",), ("d@x",),
        emergency=True, moderator_password=True), ("^bad.*@x$", "evil@x")),
    "global_bans": ("spam@x", "^.*@junk$"),
    "memberships": (MembershipRecord("ann.example.org", "member", "A@x", Action.ACCEPT),
                    MembershipRecord("b.example.org", "nonmember", "a@x", None)),
    "linked": ("other@x", "third@x"),
}


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_round_trip(kind: str) -> None:
    """decode(JSON of encode(v)) == v for every kind (through real JSON text)."""
    codec = CODECS[kind]
    value = SAMPLES[kind]
    decoded = codec.decode(json.loads(json.dumps(codec.encode(value))))
    if kind == "directory":
        assert decoded.directory == value.directory
        assert decoded.resolver == value.resolver
    else:
        assert decoded == value


def test_linked_none_round_trips() -> None:
    """None (REST could not tell) stays None, distinct from no other addresses."""
    codec = CODECS["linked"]
    assert codec.decode(codec.encode(None)) is None
    assert codec.decode(codec.encode(())) == ()


def test_directory_is_stored_raw() -> None:
    """The directory is stored as Mailman's raw directory, not the derived view."""
    assert CODECS["directory"].encode(SAMPLES["directory"]) == \
        SAMPLES["directory"].directory.to_json()


@pytest.mark.parametrize(("kind", "data"), [
    ("memberships", [["l", "member", "e"]]),
    ("memberships", [["l", "member", "e", "explode"]]),
    ("memberships", {"not": "a list"}),
    ("policy", {"posting_address": "x"}),
    ("global_bans", [1, 2]),
    ("linked", "x"),
    ("directory", ["no"]),
])
def test_garbage_is_refused(kind: str, data: object) -> None:
    """Anything encode cannot produce raises ValueError, TypeError or KeyError."""
    with pytest.raises((ValueError, TypeError, KeyError)):
        CODECS[kind].decode(data)
