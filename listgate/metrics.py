"""Prometheus metrics, read at scrape time.

Invariants:
- Nothing here runs on the per-RCPT path except ``BackendTimer.observe`` (one histogram
  observation per REST fetch, which is off the hot path by definition); decisions are
  counted by the connection loop's ``DecisionStats`` (one dict increment), read here.
  Every other figure is read from the live objects (caches, services) when Prometheus
  scrapes, so an idle daemon costs nothing.
- With several worker processes the supervisor serves /metrics: at each scrape it asks
  every worker for its exposition over a private socket pair (``answer_scrapes`` in the
  worker, ``WorkerScrapes`` in the supervisor) and sums the samples of the same name and
  labels; a worker that does not answer within ``SCRAPE_TIMEOUT`` is left out of that
  scrape (logged at DEBUG). Nothing crosses processes on the per-RCPT path. The change
  feed's metrics come from the supervisor's relay then (``FeedCollector``), not from
  the workers.
- Label values come from configuration or from a fixed set (verdicts, cache names,
  services), never from the network: a sender cannot create label cardinality. The
  ``list`` label is a list posting address the backend knows (or "-").
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from listgate.server.connection import DecisionStats
from listgate.server.links import WorkerLinks

__all__ = ["BackendTimer", "DecisionStats", "FeedCollector", "Metrics", "WorkerScrapes",
           "answer_scrapes"]

SCRAPE_TIMEOUT = 5.0
"""Seconds the supervisor waits for one worker's exposition at a scrape."""
_LEN = struct.Struct(">I")

log = logging.getLogger("listgate.metrics")


class BackendTimer:
    """The backend latency histogram (seconds per REST fetch, by kind of fact)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "listgate_backend_latency_seconds",
            "Time of one backend fetch (a Mailman REST call), by kind of fact.",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

    def observe(self, kind: str, seconds: float) -> None:
        """Record one fetch."""
        self.histogram.labels(kind).observe(seconds)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Any]:
        m = self._m
        decisions = CounterMetricFamily(
            "listgate_decisions", "Decisions taken, by front end, verdict and list.",
            labels=["frontend", "verdict", "list"],
        )
        for (frontend, verdict, lst), n in sorted(m.decisions.counts.items()):
            decisions.add_metric([frontend, verdict, lst], n)
        yield decisions
        requests = CounterMetricFamily(
            "listgate_cache_requests",
            "Cache lookups by cache and result (hit, miss, stale = served past its TTL "
            "because the backend failed).",
            labels=["cache", "result"],
        )
        errors = CounterMetricFamily(
            "listgate_backend_errors", "Backend fetches that failed, by kind of fact.",
            labels=["kind"],
        )
        entries = GaugeMetricFamily(
            "listgate_cache_entries", "Entries held, by cache.", labels=["cache"]
        )
        for cache in m.caches():
            requests.add_metric([cache.name, "hit"], cache.hits)
            requests.add_metric([cache.name, "miss"], cache.misses)
            requests.add_metric([cache.name, "stale"], cache.stale)
            errors.add_metric([cache.name], cache.errors)
            entries.add_metric([cache.name], len(cache))
        yield requests
        yield errors
        yield entries
        yield from _tier_metrics(m)
        conns = GaugeMetricFamily(
            "listgate_open_connections", "Open connections, by service.", labels=["service"]
        )
        refused = CounterMetricFamily(
            "listgate_refused_connections",
            "Connections refused at max_connections, by service.",
            labels=["service"],
        )
        for service in m.services():
            conns.add_metric([service.name], len(service.active))
            refused.add_metric([service.name], service.refused)
        yield conns
        yield refused
        refetches = CounterMetricFamily(
            "listgate_reject_refetches",
            "Facts fetched again before a reject because they were older than [cache] "
            "reject_max_age, by result (fresh; stale = Mailman failed and older facts "
            "stood in; failed = nothing could).",
            labels=["result"],
        )
        for result, n in sorted(m.refetches().items()):
            refetches.add_metric([result], n)
        yield refetches
        health = m.feed()
        if health is not None:
            yield from _feed_metrics(health, m.feed_healthy())


class FeedCollector(Collector):
    """The change feed's metrics from one ``FeedHealth`` source: in the supervisor, its
    relay's listener (the workers that follow the relay export none, so nothing is
    counted once per worker)."""

    def __init__(self, health: Callable[[], Any], healthy: Callable[[], bool]) -> None:
        self._health = health
        self._healthy = healthy

    def collect(self) -> Iterator[Metric]:
        yield from _feed_metrics(self._health(), self._healthy())


def _feed_metrics(health: Any, healthy: bool) -> Iterator[Any]:
    """The change feed's health (``listgate.events.FeedHealth``) as metrics."""
    messages = CounterMetricFamily(
        "listgate_feed_messages", "Change-feed messages accepted (heartbeats included).")
    messages.add_metric([], health.messages)
    yield messages
    changes = CounterMetricFamily(
        "listgate_feed_changes", "Change-feed messages that named a change.")
    changes.add_metric([], health.changes)
    yield changes
    gaps = CounterMetricFamily(
        "listgate_feed_gaps",
        "Change-feed messages known lost (each gap dropped every cached fact).")
    gaps.add_metric([], health.gaps)
    yield gaps
    refused = CounterMetricFamily(
        "listgate_feed_refused", "Change-feed requests refused, by reason.", labels=["reason"])
    for reason, n in sorted(health.refused.items()):
        refused.add_metric([reason], n)
    yield refused
    age = GaugeMetricFamily(
        "listgate_feed_last_message_age_seconds",
        "Seconds since the last change-feed message (absent until the first).")
    if health.last_message is not None:
        age.add_metric([], max(0.0, time.monotonic() - health.last_message))
    yield age
    up = GaugeMetricFamily(
        "listgate_feed_healthy",
        "1 when a change-feed message arrived within [events] max_silence, else 0.")
    up.add_metric([], 1.0 if healthy else 0.0)
    yield up


_TIER_GAUGES = ("up", "subscribed")
"""``TierStats`` fields exported as gauges (0/1); every other field is a counter."""


def _tier_metrics(m: Metrics) -> Iterator[Any]:
    """Cache requests by tier (local: the in-process cache; shared: Redis), and the shared
    tier's own counters, when there is one."""
    stats = m.tier_stats()
    if not stats:
        return
    by_tier = CounterMetricFamily(
        "listgate_cache_tier_requests",
        "Cache lookups by cache, tier (local = in-process, shared = Redis) and result "
        "(local: hit or miss; shared: hit = a local miss answered without Mailman, "
        "error = the shared tier failed and was skipped).",
        labels=["cache", "tier", "result"],
    )
    for cache in m.caches():
        by_tier.add_metric([cache.name, "local", "hit"], cache.hits)
        by_tier.add_metric([cache.name, "local", "miss"], cache.misses)
        by_tier.add_metric([cache.name, "shared", "hit"], cache.tier_hits)
        by_tier.add_metric([cache.name, "shared", "error"], cache.tier_errors)
    yield by_tier
    events = CounterMetricFamily(
        "listgate_shared_tier_events",
        "Shared tier (Redis) events: errors, skipped (breaker open), garbage, locks_taken, "
        "lock_waits, lock_waits_served, invalidations_sent, invalidations_received, "
        "resyncs (local tier dropped after the subscription came back).",
        labels=["event"],
    )
    for name, value in sorted(stats.items()):
        if name not in _TIER_GAUGES:
            events.add_metric([name], float(value))
    yield events
    for name in _TIER_GAUGES:
        gauge = GaugeMetricFamily(
            f"listgate_shared_tier_{name}",
            "1 when the shared tier (Redis) is " + (
                "answering" if name == "up" else "subscribed to invalidations") + ", else 0.",
        )
        gauge.add_metric([], float(stats.get(name, 0)))
        yield gauge


class Metrics:
    """Everything listgate exports; wire the live objects in with the setters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = DecisionStats()
        self.backend = BackendTimer(self.registry)
        self.caches: Callable[[], Iterable[Any]] = tuple
        """Returns the FactCache objects to report (they have name/hits/misses/...)."""
        self.services: Callable[[], Iterable[Any]] = tuple
        """Returns the StreamService objects to report (name/active/refused)."""
        self.refetches: Callable[[], Mapping[str, int]] = dict
        """Returns the backend's refetches before a reject, by result."""
        self.feed: Callable[[], Any] = lambda: None
        """Returns the change feed's ``FeedHealth``, or None when there is no feed."""
        self.feed_healthy: Callable[[], bool] = lambda: False
        """Whether the change feed is healthy now."""
        self.tier_stats: Callable[[], Mapping[str, float]] = dict
        """Returns the shared cache tier's counters (empty: no shared tier)."""
        self.registry.register(_LiveCollector(self))
        self._server: Any = None

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the /metrics HTTP endpoint (a daemon thread); the bound address."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def answer(self, link: socket.socket) -> None:
        """Answer the supervisor's scrapes on *link* (a daemon thread), in a worker."""
        threading.Thread(target=answer_scrapes, args=(self.registry, link),
                         name="listgate-metrics", daemon=True).start()

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None



def answer_scrapes(registry: CollectorRegistry, link: socket.socket) -> None:
    """In a worker: for each byte the supervisor sends on *link*, send back the length
    (4 bytes, big-endian) and the text exposition of *registry*; return at EOF."""
    with link:
        while True:
            try:
                if not link.recv(1):
                    return
                text = generate_latest(registry)
                link.sendall(_LEN.pack(len(text)) + text)
            except OSError:
                return


def _recv_exactly(link: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = link.recv(size - len(chunks))
        if not chunk:
            raise OSError("the worker closed its metrics link")
        chunks += chunk
    return bytes(chunks)


class WorkerScrapes(Collector):
    """In the supervisor: the workers' metrics, summed. ``link(index)`` makes the socket
    pair for a (new) worker and returns the worker's end; each scrape asks every linked
    worker in turn."""

    def __init__(self) -> None:
        self._links = WorkerLinks(SCRAPE_TIMEOUT)

    def link(self, index: int) -> socket.socket:
        """A new link for worker *index* (replacing its old one); the worker's end."""
        return self._links.link(index)

    def close(self) -> None:
        """Close every link (in the supervisor, at exit)."""
        self._links.close()

    def close_after_fork(self) -> None:
        """In a newly forked worker: close the supervisor's ends (see ``WorkerLinks``)."""
        self._links.close_after_fork()

    def _scrape(self) -> list[str]:
        texts = []
        with self._links.using() as links:
            for index, sock in links:
                try:
                    sock.sendall(b"?")
                    (size,) = _LEN.unpack(_recv_exactly(sock, _LEN.size))
                    texts.append(_recv_exactly(sock, size).decode("utf-8"))
                except OSError as exc:
                    log.debug("metrics: worker %d did not answer the scrape: %s", index, exc)
                    self._links.drop(index)
        return texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for text in self._scrape():
            for family in text_string_to_metric_families(text):
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation,
                                                   family.type, family.unit)
                    values[family.name] = {}
                merged = values[family.name]
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in merged:
                        merged[key] = sample.value
                    elif sample.name.endswith("_created"):  # a time: the earliest
                        merged[key] = min(merged[key], sample.value)
                    else:
                        merged[key] += sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
