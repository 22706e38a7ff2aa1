"""``Authenticator``: turns a request's ``Evidence`` into ``Authentication`` facts for the
decision core, within the decision's deadline.

Invariants:
- ``authenticate_now`` never does I/O and never blocks: it answers from upstream headers
  (pure parsing) or a cached SPF result, or returns None; then the caller awaits
  ``authenticate``.
- ``authenticate`` never raises for DNS trouble or a slow server: everything runs under
  ``dns_timeout``; past it, the unfinished check is a temporary error (the engine then
  answers 451 4.7.5, never a reject).
- The blocking checks (pyspf, dkimpy) run in one pool of ``CHECK_THREADS`` threads per
  process, never on the event loop.
- SPF results are cached per (client, sender domain, HELO) for ``SPF_CACHE_SECONDS``
  (pass results only while DNS said so: never a temporary error), bounded in size.
- source = "upstream": nothing is checked here; only Authentication-Results: header
  fields with ``authserv_id`` count, and only when exactly ``upstream_headers`` of them
  were seen (one more came from outside: none is trusted, and the reasons say so).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import TypeVar

from listgate.auth import checks
from listgate.config import AuthConfig, AuthSource, parse_nameserver
from listgate.decision.auth import Authentication, SpfResult, domain_of
from listgate.decision.model import Evidence, PostingRequest

__all__ = ["SPF_CACHE_SECONDS", "Authenticator", "GivenResults"]

CHECK_THREADS = 32
"""Worker threads for SPF and DKIM checks (per process)."""
SPF_CACHE_SECONDS = 60.0
"""How long an SPF result is reused for the same client, domain and HELO."""
_SPF_CACHE_MAX = 10_000
_NO_EVIDENCE = Evidence()
T = TypeVar("T")
A = TypeVar("A")


_EXECUTOR: list[ThreadPoolExecutor] = []


def _executor() -> ThreadPoolExecutor:
    """The process's pool for the blocking checks (pyspf and dkimpy), shared by every
    authenticator (a reload makes a new one), created at first use: a dead DNS server
    holds a thread for up to ``dns_timeout``, so asyncio's small default pool is not
    used."""
    if not _EXECUTOR:
        _EXECUTOR.append(ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="listgate-auth"))
    return _EXECUTOR[0]


class Authenticator:
    """Gathers ``Authentication`` facts as ``[auth]`` says (verify or upstream)."""

    __slots__ = ("_resolver", "_spf_cache", "config")

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        servers = [parse_nameserver(s) for s in config.nameservers]
        self._resolver = (
            checks.make_resolver(servers, config.dns_timeout)
            if config.source is AuthSource.VERIFY else None
        )
        self._spf_cache: OrderedDict[tuple[str, str, str], tuple[float, SpfResult]] = (
            OrderedDict()
        )

    @property
    def verifies(self) -> bool:
        """listgate checks SPF and DKIM itself (source = "verify")."""
        return self.config.source is AuthSource.VERIFY

    # ------------------------------------------------------------------ the answers

    def authenticate_now(self, request: PostingRequest) -> Authentication | None:
        """The facts without waiting, or None when a check needs I/O."""
        evidence = request.evidence or _NO_EVIDENCE
        if not self.verifies:
            return self._upstream(request, evidence)
        if evidence.message is not None:
            return None
        spf = self._cached_spf(request, evidence)
        if spf is None and self._spf_key(request, evidence) is not None:
            return None
        return self._facts(request, evidence, spf, None)

    async def authenticate(self, request: PostingRequest) -> Authentication:
        """The facts, checking SPF (and DKIM on a whole message) within ``dns_timeout``."""
        now = self.authenticate_now(request)
        if now is not None:
            return now
        evidence = request.evidence or _NO_EVIDENCE
        timeout = self.config.dns_timeout
        started = time.monotonic()
        spf = self._cached_spf(request, evidence)
        key = self._spf_key(request, evidence)
        if spf is None and key is not None:
            spf = await self._bounded(self._spf_blocking, key, timeout,
                                      SpfResult.TEMPERROR)
            if spf is not SpfResult.TEMPERROR:
                self._remember(key, spf)
        dkim: checks.DkimResult | None = None
        if evidence.message is not None:
            if len(evidence.message) > self.config.max_message_size:
                dkim = checks.DkimResult()
            else:
                left = max(0.05, timeout - (time.monotonic() - started))
                dkim = await self._bounded(self._dkim_blocking, evidence.message, left,
                                           checks.DkimResult(temperror=True))
        return self._facts(request, evidence, spf, dkim)

    # ------------------------------------------------------------------ SPF

    @staticmethod
    def _spf_key(request: PostingRequest, evidence: Evidence) -> tuple[str, str, str] | None:
        if not request.client_address:
            return None
        client = request.client_address.strip("[]")
        if client.lower().startswith("ipv6:"):
            client = client[5:]
        return (client, request.sender, evidence.helo)

    def _cached_spf(self, request: PostingRequest, evidence: Evidence) -> SpfResult | None:
        key = self._spf_key(request, evidence)
        if key is None:
            return None
        hit = self._spf_cache.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._spf_cache[key]
            return None
        return hit[1]

    def _remember(self, key: tuple[str, str, str], result: SpfResult) -> None:
        cache = self._spf_cache
        cache[key] = (time.monotonic() + SPF_CACHE_SECONDS, result)
        cache.move_to_end(key)
        while len(cache) > _SPF_CACHE_MAX:
            cache.popitem(last=False)

    def _spf_blocking(self, key: tuple[str, str, str]) -> SpfResult:
        client, sender, helo = key
        assert self._resolver is not None
        return checks.check_spf(self._resolver, client, sender, helo, self.config.dns_timeout)

    def _dkim_blocking(self, message: bytes) -> checks.DkimResult:
        assert self._resolver is not None
        return checks.check_dkim(self._resolver, message, self.config.dns_timeout)

    async def _bounded(
        self, func: Callable[[A], T], arg: A, timeout: float, on_timeout: T
    ) -> T:
        """``func(arg)`` in a worker thread; *on_timeout* if it takes over *timeout* s."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(_executor(), func, arg)
        except TimeoutError:
            return on_timeout

    # ------------------------------------------------------------------ facts

    def _facts(
        self,
        request: PostingRequest,
        evidence: Evidence,
        spf: SpfResult | None,
        dkim: checks.DkimResult | None,
    ) -> Authentication:
        spf_domain = domain_of(request.sender) if request.sender else evidence.helo.lower()
        dkim_domains = dkim.valid if dkim is not None else ()
        return Authentication(
            spf=spf,
            spf_domain=spf_domain if spf is not None else "",
            dkim_domains=dkim_domains,
            dkim_checked=dkim is not None,
            dkim_temperror=dkim.temperror if dkim is not None else False,
            header_from=evidence.header_from,
            organizational=self._organizational(request, evidence, spf_domain, dkim_domains),
            pending=evidence.more,
            notes=("message too large to verify DKIM",) if dkim is not None and evidence.message
            is not None and len(evidence.message) > self.config.max_message_size else (),
        )

    def _upstream(self, request: PostingRequest, evidence: Evidence) -> Authentication:
        config = self.config
        found = checks.parse_upstream(
            evidence.auth_results, config.authserv_id, config.upstream_headers
        )
        notes: tuple[str, ...] = ()
        if not found.trusted and found.headers > config.upstream_headers:
            notes = (f"{found.headers} Authentication-Results: from {config.authserv_id}, "
                     f"expected {config.upstream_headers}: one came from outside, none "
                     "trusted",)
        elif not found.trusted and (evidence.auth_results or not evidence.more):
            notes = (f"no Authentication-Results: from {config.authserv_id}",)
        spf = found.spf
        spf_domain = found.spf_domain
        if spf is not None and spf_domain != domain_of(request.sender):
            spf, spf_domain = None, ""  # about another envelope: not this transaction's
        return Authentication(
            spf=spf,
            spf_domain=spf_domain,
            dkim_domains=found.dkim_domains,
            dkim_checked=found.trusted,
            dmarc_domains=found.dmarc_domains,
            header_from=evidence.header_from,
            organizational=self._organizational(
                request, evidence, spf_domain, found.dkim_domains
            ),
            pending=evidence.more and not evidence.auth_results,
            source=config.authserv_id,
            notes=notes,
        )

    @staticmethod
    def _organizational(
        request: PostingRequest,
        evidence: Evidence,
        spf_domain: str,
        dkim_domains: tuple[str, ...],
    ) -> MappingProxyType[str, str]:
        domains = {spf_domain, *dkim_domains, *(domain_of(a) for a in evidence.header_from),
                   *(domain_of(a) for a in request.senders)}
        domains.discard("")
        return MappingProxyType({d: checks.organizational_domain(d) for d in domains})


class GivenResults:
    """Fixed results instead of checks (``listgate check --spf --dkim-domain``): explains
    a verdict offline, with no DNS at all."""

    __slots__ = ("dkim_domains", "spf")

    def __init__(self, spf: SpfResult | None, dkim_domains: tuple[str, ...]) -> None:
        self.spf = spf
        self.dkim_domains = tuple(d.lower().rstrip(".") for d in dkim_domains)

    def authenticate_now(self, request: PostingRequest) -> Authentication:
        """The given results, for this request's senders."""
        evidence = request.evidence or _NO_EVIDENCE
        spf_domain = domain_of(request.sender) if self.spf is not None else ""
        return Authentication(
            spf=self.spf,
            spf_domain=spf_domain,
            dkim_domains=self.dkim_domains,
            dkim_checked=True,
            header_from=evidence.header_from,
            organizational=Authenticator._organizational(
                request, evidence, spf_domain, self.dkim_domains
            ),
            source="given on the command line",
        )

    async def authenticate(self, request: PostingRequest) -> Authentication:
        """The same, for the awaiting path."""
        return self.authenticate_now(request)
