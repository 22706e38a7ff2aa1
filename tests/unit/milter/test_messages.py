"""Messages: every command and reply round-trips; malformed payloads; safe REPLYCODE."""

from __future__ import annotations

import re

import pytest

from listgate.milter import (
    COMMANDS,
    REPLIES,
    Abort,
    Accept,
    AddHeader,
    AddRecipient,
    AddRecipientWithArgs,
    Body,
    ChangeHeader,
    ChangeSender,
    Connect,
    ConnectionFail,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    InsertHeader,
    LocalProtocolError,
    Macro,
    MacroStage,
    Message,
    Negotiate,
    NegotiateReply,
    Progress,
    Quarantine,
    Quit,
    QuitNoClose,
    Reject,
    RemoteProtocolError,
    ReplaceBody,
    ReplyCode,
    Shutdown,
    Skip,
    TempFail,
    Unknown,
    command_decoder,
    encode,
    reply_decoder,
)
from listgate.milter.constants import MAX_REPLY_TEXT
from listgate.milter.messages import decode_str, encode_str

from . import CHUNKED, decode_all, stream

RAW = decode_str(b"caf\xe9 \xff\xfe")  # not UTF-8: survives via surrogateescape

COMMAND_CASES: list[tuple[str, Message]] = [
    ("abort", Abort()),
    ("body-empty", Body(b"")),
    ("body-binary", Body(bytes(range(256)) * 3)),
    ("body-max-chunk", Body(b"x" * 65535)),
    ("connect-4", Connect("[172.17.0.1]", "4", 33148, "172.17.0.1")),
    ("connect-6", Connect("mx.example.net", "6", 25, "2001:db8::1")),
    ("connect-L", Connect("localhost", "L", 0, "/run/listgate.sock")),
    ("connect-U", Connect("unknown", "U")),
    ("connect-empty-strings", Connect("", "4", 0, "")),
    ("connect-max-port-raw-host", Connect(RAW, "4", 65535, "10.0.0.1")),
    ("macro-zero-pairs", Macro(b"H")),
    ("macro-pairs", Macro(b"R", (("{rcpt_addr}", "list@example.org"), ("i", "")))),
    ("macro-empty-name-and-value", Macro(b"C", (("", ""),))),
    ("macro-raw", Macro(b"M", ((RAW, RAW),))),
    ("macro-for-header", Macro(b"L", (("i", "DA89B210634"),))),
    ("eom", EndOfMessage()),
    ("eom-with-chunk", EndOfMessage(b"last body bytes\r\n")),
    ("helo", Helo("client.feas.test")),
    ("helo-empty", Helo("")),
    ("helo-raw", Helo(RAW)),
    ("quit-nc", QuitNoClose()),
    ("header", Header("Subject", "full capture")),
    ("header-empty", Header("", "")),
    ("header-folded", Header("X-Folded", "first\n\tsecond")),
    ("header-raw", Header("X-Raw", RAW)),
    ("mail", EnvelopeFrom("<member@example.com>")),
    ("mail-null-sender", EnvelopeFrom("<>")),
    ("mail-empty", EnvelopeFrom("")),
    ("mail-args", EnvelopeFrom("<a@example.com>", ("SIZE=100", "BODY=8BITMIME", ""))),
    ("mail-raw", EnvelopeFrom(f"<{RAW}@example.com>")),
    ("eoh", EndOfHeaders()),
    ("optneg-postfix", Negotiate(6, 0x1FF, 0x1FFFFF)),
    ("optneg-zero", Negotiate(2, 0, 0)),
    ("optneg-max", Negotiate(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)),
    ("quit", Quit()),
    ("rcpt", EnvelopeRecipient("<list@example.org>")),
    ("rcpt-args", EnvelopeRecipient("<b@example.org>", ("NOTIFY=NEVER", "ORCPT=rfc822;b"))),
    ("rcpt-empty", EnvelopeRecipient("")),
    ("data", Data()),
    ("unknown", Unknown("XYZZY plugh")),
    ("unknown-empty", Unknown("")),
    ("unknown-raw", Unknown(RAW)),
]

ALL_STAGES = tuple((stage, (f"{{m{int(stage)}}}", "i")) for stage in MacroStage)

REPLY_CASES: list[tuple[str, Message]] = [
    ("optneg-bare", NegotiateReply(6, 0, 0)),
    (
        "optneg-listgate",
        NegotiateReply(
            6,
            0x100,
            0x4373,
            ((MacroStage.ENVFROM, ("{client_addr}", "{auth_authen}", "i")),
             (MacroStage.ENVRCPT, ("i",))),
        ),
    ),
    ("optneg-every-stage", NegotiateReply(6, 0x1FF, 0x1FFFFF, ALL_STAGES)),
    ("optneg-empty-list", NegotiateReply(2, 0x100, 0, ((MacroStage.EOH, ()),))),
    ("continue", Continue()),
    ("accept", Accept()),
    ("reject", Reject()),
    ("tempfail", TempFail()),
    ("discard", Discard()),
    ("skip", Skip()),
    ("progress", Progress()),
    ("conn-fail", ConnectionFail()),
    ("shutdown", Shutdown()),
    ("replycode", ReplyCode(550, "5.7.1", "<a@example.net> is not allowed to post")),
    ("replycode-temp", ReplyCode(451, "4.3.0", "try again later")),
    ("replycode-no-dsn", ReplyCode(554, None, "go away")),
    ("replycode-no-text", ReplyCode(421, None, "")),
    ("replycode-dsn-no-text", ReplyCode(550, "5.7.1", "")),
    ("replycode-percent", ReplyCode(550, "5.7.1", "100% sure, %% and %s")),
    ("replycode-multibyte", ReplyCode(550, "5.7.1", "caf\u00e9 \u20ac \U0001f600")),
    ("replycode-long-dsn", ReplyCode(550, "5.123.456", "x")),
    ("addrcpt", AddRecipient("<new@example.org>")),
    ("addrcpt-empty", AddRecipient("")),
    ("delrcpt", DeleteRecipient("<old@example.org>")),
    ("addrcpt-par", AddRecipientWithArgs("<n@example.org>")),
    ("addrcpt-par-args", AddRecipientWithArgs("<n@example.org>", "NOTIFY=NEVER ORCPT=x")),
    ("addrcpt-par-empty-args", AddRecipientWithArgs("<n@example.org>", "")),
    ("chgfrom", ChangeSender("<>")),
    ("chgfrom-args", ChangeSender("<s@example.org>", "RET=HDRS")),
    ("addheader", AddHeader("X-List-Check", "passed")),
    ("addheader-empty", AddHeader("", "")),
    ("insheader-top", InsertHeader(0, "X-Top", "v")),
    ("insheader-max", InsertHeader(0xFFFFFFFF, "X-Raw", RAW)),
    ("chgheader-delete", ChangeHeader(1, "Subject", "")),
    ("replbody", ReplaceBody(b"new body\r\n")),
    ("replbody-binary", ReplaceBody(b"\0\xff" * 100)),
    ("replbody-empty", ReplaceBody(b"")),
    ("quarantine", Quarantine("held for review")),
    ("quarantine-empty", Quarantine("")),
]


def _ids(cases: list[tuple[str, Message]]) -> list[str]:
    return [name for name, _ in cases]


def test_command_cases_cover_every_command() -> None:
    """The round-trip table covers every command (A B C D E H K L M N O Q R T U)."""
    assert {type(m) for _, m in COMMAND_CASES} == set(COMMANDS.values())
    assert set(COMMANDS) == {bytes([c]) for c in b"ABCDEHKLMNOQRTU"}


def test_reply_cases_cover_every_reply() -> None:
    """The round-trip table names every reply class in REPLIES."""
    assert {type(m) for _, m in REPLY_CASES} == set(REPLIES.values())


@pytest.mark.parametrize(("name", "msg"), COMMAND_CASES, ids=_ids(COMMAND_CASES))
def test_command_round_trip(name: str, msg: Message) -> None:
    """A command survives pack → unpack and encode → command decoder unchanged."""
    assert type(msg).unpack(msg.pack_payload()) == msg
    decoder = command_decoder()
    decoder.feed(encode(msg))
    assert decoder.next_message() == msg
    assert decoder.buffered == 0


@pytest.mark.parametrize(("name", "msg"), REPLY_CASES, ids=_ids(REPLY_CASES))
def test_reply_round_trip(name: str, msg: Message) -> None:
    """A reply survives pack → unpack and encode → reply decoder unchanged."""
    assert type(msg).unpack(msg.pack_payload()) == msg
    decoder = reply_decoder()
    decoder.feed(encode(msg))
    assert decoder.next_message() == msg
    assert decoder.buffered == 0


@CHUNKED
def test_all_commands_as_one_stream(chunk: int | None) -> None:
    """Every command case back to back decodes to the same list, whole or chunked."""
    msgs = [m for _, m in COMMAND_CASES]
    assert decode_all(command_decoder(), stream(*msgs), chunk) == msgs


@CHUNKED
def test_all_replies_as_one_stream(chunk: int | None) -> None:
    """Every reply case back to back decodes to the same list, whole or chunked."""
    msgs = [m for _, m in REPLY_CASES]
    assert decode_all(reply_decoder(), stream(*msgs), chunk) == msgs


def test_surrogateescape_is_lossless() -> None:
    """decode_str/encode_str carry any byte string through str unchanged."""
    raw = bytes(range(1, 256))
    assert encode_str(decode_str(raw)) == raw
    assert Helo.unpack(raw + b"\0").pack_payload() == raw + b"\0"


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (Connect("[127.0.0.1]", "4", 0xC168, "127.0.0.1"),
         b"[127.0.0.1]\x004\xc1\x68127.0.0.1\x00"),
        (Connect("h", "U"), b"h\x00U"),
        (Connect("h", "L", 0, "/s"), b"h\x00L\x00\x00/s\x00"),
        (Macro(b"H"), b"H"),
        (Macro(b"T", (("i", "Q1"),)), b"Ti\x00Q1\x00"),
        (Negotiate(6, 0x1FF, 0x1FFFFF), bytes.fromhex("00000006000001ff001fffff")),
        (EnvelopeFrom("<a@b>", ("SIZE=1",)), b"<a@b>\x00SIZE=1\x00"),
        (Header("To", "x"), b"To\x00x\x00"),
        (NegotiateReply(6, 0x100, 0, ((MacroStage.ENVRCPT, ("i", "{x}")),)),
         bytes.fromhex("00000006 00000100 00000000 00000003") + b"i {x}\x00"),
        (InsertHeader(2, "A", "b"), b"\x00\x00\x00\x02A\x00b\x00"),
        (AddRecipientWithArgs("r"), b"r\x00"),
        (ReplyCode(550, "5.7.1", "no"), b"550 5.7.1 no\x00"),
        (ReplyCode(451, None, ""), b"451\x00"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Message) else "",
)
def test_wire_layout(msg: Message, wire: bytes) -> None:
    """Payload layouts match the protocol reference byte for byte."""
    assert msg.pack_payload() == wire


@pytest.mark.parametrize(
    ("cls", "payload", "message"),
    [
        (Helo, b"client", "HELO: data is not NUL-terminated"),
        (Helo, b"", "HELO: data is not NUL-terminated"),
        (Helo, b"a\0b\0", "HELO: expected 1 string"),
        (EnvelopeFrom, b"<a@b>", "MAIL: data is not NUL-terminated"),
        (EnvelopeFrom, b"", "MAIL: data is not NUL-terminated"),
        (EnvelopeRecipient, b"<a@b>\0SIZE=1", "RCPT: data is not NUL-terminated"),
        (Header, b"Subject\0x", "HEADER: data is not NUL-terminated"),
        (Header, b"Subject\0", "HEADER: expected 2 string"),
        (Header, b"a\0b\0c\0", "HEADER: expected 2 string"),
        (Unknown, b"XYZZY", "UNKNOWN: data is not NUL-terminated"),
        (Unknown, b"a\0b\0", "UNKNOWN: expected 1 string"),
        (Connect, b"host", "CONNECT: host name is not NUL-terminated"),
        (Connect, b"host\0", "CONNECT: address family is missing"),
        (Connect, b"host\0X", "CONNECT: unknown address family"),
        (Connect, b"host\x004\x00\x19", "CONNECT: port and NUL-terminated address"),
        (Connect, b"host\x004\x00\x191.2.3.4", "CONNECT: port and NUL-terminated address"),
        (Connect, b"host\x004\x00\x191.2\x003.4\x00", "CONNECT: port and NUL-terminated"),
        (Connect, b"host\0U\0", "CONNECT \\(family U\\): carries 1 unexpected"),
        (Macro, b"", "MACRO: the command code is missing"),
        (Macro, b"Ri\0", "MACRO: a macro name has no value"),
        (Macro, b"Ri\0x\0j\0", "MACRO: a macro name has no value"),
        (Macro, b"Ri\0x", "MACRO: data is not NUL-terminated"),
        (Macro, b"Z", "MACRO: for unknown command"),
        (Negotiate, b"\0" * 11, "OPTNEG: 11 data bytes, need 12"),
        (Negotiate, b"", "OPTNEG: 0 data bytes"),
        (Abort, b"x", "ABORT: carries 1 unexpected data byte"),
        (EndOfHeaders, b"\0", "EOH: carries 1 unexpected"),
        (Quit, b"xy", "QUIT: carries 2 unexpected"),
        (Data, b"x", "DATA: carries 1 unexpected"),
        (QuitNoClose, b"x", "QUIT_NC: carries 1 unexpected"),
        (NegotiateReply, b"\0" * 11, "OPTNEG reply: 11 data bytes"),
        (NegotiateReply, b"\0" * 12 + b"\0\0\0\x03", "OPTNEG reply: truncated macro list"),
        (NegotiateReply, b"\0" * 12 + b"\0\0\0\x03i", "OPTNEG reply: macro list is not NUL"),
        (NegotiateReply, b"\0" * 12 + b"\0\0\0\x07i\0", "OPTNEG reply: unknown macro stage 7"),
        (Continue, b"x", "CONTINUE: carries 1 unexpected"),
        (ReplyCode, b"550 x", "REPLYCODE: data is not NUL-terminated"),
        (ReplyCode, b"250 ok\0", "does not start with 4xx/5xx"),
        (ReplyCode, b"55\0", "does not start with 4xx/5xx"),
        (ReplyCode, b"5a0 x\0", "does not start with 4xx/5xx"),
        (ReplyCode, b"550x\0", "code not followed by space or hyphen"),
        (AddRecipientWithArgs, b"a\0b\0c\0", "ADDRCPT_PAR: expected 1 or 2 strings"),
        (ChangeSender, b"a\0b\0c\0", "CHGFROM: expected 1 or 2 strings"),
        (InsertHeader, b"\0\0\0", "INSHEADER: header index is missing"),
        (ChangeHeader, b"\0\0\0\x01a\0", "CHGHEADER: expected 2 string"),
        (AddHeader, b"a\0", "ADDHEADER: expected 2 string"),
        (Quarantine, b"why", "QUARANTINE: data is not NUL-terminated"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_malformed_payload_is_a_remote_error(
    cls: type[Message], payload: bytes, message: str
) -> None:
    """A malformed payload raises RemoteProtocolError naming the packet and the defect."""
    with pytest.raises(RemoteProtocolError, match=message):
        cls.unpack(payload)


@pytest.mark.parametrize("stage", [b"O", b"A", b"Q", b"K", b"D", b"Z", b"\0", b"y"])
def test_macro_for_impossible_command_is_rejected(stage: bytes) -> None:
    """MACRO for O/A/Q/K/D or a byte that is no command raises RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError, match="MACRO: for unknown command"):
        Macro.unpack(stage + b"i\0x\0")


@pytest.mark.parametrize(
    "msg",
    [
        Helo("a\0b"),
        Header("X", "a\0"),
        EnvelopeFrom("<a@b>", ("X=\0",)),
        Connect("h\0", "4", 1, "a"),
        Macro(b"C", (("i", "\0"),)),
        Unknown("\0"),
        AddHeader("\0", "v"),
        NegotiateReply(6, 0, 0, ((MacroStage.CONNECT, ("a\0",)),)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_nul_inside_a_string_field_cannot_be_packed(msg: Message) -> None:
    """A string with NUL cannot be packed (it would end the field early): LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="contains NUL"):
        msg.pack_payload()


def test_connect_family_u_omits_port_and_address() -> None:
    """Family U packs no port or address even if given, and unpacks them as None."""
    wire = Connect("h", "U", 25, "1.2.3.4").pack_payload()
    assert wire == b"h\0U"
    assert Connect.unpack(wire) == Connect("h", "U", None, None)


def test_negotiate_ignores_bytes_after_twelve() -> None:
    """An OPTNEG longer than 12 bytes is read like libmilter: extra bytes ignored."""
    assert Negotiate.unpack(bytes.fromhex("00000006000001ff001fffff") + b"junk") == Negotiate(
        6, 0x1FF, 0x1FFFFF
    )


# ------------------------------------------------------------------------ REPLYCODE safety


@pytest.mark.parametrize(
    ("code", "dsn"),
    [(550, "4.7.1"), (451, "5.7.1"), (421, "2.0.0"), (250, None), (250, "2.0.0"), (399, None),
     (600, None), (0, None), (550, "5.7"), (550, "5.7.1.1"), (550, "57.1"), (550, "5.1234.1"),
     (550, "x.7.1"), (550, "5.7.1 "), (550, ""), (550, "3.7.1")],
    ids=str,
)
def test_replycode_rejects_bad_code_or_dsn(code: int, dsn: str | None) -> None:
    """A code outside 4xx/5xx, a malformed DSN, or a DSN class that disagrees is refused."""
    with pytest.raises(LocalProtocolError):
        ReplyCode(code, dsn, "text")


@pytest.mark.parametrize(
    ("code", "dsn"), [(451, "4.3.0"), (550, "5.7.1"), (421, None), (599, "5.999.999"),
                      (400, "4.0.0")], ids=str
)
def test_replycode_accepts_agreeing_code_and_dsn(code: int, dsn: str | None) -> None:
    """A 4xx/5xx code with a matching DSN class (or none) is accepted."""
    reply = ReplyCode(code, dsn, "ok")
    assert reply.is_temporary == (code < 500)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("a\rb", "a?b"),
        ("a\nb", "a?b"),
        ("a\r\nb", "a??b"),
        ("a\0b", "a?b"),
        ("tab\there", "tab?here"),
        ("bell\x07esc\x1bdel\x7f", "bell?esc?del?"),
        ("50% off", "50%% off"),
        ("%%", "%%%%"),
        ("%s%n%d", "%%s%%n%%d"),
    ],
    ids=["CR", "LF", "CRLF", "NUL", "TAB", "BEL-ESC-DEL", "percent", "two-percent", "format"],
)
def test_replycode_text_made_safe_on_the_wire(text: str, wire: str) -> None:
    """Control characters become '?' and '%' is doubled in the packed text."""
    payload = ReplyCode(550, "5.7.1", text).pack_payload()
    assert payload == b"550 5.7.1 " + wire.encode() + b"\0"
    assert payload.count(b"\0") == 1


@pytest.mark.parametrize("text", ["100% sure", "%", "%%", "a%%%b", "%s %d %%"])
def test_replycode_percent_doubling_is_undone_on_decode(text: str) -> None:
    """Decoding un-doubles '%%', so texts with '%' round-trip exactly."""
    reply = ReplyCode(451, "4.3.0", text)
    assert b"%%" in reply.pack_payload()
    assert ReplyCode.unpack(reply.pack_payload()) == reply


_LONG_TEXTS = {
    "ascii": "a" * 5000,
    "percent": "%" * 5000,
    "percent-mixed": "x%" * 2500,
    "two-byte": "\u00e9" * 5000,
    "three-byte": "\u20ac" * 5000,
    "four-byte": "\U0001f600" * 5000,
    "mixed": "a\u00e9%\u20ac\U0001f600\r\n" * 800,
    "raw-bytes": decode_str(b"\xff\xfe" * 2500),
}


@pytest.mark.parametrize("dsn", [None, "5.7.1", "5.123.456"])
@pytest.mark.parametrize("text", list(_LONG_TEXTS.values()), ids=list(_LONG_TEXTS))
def test_replycode_long_text_bounded_and_never_split(text: str, dsn: str | None) -> None:
    """A 5000-char text packs to ≤ 980 bytes, valid UTF-8, no split char or '%%' pair."""
    payload = ReplyCode(554, dsn, text).pack_payload()
    assert payload.endswith(b"\0")
    body = payload[:-1]
    assert len(body) <= MAX_REPLY_TEXT
    assert b"\0" not in body
    assert not re.search(rb"[\x00-\x1f\x7f]", body)
    decoded = body.decode("utf-8")  # never a split multibyte character
    assert decoded.endswith("...")
    head = f"554 {dsn} " if dsn else "554 "
    shown = decoded[len(head) : -3]
    # every '%' is part of a doubled pair: removing pairs leaves none
    assert "%" not in shown.replace("%%", "")
    original = re.sub("[\x00-\x1f\x7f\udc80-\udcff]", "?", text)
    assert original.startswith(shown.replace("%%", "%"))
    back = ReplyCode.unpack(payload)
    assert (back.code, back.dsn) == (554, dsn)


@pytest.mark.parametrize("name", ["ascii", "two-byte", "three-byte", "four-byte", "mixed"])
def test_replycode_long_text_uses_the_budget(name: str) -> None:
    """A long text without many '%' is cut close to 980 bytes, not far shorter."""
    payload = ReplyCode(554, "5.7.1", _LONG_TEXTS[name]).pack_payload()
    assert MAX_REPLY_TEXT - 8 <= len(payload) - 1 <= MAX_REPLY_TEXT


def test_replycode_text_exactly_at_budget_is_not_cut() -> None:
    """A text that fits 980 bytes exactly is sent whole, without '...'."""
    head = "550 5.7.1 "
    text = "b" * (MAX_REPLY_TEXT - len(head))
    payload = ReplyCode(550, "5.7.1", text).pack_payload()
    assert payload == (head + text).encode() + b"\0"
    longer = ReplyCode(550, "5.7.1", text + "b").pack_payload()
    assert longer.endswith(b"...\0")
    assert len(longer) - 1 <= MAX_REPLY_TEXT


def test_sender_cannot_inject_an_smtp_line() -> None:
    """A sender address containing CR LF '250 ok' stays on one line of the reply."""
    sender = "evil@example.net>\r\n250 ok\r\n<x"
    reply = ReplyCode(550, "5.7.1", f"<{sender}> is not allowed to post to <list@example.org>")
    payload = reply.pack_payload()
    assert b"\r" not in payload
    assert b"\n" not in payload
    assert payload == (
        b"550 5.7.1 <evil@example.net>??250 ok??<x> is not allowed to post to "
        b"<list@example.org>\0"
    )
    decoded = ReplyCode.unpack(payload)
    assert "\n" not in decoded.text
    assert decoded.text.startswith("<evil@example.net>??250 ok")


def test_replycode_multiline_decode() -> None:
    """A libmilter multi-line reply (ddd- lines joined by CRLF) decodes with LF-joined text."""
    payload = b"550-5.7.0 first\r\n550-5.7.0 second\r\n550 5.7.0 third\0"
    reply = ReplyCode.unpack(payload)
    assert (reply.code, reply.dsn) == (550, "5.7.0")
    assert reply.text.split("\n") == ["first", "5.7.0 second", "5.7.0 third"]


def test_replycode_dsn_of_other_class_is_kept_as_text() -> None:
    """On decode, a DSN whose class disagrees with the code stays part of the text."""
    reply = ReplyCode.unpack(b"550 4.7.1 odd\0")
    assert (reply.code, reply.dsn, reply.text) == (550, None, "4.7.1 odd")


@pytest.mark.parametrize(
    "first", ["4\u00b2\u00b3", "5\u00b9\u00b9", "4\u0663\u0663", "5\uff15\uff10"],
    ids=["superscripts", "superscript-ones", "arabic-indic", "fullwidth"],
)
def test_replycode_non_ascii_digits_are_a_remote_error(first: str) -> None:
    """A REPLYCODE whose code uses non-ASCII digits is a RemoteProtocolError (ASCII only)."""
    with pytest.raises(RemoteProtocolError, match="does not start with 4xx/5xx"):
        ReplyCode.unpack(f"{first} 5.7.1 no".encode() + b"\0")


@pytest.mark.parametrize(
    "dsn", ["5.\u0667.\u0661", "5.\uff17.\uff11", "5.7.\u00b9"],
    ids=["arabic-indic", "fullwidth", "superscript"],
)
def test_replycode_non_ascii_dsn_digits_are_refused(dsn: str) -> None:
    """A DSN with non-ASCII digits is a LocalProtocolError, not an accepted value."""
    with pytest.raises(LocalProtocolError):
        ReplyCode(550, dsn, "text")


@pytest.mark.parametrize(
    "text", ["%" * 5000, "x%" * 2500, "%" * 600], ids=["percent-5000", "x-percent", "percent-600"]
)
def test_replycode_percent_heavy_text_keeps_what_fits(text: str) -> None:
    """A long '%'-heavy text is cut to what fits (≥ 972 of 980 bytes), not far shorter."""
    payload = ReplyCode(554, "5.7.1", text).pack_payload()
    assert MAX_REPLY_TEXT - 8 <= len(payload) - 1 <= MAX_REPLY_TEXT


def test_replycode_undecodable_bytes_become_question_marks() -> None:
    """Bytes that are not UTF-8 never reach the MTA in a reply text: each becomes '?'."""
    packed = ReplyCode(550, "5.7.1", RAW).pack_payload()
    assert packed == b"550 5.7.1 caf? ??\0"
    assert ReplyCode.unpack(packed) == ReplyCode(550, "5.7.1", "caf? ??")
