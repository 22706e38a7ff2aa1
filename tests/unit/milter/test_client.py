"""MtaConnection (the MTA side): what it sends, what it refuses, what it accepts back."""

from __future__ import annotations

import pytest

from listgate.frontends.milter import milter_options
from listgate.milter import (
    NEED_DATA,
    POSTFIX_OFFER,
    REPLIES,
    Abort,
    Accept,
    ActionFlag,
    AddHeader,
    Body,
    Command,
    Connect,
    ConnectionFail,
    Continue,
    Discard,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Helo,
    LocalProtocolError,
    Macro,
    MacroStage,
    MilterConnection,
    MtaConnection,
    Negotiate,
    NegotiateReply,
    Progress,
    ProtocolFlag,
    Quit,
    RemoteProtocolError,
    Reply,
    ReplyCode,
    Shutdown,
    Skip,
    encode,
)
from listgate.milter.tables import EOM_MODIFICATIONS, FINAL_REPLIES_FOR

from . import CHUNKED, SAMPLE_REPLIES, pieces, stream

NR_FLAGS = 0xFF080
"""Every SMFIP_NR_* bit."""
FULL = NegotiateReply(6, 0x1FF, 0x400 | 0x800 | 0x100000)
"""A milter reply that keeps every step and every reply (no NO*, no NR*), all actions."""


def _mta(reply: NegotiateReply = FULL, offer: Negotiate = POSTFIX_OFFER) -> MtaConnection:
    mta = MtaConnection(offer)
    mta.start()
    assert mta.data_to_send() == encode(offer)
    mta.receive_data(encode(reply))
    assert mta.next_event() == reply
    return mta


def _answer(mta: MtaConnection, chunk: int | None, *replies: Reply) -> list[Reply]:
    """Feed *replies* in *chunk*-sized pieces; every reply the MTA side yields."""
    got: list[Reply] = []
    for piece in pieces(stream(*replies), chunk):
        mta.receive_data(piece)
        while (event := mta.next_event()) is not NEED_DATA:
            assert isinstance(event, Reply)
            got.append(event)
    return got


# ---------------------------------------------------------------------- negotiation


def test_start_queues_the_offer_once() -> None:
    """start() queues OPTNEG; a second start() is refused."""
    mta = MtaConnection()
    mta.start()
    assert mta.data_to_send() == bytes.fromhex("0000000d4f00000006000001ff001fffff")
    assert mta.awaiting_reply is Negotiate
    with pytest.raises(LocalProtocolError, match="already sent"):
        mta.start()


@pytest.mark.parametrize("version", [0, 1, 7])
def test_cannot_offer_unsupported_version(version: int) -> None:
    """An MtaConnection offering a version outside 2..6 cannot be made."""
    with pytest.raises(LocalProtocolError, match=f"version {version}"):
        MtaConnection(Negotiate(version, 0x1FF, 0x1FFFFF))


@pytest.mark.parametrize(
    ("offer", "reply", "message"),
    [
        (POSTFIX_OFFER, NegotiateReply(1, 0, 0), "milter chose version 1"),
        (Negotiate(4, 0x1FF, 0x37F), NegotiateReply(6, 0, 0), "milter chose version 6"),
        (Negotiate(6, 0x0FF, 0x1FFFFF), NegotiateReply(6, 0x100, 0), "actions 0x100 beyond"),
        (Negotiate(2, 0, 0), NegotiateReply(2, 0x10, 0), "actions 0x10 beyond the offer 0xf"),
        (Negotiate(6, 0x1FF, 0x7F), NegotiateReply(6, 0, 0x4000), "steps 0x4000 beyond"),
        (Negotiate(2, 0, 0), NegotiateReply(2, 0, 0x40), "steps 0x40 beyond the offer 0x3f"),
        (POSTFIX_OFFER, NegotiateReply(6, 0, 0, ((MacroStage.CONNECT, ("j",)),)),
         "macro lists without SMFIF_SETSYMLIST"),
    ],
    ids=["version-1", "version-above-offer", "action-beyond", "action-beyond-v1-default",
         "step-beyond", "step-beyond-v1-default", "macros-without-setsymlist"],
)
def test_reply_beyond_the_offer_is_refused(
    offer: Negotiate, reply: NegotiateReply, message: str
) -> None:
    """A milter OPTNEG reply asking more than was offered is a RemoteProtocolError."""
    mta = MtaConnection(offer)
    mta.start()
    mta.receive_data(encode(reply))
    with pytest.raises(RemoteProtocolError, match=message):
        mta.next_event()


@pytest.mark.parametrize("reply", [Continue(), Accept(), ReplyCode(421, None, "")],
                         ids=lambda r: r.name)
def test_non_optneg_answer_to_optneg_is_refused(reply: Reply) -> None:
    """Anything but an OPTNEG reply in answer to OPTNEG is a RemoteProtocolError."""
    mta = MtaConnection()
    mta.start()
    mta.receive_data(encode(reply))
    with pytest.raises(RemoteProtocolError, match="in answer to OPTNEG"):
        mta.next_event()


def test_v1_default_offer_accepts_reply_within_defaults() -> None:
    """An offer of 0/0 means 0x0F/0x3F: a reply within those is accepted."""
    mta = _mta(NegotiateReply(2, 0x0F, 0x3F), Negotiate(2, 0, 0))
    assert mta.negotiated is not None
    assert mta.negotiated.skips(Connect)


# ------------------------------------------------------------------------ sending


def test_nothing_before_negotiation() -> None:
    """Commands before the OPTNEG reply arrived are refused."""
    mta = MtaConnection()
    with pytest.raises(LocalProtocolError, match="before option negotiation"):
        mta.send(Helo("x"))
    mta.start()
    with pytest.raises(LocalProtocolError, match="OPTNEG is outstanding"):
        mta.send(Helo("x"))


def test_refuses_sending_while_a_reply_is_outstanding() -> None:
    """A second command before the first one's final reply is refused."""
    mta = _mta()
    assert mta.send(EnvelopeFrom("<a@b>")) is True
    with pytest.raises(LocalProtocolError, match="reply to MAIL is outstanding"):
        mta.send(EnvelopeRecipient("<c@d>"))
    assert mta.data_to_send() == encode(EnvelopeFrom("<a@b>"))


def test_refuses_skipped_steps() -> None:
    """A step the milter asked to skip (NO*) cannot be sent."""
    mta = _mta(NegotiateReply(6, 0, int(ProtocolFlag.NOCONNECT | ProtocolFlag.NOHELO)))
    with pytest.raises(LocalProtocolError, match="asked to skip"):
        mta.send(Connect("h", "U"))
    with pytest.raises(LocalProtocolError, match="asked to skip"):
        mta.send(Helo("x"))
    assert mta.send(Macro(b"C", (("j", "x"),))) is False  # macros for it still go out
    assert mta.send(EnvelopeFrom("<a@b>")) is True


def test_refuses_everything_after_quit() -> None:
    """After QUIT nothing more may be sent."""
    mta = _mta()
    assert mta.send(Quit()) is False
    for cmd in (Abort(), Helo("x"), Quit()):
        with pytest.raises(LocalProtocolError, match="after QUIT"):
            mta.send(cmd)


def test_optneg_cannot_be_sent_again() -> None:
    """send(Negotiate) after negotiation is refused."""
    mta = _mta()
    with pytest.raises(LocalProtocolError, match="before option negotiation completed"):
        mta.send(POSTFIX_OFFER)


@pytest.mark.parametrize(
    ("protocol", "cmd", "expects"),
    [
        (0, Abort(), False),
        (0, Macro(b"R"), False),
        (0, EnvelopeFrom("<a@b>"), True),
        (int(ProtocolFlag.NR_MAIL), EnvelopeFrom("<a@b>"), False),
        (int(ProtocolFlag.NR_CONN), Connect("h", "U"), False),
        (int(ProtocolFlag.NR_BODY), Body(b"x"), False),
        (NR_FLAGS, EndOfMessage(), True),  # every NR flag: EOM is still answered
    ],
    ids=["abort", "macro", "mail", "mail-nr", "connect-nr", "body-nr", "eom"],
)
def test_send_reports_whether_a_reply_is_expected(
    protocol: int, cmd: Command, expects: bool
) -> None:
    """send() returns whether the milter will answer, from NEVER_ANSWERED and NR_* flags."""
    mta = _mta(NegotiateReply(6, 0, protocol))
    assert mta.send(cmd) is expects
    assert mta.awaiting_reply is (type(cmd) if expects else None)


# ---------------------------------------------------------------------- receiving


@pytest.mark.parametrize("before", [[], [Abort()], [Macro(b"M")]], ids=["idle", "abort", "D"])
def test_unsolicited_reply_is_refused(before: list[Command]) -> None:
    """A reply when no command waits for one is a RemoteProtocolError."""
    mta = _mta()
    for cmd in before:
        mta.send(cmd)
    mta.receive_data(encode(Continue()))
    with pytest.raises(RemoteProtocolError, match="unsolicited CONTINUE"):
        mta.next_event()


@CHUNKED
def test_reply_after_final_is_unsolicited(chunk: int | None) -> None:
    """A second final reply to one command is a RemoteProtocolError (the desync bug class)."""
    mta = _mta()
    mta.send(EnvelopeRecipient("<c@d>"))
    first = ReplyCode(451, "4.7.1", "later")
    with pytest.raises(RemoteProtocolError, match="unsolicited REPLYCODE"):
        _answer(mta, chunk, first, ReplyCode(550, None, ""))
    assert mta.awaiting_reply is None


STEPS = [
    (Connect, Connect("h", "4", 25, "192.0.2.1")),
    (Helo, Helo("x")),
    (EnvelopeFrom, EnvelopeFrom("<a@b>")),
    (EnvelopeRecipient, EnvelopeRecipient("<c@d>")),
    (Body, Body(b"x")),
    (EndOfMessage, EndOfMessage()),
]


@pytest.mark.parametrize("skip", [False, True], ids=["no-skip", "skip"])
@pytest.mark.parametrize("rcls", list(REPLIES.values()), ids=lambda c: c.name)
@pytest.mark.parametrize(("cls", "cmd"), STEPS, ids=[c.name for _, c in STEPS])
def test_received_reply_legality_follows_the_tables(
    cls: type[Command], cmd: Command, rcls: type[Reply], skip: bool
) -> None:
    """Each reply at each step is accepted or refused by the MTA side exactly per tables.py."""
    actions = 0x1FF if skip else 0
    protocol = int(ProtocolFlag.SKIP) if skip else 0
    mta = _mta(NegotiateReply(6, actions, protocol))
    assert mta.send(cmd) is True
    reply = SAMPLE_REPLIES[rcls]
    mta.receive_data(encode(reply))
    if rcls in FINAL_REPLIES_FOR[cls] and (rcls is not Skip or skip):
        assert mta.next_event() == reply
        assert mta.awaiting_reply is None
    elif rcls is Progress or (
        rcls in EOM_MODIFICATIONS and cls is EndOfMessage and actions & EOM_MODIFICATIONS[rcls]
    ):
        assert mta.next_event() == reply
        assert mta.awaiting_reply is cls
    else:
        with pytest.raises(RemoteProtocolError):
            mta.next_event()


@pytest.mark.parametrize(
    ("cmd", "reply", "actions", "protocol", "message"),
    [
        (Connect("h", "U"), Discard(), 0, 0, "DISCARD is not a legal answer to CONNECT"),
        (Body(b"x"), Skip(), 0, 0, "SKIP although SMFIP_SKIP was not negotiated"),
        (EnvelopeRecipient("<c@d>"), Skip(), 0, 0x400, "SKIP is not a legal answer to RCPT"),
        (EnvelopeRecipient("<c@d>"), AddHeader("X", "y"), 0x1FF, 0, "ADDHEADER in answer to RCPT"),
        (EndOfMessage(), AddHeader("X", "y"), 0, 0, "ADDHEADER without its action flag"),
        (EndOfMessage(), ConnectionFail(), 0, 0, "CONN_FAIL is not a legal answer"),
        (EndOfMessage(), Shutdown(), 0, 0, "SHUTDOWN is not a legal answer"),
        (EnvelopeRecipient("<c@d>"), NegotiateReply(6, 0, 0), 0, 0, "OPTNEG reply is not"),
    ],
    ids=["discard-at-connect", "skip-not-agreed", "skip-at-rcpt", "mod-outside-eom",
         "mod-without-action", "conn-fail", "shutdown", "optneg-again"],
)
def test_illegal_reply_examples(
    cmd: Command, reply: Reply, actions: int, protocol: int, message: str
) -> None:
    """Named examples of replies an MTA must refuse."""
    mta = _mta(NegotiateReply(6, actions, protocol))
    mta.send(cmd)
    mta.receive_data(encode(reply))
    with pytest.raises(RemoteProtocolError, match=message):
        mta.next_event()


@CHUNKED
def test_progress_and_modifications_before_the_final_reply(chunk: int | None) -> None:
    """PROGRESS (any step) and agreed modifications (EOM) keep the command outstanding."""
    mta = _mta(NegotiateReply(6, int(ActionFlag.ADDHDRS), 0))
    mta.send(EnvelopeRecipient("<c@d>"))
    got = _answer(mta, chunk, Progress(), Progress(), Continue())
    assert got == [Progress(), Progress(), Continue()]
    mta.send(EndOfMessage())
    events = _answer(mta, chunk, Progress(), AddHeader("X-A", "1"), Accept())
    assert events == [Progress(), AddHeader("X-A", "1"), Accept()]
    assert mta.awaiting_reply is None
    assert mta.next_event() is NEED_DATA


# --------------------------------------------------------- talking to MilterConnection


@CHUNKED
@pytest.mark.parametrize("offer", [POSTFIX_OFFER, Negotiate(2, 0, 0), Negotiate(4, 0x1FF, 0x37F)],
                         ids=["v6", "v2-zero", "v4"])
def test_conversation_with_listgate(offer: Negotiate, chunk: int | None) -> None:
    """MtaConnection and MilterConnection complete two transactions, bytes in chunks."""
    mta = MtaConnection(offer)
    milter = MilterConnection(milter_options(1 << 20))
    answers: list[Reply] = []

    def pump() -> None:
        for piece in pieces(mta.data_to_send(), chunk):
            milter.receive_data(piece)
            while True:
                event = milter.next_event()
                if event is NEED_DATA:
                    break
                if milter.awaiting_reply is EnvelopeRecipient:
                    assert isinstance(event, EnvelopeRecipient)
                    bad = "list" in event.recipient
                    milter.send(ReplyCode(550, "5.7.1", "no") if bad else Continue())
        for piece in pieces(milter.data_to_send(), chunk):
            mta.receive_data(piece)
            while (reply := mta.next_event()) is not NEED_DATA:
                assert isinstance(reply, Reply)
                answers.append(reply)

    mta.start()
    pump()
    assert mta.negotiated == milter.negotiated
    negotiated = mta.negotiated
    assert negotiated is not None
    script: list[Command] = [
        Connect("[192.0.2.1]", "4", 4321, "192.0.2.1"), Helo("client"),
        Macro(b"M", (("{client_addr}", "192.0.2.1"),)), EnvelopeFrom("<x@example.net>"),
        EnvelopeRecipient("<a@example.org>"), EnvelopeRecipient("<list@example.org>"),
        EndOfMessage(), Abort(),
        EnvelopeFrom("<y@example.net>"), EnvelopeRecipient("<list@example.org>"), Abort(),
        Quit(),
    ]
    expected = 0
    for cmd in script:
        if negotiated.skips(type(cmd)):
            continue
        expected += mta.send(cmd)
        pump()
        assert mta.awaiting_reply is None
    assert len(answers) == 1 + expected
    assert answers.count(ReplyCode(550, "5.7.1", "no")) == 2
    assert milter.closed


def test_non_ascii_reply_code_is_a_remote_error() -> None:
    """A milter's 'y' reply with code '4²³' makes MtaConnection raise RemoteProtocolError."""
    mta = _mta()
    mta.send(EnvelopeRecipient("<c@d>"))
    payload = "4\u00b2\u00b3 text".encode() + b"\0"
    mta.receive_data((len(payload) + 1).to_bytes(4, "big") + b"y" + payload)
    with pytest.raises(RemoteProtocolError):
        mta.next_event()
