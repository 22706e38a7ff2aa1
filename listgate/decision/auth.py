"""Authenticated posters: which sender addresses a message proves, as a pure rule over
authentication facts (SPF, RFC 7208; DKIM, RFC 6376; aligned as DMARC, RFC 7489 §3.1).

On a list with ``require_authenticated``, a sender counts as *this* member (or accepted
nonmember) only when ``proof`` finds a reason; otherwise the engine judges it as an
unknown nonmember (``SenderFacts.proven = False``).

Invariants:
- Pure: values in, values out; no I/O, no DNS, no clock. The facts (SPF results, valid
  DKIM signatures, organizational domains) are gathered by ``listgate.auth`` and handed
  over as one ``Authentication``, like membership.
- An address is proven only by: a SASL-authenticated client; SPF ``pass`` for its domain
  when it is the envelope sender; for a From: address, a valid DKIM signature whose
  ``d=`` has the same organizational domain (relaxed alignment), SPF ``pass`` for an
  envelope domain with the same organizational domain, or an upstream ``dmarc=pass`` for
  its domain. Nothing else (a Reply-To:, a Sender:) is ever proven by the message alone.
- A temporary error (``temperror``) never proves and never disproves: ``temporary``
  says a check that could have proven the address did not finish.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from listgate.decision.model import PostingRequest

__all__ = [
    "NO_AUTHENTICATION",
    "Authenticates",
    "Authentication",
    "SpfResult",
    "domain_of",
    "proof",
    "temporary",
]


class SpfResult(enum.Enum):
    """RFC 7208 §2.6 results of ``check_host()`` for the MAIL FROM identity."""

    PASS = "pass"  # noqa: S105 - an SPF result, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Authentication:
    """What the message proves, as far as it is known at this stage."""

    spf: SpfResult | None = None
    """SPF result for the envelope sender's domain from the client; None: not checked."""
    spf_domain: str = ""
    """The domain ``spf`` is about (the envelope sender's, or the HELO name's for <>)."""
    dkim_domains: tuple[str, ...] = ()
    """``d=`` of every valid DKIM signature (lower case)."""
    dkim_checked: bool = False
    """The DKIM signatures were verified (else nothing is known of them yet)."""
    dkim_temperror: bool = False
    """A DKIM key lookup failed temporarily."""
    dmarc_domains: tuple[str, ...] = ()
    """From: domains an upstream ``dmarc=pass`` vouches for."""
    header_from: tuple[str, ...] = ()
    """The message's From: addresses (normalised), once its headers are known."""
    organizational: Mapping[str, str] = field(default_factory=_empty)
    """Domain → organizational domain (public suffix list), for every domain above and
    every sender's; a domain missing here is its own organizational domain."""
    pending: bool = False
    """More evidence comes later in this transaction (the headers, the whole message)."""
    source: str = "listgate"
    """Who checked: "listgate", or the trusted ``authserv-id`` of the upstream results."""
    notes: tuple[str, ...] = ()
    """What the reasons should mention (e.g. ignored forged Authentication-Results)."""

    def org(self, domain: str) -> str:
        """The organizational domain of *domain*."""
        return self.organizational.get(domain, domain)


NO_AUTHENTICATION = Authentication()
"""Nothing is known: no address is proven (except by SASL)."""


def domain_of(address: str) -> str:
    """The domain of *address*, lower case ("" without one)."""
    return address.rpartition("@")[2].lower()


def proof(address: str, request: PostingRequest, auth: Authentication) -> str | None:
    """Why the message proves it comes from *address*, or None."""
    if request.auth_user:
        return "SASL-authenticated client"
    domain = domain_of(address)
    if not domain:
        return None
    if auth.spf is SpfResult.PASS and address == request.sender and auth.spf_domain == domain:
        return f"SPF pass for {domain}"
    if address not in auth.header_from:
        return None
    org = auth.org(domain)
    for signer in auth.dkim_domains:
        if auth.org(signer) == org:
            return f"DKIM signature d={signer} aligned with From: {domain}"
    if auth.spf is SpfResult.PASS and auth.spf_domain and auth.org(auth.spf_domain) == org:
        return f"SPF pass for {auth.spf_domain}, aligned with From: {domain}"
    if domain in auth.dmarc_domains:
        return f"DMARC pass for {domain} ({auth.source})"
    return None


def temporary(address: str, request: PostingRequest, auth: Authentication) -> bool:
    """Whether a check that could have proven *address* failed temporarily (DNS)."""
    domain = domain_of(address)
    if auth.spf is SpfResult.TEMPERROR and (
        address == request.sender or address in auth.header_from
    ):
        return True
    return auth.dkim_temperror and address in auth.header_from and bool(domain)



class Authenticates(Protocol):
    """What the gate asks for a ``require_authenticated`` list's facts
    (``listgate.auth.Authenticator`` implements it; the core never imports it)."""

    def authenticate_now(self, request: PostingRequest) -> Authentication | None:
        """The facts without I/O, or None: await ``authenticate``."""
        ...

    async def authenticate(self, request: PostingRequest) -> Authentication:
        """The facts, within the configured DNS deadline; never raises for DNS trouble."""
        ...
