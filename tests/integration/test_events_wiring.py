"""The change feed wired into the daemon (``listgate.app``): with ``[events] listen`` and
the Mailman backend, ``serve`` starts the events listener with the milter, its messages
drop facts from the backend, its health is exported as metrics and logged once per state
change, a reload keeps it, and shutdown stops it. Mailman itself is not needed here (no
lookup is made); tests/mailman/test_fresh_verdicts.py drives the whole path."""

from __future__ import annotations

import http.client
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from listgate.events import SIGNATURE_HEADER, ChangeSet, Message, encode, sign
from listgate.server.events import EventsListener
from tests.fresh_helpers import DaemonThread, daemon_config
from tests.support import free_port

SECRET = b"wiring-secret"


def post(port: int, body: bytes, signature: str) -> int:
    """POST *body* to the events listener; the HTTP status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/", body, {SIGNATURE_HEADER: signature,
                                         "Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_daemon_serves_the_feed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A signed change reaches the backend; a wrong signature gets 401; the feed metrics
    and the healthy → silent transition show; a reload keeps the listener; stop closes
    it."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    port = free_port()
    config = daemon_config("http://127.0.0.1:9/3.1", ("restadmin", "x"), events={
        "listen": f"inet:127.0.0.1:{port}", "secret_file": str(secret), "max_silence": 1.0})
    caplog.set_level(logging.INFO, "listgate.events")
    daemon = DaemonThread(config).start()
    try:
        assert daemon.daemon is not None
        events = daemon.daemon.events
        assert isinstance(events, EventsListener)
        backend = daemon.daemon.backend
        backend.keys.caches[1].put("l.example.org", object())  # type: ignore[attr-defined]
        body = encode(Message("mm/1/x", time.time(), 1, time.time(),
                              ChangeSet(lists=frozenset({"l.example.org"}))))
        assert post(port, body, "sha256=" + "0" * 64) == 401
        assert len(backend.keys.caches[1]) == 1  # type: ignore[attr-defined]
        assert post(port, body, sign(SECRET, body)) == 204
        assert len(backend.keys.caches[1]) == 0  # type: ignore[attr-defined]
        text = generate_latest(daemon.daemon.metrics.registry).decode()
        assert "listgate_feed_messages_total 1.0" in text
        assert 'listgate_feed_refused_total{reason="unauthorized"} 1.0' in text
        assert "listgate_feed_healthy 1.0" in text
        deadline = time.monotonic() + 10
        while "change feed silent" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "change feed healthy: first message" in caplog.text
        assert "change feed silent for" in caplog.text
        assert "listgate_feed_healthy 0.0" in generate_latest(
            daemon.daemon.metrics.registry).decode()
        daemon.daemon._apply(config)  # a reload keeps the listener (restart-only)
        assert daemon.daemon.events is events
        body2 = encode(Message("mm/1/x", time.time(), 2, time.time()))
        assert post(port, body2, sign(SECRET, body2)) == 204
    finally:
        daemon.stop()
    with pytest.raises(ConnectionRefusedError):
        post(port, body, sign(SECRET, body))
