"""A stale reject is never served (``[cache] reject_max_age``), and the change feed meets the
cache: the reader's age bound, the Mailman backend's ``confirm``, the gate's rule, the
feed's coverage and state changes, the ``Invalidator`` adapter and the feed metrics.
Mailman's records are in memory (``tests.fakes``); time is a fake clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest

from listgate.config import CacheConfig, ConfigError, parse_config
from listgate.decision.engine import ReplyTexts
from listgate.decision.facts import PENDING
from listgate.decision.gate import FailurePolicy, Gate
from listgate.decision.model import PostingRequest, Verdict
from listgate.errors import BackendUnavailable
from listgate.events import EVERYTHING, NOTHING, ChangeSet, FeedState, Message
from listgate.facts.cache import FactCache
from listgate.facts.feed import HEALTHY, SILENT, FeedCoverage, FeedInvalidator
from listgate.facts.lookup import Reader, answer
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import MembershipRecord
from listgate.metrics import Metrics
from tests.fakes import DictStore, FakeClock, FakeMailmanRecords, FakeSource

LIST = FakeMailmanRecords.LIST
NONMEMBER = "stranger@example.org"


class Switchable(FakeMailmanRecords):
    """Mailman's records in memory that can be made to fail (Mailman down)."""

    def __init__(self, members: tuple[str, ...] = ()) -> None:
        super().__init__(members)
        self.down = False

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        if self.down:
            raise BackendUnavailable("Mailman is down")
        return await super().memberships(address)


class Covering:
    """A ``FeedCoverage`` that vouches for facts fetched at or after ``since``."""

    def __init__(self, since: float) -> None:
        self.since = since

    def covers(self, fetched_at: float) -> bool:
        return fetched_at >= self.since


def world(clock: FakeClock, **cache: float) -> tuple[Switchable, MailmanBackend, Gate]:
    records = Switchable()
    backend = MailmanBackend(records, CacheConfig(**cache), clock=clock)  # type: ignore[arg-type]
    return records, backend, Gate(backend, ReplyTexts())


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the reader


def test_reader_within_refetches_older_facts_and_tracks_the_oldest() -> None:
    """With ``within``, a fact older than it is fetched again although its own lifetime
    has not run out; ``oldest`` is the earliest fetch time of the facts read, and a fact
    read with aged=False neither counts nor is refetched."""
    clock = FakeClock()
    facts: FactCache[str, object] = FactCache("facts", 10, clock=clock)
    source = FakeSource({"a": 1, "d": 2})

    async def go() -> None:
        def both(reader: Reader) -> tuple[object, float]:
            a = reader.read(facts, "a", lambda _: 60.0, source.fetcher("a")).value
            reader.read(facts, "d", lambda _: 60.0, source.fetcher("d"), aged=False)
            return a, reader.oldest

        assert await answer(both) == (1, clock.now)
        first = clock.now
        clock.advance(5)
        assert await answer(both) == (1, first)  # within its 60 s: no refetch
        assert source.calls == {"a": 1, "d": 1}
        _, oldest = await answer(both, within=2.0)
        assert source.calls == {"a": 2, "d": 1}  # only the aged fact refetched
        assert oldest == clock.now

    run(go())


async def _second_host_with_an_older_shared_value(
    clock: FakeClock, source: FakeSource,
) -> Callable[[Reader], object]:
    """A fact fetched ("old") and shared by one host, changed at the source ("new") 5 s
    later; the assembly of a second host, whose own tier is empty."""
    store: DictStore[str, object] = DictStore(clock)
    host = FactCache[str, object]("facts", 10, clock=clock, tier=store)

    def one(reader: Reader) -> object:
        return reader.read(host, "a", lambda _: 60.0, source.fetcher("a")).value

    assert await answer(one) == "old"  # fetched, and put in the shared tier
    clock.advance(5)
    source.values["a"] = "new"
    host = FactCache[str, object]("facts", 10, clock=clock, tier=store)  # another host
    return one


def test_reader_within_is_not_answered_by_an_older_second_tier_value() -> None:
    """With ``within``, the refetch goes to the source even when a second tier (Redis)
    holds the fact within its own lifetime but older than ``within``: a reject never rests
    on a shared value older than reject_max_age."""
    clock, source = FakeClock(), FakeSource({"a": "old"})

    async def go() -> None:
        one = await _second_host_with_an_older_shared_value(clock, source)
        assert await answer(one) == "old"  # within 60 s: the shared value serves
        assert await answer(one, within=2.0) == "new"  # 5 s old: not for a reject
        assert source.calls == {"a": 2}

    run(go())


def test_reader_within_does_not_take_an_unbounded_fetchs_older_value() -> None:
    """A bounded read (a reject's refetch) that joins a fetch started at the same moment
    by an unbounded one (an accept's) does not take that fetch's second-tier value older
    than ``within``: it fetches again from the source."""
    clock, source = FakeClock(), FakeSource({"a": "old"})

    async def go() -> None:
        one = await _second_host_with_an_older_shared_value(clock, source)
        unbounded, bounded = await asyncio.gather(answer(one), answer(one, within=2.0))
        assert (unbounded, bounded) == ("old", "new")
        assert source.calls == {"a": 2}

    run(go())


# --------------------------------------------------------------------------- the rule


def test_an_old_reject_is_confirmed_before_it_is_sent() -> None:
    """A reject on facts older than reject_max_age: decide_now leaves it to decide, which
    fetches the facts again (each once) and rejects on them; a fresh reject is answered
    at once."""
    clock = FakeClock()
    records, backend, gate = world(clock)
    request = PostingRequest(NONMEMBER, LIST)

    async def go() -> None:
        first = await gate.decide(request)
        assert first.verdict is Verdict.REJECT
        assert gate.decide_now(request) is not None  # fresh: answered at once
        calls = records.calls
        clock.advance(2.5)
        facts = backend.lookup_now(request)
        assert facts is not PENDING
        assert facts.confirm is not None
        assert gate.decide_now(request) is None
        assert records.calls == calls
        again = await gate.decide(request)
        assert again.verdict is Verdict.REJECT
        assert records.fetches["memberships"] == 2
        assert records.fetches["policy"] == 2
        assert backend.reject_refetches()["fresh"] == 1
        assert gate.decide_now(request) is not None  # refreshed: answered at once

    run(go())


def test_a_subscription_is_followed_within_reject_max_age() -> None:
    """The table's first row: a refused sender subscribes; reject_max_age later listgate
    accepts, although the cached "nonmember" answer's negative_ttl has not run out."""
    clock = FakeClock()
    records, _backend, gate = world(clock, negative_ttl=10.0)
    request = PostingRequest(NONMEMBER, LIST)

    async def go() -> None:
        assert (await gate.decide(request)).verdict is Verdict.REJECT
        records.members.add(NONMEMBER)
        clock.advance(2.1)
        assert (await gate.decide(request)).verdict is Verdict.ACCEPT

    run(go())


def test_an_old_accept_uses_the_ttls() -> None:
    """An accept on old facts is answered at once, without any fetch."""
    clock = FakeClock()
    records, backend, gate = world(clock)
    records.members.add("member@example.org")
    request = PostingRequest("member@example.org", LIST)

    async def go() -> None:
        assert (await gate.decide(request)).verdict is Verdict.ACCEPT
        calls = records.calls
        clock.advance(30)
        decision = gate.decide_now(request)
        assert decision is not None
        assert decision.verdict is Verdict.ACCEPT
        assert records.calls == calls
        assert backend.reject_refetches() == {"fresh": 0, "stale": 0, "failed": 0}

    run(go())


def test_a_healthy_feed_vouches_for_old_facts() -> None:
    """Facts the feed covers may stand behind a reject however old; facts fetched before
    the feed was healthy may not."""
    clock = FakeClock()
    records, backend, gate = world(clock)
    request = PostingRequest(NONMEMBER, LIST)

    async def go() -> None:
        assert (await gate.decide(request)).verdict is Verdict.REJECT
        backend.follow_feed(Covering(since=clock.now + 1))  # healthy only since later
        clock.advance(5)
        assert gate.decide_now(request) is None
        assert (await gate.decide(request)).verdict is Verdict.REJECT
        backend.follow_feed(Covering(since=clock.now - 1))
        calls = records.calls
        clock.advance(8)  # older than reject_max_age, within the TTLs
        decision = gate.decide_now(request)
        assert decision is not None
        assert decision.verdict is Verdict.REJECT
        assert records.calls == calls

    run(go())


def test_a_failed_refetch_falls_back_to_stale_if_error_then_the_failure_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mailman down at the refetch: within stale_if_error the reject stands on the older
    facts (counted "stale", logged); without it the [failure] policy answers (counted
    "failed")."""
    clock = FakeClock()
    request = PostingRequest(NONMEMBER, LIST)

    async def go(stale_if_error: float, policy: FailurePolicy) -> tuple[Verdict, dict[str, int]]:
        records, backend, _ = world(clock, stale_if_error=stale_if_error, negative_ttl=10.0)
        gate = Gate(backend, ReplyTexts(), policy)
        assert (await gate.decide(request)).verdict is Verdict.REJECT
        records.down = True
        clock.advance(5)  # older than reject_max_age, within negative_ttl
        verdict = (await gate.decide(request)).verdict
        return verdict, dict(backend.reject_refetches())

    with caplog.at_level(logging.WARNING, "listgate.mailman"):
        assert run(go(3600.0, FailurePolicy.TEMPFAIL)) == (
            Verdict.REJECT, {"fresh": 0, "stale": 1, "failed": 0})
    assert "could not refetch the facts behind a reject" in caplog.text
    assert run(go(0.0, FailurePolicy.TEMPFAIL)) == (
        Verdict.TEMPFAIL, {"fresh": 0, "stale": 0, "failed": 1})
    assert run(go(0.0, FailurePolicy.ACCEPT))[0] is Verdict.ACCEPT


def test_concurrent_old_rejects_refetch_once() -> None:
    """Many requests rejected on the same old facts share one refetch per fact."""
    clock = FakeClock()
    records, _backend, gate = world(clock)
    request = PostingRequest(NONMEMBER, LIST)

    async def go() -> None:
        await gate.decide(request)
        clock.advance(5)
        before = dict(records.fetches)
        verdicts = await asyncio.gather(*(gate.decide(request) for _ in range(20)))
        assert {d.verdict for d in verdicts} == {Verdict.REJECT}
        assert records.fetches["memberships"] == before["memberships"] + 1
        assert records.fetches["policy"] == before["policy"] + 1

    run(go())


# --------------------------------------------------------------------------- the feed


def message(seq: int, changes: ChangeSet = NOTHING) -> Message:
    return Message("mm/1/a", 0.0, seq, 0.0, changes)


class Recording:
    """A backend's invalidation capabilities, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def invalidate(self, kind: str, subject: str = "") -> int:
        self.calls.append(("invalidate", kind))
        return 0

    def invalidate_list(self, list_id: str) -> int:
        self.calls.append(("list", list_id))
        return 0

    def invalidate_address(self, address: str) -> int:
        self.calls.append(("address", address))
        return 0

    def invalidate_all(self) -> int:
        self.calls.append(("all",))
        return 0


def test_the_invalidator_adapter_maps_each_call_to_the_backend() -> None:
    """Lists, addresses, directory, global bans and everything reach the backend as
    invalidate_list/invalidate_address each, invalidate(kind) and invalidate_all."""
    backend = Recording()
    adapter = FeedInvalidator(lambda: backend)  # type: ignore[arg-type,return-value]
    state = FeedState(adapter, started_wall=1e9)
    state.receive(message(1, ChangeSet(frozenset({"a.example.org", "b.example.org"}),
                                       frozenset({"x@example.org"}), True, True)), 1.0, 1.0)
    assert backend.calls == [("invalidate", "directory"), ("invalidate", "global_bans"),
                             ("list", "a.example.org"), ("list", "b.example.org"),
                             ("address", "x@example.org")]
    state.receive(message(2, EVERYTHING), 2.0, 2.0)
    assert backend.calls[-1] == ("all",)


def test_real_backend_drops_what_the_feed_names() -> None:
    """Through the adapter, an address change drops that address's facts from the Mailman
    backend: the next lookup fetches them again."""
    clock = FakeClock()
    _records, backend, gate = world(clock)
    request = PostingRequest(NONMEMBER, LIST)
    adapter = FeedInvalidator(lambda: backend)

    async def go() -> None:
        await gate.decide(request)
        adapter.invalidate_addresses([NONMEMBER.upper()])
        assert backend.lookup_now(request) is PENDING
        adapter.invalidate_lists([FakeMailmanRecords.LIST_ID])
        adapter.invalidate_directory()
        adapter.invalidate_global_bans()
        assert sum(len(c) for c in backend.caches()) == 0

    run(go())


def test_coverage_starts_when_the_feed_is_heard_and_ends_with_a_silence() -> None:
    """The feed covers facts fetched since it was (again) heard, only while healthy; a
    pause longer than max_silence restarts coverage."""
    clock = FakeClock()
    state = FeedState(Recording(), started_wall=1e9, max_silence=3.0)  # type: ignore[arg-type]
    coverage = FeedCoverage(lambda: state.health, 3.0, clock)
    before = clock.now
    assert not coverage.covers(before)
    clock.advance(1)
    state.receive(message(1), clock.now, 0.0)
    heard = clock.now
    assert coverage.covers(heard)
    assert not coverage.covers(before)
    clock.advance(2)
    state.receive(message(2), clock.now, 0.0)
    assert coverage.covers(heard)
    clock.advance(4)
    assert not coverage.covers(heard)  # silent now
    state.receive(message(3), clock.now, 0.0)
    assert not coverage.covers(heard)  # the silence may have hidden a change
    assert coverage.covers(clock.now)


def test_feed_state_changes_are_reported_once_each() -> None:
    """waiting → healthy → silent → healthy, one transition each, nothing in between."""
    clock = FakeClock()
    state = FeedState(Recording(), started_wall=1e9, max_silence=3.0)  # type: ignore[arg-type]
    coverage = FeedCoverage(lambda: state.health, 3.0, clock)
    assert coverage.transition() is None
    state.receive(message(1), clock.now, 0.0)
    seen = [coverage.transition(), coverage.transition()]
    clock.advance(5)
    seen += [coverage.transition(), coverage.transition()]
    state.receive(message(2), clock.now, 0.0)
    seen += [coverage.transition(), coverage.transition()]
    states = [s[0] if s else None for s in seen]
    assert states == [HEALTHY, None, SILENT, None, HEALTHY, None]
    assert "again" in seen[4][1]  # type: ignore[index]


def test_a_feed_never_heard_turns_silent_after_max_silence() -> None:
    """No message at all: silent max_silence after the start, with a hint."""
    clock = FakeClock()
    state = FeedState(Recording(), started_wall=1e9)  # type: ignore[arg-type]
    coverage = FeedCoverage(lambda: state.health, 3.0, clock)
    assert coverage.transition() is None
    clock.advance(4)
    change = coverage.transition()
    assert change is not None
    assert change[0] == SILENT
    assert "plugin" in change[1]


def test_feed_metrics_are_read_at_scrape_time() -> None:
    """The feed's health and the refetches appear under their names, as they are now."""
    state = FeedState(Recording(), started_wall=1e9)  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.feed = lambda: state.health
    metrics.feed_healthy = lambda: True
    metrics.refetches = lambda: {"fresh": 3, "stale": 1, "failed": 0}
    state.receive(message(1), 1.0, 0.0)
    state.receive(message(5), 2.0, 0.0)
    state.refuse("unauthorized")
    text = generate_latest(metrics.registry).decode()
    for line in ('listgate_feed_messages_total 2.0', 'listgate_feed_gaps_total 3.0',
                 'listgate_feed_refused_total{reason="unauthorized"} 1.0',
                 'listgate_feed_healthy 1.0',
                 'listgate_reject_refetches_total{result="fresh"} 3.0'):
        assert line in text
    assert "listgate_feed_last_message_age_seconds " in text


def test_no_feed_metrics_without_a_feed() -> None:
    """A daemon without [events] listen exports no listgate_feed_* metric."""
    assert "listgate_feed_" not in generate_latest(Metrics().registry).decode()


# --------------------------------------------------------------------------- config


def test_reject_max_age_and_max_silence_parse() -> None:
    """Both keys take seconds; reject_max_age may be 0 (always refetch), max_silence not."""
    cfg = parse_config({"backend": {"type": "mailman"},
                        "mailman": {"password": "x"},
                        "cache": {"reject_max_age": 0}}, "<t>")
    assert cfg.cache.reject_max_age == 0.0
    assert CacheConfig().reject_max_age == 2.0
    with pytest.raises(ConfigError, match="reject_max_age"):
        parse_config({"backend": {"type": "mailman"}, "mailman": {"password": "x"},
                      "cache": {"reject_max_age": -1}}, "<t>")
