"""The backend contract: one construction table shared with config validation, declared
capabilities with no-op defaults, and a decision-core contract module that stays pure."""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

import listgate.decision.facts
from listgate.config import BACKEND_TYPES, CacheConfig, parse_config
from listgate.decision.model import PostingRequest
from listgate.errors import ListgateError
from listgate.facts.contract import Backend
from listgate.facts.registry import BACKENDS, create_backend
from listgate.facts.static import StaticBackend
from listgate.mailman.backend import MailmanBackend
from tests.fakes import FakeClock, FakeMailmanRecords


def test_construction_table_has_exactly_configs_backend_types() -> None:
    """Every type config accepts has a factory, and every factory a type config accepts."""
    assert set(BACKENDS) == set(BACKEND_TYPES)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        pytest.param({"static": {"posters": {"l@example.org": ["a@example.org"]}}},
                     StaticBackend, id="static"),
        pytest.param({"backend": {"type": "mailman"},
                      "mailman": {"url": "http://127.0.0.1:9/3.1", "password": "x"}},
                     MailmanBackend, id="mailman"),
    ],
)
def test_each_factory_builds_a_declared_backend(data: dict[str, object], kind: type) -> None:
    """create_backend builds the configured backend, a subclass of the declared contract."""

    async def run() -> Backend:
        backend = create_backend(parse_config(data, "<test>"))
        await backend.aclose()
        return backend

    backend = asyncio.run(run())
    assert type(backend) is kind
    assert Backend in type(backend).__mro__


def test_mailman_without_password_is_refused() -> None:
    """The Mailman factory names the missing key even for a Config built by hand
    (config validation refuses it first in a file)."""
    parsed = parse_config({"backend": {"type": "mailman"},
                           "mailman": {"password": "x"}}, "<test>")
    config = replace(parsed, mailman=replace(parsed.mailman, password=None))
    with pytest.raises(ListgateError, match=r"mailman\.password: required"):
        create_backend(config)


def test_capabilities_default_to_nothing() -> None:
    """A backend without a cache reports no caches and drops nothing, and takes an
    observer and new cache lifetimes without complaint."""
    backend = StaticBackend({"l@example.org": ["a@example.org"]})
    backend.observe_fetches(lambda kind, seconds: None)
    backend.reconfigure(CacheConfig(ttl=1))
    assert backend.caches() == ()
    assert (backend.invalidate("policy", "l.example.org"), backend.invalidate_list("l"),
            backend.invalidate_address("a@example.org"), backend.invalidate_all()) == (0, 0, 0, 0)


def test_mailman_capabilities_reach_its_caches() -> None:
    """The Mailman backend reports its five caches by kind, and reconfigure moves their
    stale-if-error window."""

    async def run() -> MailmanBackend:
        backend = create_backend(parse_config(
            {"backend": {"type": "mailman"},
             "mailman": {"url": "http://127.0.0.1:9/3.1", "password": "x"}}, "<test>"))
        await backend.aclose()
        assert isinstance(backend, MailmanBackend)
        return backend

    backend = asyncio.run(run())
    assert [c.name for c in backend.caches()] == [
        "directory", "policy", "global_bans", "memberships", "linked"]
    backend.reconfigure(CacheConfig(stale_if_error=7))
    assert {c.stale_if_error for c in backend.keys.caches} == {7}


def test_decision_contract_is_pure() -> None:
    """decision/facts.py imports no I/O, no asyncio and no fact source implementation."""
    tree = ast.parse(Path(listgate.decision.facts.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= {"__future__", "enum", "dataclasses", "typing", "collections.abc",
                        "listgate.decision.model", "listgate.decision.recipients",
                        "listgate.decision.rules"}


def test_mailman_backend_invalidation_drops_exactly_the_affected_facts() -> None:
    """The Mailman backend's key space: an address's facts (memberships, linked), a
    list's policy, the directory; each dropped fact is fetched again by the next lookup,
    the others are not. A sender never seen has its linked addresses asked side by side
    with its memberships, member or not (anne's too)."""
    records = FakeMailmanRecords(members=("anne@example.com",))
    lst = FakeMailmanRecords.LIST

    async def run() -> list[tuple[int, dict[str, int]]]:
        backend = MailmanBackend(records, CacheConfig(), clock=FakeClock())
        steps = []

        async def step(dropped: int) -> None:
            before = dict(records.fetches)
            for sender in ("anne@example.com", "eve@example.net"):
                facts = await backend.lookup(PostingRequest(sender, lst))
                assert facts.policy is not None
            steps.append((dropped, {k: n - before.get(k, 0)
                                    for k, n in records.fetches.items()
                                    if n - before.get(k, 0)}))

        await step(0)
        await step(backend.invalidate_address("Eve@Example.NET"))
        await step(backend.invalidate_list(FakeMailmanRecords.LIST_ID))
        await step(backend.invalidate("global_bans"))
        await step(backend.invalidate_all())
        return steps

    assert asyncio.run(run()) == [
        (0, {"directory": 1, "policy": 1, "global_bans": 1, "memberships": 2, "linked": 2}),
        (2, {"memberships": 1, "linked": 1}),
        (1, {"policy": 1}),
        (1, {"global_bans": 1}),
        (7, {"directory": 1, "policy": 1, "global_bans": 1, "memberships": 2, "linked": 2}),
    ]
