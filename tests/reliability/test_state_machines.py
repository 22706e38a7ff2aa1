"""Stateful property tests (hypothesis ``RuleBasedStateMachine``) of the sans-IO state
machines, each against an independent model written here from the protocol documents
(libmilter's mfdef.h/mfapi.h, Postfix's milter8.c, SMTPD_POLICY_README):

- ``MilterConnection`` driven by an MTA that sends any sequence of commands (split at any
  byte), and by an application that answers with any reply, legal or not. The model says
  which commands are owed a reply (never ABORT, MACRO, QUIT, QUIT_NC, nor a step the
  negotiation marked no-reply), which replies are legal at each command, and that each
  owed command gets exactly one final reply: the application's, or CONTINUE from the
  connection itself for a step the application did not ask to see.
- ``PolicyConnection`` with pipelined requests, partial requests and surplus replies:
  one reply per request, in order; never a reply without a request.

Memory: after ``NEED_DATA`` neither holds more than one incomplete packet/request.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from listgate.frontends.milter import milter_options
from listgate.milter import (
    NEED_DATA,
    PAUSED,
    Abort,
    Accept,
    ActionFlag,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    Command,
    Connect,
    ConnectionFail,
    Continue,
    Data,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    LocalProtocolError,
    Macro,
    MilterConnection,
    MilterOptions,
    Negotiate,
    NegotiateReply,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNoClose,
    Reject,
    RemoteProtocolError,
    Reply,
    ReplyCode,
    Shutdown,
    Skip,
    TempFail,
    Unknown,
    encode,
    reply_decoder,
)
from listgate.policyd import (
    NEED_DATA as POLICY_NEED_DATA,
)
from listgate.policyd import (
    PolicyConnection,
    PolicyLimits,
    PolicyProtocolError,
    PolicyRequest,
    PolicyStateError,
    ReplyReader,
    encode_request,
)

MAX = 256
STEPS = [Connect, Helo, EnvelopeFrom, EnvelopeRecipient, Data, Header, EndOfHeaders, Body,
         EndOfMessage, Unknown]

# The model, from mfdef.h: the SMFIP_NR_* bit of each step, and what may answer it.
NR_BIT = {Connect: 0x1000, Helo: 0x2000, EnvelopeFrom: 0x4000, EnvelopeRecipient: 0x8000,
          Data: 0x10000, Unknown: 0x20000, EndOfHeaders: 0x40000, Body: 0x80000,
          Header: 0x80}
NEVER = (Abort, Macro, Quit, QuitNoClose)
CONNECTION_VERDICTS = {Accept, Continue, Reject, TempFail, ReplyCode}
MESSAGE_VERDICTS = CONNECTION_VERDICTS | {Discard}
MODIFICATION_ACTION = {AddHeader: 0x01, ChangeHeader: 0x10, AddRecipient: 0x04,
                       Quarantine: 0x20}
SMFIP_SKIP = 0x400
V1_PROTOCOL = 0x3F

OPTIONS = [
    milter_options(MAX),
    milter_options(MAX, headers=True),
    MilterOptions(events=frozenset(STEPS), no_reply=frozenset(), max_packet_size=MAX,
                  actions=ActionFlag.ADDHDRS, capabilities=ProtocolFlag.SKIP),
    MilterOptions(events=frozenset(STEPS), no_reply=frozenset(STEPS) - {EndOfMessage},
                  max_packet_size=MAX),
    MilterOptions(events=frozenset({EndOfMessage}), no_reply=frozenset(), max_packet_size=MAX),
]
OFFERS = [
    Negotiate(6, 0x1FF, 0x1FFFFF),  # Postfix 3.x
    Negotiate(6, 0x1FF, 0x1FF7FF & ~0xFF080),  # no NR_* bits offered
    Negotiate(2, 0, 0),  # v2, libmilter's v1 defaults
    Negotiate(4, 0x3F, 0x3FF),
    Negotiate(6, 0x1FF, 0x10000F),  # offers almost nothing
]

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
               max_size=12)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Connect, text, st.sampled_from("46"), st.integers(0, 65535), text),
    st.builds(Helo, text),
    st.builds(EnvelopeFrom, text.map(lambda t: f"<{t}>")),
    st.builds(EnvelopeRecipient, text.map(lambda t: f"<{t}>")),
    st.just(Data()),
    st.builds(Header, text, text),
    st.just(EndOfHeaders()),
    st.builds(Body, st.binary(max_size=20)),
    st.builds(EndOfMessage, st.binary(max_size=4)),
    st.builds(Unknown, text),
    st.just(Abort()),
    st.builds(Macro, st.sampled_from([b"C", b"H", b"M", b"R", b"T", b"E", b"N", b"L", b"U"]),
              st.lists(st.tuples(text, text), max_size=2).map(tuple)),
    st.just(QuitNoClose()),
)
replies: st.SearchStrategy[Reply] = st.sampled_from([
    Continue(), Accept(), Reject(), TempFail(), Discard(), Skip(), Progress(),
    ReplyCode(550, "5.7.1", "no\r\n250 injected"), ReplyCode(451, None, "later %s"),
    AddHeader("X-A", "1"), ChangeHeader(1, "X-A", ""), AddRecipient("<x@y>"),
    Quarantine("q"), ConnectionFail(), Shutdown(),
])


def decode_replies(data: bytes) -> list[Reply]:
    decoder = reply_decoder()
    decoder.feed(data)
    out = []
    while (msg := decoder.next_message()) is not None:
        assert isinstance(msg, Reply)
        out.append(msg)
    assert decoder.buffered == 0, "a partial reply packet was written"
    return out


class MilterMachine(RuleBasedStateMachine):
    """An MTA and an application around one MilterConnection, checked by the model."""

    def __init__(self) -> None:
        super().__init__()
        self.conn: MilterConnection | None = None
        self.options = OPTIONS[0]
        self.dead = False
        self.closed = False
        self.protocol = 0
        self.actions = 0
        self.owed: type[Command] | None = None
        self.in_message = False

    # ------------------------------------------------------------------ helpers

    def expects_reply(self, cls: type[Command]) -> bool:
        if cls in NEVER:
            return False
        return not self.protocol & NR_BIT.get(cls, 0)

    def legal(self, cmd: type[Command], reply: Reply) -> tuple[bool, bool]:
        """(legal here, final) for *reply* to *cmd*, by the model."""
        kind = type(reply)
        verdicts = CONNECTION_VERDICTS if cmd in (Connect, Helo) else MESSAGE_VERDICTS
        if kind in verdicts:
            return True, True
        if kind is Skip:
            return cmd is Body and bool(self.protocol & SMFIP_SKIP), True
        if kind is Progress:
            return cmd is EndOfMessage, False
        if kind in MODIFICATION_ACTION:
            return cmd is EndOfMessage and bool(self.actions & MODIFICATION_ACTION[kind]), False
        return False, True  # CONN_FAIL, SHUTDOWN: never sent by listgate

    def feed(self, data: bytes, cut: int) -> tuple[list[Command], Exception | None]:
        assert self.conn is not None
        events: list[Command] = []
        cut = min(cut, len(data))
        try:
            for part in (data[:cut], data[cut:]):
                self.conn.receive_data(part)
                while (event := self.conn.next_event()) not in (NEED_DATA, PAUSED):
                    assert isinstance(event, Command), event
                    events.append(event)
                if event is NEED_DATA and not self.closed:
                    # After QUIT the server closes the socket; nothing more is decoded.
                    assert self.conn.buffered < MAX + 4
        except RemoteProtocolError as exc:
            return events, exc
        return events, None

    def output(self) -> list[Reply]:
        assert self.conn is not None
        return decode_replies(self.conn.data_to_send())

    # ------------------------------------------------------------------ rules

    @initialize(options=st.sampled_from(OPTIONS), offer=st.sampled_from(OFFERS),
                cut=st.integers(0, 17))
    def negotiate(self, options: MilterOptions, offer: Negotiate, cut: int) -> None:
        self._start(options, offer, cut)

    @precondition(lambda self: self.dead)
    @rule(options=st.sampled_from(OPTIONS), offer=st.sampled_from(OFFERS),
          cut=st.integers(0, 17))
    def mta_reconnects(self, options: MilterOptions, offer: Negotiate, cut: int) -> None:
        """After a dead connection, a new one (the server closed the old one)."""
        self._start(options, offer, cut)

    def _start(self, options: MilterOptions, offer: Negotiate, cut: int) -> None:
        self.dead = self.closed = self.in_message = False
        self.owed = None
        self.options = options
        self.conn = MilterConnection(options)
        events, error = self.feed(encode(offer), cut)
        assert events == []
        assert error is None
        out = self.output()
        assert len(out) == 1
        reply = out[0]
        assert isinstance(reply, NegotiateReply)
        offered = offer.protocol or V1_PROTOCOL
        assert reply.version == min(offer.version, 6)
        assert reply.protocol & ~offered == 0, "negotiated a step the MTA did not offer"
        self.protocol = reply.protocol
        self.actions = reply.actions

    @precondition(lambda self: not self.dead and self.owed is None)
    @rule(cmd=commands, cut=st.integers(0, 40))
    def mta_sends(self, cmd: Command, cut: int) -> None:
        cls = type(cmd)
        events, error = self.feed(encode(cmd), cut)
        out = self.output()
        if self.closed:
            assert (events, error, out) == ([], None, [])
            return
        rcpt_outside = (cls is EnvelopeRecipient and not self.in_message
                        and EnvelopeFrom in self.options.events)
        if rcpt_outside:
            assert isinstance(error, RemoteProtocolError), (error, events)
            assert out == []
            self.dead = True
            return
        assert error is None
        wanted = cls in self.options.events or cls in NEVER
        assert events == ([cmd] if wanted and cls is not Macro else [])
        expects = self.expects_reply(cls)
        if events and expects and cls not in self.options.no_reply:
            assert self.conn is not None
            assert self.conn.awaiting_reply is cls
            assert out == [], "answered a command the application still owes"
            self.owed = cls
        else:
            assert out == ([Continue()] if expects else []), (cls, out)
        # The model's transaction state.
        if cls is EnvelopeFrom:
            self.in_message = True
        elif cls in (EndOfMessage, Abort, QuitNoClose):
            self.in_message = False

    @precondition(lambda self: not self.dead and self.owed is not None)
    @rule(reply=replies)
    def application_answers(self, reply: Reply) -> None:
        assert self.conn is not None
        assert self.owed is not None
        legal, final = self.legal(self.owed, reply)
        if not legal:
            try:
                self.conn.send(reply)
            except LocalProtocolError:
                assert self.output() == [], "an illegal reply reached the wire"
                return
            raise AssertionError(f"{reply.name} to {self.owed.name} was accepted")
        self.conn.send(reply)
        out = self.output()
        assert len(out) == 1
        assert type(out[0]) is type(reply)
        if final:
            if self.owed is EnvelopeFrom and not isinstance(reply, Continue):
                self.in_message = False
            self.owed = None

    @precondition(lambda self: not self.dead and self.owed is None)
    @rule(reply=replies)
    def application_answers_twice(self, reply: Reply) -> None:
        """A reply when none is owed (a second reply) is refused and never written."""
        assert self.conn is not None
        try:
            self.conn.send(reply)
        except LocalProtocolError:
            assert self.output() == []
            return
        raise AssertionError(f"{reply.name} accepted while no reply is owed")

    @precondition(lambda self: not self.dead and self.owed is None and not self.closed)
    @rule()
    def mta_quits(self) -> None:
        events, error = self.feed(encode(Quit()), 0)
        assert (events, error, self.output()) == ([Quit()], None, [])
        assert self.conn is not None
        assert self.conn.closed
        self.closed = True

    @precondition(lambda self: not self.dead and self.owed is None)
    @rule(junk=st.one_of(
        st.binary(min_size=1, max_size=30),
        st.sampled_from([encode(Negotiate(6, 0x1FF, 0x1FFFFF)), b"\0\0\0\0O",
                         b"\xff\xff\xff\xffL", struct.pack(">Ic", MAX + 1, b"L"),
                         struct.pack(">Ic", 1, b"Z"), struct.pack(">Ic", 3, b"D") + b"O\0",
                         struct.pack(">Ic", 6, b"H") + b"hello"])))
    def mta_sends_junk(self, junk: bytes) -> None:
        """Junk ends in RemoteProtocolError or gives commands; either way nothing but
        well-formed replies is written, and then the model stops (the connection is
        closed by the server on any error)."""
        assert self.conn is not None
        try:
            self.conn.receive_data(junk)
            while (event := self.conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Command)
                if self.conn.awaiting_reply is not None:
                    self.conn.send(Continue())
        except RemoteProtocolError:
            pass
        decode_replies(self.conn.data_to_send())
        self.dead = True

    @invariant()
    def owed_matches_the_model(self) -> None:
        if self.conn is not None and not self.dead:
            assert self.conn.awaiting_reply is self.owed


MilterMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMilterConnection = MilterMachine.TestCase


# --------------------------------------------------------------------------- policy

names = st.sampled_from(["request", "protocol_state", "sender", "recipient", "x", "a=b"[:1]])
values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
                 max_size=16)
requests = st.dictionaries(names, values, min_size=1, max_size=5)
LIMITS = PolicyLimits(max_line_length=64, max_attributes=8, max_request_bytes=300)


class PolicyMachine(RuleBasedStateMachine):
    """Postfix pipelining requests (whole or in pieces) and a server answering them."""

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.conn = PolicyConnection(LIMITS)
        self.queue: list[tuple[int, dict[str, str]]] = []
        """Requests written (wholly or partly) and not yet returned by next_event, each
        with the stream offset where it ends."""
        self.owed: list[dict[str, str]] = []
        self.partial = b""
        self.fed = 0
        """Bytes given to the connection so far."""
        self.written = 0
        """Bytes of every request so far (fed or still partial)."""
        self.dead = False
        self.replies = ReplyReader()

    def receive(self, data: bytes) -> None:
        if data:  # b"" would mean EOF
            self.conn.receive_data(data)
            self.fed += len(data)
        while (event := self.conn.next_event()) is not POLICY_NEED_DATA:
            assert isinstance(event, PolicyRequest)
            assert self.queue, "a request that was never sent"
            end, request = self.queue.pop(0)
            assert end <= self.fed, "a request returned before its last byte arrived"
            assert dict(event.attributes) == request
            self.owed.append(request)
        assert not self.queue or self.queue[0][0] > self.fed, "a complete request not returned"
        assert self.conn.buffered <= LIMITS.max_request_bytes + 1

    @precondition(lambda self: not self.dead)
    @rule(request=requests, cut=st.integers(0, 400))
    def postfix_sends(self, request: dict[str, str], cut: int) -> None:
        wire = encode_request(request)
        if len(wire) > LIMITS.max_request_bytes:
            return
        self.written += len(wire)
        self.queue.append((self.written, request))
        data = self.partial + wire
        cut = min(cut, len(data))
        self.partial = data[cut:]
        self.receive(data[:cut])

    @precondition(lambda self: not self.dead and bool(self.partial))
    @rule()
    def postfix_sends_the_rest(self) -> None:
        data, self.partial = self.partial, b""
        self.receive(data)

    @precondition(lambda self: not self.dead)
    @rule(action=st.sampled_from(["DUNNO", "550 5.7.1 no\r\naction=OK", "OK\0", "  x  "]))
    def server_answers(self, action: str) -> None:
        if not self.owed:
            try:
                self.conn.send(action)
            except PolicyStateError:
                return
            raise AssertionError("a reply without a request was accepted")
        self.conn.send(action)
        wire = self.conn.data_to_send()
        self.owed.pop(0)
        self.replies.receive_data(wire)
        reply = self.replies.next_reply()
        assert isinstance(reply, dict)
        assert list(reply) == ["action"]
        assert self.replies.next_reply() is POLICY_NEED_DATA

    @precondition(lambda self: self.dead)
    @rule()
    def postfix_reconnects(self) -> None:
        self._reset()

    @precondition(lambda self: not self.dead and not self.partial)
    @rule(junk=st.binary(min_size=1, max_size=80))
    def junk(self, junk: bytes) -> None:
        """Junk yields requests or a sticky protocol error; then the model stops."""
        self.conn.receive_data(junk)
        first: PolicyProtocolError | None = None
        try:
            while self.conn.next_event() is not POLICY_NEED_DATA:
                pass
        except PolicyProtocolError as exc:
            first = exc
        if first is not None:
            with pytest.raises(PolicyProtocolError) as again:
                self.conn.next_event()
            assert again.value is first
        self.dead = True

    @invariant()
    def owed_matches(self) -> None:
        if not self.dead:
            assert self.conn.awaiting_reply == len(self.owed)


PolicyMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPolicyConnection = PolicyMachine.TestCase
