"""``Gate``: backend lookup + engine decision, and the one place the failure policy is applied.

Invariants:
- Every request gets a ``Decision``: whatever the backend or the engine raises (an
  ``Exception``) becomes the configured failure decision — TEMPFAIL by default, or a
  fail-open ACCEPT under ``FailurePolicy.ACCEPT``. Nothing else in listgate applies it.
- ``BaseException``s that are not ``Exception``s (``asyncio.CancelledError``,
  ``KeyboardInterrupt``, ``SystemExit``) propagate untouched.
- Successful decisions are not logged here (the caller logs decisions); failures are, on
  the ``listgate.gate`` logger: a ``BackendError`` as one WARNING line, anything else as an
  ERROR with its traceback (it is a bug).
- No I/O of its own: ``decide_now`` is synchronous and never waits; ``decide`` awaits only
  the backend.
- The gate's own settings live here: ``FailurePolicy`` (``[failure]``) and ``Bypass``
  (``[bypass]``, checked before the backend is asked); the engine never sees either.
- A stale reject is never served: a final REJECT decided on facts the source marked as
  too old (``ListFacts.confirm``) is decided again on the confirmed facts before it is
  answered; ``decide_now`` leaves such a request to ``decide``. Accepts, and provisional
  rejects (which only make a headers-mode recipient wait for its headers), are answered
  on the facts at hand.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from listgate.decision.engine import (
    DEFAULT_OVERRIDES,
    ListOverrides,
    ReplyTexts,
    decide,
    fail_open_decision,
    failure_decision,
    sanitize_reply_value,
)
from listgate.decision.facts import PENDING, FactSource, ListFacts
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.errors import BackendError, BackendUnavailable

__all__ = ["NO_BYPASS", "Bypass", "FailurePolicy", "Gate"]

log = logging.getLogger("listgate.gate")


class FailurePolicy(enum.Enum):
    """What to answer when the backend cannot (outage, timeout, bug)."""

    TEMPFAIL = "tempfail"
    """Answer 4xx; the sending MTA retries later. The safe default."""
    ACCEPT = "accept"
    """Fail-open: let the recipient through ungated while the backend cannot answer."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """Senders the gate never judges (``[bypass]``; both off by default)."""

    authenticated: bool = False
    """Skip the gate for SASL-authenticated clients (``{auth_authen}`` / ``sasl_username``)."""
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Skip the gate for clients in these networks."""

    def reason(self, request: PostingRequest) -> str | None:
        """Why *request* bypasses the gate, or None."""
        if self.authenticated and request.auth_user:
            return "SASL-authenticated client: not gated ([bypass] authenticated)"
        if self.networks and request.client_address:
            try:
                client = ipaddress.ip_address(request.client_address.strip("[]"))
            except ValueError:
                return None
            for net in self.networks:
                if client.version == net.version and client in net:
                    return f"client {client} in trusted network {net}: not gated ([bypass])"
        return None


NO_BYPASS = Bypass()
_REJECT = Verdict.REJECT

_FailureBuilder = Callable[[PostingRequest, str | None, ReplyTexts, str], Decision]

_FAILURE_BUILDERS: dict[FailurePolicy, _FailureBuilder] = {
    FailurePolicy.TEMPFAIL: failure_decision,
    FailurePolicy.ACCEPT: lambda req, lst, texts, reason: fail_open_decision(req, lst, reason),
}
"""How each failure policy turns (request, texts, reason) into a decision."""


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, BackendUnavailable):
        return f"backend unavailable: {exc}"
    if isinstance(exc, BackendError):
        return f"backend error: {exc}"
    return f"internal error: {type(exc).__name__}"


class Gate:
    """Decides posting requests with *backend* and *texts*, applying *failure_policy*."""

    __slots__ = (
        "_backend",
        "_bypass",
        "_default",
        "_on_failure",
        "_overrides",
        "_texts",
        "failure_policy",
    )

    def __init__(
        self,
        backend: FactSource,
        texts: ReplyTexts,
        failure_policy: FailurePolicy = FailurePolicy.TEMPFAIL,
        overrides: Mapping[str, ListOverrides] | None = None,
        default: ListOverrides = DEFAULT_OVERRIDES,
        bypass: Bypass = NO_BYPASS,
    ) -> None:
        self._backend = backend
        self._bypass = bypass
        self._texts = texts
        self._overrides: Mapping[str, ListOverrides] = overrides or {}
        self._default = default
        self.failure_policy = failure_policy
        self._on_failure = _FAILURE_BUILDERS[failure_policy]

    def overrides_for(self, list_address: str | None) -> ListOverrides:
        """The per-list overrides for *list_address* (the ``[gate]`` defaults otherwise)."""
        if list_address is None:
            return self._default
        return self._overrides.get(list_address, self._default)

    def _decide(self, request: PostingRequest, facts: ListFacts) -> Decision:
        overrides = self.overrides_for(facts.resolution.list_address)
        return decide(request, facts, self._texts, overrides)

    @property
    def backend(self) -> FactSource:
        """The backend this gate asks."""
        return self._backend

    def _bypassed(self, request: PostingRequest) -> Decision | None:
        reason = self._bypass.reason(request)
        if reason is None:
            return None
        return Decision(Verdict.ACCEPT, None, None, "", (reason,), None)

    def decide_now(self, request: PostingRequest) -> Decision | None:
        """Decide without waiting, or return None when the caller must await ``decide``."""
        if self._bypass is not NO_BYPASS and (bypassed := self._bypassed(request)):
            return bypassed
        try:
            facts = self._backend.lookup_now(request)
            if facts is PENDING:
                return None
            decision = self._decide(request, facts)
            if (decision.verdict is _REJECT and facts.confirm is not None
                    and not decision.provisional):
                return None  # too old to reject on: ``decide`` confirms
            return decision
        except Exception as exc:
            return self._failed(request, exc)

    async def decide(self, request: PostingRequest) -> Decision:
        """Decide, awaiting the backend if needed; never raises an ``Exception``."""
        if self._bypass is not NO_BYPASS and (bypassed := self._bypassed(request)):
            return bypassed
        try:
            facts = await self._backend.lookup(request)
            decision = self._decide(request, facts)
            if (decision.verdict is _REJECT and facts.confirm is not None
                    and not decision.provisional):
                decision = self._decide(request, await facts.confirm())
            return decision
        except Exception as exc:
            return self._failed(request, exc)

    def _failed(self, request: PostingRequest, exc: Exception) -> Decision:
        reason = _failure_reason(exc)
        # Client-controlled addresses are made printable so they cannot forge log lines.
        sender = sanitize_reply_value(request.sender) or "<>"
        recipient = sanitize_reply_value(request.recipient)
        if isinstance(exc, BackendError):
            log.warning(
                "cannot decide %s -> %s (%s): %s",
                sender, recipient, self.failure_policy.value, reason,
            )
        else:
            log.error(
                "bug while deciding %s -> %s (%s)",
                sender, recipient, self.failure_policy.value,
                exc_info=exc,
            )
        list_address = exc.list_address if isinstance(exc, BackendError) else None
        return self._on_failure(request, list_address, self._texts, reason)
