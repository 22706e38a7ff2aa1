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
- Authentication facts are asked for only when they can matter: a posting address of a
  list with ``require_authenticated`` (not off), a client that is not SASL-authenticated,
  and a sender Mailman would trust (a member or an accepted nonmember); without an
  authenticator nothing is proven but by SASL.
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

from listgate.decision.auth import NO_AUTHENTICATION, Authenticates, Authentication
from listgate.decision.engine import (
    DEFAULT_OVERRIDES,
    GateMode,
    ListOverrides,
    ReplyTexts,
    decide,
    fail_open_decision,
    failure_decision,
    sanitize_reply_value,
)
from listgate.decision.facts import PENDING, FactSource, ListFacts
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.decision.recipients import Target
from listgate.decision.rules import Action
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
_TRUSTING = frozenset({Action.ACCEPT, Action.DEFER})
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
        "_authenticator",
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
        authenticator: Authenticates | None = None,
    ) -> None:
        self._backend = backend
        self._authenticator = authenticator
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

    def _decide(
        self, request: PostingRequest, facts: ListFacts, auth: Authentication | None = None
    ) -> Decision:
        overrides = self.overrides_for(facts.resolution.list_address)
        return decide(request, facts, self._texts, overrides, auth)

    def _needs_authentication(self, request: PostingRequest, facts: ListFacts) -> bool:
        """Whether what the message proves can change the decision (see the invariants)."""
        if facts.resolution.target is not Target.POSTING or facts.policy is None:
            return False
        overrides = self.overrides_for(facts.resolution.list_address)
        if not overrides.require_authenticated or overrides.mode is GateMode.OFF:
            return False
        if request.auth_user:
            return False
        return any(
            s.member is not None or s.nonmember_action in _TRUSTING or s.member_of
            or facts.policy.accept_these_nonmembers
            for s in (*facts.senders, *facts.hints)
        )

    def _authenticate_now(
        self, request: PostingRequest, facts: ListFacts
    ) -> Authentication | None:
        """The facts for *request* without waiting (None: await ``authenticate``)."""
        if self._authenticator is None or not self._needs_authentication(request, facts):
            return NO_AUTHENTICATION
        return self._authenticator.authenticate_now(request)

    async def _authenticate(self, request: PostingRequest, facts: ListFacts) -> Authentication:
        """The authentication facts for *request*, awaiting the checks when needed."""
        auth = self._authenticate_now(request, facts)
        if auth is None:
            assert self._authenticator is not None
            auth = await self._authenticator.authenticate(request)
        return auth

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
            auth = self._authenticate_now(request, facts)
            if auth is None:
                return None
            decision = self._decide(request, facts, auth)
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
            decision = self._decide(request, facts, await self._authenticate(request, facts))
            if (decision.verdict is _REJECT and facts.confirm is not None
                    and not decision.provisional):
                # Too old to reject on: decide again on fresh facts, which may also
                # change whether the message's authentication matters.
                fresh = await facts.confirm()
                decision = self._decide(request, fresh, await self._authenticate(request, fresh))
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
