"""listgate behind a real Exim 4.96 (Debian's exim4-daemon-light, unpacked, never installed).

Exim asks listgate's Postfix policy listener from its RCPT ACL with ``${readsocket}``,
through the shipped drop-in (deploy/exim/listgate_rcpt_acl, included by the
CHECK_RCPT_LOCAL_ACL_FILE hook that deploy/exim/exim4.conf.localmacros sets, as in
Debian's acl_check_rcpt). One private Exim daemon serves the whole module on four
ports, each asking its own policy port: "main" (listgate, static map), "down" (a
listgate that one test stops), "mailman" (listgate, Mailman backend, a real core) and
"silent" (a port that never answers, 1 s timeout). Accepted mail goes over LMTP to
the aiosmtpd sink. Exim runs in private mount+UTS namespaces under strace; the last test
reads the trace. The scenarios every MTA shares come from mta_scenarios.py (the
``Test*`` classes). Run with ``-s`` to see the SMTP transcripts (also saved in each
test's tmp dir as ``smtp-transcripts.txt``).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import recorded_smtp
from .harness import (
    ALICE,
    BOB,
    LIST,
    MEMBER,
    OUTSIDER,
    POSTERS,
    ListgateProcess,
    LmtpSink,
    SmtpSessions,
    accepts_connections,
    free_port,
    instance_lifetime,
    message_bytes,
    new_token,
    rejection,
    serving,
    traversable_tmpdir,
)
from .mailman_fixtures import MailmanListgate, MailmanWorld
from .mta_harness import EximInstance, EximListener, TracedDaemon, reply_text, wait_for_lines
from .mta_scenarios import (
    EXIM,
    Gate,
    LoopbackScenarios,
    MailmanScenarios,
    MtaEnv,
    StaticMapScenarios,
    TransactionScenarios,
    deliver,
    transaction,
)

MAIL_OK, RCPT_OK = EXIM.mail_ok(""), EXIM.rcpt_ok("")  # Exim's name no address
UNAVAILABLE = "451 4.3.5 Policy service unavailable, try again later"
"""The shipped ACL's readsocket fail string: listgate unreachable or silent."""
LISTENERS = ("main", "down", "mailman", "silent")
SILENT_TIMEOUT = 1.0
"""LISTGATE_TIMEOUT (seconds) of listener "silent", whose policy port accepts connections
but never answers."""
EXIM_FILES = ("log/mainlog", "log/paniclog", "exim.conf", "strace.log", "daemon.out")
"""What a test report keeps of the Exim instance."""


# --------------------------------------------------------------------------- fixtures


EximEnv = MtaEnv[EximInstance]
"""The module's Exim and the listgate policy spec each of its listeners uses."""


@pytest.fixture(scope="module")
def exim_env(sink: LmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EximEnv]:
    """A private Exim daemon with listeners main, down, mailman and silent."""
    base = traversable_tmpdir("lg-e2e-exim-")
    policy = {name: f"inet:127.0.0.1:{free_port()}" for name in LISTENERS}
    exim = EximInstance(
        base,
        [EximListener(name, free_port(), policy[name],
                      f"{SILENT_TIMEOUT:g}s" if name == "silent" else "10s")
         for name in LISTENERS],
        sink.port,
    )
    with instance_lifetime(exim, base, lambda: tmp_path_factory.mktemp("exim"), EXIM_FILES):
        yield MtaEnv(exim, EXIM, policy)


@pytest.fixture(scope="module")
def listgate_exim(
    exim_env: EximEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The listgate (static map) that listener "main" asks."""
    yield from serving(ListgateProcess(
        tmp_path_factory.mktemp("listgate-exim"), [f"inet:127.0.0.1:{free_port()}"], POSTERS,
        policy_listen=[exim_env.specs["main"]],
    ))


@pytest.fixture(scope="module")
def listgate_mailman(
    world: MailmanWorld, exim_env: EximEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate with the Mailman backend (empty cache at start), for listener "mailman"."""
    yield from serving(MailmanListgate(
        tmp_path_factory.mktemp("listgate-exim-mailman"), [f"inet:127.0.0.1:{free_port()}"],
        world.core, {"policy": {"listen": [exim_env.specs["mailman"]]}},
    ))


@pytest.fixture(scope="module")
def gate(exim_env: EximEnv, listgate_exim: ListgateProcess) -> Gate:
    """Listener "main" and its listgate, for the shared scenarios."""
    return exim_env.gate("main", listgate_exim)


@pytest.fixture(scope="module")
def mailman_gate(exim_env: EximEnv, listgate_mailman: MailmanListgate) -> Gate:
    """Listener "mailman" and its listgate, for the shared Mailman scenarios."""
    return exim_env.gate("mailman", listgate_mailman)


@pytest.fixture(scope="module")
def traced_daemon(exim_env: EximEnv) -> TracedDaemon:
    """The Exim daemon's strace."""
    assert exim_env.instance.daemon is not None
    return exim_env.instance.daemon


@pytest.fixture
def smtp(
    exim_env: EximEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SmtpSessions]:
    """Recorded SMTP sessions (see :func:`conftest.recorded_smtp`)."""
    exim = exim_env.instance
    mark = len(exim.log_text())
    yield from recorded_smtp(
        request, tmp_path, {name: exim.port(name) for name in LISTENERS},
        lambda: f"=== Exim mainlog during the test ===\n{exim.log_text()[mark:]}",
        ("listgate_exim", "listgate_mailman"),
    )


# --------------------------------------------------------------------------- static map


class TestStaticMap(TransactionScenarios, StaticMapScenarios):
    """The static-map scenarios of every MTA, on listener "main"."""


def test_nonmember_gets_listgates_exact_550(
    exim_env: EximEnv, listgate_exim: ListgateProcess, smtp: SmtpSessions
) -> None:
    """A nonmember gets 550 5.7.1 with listgate's text, unchanged (Exim splits it into
    two lines on the wire, each with 5.7.1; its log keeps it whole); nothing is queued."""
    c = transaction(smtp, exim_env.mta, "main", OUTSIDER, "nonmember posts to the list")
    reply = c.rcpt(LIST)
    assert reply_text(reply) == rejection(OUTSIDER)
    assert reply.text.split("\n") == [
        f"5.7.1 <{OUTSIDER}> is not allowed to post to", f"5.7.1 <{LIST}>"
    ]
    assert c.command("DATA").code == 503
    wait_for_lines(
        exim_env.instance.log_text,
        rf"F=<{re.escape(OUTSIDER)}> rejected RCPT <{re.escape(LIST)}>: "
        + re.escape(rejection(OUTSIDER)) + "$",
        "Exim's log of the rejected RCPT",
    )
    assert exim_env.instance.queue_count() == 0
    assert listgate_exim.decided(OUTSIDER, LIST, "reject")


def test_service_addresses_are_not_gated(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: SmtpSessions
) -> None:
    """Mail from a nonmember to the list's -request and -owner addresses is accepted and
    delivered; the ACL does not ask listgate about them (no decision logged)."""
    local, _, domain = LIST.partition("@")
    service = [f"{local}-request@{domain}", f"{local}-owner@{domain}"]
    before = len(listgate_exim.decisions())
    c = transaction(smtp, exim_env.mta, "main", OUTSIDER, "nonmember to -request and -owner")
    for rcpt in service:
        assert c.rcpt(rcpt).line == RCPT_OK, rcpt
    deliver(c, exim_env.mta, sink, OUTSIDER, service)
    assert listgate_exim.decisions()[before:] == []


def test_listgate_stopped_gives_4xx_and_nothing_is_delivered(
    exim_env: EximEnv, sink: LmtpSink, smtp: SmtpSessions, tmp_path: Path
) -> None:
    """listgate stopped between two RCPTs of one transaction: the list gets 451, not the
    previous recipient's answer. In a new session every gated recipient gets 451, DATA is
    refused and nothing is delivered; -owner still gets through."""
    spec = exim_env.specs["down"]
    lg = ListgateProcess(tmp_path, [f"inet:127.0.0.1:{free_port()}"], POSTERS,
                         policy_listen=[spec])
    lg.start()
    try:
        c = transaction(smtp, exim_env.mta, "down", MEMBER,
                        "listgate stops in the middle of a transaction")
        assert c.rcpt(ALICE).line == RCPT_OK
    finally:
        assert lg.stop() == 0, lg.stderr_text()
    assert not accepts_connections(spec), "something still listens"
    assert c.rcpt(LIST).line == UNAVAILABLE
    assert c.rcpt(BOB).line == UNAVAILABLE
    assert c.reset().code == 250

    token = new_token()
    down = transaction(smtp, exim_env.mta, "down", MEMBER, "listgate stopped")
    assert down.rcpt(LIST).line == UNAVAILABLE
    assert down.rcpt(ALICE).line == UNAVAILABLE
    first, final = down.data_message(message_bytes(MEMBER, [LIST, ALICE], token))
    assert first.code == 503, first
    assert final is None
    assert down.reset().code == 250
    owner = f"{LIST.partition('@')[0]}-owner@{LIST.partition('@')[2]}"
    assert down.mail(MEMBER).line == MAIL_OK
    assert down.rcpt(owner).line == RCPT_OK
    deliver(down, exim_env.mta, sink, MEMBER, [owner])
    assert sink.deliveries_for(token) == []


def test_silent_policy_server_gives_451_after_the_timeout(
    exim_env: EximEnv, smtp: SmtpSessions
) -> None:
    """A policy port that accepts connections (the kernel completes them from the listen
    backlog) but never answers: after LISTGATE_TIMEOUT the recipient gets the fail
    string's 451, never a pass, and nothing is delivered."""
    host, _, port = exim_env.specs["silent"].removeprefix("inet:").rpartition(":")
    with socket.create_server((host, int(port)), backlog=16):
        c = transaction(smtp, exim_env.mta, "silent", MEMBER, "policy server never answers")
        began = time.monotonic()
        assert c.rcpt(LIST).line == UNAVAILABLE
        waited = time.monotonic() - began
        assert c.command("DATA").code == 503
    assert SILENT_TIMEOUT - 0.05 <= waited < SILENT_TIMEOUT + 3.0, waited
    assert exim_env.instance.queue_count() == 0


# --------------------------------------------------------------------------- Mailman


class TestMailman(MailmanScenarios):
    """The Mailman-backend scenarios of every MTA, on listener "mailman"."""


# --------------------------------------------------------------------------- network


class TestLoopback(LoopbackScenarios):
    """Exim's strace, read after every other test of the module (keep this class last)."""
