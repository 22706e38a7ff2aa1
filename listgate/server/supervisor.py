"""The fork supervisor: ``[milter] workers`` > 1 processes serving the same listeners.

Invariants:
- Only the supervising process talks to systemd (READY once every worker listens,
  STOPPING on the first SIGTERM/SIGINT); workers have ``NOTIFY_SOCKET`` removed.
- ``max_connections`` counts the connections of every worker (``SharedCount``); a
  replaced worker's slot starts at 0.
- Only the supervising process serves ``[metrics] listen``: each scrape sums what every
  worker reports over its private link (``listgate.metrics.WorkerScrapes``); a worker
  answers on its link and binds no metrics port.
- SIGTERM/SIGINT are passed on to every worker (a second one, passed on as SIGINT so
  that it cannot merge with the first, makes them exit at once);
  the exit status is 1 if a worker stopped with a failure. SIGHUP is passed on (each
  worker reloads the file itself): RELOADING=1 at once, READY=1 once every worker has
  reported its reload over the ready pipe (or after ``RELOAD_WAIT``).
- A worker that dies later than ``RESTART_AFTER`` after its start is replaced; one that
  dies sooner stops them all, and the supervisor exits 1. A worker whose change-feed
  link failed (it no longer follows the feed) is told to drain and exit (SIGTERM), and
  is replaced once it has.
- A worker does not outlive its supervisor: on Linux the kernel sends it SIGTERM when
  the supervisor dies, even by SIGKILL (``PR_SET_PDEATHSIG``), and it drains and exits;
  a worker whose supervisor was already gone when it started exits at once. Orphaned
  workers would go on answering on the shared port with an old configuration, next to
  a restarted listgate.
- With ``[events] listen`` (Mailman backend) only the supervising process listens for
  the change feed and relays each accepted message to every worker
  (``listgate.server.feedrelay``); a SIGHUP re-reads ``[events] max_silence`` for it.
- The supervisor imports no application module: what a worker runs is handed in
  (``RunWorker``), so dependencies point down from ``listgate.app``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from listgate.config import Config, load_config, worker_count
from listgate.errors import ListgateError
from listgate.events import EventError, read_secret
from listgate.listen import ListenSpec, parse_listen_spec, parse_metrics_listen
from listgate.metrics import FeedCollector, WorkerScrapes
from listgate.server.base import SHARED_COUNTS, SharedCount, bind_unix_listener
from listgate.server.feedrelay import FeedRelay
from listgate.server.notify import notify

__all__ = ["Inherited", "RunWorker", "Supervisor"]

log = logging.getLogger("listgate")

_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals the supervisor passes on to the workers."""

_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies (Linux)."""


def _die_with_parent(parent: int) -> bool:
    """Have the kernel send SIGTERM to this process (a worker just forked) when *parent*
    dies (Linux; elsewhere nothing); False if *parent* is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent  # checked after: the parent may have died before


Inherited = Mapping[tuple[str, ListenSpec], socket.socket]
"""Listening sockets a worker inherits, by (service name, listen spec)."""

RunWorker = Callable[
    [Config, Path | None, Inherited, Callable[[], None], socket.socket | None,
     socket.socket | None],
    int,
]
"""Runs one worker until it stops: (config, config path, inherited sockets, ready
callback, the link to answer the supervisor's metrics scrapes on (None without
``[metrics] listen``), the link the change feed is relayed on (None without
``[events] listen``)) -> exit status."""


class Supervisor:
    """``[milter] workers`` > 1: fork the workers, pass signals on, replace a worker that
    dies (unless it dies at once: then stop them all and fail).

    inet listeners: every worker binds its own socket with SO_REUSEPORT, so the kernel
    spreads connections over the workers (a port 0 is resolved here first and held until
    the workers listen). unix listeners: bound here once; the workers inherit them.
    Only this process talks to systemd (READY once every worker listens)."""

    RESTART_AFTER = 5.0
    """A worker that dies sooner than this after its start is not replaced."""
    RELOAD_WAIT = 60.0
    """Seconds to wait for every worker's reload before telling systemd READY anyway."""

    def __init__(self, config: Config, path: Path | None, run_worker: RunWorker) -> None:
        self.path = path
        self.run_worker = run_worker
        self.count = worker_count(config.milter.workers)
        self.inherited: dict[tuple[str, ListenSpec], socket.socket] = {}
        self.reserved: list[socket.socket] = []
        self.unix_paths: list[str] = []
        self.config = self._bind(config)
        self.children: dict[int, tuple[int, float]] = {}
        """pid -> (worker index, start time)."""
        self.stopping = 0
        self.failed = False
        self.stop_failed = False
        """A worker exited with a failure while stopping (a second signal)."""
        self.reloading: set[int] = set()
        """Workers whose reload has not been reported yet."""
        self.retiring: set[int] = set()
        """Pids of workers told to drain and exit, to be replaced (a lost feed link)."""
        self.reload_deadline = 0.0
        self.ready_r, self.ready_w = os.pipe()
        self.counts = {name: SharedCount(self.count) for name in ("milter", "policy")}
        """Each service's connections in every worker (max_connections is for all)."""
        self.scrapes: WorkerScrapes | None = None
        self._metrics_server: Any = None
        self.feed_relay: FeedRelay | None = None
        """The change feed's listener, relaying to the workers (``[events] listen``)."""
        try:
            if config.events.listen and config.backend.type == "mailman":
                self.feed_relay = self._relay_feed(config)
            if config.metrics.listen:
                self._serve_metrics(config.metrics.listen)
        except BaseException:
            self._close()
            raise

    @staticmethod
    def _relay_feed(config: Config) -> FeedRelay:
        """Listen for the change feed here, for every worker (bound before any fork)."""
        e = config.events
        try:
            secret = read_secret(e.secret_file)
        except EventError as exc:
            raise ListgateError(f"events: {exc}") from None
        relay = FeedRelay(parse_listen_spec(e.listen.strip()), secret, e.max_silence)
        try:
            relay.start()
        except BaseException:
            relay.close()
            raise
        log.info("change feed relayed to every worker")
        return relay

    def _serve_metrics(self, listen: str) -> None:
        """Serve /metrics here, summed over the workers (bound before any fork)."""
        scrapes = WorkerScrapes()
        registry = CollectorRegistry()
        registry.register(scrapes)
        relay = self.feed_relay
        if relay is not None:  # the workers that follow it export no feed metrics
            registry.register(FeedCollector(lambda: relay.health, relay.healthy))
        host, port = parse_metrics_listen(listen)
        try:
            server, _thread = start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise ListgateError(f"metrics: cannot listen on {listen}: {exc}") from None
        self.scrapes = scrapes
        self._metrics_server = server
        bound = server.server_address
        log.info("metrics on http://%s:%d/metrics (summed over the workers)",
                 bound[0], bound[1])

    def _bind(self, config: Config) -> Config:
        def resolve(name: str, specs: tuple[ListenSpec, ...], mode: int) -> tuple[ListenSpec, ...]:
            out = []
            for spec in specs:
                if spec.family == "unix":
                    self.inherited[(name, spec)] = bind_unix_listener(name, spec, mode)
                    self.unix_paths.append(spec.path)
                elif spec.port == 0:  # pick the port here, so that every worker shares it
                    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    try:
                        sock.bind((spec.host, 0))
                    except OSError as exc:
                        sock.close()
                        raise ListgateError(f"{name}: cannot listen on {spec}: {exc}") from None
                    self.reserved.append(sock)
                    spec = dataclasses.replace(spec, port=sock.getsockname()[1])
                out.append(spec)
            return tuple(out)

        try:
            milter = resolve("milter", config.milter.listen, config.milter.socket_mode)
            policy = resolve("policy", config.policy.listen, config.policy.socket_mode)
        except BaseException:
            self._close()
            raise
        return dataclasses.replace(
            config,
            milter=dataclasses.replace(config.milter, listen=milter),
            policy=dataclasses.replace(config.policy, listen=policy),
        )

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {signum: signal.getsignal(signum) for signum in handled}
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            for index in range(self.count):
                self._spawn(index)
            if self._wait_ready():
                for sock in self.reserved:
                    sock.close()
                self.reserved.clear()
                log.info("listgate supervising %d workers", self.count)
                notify("READY=1", f"STATUS=serving with {self.count} workers")
            self._reap()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close()
        return 1 if self.failed or self.stop_failed else 0

    def _spawn(self, index: int) -> None:
        link = self.scrapes.link(index) if self.scrapes is not None else None
        feed_link = self.feed_relay.link(index) if self.feed_relay is not None else None
        for count in self.counts.values():
            count.slots[index] = 0  # what a worker that died held is gone with it
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Held until the worker's loop handles them (listgate.app unblocks them):
                # a SIGTERM during its start-up (the supervisor's, or the kernel's when the
                # supervisor dies) drains it instead of killing it.
                signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
                for signum in _PASSED_ON:
                    signal.signal(signum, signal.SIG_DFL)
                if not _die_with_parent(parent):
                    code = 0
                    return  # the supervisor is gone: nothing to serve for (os._exit below)
                os.environ.pop("NOTIFY_SOCKET", None)
                os.close(self.ready_r)
                for sock in self.reserved:
                    sock.close()
                for name, count in self.counts.items():
                    count.index = index
                    SHARED_COUNTS[name] = count
                if self.scrapes is not None:  # the supervisor's ends and its HTTP socket
                    self.scrapes.close_after_fork()
                    self._metrics_server.socket.close()
                if self.feed_relay is not None:  # the same for the feed
                    self.feed_relay.close_in_worker()

                def ready() -> None:
                    os.write(self.ready_w, bytes((index,)))

                code = self.run_worker(self.config, self.path, self.inherited, ready, link,
                                       feed_link)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for end in (link, feed_link):
            if end is not None:
                end.close()
        self.children[pid] = (index, time.monotonic())

    def _wait_ready(self) -> bool:
        """Wait until every worker listens; False (all stopped) if one fails first."""
        ready: set[int] = set()
        deadline = time.monotonic() + 60.0
        while len(ready) < self.count:
            if self.stopping or self.failed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("workers did not start within 60 s; stopping")
                self._fail()
                return False
            readable, _, _ = select.select([self.ready_r], [], [], min(left, 0.1))
            if readable:
                ready.update(os.read(self.ready_r, 64))
            self._collect(block=False)
        return True

    def _reap(self) -> None:
        """Until every worker has exited: collect exits and replace workers, and count
        the reloads the workers report."""
        while self.children:
            try:
                readable, _, _ = select.select([self.ready_r], [], [], 0.2)
            except OSError:
                readable = []
            if readable:
                self.reloading.difference_update(os.read(self.ready_r, 64))
            if self.reload_deadline and (
                    not self.reloading or time.monotonic() > self.reload_deadline):
                self.reload_deadline = 0.0
                self.reloading.clear()
                notify("READY=1")
            if self.feed_relay is not None:
                for index in self.feed_relay.lost_links():
                    self._retire(index)
            while self.children:
                before = len(self.children)
                self._collect(block=False)
                if len(self.children) >= before:
                    break

    def _retire(self, index: int) -> None:
        """Have worker *index*, which lost its change-feed link, drain and exit; it is
        replaced when it has (``_collect``)."""
        if self.stopping:
            return
        for pid, (child, _started) in self.children.items():
            if child == index and pid not in self.retiring:
                log.warning("worker %d lost its change-feed link: it drains and a new "
                            "worker replaces it", index)
                self.retiring.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _collect(self, block: bool) -> None:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.children.clear()
            return
        if pid == 0 or pid not in self.children:
            return
        index, started = self.children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        self.reloading.discard(index)
        retired = pid in self.retiring
        self.retiring.discard(pid)
        if self.stopping:
            if code != 0:
                self.stop_failed = True
            return
        if retired and code == 0:
            log.info("worker %d drained; starting its replacement", index)
            self._spawn(index)
            return
        if time.monotonic() - started < self.RESTART_AFTER or self.failed:
            log.error("worker %d exited (status %d) right after it started; stopping", index, code)
            self._fail()
            return
        log.error("worker %d exited unexpectedly (status %d); starting a new one", index, code)
        self._spawn(index)

    def _fail(self) -> None:
        self.failed = True
        self.stopping += 1
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping += 1
        if self.stopping == 1:
            log.info("%s received: draining the workers", signal.Signals(signum).name)
            notify("STOPPING=1")
        else:
            log.warning("%s received again: exiting at once", signal.Signals(signum).name)
        # The second one makes the workers exit at once. It goes as SIGINT (handled like
        # SIGTERM): two SIGTERMs sent close together can reach a worker as one.
        self._signal_all(signal.SIGTERM if self.stopping == 1 else signal.SIGINT)

    def _on_hangup(self, signum: int, frame: object) -> None:
        log.info("SIGHUP received: the workers reload %s", self.path or "(no config file)")
        if self.path is not None:
            notify("RELOADING=1")
            if self.feed_relay is not None:  # a bad file: the workers say why, and keep theirs
                with contextlib.suppress(ListgateError, OSError):
                    self.feed_relay.max_silence = load_config(self.path).events.max_silence
            self.reloading = {index for index, _ in self.children.values()}
            self.reload_deadline = time.monotonic() + self.RELOAD_WAIT
        self._signal_all(signal.SIGHUP)

    def _close(self) -> None:
        relay = getattr(self, "feed_relay", None)
        if relay is not None:
            relay.close()
            self.feed_relay = None
        server = getattr(self, "_metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        if getattr(self, "scrapes", None) is not None:
            self.scrapes.close()  # type: ignore[union-attr]
        for sock in (*self.inherited.values(), *self.reserved):
            sock.close()
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.unix_paths.clear()
        for fd in (getattr(self, "ready_r", -1), getattr(self, "ready_w", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.ready_r = self.ready_w = -1
