"""Fixtures of the shared-tier tests: a private redis-server per test."""

from tests.redis_harness import redis_server

__all__ = ["redis_server"]
