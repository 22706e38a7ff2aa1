"""Fixtures for the authentication tests: one NSD (tests/dns_server.py) serving SPF, DKIM
key and DMARC records for the test domains, and the DKIM keys the suite made."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dns_server import DkimKey, NsdServer, txt_record, zone_text

MEMBER = "member@example.com"
"""A member; example.com's SPF allows 127.0.0.1 only; its mail is signed d=example.com."""
OTHER_DOMAIN = "other.org"


@dataclass(frozen=True)
class AuthDns:
    """The running DNS server and the keys published in it."""

    server: NsdServer
    example: DkimKey
    """Published at sel._domainkey.example.com."""
    other: DkimKey
    """Published at sel._domainkey.other.org."""


def zones(example: DkimKey, other: DkimKey) -> dict[str, str]:
    """The test zones: SPF, DKIM keys and DMARC records."""
    return {
        "example.com": zone_text("example.com", [
            ("@", "TXT", txt_record("v=spf1 ip4:127.0.0.1 include:_spf.example.com -all")),
            ("_spf", "TXT", txt_record("v=spf1 a:ns.example.com -all")),
            ("sel._domainkey", "TXT", txt_record(example.record)),
            ("_dmarc", "TXT", txt_record("v=DMARC1; p=reject")),
        ]),
        "other.org": zone_text("other.org", [
            ("@", "TXT", txt_record("v=spf1 -all")),
            ("sel._domainkey", "TXT", txt_record(other.record)),
            ("_dmarc", "TXT", txt_record("v=DMARC1; p=none")),
        ]),
    }


@pytest.fixture(scope="session")
def auth_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthDns]:
    """NSD on 127.0.0.1 serving example.com and other.org (started once per session)."""
    base: Path = tmp_path_factory.mktemp("auth-dns")
    example, other = DkimKey(base, "example"), DkimKey(base, "other")
    server = NsdServer(base / "nsd", zones(example, other)).start()
    try:
        yield AuthDns(server, example, other)
    finally:
        server.stop()
