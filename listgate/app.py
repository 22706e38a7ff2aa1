"""The composition root: configuration → backend → gate → listeners, and the lifecycle.

Invariants:
- This is the only module that turns a ``Config`` into running objects; the layers below
  know nothing of TOML or of each other's construction.
- SIGTERM and SIGINT drain (stop listening, let in-flight commands finish, close); a
  second signal aborts every connection and exits at once.
- Start-up failures (bad listen address, busy socket) surface as ``ListgateError`` with a
  message that names what failed; ``run`` turns them into exit status 1 and one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from listgate.backends.base import MembershipBackend
from listgate.backends.static import StaticBackend
from listgate.config import Config, load_config, password_file_warnings
from listgate.decision.engine import DecideAt
from listgate.decision.gate import Gate
from listgate.errors import ConfigError, ListgateError
from listgate.frontends.milter import milter_options
from listgate.log import setup_logging
from listgate.metrics import Metrics, parse_metrics_listen
from listgate.server.base import StreamService, bind_unix_listener
from listgate.server.milter import MilterService
from listgate.server.notify import notify
from listgate.server.policy import PolicyService
from listgate.server.spec import ListenSpec

__all__ = ["build_gate", "build_policy_service", "create_backend", "run", "serve"]

log = logging.getLogger("listgate")


def create_backend(config: Config) -> MembershipBackend:
    """The membership backend the configuration names (imports only what it needs)."""
    if config.backend.type == "static":
        return StaticBackend(config.static.posters)
    if config.backend.type == "mailman":
        from listgate.backends.cached import CachedBackend
        from listgate.backends.mailman import MailmanSource

        mm = config.mailman
        if mm.password is None:
            raise ListgateError("mailman.password: required when backend.type = \"mailman\"")
        source = MailmanSource(
            mm.url,
            mm.user,
            mm.password.reveal(),
            timeout=mm.timeout,
            max_connections=mm.max_connections,
        )
        return CachedBackend(
            source,
            config.cache,
            directory_file=Path(mm.directory_file) if mm.directory_file else None,
            deadline=mm.timeout,
        )
    raise ListgateError(f"backend.type: unknown backend {config.backend.type!r}")


def build_gate(config: Config, backend: MembershipBackend | None = None) -> Gate:
    """A gate over *backend* (or the configured one) with the configured texts, failure
    policy and per-list overrides."""
    return Gate(
        backend or create_backend(config),
        config.reply,
        config.failure.policy,
        overrides=config.lists,
        default=config.gate,
        bypass=config.bypass,
    )


def needs_headers(config: Config) -> bool:
    """Whether any list decides at end of headers (so the milter must ask for headers)."""
    return config.gate.decide_at is DecideAt.HEADERS or any(
        o.decide_at is DecideAt.HEADERS for o in config.lists.values()
    )


def build_milter_service(config: Config, gate: Gate) -> MilterService:
    """The milter listeners, not yet started."""
    return MilterService(config.milter, gate, headers=needs_headers(config))


def build_policy_service(config: Config, gate: Gate) -> PolicyService | None:
    """The policy listeners, not yet started; None when ``[policy] listen`` is empty.
    Draining uses ``[milter] shutdown_timeout``."""
    p = config.policy
    if not p.listen:
        return None
    return PolicyService(p, gate, shutdown_timeout=config.milter.shutdown_timeout)


class Daemon:
    """The running daemon: listeners, gate, backend and metrics, with reload and drain."""

    def __init__(
        self,
        config: Config,
        path: Path | None = None,
        *,
        inherited: Mapping[tuple[str, ListenSpec], socket.socket] | None = None,
    ) -> None:
        self.config = config
        self.path = path
        self.gate = build_gate(config)
        self.milter = build_milter_service(config, self.gate)
        self.policy = build_policy_service(config, self.gate)
        if inherited is not None:  # one of several worker processes
            for service in self._services():
                service.reuse_port = True
                service.inherited = {
                    spec: sock for (name, spec), sock in inherited.items() if name == service.name
                }
        self.metrics = Metrics()
        self.milter.decisions = self.metrics.decisions
        if self.policy is not None:
            self.policy.decisions = self.metrics.decisions
        self.metrics.services = self._services
        self.metrics.caches = lambda: getattr(self.gate.backend, "caches", ())
        self._watch_backend(self.gate.backend)

    def _services(self) -> tuple[StreamService, ...]:
        return (self.milter,) if self.policy is None else (self.milter, self.policy)

    def _watch_backend(self, backend: MembershipBackend) -> None:
        observe = getattr(backend, "observe_fetches", None)
        if observe is not None:
            observe(self.metrics.backend.observe)

    async def start(self) -> None:
        """Bind every listener and the metrics endpoint, then tell systemd we are ready."""
        for warning in password_file_warnings(self.config):
            log.warning("%s", warning)
        await self.milter.start()
        if self.policy is not None:
            await self.policy.start()
            if needs_headers(self.config):
                log.warning(
                    'policy listener: decide_at = "headers" cannot wait for headers over the '
                    "policy protocol; such senders get DUNNO there and Mailman decides"
                )
        if self.config.metrics.listen:
            host, port = parse_metrics_listen(self.config.metrics.listen)
            try:
                bound = self.metrics.serve(host, port)
            except OSError as exc:
                raise ListgateError(
                    f"metrics: cannot listen on {self.config.metrics.listen}: {exc}"
                ) from None
            log.info("metrics on http://%s:%d/metrics", *bound)
        log.info(
            "listgate ready: backend %s; failure policy %s",
            self.gate.backend.describe(), self.gate.failure_policy.value,
        )
        notify("READY=1", f"STATUS=serving; backend {self.gate.backend.describe()}")

    async def reload(self) -> bool:
        """Re-read the config file (SIGHUP). Overrides, texts, failure policy, bypass,
        cache lifetimes, timeouts and logging change at once, for open connections too;
        listen addresses and the backend's connection settings need a restart. A bad
        file is logged and the running configuration kept."""
        if self.path is None:
            log.warning("reload: listgate runs on the built-in example config; nothing to re-read")
            return False
        notify("RELOADING=1")
        try:
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload failed, keeping the running configuration: %s: %s",
                              exc.source or self.path, problem)
                return False
            self._apply(new)
            log.info("reloaded %s", self.path)
            return True
        finally:
            notify("READY=1")

    def _apply(self, new: Config) -> None:
        old = self.config
        for what, before, after in (
            ("milter.listen", old.milter.listen, new.milter.listen),
            ("milter.socket_mode", old.milter.socket_mode, new.milter.socket_mode),
            ("policy.listen", old.policy.listen, new.policy.listen),
            ("metrics.listen", old.metrics.listen, new.metrics.listen),
            ("milter.max_packet_size", old.milter.max_packet_size, new.milter.max_packet_size),
            ("milter.workers", old.milter.workers, new.milter.workers),
            ("milter.uvloop", old.milter.uvloop, new.milter.uvloop),
        ):
            if before != after:
                log.warning("reload: %s changed; it takes effect at the next restart", what)
        backend = self.gate.backend
        if (new.backend, new.mailman) != (old.backend, old.mailman):
            log.warning("reload: [backend]/[mailman] changed; they take effect at the next restart")
        elif new.backend.type == "static" and new.static != old.static:
            backend = create_backend(new)  # a static map is cheap to rebuild
        reconfigure = getattr(backend, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(new.cache)
        self.gate = build_gate(new, backend)
        m = new.milter
        self.milter.gate = self.gate
        self.milter.config = dataclasses.replace(m, max_packet_size=old.milter.max_packet_size)
        self.milter.options = milter_options(old.milter.max_packet_size, needs_headers(new))
        self.milter.max_connections = m.max_connections
        self.milter.shutdown_timeout = m.shutdown_timeout
        if self.policy is not None:
            self.policy.gate = self.gate
            self.policy.max_connections = new.policy.max_connections
        setup_logging(new.log.level_number, new.log.target, new.log.syslog_address)
        self.config = dataclasses.replace(
            new, milter=dataclasses.replace(new.milter, listen=old.milter.listen,
                                            max_packet_size=old.milter.max_packet_size,
                                            socket_mode=old.milter.socket_mode,
                                            workers=old.milter.workers,
                                            uvloop=old.milter.uvloop),
            policy=dataclasses.replace(new.policy, listen=old.policy.listen),
            metrics=old.metrics, backend=old.backend, mailman=old.mailman,
        )

    async def stop(self) -> None:
        """Stop listening, drain every connection, release the backend."""
        notify("STOPPING=1")
        try:
            await asyncio.gather(*(s.stop() for s in self._services()))
        finally:
            await self.gate.backend.aclose()
            self.metrics.close()
        log.info("stopped")


async def serve(
    config: Config,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Daemon], None] | None = None,
) -> None:
    """Run the daemon until *stop* is set, then drain and return."""
    daemon = Daemon(config)
    try:
        await daemon.start()
        if on_ready is not None:
            on_ready(daemon)
        await stop.wait()
        log.info("shutting down")
    finally:
        await daemon.stop()


def _loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``[milter] uvloop = true``, else None (asyncio's default)."""
    if not config.milter.uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        raise ListgateError(
            "milter.uvloop = true, but uvloop is not installed: pip install 'listgate[uvloop]'"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve_until_signalled(
    config: Config,
    path: Path | None,
    inherited: Mapping[tuple[str, ListenSpec], socket.socket] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    signals_seen = 0
    daemon = Daemon(config, path, inherited=inherited)
    reloading: set[asyncio.Task[bool]] = set()

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info("%s received: draining (send it again to exit at once)", name)
            stop.set()
        else:
            log.warning("%s received again: exiting at once", name)
            assert task is not None
            task.cancel()

    def on_hangup() -> None:
        log.info("SIGHUP received: reloading %s", path or "(no config file)")
        t = loop.create_task(daemon.reload())
        reloading.add(t)
        t.add_done_callback(reloading.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await daemon.start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("shutting down")
    finally:
        await daemon.stop()


def _run_loop(
    config: Config,
    path: Path | None,
    inherited: Mapping[tuple[str, ListenSpec], socket.socket] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            runner.run(_serve_until_signalled(config, path, inherited, on_ready))
    except ListgateError as exc:
        log.error("%s", exc)
        return 1
    except asyncio.CancelledError:
        return 1
    return 0


def run(config: Config, path: Path | None = None) -> int:
    """Run the daemon in the foreground with signal handling; the process exit status.

    SIGTERM/SIGINT drain (a second one exits at once); SIGHUP re-reads *path*. With
    ``[milter] workers`` > 1 this process supervises that many worker processes."""
    if config.milter.workers > 1:
        try:
            return _Supervisor(config, path).run()
        except ListgateError as exc:
            log.error("%s", exc)
            return 1
    return _run_loop(config, path)


class _Supervisor:
    """``[milter] workers`` > 1: fork the workers, pass signals on, replace a worker that
    dies (unless it dies at once: then stop them all and fail).

    inet listeners: every worker binds its own socket with SO_REUSEPORT, so the kernel
    spreads connections over the workers (a port 0 is resolved here first and held until
    the workers listen). unix listeners: bound here once; the workers inherit them.
    Only this process talks to systemd (READY once every worker listens)."""

    RESTART_AFTER = 5.0
    """A worker that dies sooner than this after its start is not replaced."""

    def __init__(self, config: Config, path: Path | None) -> None:
        if config.metrics.listen:
            raise ListgateError(
                "milter.workers: more than 1 worker cannot serve [metrics] listen (each "
                'worker counts only its own decisions): set workers = 1 or listen = ""'
            )
        self.path = path
        self.count = config.milter.workers
        self.inherited: dict[tuple[str, ListenSpec], socket.socket] = {}
        self.reserved: list[socket.socket] = []
        self.unix_paths: list[str] = []
        self.config = self._bind(config)
        self.children: dict[int, tuple[int, float]] = {}
        """pid -> (worker index, start time)."""
        self.stopping = 0
        self.failed = False
        self.ready_r, self.ready_w = os.pipe()

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
        return 1 if self.failed else 0

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                os.environ.pop("NOTIFY_SOCKET", None)
                os.close(self.ready_r)
                for sock in self.reserved:
                    sock.close()

                def ready() -> None:
                    os.write(self.ready_w, bytes((index,)))

                code = _run_loop(self.config, self.path, self.inherited, ready)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
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
        while self.children:
            self._collect(block=True)

    def _collect(self, block: bool) -> None:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.children.clear()
            return
        if pid == 0 or pid not in self.children:
            return
        index, started = self.children.pop(pid)
        if self.stopping:
            return
        code = os.waitstatus_to_exitcode(status)
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
        self._signal_all(signal.SIGTERM)  # a second one makes the workers exit at once

    def _on_hangup(self, signum: int, frame: object) -> None:
        log.info("SIGHUP received: the workers reload %s", self.path or "(no config file)")
        self._signal_all(signal.SIGHUP)

    def _close(self) -> None:
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
