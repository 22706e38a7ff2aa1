"""Tests of Gate: decisions through the backend, and the one place the failure policy lives."""

from __future__ import annotations

import asyncio
import logging

import pytest

from listgate.decision.engine import GateMode, ListOverrides, ReplyTexts
from listgate.decision.facts import PENDING, ListFacts, LookupNow, not_a_list
from listgate.decision.gate import FailurePolicy, Gate
from listgate.decision.model import PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, ListPolicy, SenderFacts
from listgate.errors import BackendError, BackendUnavailable
from listgate.facts.static import StaticBackend

LIST = "announce@example.org"
REQUEST = PostingRequest("eve@example.com", LIST)
TEXTS = ReplyTexts(tempfail_code=452, tempfail_dsn="4.4.3", tempfail_text="later, {sender}")


class FakeBackend:
    """Answers lookup_now with *now* and lookup with *later*, raising them if exceptions."""

    def __init__(self, now: LookupNow | BaseException, later: ListFacts | BaseException):
        self.now = now
        self.later = later
        self.lookups = 0

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        if isinstance(self.now, BaseException):
            raise self.now
        return self.now

    async def lookup(self, request: PostingRequest) -> ListFacts:
        self.lookups += 1
        await asyncio.sleep(0)
        if isinstance(self.later, BaseException):
            raise self.later
        return self.later

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return "fake"

    def known_lists(self) -> tuple[str, ...]:
        return (LIST,)


NO = ListFacts(Resolution(Target.POSTING, LIST),
               ListPolicy(LIST, default_nonmember_action=Action.REJECT),
               (SenderFacts("eve@example.com"),))
NOT_A_LIST = not_a_list()
FAILURES = [
    pytest.param(BackendUnavailable("connection refused"),
                 "backend unavailable: connection refused", logging.WARNING, id="unavailable"),
    pytest.param(BackendError("bad answer"), "backend error: bad answer", logging.WARNING,
                 id="backend-error"),
    pytest.param(RuntimeError("bug"), "internal error: RuntimeError", logging.ERROR, id="bug"),
]


def test_decide_now_pending_returns_none() -> None:
    """decide_now returns None when the backend says PENDING, and decide() then answers."""
    gate = Gate(FakeBackend(PENDING, NO), TEXTS)
    assert gate.decide_now(REQUEST) is None
    assert asyncio.run(gate.decide(REQUEST)).verdict is Verdict.REJECT


def test_static_backend_through_gate() -> None:
    """With the static backend every request is decided synchronously."""
    gate = Gate(StaticBackend({LIST: ["boss@example.org"]}), ReplyTexts())
    ok = gate.decide_now(PostingRequest("boss@example.org", LIST))
    no = gate.decide_now(REQUEST)
    assert ok is not None
    assert ok.verdict is Verdict.ACCEPT
    assert no is not None
    assert no.smtp_reply == (
        f"550 5.7.1 <eve@example.com> is not allowed to post to <{LIST}>"
    )


@pytest.mark.parametrize(("exc", "reason", "level"), FAILURES)
def test_async_failure_tempfails(
    exc: Exception, reason: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing lookup() becomes TEMPFAIL with the configured code, DSN and text, and is logged."""
    gate = Gate(FakeBackend(PENDING, exc), TEXTS)
    with caplog.at_level(logging.DEBUG, logger="listgate.gate"):
        decision = asyncio.run(gate.decide(REQUEST))
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.smtp_reply == "452 4.4.3 later, eve@example.com"
    assert decision.reasons == (reason,)
    [record] = caplog.records
    assert record.levelno == level
    assert (record.exc_info is not None) == (level == logging.ERROR)


@pytest.mark.parametrize(("exc", "reason", "level"), FAILURES)
def test_sync_failure_tempfails(exc: Exception, reason: str, level: int) -> None:
    """A failing lookup_now() becomes the same TEMPFAIL decision."""
    decision = Gate(FakeBackend(exc, NOT_A_LIST), TEXTS).decide_now(REQUEST)
    assert decision is not None
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reasons == (reason,)


@pytest.mark.parametrize(("exc", "reason", "level"), FAILURES)
def test_fail_open_accepts(exc: Exception, reason: str, level: int) -> None:
    """Under FailurePolicy.ACCEPT a failing backend lets the recipient through, saying why."""
    gate = Gate(FakeBackend(exc, exc), TEXTS, FailurePolicy.ACCEPT)
    for decision in (gate.decide_now(REQUEST), asyncio.run(gate.decide(REQUEST))):
        assert decision is not None
        assert decision.verdict is Verdict.ACCEPT
        assert decision.reasons == (f"fail-open: {reason}",)


def test_cancelled_error_propagates() -> None:
    """asyncio.CancelledError from the backend is not turned into a decision."""
    gate = Gate(FakeBackend(PENDING, asyncio.CancelledError()), TEXTS)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(gate.decide(REQUEST))


def test_task_cancellation_propagates() -> None:
    """Cancelling the task awaiting decide() cancels it rather than yielding a decision."""

    class SlowBackend(FakeBackend):
        async def lookup(self, request: PostingRequest) -> ListFacts:
            await asyncio.sleep(3600)
            return NOT_A_LIST

    async def run() -> None:
        task = asyncio.create_task(Gate(SlowBackend(PENDING, NOT_A_LIST), TEXTS).decide(REQUEST))
        await asyncio.sleep(0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())


def test_keyboard_interrupt_propagates_from_decide_now() -> None:
    """A BaseException that is not an Exception escapes decide_now."""
    with pytest.raises(KeyboardInterrupt):
        Gate(FakeBackend(KeyboardInterrupt(), NOT_A_LIST), TEXTS).decide_now(REQUEST)


def test_success_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Successful decisions log nothing (the caller logs decisions)."""
    gate = Gate(FakeBackend(NO, NO), TEXTS)
    with caplog.at_level(logging.DEBUG):
        gate.decide_now(REQUEST)
        asyncio.run(gate.decide(REQUEST))
    assert [r for r in caplog.records if r.name.startswith("listgate")] == []


def test_failure_log_line_is_sanitised(caplog: pytest.LogCaptureFixture) -> None:
    """A CR/LF in the sender cannot forge extra log lines."""
    gate = Gate(FakeBackend(BackendUnavailable("down"), NOT_A_LIST), TEXTS)
    with caplog.at_level(logging.WARNING, logger="listgate.gate"):
        gate.decide_now(PostingRequest("a\r\nFAKE@x", LIST))
    assert "\n" not in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("exc", "list_address", "shown"),
    [
        pytest.param(BackendUnavailable("down", LIST), LIST, LIST, id="backend-knows-list"),
        pytest.param(BackendUnavailable("down"), None, LIST, id="no-list-names-recipient"),
        pytest.param(RuntimeError("bug"), None, LIST, id="bug-has-no-list"),
    ],
)
def test_failure_carries_backend_list_address(
    exc: Exception, list_address: str | None, shown: str
) -> None:
    """A failure decision carries BackendError.list_address (what the MTA log shows)."""
    request = PostingRequest("eve@example.com", "announce+tag@example.org")
    gate = Gate(FakeBackend(exc, exc), ReplyTexts())
    for decision in (gate.decide_now(request), asyncio.run(gate.decide(request))):
        assert decision is not None
        assert decision.verdict is Verdict.TEMPFAIL
        assert decision.list_address == list_address
        expected = shown if list_address else request.recipient
        assert f"<{expected}>" in decision.text


def test_fail_open_carries_backend_list_address() -> None:
    """Under fail-open the ACCEPT names the list the backend was asked about."""
    exc = BackendUnavailable("down", LIST)
    decision = Gate(FakeBackend(exc, exc), TEXTS, FailurePolicy.ACCEPT).decide_now(REQUEST)
    assert decision is not None
    assert (decision.verdict, decision.list_address) == (Verdict.ACCEPT, LIST)


OTHER = "other@example.org"
OVERRIDES = {LIST: ListOverrides(mode=GateMode.MONITOR),
             OTHER: ListOverrides(allow=("eve@example.com",))}


@pytest.mark.parametrize(
    ("recipient", "verdict", "first_reason"),
    [
        pytest.param(LIST, Verdict.ACCEPT, "monitor mode: would reject", id="monitor-list"),
        pytest.param("announce+x@example.org", Verdict.ACCEPT, "monitor mode: would reject",
                     id="monitor-list-plus-tag"),
        pytest.param(OTHER, Verdict.ACCEPT,
                     "override allow eve@example.com admits <eve@example.com>", id="allow-list"),
        pytest.param("third@example.org", Verdict.REJECT,
                     "nonmember <eve@example.com>; default_nonmember_action=reject",
                     id="no-overrides"),
    ],
)
def test_overrides_looked_up_per_list(recipient: str, verdict: Verdict, first_reason: str) -> None:
    """Gate applies the overrides of the list the recipient resolves to, else the defaults."""
    backend = StaticBackend({LIST: [], OTHER: [], "third@example.org": []})
    gate = Gate(backend, ReplyTexts(), overrides=OVERRIDES)
    decision = gate.decide_now(PostingRequest("eve@example.com", recipient))
    assert decision is not None
    assert (decision.verdict, decision.reasons[0]) == (verdict, first_reason)


def test_overrides_for() -> None:
    """overrides_for returns the configured overrides, or the defaults for others and None."""
    gate = Gate(StaticBackend({}), ReplyTexts(), overrides=OVERRIDES)
    assert gate.overrides_for(LIST) is OVERRIDES[LIST]
    assert gate.overrides_for("third@example.org") == ListOverrides()
    assert gate.overrides_for(None) == ListOverrides()
