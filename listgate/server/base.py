"""Listening sockets and the connections they accept, with limits and a drain.

Invariants:
- Every accepted connection is registered here and unregistered exactly once when it is
  lost; ``active`` is the truth about what is open.
- Above ``max_connections`` a new connection is refused cleanly: closed at once, before
  a byte is read, with a rate-limited WARNING. The ones already open are unaffected.
  With several worker processes the cap counts the connections of all of them
  (``SharedCount``: one slot per worker in shared memory, written by that worker only,
  a lock around check-and-add).
- ``stop()`` first stops listening, then asks every connection to drain (finish the
  command in flight, then close), waits up to ``shutdown_timeout``, and aborts the rest.
  Unix socket files it created are removed.
- Socket errors at start-up become ``ListgateError`` naming the listen spec.
- ``ensure_fd_limit`` raises the soft ``RLIMIT_NOFILE`` so that every connection the
  ``max_connections`` settings allow can be accepted (a worker may hold all of them); it
  never lowers it, and says so when the hard limit is too low, rather than letting
  ``accept`` fail with EMFILE under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import multiprocessing
import os
import resource
import socket
import stat
from collections.abc import Callable, Sequence
from typing import Protocol

from listgate.errors import ListgateError
from listgate.listen import ListenSpec

__all__ = [
    "SHARED_COUNTS",
    "ManagedConnection",
    "SharedCount",
    "StreamService",
    "bind_unix_listener",
    "ensure_fd_limit",
    "remove_stale_socket",
]

log = logging.getLogger("listgate.server")


class SharedCount:
    """The open connections of one service in every worker process: made by the
    supervisor before it forks, one slot per worker; ``index`` is this process's slot."""

    LOCK_WAIT = 1.0
    """Seconds to wait for the lock (a worker killed while holding it): then count
    without it."""

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, 8 * workers)  # anonymous and shared: kept by fork
        self.slots = memoryview(self._memory).cast("q")
        self._lock = multiprocessing.get_context("fork").Lock()
        self.index = 0

    def try_add(self, limit: int) -> bool:
        """One more connection here, unless every worker together holds *limit*."""
        locked = self._lock.acquire(timeout=self.LOCK_WAIT)
        try:
            if sum(self.slots) >= limit:
                return False
            self.slots[self.index] += 1
            return True
        finally:
            if locked:
                self._lock.release()

    def remove(self) -> None:
        """One connection fewer here."""
        self.slots[self.index] -= 1


SHARED_COUNTS: dict[str, SharedCount] = {}
"""By service name, in a worker process (set by the supervisor before it forks)."""


FD_MARGIN = 256
"""File descriptors kept for what is not a client connection: listeners, the REST and
Redis connections, log files, the supervisor's links."""


def ensure_fd_limit(connections: int) -> str | None:
    """Raise this process's soft limit on open files to *connections* + ``FD_MARGIN``
    (children inherit it), up to the hard limit; the problem, if that is not enough."""
    need = connections + FD_MARGIN
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (OSError, ValueError) as exc:
        return f"cannot raise the open files limit to {need}: {exc}"
    if soft != resource.RLIM_INFINITY and soft < need:
        return (f"the open files limit is {soft} (hard limit), below the {need} that "
                f"max_connections ({connections} in all) needs: connections past it fail "
                "at accept; raise LimitNOFILE (systemd) or ulimit -n, or lower "
                "max_connections")
    return None


def remove_stale_socket(name: str, spec: ListenSpec) -> None:
    """Remove a unix socket file nobody answers on; refuse one in use or not a socket."""
    try:
        st = os.lstat(spec.path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListgateError(f"{name}: {spec.path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(spec.path)
    except OSError:
        os.unlink(spec.path)  # nobody answers: a stale socket from an earlier run
    else:
        raise ListgateError(f"{name}: {spec.path} is in use by another process")
    finally:
        probe.close()


def bind_unix_listener(name: str, spec: ListenSpec, socket_mode: int) -> socket.socket:
    """A listening unix socket for *spec* (for worker processes to inherit)."""
    remove_stale_socket(name, spec)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(spec.path)
        os.chmod(spec.path, socket_mode)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListgateError(f"{name}: cannot listen on {spec}: {exc}") from None
    return sock


class ManagedConnection(Protocol):
    """What the service needs from each connection's protocol object."""

    conn_id: str

    def drain(self) -> None:
        """Close as soon as no command is in flight."""

    def abort(self) -> None:
        """Close now."""


class StreamService:
    """A set of listeners sharing one connection limit and one lifecycle."""

    def __init__(
        self,
        name: str,
        specs: Sequence[ListenSpec],
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        socket_mode: int = 0o660,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.specs = tuple(specs)
        self.max_connections = max_connections
        self.socket_mode = socket_mode
        self.shutdown_timeout = shutdown_timeout
        self.active: set[ManagedConnection] = set()
        self.shared = SHARED_COUNTS.get(name)
        """With several workers: the cap counts every worker's connections."""
        self.refused = 0
        self.accepted = 0
        self._factory = protocol_factory
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._empty = asyncio.Event()
        self._empty.set()
        self._last_refusal_log = 0.0
        self._refused_since_log = 0
        self.addresses: list[str] = []
        """What is actually bound, as listen specs (port 0 resolved)."""
        self.inherited: dict[ListenSpec, socket.socket] = {}
        """Listening sockets made by a supervising process, by spec: used instead of
        binding (the supervisor owns them, and removes unix socket files)."""
        self.reuse_port = False
        """Bind inet listeners with SO_REUSEPORT (worker processes share the port)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop serving the listeners, once started (connections take it from here:
        ``asyncio.get_running_loop`` costs a getpid(2) per call on CPython 3.11)."""

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listen spec; on any failure close what was bound and raise."""
        loop = self.loop = asyncio.get_running_loop()
        try:
            for spec in self.specs:
                server = await self._listen(loop, spec)
                self._servers.append(server)
        except BaseException:
            await self._close_listeners()
            raise
        log.info("%s listening on %s", self.name, ", ".join(self.addresses))

    async def _listen(self, loop: asyncio.AbstractEventLoop, spec: ListenSpec) -> asyncio.Server:
        factory = self._factory
        try:
            sock = self.inherited.get(spec)
            if sock is not None:
                return await self._listen_inherited(loop, spec, sock, factory)
            if spec.family == "unix":
                self._remove_stale_socket(spec)
                server = await loop.create_unix_server(factory, spec.path, backlog=1024)
                self._unix_paths.append(spec.path)
                os.chmod(spec.path, self.socket_mode)
                self.addresses.append(str(spec))
                return server
            family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
            server = await loop.create_server(
                factory, spec.host, spec.port, family=family, reuse_address=True,
                reuse_port=self.reuse_port or None, backlog=1024,
            )
        except OSError as exc:
            raise ListgateError(f"{self.name}: cannot listen on {spec}: {exc}") from None
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            bound = ListenSpec(spec.family, host, port, "")
            self.addresses.append(str(bound))
        return server

    async def _listen_inherited(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: ListenSpec,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> asyncio.Server:
        if spec.family == "unix":
            server = await loop.create_unix_server(factory, sock=sock, backlog=1024)
            self.addresses.append(str(spec))
            return server
        server = await loop.create_server(factory, sock=sock, backlog=1024)
        host, port = sock.getsockname()[:2]
        self.addresses.append(str(ListenSpec(spec.family, host, port, "")))
        return server

    def _remove_stale_socket(self, spec: ListenSpec) -> None:
        remove_stale_socket(self.name, spec)

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()

    async def stop(self, drain: float | None = None) -> None:
        """Stop listening, drain the connections, abort stragglers after *drain* seconds
        (default ``shutdown_timeout``; 0: at once)."""
        timeout = self.shutdown_timeout if drain is None else drain
        await self._close_listeners()
        if self.active:
            log.info("%s draining %d connection(s)", self.name, len(self.active))
        for conn in list(self.active):
            conn.drain()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            log.warning(
                "%s: %d connection(s) still busy after %.1f s; closing them",
                self.name, len(self.active), timeout,
            )
            for conn in list(self.active):
                conn.abort()
        # Give transports one loop turn to run their connection_lost callbacks.
        await asyncio.sleep(0)

    # --------------------------------------------------------------- registry

    def admit(self, conn: ManagedConnection) -> bool:
        """Register a new connection; False means refuse it (limit reached)."""
        shared = self.shared
        if (len(self.active) >= self.max_connections if shared is None
                else not shared.try_add(self.max_connections)):
            self.refused += 1
            self._refused_since_log += 1
            now = asyncio.get_running_loop().time()
            if now - self._last_refusal_log >= 10.0:
                log.warning(
                    "%s: refused %d connection(s): max_connections=%d reached",
                    self.name, self._refused_since_log, self.max_connections,
                )
                self._last_refusal_log = now
                self._refused_since_log = 0
            return False
        self.active.add(conn)
        self.accepted += 1
        self._empty.clear()
        return True

    def release(self, conn: ManagedConnection) -> None:
        """Unregister a connection that was lost."""
        if conn in self.active:
            self.active.discard(conn)
            if self.shared is not None:
                self.shared.remove()
        if not self.active:
            self._empty.set()
