"""The settings a reload cannot change are listed once (``listgate.app.RESTART_ONLY``):
a reload keeps each of them, warns about each one that changed, and applies the rest."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from listgate.app import RESTART_ONLY, RESTART_ONLY_SECTIONS, Daemon, keep_restart_only
from listgate.config import Config, parse_config
from listgate.listen import parse_listen_spec

OLD = parse_config({
    "milter": {"listen": "inet:127.0.0.1:0"},
    "static": {"posters": {"list@example.org": ["member@example.com"]}},
})
NEW = replace(
    OLD,
    milter=replace(OLD.milter, listen=(parse_listen_spec("inet:127.0.0.1:1"),),
                   socket_mode=0o600, max_packet_size=65_536, workers=4, uvloop=False,
                   max_connections=7, idle_timeout=9.0),
    policy=replace(OLD.policy, listen=(parse_listen_spec("inet:127.0.0.1:2"),)),
    metrics=replace(OLD.metrics, listen="127.0.0.1:3"),
    backend=replace(OLD.backend, type="mailman"),
    mailman=replace(OLD.mailman, url="http://127.0.0.1:4/3.1"),
    events=replace(OLD.events, listen="inet:127.0.0.1:5", secret_file="/nonexistent/secret"),
    cache=replace(OLD.cache, redis_url="redis://127.0.0.1:5/0",
                  redis_password_file="/etc/listgate/redis-password", redis_timeout=0.5),
)


def test_every_restart_only_setting_differs_in_the_fixture() -> None:
    """The fixture changes every listed setting (so the tests below can fail)."""
    for section, key in RESTART_ONLY:
        assert getattr(getattr(OLD, section), key) != getattr(getattr(NEW, section), key)
    for section in RESTART_ONLY_SECTIONS:
        assert getattr(OLD, section) != getattr(NEW, section)


def test_keep_restart_only_keeps_the_listed_settings_and_takes_the_rest() -> None:
    """Every RESTART_ONLY setting and section comes from the running config; the other
    settings from the new file."""
    kept = keep_restart_only(NEW, OLD)
    for section, key in RESTART_ONLY:
        assert getattr(getattr(kept, section), key) == getattr(getattr(OLD, section), key)
    for section in RESTART_ONLY_SECTIONS:
        assert getattr(kept, section) == getattr(OLD, section)
    assert (kept.milter.max_connections, kept.milter.idle_timeout) == (7, 9.0)


def test_reload_warns_once_per_restart_only_change(
    caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    """Applying the new config logs one warning per changed setting, in RESTART_ONLY's
    order, and one for [backend]/[mailman]; the daemon's config keeps the running values."""
    daemon = Daemon(OLD)
    with caplog.at_level(logging.WARNING, logger="listgate"):
        daemon._apply(NEW)
    warnings = [r.getMessage() for r in caplog.records if r.name == "listgate"]
    assert warnings == [
        *(f"reload: {s}.{k} changed; it takes effect at the next restart"
          for s, k in RESTART_ONLY),
        "reload: [backend]/[mailman] changed; they take effect at the next restart",
    ]
    assert daemon.config == keep_restart_only(NEW, OLD)
    assert daemon.milter.max_connections == 7
    asyncio.run(daemon.gate.backend.aclose())
    daemon.metrics.close()


def test_defaults_reload_cleanly() -> None:
    """Reloading an unchanged config warns about nothing and changes nothing."""
    assert keep_restart_only(Config(), Config()) == Config()
