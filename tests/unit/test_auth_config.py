"""[auth] and require_authenticated in the configuration: parsing, the settings that have
no effect, and what the milter negotiates for them."""

from __future__ import annotations

import pytest

from listgate.app import auth_stage
from listgate.config import AuthSource, parse_config
from listgate.errors import ConfigError
from listgate.frontends.milter import AuthStage
from listgate.frontends.policy import posting_request
from listgate.policyd import PolicyRequest

POSTERS = {"static": {"posters": {"list@example.org": ["m@example.com"]}}}
ON = {"lists": {"list@example.org": {"require_authenticated": True}}}


def test_require_authenticated_per_list_and_in_gate() -> None:
    """The key is read per list and as a [gate] default."""
    cfg = parse_config({**POSTERS, **ON})
    assert cfg.lists["list@example.org"].require_authenticated
    assert parse_config({**POSTERS, "gate": {"require_authenticated": True}}).gate \
        .require_authenticated


def test_auth_section_without_an_authenticated_list_has_no_effect() -> None:
    """[auth] keys are a problem when no list requires authentication."""
    with pytest.raises(ConfigError, match=r"auth\.dns_timeout: has no effect"):
        parse_config({**POSTERS, "auth": {"dns_timeout": 2.0}})


def test_upstream_needs_an_authserv_id() -> None:
    """source = "upstream" without authserv_id is refused."""
    with pytest.raises(ConfigError, match=r"auth\.authserv_id: required"):
        parse_config({**POSTERS, **ON, "auth": {"source": "upstream"}})


def test_verify_only_keys_have_no_effect_upstream() -> None:
    """nameservers is listgate's own checking: no effect with upstream results."""
    with pytest.raises(ConfigError, match=r"auth\.nameservers: has no effect"):
        parse_config({**POSTERS, **ON, "auth": {"source": "upstream", "authserv_id": "mx.x",
                                                 "nameservers": ["127.0.0.1"]}})


@pytest.mark.parametrize(("given", "canonical"), [
    ("127.0.0.1", "127.0.0.1"), ("127.0.0.1:5353", "127.0.0.1:5353"),
    ("[::1]:5353", "[::1]:5353"), ("::1", "[::1]")])
def test_nameservers_are_parsed(given: str, canonical: str) -> None:
    """IP, IP:PORT and [IPv6]:PORT are accepted and shown canonically."""
    cfg = parse_config({**POSTERS, **ON, "auth": {"nameservers": [given]}})
    assert cfg.auth.nameservers == (canonical,)


def test_bad_nameserver_is_a_problem() -> None:
    """A host name is not a nameserver address."""
    with pytest.raises(ConfigError, match=r"auth\.nameservers\[0\]"):
        parse_config({**POSTERS, **ON, "auth": {"nameservers": ["dns.example"]}})


def test_auth_stage_follows_the_config() -> None:
    """No such list: nothing more is negotiated; verify: the message; upstream: headers."""
    assert auth_stage(parse_config(POSTERS)) is None
    assert auth_stage(parse_config({**POSTERS, **ON})) is AuthStage.MESSAGE
    upstream = parse_config({**POSTERS, **ON, "auth": {"source": "upstream",
                                                       "authserv_id": "mx.x"}})
    assert upstream.auth.source is AuthSource.UPSTREAM
    assert auth_stage(upstream) is AuthStage.HEADERS


def test_policy_request_carries_the_helo_name_and_nothing_more() -> None:
    """The policy front end offers the SPF half: HELO name, no more evidence to come."""
    request = posting_request(PolicyRequest.from_attributes({
        "request": "smtpd_access_policy", "protocol_state": "RCPT",
        "sender": "m@example.com", "recipient": "list@example.org",
        "client_address": "192.0.2.1", "helo_name": "mx.example.com"}))
    assert request is not None
    assert request.evidence is not None
    assert request.evidence.helo == "mx.example.com"
    assert not request.evidence.more
