"""Metrics with several worker processes: the supervisor's ``WorkerScrapes`` asks every
worker (``answer_scrapes`` on its end of a socket pair) and sums what they report."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from listgate.metrics import Metrics, WorkerScrapes, answer_scrapes


def _worker(scrapes: WorkerScrapes, index: int, decisions: int, entries: int) -> Metrics:
    """A worker's Metrics with *decisions* rejects counted, answering on a new link."""
    metrics = Metrics()
    for _ in range(decisions):
        metrics.decisions.count("milter", "reject", "list@example.org")
    metrics.backend.observe("memberships", 0.003)

    class Cache:
        name, hits, misses, stale, errors = "memberships", 5, 1, 0, 0

        def __len__(self) -> int:
            return entries

    metrics.caches = lambda: (Cache(),)
    link = scrapes.link(index)
    threading.Thread(target=answer_scrapes, args=(metrics.registry, link), daemon=True).start()
    return metrics


def _sample(text: str, prefix: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


def test_scrape_sums_counters_gauges_and_histograms_over_workers() -> None:
    """Two workers' decisions, cache entries and backend histogram add up in one
    exposition; a worker that is gone is left out of the next scrape."""
    scrapes = WorkerScrapes()
    _worker(scrapes, 0, 3, 10)
    _worker(scrapes, 1, 4, 20)
    registry = CollectorRegistry()
    registry.register(scrapes)
    text = generate_latest(registry).decode()
    labels = '{frontend="milter",list="list@example.org",verdict="reject"}'
    assert _sample(text, f"listgate_decisions_total{labels}") == 7
    assert _sample(text, 'listgate_cache_entries{cache="memberships"}') == 30
    assert _sample(text, 'listgate_cache_requests_total{cache="memberships",result="hit"}') == 10
    assert _sample(text, 'listgate_backend_latency_seconds_count{kind="memberships"}') == 2
    scrapes.link(1).close()  # worker 1 replaced by one that died at once
    text = generate_latest(registry).decode()
    assert _sample(text, f"listgate_decisions_total{labels}") == 3
    scrapes.close()
