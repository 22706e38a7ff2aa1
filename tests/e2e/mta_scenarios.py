"""What every MTA test module asserts alike: sending through an MTA's SMTP port, checking
what the sink received, and the scenarios that hold for every MTA front end of listgate.

An MTA's own replies (MAIL, RCPT, DATA, "queued") differ from MTA to MTA, and so does
the way listgate's reject reaches the client: a :class:`Dialect` holds those words, an
:class:`Mta` adds the running instance's queue, a :class:`Gate` a listener of it and the
listgate that decides there. The scenario classes (``*Scenarios``) hold test methods
that a test module runs against its own MTA by subclassing them as ``Test...`` and
providing the fixtures they name (``gate``, ``mailman_gate``, ``traced_daemon``, plus
``smtp``, ``sink`` and ``world``). The MTA fixtures stay the modules' own, so no MTA is
started more often than one module needs it, and a failure's node id names the module,
so the MTA.

Invariants:
- A scenario asserts every reply it gets, with the exact line the MTA sends.
- :func:`deliver` passes only when the message reached exactly the expected recipients,
  once each, in one delivery with the envelope sender kept, and the MTA's queue is empty.
- Nothing here starts a process: the scenarios use the fixtures of the module they run in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .harness import (
    ALICE,
    BOB,
    LIST,
    MAIL_OK,
    MEMBER,
    OUTSIDER,
    RCPT_OK,
    ListgateProcess,
    LmtpSink,
    RecordingSMTP,
    Reply,
    SmtpSessions,
    message_bytes,
    new_token,
    reject_text,
    rejection,
    wait_until,
)
from .mailman_fixtures import CAROL_ALT, MailmanWorld
from .mta_harness import TracedDaemon, network_calls, outbound_calls, reply_text, spec_port


def _wire_line(reply: Reply) -> str:
    return reply.line


@dataclass(frozen=True)
class Dialect:
    """How one MTA words the replies listgate does not write, and how listgate's reject
    reaches its client."""

    mail_ok: Callable[[str], str]
    """MAIL reply for a sender."""
    rcpt_ok: Callable[[str], str]
    """RCPT reply for an accepted recipient."""
    data_go: str
    """The 354 reply line to DATA."""
    queued: str
    """Regex the text of the 250 after the message body starts with."""
    rejection: Callable[[str, str], str] = rejection
    """(sender, list) -> the RCPT reply a sender who may not post gets."""
    line: Callable[[Reply], str] = _wire_line
    """How a reply is compared with the lines above (one line, as on the wire)."""


POSTFIX_MILTER = Dialect(
    mail_ok=lambda sender: MAIL_OK,
    rcpt_ok=lambda rcpt: RCPT_OK,
    data_go="354 End data with <CR><LF>.<CR><LF>",
    queued=r"2\.0\.0 Ok: queued as ",
)
"""Postfix asking listgate's milter: listgate's reply reaches the client unchanged."""


def _postfix_policy_rejection(sender: str, lst: str) -> str:
    """Postfix keeps the code and DSN of listgate's ``action=550 5.7.1 ...`` and puts
    ``<rcpt>: Recipient address rejected:`` before the text."""
    return f"550 5.7.1 <{lst}>: Recipient address rejected: {reject_text(sender, lst)}"


POSTFIX_POLICY = Dialect(
    mail_ok=POSTFIX_MILTER.mail_ok,
    rcpt_ok=POSTFIX_MILTER.rcpt_ok,
    data_go=POSTFIX_MILTER.data_go,
    queued=POSTFIX_MILTER.queued,
    rejection=_postfix_policy_rejection,
)
"""Postfix asking listgate's policy server (check_policy_service)."""

EXIM = Dialect(
    mail_ok=lambda sender: "250 OK",
    rcpt_ok=lambda rcpt: "250 Accepted",
    data_go='354 Enter message, ending with "." on a line by itself',
    queued=r"OK id=",
    line=reply_text,
)
"""Exim 4.96 with the shipped ACL: listgate's reject passes unchanged, but Exim splits a
long text over several lines (compared joined, see :func:`reply_text`)."""


def _sendmail_rejection(sender: str, lst: str) -> str:
    """Sendmail puts ``<rcpt>... `` before listgate's text."""
    return f"550 5.7.1 <{lst}>... {reject_text(sender, lst)}"


SENDMAIL = Dialect(
    mail_ok=lambda sender: f"250 2.1.0 <{sender}>... Sender ok",
    rcpt_ok=lambda rcpt: f"250 2.1.5 <{rcpt}>... Recipient ok",
    data_go="354 End data with <CR><LF>.<CR><LF>",
    queued=r".* Message accepted for delivery$",
    rejection=_sendmail_rejection,
)
"""Sendmail 8.17 with the shipped INPUT_MAIL_FILTER."""


class Queue(Protocol):
    """An MTA instance's mail queue."""

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        """Wait until every queued message was delivered."""


@dataclass(frozen=True)
class Mta:
    """A running MTA instance: its dialect and its queue."""

    dialect: Dialect
    queue: Queue


@dataclass(frozen=True)
class Gate:
    """One listener of an MTA and the listgate that decides for it."""

    mta: Mta
    listener: str
    listgate: ListgateProcess
    port: int = 0
    """The port listgate listens on for this listener (milter or policy)."""


_Q = TypeVar("_Q", bound=Queue)


@dataclass(frozen=True)
class MtaEnv(Generic[_Q]):
    """A test module's MTA instance and the listgate listen spec each of its listeners
    uses (for Exim: a policy spec; for Sendmail: a milter spec)."""

    instance: _Q
    dialect: Dialect
    specs: dict[str, str]
    """listener -> listgate listen spec, ``inet:127.0.0.1:PORT``."""

    @property
    def mta(self) -> Mta:
        """The instance and its dialect."""
        return Mta(self.dialect, self.instance)

    def gate(self, listener: str, listgate: ListgateProcess) -> Gate:
        """*listener*, with *listgate* listening on its spec."""
        return Gate(self.mta, listener, listgate, spec_port(self.specs[listener]))


def deliver(
    client: RecordingSMTP,
    mta: Mta,
    sink: LmtpSink,
    sender: str,
    expect: Sequence[str],
    *,
    header_to: Sequence[str] | None = None,
    header_from: str | None = None,
) -> str:
    """DATA after MAIL/RCPT (To: *header_to* or *expect*, From: *header_from* or the
    envelope sender): the MTA's 354, then its 250 "queued"; delivered to exactly *expect*,
    once each, in one delivery with the envelope sender kept; the message's token."""
    d = mta.dialect
    token = new_token()
    message = message_bytes(header_from or sender, header_to or expect, token)
    first, final = client.data_message(message)
    assert first.line == d.data_go, first
    assert final is not None, "no reply after the message body"
    assert final.code == 250, final
    assert re.match(d.queued, final.text), final
    sink.wait_for(token, expect)
    mta.queue.wait_queue_empty()
    assert sink.recipients_for(token) == sorted(r.lower() for r in expect), "wrong or duplicate"
    assert [dl.mail_from for dl in sink.deliveries_for(token)] == [sender]
    return token


def transaction(
    smtp: SmtpSessions, mta: Mta, listener: str, sender: str, title: str
) -> RecordingSMTP:
    """A new recorded session to *listener*: EHLO (250) and MAIL *sender* (the MTA's 250)."""
    c = smtp.connect(listener, title)
    assert c.hello().code == 250
    assert c.mail(sender).line == mta.dialect.mail_ok(sender)
    return c


def post(
    smtp: SmtpSessions, gate: Gate, sink: LmtpSink, sender: str, recipients: Sequence[str],
    title: str,
) -> None:
    """One session: MAIL *sender*, RCPT each of *recipients* (all accepted), delivered."""
    d = gate.mta.dialect
    c = transaction(smtp, gate.mta, gate.listener, sender, title)
    for rcpt in recipients:
        assert c.rcpt(rcpt).line == d.rcpt_ok(rcpt), rcpt
    deliver(c, gate.mta, sink, sender, recipients)


# --------------------------------------------------------------------------- scenarios


class StaticMapScenarios:
    """Static map (harness.POSTERS): fixtures ``gate``, ``sink``, ``smtp``."""

    def test_member_is_accepted_and_delivered_once(
        self, gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """A member gets 250 at RCPT (listgate let it pass) and the post reaches the sink
        exactly once; listgate logged an accept."""
        post(smtp, gate, sink, MEMBER, [LIST], "member posts to the list")
        assert gate.listgate.decided(MEMBER, LIST, "accept")

    def test_multi_recipient_only_the_list_is_refused(
        self, gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """alice, list, bob from a non-member: 250/550/250, and DATA reaches alice and bob only."""
        d = gate.mta.dialect
        c = transaction(smtp, gate.mta, gate.listener, OUTSIDER, "non-member to alice, list, bob")
        assert c.rcpt(ALICE).line == d.rcpt_ok(ALICE)
        assert d.line(c.rcpt(LIST)) == d.rejection(OUTSIDER, LIST)
        assert c.rcpt(BOB).line == d.rcpt_ok(BOB)
        deliver(c, gate.mta, sink, OUTSIDER, [ALICE, BOB], header_to=[ALICE, LIST, BOB])


class TransactionScenarios:
    """Several transactions in one session: fixtures ``gate``, ``sink``, ``smtp``."""

    def test_two_transactions_in_one_session(
        self, gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """One SMTP session (behind Sendmail: on one milter connection), three transactions:
        a nonmember's post (list refused, alice delivered), a member's post to the list
        (delivered), a nonmember again (refused: no answer carries over from one recipient
        or transaction to the next)."""
        d, mta = gate.mta.dialect, gate.mta
        c = transaction(smtp, mta, gate.listener, OUTSIDER, "three transactions, one session")
        assert d.line(c.rcpt(LIST)) == d.rejection(OUTSIDER, LIST)
        assert c.rcpt(ALICE).line == d.rcpt_ok(ALICE)
        deliver(c, mta, sink, OUTSIDER, [ALICE])
        assert c.mail(MEMBER).line == d.mail_ok(MEMBER)
        assert c.rcpt(LIST).line == d.rcpt_ok(LIST)
        deliver(c, mta, sink, MEMBER, [LIST])
        assert c.mail(OUTSIDER).line == d.mail_ok(OUTSIDER)
        assert c.rcpt(ALICE).line == d.rcpt_ok(ALICE)
        assert d.line(c.rcpt(LIST)) == d.rejection(OUTSIDER, LIST)
        assert c.reset().code == 250


class MailmanScenarios:
    """Mailman backend (a real core, fixture ``world``); ``mailman_gate``: a listener whose
    listgate started with an empty cache; ``sink``, ``smtp``. Define this class before any
    other test of that listgate: the first test checks it is the listgate's first request."""

    def test_mailman_member_uncached_is_accepted(
        self, world: MailmanWorld, mailman_gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """Mailman backend, first lookup (nothing cached: listgate asks Mailman over REST
        while the MTA waits; through Exim, after Exim has already half-closed the policy
        connection, so listgate must answer before it closes on end of input): the member
        gets 250 and the post is delivered once."""
        lg, lst = mailman_gate.listgate, world.list_address
        assert lg.decisions() == [], "this must be the listgate's first request"
        post(smtp, mailman_gate, sink, MEMBER, [lst], "member, cold cache")
        assert lg.decided(MEMBER, lst, "accept")

    def test_mailman_nonmember_gets_550(
        self, world: MailmanWorld, mailman_gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """Mailman backend: a nonmember of a list that rejects nonmembers gets listgate's 550
        (first lookup for this sender); alice in the same transaction is delivered."""
        mta, d, lst = mailman_gate.mta, mailman_gate.mta.dialect, world.list_address
        c = transaction(smtp, mta, mailman_gate.listener, OUTSIDER, "nonmember, cold cache")
        reply = c.rcpt(lst)
        assert d.line(reply) == d.rejection(OUTSIDER, lst), reply
        assert c.rcpt(ALICE).line == d.rcpt_ok(ALICE)
        deliver(c, mta, sink, OUTSIDER, [ALICE])

    def test_mailman_linked_address_is_accepted(
        self, world: MailmanWorld, mailman_gate: Gate, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """Mailman backend: an address linked to a subscribed member's user (not itself
        subscribed) may post, as in Mailman: 250 and delivered."""
        post(smtp, mailman_gate, sink, CAROL_ALT, [world.list_address], "linked address")


class LoopbackScenarios:
    """An MTA run under strace (fixture ``traced_daemon``) whose listener ``gate`` asks
    listgate on ``gate.port``; ``sink``, ``smtp``. Define this class last in the module:
    its test reads the trace of every session before it."""

    def test_mta_queried_no_resolver_and_stayed_on_loopback(
        self, gate: Gate, traced_daemon: TracedDaemon, sink: LmtpSink, smtp: SmtpSessions
    ) -> None:
        """strace of every process of the MTA since its daemon started (this module's
        sessions, listgate connections, deliveries): every connect/sendto/sendmsg went to
        127.0.0.1 and none to port 53. The listgate and sink connections are in the trace,
        so it saw the traffic."""
        d = gate.mta.dialect
        c = transaction(smtp, gate.mta, gate.listener, OUTSIDER, "one more session for the trace")
        assert c.rcpt(ALICE).line == d.rcpt_ok(ALICE)
        assert d.line(c.rcpt(LIST)) == d.rejection(OUTSIDER, LIST)
        deliver(c, gate.mta, sink, OUTSIDER, [ALICE])

        def seen() -> set[int] | None:
            ports = {call.port for call in network_calls(traced_daemon.trace())}
            return ports if {gate.port, sink.port} <= ports else None

        wait_until(seen, 10.0, "the listgate and sink connections in the strace log")
        calls = network_calls(traced_daemon.trace())
        print(f"{len(calls)} socket calls with a peer address; ports: "
              f"{sorted({call.port for call in calls})}")
        assert outbound_calls(calls) == []
