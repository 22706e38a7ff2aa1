"""``MailmanBackend``: Mailman's REST records turned into the facts the engine reads.

It asks a ``RecordSource`` (``listgate.mailman.client.MailmanClient``) through the generic
fact cache (``listgate.facts``), one cache per kind of fact, each with its own lifetime
from ``[cache]`` and its scope in the key space (``listgate.facts.keyspace``):

=============  ==============  ==========================================================
kind           key (scope)     lifetime
=============  ==============  ==========================================================
directory      "" (site)       ``directory_ttl``; also persisted (``mailman.directory``)
policy         list id         ``policy_ttl``: the list's config and its ban entries
global_bans    "" (site)       ``policy_ttl``: the site's ban entries
memberships    address         ``ttl`` if a member of the list asked about, else
                               ``negative_ttl``: every role the address holds anywhere
linked         address         ``ttl`` if its Mailman user has other addresses, else
                               ``negative_ttl``
=============  ==============  ==========================================================

Per-sender facts are per *address*, not per (list, address): one REST call answers for
every list. From them, Mailman's way (the posting rules themselves are
``listgate.decision.rules``), it works out: which list a recipient is (resolved against
the directory); the list's and the site's bans on each sender; every list each sender is
a member of (for ``@list`` entries in ``*_these_nonmembers``); for a sender who is not a
member, the most lenient member among its Mailman user's other addresses; and, at RCPT,
the same for other spellings of the envelope sender (SRS, BATV, +tag).

Invariants:
- ``_assemble`` is the one assembly of an answer, synchronous, for both paths
  (``listgate.facts.lookup``): ``lookup_now`` never waits, and returns ``PENDING`` the
  moment a fact is missing (having started its fetch, which ``lookup`` then joins).
- A recipient that is not a list is answered from the directory alone, so a Mailman
  outage delays no mail but list mail. Once any directory is known (fetched, or loaded
  from ``directory_file``), an expired one is used at once while a refresh runs in the
  background. ``BackendUnavailable`` carries the list address.
- With a ``deadline``, ``lookup`` answers within it whatever Mailman does: one decision
  may need several REST calls in a row (policy, bans, memberships, linked addresses),
  each bounded by the REST timeout, so without it a hung Mailman could hold an RCPT for
  several timeouts, past Postfix's 30 s. At the deadline the fetches go on in the
  background and the lookup is answered from the cache, stale entries included (within
  ``stale_if_error``), or fails with ``BackendUnavailable``.
- With a shared tier (``shared``, ``listgate.facts.redis``) every cache has it as its
  second tier, stored as JSON records (``listgate.mailman.records_json``; the directory
  raw), and invalidations heard from other hosts drop entries here. The in-process tier
  still answers every hit, so the hot path never waits for Redis.
- A list Mailman no longer has (``ListNotFound`` for its policy) makes the recipient not
  a list, and the directory entry is dropped so that the next lookups refetch it.
- Freshness of rejects (``[cache] reject_max_age``): every answer for a list carries how
  old its facts are (the policy, the bans, each sender's memberships and linked
  addresses; the directory, which only tells which recipients are lists, does not
  count). When they are older than ``reject_max_age`` and no healthy change feed covers
  them (``follow_feed``), the answer carries ``ListFacts.confirm``: the same lookup with
  every fact older than that fetched again (single-flight), within what is left of the
  ``deadline``. If Mailman cannot answer it, the stale-if-error window and the
  ``[failure]`` policy apply as for any lookup; each refetch is counted by result
  (``reject_refetches``), and a reject left resting on old facts is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from listgate.config import CacheConfig
from listgate.decision.engine import sanitize_reply_value
from listgate.decision.facts import ListFacts, LookupNow
from listgate.decision.model import PostingRequest
from listgate.decision.recipients import NOT_A_LIST, Target, resolve
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts, is_banned
from listgate.decision.senders import sender_hints
from listgate.errors import BackendError, BackendUnavailable, ListNotFound
from listgate.events import RateLimit
from listgate.facts.cache import FactCache
from listgate.facts.contract import Backend, CacheStats, FeedCoverage, FetchObserver
from listgate.facts.keyspace import SITE_SUBJECT, KeySpace, Scope
from listgate.facts.lookup import NotCached, Reader, answer, answer_now
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord
from listgate.mailman.directory import DirectoryView, load_directory, save_directory, view
from listgate.mailman.records_json import CODECS

if TYPE_CHECKING:
    from listgate.facts.redis import RedisTier

__all__ = ["MailmanBackend", "RecordSource"]

log = logging.getLogger("listgate.mailman")

REFETCH_RESULTS = ("fresh", "stale", "failed")
"""How a refetch before a reject ended: facts fetched again; Mailman failed and older
facts stood in (stale-if-error); Mailman failed with nothing to stand in."""

_LENIENCY = {Action.ACCEPT: 0, Action.DEFER: 0, Action.HOLD: 1, Action.REJECT: 2,
             Action.DISCARD: 2}
"""How far each member action is from an accepted post (for choosing among a user's
subscribed addresses)."""


class RecordSource(Protocol):
    """Where the backend's records come from (``MailmanClient``, or a fake in tests)."""

    calls: int

    async def directory(self) -> Directory: ...
    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord: ...
    async def global_bans(self) -> tuple[str, ...]: ...
    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]: ...
    async def linked_addresses(self, address: str) -> tuple[str, ...] | None: ...
    async def aclose(self) -> None: ...
    def describe(self) -> str: ...


class MailmanBackend(Backend):
    """A ``Backend`` over a ``RecordSource``, with a cache per kind of fact."""

    def __init__(
        self,
        source: RecordSource,
        settings: CacheConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        directory_file: Path | None = None,
        deadline: float | None = None,
        shared: RedisTier | None = None,
    ) -> None:
        self.source = source
        self.deadline = deadline
        """Seconds within which ``lookup`` answers (None: no limit; see the module doc)."""
        self.settings = s = settings or CacheConfig()
        self._shared_started = False
        self.keys = KeySpace()
        """Every cache by kind, and invalidation across them."""
        self.shared = shared
        """The shared tier (Redis) behind every cache, or None."""

        def kind(name: str, maxsize: int, scope: Scope) -> FactCache[str, Any]:
            tier = None if shared is None else shared.store(name, CODECS[name])
            cache: FactCache[str, Any] = FactCache(
                name, maxsize, clock=clock, stale_if_error=s.stale_if_error, tier=tier)
            if shared is not None:
                shared.attach(cache)
            return self.keys.add(cache, scope)

        self._directory: FactCache[str, DirectoryView] = kind("directory", 1, Scope.SITE)
        self._policies: FactCache[str, PolicyRecord] = kind(
            "policy", max(16, s.max_entries // 100), Scope.LIST)
        self._global_bans: FactCache[str, tuple[str, ...]] = kind(
            "global_bans", 1, Scope.SITE)
        self._members: FactCache[str, tuple[MembershipRecord, ...]] = kind(
            "memberships", s.max_entries, Scope.ADDRESS)
        self._linked: FactCache[str, tuple[str, ...] | None] = kind(
            "linked", s.max_entries, Scope.ADDRESS)
        self._start_shared()
        self._clock = clock
        self.feed: FeedCoverage | None = None
        """The change feed that may vouch for old facts behind a reject (``follow_feed``)."""
        self.refetches = dict.fromkeys(REFETCH_RESULTS, 0)
        """Refetches before a reject, by result (``REFETCH_RESULTS``)."""
        self._refetch_log = RateLimit(10.0)
        self._directory_file = directory_file
        self._persisted: DirectoryView | None = (
            load_directory(directory_file) if directory_file is not None else None
        )
        """The newest directory known (fetched, or loaded from the file at start)."""

    # ------------------------------------------------------------------ capabilities

    def caches(self) -> tuple[CacheStats, ...]:
        """Every cache, for the metrics."""
        return self.keys.caches

    def observe_fetches(self, observer: FetchObserver) -> None:
        """Report every fetch's duration to *observer* (kind of fact, seconds)."""
        self.keys.set_observer(observer)

    def reconfigure(self, cache: CacheConfig) -> None:
        """Apply new lifetimes (a reload); cached entries are kept and judged by them."""
        self.settings = cache
        self.keys.set_stale_if_error(cache.stale_if_error)

    def invalidate(self, kind: str, subject: str = SITE_SUBJECT) -> int:
        """Drop one fact, e.g. ("policy", list id) or ("directory", "")."""
        return self.keys.invalidate(kind, subject)

    def invalidate_list(self, list_id: str) -> int:
        """Drop the list's policy (config and bans)."""
        return self.keys.invalidate_list(list_id)

    def invalidate_address(self, address: str) -> int:
        """Drop the address's memberships and linked addresses."""
        return self.keys.invalidate_address(address)

    def invalidate_all(self) -> int:
        """Drop every cached fact (the directory file's copy stays the fallback)."""
        return self.keys.invalidate_all()

    def follow_feed(self, coverage: FeedCoverage | None) -> None:
        """Let *coverage* vouch for facts older than ``reject_max_age`` (None: stop)."""
        self.feed = coverage

    def reject_refetches(self) -> Mapping[str, int]:
        """Refetches before a reject, by result."""
        return dict(self.refetches)

    # ------------------------------------------------------------------ protocol

    async def list_policies(self) -> tuple[ListPolicy, ...]:
        """The policy of every known list (fetching what is not cached)."""
        directory = await answer(self._directory_view)
        out = []
        for fqdn, list_id in sorted(directory.directory.lists.items()):
            record = await self._policies.get(
                list_id, self._policy_ttl, partial(self.source.policy, fqdn, list_id)
            )
            out.append(record.value.policy)
        return tuple(out)

    def describe(self) -> str:
        """For logs."""
        persisted = self._persisted
        known = f", {len(persisted.directory.lists)} lists known from disk" if persisted else ""
        return f"{self.source.describe()}, cached{known}"

    def known_lists(self) -> tuple[str, ...]:
        """The posting addresses in the newest directory this backend has."""
        entry = self._directory.peek(SITE_SUBJECT, lambda _: math.inf)
        newest = entry.value if entry is not None else self._persisted
        return tuple(sorted(newest.directory.lists)) if newest else ()

    async def aclose(self) -> None:
        """Close the source (and the shared tier)."""
        try:
            await self.source.aclose()
        finally:
            if self.shared is not None:
                await self.shared.aclose()

    def tier_stats(self) -> Mapping[str, float]:
        """The shared tier's counters (none without one)."""
        if self.shared is None:
            return {}
        return dataclasses.asdict(self.shared.stats)

    def _start_shared(self) -> None:
        """Start the shared tier's subscriber once a loop runs (idempotent, cheap)."""
        if self.shared is not None and not self._shared_started:
            try:
                self.shared.start()
            except RuntimeError:  # built outside a loop: the first lookup starts it
                return
            self._shared_started = True

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from the caches alone, or ``PENDING`` (having started the fetches)."""
        if not self._shared_started:
            self._start_shared()
        return answer_now(partial(self._assemble, request))

    async def lookup(self, request: PostingRequest) -> ListFacts:
        """Answer, fetching what is missing; ``BackendUnavailable`` if Mailman cannot.
        With a ``deadline``: at the deadline, answer from the cache (stale entries too)."""
        if not self._shared_started:
            self._start_shared()
        started = asyncio.get_running_loop().time()
        try:
            return await answer(partial(self._assemble, request, started=started),
                                self.deadline)
        except NotCached:  # only at the deadline
            raise BackendUnavailable(
                f"Mailman REST: no answer within {self.deadline:g} s and nothing cached",
                list_address=self._list_address(request),
            ) from None

    def _list_address(self, request: PostingRequest) -> str | None:
        """The list *request* is for, by the newest directory known (None if unknown)."""
        persisted = self._persisted
        if persisted is None:
            return None
        return resolve(request.recipient, persisted.resolver).list_address

    # ------------------------------------------------------------------ assembly

    def _assemble(
        self, request: PostingRequest, reader: Reader, *, started: float | None = None,
        confirming: bool = False,
    ) -> ListFacts:
        """The facts for *request*, from what *reader* reads (``NotCached`` on a miss);
        with ``confirm`` set when they are too old to reject on (unless *confirming*:
        this is that refetch). *started*: when the lookup began (loop time)."""
        directory = self._directory_view(reader)
        resolution = resolve(request.recipient, directory.resolver)
        if resolution.target is not Target.POSTING or resolution.list_address is None:
            return ListFacts(resolution)
        fqdn = resolution.list_address
        list_id = directory.directory.lists[fqdn]
        try:
            record = reader.read(
                self._policies, list_id, self._policy_ttl,
                partial(self.source.policy, fqdn, list_id),
            ).value
            global_bans = reader.read(
                self._global_bans, SITE_SUBJECT, self._policy_ttl, self.source.global_bans
            ).value
            senders = tuple([
                self._sender(reader, address, list_id, record, global_bans, directory)
                for address in request.senders
            ])
            hints = tuple([
                self._sender(reader, address, list_id, record, global_bans, directory)
                for address in (
                    sender_hints(request.sender, directory.directory.verp_delimiter)
                    if request.decodes_envelope else ()
                )
            ])
        except ListNotFound:
            # The list was deleted since the directory was fetched: Mailman would refuse
            # the recipient itself. Forget the directory so the next lookup refetches it.
            self._directory.invalidate(SITE_SUBJECT)
            return ListFacts(NOT_A_LIST)
        except BackendError as exc:
            raise BackendUnavailable(str(exc), list_address=fqdn) from None
        confirm = None
        if not confirming and not self._fresh_enough(reader.oldest):
            confirm = partial(self._confirm, request, started)
        return ListFacts(resolution, record.policy, senders, hints, confirm)

    def _fresh_enough(self, oldest: float) -> bool:
        """Whether facts fetched at *oldest* (the cache clock) may stand behind a reject:
        no older than ``reject_max_age``, or covered by a healthy change feed."""
        if self._clock() - oldest <= self.settings.reject_max_age:
            return True
        feed = self.feed
        return feed is not None and feed.covers(oldest)

    async def _confirm(self, request: PostingRequest, started: float | None) -> ListFacts:
        """*request* answered again from facts no older than ``reject_max_age``, fetched
        within what is left of the deadline (from *started*, loop time)."""
        deadline = self.deadline
        if deadline is not None and started is not None:
            deadline = max(0.0, deadline - (asyncio.get_running_loop().time() - started))
        within = self.settings.reject_max_age
        began = self._clock()

        def assemble(reader: Reader) -> tuple[ListFacts, float]:
            return self._assemble(request, reader, confirming=True), reader.oldest

        try:
            facts, oldest = await answer(assemble, deadline, within=within)
        except (NotCached, BackendError) as exc:
            self._refetched("failed", request, f"{exc}")
            if isinstance(exc, NotCached):
                raise BackendUnavailable(
                    f"Mailman REST: no answer within {self.deadline:g} s and nothing cached",
                    list_address=self._list_address(request),
                ) from None
            raise
        age = began - oldest  # a fact fresh when read may age while others are fetched
        if age > within and not (self.feed is not None and self.feed.covers(oldest)):
            self._refetched("stale", request, f"Mailman failed or did not answer within the "
                            f"deadline; the reject rests on facts {age:.1f} s old "
                            "(stale-if-error)")
        else:
            self._refetched("fresh", request, "")
        return facts

    def _refetched(self, result: str, request: PostingRequest, why: str) -> None:
        """Count one refetch before a reject; log one that failed (rate-limited)."""
        self.refetches[result] += 1
        if result == "fresh":
            return
        held = self._refetch_log.check(result, time.monotonic())
        if held is None:
            return
        more = f" ({held} more since the last line)" if held else ""
        log.warning(
            "could not refetch the facts behind a reject of %s -> %s: %s%s",
            sanitize_reply_value(request.sender) or "<>", sanitize_reply_value(request.recipient),
            why, more,
        )

    def _policy_ttl(self, _value: object) -> float:
        return self.settings.policy_ttl

    def _sender(
        self,
        reader: Reader,
        address: str,
        list_id: str,
        record: PolicyRecord,
        global_bans: tuple[str, ...],
        directory: DirectoryView,
    ) -> SenderFacts:
        if not address:
            return SenderFacts("")
        banned = is_banned(address, record.list_bans, global_bans)
        if not self._known_member(address, list_id):
            # Its linked addresses will be read unless its memberships make it a member:
            # ask for them now, side by side with the memberships (a new sender, nearly
            # always a nonmember, waits for one REST round trip instead of two).
            reader.prefetch(self._linked, address, self._linked_max_age,
                            partial(self.source.linked_addresses, address))
        rows = self._memberships(reader, address, list_id)
        member: Membership | None = None
        nonmember_action = None
        member_of: set[str] = set()
        for row in rows:
            if row.role == "member":
                fqdn = directory.fqdn_by_id.get(row.list_id)
                if fqdn is not None:
                    member_of.add(fqdn)
                if row.list_id == list_id and member is None:
                    member = Membership(row.email, row.moderation_action)
            elif row.role == "nonmember" and row.list_id == list_id:
                nonmember_action = row.moderation_action
        unverifiable = None
        if member is None:
            member, known = self._linked_member(
                reader, address, list_id, record.policy.default_member_action
            )
            if not known:
                unverifiable = "Mailman's REST API cannot look up the user of this address"
        return SenderFacts(
            address, member, nonmember_action, banned, frozenset(member_of), unverifiable
        )

    def _max_age_for(self, list_id: str) -> Callable[[tuple[MembershipRecord, ...]], float]:
        ttl, negative = self.settings.ttl, self.settings.negative_ttl

        def max_age(rows: tuple[MembershipRecord, ...]) -> float:
            for row in rows:
                if row.list_id == list_id and row.role == "member":
                    return ttl
            return negative

        return max_age

    def _known_member(self, address: str, list_id: str) -> bool:
        """Whether the memberships last fetched for *address* (of any age) make it a
        member of *list_id* (False when none were ever fetched)."""
        held = self._members.held(address)
        return held is not None and any(
            row.list_id == list_id and row.role == "member" for row in held.value)

    def _linked_max_age(self, found: tuple[str, ...] | None) -> float:
        """How long linked addresses stay fresh: ``ttl`` when the address has a user with
        other addresses, else ``negative_ttl``."""
        return self.settings.ttl if found else self.settings.negative_ttl

    def _memberships(
        self, reader: Reader, address: str, list_id: str
    ) -> tuple[MembershipRecord, ...]:
        return reader.read(
            self._members,
            address,
            self._max_age_for(list_id),
            partial(self.source.memberships, address),
        ).value

    def _linked_member(
        self, reader: Reader, address: str, list_id: str, default_action: Action
    ) -> tuple[Membership | None, bool]:
        """The member that *address* stands for through its Mailman user, and whether
        the backend could find out at all.

        Mailman tries the user's addresses in its own order (``user.addresses``: creation
        order, which REST does not show; ``users/<id>/addresses`` is sorted by address)
        and the first subscribed one decides. When several are subscribed and would decide
        differently, the most lenient one is taken, so that listgate never rejects a post
        Mailman lets through (at worst it accepts one Mailman refuses)."""
        others = reader.read(
            self._linked,
            address,
            self._linked_max_age,
            partial(self.source.linked_addresses, address),
        ).value
        if others is None:
            return None, False
        found: list[Membership] = []
        for other in others:
            for row in self._memberships(reader, other, list_id):
                if row.list_id == list_id and row.role == "member":
                    found.append(Membership(row.email, row.moderation_action, via=address))
                    break
        if not found:
            return None, True
        return min(found, key=lambda m: _LENIENCY[m.moderation_action or default_action]), True

    # ------------------------------------------------------------------ directory

    def _directory_view(self, reader: Reader) -> DirectoryView:
        """The list directory. Once any directory is known (fetched, or loaded from
        ``directory_file``), an expired one is still used at once while a refresh runs
        in the background: resolving a recipient never waits for Mailman, so mail that
        is not for a list is never delayed by a slow or dead Mailman."""
        ttl = self.settings.directory_ttl

        def max_age(_: DirectoryView) -> float:
            return ttl

        if self._persisted is not None:
            return reader.read_or(
                self._directory, SITE_SUBJECT, max_age, self._fetch_directory, self._persisted
            )
        try:
            return reader.read(
                self._directory, SITE_SUBJECT, max_age, self._fetch_directory, aged=False
            ).value
        except BackendError as exc:
            raise BackendUnavailable(f"no list directory yet: {exc}") from None

    async def _fetch_directory(self) -> DirectoryView:
        fetched = view(await self.source.directory())
        self._persisted = fetched
        if self._directory_file is not None:
            save_directory(self._directory_file, fetched.directory)
        return fetched

