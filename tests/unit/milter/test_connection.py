"""MilterConnection: negotiation, exactly one reply, ABORT/QUIT_NC, macros, protocol errors."""

from __future__ import annotations

from typing import Any

import pytest

from listgate.frontends.milter import WANTED_MACROS, milter_options
from listgate.milter import (
    COMMANDS,
    NEED_DATA,
    PAUSED,
    POSTFIX_OFFER,
    REPLIES,
    Abort,
    ActionFlag,
    AddHeader,
    Body,
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
    MacroStage,
    MilterConnection,
    MilterOptions,
    MtaConnection,
    Negotiate,
    NegotiateReply,
    Progress,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Reject,
    RemoteProtocolError,
    Reply,
    ReplyCode,
    Shutdown,
    Skip,
    Unknown,
    encode,
    negotiate,
)
from listgate.milter.constants import V1_ACTIONS, V1_PROTOCOL
from listgate.milter.tables import (
    EOM_MODIFICATIONS,
    FINAL_REPLIES_FOR,
    NEVER_ANSWERED,
    PROGRESS_ALLOWED,
    STEP_FLAGS,
)

from . import CHUNKED, SAMPLE_REPLIES, drive, negotiated, pieces, replies_in, stream

LISTGATE = milter_options(1024 * 1024)
ALL_STEPS = frozenset(STEP_FLAGS)
EVERYTHING = MilterOptions(events=ALL_STEPS, no_reply=frozenset())
"""A milter that wants to see and answer every step."""

SAMPLE: dict[type[Command], Command] = {
    Connect: Connect("[127.0.0.1]", "4", 49512, "127.0.0.1"),
    Helo: Helo("client.example"),
    EnvelopeFrom: EnvelopeFrom("<member@example.com>"),
    EnvelopeRecipient: EnvelopeRecipient("<list@example.org>"),
    Data: Data(),
    Header: Header("Subject", "hello"),
    EndOfHeaders: EndOfHeaders(),
    Body: Body(b"Hello list.\r\n"),
    Unknown: Unknown("XYZZY"),
    EndOfMessage: EndOfMessage(),
}
"""One instance of every SMTP step, in the order an MTA sends them (UNKNOWN after HELO)."""
SESSION = [Connect, Helo, Unknown, EnvelopeFrom, EnvelopeRecipient, Data, Header,
           EndOfHeaders, Body, EndOfMessage]
NR_STEPS = [step for step, (_, nr) in STEP_FLAGS.items() if nr]


def _all_steps() -> bytes:
    return stream(*(SAMPLE[c] for c in SESSION))


def _at_step(step: type[Command], options: MilterOptions, offer: Negotiate) -> MilterConnection:
    """A connection whose owed reply is for *step*, reached by a legal command sequence."""
    conn = negotiated(options, offer)
    before = SESSION[: SESSION.index(step)]
    drive(conn, stream(*(SAMPLE[c] for c in before)), None)
    conn.receive_data(encode(SAMPLE[step]))
    assert conn.next_event() == SAMPLE[step]
    assert conn.awaiting_reply is step
    return conn


def _bits(flag: int) -> str:
    return f"0x{flag:x}"


# ------------------------------------------------------------------------ negotiation

NR_ALL = sum(int(nr) for _, nr in STEP_FLAGS.values())
OFFERS = {
    "postfix-v6": Negotiate(6, 0x1FF, 0x1FFFFF),
    "v6-no-setsymlist": Negotiate(6, 0x0FF, 0x1FFFFF),
    "v6-no-nr-flags": Negotiate(6, 0x1FF, 0x1FFFFF & ~NR_ALL),
    "v6-only-nr-mail": Negotiate(6, 0x1FF, int(ProtocolFlag.NR_MAIL)),
    "v6-zero": Negotiate(6, 0, 0),
    "v5": Negotiate(5, 0x1FF, 0x37F),
    "v4-postfix": Negotiate(4, 0x1FF, 0x37F),
    "v3-postfix": Negotiate(3, 0x1FF, 0x17F),
    "v2-postfix": Negotiate(2, 0x3F, 0x7F),
    "v2-zero-actions": Negotiate(2, 0, 0x7F),
    "v2-zero-protocol": Negotiate(2, 0x3F, 0),
    "v2-zero": Negotiate(2, 0, 0),
}


@pytest.mark.parametrize("offer", list(OFFERS.values()), ids=list(OFFERS))
def test_listgate_negotiation_rules(offer: Negotiate) -> None:
    """Any offer: version min(6,v), within the offer, NO*/NR*/SETSYMLIST only as the rules say."""
    conn = MilterConnection(LISTGATE)
    conn.receive_data(encode(offer))
    assert conn.next_event() is NEED_DATA
    [reply] = replies_in(conn.data_to_send())
    assert isinstance(reply, NegotiateReply)
    offered_actions = offer.actions or V1_ACTIONS
    offered = offer.protocol or V1_PROTOCOL
    assert reply.version == min(6, offer.version)
    assert reply.actions & ~offered_actions == 0
    assert reply.protocol & ~offered == 0, _bits(reply.protocol & ~offered)
    for step, (skip, nr) in STEP_FLAGS.items():
        if step in LISTGATE.events:
            assert not reply.protocol & skip, f"{step.__name__} skipped although wanted"
            wanted_nr = step in LISTGATE.no_reply
            assert bool(reply.protocol & nr) == bool(wanted_nr and nr & offered), step.__name__
        else:
            assert reply.protocol & skip == skip & offered, f"{step.__name__}: NO* flag"
            assert not reply.protocol & nr, f"{step.__name__}: NR for a skipped step"
    caps = ProtocolFlag.SKIP | ProtocolFlag.RCPT_REJ | ProtocolFlag.HDR_LEADSPC
    assert not reply.protocol & caps
    if offered_actions & ActionFlag.SETSYMLIST:
        assert reply.actions == ActionFlag.SETSYMLIST
        assert reply.macros == tuple(sorted(WANTED_MACROS.items()))
    else:
        assert reply.actions == 0
        assert reply.macros == ()
    assert conn.negotiated is not None
    assert conn.negotiated.as_reply() == reply


@pytest.mark.parametrize(
    ("offer", "version", "actions", "protocol"),
    [
        # NOCONNECT|NOHELO|NOBODY|NOHDRS|NOEOH|NOUNKNOWN|NODATA|NR_MAIL
        (OFFERS["postfix-v6"], 6, 0x100, 0x4373),
        (OFFERS["v6-no-setsymlist"], 6, 0, 0x4373),
        (OFFERS["v6-no-nr-flags"], 6, 0x100, 0x0373),  # no NR_MAIL: MAIL answered 'c'
        (OFFERS["v6-only-nr-mail"], 6, 0x100, 0x4000),
        (OFFERS["v5"], 5, 0x100, 0x0373),
        (OFFERS["v4-postfix"], 4, 0x100, 0x0373),  # NODATA 0x200 offered from v4
        (OFFERS["v3-postfix"], 3, 0x100, 0x0173),  # NOUNKNOWN 0x100 offered from v3
        (OFFERS["v2-postfix"], 2, 0, 0x0073),  # 0x7F: NOEOH offered, no SETSYMLIST
        (OFFERS["v2-zero"], 2, 0, 0x0033),  # 0 → 0x3F: no NOEOH either
        (Negotiate(7, 0x1FF, 0x1FFFFF), 6, 0x100, 0x4373),
        (Negotiate(0xFFFFFFFF, 0x1FF, 0x1FFFFF), 6, 0x100, 0x4373),
    ],
    ids=["v6", "v6-no-symlist", "v6-no-nr", "v6-only-nr-mail", "v5", "v4", "v3", "v2",
         "v2-zero", "v7", "v-max"],
)
def test_listgate_negotiation_values(
    offer: Negotiate, version: int, actions: int, protocol: int
) -> None:
    """listgate's exact OPTNEG answer to typical offers (computed by hand from the flags)."""
    n = negotiate(offer, LISTGATE)
    assert (n.version, int(n.actions), int(n.protocol)) == (version, actions, protocol)


@pytest.mark.parametrize(
    "offer", [o for o in OFFERS.values() if o.version <= 6], ids=list(OFFERS)
)
def test_mta_side_accepts_listgate_reply(offer: Negotiate) -> None:
    """Cross-check: MtaConnection with the same offer accepts listgate's reply (subset rule)."""
    conn = MilterConnection(LISTGATE)
    conn.receive_data(encode(offer))
    assert conn.next_event() is NEED_DATA
    mta = MtaConnection(offer)
    mta.start()
    assert mta.data_to_send() == encode(offer)
    mta.receive_data(conn.data_to_send())
    assert isinstance(mta.next_event(), NegotiateReply)
    assert mta.negotiated == conn.negotiated


@pytest.mark.parametrize("version", [0, 1])
def test_version_below_two_is_refused(version: int) -> None:
    """An MTA offering protocol version 0 or 1 is refused (libmilter's minimum is 2)."""
    conn = MilterConnection(LISTGATE)
    conn.receive_data(encode(Negotiate(version, 0x1FF, 0x1FFFFF)))
    with pytest.raises(RemoteProtocolError, match=f"version {version} is below 2"):
        conn.next_event()


def test_required_actions_must_be_offered() -> None:
    """A milter needing an action the MTA does not offer fails negotiation."""
    options = MilterOptions(actions=ActionFlag.CHGFROM)
    with pytest.raises(RemoteProtocolError, match="does not offer the actions"):
        negotiate(Negotiate(6, 0x0F, 0x1FFFFF), options)
    assert negotiate(Negotiate(6, 0x1FF, 0x1FFFFF), options).actions == ActionFlag.CHGFROM


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (0x1FFFFF, ProtocolFlag.SKIP | ProtocolFlag.HDR_LEADSPC),
        (0x1FFFFF & ~int(ProtocolFlag.SKIP), ProtocolFlag.HDR_LEADSPC),
        (0x7F, ProtocolFlag.NONE),
    ],
    ids=["all-offered", "no-skip", "v2"],
)
def test_capabilities_only_if_offered(offered: int, expected: ProtocolFlag) -> None:
    """SKIP/HDR_LEADSPC are requested only when the MTA offers them."""
    options = MilterOptions(
        events=ALL_STEPS, no_reply=frozenset(),
        capabilities=ProtocolFlag.SKIP | ProtocolFlag.HDR_LEADSPC,
    )
    n = negotiate(Negotiate(6, 0x1FF, offered), options)
    assert n.protocol == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": frozenset({Abort})}, "not SMTP steps"),
        ({"events": frozenset({EnvelopeRecipient}), "no_reply": frozenset({EnvelopeFrom})},
         "no_reply must be a subset"),
    ],
    ids=["event-not-a-step", "no-reply-not-subset"],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """MilterOptions refuses non-step events and no_reply outside events."""
    with pytest.raises(ValueError, match=message):
        MilterOptions(**kwargs)


@CHUNKED
@pytest.mark.parametrize(
    ("offer", "mail_answered"),
    [(OFFERS["postfix-v6"], False), (OFFERS["v6-no-nr-flags"], True),
     (OFFERS["v2-postfix"], True), (OFFERS["v2-zero"], True)],
    ids=["nr-offered", "nr-not-offered", "v2", "v2-zero"],
)
def test_mail_is_answered_automatically_without_nr_mail(
    offer: Negotiate, mail_answered: bool, chunk: int | None
) -> None:
    """MAIL is shown; it gets one automatic 'c' only when NR_MAIL was not agreed."""
    conn = negotiated(LISTGATE, offer)
    data = stream(SAMPLE[EnvelopeFrom], SAMPLE[EnvelopeRecipient])
    events, out = drive(conn, data, chunk, lambda e, c: ReplyCode(550, "5.7.1", "no"))
    assert events == [SAMPLE[EnvelopeFrom], SAMPLE[EnvelopeRecipient]]
    expected = [Continue()] if mail_answered else []
    assert replies_in(out) == [*expected, ReplyCode(550, "5.7.1", "no")]


# ----------------------------------------------------------------- exactly one reply


@CHUNKED
@pytest.mark.parametrize(
    "cmd",
    [Macro(b"C", (("j", "mx"),)), Macro(b"R"), Abort(), Quit(), QuitNoClose()],
    ids=["macro", "empty-macro", "abort", "quit", "quit-nc"],
)
def test_never_answered_commands_get_no_reply(cmd: Command, chunk: int | None) -> None:
    """D, A, Q and K are passed on (A, Q, K) or absorbed (D) without any reply."""
    conn = negotiated(EVERYTHING)
    events, out = drive(conn, encode(cmd), chunk)
    assert out == b""
    assert conn.awaiting_reply is None
    assert events == ([] if isinstance(cmd, Macro) else [cmd])
    assert type(cmd) in NEVER_ANSWERED


@CHUNKED
@pytest.mark.parametrize("step", NR_STEPS, ids=lambda s: s.__name__)
def test_step_negotiated_no_reply_is_not_answered(
    step: type[Command], chunk: int | None
) -> None:
    """A wanted step agreed as SMFIP_NR_* is shown but never answered."""
    options = MilterOptions(events=ALL_STEPS, no_reply=frozenset({step}))
    conn = negotiated(options)
    assert conn.negotiated is not None
    assert conn.negotiated.protocol & STEP_FLAGS[step][1]
    events, out = drive(conn, _all_steps(), chunk)
    assert [type(e) for e in events] == SESSION
    assert replies_in(out) == [Continue()] * (len(SESSION) - 1)


@CHUNKED
def test_no_reply_steps_answered_automatically_when_nr_not_offered(chunk: int | None) -> None:
    """Wanted no-reply steps get exactly one automatic 'c' when the MTA offers no NR_*."""
    options = MilterOptions(events=ALL_STEPS, no_reply=ALL_STEPS - {EndOfMessage})
    conn = negotiated(options, Negotiate(6, 0x1FF, 0x1FFFFF & ~NR_ALL))
    seen: list[type[Command]] = []

    def decide(event: Command, c: MilterConnection) -> Reply:
        seen.append(type(event))
        return Continue()

    events, out = drive(conn, _all_steps(), chunk, decide)
    assert [type(e) for e in events] == SESSION
    assert seen == [EndOfMessage]
    assert replies_in(out) == [Continue()] * len(SESSION)


@CHUNKED
@pytest.mark.parametrize(
    "offer",
    [OFFERS["postfix-v6"], Negotiate(6, 0x1FF, int(ProtocolFlag.NR_MAIL)), OFFERS["v2-zero"]],
    ids=["skips-offered-but-sent-anyway", "no-skip-offered", "v2-zero"],
)
def test_unwanted_steps_answered_continue_exactly_once(
    offer: Negotiate, chunk: int | None
) -> None:
    """Unwanted steps sent anyway get one automatic 'c' each and are not shown."""
    conn = negotiated(LISTGATE, offer)
    events, out = drive(conn, _all_steps(), chunk)
    assert [type(e) for e in events] == [EnvelopeFrom, EnvelopeRecipient]
    assert conn.negotiated is not None
    expected = sum(1 for c in SESSION if conn.negotiated.expects_reply(c))
    assert replies_in(out) == [Continue()] * expected
    nr_mail = bool(conn.negotiated.protocol & ProtocolFlag.NR_MAIL)
    assert expected == len(SESSION) - nr_mail


def test_send_without_owed_reply_is_refused() -> None:
    """send() when no command waits for a reply raises LocalProtocolError, at every point."""
    conn = MilterConnection(LISTGATE)
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(Continue())
    conn = negotiated(LISTGATE)
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(Continue())
    events, _ = drive(conn, stream(Macro(b"M"), SAMPLE[EnvelopeFrom]), None)
    assert events == [SAMPLE[EnvelopeFrom]]  # NR_MAIL: nothing owed
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(Continue())
    drive(conn, encode(Abort()), None)
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(ReplyCode(550, "5.7.1", "x"))
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "second", [Continue(), Reject(), ReplyCode(550, "5.7.1", "x")], ids=lambda r: r.name
)
def test_second_reply_is_refused(second: Reply) -> None:
    """After the final reply to a command, another reply raises LocalProtocolError."""
    conn = negotiated(LISTGATE)
    drive(conn, encode(SAMPLE[EnvelopeFrom]), None)
    conn.receive_data(encode(SAMPLE[EnvelopeRecipient]))
    conn.next_event()
    conn.send(Continue())
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(second)
    assert conn.data_to_send() == encode(Continue())


@CHUNKED
def test_paused_while_a_reply_is_owed(chunk: int | None) -> None:
    """next_event returns PAUSED (and decodes nothing) until the owed reply is sent."""
    conn = negotiated(LISTGATE)
    data = stream(SAMPLE[EnvelopeFrom], SAMPLE[EnvelopeRecipient], EnvelopeRecipient("<b@x>"))
    events: list[object] = []
    for piece in pieces(data, chunk):
        conn.receive_data(piece)
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        events.append(event)
    assert events == [SAMPLE[EnvelopeFrom], SAMPLE[EnvelopeRecipient]]
    assert conn.awaiting_reply is EnvelopeRecipient
    assert conn.next_event() is PAUSED
    assert conn.buffered == len(encode(EnvelopeRecipient("<b@x>")))
    conn.send(Continue())
    assert conn.next_event() == EnvelopeRecipient("<b@x>")
    assert conn.next_event() is PAUSED


# ------------------------------------------------------------------ legal replies


def _outcome(cmd: type[Command], rcls: type[Reply], actions: ActionFlag, skip: bool) -> str:
    """What tables.py says sending *rcls* at *cmd* does: 'final', 'interim' or 'illegal'."""
    if rcls in FINAL_REPLIES_FOR[cmd]:
        return "illegal" if rcls is Skip and not skip else "final"
    if rcls is Progress:
        return "interim" if cmd in PROGRESS_ALLOWED else "illegal"
    if rcls in EOM_MODIFICATIONS:
        ok = cmd is EndOfMessage and bool(actions & EOM_MODIFICATIONS[rcls])
        return "interim" if ok else "illegal"
    return "illegal"


ALL_ACTIONS = ActionFlag(0xFF)
VARIANTS = {
    "bare": (ActionFlag.NONE, ProtocolFlag.NONE),
    "all-actions-skip": (ALL_ACTIONS, ProtocolFlag.SKIP),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("rcls", list(REPLIES.values()), ids=lambda c: c.name)
@pytest.mark.parametrize("cmd", list(FINAL_REPLIES_FOR), ids=lambda c: c.name)
def test_reply_legality_follows_the_tables(
    cmd: type[Command], rcls: type[Reply], variant: str
) -> None:
    """Every reply at every step is final, interim or LocalProtocolError exactly per tables.py."""
    actions, caps = VARIANTS[variant]
    options = MilterOptions(
        events=ALL_STEPS, no_reply=frozenset(), actions=actions, capabilities=caps
    )
    conn = _at_step(cmd, options, POSTFIX_OFFER)
    conn.data_to_send()
    reply = SAMPLE_REPLIES[rcls]
    outcome = _outcome(cmd, rcls, actions, bool(caps & ProtocolFlag.SKIP))
    if outcome == "illegal":
        with pytest.raises(LocalProtocolError):
            conn.send(reply)
        assert conn.awaiting_reply is cmd
        assert conn.data_to_send() == b""
        conn.send(Continue())  # still owed, still answerable
        assert conn.awaiting_reply is None
    else:
        conn.send(reply)
        assert conn.data_to_send() == encode(reply)
        assert conn.awaiting_reply is (None if outcome == "final" else cmd)


@pytest.mark.parametrize(
    ("step", "reply", "actions", "caps", "message"),
    [
        (Connect, Discard(), ActionFlag.NONE, ProtocolFlag.NONE, "DISCARD is not a legal"),
        (Helo, Discard(), ActionFlag.NONE, ProtocolFlag.NONE, "DISCARD is not a legal"),
        (Body, Skip(), ActionFlag.NONE, ProtocolFlag.NONE, "SMFIP_SKIP was not negotiated"),
        (EnvelopeRecipient, Skip(), ActionFlag.NONE, ProtocolFlag.SKIP, "SKIP is not a legal"),
        (EnvelopeRecipient, AddHeader("X", "y"), ALL_ACTIONS, ProtocolFlag.NONE,
         "only allowed at EOM"),
        (EndOfMessage, AddHeader("X", "y"), ActionFlag.NONE, ProtocolFlag.NONE,
         "action was not negotiated"),
        (EnvelopeRecipient, Progress(), ActionFlag.NONE, ProtocolFlag.NONE,
         "PROGRESS is only sent at EOM"),
        (EndOfMessage, ConnectionFail(), ALL_ACTIONS, ProtocolFlag.NONE, "CONN_FAIL is not"),
        (EnvelopeRecipient, Shutdown(), ActionFlag.NONE, ProtocolFlag.NONE, "SHUTDOWN is not"),
        (EnvelopeRecipient, NegotiateReply(6, 0, 0), ActionFlag.NONE, ProtocolFlag.NONE,
         "OPTNEG reply is not a legal"),
    ],
    ids=["discard-at-connect", "discard-at-helo", "skip-without-smfip-skip", "skip-at-rcpt",
         "addheader-at-rcpt", "addheader-without-action", "progress-at-rcpt",
         "conn-fail", "shutdown", "optneg-reply"],
)
def test_illegal_reply_examples(
    step: type[Command], reply: Reply, actions: ActionFlag, caps: ProtocolFlag, message: str
) -> None:
    """Named examples of replies the protocol forbids at that point."""
    options = MilterOptions(
        events=ALL_STEPS, no_reply=frozenset(), actions=actions, capabilities=caps
    )
    conn = _at_step(step, options, POSTFIX_OFFER)
    with pytest.raises(LocalProtocolError, match=message):
        conn.send(reply)


def test_eom_modifications_then_one_final() -> None:
    """At EOM: PROGRESS and agreed modifications, then one final; nothing after it."""
    options = MilterOptions(
        events=ALL_STEPS, no_reply=frozenset(), actions=ActionFlag.ADDHDRS
    )
    conn = _at_step(EndOfMessage, options, POSTFIX_OFFER)
    conn.data_to_send()
    conn.send(Progress())
    conn.send(AddHeader("X-List-Check", "passed"))
    conn.send(Progress())
    assert conn.awaiting_reply is EndOfMessage
    conn.send(Continue())
    with pytest.raises(LocalProtocolError):
        conn.send(AddHeader("X", "late"))
    assert replies_in(conn.data_to_send()) == [
        Progress(), AddHeader("X-List-Check", "passed"), Progress(), Continue()
    ]


def test_skip_with_smfip_skip_at_body() -> None:
    """SKIP answers BODY when SMFIP_SKIP was agreed."""
    options = MilterOptions(
        events=ALL_STEPS, no_reply=frozenset(), capabilities=ProtocolFlag.SKIP
    )
    conn = _at_step(Body, options, POSTFIX_OFFER)
    conn.data_to_send()
    conn.send(Skip())
    assert conn.data_to_send() == encode(Skip())
    assert conn.awaiting_reply is None


# ------------------------------------------------------------- ABORT, QUIT, QUIT_NC


def _transaction(queue_id: str = "Q1", sender: str = "<member@example.com>") -> list[Command]:
    return [
        Macro(b"M", (("{auth_authen}", "poster"), ("{client_addr}", "192.0.2.1"))),
        EnvelopeFrom(sender),
        Macro(b"R", (("i", queue_id),)),
        EnvelopeRecipient("<list@example.org>"),
    ]


CONNECT_MACROS = Macro(b"C", (("j", "mx.example.org"), ("{daemon_name}", "mx")))
HELO_MACROS = Macro(b"H", (("{tls_version}", "TLSv1.3"),))


@CHUNKED
def test_abort_resets_message_state_and_keeps_connection_state(chunk: int | None) -> None:
    """ABORT clears MAIL/RCPT-stage macros and the transaction, keeps CONNECT/HELO ones."""
    conn = negotiated(LISTGATE)
    data = stream(CONNECT_MACROS, HELO_MACROS, *_transaction(), Abort())
    events, _ = drive(conn, data, chunk)
    assert [type(e) for e in events] == [EnvelopeFrom, EnvelopeRecipient, Abort]
    assert conn.macros(MacroStage.CONNECT) == {"j": "mx.example.org", "daemon_name": "mx"}
    assert conn.macros(MacroStage.HELO) == {"tls_version": "TLSv1.3"}
    assert conn.macro("j") == "mx.example.org"
    assert conn.macro("tls_version") == "TLSv1.3"
    for stage in (MacroStage.ENVFROM, MacroStage.ENVRCPT, MacroStage.DATA, MacroStage.EOM,
                  MacroStage.EOH):
        assert conn.macros(stage) == {}
    assert conn.macro("auth_authen") is None
    assert conn.macro("i") is None
    with pytest.raises(RemoteProtocolError, match="RCPT outside a transaction"):
        drive(conn, encode(EnvelopeRecipient("<list@example.org>")), chunk)


@CHUNKED
def test_postfix_abort_abort_quit_after_every_transaction(chunk: int | None) -> None:
    """Postfix's 'A A' after each message and final 'Q': no replies, clean next transaction."""
    conn = negotiated(LISTGATE)
    first = [*_transaction("Q1"), Macro(b"E", (("i", "Q1"),)), EndOfMessage(), Abort(), Abort()]
    second = [*_transaction("Q2", "<other@example.com>"), Abort(), Abort(), Quit()]
    queue_ids: list[str | None] = []

    def decide(event: Command, c: MilterConnection) -> Reply:
        queue_ids.append(c.macro("i"))
        return Continue()

    events, out = drive(conn, stream(CONNECT_MACROS, *first, *second), chunk, decide)
    assert [type(e) for e in events] == [
        EnvelopeFrom, EnvelopeRecipient, Abort, Abort,
        EnvelopeFrom, EnvelopeRecipient, Abort, Abort, Quit,
    ]
    assert queue_ids == ["Q1", "Q2"]
    assert replies_in(out) == [Continue()] * 3  # RCPT, automatic EOM, RCPT
    assert conn.closed
    assert conn.macro("j") == "mx.example.org"
    conn.receive_data(encode(SAMPLE[EnvelopeFrom]))
    assert conn.next_event() is NEED_DATA  # nothing is decoded after QUIT


@CHUNKED
def test_quit_nc_returns_to_before_connect(chunk: int | None) -> None:
    """K clears macros and transaction, keeps negotiation; a second OPTNEG is still refused."""
    conn = negotiated(LISTGATE)
    before = conn.negotiated
    events, _ = drive(conn, stream(CONNECT_MACROS, *_transaction(), QuitNoClose()), chunk)
    assert type(events[-1]) is QuitNoClose
    assert conn.negotiated is before
    assert all(conn.macros(stage) == {} for stage in MacroStage)
    assert conn.macro("j") is None
    assert not conn.closed
    events, out = drive(conn, stream(CONNECT_MACROS, SAMPLE[Connect], *_transaction()), chunk)
    assert [type(e) for e in events] == [EnvelopeFrom, EnvelopeRecipient]
    assert replies_in(out) == [Continue(), Continue()]  # automatic CONNECT, RCPT
    drive(conn, encode(QuitNoClose()), chunk)
    with pytest.raises(RemoteProtocolError, match="RCPT outside a transaction"):
        drive(conn, encode(SAMPLE[EnvelopeRecipient]), chunk)
    conn = negotiated(LISTGATE)
    drive(conn, encode(QuitNoClose()), chunk)
    with pytest.raises(RemoteProtocolError, match="OPTNEG repeated"):
        drive(conn, encode(POSTFIX_OFFER), chunk)


# --------------------------------------------------------------------------- macros


@CHUNKED
def test_newer_stage_wins_on_lookup(chunk: int | None) -> None:
    """The same macro at several stages: the value of the latest stage is returned."""
    conn = negotiated(EVERYTHING)
    seen: list[str | None] = []

    def decide(event: Command, c: MilterConnection) -> Reply:
        seen.append(c.macro("x"))
        return Continue()

    data = stream(
        Macro(b"C", (("x", "connect"),)), SAMPLE[Connect],
        Macro(b"H", (("x", "helo"),)), SAMPLE[Helo],
        Macro(b"U"), SAMPLE[Unknown],
        Macro(b"M", (("{x}", "mail"),)), SAMPLE[EnvelopeFrom],
        Macro(b"R", (("x", "rcpt"),)), SAMPLE[EnvelopeRecipient],
        Macro(b"T", (("x", "data"),)), SAMPLE[Data],
        Macro(b"L", (("x", "header-dropped"),)), SAMPLE[Header],
        Macro(b"N", (("x", "eoh"),)), SAMPLE[EndOfHeaders],
        Macro(b"B", (("x", "body-dropped"),)), SAMPLE[Body],
        Macro(b"E", (("y", "eom"),)), SAMPLE[EndOfMessage],
    )
    drive(conn, data, chunk, decide)
    assert seen == ["connect", "helo", "helo", "mail", "rcpt", "data", "data", "eoh", "eoh",
                    "eoh"]
    assert conn.macro("y") == conn.macro("{y}") == "eom"


@pytest.mark.parametrize(
    ("stage", "code"),
    [(MacroStage.CONNECT, b"C"), (MacroStage.HELO, b"H"), (MacroStage.ENVFROM, b"M"),
     (MacroStage.ENVRCPT, b"R")],
    ids=["C", "H", "M", "R"],
)
@CHUNKED
def test_new_macros_clear_later_stages(stage: MacroStage, code: bytes, chunk: int | None) -> None:
    """New C/H/M/R macros replace their stage and clear every later stage only."""
    conn = negotiated(EVERYTHING)
    all_stages = [b"C", b"H", b"M", b"R", b"T", b"E", b"N"]
    first = [Macro(c, (("x", c.decode()), (c.decode(), "1"))) for c in all_stages]
    drive(conn, stream(*first), chunk)
    assert conn.macro("x") == "N"  # EOH (6) is the highest stage index
    drive(conn, encode(Macro(code, (("x", "new"),))), chunk)
    for other in MacroStage:
        name = all_stages[other].decode()
        if other < stage:
            assert conn.macros(other) == {"x": name, name: "1"}
        elif other == stage:
            assert conn.macros(other) == {"x": "new"}
        else:
            assert conn.macros(other) == {}
    assert conn.macro("x") == "new"


@CHUNKED
def test_data_eom_eoh_macros_clear_nothing(chunk: int | None) -> None:
    """Macros for T, E and N replace their own stage only."""
    conn = negotiated(EVERYTHING)
    data = stream(Macro(b"R", (("i", "Q"),)), Macro(b"T", (("a", "1"),)),
                  Macro(b"N", (("b", "2"),)), Macro(b"E", (("c", "3"),)),
                  Macro(b"T", (("a", "4"),)))
    drive(conn, data, chunk)
    assert conn.macros(MacroStage.ENVRCPT) == {"i": "Q"}
    assert conn.macros(MacroStage.DATA) == {"a": "4"}
    assert conn.macros(MacroStage.EOH) == {"b": "2"}
    assert conn.macros(MacroStage.EOM) == {"c": "3"}


@CHUNKED
def test_braced_and_bare_names_are_the_same(chunk: int | None) -> None:
    """'{x}' and 'x' name the same macro, stored without braces."""
    conn = negotiated(LISTGATE)
    drive(conn, encode(Macro(b"M", (("{auth_authen}", "u"), ("i", "Q"), ("{", "b")))), chunk)
    assert conn.macros(MacroStage.ENVFROM) == {"auth_authen": "u", "i": "Q", "{": "b"}
    assert conn.macro("{auth_authen}") == conn.macro("auth_authen") == "u"
    assert conn.macro("{i}") == "Q"
    assert conn.macro("{missing}") is None


@CHUNKED
def test_empty_macro_packets_are_accepted(chunk: int | None) -> None:
    """A D packet with zero pairs (Postfix sends them) is accepted and empties its stage."""
    conn = negotiated(LISTGATE)
    events, out = drive(conn, stream(CONNECT_MACROS, Macro(b"H"), Macro(b"C")), chunk)
    assert (events, out) == ([], b"")
    assert conn.macros(MacroStage.CONNECT) == {}
    assert conn.macro("j") is None


@CHUNKED
def test_macros_for_skipped_steps_are_kept(chunk: int | None) -> None:
    """'D C' and 'D H' arrive although CONNECT/HELO were negotiated away; they are stored."""
    conn = negotiated(LISTGATE)
    assert conn.negotiated is not None
    assert conn.negotiated.skips(Connect)
    assert conn.negotiated.skips(Helo)
    events, out = drive(conn, stream(CONNECT_MACROS, HELO_MACROS), chunk)
    assert (events, out) == ([], b"")
    assert conn.macro("j") == "mx.example.org"
    assert conn.macro("tls_version") == "TLSv1.3"


@CHUNKED
@pytest.mark.parametrize("code", [b"L", b"B", b"U"])
def test_macros_for_header_body_unknown_are_dropped(code: bytes, chunk: int | None) -> None:
    """Macros for L, B and U are accepted but dropped, as libmilter does."""
    conn = negotiated(LISTGATE)
    drive(conn, stream(CONNECT_MACROS, *_transaction()), chunk)
    before = [dict(conn.macros(s)) for s in MacroStage]
    events, out = drive(conn, encode(Macro(code, (("i", "other"), ("z", "1")))), chunk)
    assert (events, out) == ([], b"")
    assert [dict(conn.macros(s)) for s in MacroStage] == before
    assert conn.macro("i") == "Q1"
    assert conn.macro("z") is None


@CHUNKED
@pytest.mark.parametrize("code", [b"Z", b"\x00", b"O", b"A", b"Q", b"K", b"D"], ids=repr)
def test_macro_for_impossible_command_kills_the_connection(
    code: bytes, chunk: int | None
) -> None:
    """D for an unknown command byte or for O/A/Q/K/D is a RemoteProtocolError."""
    conn = negotiated(LISTGATE)
    data = (len(code) + 5).to_bytes(4, "big") + b"D" + code + b"i\0x\0"
    with pytest.raises(RemoteProtocolError, match="MACRO: for unknown command"):
        drive(conn, data, chunk)


# ---------------------------------------------------------------- sequence errors


@CHUNKED
@pytest.mark.parametrize(
    "cmd",
    [SAMPLE.get(cls) or (Macro(b"C") if cls is Macro else cls())
     for cls in COMMANDS.values() if cls is not Negotiate],
    ids=lambda c: c.name,
)
def test_anything_before_optneg_is_refused(cmd: Command, chunk: int | None) -> None:
    """Every command other than OPTNEG as the first packet is a RemoteProtocolError."""
    conn = MilterConnection(LISTGATE)
    with pytest.raises(RemoteProtocolError, match=f"expected OPTNEG first, got {cmd.name}"):
        drive(conn, encode(cmd) + encode(POSTFIX_OFFER), chunk)


@CHUNKED
def test_second_optneg_is_refused(chunk: int | None) -> None:
    """OPTNEG after negotiation is a RemoteProtocolError."""
    conn = MilterConnection(LISTGATE)
    with pytest.raises(RemoteProtocolError, match="OPTNEG repeated"):
        drive(conn, stream(POSTFIX_OFFER, Macro(b"C"), POSTFIX_OFFER), chunk)


@CHUNKED
@pytest.mark.parametrize(
    "before",
    [
        [],
        [Helo("x")],
        [EnvelopeFrom("<a@b>"), EnvelopeRecipient("<c@d>"), EndOfMessage()],
        [EnvelopeFrom("<a@b>"), Abort()],
    ],
    ids=["first", "after-helo", "after-eom", "after-abort"],
)
def test_rcpt_before_mail_is_refused(before: list[Command], chunk: int | None) -> None:
    """RCPT with no MAIL in the current transaction is a RemoteProtocolError."""
    conn = negotiated(LISTGATE)
    with pytest.raises(RemoteProtocolError, match="RCPT outside a transaction"):
        drive(conn, stream(*before, EnvelopeRecipient("<list@example.org>")), chunk)


@CHUNKED
def test_rcpt_after_rejected_mail_is_refused(chunk: int | None) -> None:
    """A MAIL answered with a rejection ends the transaction; a RCPT then is an error."""
    options = MilterOptions(events=frozenset({EnvelopeFrom, EnvelopeRecipient}),
                            no_reply=frozenset())
    conn = negotiated(options)
    data = stream(SAMPLE[EnvelopeFrom], SAMPLE[EnvelopeRecipient])
    with pytest.raises(RemoteProtocolError, match="RCPT outside a transaction"):
        drive(conn, data, chunk, lambda e, c: ReplyCode(550, "5.7.1", "no"))


TempFailReply = ReplyCode(452, "4.5.3", "too many")


@CHUNKED
def test_rcpt_after_accepted_mail_is_fine_repeatedly(chunk: int | None) -> None:
    """Several RCPTs after one MAIL, each answered once, some rejected."""
    conn = negotiated(LISTGATE)
    rcpts = [EnvelopeRecipient(f"<r{i}@example.org>") for i in range(5)]
    answers = iter([Continue(), ReplyCode(550, "5.7.1", "a"), Continue(), TempFailReply,
                    ReplyCode(451, "4.3.0", "b")])
    events, out = drive(conn, stream(SAMPLE[EnvelopeFrom], *rcpts), chunk,
                        lambda e, c: next(answers))
    assert events == [SAMPLE[EnvelopeFrom], *rcpts]
    assert replies_in(out) == [Continue(), ReplyCode(550, "5.7.1", "a"), Continue(),
                               TempFailReply, ReplyCode(451, "4.3.0", "b")]


def test_data_to_send_is_empty_when_nothing_is_queued() -> None:
    """data_to_send returns b'' when there is nothing to write, and drains the queue."""
    conn = MilterConnection(LISTGATE)
    assert conn.data_to_send() == b""
    conn.receive_data(encode(POSTFIX_OFFER))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() != b""
    assert conn.data_to_send() == b""
