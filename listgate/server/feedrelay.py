"""``FeedRelay``: the change feed with several worker processes. The supervisor listens on
``[events] listen`` and relays every message it accepts to each worker, whose
``FeedFollower`` applies it to that worker's cache.

Each worker caches on its own, and the plugin's POST reaches one process, so the
supervisor (which caches nothing) is the one that listens: the same ``EventsListener``
as in a single process (h11, HMAC, bounded bodies, refusals counted and logged), on an
event loop of its own in a thread, since the supervisor's main thread only waits for
its children.

Invariants:
- The listening socket is bound before any worker is forked, so a busy port fails the
  start with a line that names ``[events] listen``; a worker closes its inherited copy
  (and every supervisor end of the relay links) at once.
- A message is answered 204 only after it was handed to every linked worker (written to
  its link; the worker applies it at its next loop turn). A worker whose link does not
  take a message within ``SEND_TIMEOUT`` seconds loses its link: it then drops every
  fact it cached and no longer relies on the feed (its follower logs why), so a missed
  message can never leave a worker rejecting on facts the feed should have dropped.
  ``lost_links()`` tells the supervisor, which replaces that worker (it drains first).
- A worker started later (a replacement) gets a new link and an empty cache; it follows
  the feed from the next message on, like a listener started then.
- The feed's state lines ("healthy", "silent") and its metrics come from here, once
  (``FeedMonitor``, ``listgate.metrics.FeedCollector``); workers log only a lost link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Iterable

from listgate.errors import ListgateError
from listgate.events import FeedHealth
from listgate.facts.feed import FeedCoverage
from listgate.listen import ListenSpec
from listgate.server.events import EventsListener, FeedMonitor, relay_frame
from listgate.server.links import WorkerLinks

__all__ = ["FeedRelay"]

log = logging.getLogger("listgate.events")


class _NothingCached:
    """The supervisor's ``Invalidator``: it caches nothing (the workers do)."""

    def invalidate_lists(self, list_ids: Iterable[str]) -> None:
        """Nothing to drop here."""

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        """Nothing to drop here."""

    def invalidate_directory(self) -> None:
        """Nothing to drop here."""

    def invalidate_global_bans(self) -> None:
        """Nothing to drop here."""

    def invalidate_all(self) -> None:
        """Nothing to drop here."""


class FeedRelay:
    """In the supervisor: the change feed's listener, relaying to every worker. Bind with
    the constructor, ``start()`` the thread, ``link(index)`` before forking each worker,
    ``close_in_worker()`` in the forked worker, ``close()`` at exit."""

    SEND_TIMEOUT = 1.0
    """Seconds a worker's link may take to accept one message."""
    START_TIMEOUT = 10.0

    def __init__(self, spec: ListenSpec, secret: bytes, max_silence: float) -> None:
        family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((spec.host, spec.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ListgateError(f"events: cannot listen on {spec}: {exc}") from None
        self._sock = sock
        self._links = WorkerLinks(self.SEND_TIMEOUT)
        self.listener = EventsListener(spec, secret, _NothingCached(),
                                       max_silence=max_silence, forward=self._forward)
        self.coverage = FeedCoverage(lambda: self.listener.health, max_silence)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._lost: queue.SimpleQueue[int] = queue.SimpleQueue()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._sock.getsockname()[1])

    @property
    def health(self) -> FeedHealth:
        """The feed's health as the relay sees it."""
        return self.listener.health

    def healthy(self) -> bool:
        """Whether the feed is healthy now (the relay's view)."""
        return self.coverage.healthy()

    @property
    def max_silence(self) -> float:
        """``[events] max_silence`` for the relay's state lines and metrics."""
        return self.coverage.max_silence

    @max_silence.setter
    def max_silence(self, seconds: float) -> None:
        self.coverage.max_silence = seconds
        self.listener.state.max_silence = seconds

    def link(self, index: int) -> socket.socket:
        """A new relay link for worker *index* (replacing its old one); the worker's end."""
        return self._links.link(index)

    def start(self) -> None:
        """Serve the feed on a thread of its own; returns once it accepts."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(started))
            except BaseException as exc:  # reported to start(), or logged once serving
                if started.is_set():
                    log.error("change feed: the relay stopped: %r; workers will find the "
                              "feed silent after [events] max_silence", exc)
                failure.append(exc)
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="listgate-feed-relay", daemon=True)
        self._thread.start()
        if not started.wait(self.START_TIMEOUT) or failure:
            raise ListgateError(f"events: the change feed relay did not start: "
                                f"{failure[0] if failure else 'timeout'}")

    async def _serve(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        monitor = FeedMonitor(self.coverage, min(1.0, self.coverage.max_silence / 4))
        await self.listener.start(self._sock)
        monitor.start()
        started.set()
        try:
            await self._stop.wait()
        finally:
            await monitor.aclose()
            await self.listener.aclose()

    def _forward(self, body: bytes) -> None:
        """Hand an accepted message to every worker (in the relay's thread)."""
        frame = relay_frame(body)
        with self._links.using() as links:
            for index, sock in links:
                try:
                    sock.sendall(frame)
                except OSError as exc:
                    log.error("change feed: worker %d did not take a message (%s): its "
                              "relay link is closed", index, exc)
                    self._links.drop(index)
                    self._lost.put(index)

    def lost_links(self) -> list[int]:
        """The workers whose link was closed since the last call (any thread)."""
        lost = []
        with contextlib.suppress(queue.Empty):
            while True:
                lost.append(self._lost.get_nowait())
        return lost

    def close_in_worker(self) -> None:
        """In a newly forked worker: close the listening socket and the supervisor's ends
        (the relay's thread does not exist here)."""
        self._sock.close()
        self._links.close_after_fork()

    def close(self) -> None:
        """Stop the thread, then close the socket and every link."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
            thread.join(5.0)
        self._thread = None
        self._sock.close()
        self._links.close()
