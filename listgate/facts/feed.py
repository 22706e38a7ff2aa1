"""The change feed meets the fact cache: the feed's ``Invalidator`` calls become a
backend's invalidations, and the feed's health says which cached facts it vouches for.

- ``FeedInvalidator`` adapts ``listgate.events.Invalidator`` (what the Mailman plugin's
  messages name) to the invalidation capabilities of ``listgate.facts.contract.Backend``
  (kinds from ``listgate.facts.keyspace``): lists → ``invalidate_list`` each, addresses →
  ``invalidate_address`` each, the directory → ``invalidate("directory")``, the site's
  bans → ``invalidate("global_bans")``, everything → ``invalidate_all()``. The backend is
  read through a callable, so a reload that builds a new backend is followed at once.
- ``FeedCoverage`` answers ``covers(fetched_at)`` for the backend's reject rule: the feed
  has been healthy (a message within ``max_silence``) since the fact was fetched; and,
  polled, ``transition()`` names each change of the feed's state once (waiting →
  healthy → silent → healthy...), for the log.

Invariants:
- Pure glue: no I/O, no asyncio; the clock is injected (``time.monotonic`` by default,
  the clock of the events listener and of the backend's caches).
- Every ``Invalidator`` call reaches the backend as exactly the calls above; an error of
  the backend propagates (the listener answers 500 and the plugin retries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from listgate.events import FeedHealth
from listgate.facts.contract import Backend

__all__ = ["HEALTHY", "SILENT", "WAITING", "FeedCoverage", "FeedInvalidator"]

WAITING = "waiting"
"""No message yet since listgate started."""
HEALTHY = "healthy"
"""A message within ``max_silence``."""
SILENT = "silent"
"""No message for longer than ``max_silence``: rejects rest on ``reject_max_age`` again."""


class FeedInvalidator:
    """An ``listgate.events.Invalidator`` that drops facts from the current backend."""

    def __init__(self, backend: Callable[[], Backend]) -> None:
        self._backend = backend

    def invalidate_lists(self, list_ids: Iterable[str]) -> None:
        """Each list's policy (its settings and bans)."""
        backend = self._backend()
        for list_id in list_ids:
            backend.invalidate_list(list_id)

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        """Each address's memberships and linked addresses."""
        backend = self._backend()
        for address in addresses:
            backend.invalidate_address(address)

    def invalidate_directory(self) -> None:
        """The directory of lists and alias domains."""
        self._backend().invalidate("directory")

    def invalidate_global_bans(self) -> None:
        """The site-wide bans."""
        self._backend().invalidate("global_bans")

    def invalidate_all(self) -> None:
        """Every cached fact."""
        self._backend().invalidate_all()


class FeedCoverage:
    """``listgate.facts.contract.FeedCoverage`` from the feed's health."""

    def __init__(
        self,
        health: Callable[[], FeedHealth],
        max_silence: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._health = health
        self.max_silence = max_silence
        self._clock = clock
        self._started = clock()
        self.state = WAITING
        """The state last reported by ``transition``."""

    def healthy(self) -> bool:
        """Whether a message arrived within ``max_silence`` seconds."""
        return self._health().healthy(self._clock(), self.max_silence)

    def covers(self, fetched_at: float) -> bool:
        """Whether the feed has been healthy since *fetched_at* and is now."""
        return self._health().covers(fetched_at, self._clock(), self.max_silence)

    def transition(self) -> tuple[str, str] | None:
        """(new state, a log line) when the state changed since the last call, else None.
        A feed never heard from turns silent ``max_silence`` after the start."""
        health = self._health()
        now = self._clock()
        if health.healthy(now, self.max_silence):
            state = HEALTHY
        elif health.last_message is None and now - self._started <= self.max_silence:
            state = WAITING
        else:
            state = SILENT
        if state == self.state:
            return None
        previous, self.state = self.state, state
        if state == HEALTHY:
            line = ("change feed healthy: first message from Mailman; rejects may rest on "
                    "facts it covers" if previous == WAITING else
                    "change feed healthy again; facts fetched from now on are covered by it")
        elif health.last_message is None:
            line = (f"change feed silent: no message within {self.max_silence:g} s of start "
                    "(is listgate's plugin enabled in mailman.cfg, with this notify URL and "
                    "secret?); rejects rest on facts at most [cache] reject_max_age old")
        else:
            line = (f"change feed silent for {now - health.last_message:.0f} s (more than "
                    f"{self.max_silence:g} s); rejects rest on facts at most [cache] "
                    "reject_max_age old until it is back")
        return state, line
