"""The [bypass] switches, the log targets, and other libraries' loggers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

import pytest

from listgate.config import parse_config
from listgate.decision.engine import ReplyTexts
from listgate.decision.gate import Bypass, Gate
from listgate.decision.model import PostingRequest, Verdict
from listgate.facts.static import StaticBackend
from listgate.log import THIRD_PARTY_LOGGERS, setup_logging

POSTERS = {"list@example.org": ["member@example.com"]}


class CountingBackend(StaticBackend):
    """A static backend that counts its lookups."""

    def __init__(self) -> None:
        super().__init__(POSTERS)
        self.lookups = 0

    def lookup_now(self, request: PostingRequest):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().lookup_now(request)


def gate(bypass: Bypass) -> tuple[Gate, CountingBackend]:
    backend = CountingBackend()
    return Gate(backend, ReplyTexts(), bypass=bypass), backend


def req(**kw: str | None) -> PostingRequest:
    return PostingRequest("outsider@example.net", "list@example.org", **kw)  # type: ignore[arg-type]


def test_bypass_is_off_by_default() -> None:
    """With the default config an authenticated client in any network is still judged."""
    config = parse_config({"static": {"posters": POSTERS}})
    g, _ = gate(config.bypass)
    decision = g.decide_now(req(auth_user="outsider", client_address="10.0.0.1"))
    assert decision is not None
    assert decision.verdict is Verdict.REJECT


def test_authenticated_bypass_skips_the_backend() -> None:
    """[bypass] authenticated admits a SASL-authenticated client without a lookup."""
    g, backend = gate(Bypass(authenticated=True))
    decision = g.decide_now(req(auth_user="outsider"))
    assert decision is not None
    assert decision.verdict is Verdict.ACCEPT
    assert "SASL-authenticated" in decision.reasons[0]
    assert backend.lookups == 0
    judged = g.decide_now(req())
    assert judged is not None
    assert judged.verdict is Verdict.REJECT


@pytest.mark.parametrize(
    ("client", "admitted"),
    [("192.0.2.7", True), ("192.0.3.7", False), ("2001:db8::5", True), ("::ffff:1", False),
     ("[192.0.2.9]", True), ("not-an-ip", False), (None, False)],
)
def test_network_bypass(client: str | None, admitted: bool) -> None:
    """[bypass] networks admits clients inside the listed networks only (v4 and v6)."""
    nets = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    g, _ = gate(Bypass(networks=nets))
    decision = asyncio.run(g.decide(req(client_address=client)))
    assert (decision.verdict is Verdict.ACCEPT) is admitted


def test_bypass_config_parses_and_names_bad_networks() -> None:
    """[bypass] networks are parsed as networks; a bad one is reported with its key."""
    config = parse_config({"bypass": {"authenticated": True, "networks": ["10.0.0.0/8"]}})
    assert config.bypass.authenticated is True
    assert config.bypass.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(Exception, match=r"bypass\.networks: 'ten' is not a network"):
        parse_config({"bypass": {"networks": ["ten"]}})


def test_syslog_target_uses_facility_mail(tmp_path: Path, restore_logging: None) -> None:
    """[log] target = "syslog" sends to the configured socket with facility mail."""
    path = tmp_path / "log.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(5)
    try:
        setup_logging(logging.INFO, "syslog", str(path))
        logging.getLogger("listgate.decision").warning("hello %s", "postmaster")
        datagram = sink.recv(4096).decode()
    finally:
        sink.close()
    # facility mail (2) * 8 + severity warning (4) = 20
    assert datagram.startswith("<20>listgate[")
    assert "listgate.decision: hello postmaster" in datagram


def test_journal_target_prefixes_priorities(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """[log] target = "journal" writes <priority>-prefixed lines journald understands."""
    setup_logging(logging.INFO, "journal")
    logging.getLogger("listgate.milter").error("broken packet")
    logging.getLogger("listgate.decision").info("decided")
    err = capsys.readouterr().err.splitlines()
    assert "<3>listgate.milter: broken packet" in err
    assert "<6>listgate.decision: decided" in err


def _emit_everywhere() -> None:
    for name in ("listgate.decision", *THIRD_PARTY_LOGGERS):
        logging.getLogger(name).debug("%s debug", name)
        logging.getLogger(name).info("%s info", name)
        logging.getLogger(name).warning("%s warning", name)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_other_libraries_log_warnings_only(
    capsys: pytest.CaptureFixture[str], restore_logging: None, level: int
) -> None:
    """Above debug, httpx/httpcore/mailmanclient/asyncio/urllib3 log WARNING and up only
    (no "HTTP Request" lines), while listgate's own lines follow [log] level."""
    setup_logging(level)
    _emit_everywhere()
    err = capsys.readouterr().err
    for name in THIRD_PARTY_LOGGERS:
        assert f"{name} warning" in err
        assert f"{name} info" not in err
        assert f"{name} debug" not in err
    assert ("listgate.decision info" in err) is (level == logging.INFO)


def test_debug_level_shows_other_libraries_too(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """[log] level = "debug" shows every library's debug lines (the REST traffic); a
    reload back to info hides them again."""
    setup_logging(logging.DEBUG)
    _emit_everywhere()
    err = capsys.readouterr().err
    for name in THIRD_PARTY_LOGGERS:
        assert f"{name} debug" in err
        assert f"{name} info" in err
    setup_logging(logging.INFO)
    _emit_everywhere()
    err = capsys.readouterr().err
    assert "httpx info" not in err
    assert "listgate.decision info" in err
