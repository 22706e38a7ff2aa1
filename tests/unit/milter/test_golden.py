"""Golden streams: real Postfix/Sendmail milter conversations replayed through both sides.

The captures (tests/data/postfix_capture) come from a different milter (purepythonmilter)
that negotiated differently, so listgate's own bytes are compared where its behaviour
must coincide: the reply to every RCPT, one automatic 'c' for every other command that
listgate's negotiation says is answered, nothing for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.frontends.milter import MilterTransaction, milter_options, reply_for
from listgate.milter import (
    FINAL_REPLIES,
    NEED_DATA,
    POSTFIX_OFFER,
    Abort,
    ActionFlag,
    Body,
    Command,
    Connect,
    Continue,
    Data,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Message,
    MilterConnection,
    MtaConnection,
    Negotiate,
    Negotiated,
    NegotiateReply,
    ProtocolFlag,
    QuitNoClose,
    Reply,
    ReplyCode,
    command_decoder,
    encode,
    reply_decoder,
)

from . import CHUNKED, SCENARIOS, decode_all, load_capture, pieces, replies_in, split_packets

LISTGATE_OPTNEG_REPLY = bytes.fromhex(
    "0000003b"  # length 59 = 'O' + 12 + (4 + 30) + (4 + 2) + (4 + 2)
    "4f"  # SMFIC_OPTNEG
    "00000006"  # version min(6, offered 6)
    "00000100"  # actions: SMFIF_SETSYMLIST only (listgate modifies nothing)
    "00004373"  # protocol, of the offered 0x1FFFFF:
    #   0x0001 NOCONNECT   0x0002 NOHELO    0x0010 NOBODY    0x0020 NOHDRS
    #   0x0040 NOEOH       0x0100 NOUNKNOWN 0x0200 NODATA    0x4000 NR_MAIL
    #   (RCPT neither skipped nor no-reply; EOM cannot be; no SKIP/RCPT_REJ/LEADSPC)
    "00000002"  # SMFIM_ENVFROM, then "{client_addr} {auth_authen} i\0":
    "7b636c69656e745f616464727d207b617574685f61757468656e7d206900"
    "00000003"  # SMFIM_ENVRCPT, then "i\0":
    "6900"
    "00000006"  # SMFIM_EOH (6; the wire order puts EOM = 5 before it), then "i\0":
    "6900"
)

MEMBER = "member@example.com"
LIST = "list@example.org"


def policy(request: PostingRequest) -> Decision:
    """member@example.com may post to list@example.org; nobody else may; others pass."""
    if request.recipient == LIST and request.sender != MEMBER:
        text = f"<{request.sender}> is not allowed to post to <{request.recipient}>"
        return Decision(Verdict.REJECT, 550, "5.7.1", text, ("not a member",), LIST)
    return Decision(Verdict.ACCEPT, None, None, "", ("ok",))


REJECTION = ReplyCode(
    550, "5.7.1", "<outsider@example.net> is not allowed to post to <list@example.org>"
)
REJECTION_PACKET = bytes.fromhex(
    "0000004f7935353020352e372e31203c6f75747369646572406578616d706c652e6e65743e206973"
    "206e6f7420616c6c6f77656420746f20706f737420746f203c6c697374406578616d706c652e6f72673e00"
)

RCPT_REPLIES = {
    "1-full-member-accepted": [("<list@example.org>", Continue())],
    "2-full-nonmember-multircpt": [
        ("<alice@example.org>", Continue()),
        ("<list@example.org>", REJECTION),
        ("<x@elsewhere.test>", Continue()),
    ],
    "3-full-tls-auth-member": [("<list@example.org>", Continue())],
    "4-minimal-nonmember-rejected": [("<list@example.org>", REJECTION)],
    "5-sendmail-nonmember-multircpt": [
        ("<alice@example.org>", Continue()),
        ("<list@example.org>", REJECTION),
        ("<bob@example.org>", Continue()),
    ],
}
"""What the capture shows for each RCPT, written out."""

REQUESTS = {
    "1-full-member-accepted": [PostingRequest(MEMBER, LIST)],
    "2-full-nonmember-multircpt": [
        PostingRequest("outsider@example.net", "alice@example.org"),
        PostingRequest("outsider@example.net", LIST, queue_id="DF677210653"),
        PostingRequest("outsider@example.net", "x@elsewhere.test", queue_id="DF677210653"),
    ],
    "3-full-tls-auth-member": [PostingRequest(MEMBER, LIST, auth_user="poster@mx.feas.test")],
    "4-minimal-nonmember-rejected": [PostingRequest("outsider@example.net", LIST)],
    "5-sendmail-nonmember-multircpt": [
        PostingRequest("outsider@example.net", r, queue_id="6AP2s49Z021489")
        for r in ("alice@example.org", LIST, "bob@example.org")
    ],
}
"""The posting requests the front end builds from each capture's commands and macros."""


@dataclass
class App:
    """listgate's milter session in miniature (as frontends.milter.MilterSession runs
    it), keeping every command it sees."""

    conn: MilterConnection = field(
        default_factory=lambda: MilterConnection(milter_options(1024 * 1024))
    )
    session: MilterTransaction = field(default_factory=MilterTransaction)
    events: list[Command] = field(default_factory=list)
    requests: list[PostingRequest] = field(default_factory=list)

    def feed(self, data: bytes, chunk: int | None) -> bytes:
        out = bytearray()
        for piece in pieces(data, chunk):
            self.conn.receive_data(piece)
            while (event := self.conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Command), event
                self.events.append(event)
                if isinstance(event, EnvelopeFrom):
                    self.session.on_mail(event, self.conn)
                elif isinstance(event, EnvelopeRecipient):
                    request = self.session.request_for(event, self.conn)
                    self.requests.append(request)
                    self.conn.send(reply_for(policy(request)))
                elif isinstance(event, Abort):
                    self.session.on_abort()
                elif isinstance(event, QuitNoClose):
                    self.session = MilterTransaction()
                assert self.conn.awaiting_reply is None
            out += self.conn.data_to_send()
        return bytes(out)


def captured_answers(name: str) -> list[tuple[Command, list[Reply]]]:
    """Each MTA command of a capture with the replies the capturing milter sent to it,
    paired by that milter's own negotiation."""
    mta, milter = load_capture(name)
    commands = decode_all(command_decoder(), mta, None)
    replies = iter(replies_in(milter))
    offer_reply = next(replies)
    assert isinstance(offer_reply, NegotiateReply)
    theirs = Negotiated(
        offer_reply.version, ActionFlag(offer_reply.actions),
        ProtocolFlag(offer_reply.protocol), (),
    )
    paired: list[tuple[Command, list[Reply]]] = [(commands[0], [offer_reply])]  # type: ignore[list-item]
    for cmd in commands[1:]:
        assert isinstance(cmd, Command)
        answers: list[Reply] = []
        if theirs.expects_reply(type(cmd)):
            while not answers or type(answers[-1]) not in FINAL_REPLIES:
                answers.append(next(replies))
        paired.append((cmd, answers))
    assert next(replies, None) is None, "capture has replies nobody asked for"
    return paired


# ------------------------------------------------------------------- the captures


@pytest.mark.parametrize("name", SCENARIOS)
@CHUNKED
def test_captured_bytes_decode_and_reencode_exactly(name: str, chunk: int | None) -> None:
    """Every captured packet (both directions) decodes, whole or chunked, and re-encodes exactly."""
    mta, milter = load_capture(name)
    for data, decoder in ((mta, command_decoder()), (milter, reply_decoder())):
        messages = decode_all(decoder, data, chunk)
        assert decoder.buffered == 0
        assert [encode(m) for m in messages] == split_packets(data)
    first = decode_all(command_decoder(), mta, None)[0]
    assert first == POSTFIX_OFFER


def test_listgate_optneg_reply_to_postfix_offer() -> None:
    """listgate answers Postfix's 6/0x1FF/0x1FFFFF offer with exactly the hand-made bytes."""
    conn = MilterConnection(milter_options(1024 * 1024))
    conn.receive_data(bytes.fromhex("0000000d4f00000006000001ff001fffff"))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == LISTGATE_OPTNEG_REPLY


def test_rejection_packet_is_the_captured_one() -> None:
    """listgate's REPLYCODE for the outsider is byte-identical to the captured 'y' packet."""
    assert encode(REJECTION) == REJECTION_PACKET
    decision = policy(PostingRequest("outsider@example.net", LIST))
    assert encode(reply_for(decision)) == REJECTION_PACKET


# -------------------------------------------------------------- listgate replays


@pytest.mark.parametrize("name", SCENARIOS)
@CHUNKED
def test_replay_each_command_gets_the_expected_answer(name: str, chunk: int | None) -> None:
    """Packet by packet, listgate answers as the capture did when it owes a reply, else nothing."""
    app = App()
    rcpt_replies: list[tuple[str, Reply]] = []
    answered = 0
    for cmd, theirs in captured_answers(name):
        got = replies_in(app.feed(encode(cmd), chunk))
        if isinstance(cmd, Negotiate):
            assert len(got) == 1
            assert isinstance(got[0], NegotiateReply)
            continue
        negotiated = app.conn.negotiated
        assert negotiated is not None
        if negotiated.expects_reply(type(cmd)):
            assert theirs, f"capture has no answer to {cmd.name}"
            assert got == [theirs[-1]], f"{cmd.name}: {got} != captured {theirs[-1]}"
            answered += 1
        else:
            assert got == [], f"{cmd.name} must not be answered"
        if isinstance(cmd, EnvelopeRecipient):
            rcpt_replies.append((cmd.recipient, got[0]))
    assert rcpt_replies == RCPT_REPLIES[name]
    assert app.requests == REQUESTS[name]
    assert answered >= len(rcpt_replies)


@pytest.mark.parametrize("name", SCENARIOS)
@CHUNKED
def test_replay_whole_stream(name: str, chunk: int | None) -> None:
    """The whole chunked stream yields OPTNEG then one reply per owed command, in order, once."""
    mta, _ = load_capture(name)
    pairs = captured_answers(name)
    app = App()
    out = app.feed(mta, chunk)
    optneg = split_packets(out)[0]
    assert isinstance(replies_in(optneg)[0], NegotiateReply)
    negotiated = app.conn.negotiated
    assert negotiated is not None
    owed = [cmd for cmd, _ in pairs[1:] if negotiated.expects_reply(type(cmd))]
    expected = [theirs[-1] for cmd, theirs in pairs[1:] if negotiated.expects_reply(type(cmd))]
    got = replies_in(out[len(optneg) :])
    assert got == expected
    assert len(got) == len(owed)
    assert all(type(r) in (Continue, ReplyCode) for r in got)
    envelope = (EnvelopeFrom, EnvelopeRecipient)
    assert [e for e in app.events if isinstance(e, envelope)] == [
        c for c, _ in pairs if isinstance(c, envelope)
    ]
    aborts = sum(isinstance(c, Abort) for c, _ in pairs)
    assert sum(isinstance(e, Abort) for e in app.events) == aborts
    assert app.conn.closed


@pytest.mark.parametrize("name", ["4-minimal-nonmember-rejected", "5-sendmail-nonmember-multircpt"])
@CHUNKED
def test_replay_matches_capture_byte_for_byte_after_optneg(name: str, chunk: int | None) -> None:
    """Scenarios 4-5 (same negotiation shape): output after OPTNEG equals the capture exactly."""
    mta, milter = load_capture(name)
    out = App().feed(mta, chunk)
    ours, theirs = split_packets(out)[0], split_packets(milter)[0]
    assert out[len(ours) :] == milter[len(theirs) :]


@pytest.mark.parametrize("name", SCENARIOS[:3])
def test_full_scenarios_answered_except_mail(name: str) -> None:
    """Scenarios 1-3 send every step; listgate answers all that the capture did except MAIL."""
    mta, _ = load_capture(name)
    pairs = captured_answers(name)
    kinds = {type(c) for c, _ in pairs}
    assert {Connect, Helo, Data, Header, EndOfHeaders, Body, EndOfMessage} <= kinds
    got = replies_in(App().feed(mta, None))[1:]
    answered_by_them = [c for c, theirs in pairs[1:] if theirs]
    mails = [c for c in answered_by_them if isinstance(c, EnvelopeFrom)]
    assert len(mails) == 1
    assert len(got) == len(answered_by_them) - len(mails)


# ------------------------------------------------------------------ MTA-side replay


@pytest.mark.parametrize("name", SCENARIOS)
@CHUNKED
def test_mta_side_accepts_captured_replies(name: str, chunk: int | None) -> None:
    """MtaConnection re-sends the capture byte for byte and accepts the real milter's replies."""
    mta_bytes, milter_bytes = load_capture(name)
    commands = decode_all(command_decoder(), mta_bytes, None)
    incoming = iter(list(pieces(milter_bytes, chunk)))
    mta = MtaConnection(POSTFIX_OFFER)
    received: list[Message] = []

    def await_final() -> None:
        while True:
            event = mta.next_event()
            if event is NEED_DATA:
                mta.receive_data(next(incoming))
                continue
            assert isinstance(event, Reply)
            received.append(event)
            if mta.awaiting_reply is None:
                return

    mta.start()
    sent = mta.data_to_send()
    await_final()
    expecting = 1
    for cmd in commands[1:]:
        assert isinstance(cmd, Command)
        if mta.send(cmd):
            expecting += 1
            sent += mta.data_to_send()
            await_final()
        else:
            sent += mta.data_to_send()
    assert sent == mta_bytes
    assert next(incoming, None) is None
    assert mta.next_event() is NEED_DATA
    finals = [r for r in received if type(r) in FINAL_REPLIES or isinstance(r, NegotiateReply)]
    assert len(finals) == expecting
    assert [encode(r) for r in received] == split_packets(milter_bytes)
