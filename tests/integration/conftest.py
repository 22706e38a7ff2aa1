"""In-process daemon fixtures: the real asyncio servers on loopback, in a thread.

A front end's service (milter by default, or the policy service) runs on its own event
loop in a background thread, so tests talk to it over real sockets (127.0.0.1, ::1 or a
unix socket in tmp_path) with plain sockets or listgate's asyncio milter client.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from listgate.app import build_gate, build_milter_service
from listgate.config import Config, parse_config
from listgate.decision.facts import FactSource
from listgate.decision.gate import Gate
from listgate.server.connection import SessionService

BuildService = Callable[[Config, Gate], SessionService | None]

POSTERS = {"list@example.org": ["member@example.com"]}


@dataclass
class Daemon:
    """A running in-process daemon (one front end's service)."""

    service: SessionService
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop_event: asyncio.Event
    addresses: list[str] = field(default_factory=list)

    @property
    def spec(self) -> str:
        """The first bound listen spec (port 0 resolved)."""
        return self.addresses[0]

    @property
    def port(self) -> int:
        return int(self.spec.rsplit(":", 1)[1])

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run *fn* on the daemon's loop and return its result."""
        fut: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)
        return fut.result(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def make_config(milter: Mapping[str, Any] | None = None, **sections: Any) -> Config:
    """A config with POSTERS and a free loopback port unless overridden."""
    data: dict[str, Any] = {
        "milter": {"listen": ["inet:127.0.0.1:0"], **(milter or {})},
        "static": {"posters": POSTERS},
        **sections,
    }
    return parse_config(data, "<test>")


@contextmanager
def run_daemon(
    config: Config,
    backend: FactSource | None = None,
    build: BuildService = build_milter_service,
) -> Iterator[Daemon]:
    """Start the service *build* makes (the milter's by default) in a thread; stop (drain)
    it on exit."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        gate = build_gate(config, backend)
        service = build(config, gate)
        assert service is not None, "the front end is not configured"
        holder.update(loop=asyncio.get_running_loop(), stop=stop, service=service)
        try:
            await service.start()
        except BaseException as exc:
            holder["error"] = exc
            ready.set()
            raise
        ready.set()
        try:
            await stop.wait()
        finally:
            await service.stop()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported through holder
            holder.setdefault("error", exc)
            ready.set()

    thread = threading.Thread(target=target, name="listgate-daemon", daemon=True)
    thread.start()
    assert ready.wait(10), "daemon did not start"
    if "error" in holder:
        raise holder["error"]
    daemon = Daemon(holder["service"], holder["loop"], thread, holder["stop"])
    daemon.addresses = list(daemon.service.addresses)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A daemon with the default test config on a free 127.0.0.1 port."""
    with run_daemon(make_config()) as d:
        yield d


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection to the daemon."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def wait_closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the daemon closes the connection; return what it sent. Fails on timeout."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
