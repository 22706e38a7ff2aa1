"""The Postfix policy listener: one ``asyncio.Protocol`` per connection from Postfix.

Invariants:
- Bytes go into a sans-IO ``PolicyConnection``; replies come out of it. This module adds
  only I/O, time and the gate: it never formats a reply itself.
- A connection carries any number of requests (Postfix keeps it open and reuses it). Each
  request gets exactly one reply, in order.
- A decision the gate can make without waiting (static map, warm cache) is answered
  inside ``data_received``, with no task. Otherwise one task per connection awaits the
  gate; further requests wait in the buffer (reading pauses if the peer sends ahead).
- One decision log line (``listgate.decision``) per judged request, with the milter's
  fields: connection id, queue id, client, sender, recipient, list, verdict, reply,
  reason, latency. Requests that are not judged (not RCPT) are answered ``DUNNO``; the
  first one per ``protocol_state`` is logged as a WARNING (a misplaced
  ``check_policy_service``).
- A protocol violation or an exceeded limit closes that connection only, with one WARNING
  line naming the connection id, the peer and the defect. Nothing a peer sends can stop
  the daemon.
- ``idle_timeout``: a connection must complete its next request within this many seconds
  of the previous reply (or of being opened), else it is closed; partial data does not
  extend it. No timeout runs while the gate decides: the gate bounds its own time.
- ``drain()`` closes the connection as soon as no request is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import cast

from listgate.decision.gate import Gate
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.frontends.policy import answer_for, posting_request
from listgate.listen import ListenSpec
from listgate.log import next_conn_id, printable
from listgate.metrics import DecisionStats
from listgate.policyd import (
    DEFAULT_MAX_ATTRIBUTES,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_REQUEST_BYTES,
    NEED_DATA,
    PolicyConnection,
    PolicyLimits,
    PolicyProtocolError,
    PolicyRequest,
)
from listgate.server.base import StreamService

__all__ = ["PolicyProtocol", "PolicyServerLimits", "PolicyService"]

log = logging.getLogger("listgate.policy")
decisions_log = logging.getLogger("listgate.decision")

_MAX_WARNED_STATES = 32


@dataclass(frozen=True, slots=True)
class PolicyServerLimits:
    """Per-connection limits (seconds and bytes)."""

    idle_timeout: float = 600.0
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_attributes: int = DEFAULT_MAX_ATTRIBUTES

    @property
    def codec(self) -> PolicyLimits:
        """The codec's limits: a request may be at most 64 KiB, or one line if longer."""
        return PolicyLimits(
            max_line_length=self.max_line_length,
            max_attributes=self.max_attributes,
            max_request_bytes=max(DEFAULT_MAX_REQUEST_BYTES, self.max_line_length + 4),
        )


class PolicyService(StreamService):
    """Policy listeners sharing one gate, one set of limits and one connection cap."""

    def __init__(
        self,
        specs: tuple[ListenSpec, ...],
        gate: Gate,
        limits: PolicyServerLimits,
        *,
        max_connections: int,
        socket_mode: int = 0o660,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            "policy",
            specs,
            _protocol_factory,
            max_connections=max_connections,
            socket_mode=socket_mode,
            shutdown_timeout=shutdown_timeout,
        )
        self.gate = gate
        """Swappable: a reload replaces it; connections read it for each decision."""
        self.decisions = DecisionStats()
        """Decisions counted for the metrics (shared with the app's ``Metrics``)."""
        self.limits = limits
        self.codec_limits = limits.codec
        self.requests = 0
        """Requests answered, over all connections."""
        self._warned_states: set[str] = set()

    def warn_unjudged(self, conn_id: str, event: PolicyRequest) -> None:
        """Log once per (request, protocol_state) that such requests are not judged."""
        key = f"{event.request}/{event.protocol_state}"
        if key in self._warned_states or len(self._warned_states) >= _MAX_WARNED_STATES:
            return
        self._warned_states.add(key)
        log.warning(
            "[%s] policy request=%s protocol_state=%s answered DUNNO: listgate judges only "
            "request=smtpd_access_policy at protocol_state=RCPT; put check_policy_service "
            "in smtpd_recipient_restrictions (logged once)",
            conn_id, printable(event.request or "-", 40),
            printable(event.protocol_state or "-", 40),
        )


def _protocol_factory(service: StreamService) -> asyncio.Protocol:
    assert isinstance(service, PolicyService)
    return PolicyProtocol(service)


class PolicyProtocol(asyncio.Protocol):
    """One policy connection from Postfix."""

    __slots__ = (
        "_closing",
        "_draining",
        "_last",
        "_loop",
        "_out",
        "_pending",
        "_reading_paused",
        "_service",
        "_timer",
        "conn",
        "conn_id",
        "peer",
        "requests",
        "transport",
    )

    def __init__(self, service: PolicyService) -> None:
        self._service = service
        self._loop = asyncio.get_running_loop()
        self.conn_id = ""
        self.peer = "-"
        self.transport: asyncio.Transport | None = None
        self.conn = PolicyConnection(service.codec_limits)
        self.requests = 0
        self._out: list[bytes] = []
        self._pending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._draining = False
        self._closing = False
        self._reading_paused = False

    # --------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        if not self._service.admit(self):
            self._closing = True
            self.transport.abort()
            return
        self.conn_id = next_conn_id()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self._last = self._loop.time()
        self._arm_timer(self._last + self._service.limits.idle_timeout)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] policy connection from %s", self.conn_id, self.peer)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.conn.receive_data(data)
        if self._pending is None:
            self._pump()
        elif self.conn.buffered > self._service.codec_limits.max_request_bytes and (
            self.transport is not None
        ):
            self.transport.pause_reading()  # the peer is sending ahead of our answer
            self._reading_paused = True

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.conn_id:
            self._service.release(self)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "[%s] policy connection closed after %d request(s)%s",
                    self.conn_id, self.requests, f": {exc}" if exc else "",
                )

    # --------------------------------------------------------------- service interface

    def drain(self) -> None:
        """Close once the request in flight (if any) has been answered."""
        self._draining = True
        if self._pending is None:
            self._close()

    def abort(self) -> None:
        """Close now, dropping anything in flight."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    # --------------------------------------------------------------- the pump

    def _pump(self) -> None:
        """Answer every complete request buffered, then write all replies at once."""
        conn = self.conn
        try:
            while not self._closing:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                assert isinstance(event, PolicyRequest)
                if not self._handle(event):
                    break
        except PolicyProtocolError as exc:
            self._protocol_error(exc)
            return
        self._flush()
        if self._draining and self._pending is None:
            self._close()

    def _handle(self, event: PolicyRequest) -> bool:
        """Answer *event* now, or start a task and return False (the pump stops until the
        task has answered)."""
        request = posting_request(event)
        if request is None:
            self._service.warn_unjudged(self.conn_id, event)
            self._reply("DUNNO")
            return True
        started = self._loop.time()
        decision = self._service.gate.decide_now(request)
        if decision is None:
            self._pending = self._loop.create_task(self._decide_later(request, started))
            return False
        self._answer(request, decision, started)
        return True

    async def _decide_later(self, request: PostingRequest, started: float) -> None:
        decision = await self._service.gate.decide(request)
        self._pending = None
        if self._closing:
            return
        self._answer(request, decision, started)
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._pump()

    def _answer(self, request: PostingRequest, decision: Decision, started: float) -> None:
        answer = answer_for(decision)
        self._reply(answer.action)
        self._service.decisions.count("policy", decision.verdict.value, decision.list_address)
        shown = f"{answer.action} ({answer.note})" if answer.note else answer.action
        if (
            decision.list_address is not None
            or decision.verdict is not Verdict.ACCEPT
            or answer.note
        ):
            self._log_decision(request, decision, shown, started)
        elif decisions_log.isEnabledFor(logging.DEBUG):
            self._log_decision(request, decision, shown, started, logging.DEBUG)

    def _reply(self, action: str) -> None:
        self._out.append(self.conn.send(action))
        self.requests += 1
        self._service.requests += 1
        self._last = self._loop.time()

    def _log_decision(
        self,
        request: PostingRequest,
        decision: Decision,
        shown: str,
        started: float,
        level: int = logging.INFO,
    ) -> None:
        decisions_log.log(
            level,
            "[%s] queue=%s client=%s from=<%s> to=<%s> list=%s verdict=%s reply=%s "
            "reason=%s latency=%.2fms",
            self.conn_id,
            printable(request.queue_id),
            printable(request.client_address),
            printable(request.sender),
            printable(request.recipient),
            printable(decision.list_address),
            decision.verdict.value,
            printable(shown),
            printable("; ".join(decision.reasons)),
            (self._loop.time() - started) * 1000.0,
        )

    # --------------------------------------------------------------- plumbing

    def _flush(self) -> None:
        if not self._out:
            return
        out = b"".join(self._out)
        self._out.clear()
        if self.transport is not None and not self._closing:
            self.transport.write(out)

    def _close(self) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()  # flushes what was written, then closes

    def _protocol_error(self, exc: PolicyProtocolError) -> None:
        log.warning(
            "[%s] closing policy connection from %s: %s", self.conn_id, self.peer, exc
        )
        # Replies to the complete requests before the defect still go out.
        self._flush()
        self._closing = True
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()  # the peer is not reading either: do not wait for it
            else:
                transport.close()

    def _arm_timer(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        idle = self._service.limits.idle_timeout
        now = self._loop.time()
        if self._pending is not None:
            self._arm_timer(now + idle)  # the gate bounds its own time
            return
        deadline = self._last + idle
        if now >= deadline:
            log.info(
                "[%s] closing idle policy connection from %s after %.0f s "
                "(idle_timeout; %d request(s) served)",
                self.conn_id, self.peer, now - self._last, self.requests,
            )
            self._close_now()
            return
        self._arm_timer(deadline)

    def _close_now(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
