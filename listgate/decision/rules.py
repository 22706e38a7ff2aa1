"""Mailman 3's posting rules, restated as a pure function over facts.

This module answers one question: *what would Mailman's default posting chain do with a
post from these senders to this list?* It reads only values (``ListPolicy``,
``SenderFacts``); backends gather them (from Mailman's REST API, or from the static map)
and the engine turns the outcome into an SMTP verdict.

The order is Mailman 3.3.10's ``default-posting-chain`` (``chains/builtin.py``) and
``rules/moderation.py``; each step below cites the rule it mirrors:

1. ``approved``: a list with a ``moderator_password`` admits any sender whose post carries
   a valid ``Approved:`` header, before bans are even checked. listgate cannot see the
   password, so such a list is never rejected (unless the operator says otherwise).
   (Before it, ``no-senders``: a post with no valid sender at all is discarded.)
   Then ``loop`` (``rules/loop.py``): a ``List-Post:`` header whose value, stripped and
   lower-cased, *is* the list's posting address → discard (the post has been through
   the list already). Mailman compares the whole value: ``<mailto:list@host>``, the form
   Mailman itself writes, is no loop to it, so not to listgate either.
2. ``banned-address``: *any* banned sender → discard.
3. ``emergency``: the list is in emergency moderation → hold (members too).
4. ``member-moderation``: the first sender (in order) that is, or is linked through its
   Mailman user to, a subscribed member decides: its ``moderation_action``, else the
   list's ``default_member_action``. ``defer`` means "no opinion": the post goes on and is
   accepted (later rules can only hold it).
5. ``nonmember-moderation``, sender by sender: the nonmember record's own
   ``moderation_action`` if set; then ``accept/hold/reject/discard_these_nonmembers``
   (``^regex`` with ``re.match``, exact entries, case-sensitive; ``@fqdn_listname`` in
   the accept list only); an ``accept`` hit (like ``defer``) means "no opinion".
6. Otherwise the list's ``default_nonmember_action``.

Invariants:
- Pure: no I/O, no clock, no logging. Bad regexes in list config are skipped, as
  Mailman skips them.
- ``hints`` (decoded SRS/BATV forms, ``+tag``-stripped addresses) can only turn a
  reject/discard outcome into accept; they never make anything stricter.
- Every outcome carries a reason chain a postmaster can read.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "ListPolicy",
    "Membership",
    "Outcome",
    "SenderFacts",
    "is_banned",
    "is_loop",
    "mailman_outcome",
    "matches_nonmember_entry",
]


class Action(enum.Enum):
    """Mailman's ``Action`` enum (``interfaces/action.py``), by REST name."""

    HOLD = "hold"
    REJECT = "reject"
    DISCARD = "discard"
    ACCEPT = "accept"
    DEFER = "defer"

    @classmethod
    def parse(cls, value: object) -> Action | None:
        """A REST value ("reject", ...) as an Action; None for None/missing."""
        if value is None:
            return None
        return cls(str(value))


@dataclass(frozen=True, slots=True)
class ListPolicy:
    """The list settings Mailman's posting chain reads (cached per list)."""

    posting_address: str
    """``fqdn_listname``, e.g. ``announce@example.org``."""
    list_id: str = ""
    """``announce.example.org``; empty for lists that are not Mailman's (static map)."""
    default_member_action: Action = Action.DEFER
    default_nonmember_action: Action = Action.HOLD
    accept_these_nonmembers: tuple[str, ...] = ()
    hold_these_nonmembers: tuple[str, ...] = ()
    reject_these_nonmembers: tuple[str, ...] = ()
    discard_these_nonmembers: tuple[str, ...] = ()
    emergency: bool = False
    moderator_password: bool = False
    """True when the list has a ``moderator_password`` (``Approved:`` can admit anyone)."""

    def at_list_references(self) -> tuple[str, ...]:
        """The ``@fqdn_listname`` entries of ``accept_these_nonmembers``, without the '@'."""
        return tuple(
            e[1:] for e in self.accept_these_nonmembers if e.startswith("@") and "@" in e[1:]
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """A ``member``-role subscription that makes a sender a member of the list."""

    email: str
    """The subscribed address."""
    moderation_action: Action | None = None
    """The member's own action; None means the list default."""
    via: str | None = None
    """Set when found through the sender's Mailman user: the sender's own address differs
    from ``email`` (Mailman counts a user's other addresses as the member)."""


@dataclass(frozen=True, slots=True, init=False)
class SenderFacts:
    """What Mailman knows about one sender address on one list (``__init__`` written
    out, as ``PostingRequest``'s)."""

    address: str
    """The sender, lower-cased as Mailman lowercases it ("" for the null sender)."""
    member: Membership | None = None
    nonmember_action: Action | None = None
    """The nonmember record's own ``moderation_action``, if the record exists and sets one."""
    banned: bool = False
    """Banned from this list or site-wide (exact or ``^pattern``), as Mailman's ban check says."""
    member_of: frozenset[str] = field(default_factory=frozenset)
    """Of the lists named by ``@list`` references in ``accept_these_nonmembers``, those
    whose member roster holds this exact address."""
    unverifiable: str | None = None
    """Set when the backend could not learn everything Mailman would know about this
    address (why, for the reason chain). Such a sender is never the cause of a reject."""
    proven: bool = True
    """False on a ``require_authenticated`` list when the message does not prove that it
    comes from this address: it is judged as an unknown nonmember (its membership, its
    own accepting action and ``accept_these_nonmembers`` hits do not count; bans and the
    refusing rules still do)."""

    def __init__(
        self,
        address: str,
        member: Membership | None = None,
        nonmember_action: Action | None = None,
        banned: bool = False,
        member_of: frozenset[str] | None = None,
        unverifiable: str | None = None,
        proven: bool = True,
    ) -> None:
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "member", member)
        object.__setattr__(self, "nonmember_action", nonmember_action)
        object.__setattr__(self, "banned", banned)
        object.__setattr__(self, "member_of", frozenset() if member_of is None else member_of)
        object.__setattr__(self, "unverifiable", unverifiable)
        object.__setattr__(self, "proven", proven)


@dataclass(frozen=True, slots=True, init=False)
class Outcome:
    """What Mailman would do with the post, and why (``__init__`` written out, as
    ``PostingRequest``'s)."""

    action: Action
    """ACCEPT, HOLD, REJECT or DISCARD (never DEFER: a deferred post is accepted)."""
    reasons: tuple[str, ...]
    never_reject: bool = False
    """A hold that must not become a reject whatever the list's hold policy (emergency
    moderation: the moderators asked to see every post, members' too)."""

    def __init__(self, action: Action, reasons: tuple[str, ...],
                 never_reject: bool = False) -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "never_reject", never_reject)


def _regex_match(pattern: str, address: str) -> bool:
    try:
        return re.match(pattern, address) is not None
    except re.error:
        return False  # Mailman logs a bad pattern and skips it


def is_banned(address: str, list_bans: Sequence[str], global_bans: Sequence[str]) -> bool:
    """Mailman's ``IBanManager.is_banned``: exact entries compare case-sensitively (SQL
    equality), ``^`` entries are ``re.match``-ed case-insensitively; the list's entries
    and the site's both apply."""
    for entries in (list_bans, global_bans):
        if address in entries:
            return True
    for entries in (list_bans, global_bans):
        for entry in entries:
            if entry.startswith("^"):
                try:
                    if re.match(entry, address, re.IGNORECASE):
                        return True
                except re.error:
                    continue
    return False


def matches_nonmember_entry(
    entry: str, address: str, member_of: frozenset[str], *, at_list: bool = True
) -> bool:
    """Mailman's test for one ``*_these_nonmembers`` entry against one sender.

    ``@fqdn_listname`` references are honoured only with *at_list* (Mailman reads
    them in ``accept_these_nonmembers`` only); elsewhere such an entry is compared as an
    exact address, and so never matches a sender."""
    if entry.startswith("^"):
        return _regex_match(entry, address)
    if at_list and entry.startswith("@") and "@" in entry[1:]:
        return entry[1:] in member_of
    return entry == address


_LEGACY_LISTS = (
    (Action.ACCEPT, "accept_these_nonmembers"),
    (Action.HOLD, "hold_these_nonmembers"),
    (Action.REJECT, "reject_these_nonmembers"),
    (Action.DISCARD, "discard_these_nonmembers"),
)


def _shown(address: str) -> str:
    return f"<{address}>"


def _member_outcome(policy: ListPolicy, sender: SenderFacts) -> Outcome:
    member = sender.member
    assert member is not None
    if member.via is not None or member.email != sender.address:
        who = f"member through user's other address {member.email}"
    else:
        who = "member"
    if member.moderation_action is not None:
        action = member.moderation_action
        why = f"{who} {_shown(sender.address)}; moderation_action={action.value}"
    else:
        action = policy.default_member_action
        why = f"{who} {_shown(sender.address)}; default_member_action={action.value}"
    return Outcome(Action.ACCEPT if action is Action.DEFER else action, (why,))


_TRUSTING = frozenset({Action.ACCEPT, Action.DEFER})
"""A nonmember's own actions that admit the post (they need a proven address)."""


def _nonmember_outcome(policy: ListPolicy, senders: Sequence[SenderFacts]) -> Outcome:
    for sender in senders:
        if sender.nonmember_action is not None and (
            sender.proven or sender.nonmember_action not in _TRUSTING
        ):
            action = sender.nonmember_action
            why = f"nonmember {_shown(sender.address)}; own moderation_action={action.value}"
            return Outcome(Action.ACCEPT if action is Action.DEFER else action, (why,))
        for action, name in _LEGACY_LISTS:
            if action is Action.ACCEPT and not sender.proven:
                continue
            for entry in getattr(policy, name):
                if matches_nonmember_entry(
                    entry, sender.address, sender.member_of, at_list=action is Action.ACCEPT
                ):
                    why = f"nonmember {_shown(sender.address)}; {name} has {entry}"
                    return Outcome(action, (why,))
    action = policy.default_nonmember_action
    who = ", ".join(_shown(s.address) for s in senders) or "no sender"
    why = f"nonmember {who}; default_nonmember_action={action.value}"
    return Outcome(Action.ACCEPT if action is Action.DEFER else action, (why,))


def is_loop(policy: ListPolicy, list_posts: Sequence[str]) -> bool:
    """Mailman's ``loop`` rule: some ``List-Post:`` value (already stripped and
    lower-cased) is the list's posting address."""
    return bool(list_posts) and policy.posting_address.lower() in list_posts


def _core_outcome(
    policy: ListPolicy, senders: Sequence[SenderFacts], trust_approved: bool,
    list_posts: Sequence[str] = (),
) -> Outcome:
    if not senders:
        return Outcome(Action.DISCARD, ("no valid sender at all (Mailman's no-senders rule)",))
    if trust_approved and policy.moderator_password:
        return Outcome(
            Action.ACCEPT,
            ("list has a moderator_password: an Approved: header can admit any sender",),
        )
    if is_loop(policy, list_posts):
        return Outcome(
            Action.DISCARD,
            (f"List-Post: names <{policy.posting_address}> itself: Mailman discards it as "
             "a loop",),
        )
    for sender in senders:
        if sender.banned:
            return Outcome(Action.DISCARD, (f"banned: {_shown(sender.address)}",))
    if policy.emergency:
        return Outcome(
            Action.HOLD,
            ("list is in emergency moderation: Mailman holds every post",),
            never_reject=True,
        )
    for sender in senders:
        if sender.member is not None and sender.address and sender.proven:  # "" never posts
            return _member_outcome(policy, sender)
    return _nonmember_outcome(policy, senders)


_REFUSED = frozenset({Action.REJECT, Action.DISCARD})


def mailman_outcome(
    policy: ListPolicy,
    senders: Sequence[SenderFacts],
    hints: Sequence[SenderFacts] = (),
    *,
    trust_approved: bool = True,
    list_posts: Sequence[str] = (),
) -> Outcome:
    """What Mailman's posting chain would do with a post from *senders* (in Mailman's
    order: From:, envelope, Reply-To:, Sender:, or just the envelope at RCPT).

    *list_posts* are the post's ``List-Post:`` values (at end of headers; see
    ``is_loop``). *hints* are other spellings of the envelope sender (SRS/BATV decoded, ``+tag``
    stripped) that Mailman itself would not try; they are consulted only when the
    outcome would refuse the post, and only to accept it.
    """
    outcome = _core_outcome(policy, senders, trust_approved, list_posts)
    if outcome.action not in _REFUSED:
        return outcome
    if any(s.banned for s in senders) or is_loop(policy, list_posts):
        return outcome  # a ban is a ban, a loop a loop; hints never override them
    for sender in senders:
        if sender.unverifiable is not None:
            return Outcome(
                Action.ACCEPT,
                (f"not rejected: {sender.unverifiable} for {_shown(sender.address)}",
                 *outcome.reasons),
            )
    for hint in hints:
        trial = _core_outcome(policy, [hint], trust_approved)
        if trial.action not in _REFUSED:
            return Outcome(
                trial.action,
                (f"sender decodes to {_shown(hint.address)}", *trial.reasons, *outcome.reasons),
            )
    return outcome
