"""JSON codecs of the Mailman backend's facts, for the shared cache tier
(``listgate.facts.redis``): the records exactly, never a pickle.

Invariants:
- ``decode(encode(v)) == v`` for every kind; ``decode`` of anything else raises
  ``ValueError``, ``TypeError`` or ``KeyError`` (the tier counts it as garbage: a miss).
- The directory is stored raw (``Directory``), never its derived view; the view is rebuilt
  on decode (``listgate.mailman.directory.view``).
- Nothing here holds a secret: list settings, ban entries, addresses, roles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from listgate.decision.rules import Action, ListPolicy
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord
from listgate.mailman.directory import DirectoryView, view

__all__ = ["CODECS"]


def _strs(data: Any) -> tuple[str, ...]:
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise TypeError("expected a list of strings")
    return tuple(data)


def _str(data: Any) -> str:
    if not isinstance(data, str):
        raise TypeError("expected a string")
    return data


def _bool(data: Any) -> bool:
    if not isinstance(data, bool):
        raise TypeError("expected true or false")
    return data


def _action(data: Any) -> Action | None:
    return None if data is None else Action(_str(data))


class DirectoryCodec:
    """``DirectoryView`` as its raw ``Directory``."""

    def encode(self, value: DirectoryView) -> object:
        return value.directory.to_json()

    def decode(self, data: Any) -> DirectoryView:
        if not isinstance(data, Mapping):
            raise TypeError("expected an object")
        return view(Directory.from_json(data))


_POLICY_LISTS = ("accept_these_nonmembers", "hold_these_nonmembers",
                 "reject_these_nonmembers", "discard_these_nonmembers")


class PolicyCodec:
    """``PolicyRecord``: the ``ListPolicy`` fields and the list's ban entries."""

    def encode(self, value: PolicyRecord) -> object:
        p = value.policy
        return {
            "posting_address": p.posting_address,
            "list_id": p.list_id,
            "default_member_action": p.default_member_action.value,
            "default_nonmember_action": p.default_nonmember_action.value,
            **{name: list(getattr(p, name)) for name in _POLICY_LISTS},
            "emergency": p.emergency,
            "moderator_password": p.moderator_password,
            "list_bans": list(value.list_bans),
        }

    def decode(self, data: Any) -> PolicyRecord:
        policy = ListPolicy(
            posting_address=_str(data["posting_address"]),
            list_id=_str(data["list_id"]),
            default_member_action=Action(_str(data["default_member_action"])),
            default_nonmember_action=Action(_str(data["default_nonmember_action"])),
            accept_these_nonmembers=_strs(data["accept_these_nonmembers"]),
            hold_these_nonmembers=_strs(data["hold_these_nonmembers"]),
            reject_these_nonmembers=_strs(data["reject_these_nonmembers"]),
            discard_these_nonmembers=_strs(data["discard_these_nonmembers"]),
            emergency=_bool(data["emergency"]),
            moderator_password=_bool(data["moderator_password"]),
        )
        return PolicyRecord(policy, _strs(data["list_bans"]))


class StringsCodec:
    """A tuple of strings (the site's bans)."""

    def encode(self, value: tuple[str, ...]) -> object:
        return list(value)

    def decode(self, data: Any) -> tuple[str, ...]:
        return _strs(data)


class LinkedCodec:
    """A user's other addresses, or None (REST could not tell)."""

    def encode(self, value: tuple[str, ...] | None) -> object:
        return None if value is None else list(value)

    def decode(self, data: Any) -> tuple[str, ...] | None:
        return None if data is None else _strs(data)


class MembershipsCodec:
    """Every ``MembershipRecord`` of an address."""

    def encode(self, value: tuple[MembershipRecord, ...]) -> object:
        return [[r.list_id, r.role, r.email,
                 None if r.moderation_action is None else r.moderation_action.value]
                for r in value]

    def decode(self, data: Any) -> tuple[MembershipRecord, ...]:
        if not isinstance(data, list):
            raise TypeError("expected a list")
        out = []
        for row in data:
            if not isinstance(row, list) or len(row) != 4:
                raise ValueError("expected [list_id, role, email, action]")
            out.append(MembershipRecord(_str(row[0]), _str(row[1]), _str(row[2]),
                                        _action(row[3])))
        return tuple(out)


CODECS: Mapping[str, Any] = {
    "directory": DirectoryCodec(),
    "policy": PolicyCodec(),
    "global_bans": StringsCodec(),
    "memberships": MembershipsCodec(),
    "linked": LinkedCodec(),
}
"""Kind of fact (the backend's cache names) → its codec."""
