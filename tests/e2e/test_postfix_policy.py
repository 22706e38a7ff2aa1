"""listgate's policy front end behind a real Postfix (check_policy_service at RCPT).

The private Postfix instance (conftest.py) has two listeners without a milter whose
``smtpd_recipient_restrictions`` is ``check_policy_service inet:127.0.0.1:PORT``:
"policy" asks the module-wide listgate below, "policy-down" a port whose listgate one test
stops. Accepted mail goes over LMTP to the aiosmtpd sink. Run with ``-s`` to see the SMTP
transcripts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import PostfixEnv
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
    wait_until,
)

pytestmark = pytest.mark.postfix

ALICE = "alice@example.org"
BOB = "bob@example.org"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
NO_VALID_RCPT = "554 5.5.1 Error: no valid recipients"

Smtp = Callable[[str, str], RecordingSMTP]


def rejection(sender: str, lst: str = LIST) -> str:
    """The exact RCPT reply Postfix sends for listgate's ``action=550 5.7.1 ...``: Postfix
    keeps the code and DSN and puts ``<rcpt>: Recipient address rejected:`` before the text."""
    return (
        f"550 5.7.1 <{lst}>: Recipient address rejected: "
        f"<{sender}> is not allowed to post to <{lst}>"
    )


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
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()
        print(f"=== listgate (policy) stderr, tail ===\n{tail(lg.stderr_text(), 60)}")


def send_and_check_delivery(
    client: RecordingSMTP,
    env: PostfixEnv,
    sink: LmtpSink,
    sender: str,
    header_to: list[str],
    expect_delivered: list[str],
) -> str:
    """DATA with a fresh token after MAIL/RCPT; wait until delivered; return the token."""
    token = new_token()
    first, final = client.data_message(message_bytes(sender, header_to, token))
    assert first.code == 354, first
    assert final is not None, "no reply after the message body"
    assert final.code == 250, final
    sink.wait_for(token, expect_delivered)
    env.postfix.wait_queue_empty()
    assert sink.recipients_for(token) == sorted(expect_delivered), "wrong or duplicate delivery"
    assert all(d.mail_from == sender for d in sink.deliveries_for(token))
    return token


def decision_lines(lg: ListgateProcess) -> list[str]:
    """listgate's decision log lines so far."""
    return [line for line in lg.stderr_text().splitlines() if "listgate.decision" in line]


def test_member_is_accepted_and_delivered(
    postfix_env: PostfixEnv, listgate_policy: ListgateProcess, sink: LmtpSink, smtp: Smtp
) -> None:
    """A member gets 250 at RCPT (action=DUNNO) and the post reaches the sink once."""
    c = smtp("policy", "member posts to the list")
    assert c.hello().code == 250
    assert c.mail(MEMBER).line == MAIL_OK
    assert c.rcpt(LIST).line == RCPT_OK
    send_and_check_delivery(c, postfix_env, sink, MEMBER, [LIST], [LIST])


def test_non_member_gets_the_exact_postfix_550(
    postfix_env: PostfixEnv, listgate_policy: ListgateProcess, sink: LmtpSink, smtp: Smtp
) -> None:
    """A non-member gets 550 5.7.1 with Postfix's recipient prefix and listgate's text;
    nothing is queued, and Postfix logs a NOQUEUE reject."""
    mark = postfix_env.postfix.log_mark()
    c = smtp("policy", "non-member posts to the list")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
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
    assert any(
        f"from=<{OUTSIDER}> to=<{LIST}>" in line and "verdict=reject" in line
        for line in decision_lines(listgate_policy)
    )


def test_multi_recipient_only_the_list_is_refused(
    postfix_env: PostfixEnv, listgate_policy: ListgateProcess, sink: LmtpSink, smtp: Smtp
) -> None:
    """alice, list, bob from a non-member: 250/550/250, and DATA reaches alice and bob only."""
    c = smtp("policy", "non-member to alice, list, bob")
    assert c.hello().code == 250
    assert c.mail(OUTSIDER).line == MAIL_OK
    assert c.rcpt(ALICE).line == RCPT_OK
    assert c.rcpt(LIST).line == rejection(OUTSIDER)
    assert c.rcpt(BOB).line == RCPT_OK
    send_and_check_delivery(c, postfix_env, sink, OUTSIDER, [ALICE, LIST, BOB], [ALICE, BOB])


def test_transactions_and_sessions_reuse_the_policy_connection(
    postfix_env: PostfixEnv, listgate_policy: ListgateProcess, smtp: Smtp
) -> None:
    """Every RCPT is one request; Postfix keeps the policy connection open across RCPTs,
    transactions and (within one smtpd process) SMTP sessions."""
    before = decision_lines(listgate_policy)
    for i in range(3):
        c = smtp("policy", f"session {i}")
        assert c.hello().code == 250
        for sender, reply in ((OUTSIDER, rejection(OUTSIDER)), (MEMBER, RCPT_OK)) * 2:
            assert c.mail(sender).line == MAIL_OK
            assert c.rcpt(LIST).line == reply
            assert c.reset().code == 250
        c.close_politely()

    def new_lines() -> list[str] | None:
        got = decision_lines(listgate_policy)[len(before):]
        return got if len(got) >= 12 else None

    lines = wait_until(new_lines, 5.0, "12 decision lines")
    conns = {m.group(1) for line in lines if (m := re.search(r"decision: \[(\w+)\]", line))}
    print(f"12 requests over 3 SMTP sessions used {len(conns)} policy connection(s): {conns}")
    assert len(lines) == 12
    assert len(conns) <= 3  # at most one per SMTP session, usually a single one


def test_policy_server_stopped_gives_451(
    postfix_env: PostfixEnv, tmp_path: Path, smtp: Smtp
) -> None:
    """With listgate's policy listener gone, Postfix answers 451 4.3.5 for every recipient
    that reaches check_policy_service (the list and others alike), never 250 or 550."""
    lg = ListgateProcess(
        tmp_path, [f"inet:127.0.0.1:{free_port()}"], POSTERS,
        policy_listen=[postfix_env.policy_down_service],
    )
    lg.start()
    try:
        up = smtp("policy-down", "listgate running")
        assert up.hello().code == 250
        assert up.mail(OUTSIDER).line == MAIL_OK
        assert up.rcpt(LIST).line == rejection(OUTSIDER)  # this listener uses this listgate
        up.close_politely()
    finally:
        assert lg.stop() == 0, lg.stderr_text()
    assert not accepts_connections(postfix_env.policy_down_service), "something still listens"

    mark = postfix_env.postfix.log_mark()
    down = smtp("policy-down", "listgate stopped")
    assert down.hello().code == 250
    assert down.mail(MEMBER).line == MAIL_OK
    assert down.rcpt(LIST).line == policy_down(LIST)
    assert down.rcpt(ALICE).line == policy_down(ALICE)
    assert down.command("DATA").line == NO_VALID_RCPT
    port = postfix_env.policy_down_service.rsplit(":", 1)[1]
    postfix_env.postfix.wait_for_log(
        rf"warning: connect to 127\.0\.0\.1:{port}: Connection refused", since=mark
    )
