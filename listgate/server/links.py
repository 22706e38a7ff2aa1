"""``WorkerLinks``: the supervisor's private socket pairs to its worker processes, one per
worker slot (the metrics scrapes and the change-feed relay each keep their own set).

Invariants:
- ``link(index)`` is called in the supervisor before it forks worker *index*: it returns
  the worker's end and keeps the supervisor's, closing the end an earlier worker in that
  slot had. The supervisor closes the worker's end once forked; the new worker calls
  ``close_after_fork()`` (every supervisor end, so that no worker holds another's link;
  without the lock, which a supervisor thread may have held when the process forked).
- Thread-safe: a supervisor thread (the metrics HTTP server, the feed relay) uses the
  links while the main thread forks and replaces workers; ``using()`` holds the lock.
- A link that failed is ``drop``-ped (closed): its worker then reads EOF.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["WorkerLinks"]


class WorkerLinks:
    """Socket pairs to the workers, by worker index."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        """Seconds a send or receive on the supervisor's end may block."""
        self._links: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def link(self, index: int) -> socket.socket:
        """A new link for worker *index* (replacing its old one); the worker's end."""
        ours, theirs = socket.socketpair()
        ours.settimeout(self.timeout)
        with self._lock:
            old = self._links.pop(index, None)
            if old is not None:
                old.close()
            self._links[index] = ours
        return theirs

    @contextmanager
    def using(self) -> Iterator[list[tuple[int, socket.socket]]]:
        """The links by index, under the lock (``drop`` may be called inside)."""
        with self._lock:
            yield sorted(self._links.items())

    def drop(self, index: int) -> None:
        """Close worker *index*'s link (call inside ``using``)."""
        sock = self._links.pop(index, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close every link (in the supervisor, at exit)."""
        with self._lock:
            for sock in self._links.values():
                sock.close()
            self._links.clear()

    def close_after_fork(self) -> None:
        """In a newly forked worker: close every supervisor end. Only the forking thread
        exists here, but another supervisor thread may have held the lock at the fork, so
        it is replaced, not taken."""
        self._lock = threading.Lock()
        for sock in self._links.values():
            sock.close()
        self._links.clear()
