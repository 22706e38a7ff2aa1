"""Fixtures for the differential tests: one Mailman oracle (core + posting runners + SMTP
sink) per session. A missing Mailman venv is a failure, never a skip."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from mailman_harness import INSTALL_HINT, mailman_venv

from .oracle import MailmanOracle


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanOracle]:
    """A running Mailman core that processes posts; its var dir stays in pytest's tmp."""
    runner = mailman_venv() / "bin" / "runner"
    if not os.access(runner, os.X_OK):
        pytest.fail(f"{runner} not found: {INSTALL_HINT}", pytrace=False)
    o = MailmanOracle(tmp_path_factory.mktemp("fidelity-mailman"))
    o.start()
    try:
        yield o
    finally:
        o.stop()
