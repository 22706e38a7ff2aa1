"""Property tests (hypothesis): robustness on any input, round trips, chunking invariance."""

from __future__ import annotations

import itertools
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listgate.frontends.milter import milter_options
from listgate.milter import (
    COMMANDS,
    NEED_DATA,
    REPLIES,
    Abort,
    Accept,
    ActionFlag,
    AddHeader,
    AddRecipient,
    AddRecipientWithArgs,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Connect,
    Continue,
    Data,
    DeleteRecipient,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    InsertHeader,
    Macro,
    MacroStage,
    Message,
    MilterConnection,
    MilterOptions,
    MtaConnection,
    Negotiate,
    NegotiateReply,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNoClose,
    Reject,
    RemoteProtocolError,
    ReplaceBody,
    Reply,
    ReplyCode,
    TempFail,
    Unknown,
    command_decoder,
    encode,
    reply_decoder,
)
from listgate.milter.constants import MAX_REPLY_TEXT
from listgate.milter.messages import decode_str
from listgate.milter.tables import STEP_FLAGS

from . import decode_all

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = 64
"""max_packet_size for fuzzing: small, so random lengths often hit the limit checks."""

u32 = st.integers(0, 0xFFFFFFFF)
raw_text = st.binary(max_size=24).map(lambda b: decode_str(b.replace(b"\0", b"")))
nice_text = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=24
)
cstr = st.one_of(raw_text, nice_text)
"""A string field: any text without NUL, including non-UTF-8 bytes (surrogateescape)."""
args = st.lists(cstr, max_size=3).map(tuple)
macro_name = st.text(alphabet=string.ascii_letters + string.digits + "{}_", min_size=1, max_size=12)

commands: st.SearchStrategy[Command] = st.one_of(
    st.just(Abort()),
    st.builds(Body, st.binary(max_size=40)),
    st.builds(Connect, cstr, st.sampled_from("46L"), st.integers(0, 0xFFFF), cstr),
    st.builds(Connect, cstr, st.just("U")),
    st.builds(
        Macro,
        st.sampled_from([b"C", b"H", b"M", b"R", b"T", b"E", b"N", b"L", b"B", b"U"]),
        st.lists(st.tuples(cstr, cstr), max_size=3).map(tuple),
    ),
    st.builds(EndOfMessage, st.binary(max_size=10)),
    st.builds(Helo, cstr),
    st.just(QuitNoClose()),
    st.builds(Header, cstr, cstr),
    st.builds(EnvelopeFrom, cstr, args),
    st.just(EndOfHeaders()),
    st.builds(Negotiate, u32, u32, u32),
    st.just(Quit()),
    st.builds(EnvelopeRecipient, cstr, args),
    st.just(Data()),
    st.builds(Unknown, cstr),
)

_DSN_HEAD = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


@st.composite
def reply_codes(draw: st.DrawFn) -> ReplyCode:
    """A ReplyCode whose text survives packing unchanged (short, no control characters,
    no leading DSN look-alike when there is no DSN)."""
    code = draw(st.integers(400, 599))
    dsn = draw(st.one_of(st.none(), st.builds(
        "{}.{}.{}".format, st.just(code // 100), st.integers(0, 999), st.integers(0, 999))))
    text = draw(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), max_size=60))
    if dsn is None and _DSN_HEAD.match(text.partition(" ")[0]):
        text = "x" + text
    return ReplyCode(code, dsn, text)


replies: st.SearchStrategy[Reply] = st.one_of(
    st.builds(
        NegotiateReply, u32, u32, u32,
        st.lists(
            st.tuples(st.sampled_from(list(MacroStage)),
                      st.lists(macro_name, max_size=4).map(tuple)),
            max_size=4,
        ).map(tuple),
    ),
    st.sampled_from([REPLIES[i]() for i in (b"c", b"a", b"r", b"t", b"d", b"s", b"p", b"f",
                                             b"4")]),
    reply_codes(),
    st.builds(AddRecipient, cstr),
    st.builds(DeleteRecipient, cstr),
    st.builds(AddRecipientWithArgs, cstr, st.one_of(st.none(), cstr)),
    st.builds(ChangeSender, cstr, st.one_of(st.none(), cstr)),
    st.builds(AddHeader, cstr, cstr),
    st.builds(InsertHeader, u32, cstr, cstr),
    st.builds(ChangeHeader, u32, cstr, cstr),
    st.builds(ReplaceBody, st.binary(max_size=40)),
    st.builds(Quarantine, cstr),
)


def _framed(ident: bytes, payload: bytes) -> bytes:
    return (len(payload) + 1).to_bytes(4, "big") + ident + payload


junk_packets = st.builds(_framed, st.sampled_from(sorted(COMMANDS)), st.binary(max_size=20))
"""Correctly framed packets of a real command with arbitrary data."""


@st.composite
def mta_streams(draw: st.DrawFn) -> bytes:
    """Byte streams an MTA (or anything else on the port) might send: usually a valid
    OPTNEG first, then a mix of valid packets, framed junk and raw junk."""
    parts: list[bytes] = []
    if draw(st.integers(0, 9)):
        version = draw(st.sampled_from([2, 3, 4, 6, 6, 6, 1, 7]))
        actions = draw(st.sampled_from([0, 0x3F, 0x1FF, 0xFFFFFFFF]))
        protocol = draw(st.sampled_from([0, 0x7F, 0x1FFFFF, 0x1FFFFF & ~0xFF080]))
        parts.append(encode(Negotiate(version, actions, protocol)))
    parts += draw(st.lists(st.one_of(commands.map(encode), junk_packets, st.binary(max_size=12)),
                           max_size=25))
    return b"".join(parts)


OPTIONS = [
    milter_options(SMALL),
    MilterOptions(events=frozenset(STEP_FLAGS), no_reply=frozenset(), max_packet_size=SMALL,
                  actions=ActionFlag.ADDHDRS, capabilities=ProtocolFlag.SKIP),
    MilterOptions(events=frozenset(STEP_FLAGS), no_reply=frozenset(STEP_FLAGS),
                  max_packet_size=SMALL),
]
VERDICTS = [Continue(), Accept(), Reject(), TempFail(), ReplyCode(550, "5.7.1", "no")]
"""Replies legal at every step."""


def _run(
    options: MilterOptions, data: bytes, cuts: list[int], pick: st.DataObject | None = None
) -> tuple[list[Command], bytes, str | None]:
    """Feed *data* cut at *cuts*; answer owed replies; return events, output, error."""
    conn = MilterConnection(options)
    events: list[Command] = []
    out = bytearray()
    bounds = [0, *sorted(set(cuts)), len(data)]
    error: str | None = None
    try:
        for start, end in itertools.pairwise(bounds):
            conn.receive_data(data[start:end])
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Command)
                events.append(event)
                if conn.awaiting_reply is not None:
                    assert conn.awaiting_reply is type(event)
                    if pick is None:
                        reply = VERDICTS[len(events) % len(VERDICTS)]
                    else:
                        reply = pick.draw(st.sampled_from(VERDICTS))
                    conn.send(reply)
            out += conn.data_to_send()
    except RemoteProtocolError as exc:
        error = str(exc).partition(" (first bytes")[0]  # the hex dump shows what was buffered
        out += conn.data_to_send()
    return events, bytes(out), error


@FAST
@given(data=mta_streams(), options=st.sampled_from(OPTIONS), pick=st.data())
def test_any_stream_gives_events_or_remote_error(
    data: bytes, options: MilterOptions, pick: st.DataObject
) -> None:
    """Any bytes give events or RemoteProtocolError only, and a well-formed reply stream."""
    cuts = pick.draw(st.lists(st.integers(0, len(data)), max_size=4))
    _, out, error = _run(options, data, cuts, pick)
    decoder = reply_decoder()
    decoded = decode_all(decoder, out, None)
    assert decoder.buffered == 0
    if decoded:
        assert isinstance(decoded[0], NegotiateReply)
        assert not any(isinstance(r, NegotiateReply) for r in decoded[1:])
    if error is not None:
        assert error.strip()


@FAST
@given(data=mta_streams(), options=st.sampled_from(OPTIONS), cuts=st.lists(st.integers(0, 600)))
def test_chunking_does_not_change_the_outcome(
    data: bytes, options: MilterOptions, cuts: list[int]
) -> None:
    """Feeding the same bytes cut anywhere gives the same events, output and error."""
    whole = _run(options, data, [])
    cut = _run(options, data, [c for c in cuts if c <= len(data)])
    ones = _run(options, data, list(range(len(data))))
    assert cut == whole
    assert ones == whole


@FAST
@given(msgs=st.lists(commands, max_size=8), chunk=st.integers(1, 50))
def test_commands_round_trip(msgs: list[Command], chunk: int) -> None:
    """Generated commands survive encode → command decoder, alone and as a chunked stream."""
    for msg in msgs:
        assert type(msg).unpack(msg.pack_payload()) == msg
    data = b"".join(encode(m) for m in msgs)
    assert decode_all(command_decoder(), data, chunk) == msgs


@FAST
@given(msgs=st.lists(replies, max_size=8), chunk=st.integers(1, 50))
def test_replies_round_trip(msgs: list[Reply], chunk: int) -> None:
    """Generated replies survive encode → reply decoder, alone and as a chunked stream."""
    for msg in msgs:
        assert type(msg).unpack(msg.pack_payload()) == msg
    data = b"".join(encode(m) for m in msgs)
    assert decode_all(reply_decoder(), data, chunk) == msgs


ALL_CLASSES: list[type[Message]] = [*COMMANDS.values(), *REPLIES.values()]


@FAST
@given(cls=st.sampled_from(ALL_CLASSES), payload=st.one_of(
    st.binary(max_size=40),
    st.builds(lambda a, b: a + b"\0" + b, st.binary(max_size=10), st.binary(max_size=10)),
    st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(max_size=20)),
))
def test_unpack_raises_only_remote_errors(cls: type[Message], payload: bytes) -> None:
    """unpack() of any payload returns a message or raises RemoteProtocolError only."""
    try:
        msg = cls.unpack(payload)
    except RemoteProtocolError:
        return
    assert isinstance(msg, cls)


@FAST
@given(
    code=st.sampled_from([421, 450, 451, 452, 550, 551, 553, 554]),
    with_dsn=st.booleans(),
    text=st.one_of(
        st.text(max_size=3000), raw_text, st.text(alphabet="%\u20ac\r\n", max_size=3000)
    ),
)
def test_replycode_packing_is_always_safe(code: int, with_dsn: bool, text: str) -> None:
    """Any text packs to ≤ 980 bytes, one NUL, no control chars, same code and DSN back."""
    dsn = f"{code // 100}.7.1" if with_dsn else None
    payload = ReplyCode(code, dsn, text).pack_payload()
    assert payload.endswith(b"\0")
    assert len(payload) - 1 <= MAX_REPLY_TEXT
    assert not re.search(rb"[\x00-\x1f\x7f]", payload[:-1])
    back = ReplyCode.unpack(payload)
    assert back.code == code
    if dsn is not None:
        assert back.dsn == dsn


@FAST
@given(data=st.lists(st.one_of(replies.map(encode), st.binary(max_size=12)), max_size=10),
       sends=st.lists(st.sampled_from([EnvelopeRecipient("<a@b>"), EndOfMessage(), Abort(),
                                       Helo("x"), Body(b"x")]), max_size=6))
def test_mta_side_gives_replies_or_remote_error(data: list[bytes], sends: list[Command]) -> None:
    """Whatever a milter sends back, MtaConnection yields replies or RemoteProtocolError."""
    mta = MtaConnection()
    mta.start()
    mta.receive_data(encode(NegotiateReply(6, 0x1FF, int(ProtocolFlag.SKIP))))
    assert isinstance(mta.next_event(), NegotiateReply)
    mta.receive_data(b"".join(data))
    try:
        for cmd in sends:
            if mta.awaiting_reply is None:
                mta.send(cmd)
            event = mta.next_event()
            assert event is NEED_DATA or isinstance(event, Reply)
    except RemoteProtocolError:
        pass
    assert mta.negotiated is not None
