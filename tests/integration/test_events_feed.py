"""listgate's events listener over real loopback sockets, and the plugin's sender (the part
of ``listgate.mailman_plugin`` that runs without Mailman) against it.

Listener: a signed message is applied; a wrong secret (401), garbage (400), a huge body
(413, refused from the header before any of it is read), a non-POST (405) and a slowloris
(closed at the request timeout) change nothing, are counted and logged (rate-limited), and
the listener serves the next good message. Sender: delivery, heartbeats, a full queue
turning into ``all``, a refusing listener given up and logged once, and the bounded drain
at process exit.
"""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from feed_helpers import ListenerThread, Recorder, Unresponsive, covers
from mailman_harness import free_port

from listgate.events import (
    SIGNATURE_HEADER,
    ChangeSet,
    Message,
    encode,
    sign,
)
from listgate.mailman_plugin import Feed, PluginSettings

SECRET = secrets.token_hex(16).encode()
TIMEOUT = 0.5
"""The listener's request timeout in these tests (seconds)."""
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def feed() -> Iterator[ListenerThread]:
    """A listener on a free loopback port, recording into a Recorder."""
    listener = ListenerThread(free_port(), SECRET, Recorder(), request_timeout=TIMEOUT,
                              max_connections=4, log_interval=60.0)
    listener.start()
    yield listener
    listener.stop()


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send *data* on a new connection and read until the listener closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def request(body: bytes, signature: str | None, *, method: str = "POST",
            extra: str = "") -> bytes:
    sig = f"{SIGNATURE_HEADER}: {signature}\r\n" if signature is not None else ""
    return (f"{method} / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{sig}{extra}Connection: close\r\n\r\n"
            ).encode() + body


def message(seq: int = 1, **changes: object) -> bytes:
    return encode(Message("test/1/aa", time.time(), seq, time.time(),
                          ChangeSet(**changes)))  # type: ignore[arg-type]


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def assert_still_serves(feed: ListenerThread, seq: int) -> None:
    """A good message after the bad ones is applied."""
    mark = feed.invalidator.mark()
    body = message(seq, addresses=frozenset({"after@example.org"}))
    assert status(exchange(feed.port, request(body, sign(SECRET, body)))) == 204
    assert feed.invalidator.since(mark)[0].keys == ("after@example.org",)


def test_signed_message_is_applied(feed: ListenerThread) -> None:
    """204, and exactly the calls the message names."""
    body = message(lists=frozenset({"l.example.org"}), addresses=frozenset({"a@example.org"}),
                   directory=True)
    reply = exchange(feed.port, request(body, sign(SECRET, body)))
    assert reply.startswith(b"HTTP/1.1 204 ")
    assert [(c.kind, c.keys) for c in feed.invalidator.calls] == [
        ("directory", ()), ("lists", ("l.example.org",)), ("addresses", ("a@example.org",))]
    assert feed.health().messages == 1


def test_wrong_or_missing_secret_is_401_and_changes_nothing(
    feed: ListenerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A message signed with another secret, or not signed: 401, nothing invalidated,
    counted, and one log line for both (rate-limited)."""
    body = message(everything=True)
    with caplog.at_level(logging.WARNING, logger="listgate.events"):
        assert status(exchange(feed.port, request(body, sign(b"wrong", body)))) == 401
        assert status(exchange(feed.port, request(body, None))) == 401
    assert feed.invalidator.calls == []
    assert feed.health().refused["unauthorized"] == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "listgate.events"]
    assert len(lines) == 1
    assert "401: wrong signature" in lines[0]
    assert_still_serves(feed, 1)


def test_garbage_is_400_and_logged(feed: ListenerThread,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """Signed garbage: 400 with the reason, logged; unsigned garbage: 401 (the signature is
    checked first); a request that is not HTTP: 400. Nothing invalidated."""
    garbage = b'{"v": 1, "stream": "s", "seq": "one"}'
    with caplog.at_level(logging.WARNING, logger="listgate.events"):
        reply = exchange(feed.port, request(garbage, sign(SECRET, garbage)))
        assert status(reply) == 400
        assert b"'seq' must be an integer" in reply
        assert status(exchange(feed.port, request(garbage, None))) == 401
        assert status(exchange(feed.port, b"\x16\x03\x01 hello\r\n\r\n")) == 400
    assert feed.invalidator.calls == []
    assert feed.health().refused["malformed"] == 2
    assert any("400: 'seq' must be an integer" in r.getMessage() for r in caplog.records)
    assert_still_serves(feed, 1)


def test_huge_body_is_refused_from_its_header(feed: ListenerThread) -> None:
    """A claimed Content-Length past the bound is answered 413 at once, with none of the
    body sent (so none read or allocated); a chunked body growing past it too."""
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
            b"Connection: close\r\n\r\n")
    began = time.monotonic()
    reply = exchange(feed.port, head)
    assert status(reply) == 413
    assert time.monotonic() - began < TIMEOUT
    chunk = b"x" * 40_000
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    assert status(exchange(feed.port, chunked)) == 413
    assert feed.invalidator.calls == []
    assert feed.health().refused["too_large"] == 2
    assert_still_serves(feed, 1)


def test_not_post_is_405(feed: ListenerThread) -> None:
    """A GET changes nothing."""
    assert status(exchange(feed.port, request(b"", None, method="GET"))) == 405
    assert feed.invalidator.calls == []


def test_slowloris_is_closed_at_the_timeout(feed: ListenerThread,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Headers dribbled one byte at a time: closed without an answer once the request
    timeout passes, counted and logged; nothing invalidated."""
    body = message(everything=True)
    data = request(body, sign(SECRET, body))
    began = time.monotonic()
    received = b""
    with caplog.at_level(logging.WARNING, logger="listgate.events"), \
            socket.create_connection(("127.0.0.1", feed.port), timeout=5) as sock:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.05)
            try:
                received = sock.recv(100)
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with our last byte unread: a reset
                received = b""
            break  # the listener closed the connection (b"") or answered
    elapsed = time.monotonic() - began
    assert received == b""
    assert TIMEOUT <= elapsed < TIMEOUT + 1.0
    assert feed.invalidator.calls == []
    assert feed.health().refused["timeout"] == 1
    assert any("no complete request within" in r.getMessage() for r in caplog.records)
    assert_still_serves(feed, 1)


def test_connections_beyond_the_limit_are_closed(feed: ListenerThread) -> None:
    """With max_connections (4) idle connections open, a fifth is closed at once."""
    idle = [socket.create_connection(("127.0.0.1", feed.port)) for _ in range(4)]
    try:
        # The listener accepts in order, and each connection counts from its first step.
        with socket.create_connection(("127.0.0.1", feed.port), timeout=2) as extra:
            assert extra.recv(10) == b""
        assert feed.health().refused["overloaded"] == 1
    finally:
        for sock in idle:
            sock.close()


# --------------------------------------------------------------------------- the sender


def settings(port: int, *, secret: bytes = SECRET, heartbeat: float = 0.0,
             timeout: float = 0.5, queue_size: int = 100) -> PluginSettings:
    return PluginSettings((f"http://127.0.0.1:{port}/",), secret, heartbeat, timeout,
                          queue_size)


def test_sender_delivers_and_sends_heartbeats(feed: ListenerThread) -> None:
    """A submitted change arrives; with nothing to send, heartbeats keep coming."""
    sender = Feed(settings(feed.port, heartbeat=0.2))
    sender.submit(ChangeSet(addresses=frozenset({"x@example.org"})))
    assert feed.invalidator.wait_for(0, covers("addresses", "x@example.org"), 2.0)
    deadline = time.monotonic() + 3
    while feed.health().heartbeats < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert feed.health().heartbeats >= 2
    assert feed.health().gaps == 0


def test_a_full_queue_becomes_all(feed: ListenerThread) -> None:
    """While the listener hangs, a full queue drops changes (counted); once a listener
    answers again, the retry tells it to drop everything."""
    port = free_port()
    hung = Unresponsive(port)
    sender = Feed(settings(port, queue_size=1))
    for i in range(3):
        sender.submit(ChangeSet(addresses=frozenset({f"q{i}@example.org"})))
    [target] = sender.targets()
    assert target.dropped >= 1
    hung.close()
    listener = ListenerThread(port, SECRET, feed.invalidator, request_timeout=TIMEOUT)
    listener.start()
    try:
        assert feed.invalidator.wait_for(0, lambda calls: any(c.kind == "all" for c in calls),
                                         5.0)
    finally:
        listener.stop()


def test_a_refusing_listener_is_given_up_and_logged_once(
    feed: ListenerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 is not retried: two changes make two requests and one log line."""
    sender = Feed(settings(feed.port, secret=b"not the listener's"))
    with caplog.at_level(logging.ERROR, logger="mailman.plugins"):
        sender.submit(ChangeSet(directory=True))
        deadline = time.monotonic() + 3
        while feed.health().refused["unauthorized"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        sender.submit(ChangeSet(directory=True))
        while feed.health().refused["unauthorized"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.6)  # a retry, if there were one, would come within this
    assert feed.health().refused["unauthorized"] == 2
    assert feed.invalidator.calls == []
    lines = [r.getMessage() for r in caplog.records if r.name == "mailman.plugins"]
    assert len(lines) == 1
    assert "refused the change feed with HTTP 401" in lines[0]


EXIT_SCRIPT = """\
import sys
from listgate.events import ChangeSet
from listgate.mailman_plugin import Feed, PluginSettings
feed = Feed(PluginSettings((sys.argv[1],), sys.argv[2].encode(), 0.0, 5.0, 10))
feed.submit(ChangeSet(addresses=frozenset({"exit@example.org"})))
"""


def run_exit_script(port: int) -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT, f"http://127.0.0.1:{port}/",
                    SECRET.decode()], check=True, timeout=30, cwd=REPO_ROOT)
    return time.monotonic() - began


def test_exit_drains_the_queue_within_a_second(feed: ListenerThread) -> None:
    """A process that exits right after its change (the CLI, one-shot runners) still
    delivers it; against a listener that never answers, exit waits about 1 s, no more."""
    quick = run_exit_script(feed.port)
    assert feed.invalidator.wait_for(0, covers("addresses", "exit@example.org"), 1.0)
    hung = Unresponsive(free_port())
    try:
        stuck = run_exit_script(hung.sock.getsockname()[1])
        assert hung.accepted
    finally:
        hung.close()
    print(f"\nexit with delivery: {quick:.2f} s; with a hung listener: {stuck:.2f} s")
    assert stuck < quick + 1.5


def test_closing_the_listener_closes_open_connections() -> None:
    """aclose ends every open connection (an idle one sees EOF) and leaves no task behind."""
    listener = ListenerThread(free_port(), SECRET, Recorder(), request_timeout=30.0)
    listener.start()
    idle = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    try:
        idle.sendall(b"POST / HTTP/1.1\r\n")
        assert listener.listener is not None
        deadline = time.monotonic() + 5
        while listener.listener.open_connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.listener.open_connections == 1
        listener.stop()
        assert idle.recv(100) == b""
    finally:
        idle.close()


class Failing(Recorder):
    """An Invalidator whose first invalidate_addresses call raises."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("cache broken")
        super().invalidate_addresses(addresses)


def test_a_failing_cache_gets_500_and_the_sender_retries() -> None:
    """When dropping an entry fails, the listener answers 500 (counted, logged) and the
    plugin's sender retries the same change until it is applied."""
    recorder = Failing()
    listener = ListenerThread(free_port(), SECRET, recorder, request_timeout=TIMEOUT)
    listener.start()
    try:
        sender = Feed(settings(listener.port))
        sender.submit(ChangeSet(addresses=frozenset({"retry@example.org"})))
        assert recorder.wait_for(0, covers("addresses", "retry@example.org"), 3.0)
        assert listener.health().refused["error"] == 1
        assert listener.health().gaps == 0
    finally:
        listener.stop()
