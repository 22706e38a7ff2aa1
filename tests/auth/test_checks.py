"""listgate's own SPF and DKIM checks (listgate.auth) against a real NSD on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import pytest
from support import free_port

from listgate.auth import Authenticator
from listgate.config import AuthConfig
from listgate.decision.auth import SpfResult
from listgate.decision.engine import ListOverrides, ReplyTexts, decide
from listgate.decision.facts import ListFacts
from listgate.decision.model import Evidence, PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts

from .conftest import MEMBER, AuthDns

LIST = "list@example.org"


def message(sender: str = MEMBER, body: str = "hello list\r\n") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{LIST}>\r\nSubject: test\r\n"
            f"Date: Thu, 03 Dec 2026 09:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n"
            f"\r\n{body}").encode()


def authenticator(dns: AuthDns, timeout: float = 2.0) -> Authenticator:
    return Authenticator(AuthConfig(nameservers=(dns.server.address,), dns_timeout=timeout))


def request(client: str = "127.0.0.1", sender: str = MEMBER,
            msg: bytes | None = None) -> PostingRequest:
    header_from = (MEMBER,) if msg is not None else ()
    return PostingRequest(sender, LIST, client_address=client, evidence=Evidence(
        helo="client.feas.test", header_from=header_from, message=msg))


def run(auth: Authenticator, req: PostingRequest) -> Any:
    return asyncio.run(auth.authenticate(req))


def test_spf_pass_for_an_allowed_client_and_fail_for_an_excluded_one(auth_dns: AuthDns) -> None:
    """example.com allows 127.0.0.1 (via ip4 and include:a) and excludes 127.0.0.2."""
    auth = authenticator(auth_dns)
    assert run(auth, request("127.0.0.1")).spf is SpfResult.PASS
    assert run(auth, request("127.0.0.2")).spf is SpfResult.FAIL


def test_spf_result_is_cached_and_answered_without_waiting(auth_dns: AuthDns) -> None:
    """Once checked, the same client/sender/HELO is answered by authenticate_now."""
    auth = authenticator(auth_dns)
    req = request("127.0.0.1")
    assert auth.authenticate_now(req) is None
    run(auth, req)
    now = auth.authenticate_now(req)
    assert now is not None
    assert now.spf is SpfResult.PASS


def test_dkim_signature_of_the_from_domain_is_valid(auth_dns: AuthDns) -> None:
    """A message signed with the published key verifies, d=example.com."""
    signed = auth_dns.example.sign(message(), "example.com")
    facts = run(authenticator(auth_dns), request(msg=signed))
    assert facts.dkim_domains == ("example.com",)


def test_dkim_body_altered_in_transit_fails(auth_dns: AuthDns) -> None:
    """One changed body byte breaks the body hash: no valid signature."""
    signed = auth_dns.example.sign(message(), "example.com").replace(b"hello", b"jello")
    facts = run(authenticator(auth_dns), request(msg=signed))
    assert facts.dkim_checked
    assert facts.dkim_domains == ()


def test_dkim_signature_from_another_domain_is_not_aligned(auth_dns: AuthDns) -> None:
    """A valid other.org signature does not prove From: member@example.com."""
    signed = auth_dns.other.sign(message(), "other.org")
    req = request("127.0.0.2", msg=signed)
    facts = run(authenticator(auth_dns), req)
    assert facts.dkim_domains == ("other.org",)
    lf = ListFacts(Resolution(Target.POSTING, LIST),
                   ListPolicy(LIST, default_member_action=Action.ACCEPT,
                              default_nonmember_action=Action.REJECT),
                   (SenderFacts(MEMBER, Membership(MEMBER)),))
    d = decide(req, lf, ReplyTexts(), ListOverrides(require_authenticated=True), facts)
    assert d.verdict is Verdict.REJECT


@pytest.fixture
def destinations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every address a socket sends to or connects to while the test runs."""
    seen: list[object] = []
    real_sendto, real_connect = socket.socket.sendto, socket.socket.connect

    def sendto(self: socket.socket, data: bytes, *args: Any) -> int:
        seen.append(args[-1])
        return real_sendto(self, data, *args)

    def connect(self: socket.socket, address: Any) -> None:
        seen.append(address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def test_no_query_leaves_loopback(auth_dns: AuthDns, destinations: list[object]) -> None:
    """Every DNS query of an SPF check (with include: and a:) and a DKIM check goes to
    the configured NSD on 127.0.0.1, and nowhere else."""
    auth = authenticator(auth_dns)
    run(auth, request("127.0.0.9", msg=auth_dns.example.sign(message(), "example.com")))
    hosts = {d[0] for d in destinations if isinstance(d, tuple)}
    ports = {d[1] for d in destinations if isinstance(d, tuple)}
    assert auth_dns.server.port in ports, destinations
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts), destinations


def test_dns_server_down_is_a_temperror_within_the_deadline(tmp_path: object) -> None:
    """No server answers: SPF is temperror and DKIM temperror, within dns_timeout."""
    auth = Authenticator(AuthConfig(nameservers=(f"127.0.0.1:{free_port()}",),
                                    dns_timeout=1.0))
    started = time.monotonic()
    facts = run(auth, request("127.0.0.3", msg=message()))
    assert facts.spf is SpfResult.TEMPERROR
    assert time.monotonic() - started < 2.5
