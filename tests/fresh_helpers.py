"""Test helpers for fresh verdicts: listgate's daemon (``listgate.app.serve``) in a thread
of the test process, asked through the milter over loopback, against a real Mailman core
(with or without listgate's plugin feeding the daemon's events listener)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from listgate.app import Daemon, serve
from listgate.config import Config, parse_config
from listgate.milter import Continue, ReplyCode
from tests.integration.frontends import MilterPeer

__all__ = ["DaemonThread", "daemon_config", "follow"]


def daemon_config(url: str, auth: tuple[str, str], **sections: Mapping[str, Any]) -> Config:
    """listgate on a free loopback milter port, over the Mailman core at *url*, with the
    extra *sections* (``cache``, ``events``...)."""
    user, password = auth
    return parse_config({
        "milter": {"listen": ["inet:127.0.0.1:0"]},
        "backend": {"type": "mailman"},
        "mailman": {"url": url, "user": user, "password": password},
        **sections,
    }, "<test>")


class DaemonThread:
    """The whole daemon (``serve``) on its own event loop in a thread; ``verdict`` asks it
    through one milter connection, the way Postfix does (MAIL, RCPT, ABORT)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.daemon: Daemon | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        """One milter connection per asking thread."""
        self._peers: list[MilterPeer] = []

    def start(self, timeout: float = 30.0) -> DaemonThread:
        """Start and wait until every listener is up."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def on_ready(daemon: Daemon) -> None:
            self.daemon = daemon
            ready.set()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.config, self._stop, on_ready=on_ready)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="listgate-daemon", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise failure[0]
        assert self.daemon is not None, "the daemon did not start"
        return self

    @property
    def milter_port(self) -> int:
        """The bound milter port."""
        assert self.daemon is not None
        return int(self.daemon.milter.addresses[0].rsplit(":", 1)[1])

    def verdict(self, sender: str, recipient: str) -> str:
        """"accept", "reject" (5xx) or "tempfail" (4xx) for one RCPT through the milter
        (one connection per calling thread)."""
        peer: MilterPeer | None = getattr(self._local, "peer", None)
        if peer is None:
            peer = self._local.peer = MilterPeer(self.milter_port, timeout=30.0)
            peer.hello()
            self._peers.append(peer)
        reply = peer.ask(sender, recipient)
        if isinstance(reply, Continue):
            return "accept"
        assert isinstance(reply, ReplyCode), reply
        return "reject" if reply.code // 100 == 5 else "tempfail"

    def stop(self) -> None:
        """Drain and stop the daemon."""
        for peer in self._peers:
            peer.close()
        self._peers.clear()
        self._local = threading.local()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
        self._thread = None

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def follow(ask: Callable[[], str], want: str, timeout: float, interval: float = 0.05) -> float:
    """Ask every *interval* seconds until *ask()* answers *want*; the seconds that took
    (from the call). Fails with the answers seen when *timeout* passes first."""
    began = time.monotonic()
    seen: list[str] = []
    while True:
        answer = ask()
        elapsed = time.monotonic() - began
        if answer == want:
            assert elapsed <= timeout, f"{want!r} only {elapsed:.2f} s after the change"
            return elapsed
        seen.append(answer)
        assert elapsed <= timeout, (
            f"still {seen[-1]!r} {elapsed:.2f} s after the change (want {want!r}); "
            f"{len(seen)} asks")
        time.sleep(interval)
