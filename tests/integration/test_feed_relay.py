"""The change feed with several workers (``listgate.server.feedrelay``,
``listgate.server.events.FeedFollower``): the supervisor's relay answers the plugin's
POST only after handing the message to every linked worker, each follower applies it to
its own cache like a listener would, and a follower whose link breaks or carries garbage
drops every fact and stops vouching for any. Real sockets on loopback; the whole daemon
with real Mailman is in tests/mailman/test_feed_workers.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from listgate.errors import ListgateError
from listgate.events import (
    MAX_BODY,
    NOTHING,
    ChangeSet,
    Message,
    encode,
    sign,
)
from listgate.listen import parse_listen_spec
from listgate.server.events import RELAY_HEADER, FeedFollower, relay_frame
from listgate.server.feedrelay import FeedRelay
from listgate.server.links import WorkerLinks
from tests.integration.test_events_wiring import post
from tests.support import free_port
from tests.unit.test_events import Recording

SECRET = b"relay-secret"


def message(seq: int, changes: ChangeSet = NOTHING) -> Message:
    """A message of one stream begun long before any listener here."""
    return Message("mm/1/relay", 1.0, seq, time.time(), changes)


def signed_post(port: int, msg: Message) -> int:
    body = encode(msg)
    return post(port, body, sign(SECRET, body))


@pytest.fixture
def relay() -> Iterator[FeedRelay]:
    """A started relay on a free loopback port; closed after."""
    relay = FeedRelay(parse_listen_spec(f"inet:127.0.0.1:{free_port()}"), SECRET, 90.0)
    relay.start()
    try:
        yield relay
    finally:
        relay.close()


def read_frame(sock: socket.socket) -> bytes:
    """One relayed frame's body from a worker's end (blocking, 5 s at most)."""
    sock.settimeout(5.0)
    head = b""
    while len(head) < RELAY_HEADER.size:
        head += sock.recv(RELAY_HEADER.size - len(head))
    (size,) = RELAY_HEADER.unpack(head)
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    return body


def test_every_linked_worker_gets_each_accepted_message_before_the_204(
        relay: FeedRelay) -> None:
    """Two workers' ends each hold the signed body once the POST is answered 204; a
    refused POST (bad signature) reaches no worker; the relay's health counts both."""
    ends = [relay.link(0), relay.link(1)]
    msg = message(1, ChangeSet(lists=frozenset({"a.example.org"})))
    assert signed_post(relay.port, msg) == 204
    frame = relay_frame(encode(msg))
    for end in ends:  # already there when the 204 arrived: no waiting for it
        assert end.recv(len(frame), socket.MSG_PEEK | socket.MSG_DONTWAIT) == frame
        assert read_frame(end) == encode(msg)
    assert post(relay.port, encode(message(2)), "0" * 64) == 401
    for end in ends:
        end.settimeout(0.3)
        with pytest.raises(TimeoutError):
            end.recv(1)
    health = relay.health
    assert (health.messages, health.changes, health.refused["unauthorized"]) == (1, 1, 1)
    assert relay.healthy()


def test_a_worker_that_cannot_take_a_message_loses_its_link_and_the_rest_go_on(
        relay: FeedRelay, caplog: pytest.LogCaptureFixture) -> None:
    """Worker 0's end is closed: the next POST is still 204, worker 1 gets it, the relay
    logs worker 0 at ERROR, drops its link (later messages skip it) and reports it once
    in ``lost_links`` (the supervisor then replaces that worker)."""
    gone, kept = relay.link(0), relay.link(1)
    assert relay.lost_links() == []
    gone.close()
    msg = message(1)
    with caplog.at_level(logging.ERROR, "listgate.events"):
        assert signed_post(relay.port, msg) == 204
        assert read_frame(kept) == encode(msg)
    assert "worker 0 did not take a message" in caplog.text
    with relay._links.using() as links:
        assert [index for index, _ in links] == [1]
    assert relay.lost_links() == [0]
    assert relay.lost_links() == []


def test_a_replacement_worker_gets_a_new_link() -> None:
    """link(index) again (a replaced worker) closes the old end's partner: the old worker's
    end reads EOF, the new one gets the next message."""
    relay = FeedRelay(parse_listen_spec(f"inet:127.0.0.1:{free_port()}"), SECRET, 90.0)
    relay.start()
    try:
        old = relay.link(0)
        new = relay.link(0)
        old.settimeout(5.0)
        assert old.recv(1) == b""
        msg = message(1)
        assert signed_post(relay.port, msg) == 204
        assert read_frame(new) == encode(msg)
    finally:
        relay.close()


def test_a_busy_port_fails_at_start_naming_events() -> None:
    """The relay binds in its constructor: a port in use is a ListgateError naming
    [events] listen's value, before any worker would be forked."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        spec = parse_listen_spec(f"inet:127.0.0.1:{holder.getsockname()[1]}")
        with pytest.raises(ListgateError, match=r"^events: cannot listen on inet:127\.0\.0\.1"):
            FeedRelay(spec, SECRET, 90.0)
    finally:
        holder.close()


async def _follow(frames: list[bytes], close: bool) -> tuple[Recording, FeedFollower]:
    """A follower on a socket pair, fed *frames* (then EOF if *close*); given time to apply."""
    ours, theirs = socket.socketpair()
    recording = Recording()
    follower = FeedFollower(theirs, recording, max_silence=90.0)
    await follower.start()
    for frame in frames:
        ours.sendall(frame)
    if close:
        ours.close()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if follower.state.lost or len(recording.calls) >= len(frames):
            break
    await follower.aclose()
    if not close:
        ours.close()
    return recording, follower


def test_a_follower_applies_relayed_messages_like_a_listener() -> None:
    """Two relayed messages: their Invalidator calls, in order; the follower's own health
    is healthy (a gap in seqs would drop everything, as for a listener)."""
    frames = [relay_frame(encode(message(1, ChangeSet(lists=frozenset({"l.example.org"}))))),
              relay_frame(encode(message(2, ChangeSet(addresses=frozenset({"a@b.example"})))))]
    recording, follower = asyncio.run(_follow(frames, close=False))
    assert recording.calls == [("lists", ("l.example.org",)), ("addresses", ("a@b.example",))]
    assert not follower.state.lost
    assert follower.health.messages == 2
    assert follower.health.healthy(time.monotonic(), 90.0)


@pytest.mark.parametrize(("frames", "why"), [
    ([], "closed"),
    ([RELAY_HEADER.pack(MAX_BODY + 1)], "frame of"),
    ([relay_frame(b"{not json")], "does not decode"),
])
def test_a_broken_link_drops_every_fact_and_the_feed_vouches_for_none(
        frames: list[bytes], why: str, caplog: pytest.LogCaptureFixture) -> None:
    """EOF, a frame longer than a message may be (refused from its header alone, nothing
    read or allocated for it) or a body that does not decode: the follower drops every
    cached fact, is never healthy again, ignores later messages, and says why at ERROR."""
    good = relay_frame(encode(message(1)))
    with caplog.at_level(logging.ERROR, "listgate.events"):
        recording, follower = asyncio.run(_follow([good, *frames], close=not frames))
    assert follower.state.lost
    assert ("all", ()) in recording.calls
    assert not follower.health.healthy(time.monotonic(), 90.0)
    assert follower.health.resumed is None
    before = list(recording.calls)
    follower.state.receive(message(2, ChangeSet(lists=frozenset({"x.example.org"}))),
                           time.monotonic(), time.time())
    assert recording.calls == before
    assert why in caplog.text
    assert "drops every cached fact" in caplog.text


def test_a_forked_worker_closes_the_links_even_if_a_thread_held_the_lock() -> None:
    """close_after_fork does not take the lock (a supervisor thread may have held it at
    the fork): with the lock held elsewhere it still closes every supervisor end, whose
    workers then read EOF."""
    links = WorkerLinks(1.0)
    theirs = [links.link(0), links.link(1)]
    with links.using():  # the lock is held, as by a relay thread in mid-send
        closer = threading.Thread(target=links.close_after_fork)
        closer.start()
        closer.join(2.0)
        assert not closer.is_alive()
    for end in theirs:
        end.settimeout(2.0)
        assert end.recv(1) == b""
    with links.using() as remaining:
        assert remaining == []
