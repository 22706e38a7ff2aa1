"""The one connection loop (listgate.server.connection), for every front end: hostile
input, timeouts, the connection cap, drain, abort, back-pressure and the no-wait fast
path. Each test runs for the milter and for the policy front end, over the real asyncio
server on 127.0.0.1 (tests/integration/frontends.py speaks each protocol)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from listgate.app import build_gate
from listgate.server.connection import StreamConnection
from tests.integration.conftest import Daemon, raw_connect, run_daemon
from tests.integration.frontends import (
    FRONT_ENDS,
    LIST,
    MEMBER,
    OUTSIDER,
    FrontEnd,
    SlowBackend,
)


@pytest.fixture(params=FRONT_ENDS, ids=[fe.name for fe in FRONT_ENDS])
def fe(request: pytest.FixtureRequest) -> FrontEnd:
    """Each front end in turn."""
    front_end: FrontEnd = request.param
    return front_end


def assert_served(fe: FrontEnd, port: int) -> None:
    """A fresh connection still gets a correct answer."""
    with fe.peer(port) as peer:
        peer.hello()
        assert peer.ask(OUTSIDER, LIST) == fe.rejected


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """The WARNING lines *logger* wrote."""
    return [r.getMessage() for r in caplog.records
            if r.name == logger and r.levelno == logging.WARNING]


@contextmanager
def slow_daemon(fe: FrontEnd, own: dict[str, object] | None = None,
                **milter: object) -> Iterator[tuple[Daemon, SlowBackend]]:
    """The front end over a backend whose every answer waits until released."""
    backend = SlowBackend()
    with run_daemon(fe.config(own, **milter), backend, build=fe.build) as d:  # type: ignore[arg-type]
        backend.release = d.call(asyncio.Event)
        backend.started = d.call(asyncio.Event)
        yield d, backend


def wait_started(d: Daemon, backend: SlowBackend) -> None:
    """Until the backend has been asked."""
    assert backend.started is not None
    asyncio.run_coroutine_threadsafe(
        asyncio.wait_for(backend.started.wait(), 5), d.loop
    ).result(6)


def release(d: Daemon, backend: SlowBackend) -> None:
    """Let every lookup, waiting or to come, answer."""
    assert backend.release is not None
    d.loop.call_soon_threadsafe(backend.release.set)


# ----------------------------------------------------------------- hostile input


GARBAGE = [
    pytest.param(fe, payload, id=f"{fe.name}-{name}")
    for fe in FRONT_ENDS
    for name, payload in fe.garbage.items()
]


@pytest.mark.parametrize(("fe", "payload"), GARBAGE)
def test_garbage_closes_only_that_connection(
    fe: FrontEnd, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk closes its connection with one WARNING naming the connection id and the
    peer; a connection opened before it, and new ones, are still served."""
    caplog.set_level(logging.WARNING, logger=fe.logger)
    with run_daemon(fe.config(), build=fe.build) as d, fe.peer(d.port) as bystander:
        bystander.hello()
        assert bystander.ask(MEMBER, LIST) == fe.accepted
        with fe.peer(d.port) as bad:
            bad.send(payload)
            received = bad.closed_by_peer()
        if fe.garbage_unanswered:
            assert received == b""
        assert bystander.ask(OUTSIDER, LIST) == fe.rejected
        assert_served(fe, d.port)
    warnings = warnings_of(caplog, fe.logger)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("[c"), warnings
    assert fe.broken in warnings[0], warnings


def test_open_conversation_survives_other_clients_garbage(fe: FrontEnd) -> None:
    """A request half sent before junk arrives on other connections is answered after."""
    with run_daemon(fe.config(), build=fe.build) as d, fe.peer(d.port) as peer:
        peer.hello()
        rest = peer.begin(OUTSIDER, LIST)
        for payload in fe.garbage.values():
            with fe.peer(d.port) as bad:
                bad.send(payload)
                bad.closed_by_peer()
        peer.send(rest)
        assert peer.replies(1) == [fe.rejected]


# ----------------------------------------------------------------- timeouts


def test_idle_connection_is_closed_at_idle_timeout(fe: FrontEnd) -> None:
    """A connection that completes no request within idle_timeout of its last answer is
    closed (partial data does not extend it); others are still served."""
    with run_daemon(fe.config({"idle_timeout": 0.5}), build=fe.build) as d:
        with fe.peer(d.port) as peer:
            peer.hello()
            assert peer.ask(MEMBER, LIST) == fe.accepted
            peer.send(fe.idle_tail)
            started = time.monotonic()
            assert peer.closed_by_peer() == b""
            assert 0.4 <= time.monotonic() - started < 3
        assert_served(fe, d.port)


# ----------------------------------------------------------------- limits and lifecycle


def test_connection_cap_refuses_cleanly_and_recovers(
    fe: FrontEnd, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond max_connections a new connection is closed at once, with a WARNING; the
    open ones still work; a freed slot is reused."""
    with run_daemon(fe.config({"max_connections": 2}), build=fe.build) as d:
        held = [fe.peer(d.port) for _ in range(2)]
        for peer in held:
            peer.hello()
            assert peer.ask(MEMBER, LIST) == fe.accepted
        with caplog.at_level(logging.WARNING, logger="listgate.server"), fe.peer(d.port) as extra:
            assert extra.closed_by_peer() == b""
        assert any("max_connections=2" in m for m in warnings_of(caplog, "listgate.server"))
        assert d.service.refused == 1
        assert held[0].ask(OUTSIDER, LIST) == fe.rejected
        held.pop().close()
        deadline = time.monotonic() + 5
        while len(d.service.active) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert_served(fe, d.port)
        for peer in held:
            peer.close()


def test_drain_answers_what_is_in_flight_then_closes(fe: FrontEnd) -> None:
    """On stop the listener goes at once and idle connections close; the request being
    decided and the one received behind it are answered in order, then the connection
    closes and the service stops."""
    with slow_daemon(fe, shutdown_timeout=10) as (d, backend):
        idle = fe.peer(d.port)
        idle.hello()
        busy = fe.peer(d.port)
        busy.hello()
        busy.send(busy.wire([(OUTSIDER, LIST), (MEMBER, LIST)]))
        wait_started(d, backend)
        d.loop.call_soon_threadsafe(d.stop_event.set)
        assert idle.closed_by_peer() == b""  # idle: closed at once
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            raw_connect(d.port, timeout=1)  # no longer listening
        release(d, backend)
        assert busy.decode(busy.closed_by_peer()) == [fe.rejected, fe.accepted]
        d.thread.join(10)
        assert not d.thread.is_alive()
        idle.close()
        busy.close()


def test_half_close_answers_what_was_asked_then_closes(fe: FrontEnd) -> None:
    """A peer that half-closes after its requests (Exim's readsocket does) still gets an
    answer to each, the one being decided included, and then the connection closes; the
    service is not stopped by it."""
    with slow_daemon(fe) as (d, backend):
        peer = fe.peer(d.port)
        peer.hello()
        peer.send(peer.wire([(OUTSIDER, LIST), (MEMBER, LIST)]))
        wait_started(d, backend)
        peer.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.1)  # the end of input reaches the loop while the decision waits
        release(d, backend)
        assert peer.decode(peer.closed_by_peer()) == [fe.rejected, fe.accepted]
        peer.close()
        assert_served(fe, d.port)


def test_stop_aborts_what_is_still_busy_after_shutdown_timeout(
    fe: FrontEnd, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision still in flight at shutdown_timeout is dropped: its connection is
    aborted with a WARNING, and the service stops."""
    caplog.set_level(logging.WARNING, logger="listgate.server")
    with slow_daemon(fe, shutdown_timeout=0.3) as (d, backend), fe.peer(d.port) as busy:
        busy.hello()
        busy.send(busy.wire([(OUTSIDER, LIST)]))
        wait_started(d, backend)
        started = time.monotonic()
        d.loop.call_soon_threadsafe(d.stop_event.set)
        assert busy.closed_by_peer() == b""
        assert 0.2 <= time.monotonic() - started < 3
        d.thread.join(10)
        assert not d.thread.is_alive()
    assert any("1 connection(s) still busy after 0.3 s; closing them" in m
               for m in warnings_of(caplog, "listgate.server"))


# ----------------------------------------------------------------- back-pressure


def test_reading_pauses_while_a_decision_is_in_flight(fe: FrontEnd) -> None:
    """A peer that sends far ahead of a slow decision is read no further than
    max_buffered and one read more; once decided, every request is answered in order."""
    with slow_daemon(fe, dict(fe.smallest_buffer)) as (d, backend), fe.peer(d.port) as peer:
        peer.hello()
        limit = d.service.max_buffered
        one = len(fe.peer(None).wire([(MEMBER, LIST)]))
        count = (4 * limit + 512 * 1024) // one
        data = peer.wire([(OUTSIDER, LIST)] + [(MEMBER, LIST)] * count)
        writer = threading.Thread(target=peer.send, args=(data,))
        writer.start()
        wait_started(d, backend)
        deadline = time.monotonic() + 5
        held = 0
        while time.monotonic() < deadline:
            [held] = d.call(lambda: [c.session.buffered for c in d.service.active])
            if held > limit:
                break
            time.sleep(0.02)
        time.sleep(0.2)  # long enough for more reads, were reading not paused
        [held] = d.call(lambda: [c.session.buffered for c in d.service.active])
        assert limit < held <= limit + 256 * 1024 < len(data)
        release(d, backend)
        assert peer.replies(count + 1) == [fe.rejected] + [fe.accepted] * count
        writer.join(10)
        assert not writer.is_alive()


def test_reading_pauses_after_the_very_read_that_started_a_slow_decision(
        fe: FrontEnd) -> None:
    """One read can start a decision the gate must wait for and carry more than
    max_buffered bytes behind it: reading pauses right after that read (before, it went
    on for one more read), and resumes once the decision is answered."""
    config = fe.config(dict(fe.smallest_buffer))

    async def run() -> None:
        backend = SlowBackend()
        backend.release, backend.started = asyncio.Event(), asyncio.Event()
        service = fe.build(config, build_gate(config, backend))  # type: ignore[arg-type]
        assert service is not None
        conn = StreamConnection(service)
        transport = PausingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        peer = fe.peer(None)
        one = len(fe.peer(None).wire([(MEMBER, LIST)]))
        count = 2 * service.max_buffered // one
        conn.data_received(peer.opening + peer.wire([(OUTSIDER, LIST)] + [(MEMBER, LIST)] * count))
        assert conn.session.buffered > service.max_buffered
        assert transport.paused
        backend.release.set()
        for _ in range(50):
            await asyncio.sleep(0)
            if not transport.paused:
                break
        assert not transport.paused
        conn.connection_lost(None)
        peer.close()

    asyncio.run(run())


def test_slow_decisions_answer_pipelined_requests_in_order(fe: FrontEnd) -> None:
    """With every decision awaited, requests sent in one write still get their replies in
    order."""
    with slow_daemon(fe) as (d, backend), fe.peer(d.port) as peer:
        release(d, backend)
        peer.hello()
        peer.send(peer.wire([(OUTSIDER, LIST), (MEMBER, LIST)] * 10))
        assert peer.replies(20) == [fe.rejected, fe.accepted] * 10


# ----------------------------------------------------------------- the no-wait fast path


class RecordingTransport:
    """Just enough of an asyncio transport to watch what the loop writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("192.0.2.1", 4000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        raise AssertionError("no pause on the no-wait path")



class PausingTransport(RecordingTransport):
    """A ``RecordingTransport`` that also records whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_no_wait_decisions_go_out_in_one_write_without_a_task(
    fe: FrontEnd, caplog: pytest.LogCaptureFixture
) -> None:
    """Decisions the gate makes at once are answered inside data_received: no task, and
    every reply of one read in one write; one decision log line per list decision."""
    caplog.set_level(logging.INFO, logger="listgate.decision")
    config = fe.config()

    async def run() -> tuple[RecordingTransport, StreamConnection]:
        service = fe.build(config, build_gate(config))
        assert service is not None
        conn = StreamConnection(service)
        transport = RecordingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        peer = fe.peer(None)
        conn.data_received(peer.opening + peer.wire([(OUTSIDER, LIST), (MEMBER, LIST)] * 3))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        conn.connection_lost(None)
        peer.close()
        return transport, conn

    transport, conn = asyncio.run(run())
    assert len(transport.writes) == 1
    replies = fe.peer(None).decode(transport.writes[0])
    if fe.peer(None).opening:
        replies = replies[1:]  # the negotiation's reply
    assert replies == [fe.rejected, fe.accepted] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == "listgate.decision"]
    client = "127.0.0.1" if fe.name == "policy" else "-"
    assert len(lines) == 6
    assert re.fullmatch(
        rf"\[{conn.conn_id}\] queue=- client={client} from=<{OUTSIDER}> to=<{LIST}> "
        rf"list={LIST} verdict=reject reply=550 5\.7\.1 <{OUTSIDER}> is not allowed to "
        rf"post to <{LIST}> reason=nonmember <{OUTSIDER}>; default_nonmember_action=reject "
        r"latency=\d+\.\d\dms",
        lines[0],
    ), lines[0]
