"""listgate's events listener: a small HTTP/1.1 endpoint on ``[events] listen`` that takes
the Mailman plugin's change feed (``listgate.events`` holds the format) and drops the cache
entries each message names, through an ``Invalidator``.

One request per connection (the plugin sends ``Connection: close``); HTTP parsing is h11's.
Answers: 204 accepted; 401 wrong or missing signature; 400 not a feed message; 405 not a
POST; 413 body over ``max_body``; 500 the ``Invalidator`` failed (the plugin retries). A
request that does not arrive whole within ``request_timeout`` seconds (slowloris) is
closed without an answer.

Invariants:
- Nothing reaches the ``Invalidator`` unless the body's HMAC checks out under the secret and
  the body decodes as a feed message: a refused request changes no cache entry.
- Memory per connection is bounded: the body is read in chunks and refused (413) as soon
  as it, or its announced Content-Length, passes ``max_body``, so no buffer is ever sized
  from a claimed length; headers are bounded by h11's ``max_incomplete_event_size``.
  At most ``max_connections`` connections are served at once; more are closed at accept.
- Every refusal is counted in ``FeedHealth.refused`` and logged (``listgate.events``), at
  most one line per reason per ``log_interval`` seconds.
- ``FeedMonitor`` logs each change of the feed's state (healthy, silent) once, within
  ``interval`` seconds of it.
- With several worker processes the supervisor runs the listener and hands each accepted
  message's body to ``forward`` (``listgate.server.feedrelay``), which relays it to every
  worker; a worker's ``FeedFollower`` applies it to that worker's cache exactly as a
  listener would (``FeedState``: same gap detection, same health). A relayed frame is a
  4-byte big-endian length and the body; a length over ``max_body``, a body that does not
  decode, or the link's end makes the follower ``lose`` the feed: its cache drops every
  fact and the feed vouches for none again (logged at ERROR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import Callable

import h11

from listgate.events import (
    MAX_BODY,
    SIGNATURE_HEADER,
    EventError,
    FeedHealth,
    FeedState,
    Invalidator,
    RateLimit,
    decode,
    verify,
)
from listgate.facts.feed import HEALTHY, FeedCoverage
from listgate.listen import ListenSpec

__all__ = ["RELAY_HEADER", "EventsListener", "FeedFollower", "FeedMonitor", "relay_frame"]

log = logging.getLogger("listgate.events")

_REASONS = {204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            405: "Method Not Allowed", 413: "Content Too Large", 500: "Internal Server Error"}
_REFUSAL = {400: "malformed", 401: "unauthorized", 405: "method", 413: "too_large"}
_SIGNATURE = SIGNATURE_HEADER.lower().encode("ascii")
_MAX_HEADERS = 16_384

RELAY_HEADER = struct.Struct("!I")
"""A relayed message's frame: this length, then the body as the plugin signed it."""


def relay_frame(body: bytes) -> bytes:
    """*body* framed for a worker's relay link."""
    return RELAY_HEADER.pack(len(body)) + body


class _Refused(Exception):
    """The request gets this status and no further reading (the text is safe to log)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class EventsListener:
    """The change-feed endpoint; ``start()``, then ``aclose()``."""

    def __init__(
        self,
        spec: ListenSpec,
        secret: bytes,
        invalidator: Invalidator,
        *,
        max_body: int = MAX_BODY,
        request_timeout: float = 5.0,
        max_connections: int = 32,
        log_interval: float = 10.0,
        max_silence: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        forward: Callable[[bytes], None] | None = None,
    ) -> None:
        if spec.family == "unix":
            raise ValueError("the events listener takes inet: or inet6: specs only")
        self.spec = spec
        self._secret = secret
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._clock = clock
        self._wall = wall_clock
        self._limit = RateLimit(log_interval)
        self.state = FeedState(invalidator, started_wall=wall_clock(), max_silence=max_silence)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        """One per open connection."""
        self._closing = False
        self._forward = forward
        """Called with each accepted message's body once it is applied (the relay)."""

    @property
    def health(self) -> FeedHealth:
        """The feed's health now (a frozen snapshot for metrics)."""
        return self.state.health

    def healthy(self, now: float, max_silence: float) -> bool:
        """True when a message arrived within *max_silence* seconds (monotonic *now*)."""
        return self.state.healthy(now, max_silence)

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the events listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind (or take the bound, listening *sock*) and start accepting."""
        if sock is None:
            self._server = await asyncio.start_server(self._serve, self.spec.host,
                                                      self.spec.port)
        else:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        log.info("change feed listening on %s", self.spec)

    async def aclose(self) -> None:
        """Stop accepting and close the open connections."""
        server, self._server = self._server, None
        if server is not None:
            self._closing = True
            server.close()
            for _ in range(3):  # a connection accepted just before close starts its task late
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.sleep(0.01)
            await server.wait_closed()

    def _log(self, reason: str, text: str, *args: object) -> None:
        held = self._limit.check(reason, self._clock())
        if held is None:
            return
        more = f" ({held} more refused for the same reason since the last line)" if held else ""
        log.warning("change feed: " + text + more, *args)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._closing:
            writer.close()
            return
        if len(self._tasks) >= self._max_connections:
            self.state.refuse("overloaded")
            self._log("overloaded", "more than %d connections at once; closed one from %s",
                      self._max_connections, peer)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            status, why = await self._answer(reader, peer)
            if status is not None:
                text = b"" if status == 204 else why.encode("ascii", "replace") + b"\n"
                head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                        f"Content-Length: {len(text)}\r\nContent-Type: text/plain\r\n"
                        "Connection: close\r\n\r\n").encode("ascii")
                writer.write(head + text)
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(self._request_timeout):
                        await writer.drain()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, peer: object) -> tuple[int | None, str]:
        """The status to answer (None: close without one) and a short reason."""
        try:
            async with asyncio.timeout(self._request_timeout):
                signature, body = await self._read(reader)
        except TimeoutError:
            self.state.refuse("timeout")
            self._log("timeout", "no complete request within %g s from %s; closed",
                      self._request_timeout, peer)
            return None, "timeout"
        except _Refused as refused:
            reason = _REFUSAL[refused.status]
            self.state.refuse(reason)
            self._log(reason, "refused a request from %s with %d: %s", peer, refused.status,
                      refused)
            return refused.status, str(refused)
        except (ConnectionError, EOFError) as exc:
            self.state.refuse("incomplete")
            log.debug("change feed: %s closed before a complete request (%s)", peer, exc)
            return None, "incomplete"
        if not verify(self._secret, body, signature):
            self.state.refuse("unauthorized")
            self._log("unauthorized", "refused a request from %s with 401: %s", peer,
                      "no signature" if signature is None else "wrong signature")
            return 401, "bad signature"
        try:
            message = decode(body)
        except EventError as exc:
            self.state.refuse("malformed")
            self._log("malformed", "refused a signed request from %s with 400: %s", peer, exc)
            return 400, str(exc)
        try:
            self.state.receive(message, self._clock(), self._wall())
            if self._forward is not None:
                self._forward(body)
        except Exception:  # the cache failed to drop something: the plugin retries on 500
            self.state.refuse("error")
            self._log("error", "could not apply a message from %s; answered 500", peer)
            log.exception("change feed: applying %s seq %d failed", message.stream,
                          message.seq)
            return 500, "could not apply the message"
        if not message.heartbeat:
            log.debug("change feed: %s seq %d: %s", message.stream, message.seq,
                      message.changes)
        return 204, ""

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str | None, bytes]:
        """(signature header or None, body) of one request; ``_Refused`` or ``EOFError``."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADERS)
        signature: str | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.their_state is h11.ERROR and reader.at_eof():
                    raise EOFError(str(exc)) from None
                raise _Refused(400, f"not HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(8192))
            elif isinstance(event, h11.Request):
                if event.method != b"POST":
                    raise _Refused(405, "only POST")
                for name, value in event.headers:
                    if name == b"content-length" and int(value) > self._max_body:
                        raise _Refused(413, f"body over {self._max_body} bytes")
                    if name == _SIGNATURE:
                        signature = value.decode("latin-1")
            elif isinstance(event, h11.Data):
                if len(body) + len(event.data) > self._max_body:
                    raise _Refused(413, f"body over {self._max_body} bytes")
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return signature, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("closed")


class FeedFollower:
    """In a worker process: the change feed as the supervisor relays it over *link*,
    applied to this process's cache through *invalidator*; ``start()``, then
    ``aclose()``."""

    def __init__(
        self,
        link: socket.socket,
        invalidator: Invalidator,
        *,
        max_body: int = MAX_BODY,
        max_silence: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._max_body = max_body
        self._clock = clock
        self._wall = wall_clock
        self.state = FeedState(invalidator, started_wall=wall_clock(), max_silence=max_silence)
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def health(self) -> FeedHealth:
        """The feed's health in this process (a frozen snapshot)."""
        return self.state.health

    async def start(self) -> None:
        """Start reading the link in the running loop."""
        reader, self._writer = await asyncio.open_connection(sock=self._link)
        self._task = asyncio.get_running_loop().create_task(self._follow(reader))

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        try:
            why = await self._read_all(reader)
        except Exception as exc:  # whatever broke, the cache must not trust the feed now
            why = f"applying a relayed message failed: {exc!r}"
        log.error("change feed: %s; this worker drops every cached fact and no longer "
                  "relies on the feed (when the supervisor closed the link it replaces this "
                  "worker; otherwise restart listgate to follow the feed again)", why)
        self.state.lose()

    async def _read_all(self, reader: asyncio.StreamReader) -> str:
        """Apply relayed messages until the link fails; why it did."""
        while True:
            try:
                head = await reader.readexactly(RELAY_HEADER.size)
                (size,) = RELAY_HEADER.unpack(head)
                if size > self._max_body:
                    return f"the relay link sent a frame of {size} bytes (at most {self._max_body})"
                body = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, OSError) as exc:
                return f"the supervisor's relay link closed ({exc})"
            try:
                message = decode(body)
            except EventError as exc:
                return f"the relay link sent a message that does not decode: {exc}"
            self.state.receive(message, self._clock(), self._wall())

    async def aclose(self) -> None:
        """Stop reading and close the link."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        else:
            self._link.close()


class FeedMonitor:
    """Polls a ``FeedCoverage`` and logs its state changes; ``start()``, then ``aclose()``."""

    def __init__(self, coverage: FeedCoverage, interval: float = 1.0) -> None:
        self.coverage = coverage
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            change = self.coverage.transition()
            if change is not None:
                state, line = change
                log.log(logging.INFO if state == HEALTHY else logging.WARNING, "%s", line)
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
