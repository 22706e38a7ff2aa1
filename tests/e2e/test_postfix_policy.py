"""listgate's policy front end behind a real Postfix (check_policy_service at RCPT).

The private Postfix instance (conftest.py) has two listeners without a milter whose
``smtpd_recipient_restrictions`` is ``check_policy_service inet:127.0.0.1:PORT``:
"policy" asks the module-wide listgate below, "policy-down" a port whose listgate one test
stops. Accepted mail goes over LMTP to the aiosmtpd sink. The scenarios every MTA shares
come from mta_scenarios.py (class TestStaticMap). Run with ``-s`` to see the SMTP
transcripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PostfixEnv
from .harness import (
    ALICE,
    LIST,
    MAIL_OK,
    MEMBER,
    NO_VALID_RCPT,
    OUTSIDER,
    POSTERS,
    RCPT_OK,
    ListgateProcess,
    LmtpSink,
    SmtpSessions,
    accepts_connections,
    free_port,
    message_bytes,
    new_token,
    serving,
    tail,
    wait_until,
)
from .mta_scenarios import POSTFIX_POLICY, Gate, Mta, StaticMapScenarios, transaction

pytestmark = pytest.mark.postfix


def rejection(sender: str, lst: str = LIST) -> str:
    """The exact RCPT reply Postfix sends for listgate's ``action=550 5.7.1 ...``: Postfix
    keeps the code and DSN and puts ``<rcpt>: Recipient address rejected:`` before the text."""
    return POSTFIX_POLICY.rejection(sender, lst)


def policy_down(rcpt: str) -> str:
    """Postfix's reply when the policy server cannot be reached (its default action)."""
    return f"451 4.3.5 <{rcpt}>: Recipient address rejected: Server configuration problem"


@pytest.fixture(scope="module")
def listgate_policy(
    postfix_env: PostfixEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The listgate that listener "policy" asks (its milter port is unused)."""
    lg = ListgateProcess(
        tmp_path_factory.mktemp("listgate-policy"),
        [f"inet:127.0.0.1:{free_port()}"],
        POSTERS,
        policy_listen=[postfix_env.policy_service],
    )
    try:
        yield from serving(lg)
    finally:
        print(f"=== listgate (policy) stderr, tail ===\n{tail(lg.stderr_text(), 60)}")


@pytest.fixture(scope="module")
def mta(postfix_env: PostfixEnv) -> Mta:
    """The shared Postfix, asking listgate's policy server, for :mod:`mta_scenarios`."""
    return Mta(POSTFIX_POLICY, postfix_env.postfix)


@pytest.fixture(scope="module")
def gate(mta: Mta, listgate_policy: ListgateProcess) -> Gate:
    """Listener "policy" and its listgate, for the shared scenarios."""
    return Gate(mta, "policy", listgate_policy)


class TestStaticMap(StaticMapScenarios):
    """The static-map scenarios of every MTA, on listener "policy"."""


def test_non_member_gets_the_exact_postfix_550(
    postfix_env: PostfixEnv, mta: Mta, listgate_policy: ListgateProcess, sink: LmtpSink,
    smtp: SmtpSessions,
) -> None:
    """A non-member gets 550 5.7.1 with Postfix's recipient prefix and listgate's text;
    nothing is queued, and Postfix logs a NOQUEUE reject."""
    mark = postfix_env.postfix.log_mark()
    c = transaction(smtp, mta, "policy", OUTSIDER, "non-member posts to the list")
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    token = new_token()
    first, final = c.data_message(message_bytes(OUTSIDER, [LIST], token))
    assert first.line == NO_VALID_RCPT
    assert final is None
    postfix_env.postfix.wait_for_log(
        r"postfix-e2e/policy/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+: "
        + re.escape(rejection(OUTSIDER))
        + r"; from=<outsider@example\.net> to=<list@example\.org> proto=ESMTP",
        since=mark,
    )
    postfix_env.postfix.wait_queue_empty()
    assert sink.deliveries_for(token) == []
    assert listgate_policy.decided(OUTSIDER, LIST, "reject")


def test_transactions_and_sessions_reuse_the_policy_connection(
    postfix_env: PostfixEnv, listgate_policy: ListgateProcess, smtp: SmtpSessions
) -> None:
    """Every RCPT is one request; Postfix keeps the policy connection open across RCPTs,
    transactions and (within one smtpd process) SMTP sessions."""
    before = listgate_policy.decisions()
    for i in range(3):
        c = smtp.connect("policy", f"session {i}")
        assert c.hello().code == 250
        for sender, reply in ((OUTSIDER, rejection(OUTSIDER)), (MEMBER, RCPT_OK)) * 2:
            assert c.mail(sender).line == MAIL_OK
            assert c.rcpt(LIST).line == reply
            assert c.reset().code == 250
        c.close_politely()

    def new_lines() -> list[str] | None:
        got = listgate_policy.decisions()[len(before):]
        return got if len(got) >= 12 else None

    lines = wait_until(new_lines, 5.0, "12 decision lines")
    conns = {m.group(1) for line in lines if (m := re.search(r"decision: \[(\w+)\]", line))}
    print(f"12 requests over 3 SMTP sessions used {len(conns)} policy connection(s): {conns}")
    assert len(lines) == 12
    assert len(conns) <= 3  # at most one per SMTP session, usually a single one


def test_policy_server_stopped_gives_451(
    postfix_env: PostfixEnv, mta: Mta, tmp_path: Path, smtp: SmtpSessions
) -> None:
    """With listgate's policy listener gone, Postfix answers 451 4.3.5 for every recipient
    that reaches check_policy_service (the list and others alike), never 250 or 550."""
    lg = ListgateProcess(
        tmp_path, [f"inet:127.0.0.1:{free_port()}"], POSTERS,
        policy_listen=[postfix_env.policy_down_service],
    )
    lg.start()
    try:
        up = transaction(smtp, mta, "policy-down", OUTSIDER, "listgate running")
        assert up.rcpt(LIST).line == rejection(OUTSIDER)  # this listener uses this listgate
        up.close_politely()
    finally:
        assert lg.stop() == 0, lg.stderr_text()
    assert not accepts_connections(postfix_env.policy_down_service), "something still listens"

    mark = postfix_env.postfix.log_mark()
    down = transaction(smtp, mta, "policy-down", MEMBER, "listgate stopped")
    assert down.rcpt(LIST).line == policy_down(LIST)
    assert down.rcpt(ALICE).line == policy_down(ALICE)
    assert down.command("DATA").line == NO_VALID_RCPT
    port = postfix_env.policy_down_service.rsplit(":", 1)[1]
    postfix_env.postfix.wait_for_log(
        rf"warning: connect to 127\.0\.0\.1:{port}: Connection refused", since=mark
    )
