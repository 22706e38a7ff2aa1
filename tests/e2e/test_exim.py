"""listgate behind a real Exim 4.96 (Debian's exim4-daemon-light, unpacked, never installed).

Exim asks listgate's Postfix policy listener from its RCPT ACL with ``${readsocket}``,
through the shipped drop-in (deploy/exim/listgate_rcpt_acl, included by the
CHECK_RCPT_LOCAL_ACL_FILE hook that deploy/exim/exim4.conf.localmacros sets, as in
Debian's acl_check_rcpt). One private Exim daemon serves the whole module on four
ports, each asking its own policy port: "main" (listgate, static map), "down" (a
listgate that one test stops), "mailman" (listgate, Mailman backend, a real core) and
"silent" (a port that never answers, 1 s timeout). Accepted mail goes over LMTP to
the aiosmtpd sink. Exim runs in private mount+UTS namespaces under strace; the last test
reads the trace. Run with ``-s`` to see the SMTP transcripts (also saved in each test's
tmp dir as ``smtp-transcripts.txt``).
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from .conftest import _failed
from .harness import (
    LIST,
    MEMBER,
    OUTSIDER,
    POSTERS,
    ListgateProcess,
    LmtpSink,
    RecordingSMTP,
    accepts_connections,
    free_port,
    message_bytes,
    new_token,
    tail,
    traversable_tmpdir,
    wait_until,
)
from .mailman_fixtures import (
    CAROL_ALT,
    MailmanListgate,
    MailmanWorld,
    populate,
    require_mailman,
)
from .mta_harness import (
    EximInstance,
    EximListener,
    MtaSessions,
    network_calls,
    outbound_calls,
    reply_text,
    wait_for_lines,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"
MAIL_OK = "250 OK"
RCPT_OK = "250 Accepted"
DATA_GO = '354 Enter message, ending with "." on a line by itself'
UNAVAILABLE = "451 4.3.5 Policy service unavailable, try again later"
"""The shipped ACL's readsocket fail string: listgate unreachable or silent."""
LISTENERS = ("main", "down", "mailman", "silent")
SILENT_TIMEOUT = 1.0
"""LISTGATE_TIMEOUT (seconds) of listener "silent", whose policy port accepts connections
but never answers."""


def rejection(sender: str, lst: str = LIST) -> str:
    """listgate's reject reply, passed through by the ACL unchanged (as one line)."""
    return f"550 5.7.1 <{sender}> is not allowed to post to <{lst}>"


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class EximEnv:
    """The module's Exim and the policy service each of its listeners asks."""

    exim: EximInstance
    policy: dict[str, str]
    """listener -> listgate [policy] listen spec."""


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
    try:
        exim.create()
        exim.start()
        yield EximEnv(exim, policy)
    finally:
        try:
            exim.stop()
        finally:
            keep = tmp_path_factory.mktemp("exim")
            for name in ("log/mainlog", "log/paniclog", "exim.conf", "strace.log", "daemon.out"):
                if (base / name).exists():
                    shutil.copy(base / name, keep / Path(name).name)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def listgate_exim(
    exim_env: EximEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The listgate (static map) that listener "main" asks."""
    lg = ListgateProcess(
        tmp_path_factory.mktemp("listgate-exim"), [f"inet:127.0.0.1:{free_port()}"], POSTERS,
        policy_listen=[exim_env.policy["main"]],
    )
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanWorld]:
    """A running Mailman core with the test list and its posters."""
    require_mailman()
    core = MailmanCore(tmp_path_factory.mktemp("mailman-core"))
    core.start()
    try:
        yield populate(core)
    finally:
        core.stop()


@pytest.fixture(scope="module")
def listgate_mailman(
    world: MailmanWorld, exim_env: EximEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailmanListgate]:
    """listgate with the Mailman backend (empty cache at start), for listener "mailman"."""
    lg = MailmanListgate(
        tmp_path_factory.mktemp("listgate-exim-mailman"), [f"inet:127.0.0.1:{free_port()}"],
        world.core, {"policy": {"listen": [exim_env.policy["mailman"]]}},
    )
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@pytest.fixture
def smtp(
    exim_env: EximEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MtaSessions]:
    """Recorded SMTP sessions; transcripts printed (``-s``) and saved in tmp_path."""
    ports = {name: exim_env.exim.port(name) for name in LISTENERS}
    sessions = MtaSessions(ports, request.node.name)
    mark = len(exim_env.exim.log_text())
    yield sessions
    text = sessions.close()
    (tmp_path / "smtp-transcripts.txt").write_text(text)
    print(f"\n{text}", end="")
    if _failed(request):
        print(f"=== Exim mainlog during the test ===\n{exim_env.exim.log_text()[mark:]}")
        for name in ("listgate_exim", "listgate_mailman"):
            if name in request.fixturenames:
                lg = request.getfixturevalue(name)
                print(f"=== {name} stderr, tail ===\n{tail(lg.stderr_text())}")


# --------------------------------------------------------------------------- helpers


def deliver(
    client: RecordingSMTP, env: EximEnv, sink: LmtpSink, sender: str, expect: list[str]
) -> str:
    """DATA after MAIL/RCPT: 354, 250 with Exim's id; delivered to exactly *expect*, once
    each, with the envelope sender kept; the message's token."""
    token = new_token()
    first, final = client.data_message(message_bytes(sender, expect, token))
    assert first.line == DATA_GO
    assert final is not None, "no reply after the message body"
    assert final.code == 250, final
    assert final.text.startswith("OK id="), final
    sink.wait_for(token, expect)
    env.exim.wait_queue_empty()
    assert sink.recipients_for(token) == sorted(r.lower() for r in expect), "wrong or duplicate"
    assert [d.mail_from for d in sink.deliveries_for(token)] == [sender]
    return token


def decisions(lg: ListgateProcess) -> list[str]:
    """listgate's decision log lines so far."""
    return [ln for ln in lg.stderr_text().splitlines() if "listgate.decision" in ln]


# --------------------------------------------------------------------------- static map


def test_member_is_accepted_and_delivered_once(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """A member gets 250 at RCPT (listgate answered DUNNO) and the post reaches the sink
    exactly once."""
    c = smtp.connect("main", "member posts to the list")
    assert c.hello().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, exim_env, sink, MEMBER, [LIST])
    assert any(f"from=<{MEMBER}> to=<{LIST}>" in ln and "verdict=accept" in ln
               for ln in decisions(listgate_exim))


def test_nonmember_gets_listgates_exact_550(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """A nonmember gets 550 5.7.1 with listgate's text, unchanged (Exim splits it into
    two lines on the wire, each with 5.7.1; its log keeps it whole); nothing is queued."""
    c = smtp.connect("main", "nonmember posts to the list")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    reply = c.rcpt(LIST)
    assert reply_text(reply) == rejection(OUTSIDER)
    assert reply.text.split("\n") == [
        f"5.7.1 <{OUTSIDER}> is not allowed to post to", f"5.7.1 <{LIST}>"
    ]
    assert c.command("DATA").code == 503
    wait_for_lines(
        exim_env.exim.log_text,
        rf"F=<{re.escape(OUTSIDER)}> rejected RCPT <{re.escape(LIST)}>: "
        + re.escape(rejection(OUTSIDER)) + "$",
        "Exim's log of the rejected RCPT",
    )
    assert exim_env.exim.queue_count() == 0
    assert any(f"from=<{OUTSIDER}> to=<{LIST}>" in ln and "verdict=reject" in ln
               for ln in decisions(listgate_exim))


def test_multi_recipient_only_the_list_is_refused(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """alice, list, bob from a nonmember: 250/550/250, and DATA reaches alice and bob only."""
    c = smtp.connect("main", "nonmember to alice, list, bob")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    assert reply_text(c.rcpt(LIST)) == rejection(OUTSIDER)
    assert c.rcpt(BOB).line == RCPT_OK
    deliver(c, exim_env, sink, OUTSIDER, [ALICE, BOB])


def test_two_transactions_in_one_session(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """One SMTP session, three transactions: a nonmember's post (list refused, alice
    delivered), a member's post to the list (delivered), a nonmember again (refused: no
    answer carries over from one recipient or transaction to the next)."""
    c = smtp.connect("main", "three transactions, one session")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert reply_text(c.rcpt(LIST)) == rejection(OUTSIDER)
    assert c.rcpt(ALICE).line == RCPT_OK
    deliver(c, exim_env, sink, OUTSIDER, [ALICE])
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    deliver(c, exim_env, sink, MEMBER, [LIST])
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    assert reply_text(c.rcpt(LIST)) == rejection(OUTSIDER)
    assert c.reset().code == 250


def test_service_addresses_are_not_gated(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """Mail from a nonmember to the list's -request and -owner addresses is accepted and
    delivered; the ACL does not ask listgate about them (no decision logged)."""
    local, _, domain = LIST.partition("@")
    service = [f"{local}-request@{domain}", f"{local}-owner@{domain}"]
    before = len(decisions(listgate_exim))
    c = smtp.connect("main", "nonmember to -request and -owner")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    for rcpt in service:
        assert c.rcpt(rcpt).line == RCPT_OK, rcpt
    deliver(c, exim_env, sink, OUTSIDER, service)
    assert decisions(listgate_exim)[before:] == []


def test_listgate_stopped_gives_4xx_and_nothing_is_delivered(
    exim_env: EximEnv, sink: LmtpSink, smtp: MtaSessions, tmp_path: Path
) -> None:
    """listgate stopped between two RCPTs of one transaction: the list gets 451, not the
    previous recipient's answer. In a new session every gated recipient gets 451, DATA is
    refused and nothing is delivered; -owner still gets through."""
    spec = exim_env.policy["down"]
    lg = ListgateProcess(tmp_path, [f"inet:127.0.0.1:{free_port()}"], POSTERS,
                         policy_listen=[spec])
    lg.start()
    try:
        c = smtp.connect("down", "listgate stops in the middle of a transaction")
        assert c.hello().code == 250
        assert c.mail(MEMBER).line == MAIL_OK
        assert c.rcpt(ALICE).line == RCPT_OK
    finally:
        assert lg.stop() == 0, lg.stderr_text()
    assert not accepts_connections(spec), "something still listens"
    assert c.rcpt(LIST).line == UNAVAILABLE
    assert c.rcpt(BOB).line == UNAVAILABLE
    assert c.reset().code == 250

    token = new_token()
    down = smtp.connect("down", "listgate stopped")
    assert down.hello().code == 250
    assert down.mail(MEMBER).line == MAIL_OK
    assert down.rcpt(LIST).line == UNAVAILABLE
    assert down.rcpt(ALICE).line == UNAVAILABLE
    first, final = down.data_message(message_bytes(MEMBER, [LIST, ALICE], token))
    assert first.code == 503, first
    assert final is None
    assert down.reset().code == 250
    owner = f"{LIST.partition('@')[0]}-owner@{LIST.partition('@')[2]}"
    assert down.mail(MEMBER).line == MAIL_OK
    assert down.rcpt(owner).line == RCPT_OK
    deliver(down, exim_env, sink, MEMBER, [owner])
    assert sink.deliveries_for(token) == []


def test_silent_policy_server_gives_451_after_the_timeout(
    exim_env: EximEnv, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """A policy port that accepts connections (the kernel completes them from the listen
    backlog) but never answers: after LISTGATE_TIMEOUT the recipient gets the fail
    string's 451, never a pass, and nothing is delivered."""
    host, _, port = exim_env.policy["silent"].removeprefix("inet:").rpartition(":")
    with socket.create_server((host, int(port)), backlog=16):
        c = smtp.connect("silent", "policy server never answers")
        assert c.hello().code == 250
        assert c.mail(MEMBER).line == MAIL_OK
        began = time.monotonic()
        assert c.rcpt(LIST).line == UNAVAILABLE
        waited = time.monotonic() - began
        assert c.command("DATA").code == 503
    assert SILENT_TIMEOUT - 0.05 <= waited < SILENT_TIMEOUT + 3.0, waited
    assert exim_env.exim.queue_count() == 0


# --------------------------------------------------------------------------- Mailman


def post_member(
    smtp: MtaSessions, env: EximEnv, sink: LmtpSink, sender: str, lst: str, title: str
) -> None:
    """One session: *sender* posts to *lst*: 250 at RCPT, delivered once."""
    c = smtp.connect("mailman", title)
    assert c.hello().code == 250
    assert c.mail(sender).line == MAIL_OK
    assert c.rcpt(lst).line == RCPT_OK
    deliver(c, env, sink, sender, [lst])


def test_mailman_member_uncached_is_accepted(
    world: MailmanWorld, exim_env: EximEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend, first lookup (nothing cached: listgate must ask Mailman over REST
    after Exim has already half-closed the policy connection): the member gets 250 and the
    post is delivered. listgate must answer before it closes on end of input."""
    assert decisions(listgate_mailman) == [], "this must be the listgate's first request"
    post_member(smtp, exim_env, sink, MEMBER, world.list_address, "member, cold cache")
    assert any(f"from=<{MEMBER}> to=<{world.list_address}>" in ln and "verdict=accept" in ln
               for ln in decisions(listgate_mailman))


def test_mailman_nonmember_gets_550(
    world: MailmanWorld, exim_env: EximEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend: a nonmember of a list that rejects nonmembers gets listgate's 550
    (first lookup for this sender), alice in the same transaction is delivered."""
    lst = world.list_address
    c = smtp.connect("mailman", "nonmember, cold cache")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    reply = c.rcpt(lst)
    assert reply_text(reply) == rejection(OUTSIDER, lst), reply
    assert c.rcpt(ALICE).line == RCPT_OK
    deliver(c, exim_env, sink, OUTSIDER, [ALICE])


def test_mailman_linked_address_is_accepted(
    world: MailmanWorld, exim_env: EximEnv, listgate_mailman: MailmanListgate,
    sink: LmtpSink, smtp: MtaSessions,
) -> None:
    """Mailman backend: an address linked to a subscribed member's user (not itself
    subscribed) may post, as in Mailman: 250 and delivered."""
    post_member(smtp, exim_env, sink, CAROL_ALT, world.list_address, "linked address")


# --------------------------------------------------------------------------- network


def test_exim_queried_no_resolver_and_stayed_on_loopback(
    exim_env: EximEnv, listgate_exim: ListgateProcess, sink: LmtpSink, smtp: MtaSessions
) -> None:
    """strace of every Exim process since the daemon started (this module's sessions,
    policy requests, deliveries): every connect/sendto/sendmsg went to 127.0.0.1 and none
    to port 53. The policy and sink connections are in the trace, so it saw the traffic."""
    c = smtp.connect("main", "one more session for the trace")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    assert reply_text(c.rcpt(LIST)) == rejection(OUTSIDER)
    deliver(c, exim_env, sink, OUTSIDER, [ALICE])
    daemon = exim_env.exim.daemon
    assert daemon is not None
    policy_port = int(exim_env.policy["main"].rsplit(":", 1)[1])

    def seen() -> set[int] | None:
        ports = {call.port for call in network_calls(daemon.trace())}
        return ports if {policy_port, sink.port} <= ports else None

    wait_until(seen, 10.0, "the policy and sink connections in the strace log")
    calls = network_calls(daemon.trace())
    print(f"{len(calls)} socket calls with a peer address; ports: "
          f"{sorted({call.port for call in calls})}")
    assert outbound_calls(calls) == []
