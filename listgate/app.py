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
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from listgate.backends.base import MembershipBackend
from listgate.backends.static import StaticBackend
from listgate.config import Config
from listgate.engine import DecideAt
from listgate.errors import ListgateError
from listgate.gate import Gate
from listgate.server.milter import MilterLimits, MilterService
from listgate.server.policy import PolicyServerLimits, PolicyService

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
    )


def needs_headers(config: Config) -> bool:
    """Whether any list decides at end of headers (so the milter must ask for headers)."""
    return config.gate.decide_at is DecideAt.HEADERS or any(
        o.decide_at is DecideAt.HEADERS for o in config.lists.values()
    )


def build_milter_service(config: Config, gate: Gate) -> MilterService:
    """The milter listeners, not yet started."""
    m = config.milter
    return MilterService(
        m.listen,
        gate,
        MilterLimits(m.idle_timeout, m.command_timeout, m.max_packet_size),
        max_connections=m.max_connections,
        socket_mode=m.socket_mode,
        shutdown_timeout=m.shutdown_timeout,
        headers=needs_headers(config),
    )


def build_policy_service(config: Config, gate: Gate) -> PolicyService | None:
    """The policy listeners, not yet started; None when ``[policy] listen`` is empty.
    Draining uses ``[milter] shutdown_timeout``."""
    p = config.policy
    if not p.listen:
        return None
    return PolicyService(
        p.listen,
        gate,
        PolicyServerLimits(p.idle_timeout, p.max_line_length, p.max_attributes),
        max_connections=p.max_connections,
        socket_mode=p.socket_mode,
        shutdown_timeout=config.milter.shutdown_timeout,
    )


async def serve(
    config: Config,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[MilterService], None] | None = None,
) -> None:
    """Run the daemon until *stop* is set, then drain and return."""
    gate = build_gate(config)
    service = build_milter_service(config, gate)
    policy = build_policy_service(config, gate)
    try:
        await service.start()
        if policy is not None:
            await policy.start()
            if needs_headers(config):
                log.warning(
                    'policy listener: decide_at = "headers" cannot wait for headers over the '
                    "policy protocol; such senders get DUNNO there and Mailman decides"
                )
        log.info(
            "listgate ready: backend %s; failure policy %s",
            gate.backend.describe(), gate.failure_policy.value,
        )
        if on_ready is not None:
            on_ready(service)
        await stop.wait()
        log.info("shutting down")
    finally:
        if policy is None:
            await service.stop()
        else:
            await asyncio.gather(service.stop(), policy.stop())
        await gate.backend.aclose()
    log.info("stopped")


def run(config: Config) -> int:
    """Run the daemon in the foreground with signal handling; the process exit status."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        signals_seen = 0

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

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except ListgateError as exc:
        log.error("%s", exc)
        return 1
    except asyncio.CancelledError:
        return 1
    return 0
