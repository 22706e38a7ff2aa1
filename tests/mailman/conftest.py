"""Fixtures for tests against a real Mailman 3 core (REST runner from .venv-mailman).

One core per test session (``mailman_core``), a fresh list per test (``mlist``). A missing
Mailman venv is a failure, never a skip: run ``bash .ci/install-test-deps.sh``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

try:
    import httpx
    import mailmanclient  # noqa: F401
except ImportError as e:  # pragma: no cover - an install problem, not a test result
    raise ImportError(
        f"{e}: tests/mailman need mailmanclient==3.3.5 and httpx in listgate's venv"
    ) from e
from mailman_harness import INSTALL_HINT, MailmanCore, mailman_venv
from mailmanclient.restobjects.mailinglist import MailingList


@pytest.fixture(scope="session")
def mailman_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanCore]:
    """The session's Mailman core, running; its var dir stays in pytest's tmp dir."""
    runner = mailman_venv() / "bin" / "runner"
    if not os.access(runner, os.X_OK):
        pytest.fail(f"{runner} not found: {INSTALL_HINT}", pytrace=False)
    core = MailmanCore(tmp_path_factory.mktemp("mailman-core"))
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture(autouse=True)
def _mailman_core_running(mailman_core: MailmanCore) -> Iterator[None]:
    """A test that stopped the core and failed before restarting it does not break the next."""
    yield
    if not mailman_core.is_running:
        mailman_core.start()


@pytest.fixture
def mlist(mailman_core: MailmanCore) -> Iterator[MailingList]:
    """A new, empty list with Mailman's default settings; deleted after the test."""
    ml = mailman_core.new_list()
    try:
        yield ml
    finally:
        if not mailman_core.is_running:
            mailman_core.start()
        mailman_core.delete_list(ml)


@pytest.fixture
def rest(mailman_core: MailmanCore) -> Iterator[httpx.Client]:
    """Raw HTTP (httpx) to the core's REST root ``.../3.1/``, with admin auth."""
    with mailman_core.http() as client:
        yield client
