"""The cache metrics by tier: present with a shared tier, absent without one, and the
existing cache metrics unchanged either way."""

from __future__ import annotations

from prometheus_client import generate_latest

from listgate.facts.cache import FactCache
from listgate.metrics import Metrics


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_tier_metrics_with_a_shared_tier() -> None:
    """Each cache's local hits/misses and shared hits/errors, the tier's counters and its
    up/subscribed gauges are exported."""
    cache: FactCache[str, int] = FactCache("memberships", 10)
    cache.hits, cache.misses, cache.tier_hits, cache.tier_errors = 5, 3, 2, 1
    m = Metrics()
    m.caches = lambda: (cache,)
    m.tier_stats = lambda: {"errors": 4, "resyncs": 1, "up": True, "subscribed": False}
    text = scrape(m)
    family = 'listgate_cache_tier_requests_total{cache="memberships",'
    assert family + 'result="hit",tier="local"} 5.0' in text
    assert family + 'result="hit",tier="shared"} 2.0' in text
    assert family + 'result="error",tier="shared"} 1.0' in text
    assert 'listgate_shared_tier_events_total{event="errors"} 4.0' in text
    assert 'listgate_shared_tier_events_total{event="resyncs"} 1.0' in text
    assert "listgate_shared_tier_up 1.0" in text
    assert "listgate_shared_tier_subscribed 0.0" in text
    assert 'listgate_cache_requests_total{cache="memberships",result="hit"} 5.0' in text


def test_no_tier_metrics_without_a_shared_tier() -> None:
    """Without a shared tier nothing new appears; the cache metrics are as before."""
    cache: FactCache[str, int] = FactCache("policy", 10)
    m = Metrics()
    m.caches = lambda: (cache,)
    text = scrape(m)
    assert "listgate_cache_tier_requests" not in text
    assert "listgate_shared_tier" not in text
    assert 'listgate_cache_requests_total{cache="policy",result="miss"} 0.0' in text
