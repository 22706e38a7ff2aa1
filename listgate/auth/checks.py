"""The checks themselves, synchronous and bounded: SPF (pyspf), DKIM (dkimpy) over one
configured dnspython resolver, upstream Authentication-Results (authres), and the
organizational domain (publicsuffixlist).

Invariants:
- Every DNS query goes to the resolver built by ``make_resolver`` from ``[auth]``
  (``nameservers``, ``dns_timeout``), never anywhere else: pyspf's and dkimpy's own
  lookups are replaced, per thread, by ``_lookup``.
- A check never raises for anything the message or DNS does: SPF answers an
  ``SpfResult`` (DNS trouble is ``TEMPERROR``), DKIM a ``DkimResult``, upstream parsing
  an ``Upstream`` (an unparsable header is ignored).
- These functions block (pyspf and dkimpy are synchronous): the authenticator runs them
  in a worker thread under the decision's deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache

import authres
import dkim
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from listgate.decision.auth import SpfResult

__all__ = [
    "DkimResult",
    "Upstream",
    "check_dkim",
    "check_spf",
    "make_resolver",
    "organizational_domain",
    "parse_upstream",
]

_local = threading.local()
"""The resolver of the check running on this thread (pyspf's lookup is a module global)."""


def make_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.resolver.Resolver:
    """A resolver asking exactly *nameservers* ((address, port) pairs; none: the system's
    /etc/resolv.conf), each query bounded by *timeout* seconds."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers
        ]
    else:
        resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = dns.resolver.LRUCache(4096)
    return resolver


def _resolver() -> dns.resolver.Resolver:
    resolver: dns.resolver.Resolver | None = getattr(_local, "resolver", None)
    if resolver is None:
        raise RuntimeError("no resolver set for this thread")
    return resolver


def _lookup(
    name: str, qtype: str, strict: object = True, timeout: float = 30
) -> list[tuple[tuple[str, str], object]]:
    """pyspf's DNS lookup (``spf.DNSLookup``) over this thread's resolver."""
    del strict
    found: list[tuple[tuple[str, str], object]] = []
    try:
        answers = _resolver().resolve(name, qtype, lifetime=timeout, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return found
    except (dns.exception.Timeout, dns.resolver.NoNameservers,
            dns.resolver.LifetimeTimeout) as exc:
        raise spf.TempError(f"DNS {exc}") from None
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc}") from None
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _lookup  # every pyspf query goes through _lookup


_SPF_RESULTS = {r.value: r for r in SpfResult}


def check_spf(
    resolver: dns.resolver.Resolver, client: str, sender: str, helo: str, timeout: float
) -> SpfResult:
    """RFC 7208 ``check_host()`` for *sender* (or postmaster@*helo* for the null sender)
    from *client*."""
    _local.resolver = resolver
    try:
        result, _text = spf.check2(
            i=client, s=sender, h=helo or "unknown", timeout=timeout, querytime=timeout
        )
    except Exception:  # pyspf's own bugs on odd input: no proof, not a reject by itself
        return SpfResult.PERMERROR
    finally:
        _local.resolver = None
    if result in ("temperror", "error"):
        return SpfResult.TEMPERROR
    return _SPF_RESULTS.get(result, SpfResult.PERMERROR)


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The DKIM signatures of one message."""

    valid: tuple[str, ...] = ()
    """``d=`` of each valid signature (lower case)."""
    temperror: bool = False
    """A key could not be fetched for a DNS reason that may pass."""
    signatures: int = 0
    """How many DKIM-Signature header fields the message has."""


class _KeyTemporarilyUnavailable(Exception):
    pass


def _txt(resolver: dns.resolver.Resolver, name: bytes, timeout: float) -> bytes | None:
    try:
        answers = resolver.resolve(
            name.decode("ascii", "replace"), "TXT", lifetime=timeout, search=False
        )
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return None
    except dns.exception.DNSException:
        raise _KeyTemporarilyUnavailable from None
    for rdata in answers:
        return b"".join(rdata.strings)
    return None


def check_dkim(
    resolver: dns.resolver.Resolver, message: bytes, timeout: float
) -> DkimResult:
    """Verify every DKIM signature of *message* (RFC 6376), keys from *resolver*."""
    try:
        verifier = dkim.DKIM(message, timeout=int(max(1, timeout)))
        count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    except Exception:
        return DkimResult()

    def dnsfunc(name: bytes, timeout: float = timeout) -> bytes | None:
        return _txt(resolver, name, timeout)

    valid: list[str] = []
    temperror = False
    for index in range(count):
        try:
            ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except _KeyTemporarilyUnavailable:
            temperror = True
            continue
        except Exception:  # noqa: S112 - a broken signature or key is no proof
            continue
        if ok and verifier.domain:
            domain = verifier.domain.decode("ascii", "replace").lower().rstrip(".")
            if domain not in valid:
                valid.append(domain)
    return DkimResult(tuple(valid), temperror, count)


@dataclass(frozen=True, slots=True)
class Upstream:
    """What trusted Authentication-Results: header fields vouch for."""

    trusted: bool
    """Exactly the expected number of header fields with the authserv-id were seen."""
    headers: int
    """How many header fields carried the authserv-id."""
    spf: SpfResult | None = None
    spf_domain: str = ""
    dkim_domains: tuple[str, ...] = ()
    dmarc_domains: tuple[str, ...] = ()


def _domain(value: str) -> str:
    value = value.strip().strip("<>").lower().rstrip(".")
    return value.rpartition("@")[2]


def parse_upstream(values: Iterable[str], authserv_id: str, expected: int) -> Upstream:
    """Read the Authentication-Results: values (RFC 8601) that carry *authserv_id*;
    trusted only when there are exactly *expected* of them (more: one was forged)."""
    mine: list[authres.AuthenticationResultsHeader] = []
    for value in values:
        try:
            header = authres.AuthenticationResultsHeader.parse_value(
                value.replace("\r\n", "\n")
            )
        except Exception:  # noqa: S112 - authres raises its own SyntaxError and others
            continue
        if str(header.authserv_id).lower() == authserv_id.lower():
            mine.append(header)
    if len(mine) != expected:
        return Upstream(trusted=False, headers=len(mine))
    spf_result: SpfResult | None = None
    spf_domain = ""
    dkim_domains: list[str] = []
    dmarc_domains: list[str] = []
    for header in mine:
        for result in header.results:
            method = str(result.method).lower()
            outcome = str(result.result).lower()
            props = {(str(p.type).lower(), str(p.name).lower()): str(p.value)
                     for p in result.properties}
            if method == "spf":
                mailfrom = props.get(("smtp", "mailfrom"), "")
                if mailfrom:
                    spf_result = _SPF_RESULTS.get(outcome, SpfResult.PERMERROR)
                    spf_domain = _domain(mailfrom)
            elif method == "dkim" and outcome == "pass":
                d = props.get(("header", "d")) or props.get(("header", "i"), "")
                if d and _domain(d) not in dkim_domains:
                    dkim_domains.append(_domain(d))
            elif method == "dmarc" and outcome == "pass":
                d = props.get(("header", "from"), "")
                if d:
                    dmarc_domains.append(_domain(d))
    return Upstream(True, len(mine), spf_result, spf_domain, tuple(dkim_domains),
                    tuple(dmarc_domains))


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself when it is a
    public suffix or unknown to the list)."""
    return _psl().privatesuffix(domain) or domain


def from_addresses(values: Iterable[str]) -> tuple[str, ...]:
    """The addresses of From: header values, lower case."""
    found = [addr.lower() for _name, addr in getaddresses(list(values)) if "@" in addr]
    return tuple(dict.fromkeys(found))
