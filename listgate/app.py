"""The composition root: configuration → backend → gate → listeners, and the lifecycle.

Invariants:
- This is the only module that turns a ``Config`` into running objects (the backend
  through the table in ``listgate.facts.registry``); the layers below know nothing of
  TOML or of each other's construction.
- One lifecycle, ``serve``: tests and production (``run``, and every worker process of
  ``listgate.server.supervisor``) start, reload and drain the daemon through it.
- The settings a reload cannot change are listed once, in ``RESTART_ONLY``.
- SIGTERM and SIGINT drain (stop listening, let in-flight commands finish, close); a
  second signal aborts every connection and exits at once.
- Start-up failures (bad listen address, busy socket) surface as ``ListgateError`` with a
  message that names what failed; ``run`` turns them into exit status 1 and one log line.
- The change feed (``[events] listen``, Mailman backend only) starts with the other
  listeners and stops with them; its address and secret are restart-only, its
  ``max_silence`` follows a reload. Its messages drop facts from whichever backend the
  daemon holds at the time (``listgate.facts.feed``), and the backend lets the feed vouch
  for old facts behind a reject while it is healthy. With several workers the supervisor
  listens and each worker follows its relay (``FeedFollower``) the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from listgate.compiled import describe as core_build
from listgate.config import (
    AuthSource,
    Config,
    config_warnings,
    load_config,
    requires_authentication,
    worker_count,
)
from listgate.decision.auth import Authenticates
from listgate.decision.engine import DecideAt
from listgate.decision.facts import FactSource
from listgate.decision.gate import Gate
from listgate.errors import ConfigError, ListgateError
from listgate.events import EventError, read_secret
from listgate.facts.contract import Backend
from listgate.facts.feed import FeedCoverage, FeedInvalidator
from listgate.facts.registry import create_backend
from listgate.frontends.milter import AuthStage, milter_options
from listgate.listen import parse_listen_spec, parse_metrics_listen
from listgate.log import flush_lines, setup_logging
from listgate.metrics import Metrics
from listgate.server.base import StreamService, ensure_fd_limit
from listgate.server.events import EventsListener, FeedFollower, FeedMonitor
from listgate.server.milter import MilterService
from listgate.server.notify import notify
from listgate.server.policy import PolicyService
from listgate.server.supervisor import Inherited, Supervisor

__all__ = [
    "RESTART_ONLY",
    "Daemon",
    "build_gate",
    "build_policy_service",
    "create_backend",
    "keep_restart_only",
    "run",
    "serve",
]

log = logging.getLogger("listgate")


def build_gate(
    config: Config,
    backend: FactSource | None = None,
    authenticator: Authenticates | None = None,
) -> Gate:
    """A gate over *backend* (or the configured one) with the configured texts, failure
    policy and per-list overrides, and for require_authenticated lists *authenticator*
    (or one checking as ``[auth]`` says)."""
    if authenticator is None and requires_authentication(config):
        from listgate.auth import Authenticator  # DNS and crypto libraries: only if used

        authenticator = Authenticator(config.auth)
    return Gate(
        backend or create_backend(config),
        config.reply,
        config.failure.policy,
        overrides=config.lists,
        default=config.gate,
        bypass=config.bypass,
        authenticator=authenticator,
    )


def auth_stage(config: Config) -> AuthStage | None:
    """What evidence the milter gathers: none unless a list requires authentication;
    the whole message when listgate verifies DKIM itself, else the headers."""
    if not requires_authentication(config):
        return None
    if config.auth.source is AuthSource.VERIFY:
        return AuthStage.MESSAGE
    return AuthStage.HEADERS


def needs_headers(config: Config) -> bool:
    """Whether any list decides at end of headers (so the milter must ask for headers)."""
    return config.gate.decide_at is DecideAt.HEADERS or any(
        o.decide_at is DecideAt.HEADERS for o in config.lists.values()
    )


def build_milter_service(config: Config, gate: Gate) -> MilterService:
    """The milter listeners, not yet started."""
    return MilterService(config.milter, gate, headers=needs_headers(config),
                         auth=auth_stage(config), max_message=config.auth.max_message_size)


def build_policy_service(config: Config, gate: Gate) -> PolicyService | None:
    """The policy listeners, not yet started; None when ``[policy] listen`` is empty.
    Draining uses ``[milter] shutdown_timeout``."""
    p = config.policy
    if not p.listen:
        return None
    return PolicyService(p, gate, shutdown_timeout=config.milter.shutdown_timeout)


def build_events_listener(config: Config, backend: Callable[[], Backend]) -> EventsListener:
    """The change feed's listener on ``[events] listen``, dropping facts from *backend()*,
    not yet started."""
    e = config.events
    try:
        secret = read_secret(e.secret_file)
    except EventError as exc:
        raise ListgateError(f"events: {exc}") from None
    return EventsListener(parse_listen_spec(e.listen.strip()), secret,
                          FeedInvalidator(backend), max_silence=e.max_silence)


RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("milter", "listen"),
    ("milter", "socket_mode"),
    ("policy", "listen"),
    ("metrics", "listen"),
    ("milter", "max_packet_size"),
    ("milter", "workers"),
    ("milter", "uvloop"),
    ("events", "listen"),
    ("events", "secret_file"),
    ("cache", "redis_url"),
    ("cache", "redis_password_file"),
    ("cache", "redis_timeout"),
)
"""(section, key) of the settings bound at start (sockets, the negotiated packet size,
processes, the event loop): a reload warns when one changed and keeps the running value."""

RESTART_ONLY_SECTIONS = ("backend", "mailman")
"""Whole sections a reload keeps (the backend's connection settings)."""


def client_connections(config: Config) -> int:
    """The client connections the config allows at once, all services together."""
    return config.milter.max_connections + (
        config.policy.max_connections if config.policy.listen else 0)


def check_fd_limit(config: Config) -> None:
    """Make room for ``client_connections`` open files, or log why there is none."""
    problem = ensure_fd_limit(client_connections(config))
    if problem is not None:
        log.warning("%s", problem)


def keep_restart_only(new: Config, old: Config) -> Config:
    """*new* with every ``RESTART_ONLY`` setting and section taken from *old*."""
    sections: dict[str, object] = {name: getattr(old, name) for name in RESTART_ONLY_SECTIONS}
    for section, key in RESTART_ONLY:
        current = sections.get(section, getattr(new, section))
        sections[section] = dataclasses.replace(  # type: ignore[type-var]
            current, **{key: getattr(getattr(old, section), key)})
    return dataclasses.replace(new, **sections)  # type: ignore[arg-type]


class Daemon:
    """The running daemon: listeners, gate, backend and metrics, with reload and drain."""

    def __init__(
        self,
        config: Config,
        path: Path | None = None,
        *,
        inherited: Inherited | None = None,
        metrics_link: socket.socket | None = None,
        feed_link: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.path = path
        self.metrics_link = metrics_link
        """A worker's link to the supervisor, which serves [metrics] listen for all."""
        self.at_once = False
        """Stop without draining: a second SIGTERM/SIGINT came (also when it came before
        the drain began, as when both are handled in one turn of the loop)."""
        self.after_reload: Callable[[], None] | None = None
        """Called after each reload attempt (a worker tells its supervisor)."""
        self.worker = inherited is not None
        """One of several worker processes (the supervisor logs the config warnings)."""
        self.backend: Backend = create_backend(config)
        self.gate = build_gate(config, self.backend)
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
        self.metrics.caches = lambda: self.backend.caches()
        self.metrics.refetches = lambda: self.backend.reject_refetches()
        self.metrics.tier_stats = lambda: self.backend.tier_stats()
        self.backend.observe_fetches(self.metrics.backend.observe)
        self.events: EventsListener | FeedFollower | None = None
        """The change feed's listener (``[events] listen`` with the Mailman backend), or
        in a worker the follower of the supervisor's relay."""
        self.feed: FeedCoverage | None = None
        self._feed_monitor: FeedMonitor | None = None
        if feed_link is not None:  # a worker: the supervisor logs and exports the feed
            follower = self.events = FeedFollower(
                feed_link, FeedInvalidator(lambda: self.backend),
                max_silence=config.events.max_silence)
            self.feed = FeedCoverage(lambda: follower.health, config.events.max_silence)
            self.backend.follow_feed(self.feed)
        elif config.events.listen and config.backend.type == "mailman":
            events = self.events = build_events_listener(config, lambda: self.backend)
            feed = self.feed = FeedCoverage(lambda: events.health, config.events.max_silence)
            self._feed_monitor = FeedMonitor(feed, min(1.0, config.events.max_silence / 4))
            self.backend.follow_feed(feed)
            self.metrics.feed = lambda: events.health
            self.metrics.feed_healthy = feed.healthy

    def _services(self) -> tuple[StreamService, ...]:
        return (self.milter,) if self.policy is None else (self.milter, self.policy)

    async def start(self) -> None:
        """Bind every listener and the metrics endpoint, then tell systemd we are ready."""
        if not self.worker:
            for warning in config_warnings(self.config):
                log.warning("%s", warning)
        await self.milter.start()
        if self.policy is not None:
            await self.policy.start()
        if self.events is not None:
            try:
                await self.events.start()
            except OSError as exc:
                raise ListgateError(
                    f"events: cannot listen on {self.config.events.listen}: {exc}"
                ) from None
            if self._feed_monitor is not None:
                self._feed_monitor.start()
        if self.metrics_link is not None:
            self.metrics.answer(self.metrics_link)
        elif self.config.metrics.listen:
            host, port = parse_metrics_listen(self.config.metrics.listen)
            try:
                bound = self.metrics.serve(host, port)
            except OSError as exc:
                raise ListgateError(
                    f"metrics: cannot listen on {self.config.metrics.listen}: {exc}"
                ) from None
            log.info("metrics on http://%s:%d/metrics", *bound)
        log.info(
            "listgate ready: backend %s; failure policy %s; core %s",
            self.gate.backend.describe(), self.gate.failure_policy.value, core_build(),
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
            if self.after_reload is not None:
                self.after_reload()

    def _apply(self, new: Config) -> None:
        old = self.config
        for section, key in RESTART_ONLY:
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key):
                log.warning("reload: %s.%s changed; it takes effect at the next restart",
                            section, key)
        backend = self.backend
        if any(getattr(new, s) != getattr(old, s) for s in RESTART_ONLY_SECTIONS):
            log.warning("reload: [backend]/[mailman] changed; they take effect at the next restart")
        elif new.backend.type == "static" and new.static != old.static:
            backend = create_backend(new)  # a static map is cheap to rebuild
        backend.reconfigure(new.cache)
        if backend is not self.backend:
            backend.follow_feed(self.feed)
        if self.feed is not None:
            self.feed.max_silence = new.events.max_silence
        if self.events is not None:  # what counts as a silence for FeedHealth.resumed
            self.events.state.max_silence = new.events.max_silence
        self.backend = backend
        self.gate = build_gate(new, backend)
        kept = keep_restart_only(new, old)
        m = kept.milter
        self.milter.gate = self.gate
        self.milter.config = m
        self.milter.auth = auth_stage(new)
        self.milter.max_message = new.auth.max_message_size
        self.milter.options = milter_options(m.max_packet_size, needs_headers(new),
                                             self.milter.auth)
        if client_connections(new) > client_connections(old):
            check_fd_limit(new)
        self.milter.max_connections = m.max_connections
        self.milter.shutdown_timeout = m.shutdown_timeout
        if self.policy is not None:
            self.policy.gate = self.gate
            self.policy.max_connections = new.policy.max_connections
        setup_logging(new.log.level_number, new.log.target, new.log.syslog_address)
        self.config = kept

    async def stop(self) -> None:
        """Stop listening, drain every connection, release the backend."""
        notify("STOPPING=1")
        try:
            drain = 0.0 if self.at_once else None  # 0: close every connection now
            await asyncio.gather(*(s.stop(drain) for s in self._services()))
        finally:
            if self._feed_monitor is not None:
                await self._feed_monitor.aclose()
            if self.events is not None:
                await self.events.aclose()
            await self.gate.backend.aclose()
            self.metrics.close()
        log.info("stopped")


async def serve(
    config: Config,
    stop: asyncio.Event | None = None,
    *,
    path: Path | None = None,
    inherited: Inherited | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
    handle_signals: bool = False,
    metrics_link: socket.socket | None = None,
    feed_link: socket.socket | None = None,
) -> None:
    """Run the daemon until *stop* is set (or, with *handle_signals*, until SIGTERM or
    SIGINT), then drain and return. The one lifecycle: tests call it with a *stop* event,
    ``run`` (and each worker process) with *handle_signals*.

    With *handle_signals* (main thread only): SIGTERM/SIGINT drain, a second one cancels
    this task (exit at once); SIGHUP re-reads *path*. *on_ready* is called once every
    listener and the metrics endpoint are up."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    daemon = Daemon(config, path, inherited=inherited, metrics_link=metrics_link,
                    feed_link=feed_link)
    handled: tuple[signal.Signals, ...] = ()
    if handle_signals:
        handled = _handle_signals(loop, stop, daemon, path)
    try:
        try:
            await daemon.start()
            if on_ready is not None:
                on_ready(daemon)
            await stop.wait()
            log.info("shutting down")
        finally:
            await daemon.stop()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def _handle_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, daemon: Daemon, path: Path | None
) -> tuple[signal.Signals, ...]:
    """Install the daemon's signal handlers on *loop*; the signals handled."""
    task = asyncio.current_task()
    signals_seen = 0
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
            daemon.at_once = True  # the drain may not have begun yet: it must not
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
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)  # a new worker holds them until now
    return handled


_uvloop_missing_logged = False


def _loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``[milter] uvloop = true`` (the default) and uvloop imports,
    else None (asyncio's own loop; a missing uvloop is logged once, at WARNING)."""
    global _uvloop_missing_logged
    if not config.milter.uvloop:
        return None
    try:
        import uvloop
    except ImportError as exc:
        if not _uvloop_missing_logged:  # once: the supervisor's line covers its workers
            _uvloop_missing_logged = True
            log.warning("uvloop is not available (%s): running on asyncio's own event loop; "
                        "set [milter] uvloop = false to say so", exc)
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_loop(
    config: Config,
    path: Path | None,
    inherited: Inherited | None = None,
    on_ready: Callable[[], None] | None = None,
    metrics_link: socket.socket | None = None,
    feed_link: socket.socket | None = None,
) -> int:
    """``serve`` with signal handling on a new event loop; the exit status."""
    def ready(daemon: Daemon) -> None:
        if on_ready is not None:
            on_ready()
            daemon.after_reload = on_ready  # a worker: the supervisor counts reloads too

    try:
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            runner.run(serve(config, path=path, inherited=inherited, on_ready=ready,
                             handle_signals=True, metrics_link=metrics_link,
                             feed_link=feed_link))
    except ListgateError as exc:
        log.error("%s", exc)
        return 1
    except asyncio.CancelledError:
        return 1
    finally:
        flush_lines()  # decision log lines still waiting (a worker ends with os._exit)
    return 0


def run(config: Config, path: Path | None = None) -> int:
    """Run the daemon in the foreground with signal handling; the process exit status.

    SIGTERM/SIGINT drain (a second one exits at once); SIGHUP re-reads *path*. With
    ``[milter] workers`` > 1 (the default "auto" on a machine with several cores) this
    process supervises that many worker processes (``listgate.server.supervisor``), each
    running ``serve``, and serves ``[metrics] listen`` summed over them."""
    check_fd_limit(config)  # before the workers: they inherit the limit
    if worker_count(config.milter.workers) > 1:
        _loop_factory(config)  # a missing uvloop is logged here, once, not by each worker
        for warning in config_warnings(config):
            log.warning("%s", warning)
        try:
            return Supervisor(config, path, _run_loop).run()
        except ListgateError as exc:
            log.error("%s", exc)
            return 1
    return _run_loop(config, path)
