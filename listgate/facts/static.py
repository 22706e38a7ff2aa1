"""``StaticBackend``: posting rights from an in-memory map, the default that needs no Mailman.

The map is read as the simplest Mailman list there is: the configured posters are its
members (``default_member_action = accept``) and everyone else is a nonmember
(``default_nonmember_action = reject``). So the same engine, reasons and overrides apply
to a static list as to a Mailman one.

Invariants:
- Keys are list posting addresses, values the addresses allowed to post. Both sides are
  normalised with ``normalize_address`` at construction and stored as frozensets; the map
  never changes afterwards.
- Recipients resolve like Mailman's: case-insensitive, ``list+anything@`` is the list
  (else the gate would be trivially bypassed). Static lists have no service addresses.
- The null sender is never a poster, even if "" or "<>" was configured (it is dropped).
- ``lookup_now`` always answers (never ``PENDING``); ``lookup`` never raises.
- The answer for each configured poster posting alone (the ``ListFacts`` of an RCPT) is
  built once (it is immutable): a lookup for a member only picks it out; an unknown
  sender's facts are made per lookup.
- No cache: the optional ``Backend`` capabilities keep their no-op defaults (a changed map
  is a new ``StaticBackend``, built on reload).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from listgate.decision.facts import ListFacts
from listgate.decision.model import PostingRequest, normalize_address
from listgate.decision.recipients import ListDirectory, Resolution, Target, resolve
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts
from listgate.facts.contract import Backend

__all__ = ["StaticBackend"]


class StaticBackend(Backend):
    """Posting rights from a ``{list address: allowed posters}`` map."""

    __slots__ = ("_answers", "_directory", "_policies", "_posters")

    def __init__(self, posters: Mapping[str, Iterable[str]]) -> None:
        merged: dict[str, set[str]] = {}
        for list_address, allowed in posters.items():
            if isinstance(allowed, str):
                raise TypeError(
                    f"posters of {list_address!r} must be a collection of addresses, not a str"
                )
            key = normalize_address(list_address)
            if not key:
                raise ValueError("a list address must not be empty")
            merged.setdefault(key, set()).update(normalize_address(a) for a in allowed)
        self._posters: dict[str, frozenset[str]] = {
            key: frozenset(allowed - {""}) for key, allowed in merged.items()
        }
        self._policies = {
            key: ListPolicy(
                key,
                default_member_action=Action.ACCEPT,
                default_nonmember_action=Action.REJECT,
            )
            for key in self._posters
        }
        self._directory = ListDirectory(frozenset(self._posters), service_addresses=False)
        self._answers: dict[str, dict[str, ListFacts]] = {
            key: {
                s: ListFacts(Resolution(Target.POSTING, key), self._policies[key],
                             (SenderFacts(s, Membership(s)),))
                for s in allowed
            }
            for key, allowed in self._posters.items()
        }
        """The answer for each poster of each list posting alone (its facts for other
        requests: ``senders[0]``)."""

    def known_lists(self) -> tuple[str, ...]:
        """The gated list posting addresses, sorted."""
        return tuple(sorted(self._posters))

    def lookup_now(self, request: PostingRequest) -> ListFacts:
        """Answer from the map."""
        resolution = resolve(request.recipient, self._directory)
        list_address = resolution.list_address
        if resolution.target is not Target.POSTING or list_address is None:
            return ListFacts(resolution)
        answers = self._answers[list_address]
        senders = request.senders
        if len(senders) == 1:  # the envelope sender at RCPT: one dict lookup
            answer = answers.get(senders[0])
            if answer is not None:
                return answer
            return ListFacts(resolution, self._policies[list_address], (SenderFacts(senders[0]),))
        facts = []
        for sender in senders:
            known = answers.get(sender)
            facts.append(known.senders[0] if known is not None else SenderFacts(sender))
        return ListFacts(resolution, self._policies[list_address], tuple(facts))

    async def lookup(self, request: PostingRequest) -> ListFacts:
        """The same answer as ``lookup_now``."""
        return self.lookup_now(request)

    async def list_policies(self) -> tuple[ListPolicy, ...]:
        """The policy of every list in the map."""
        return tuple(self._policies[k] for k in sorted(self._policies))

    async def aclose(self) -> None:
        """Nothing to release."""

    def describe(self) -> str:
        """E.g. "static map, 3 lists"."""
        count = len(self._posters)
        return f"static map, {count} list{'' if count == 1 else 's'}"
