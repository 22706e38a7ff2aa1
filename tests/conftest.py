"""Fixtures shared by every test package (the plain functions behind them live in
``tests/support.py``, importable as ``support``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ListgateServe, free_port


@pytest.fixture
def port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_port()


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
