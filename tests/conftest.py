"""Fixtures shared by every test package (the plain functions behind them live in
``tests/support.py``, importable as ``support``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import AuthDns, start_auth_dns
from support import ListgateServe

from listgate import compiled
from listgate.log import THIRD_PARTY_LOGGERS


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a stale build: a compiled module older than its source would run
    the old code under the new test."""
    if stale := compiled.stale():
        pytest.exit(f"compiled modules older than their sources: {', '.join(stale)}; rebuild "
                    "with `.venv/bin/pip install -e .` or test the sources with "
                    f"{compiled.PURE_ENV}=1", returncode=2)


def pytest_report_header() -> str:
    """Say which build of the core this run tests."""
    return f"listgate core: {compiled.status()}"


@pytest.fixture
def serve_listgate(tmp_path: Path) -> Iterator[Callable[..., ListgateServe]]:
    """Factory: ``serve_listgate(config_text, **options)`` starts ``listgate serve`` on that
    config (options as for ``support.ListgateServe``) in its own directory under
    *tmp_path*; every process it started is stopped (drained) after the test."""
    started: list[ListgateServe] = []

    def start(config: str, **options: Any) -> ListgateServe:
        workdir = tmp_path / f"listgate-{len(started)}"
        workdir.mkdir()
        serve = ListgateServe(workdir, config, **options)
        started.append(serve)
        return serve.start()

    yield start
    for serve in started:
        serve.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo ``setup_logging`` after the test: listgate's handlers removed, the root's
    handlers and level and other libraries' levels as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    others = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    for name, other_level in others.items():
        logging.getLogger(name).setLevel(other_level)
    for h in list(root.handlers):
        if getattr(h, "_listgate", False):
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="session")
def auth_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthDns]:
    """NSD on 127.0.0.1 serving SPF, DKIM key and DMARC records for example.com and
    other.org (tests/dns_server.py), started once per session."""
    dns = start_auth_dns(tmp_path_factory.mktemp("auth-dns"))
    try:
        yield dns
    finally:
        dns.server.stop()
