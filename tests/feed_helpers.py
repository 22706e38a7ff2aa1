"""Test helpers for the change feed: a recording ``Invalidator``, listgate's events listener
run in a thread of the test process, and a real Mailman core with listgate's plugin
enabled (the plugin reaches Mailman's processes through PYTHONPATH, pointing at a directory
that holds only a link to this checkout's ``listgate`` package, so Mailman's own venv is
never modified and listgate's dependencies stay absent there, as after ``pip install
--no-deps``)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailman_harness import REPO_ROOT, MailmanCore, free_port

from listgate.events import FeedHealth
from listgate.listen import ListenSpec
from listgate.server.events import EventsListener


@dataclass(frozen=True)
class Call:
    """One ``Invalidator`` call: its method name (without ``invalidate_``) and arguments."""

    kind: str
    keys: tuple[str, ...] = ()
    at: float = 0.0


class Recorder:
    """An ``Invalidator`` that records every call (thread-safe) and lets a test wait."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._cond = threading.Condition()

    def _add(self, kind: str, keys: Iterable[str] = ()) -> None:
        with self._cond:
            self.calls.append(Call(kind, tuple(keys), time.monotonic()))
            self._cond.notify_all()

    def invalidate_lists(self, list_ids: Iterable[str]) -> None:
        self._add("lists", list_ids)

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        self._add("addresses", addresses)

    def invalidate_directory(self) -> None:
        self._add("directory")

    def invalidate_global_bans(self) -> None:
        self._add("global_bans")

    def invalidate_all(self) -> None:
        self._add("all")

    def mark(self) -> int:
        """An index: calls recorded after it are ``since(mark)``."""
        with self._cond:
            return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        with self._cond:
            return list(self.calls[mark:])

    def wait_for(self, mark: int, want: Callable[[list[Call]], bool], timeout: float) -> bool:
        """True as soon as ``want(calls since mark)`` holds; False after *timeout* s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not want(self.calls[mark:]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


def covers(kind: str, *keys: str) -> Callable[[list[Call]], bool]:
    """A ``wait_for`` test: some call of *kind* (or ``all``) names every one of *keys*."""

    def want(calls: list[Call]) -> bool:
        return any(c.kind == "all" or (c.kind == kind and set(keys) <= set(c.keys))
                   for c in calls)

    return want


class ListenerThread:
    """listgate's ``EventsListener`` on 127.0.0.1:*port*, in its own thread and loop."""

    def __init__(self, port: int, secret: bytes, invalidator: Recorder, **kwargs: object) -> None:
        self.port = port
        self.secret = secret
        self.invalidator = invalidator
        self.kwargs = kwargs
        self.listener: EventsListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self.listener = EventsListener(
                    ListenSpec("inet", "127.0.0.1", self.port, ""), self.secret,
                    self.invalidator, **self.kwargs,  # type: ignore[arg-type]
                )
                loop.run_until_complete(self.listener.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.listener.aclose())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="events-listener", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def health(self) -> FeedHealth:
        assert self.listener is not None
        return self.listener.health


class Unresponsive:
    """A TCP listener on 127.0.0.1:*port* that accepts every connection and never answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(5)


@dataclass
class FeedWorld:
    """A Mailman core with the plugin, the listener it notifies, and what that recorded."""

    core: MailmanCore
    recorder: Recorder
    listener: ListenerThread
    secret: bytes
    port: int
    plugin_config: Path


def plugin_site(base: Path) -> Path:
    """A directory to put on Mailman's PYTHONPATH that holds only ``listgate``."""
    site = base / "site"
    site.mkdir(exist_ok=True)
    link = site / "listgate"
    if not link.exists():
        link.symlink_to(REPO_ROOT / "listgate", target_is_directory=True)
    return site


def plugin_config(base: Path, notify: Iterable[str], secret_file: Path, *,
                  heartbeat: float = 1.0, timeout: float = 0.5) -> tuple[Path, str]:
    """The plugin's configuration file and the ``mailman.cfg`` section that enables it."""
    cfg = base / "mailman-plugin.cfg"
    cfg.write_text(
        "[listgate]\n"
        f"notify: {' '.join(notify)}\n"
        f"secret_file: {secret_file}\n"
        f"heartbeat: {heartbeat:g}\n"
        f"timeout: {timeout:g}\n"
    )
    section = (
        "[plugin.listgate]\n"
        "class: listgate.mailman_plugin.ListgatePlugin\n"
        "enabled: yes\n"
        f"configuration: {cfg}\n"
    )
    return cfg, section


@contextlib.contextmanager
def feed_world(base: Path, *, runners: tuple[str, ...] = ()) -> Iterator[FeedWorld]:
    """A running :class:`FeedWorld` (the listener starts first); all stopped at the end.

    The plugin notifies two URLs: the listener, and a port where nothing listens (a second
    listgate host that is down), which must cost the first nothing."""
    base.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    secret_file = base / "events-secret"
    secret_file.write_bytes(secret + b"\n")
    port, dead = free_port(), free_port()
    cfg, section = plugin_config(
        base, [f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{dead}/"], secret_file
    )
    recorder = Recorder()
    listener = ListenerThread(port, secret, recorder, request_timeout=1.0)
    listener.start()
    core = MailmanCore(base / "core", extra_config=section, runners=runners,
                       pythonpath=[plugin_site(base)])
    try:
        core.start()
        yield FeedWorld(core, recorder, listener, secret, port, cfg)
    finally:
        core.close()
        listener.stop()
