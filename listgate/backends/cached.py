"""Caching in front of a Mailman fact source, and assembly of the facts the engine reads.

``FactCache`` caches *results* (never coroutines) of one kind of REST answer, keyed by
list or address, with:

- **TTL by value**: the caller says how old a cached value may be, and may decide it from
  the value itself (a sender who is a member of the list is trusted for ``ttl``; one who
  is not, and so might be rejected, only for ``negative_ttl``, so a new subscriber's
  first post is not refused for long);
- **single-flight**: concurrent misses for one key share one fetch, which runs as its own
  task so that one caller going away does not cancel it for the others;
- **stale-if-error**: when a fetch fails (``BackendUnavailable``: Mailman down, slow or
  broken), a value up to ``stale_if_error`` seconds past its age limit is served instead;
- a bounded number of entries (``cachetools.LRUCache``) and an injectable clock.

``CachedBackend`` implements the ``MembershipBackend`` protocol on top of a
``FactSource`` (``backends.mailman.MailmanSource``). It caches apart, each with its own
lifetime: the list directory (all lists, alias domains, the VERP delimiter; persisted
to disk so a restart during a Mailman outage still knows which addresses are lists),
each list's policy (config and bans), the site's bans, each address's memberships on
every list, and each address's linked addresses (its Mailman user's other addresses).
Per-sender facts are per *address*, not per (list, address): one REST call answers for
every list.

Invariants:
- ``lookup_now`` never waits: it runs the same assembly as ``lookup`` and returns
  ``PENDING`` the moment an answer is missing (having started its fetch, which
  ``lookup`` then joins).
- A recipient that is not a list is answered from the directory alone, so a Mailman
  outage delays no mail but list mail. ``BackendUnavailable`` carries the list address.
- With a ``deadline``, ``lookup`` answers within it whatever Mailman does: one decision
  may need several REST calls in a row (policy, bans, memberships, linked addresses),
  each bounded by the REST timeout, so without it a hung Mailman could hold an RCPT for
  several timeouts, past Postfix's 30 s. At the deadline the fetches go on in the
  background and the lookup is answered from the cache, stale entries included (within
  ``stale_if_error``), or fails with ``BackendUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from cachetools import LRUCache

from listgate.backends.base import PENDING, CacheSettings, LookupNow
from listgate.backends.mailman import Directory, MembershipRecord, PolicyRecord
from listgate.decision.engine import ListFacts
from listgate.decision.model import PostingRequest
from listgate.decision.recipients import NOT_A_LIST, ListDirectory, Target, resolve, sender_hints
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts, is_banned
from listgate.errors import BackendError, BackendUnavailable, ListNotFound

__all__ = ["CacheSettings", "CachedBackend", "FactCache", "FactSource"]

log = logging.getLogger("listgate.cache")

_LENIENCY = {Action.ACCEPT: 0, Action.DEFER: 0, Action.HOLD: 1, Action.REJECT: 2,
             Action.DISCARD: 2}
"""How far each member action is from an accepted post (for choosing among a user's
subscribed addresses)."""

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class _Missing:
    """No usable cached value."""


MISSING = _Missing()


class NotCached(Exception):
    """Raised by ``FactCache.get(..., wait=False)`` on a miss (after starting the fetch)."""


_ACCEPT_STALE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "listgate_accept_stale", default=False
)
"""Set while a lookup past its deadline is answered from the cache: ``FactCache.get``
with ``wait=False`` then returns an expired entry within ``stale_if_error``."""


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    fetched_at: float


class FactCache(Generic[K, V]):
    """One kind of cached answer; see the module docstring."""

    def __init__(
        self,
        name: str,
        maxsize: int,
        clock: Callable[[], float],
        stale_if_error: float,
    ) -> None:
        self.name = name
        self._entries: LRUCache[K, _Entry[V]] = LRUCache(maxsize)
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self._clock = clock
        self.stale_if_error = stale_if_error
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.errors = 0
        self.observer: Callable[[str, float], None] | None = None
        """Called with (cache name, seconds) after each fetch (the latency histogram)."""

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K, max_age: Callable[[V], float]) -> V | _Missing:
        """The cached value if it is fresh enough, else ``MISSING``; counts a hit."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at <= max_age(entry.value):
            self.hits += 1
            return entry.value
        return MISSING

    def put(self, key: K, value: V) -> None:
        """Store *value* as fetched now."""
        self._entries[key] = _Entry(value, self._clock())

    def clear(self) -> None:
        """Forget every entry (not the fetches in flight)."""
        self._entries.clear()

    async def get(
        self,
        key: K,
        max_age: Callable[[V], float],
        fetch: Callable[[], Awaitable[V]],
        *,
        wait: bool = True,
    ) -> V:
        """The value for *key*: cached if fresh, else fetched once for all callers.

        With ``wait=False`` a miss starts (or joins) the fetch and raises ``NotCached``
        instead of waiting, so the caller never suspends.
        """
        value = self.peek(key, max_age)
        if not isinstance(value, _Missing):
            return value
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._fetch(key, max_age, fetch))
            self._inflight[key] = task
            task.add_done_callback(self._fetched(key))
        if not wait:
            if _ACCEPT_STALE.get():
                entry = self._entries.get(key)
                if entry is not None and (
                    self._clock() - entry.fetched_at
                    <= max_age(entry.value) + self.stale_if_error
                ):
                    self.stale += 1
                    return entry.value
            raise NotCached(self.name)
        return await asyncio.shield(task)

    def _fetched(self, key: K) -> Callable[[asyncio.Task[V]], None]:
        def done(task: asyncio.Task[V]) -> None:
            self._inflight.pop(key, None)
            if not task.cancelled():
                task.exception()  # retrieved: waiters get it through the shield

        return done

    async def _fetch(
        self, key: K, max_age: Callable[[V], float], fetch: Callable[[], Awaitable[V]]
    ) -> V:
        started = time.perf_counter()
        try:
            value = await fetch()
        except BackendUnavailable:  # an answer such as ListNotFound is never papered over
            if self.observer is not None:
                self.observer(self.name, time.perf_counter() - started)
            entry = self._entries.get(key)
            if entry is not None and self.stale_if_error > 0:
                age = self._clock() - entry.fetched_at
                if age <= max_age(entry.value) + self.stale_if_error:
                    self.stale += 1
                    return entry.value
            self.errors += 1
            raise
        if self.observer is not None:
            self.observer(self.name, time.perf_counter() - started)
        self._entries[key] = _Entry(value, self._clock())
        return value


class FactSource(Protocol):
    """Where the cached facts come from (``backends.mailman.MailmanSource``)."""

    calls: int

    async def directory(self) -> Directory: ...
    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord: ...
    async def global_bans(self) -> tuple[str, ...]: ...
    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]: ...
    async def linked_addresses(self, address: str) -> tuple[str, ...] | None: ...
    async def aclose(self) -> None: ...
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _DirectoryView:
    directory: Directory
    resolver: ListDirectory
    fqdn_by_id: dict[str, str]


def _view(directory: Directory) -> _DirectoryView:
    return _DirectoryView(
        directory,
        ListDirectory(
            frozenset(directory.lists),
            dict(directory.alias_domains),
            directory.verp_delimiter,
        ),
        {list_id: fqdn for fqdn, list_id in directory.lists.items()},
    )


class CachedBackend:
    """A ``MembershipBackend`` over a ``FactSource`` with per-kind caches."""

    def __init__(
        self,
        source: FactSource,
        settings: CacheSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        directory_file: Path | None = None,
        deadline: float | None = None,
    ) -> None:
        self.source = source
        self.deadline = deadline
        """Seconds within which ``lookup`` answers (None: no limit; see the module doc)."""
        self.settings = s = settings or CacheSettings()
        self._directory: FactCache[str, _DirectoryView] = FactCache(
            "directory", 1, clock, s.stale_if_error
        )
        self._policies: FactCache[str, PolicyRecord] = FactCache(
            "policy", max(16, s.max_entries // 100), clock, s.stale_if_error
        )
        self._global_bans: FactCache[str, tuple[str, ...]] = FactCache(
            "global_bans", 1, clock, s.stale_if_error
        )
        self._members: FactCache[str, tuple[MembershipRecord, ...]] = FactCache(
            "memberships", s.max_entries, clock, s.stale_if_error
        )
        self._linked: FactCache[str, tuple[str, ...] | None] = FactCache(
            "linked", s.max_entries, clock, s.stale_if_error
        )
        self.caches: tuple[FactCache[Any, Any], ...] = (
            self._directory,
            self._policies,
            self._global_bans,
            self._members,
            self._linked,
        )
        self._directory_file = directory_file
        self._persisted: _DirectoryView | None = None
        """The newest directory known (fetched, or loaded from the file at start)."""
        if directory_file is not None:
            self._persisted = self._load_directory(directory_file)

    # ------------------------------------------------------------------ protocol

    def observe_fetches(self, observer: Callable[[str, float], None]) -> None:
        """Report every fetch's duration to *observer* (cache name, seconds)."""
        for cache in self.caches:
            cache.observer = observer

    def reconfigure(self, settings: CacheSettings) -> None:
        """Apply new lifetimes (a reload); cached entries are kept and judged by them."""
        self.settings = settings
        for cache in self.caches:
            cache.stale_if_error = settings.stale_if_error

    async def list_policies(self) -> tuple[ListPolicy, ...]:
        """The policy of every known list (fetching what is not cached)."""
        view = await self._directory_view(True)
        out = []
        for fqdn, list_id in sorted(view.directory.lists.items()):
            record = await self._policies.get(
                fqdn, lambda _: self.settings.policy_ttl, partial(self.source.policy, fqdn, list_id)
            )
            out.append(record.policy)
        return tuple(out)

    def describe(self) -> str:
        """For logs."""
        view = self._persisted
        known = f", {len(view.directory.lists)} lists known from disk" if view else ""
        return f"{self.source.describe()}, cached{known}"

    def known_lists(self) -> tuple[str, ...]:
        """The posting addresses in the newest directory this backend has."""
        entry = self._directory.peek("d", lambda _: float("inf"))
        view = entry if isinstance(entry, _DirectoryView) else self._persisted
        return tuple(sorted(view.directory.lists)) if view else ()

    async def aclose(self) -> None:
        """Close the source."""
        await self.source.aclose()

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        """Answer from the caches alone, or ``PENDING`` (having started the fetches)."""
        coro = self._assemble(request, wait=False)
        try:
            coro.send(None)
        except StopIteration as done:
            facts: ListFacts = done.value
            return facts
        except NotCached:
            return PENDING
        coro.close()  # pragma: no cover - wait=False never suspends
        raise AssertionError("cache assembly suspended without waiting")

    async def lookup(self, request: PostingRequest) -> ListFacts:
        """Answer, fetching what is missing; ``BackendUnavailable`` if Mailman cannot.
        With a ``deadline``: at the deadline, answer from the cache (stale entries too)."""
        if self.deadline is None:
            return await self._assemble(request, wait=True)
        try:
            async with asyncio.timeout(self.deadline):
                return await self._assemble(request, wait=True)
        except TimeoutError:
            pass
        token = _ACCEPT_STALE.set(True)
        coro = self._assemble(request, wait=False)
        try:
            coro.send(None)
        except StopIteration as done:
            facts: ListFacts = done.value
            return facts
        except NotCached:
            raise BackendUnavailable(
                f"Mailman REST: no answer within {self.deadline:g} s and nothing cached",
                list_address=self._list_address(request),
            ) from None
        finally:
            _ACCEPT_STALE.reset(token)
        coro.close()  # pragma: no cover - wait=False never suspends
        raise AssertionError("cache assembly suspended without waiting")

    def _list_address(self, request: PostingRequest) -> str | None:
        """The list *request* is for, by the newest directory known (None if unknown)."""
        view = self._persisted
        if view is None:
            return None
        return resolve(request.recipient, view.resolver).list_address

    # ------------------------------------------------------------------ assembly

    def _assemble(self, request: PostingRequest, wait: bool) -> Coroutine[Any, Any, ListFacts]:
        """One assembly for both paths: with ``wait=False`` every cache miss raises
        ``NotCached`` (after starting its fetch) instead of suspending."""
        return self._assemble_async(request, wait)

    async def _assemble_async(self, request: PostingRequest, wait: bool) -> ListFacts:
        view = await self._directory_view(wait)
        resolution = resolve(request.recipient, view.resolver)
        if resolution.target is not Target.POSTING or resolution.list_address is None:
            return ListFacts(resolution)
        fqdn = resolution.list_address
        list_id = view.directory.lists[fqdn]
        try:
            record = await self._policies.get(
                fqdn,
                lambda _: self.settings.policy_ttl,
                lambda: self.source.policy(fqdn, list_id),
                wait=wait,
            )
            global_bans = await self._global_bans.get(
                "*", lambda _: self.settings.policy_ttl, self.source.global_bans, wait=wait
            )
            senders = []
            for address in request.senders:
                senders.append(
                    await self._sender(address, list_id, record, global_bans, view, wait)
                )
            hints = []
            if request.decodes_envelope:
                for address in sender_hints(request.sender, view.directory.verp_delimiter):
                    hints.append(
                        await self._sender(address, list_id, record, global_bans, view, wait)
                    )
        except ListNotFound:
            # The list was deleted since the directory was fetched: Mailman would refuse
            # the recipient itself. Forget the directory so the next lookup refetches it.
            self._directory.clear()
            return ListFacts(NOT_A_LIST)
        except BackendError as exc:
            raise BackendUnavailable(str(exc), list_address=fqdn) from None
        return ListFacts(resolution, record.policy, tuple(senders), tuple(hints))

    async def _sender(
        self,
        address: str,
        list_id: str,
        record: PolicyRecord,
        global_bans: tuple[str, ...],
        view: _DirectoryView,
        wait: bool,
    ) -> SenderFacts:
        if not address:
            return SenderFacts("")
        banned = is_banned(address, record.list_bans, global_bans)
        rows = await self._memberships(address, list_id, wait)
        member: Membership | None = None
        nonmember_action = None
        member_of: set[str] = set()
        for row in rows:
            if row.role == "member":
                fqdn = view.fqdn_by_id.get(row.list_id)
                if fqdn is not None:
                    member_of.add(fqdn)
                if row.list_id == list_id and member is None:
                    member = Membership(row.email, row.moderation_action)
            elif row.role == "nonmember" and row.list_id == list_id:
                nonmember_action = row.moderation_action
        unverifiable = None
        if member is None:
            member, known = await self._linked_member(
                address, list_id, record.policy.default_member_action, wait
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

    async def _memberships(
        self, address: str, list_id: str, wait: bool
    ) -> tuple[MembershipRecord, ...]:
        return await self._members.get(
            address,
            self._max_age_for(list_id),
            lambda: self.source.memberships(address),
            wait=wait,
        )

    async def _linked_member(
        self, address: str, list_id: str, default_action: Action, wait: bool
    ) -> tuple[Membership | None, bool]:
        """The member that *address* stands for through its Mailman user, and whether
        the backend could find out at all.

        Mailman tries the user's addresses in its own order (``user.addresses``: creation
        order, which REST does not show; ``users/<id>/addresses`` is sorted by address)
        and the first subscribed one decides. When several are subscribed and would decide
        differently, the most lenient one is taken, so that listgate never rejects a post
        Mailman lets through (at worst it accepts one Mailman refuses)."""
        s = self.settings
        others = await self._linked.get(
            address,
            lambda found: s.ttl if found else s.negative_ttl,
            lambda: self.source.linked_addresses(address),
            wait=wait,
        )
        if others is None:
            return None, False
        found: list[Membership] = []
        for other in others:
            for row in await self._memberships(other, list_id, wait):
                if row.list_id == list_id and row.role == "member":
                    found.append(Membership(row.email, row.moderation_action, via=address))
                    break
        if not found:
            return None, True
        return min(found, key=lambda m: _LENIENCY[m.moderation_action or default_action]), True

    # ------------------------------------------------------------------ directory

    async def _directory_view(self, wait: bool) -> _DirectoryView:
        """The list directory. Once any directory is known (fetched, or loaded from
        ``directory_file``), an expired one is still used at once while a refresh runs
        in the background: resolving a recipient never waits for Mailman, so mail that
        is not for a list is never delayed by a slow or dead Mailman."""
        ttl = self.settings.directory_ttl
        fresh = self._directory.peek("d", lambda _: ttl)
        if isinstance(fresh, _DirectoryView):
            return fresh
        if self._persisted is not None:
            with contextlib.suppress(NotCached):
                await self._directory.get("d", lambda _: ttl, self._fetch_directory, wait=False)
            return self._persisted
        try:
            return await self._directory.get(
                "d", lambda _: ttl, self._fetch_directory, wait=wait
            )
        except BackendError as exc:
            raise BackendUnavailable(f"no list directory yet: {exc}") from None

    async def _fetch_directory(self) -> _DirectoryView:
        view = _view(await self.source.directory())
        self._persisted = view
        if self._directory_file is not None:
            self._save_directory(self._directory_file, view.directory)
        return view

    @staticmethod
    def _load_directory(path: Path) -> _DirectoryView | None:
        try:
            with path.open(encoding="utf-8") as fh:
                return _view(Directory.from_json(json.load(fh)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring list directory file %s: %s", path, exc)
            return None

    @staticmethod
    def _save_directory(path: Path, directory: Directory) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lists.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(directory.to_json(), fh, sort_keys=True)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot persist the list directory to %s: %s", path, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
