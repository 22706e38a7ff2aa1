"""Milter messages as typed, frozen values, with their wire encodings.

One class per SMFIC_* command (MTA → milter) and per SMFIR_* reply (milter → MTA), named
after what it means on the wire. ``COMMANDS`` and ``REPLIES`` map the one-byte wire
identifier to the class; the codec dispatches through them.

Invariants:
- Pure: bytes in, values out. No I/O, no state.
- ``unpack(payload)`` either returns a value or raises ``RemoteProtocolError`` naming the
  command and the defect (missing NUL, wrong field count, bad family, short OPTNEG...).
  It never raises anything else, whatever the payload.
- ``cls.unpack(msg.pack_payload()) == msg`` for every message (round trip), with one
  documented exception: ``ReplyCode`` text is made safe when packed (control characters
  become ``?``; over-long text is cut), so only safe texts round-trip.
- Strings are decoded as UTF-8 with ``surrogateescape``: arbitrary bytes survive a round
  trip, and nothing here ever fails on non-UTF-8 input.
- Compiled with mypyc (``listgate.compiled``): each class's ``ident`` and ``name`` are
  set from the ``_WIRE`` table after the classes, never in a class body, and the
  messages of every session (MAIL, RCPT, OPTNEG, REPLYCODE) have a written-out
  ``__init__`` (see docs/architecture.md, "The compiled core").
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from listgate.milter.constants import MAX_REPLY_TEXT, OPTNEG_LEN, MacroStage
from listgate.milter.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "COMMANDS",
    "FINAL_REPLIES",
    "REPLIES",
    "Abort",
    "Accept",
    "AddHeader",
    "AddRecipient",
    "AddRecipientWithArgs",
    "Body",
    "ChangeHeader",
    "ChangeSender",
    "Command",
    "Connect",
    "ConnectionFail",
    "Continue",
    "Data",
    "DeleteRecipient",
    "Discard",
    "EndOfHeaders",
    "EndOfMessage",
    "EnvelopeFrom",
    "EnvelopeRecipient",
    "Header",
    "Helo",
    "InsertHeader",
    "Macro",
    "Message",
    "Negotiate",
    "NegotiateReply",
    "Progress",
    "Quarantine",
    "Quit",
    "QuitNoClose",
    "Reject",
    "ReplaceBody",
    "Reply",
    "ReplyCode",
    "Shutdown",
    "Skip",
    "TempFail",
    "Unknown",
    "decode_str",
    "encode_str",
]

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_OPTNEG = struct.Struct(">III")


def decode_str(raw: bytes) -> str:
    """Bytes from the wire → str, losslessly (surrogateescape for non-UTF-8 bytes)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    """The inverse of ``decode_str``."""
    return text.encode("utf-8", "surrogateescape")


def _cstrings(payload: bytes, name: str) -> list[bytes]:
    """Split NUL-terminated strings laid back to back; the payload must end in NUL."""
    if not payload or payload[-1] != 0:
        raise RemoteProtocolError(f"{name}: data is not NUL-terminated")
    return payload[:-1].split(b"\0")


def _exactly(payload: bytes, name: str, count: int) -> list[str]:
    parts = _cstrings(payload, name)
    if len(parts) != count:
        raise RemoteProtocolError(f"{name}: expected {count} string(s), got {len(parts)}")
    return [decode_str(p) for p in parts]


def _no_payload(payload: bytes, name: str) -> None:
    if payload:
        raise RemoteProtocolError(f"{name}: carries {len(payload)} unexpected data byte(s)")


def _cstr(text: str) -> bytes:
    raw = encode_str(text)
    if b"\0" in raw:
        raise LocalProtocolError(f"string field contains NUL: {text!r}")
    return raw + b"\0"


class Message:
    """Base of every milter packet: a wire identifier and a payload encoding."""

    __slots__ = ()
    ident: ClassVar[bytes]
    name: ClassVar[str]

    def pack_payload(self) -> bytes:
        """The packet's data bytes (after the command byte)."""
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        """Decode the packet's data bytes; ``RemoteProtocolError`` if malformed."""
        _no_payload(payload, cls.name)
        return cls()


class Command(Message):
    """A packet the MTA sends to the milter (SMFIC_*)."""

    __slots__ = ()


class Reply(Message):
    """A packet the milter sends to the MTA (SMFIR_*)."""

    __slots__ = ()


# ---------------------------------------------------------------- commands (MTA → milter)


@dataclass(frozen=True, slots=True)
class Abort(Command):
    """SMFIC_ABORT ``A``: forget the current message, keep the connection. No reply."""


@dataclass(frozen=True, slots=True)
class Body(Command):
    """SMFIC_BODY ``B``: one chunk of the message body."""

    chunk: bytes = b""

    def pack_payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(bytes(payload))


_FAMILIES = frozenset("UL46")


@dataclass(frozen=True, slots=True)
class Connect(Command):
    """SMFIC_CONNECT ``C``: the SMTP client's host name and address.

    ``family`` is ``"4"``, ``"6"``, ``"L"`` (unix socket) or ``"U"`` (unknown, and then
    ``port`` and ``address`` are absent on the wire and None here).
    """

    hostname: str
    family: str
    port: int | None = None
    address: str | None = None

    def pack_payload(self) -> bytes:
        head = _cstr(self.hostname) + self.family.encode("ascii")
        if self.family == "U":
            return head
        return head + _U16.pack(self.port or 0) + _cstr(self.address or "")

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        nul = payload.find(b"\0")
        if nul < 0:
            raise RemoteProtocolError("CONNECT: host name is not NUL-terminated")
        hostname = decode_str(payload[:nul])
        if len(payload) < nul + 2:
            raise RemoteProtocolError("CONNECT: address family is missing")
        family = chr(payload[nul + 1])
        if family not in _FAMILIES:
            raise RemoteProtocolError(f"CONNECT: unknown address family {family!r}")
        rest = payload[nul + 2 :]
        if family == "U":
            _no_payload(rest, "CONNECT (family U)")
            return cls(hostname, family)
        if len(rest) < 3 or rest[-1] != 0 or rest.find(b"\0", 2) != len(rest) - 1:
            raise RemoteProtocolError("CONNECT: port and NUL-terminated address expected")
        (port,) = _U16.unpack_from(rest)
        return cls(hostname, family, port, decode_str(rest[2:-1]))


@dataclass(frozen=True, slots=True)
class Macro(Command):
    """SMFIC_MACRO ``D``: macro values for the command ``stage`` (a command code such as
    ``b"R"``). Zero pairs is legal (Postfix sends empty ones). No reply."""

    stage: bytes
    macros: tuple[tuple[str, str], ...] = ()

    def pack_payload(self) -> bytes:
        return self.stage + b"".join(_cstr(k) + _cstr(v) for k, v in self.macros)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        stage = cls.check(payload)
        if len(payload) == 1:
            return cls(stage)
        parts = payload[1:-1].split(b"\0")
        it = iter(decode_str(p) for p in parts)
        return cls(stage, tuple(zip(it, it, strict=True)))

    @staticmethod
    def check(payload: bytes) -> bytes:
        """Validate a MACRO packet's data exactly as ``unpack`` does, without decoding
        the pairs; return the command code it is for."""
        if not payload:
            raise RemoteProtocolError("MACRO: the command code is missing")
        stage = payload[:1]
        if stage not in _MACRO_STAGES:
            raise RemoteProtocolError(f"MACRO: for unknown command {stage!r}")
        if len(payload) > 1:
            if payload[-1] != 0:
                raise RemoteProtocolError("MACRO: data is not NUL-terminated")
            if payload.count(b"\0", 1) % 2:
                raise RemoteProtocolError("MACRO: a macro name has no value")
        return stage

    @staticmethod
    def pairs(payload: bytes) -> list[str]:
        """Names and values of a MACRO packet's data that ``check`` accepted, decoded,
        alternating (name, value, name, value...)."""
        if len(payload) == 1:
            return []
        return [decode_str(p) for p in payload[1:-1].split(b"\0")]


@dataclass(frozen=True, slots=True)
class EndOfMessage(Command):
    """SMFIC_BODYEOB ``E``: end of message; always answered. libmilter also accepts a
    final body chunk here, so ``chunk`` carries any data bytes."""

    chunk: bytes = b""

    def pack_payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(bytes(payload))


@dataclass(frozen=True, slots=True)
class Helo(Command):
    """SMFIC_HELO ``H``: the HELO/EHLO argument."""

    helo: str

    def pack_payload(self) -> bytes:
        return _cstr(self.helo)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 1))


@dataclass(frozen=True, slots=True)
class QuitNoClose(Command):
    """SMFIC_QUIT_NC ``K``: this SMTP connection ended; a new one follows on the same
    milter connection (back to before CONNECT). No reply."""



@dataclass(frozen=True, slots=True)
class Header(Command):
    """SMFIC_HEADER ``L``: one header; folded lines are joined with LF."""

    field: str
    value: str

    def pack_payload(self) -> bytes:
        return _cstr(self.field) + _cstr(self.value)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 2))


@dataclass(frozen=True, slots=True, init=False)
class EnvelopeFrom(Command):
    """SMFIC_MAIL ``M``: the envelope sender as the client gave it (usually ``<a@b>``,
    ``<>`` for the null sender) and its ESMTP arguments."""

    sender: str
    args: tuple[str, ...] = ()

    def __init__(self, sender: str, args: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "args", args)

    def pack_payload(self) -> bytes:
        return b"".join(_cstr(s) for s in (self.sender, *self.args))

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        parts = [decode_str(p) for p in _cstrings(payload, cls.name)]
        return cls(parts[0], tuple(parts[1:]))


@dataclass(frozen=True, slots=True, init=False)
class EnvelopeRecipient(Command):
    """SMFIC_RCPT ``R``: one envelope recipient and its ESMTP arguments."""

    recipient: str
    args: tuple[str, ...] = ()

    def __init__(self, recipient: str, args: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "recipient", recipient)
        object.__setattr__(self, "args", args)

    def pack_payload(self) -> bytes:
        return b"".join(_cstr(s) for s in (self.recipient, *self.args))

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        parts = [decode_str(p) for p in _cstrings(payload, cls.name)]
        return cls(parts[0], tuple(parts[1:]))


@dataclass(frozen=True, slots=True)
class EndOfHeaders(Command):
    """SMFIC_EOH ``N``: all headers were sent."""


@dataclass(frozen=True, slots=True, init=False)
class Negotiate(Command):
    """SMFIC_OPTNEG ``O`` from the MTA: its version, offered actions, offered steps.

    libmilter reads the first 12 bytes and ignores any more; so do we."""

    version: int
    actions: int
    protocol: int

    def __init__(self, version: int, actions: int, protocol: int) -> None:
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "protocol", protocol)

    def pack_payload(self) -> bytes:
        return _OPTNEG.pack(self.version, self.actions, self.protocol)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        if len(payload) < OPTNEG_LEN:
            raise RemoteProtocolError(f"OPTNEG: {len(payload)} data bytes, need {OPTNEG_LEN}")
        return cls(*_OPTNEG.unpack_from(payload))


@dataclass(frozen=True, slots=True)
class Quit(Command):
    """SMFIC_QUIT ``Q``: the MTA is done; close. No reply."""


@dataclass(frozen=True, slots=True)
class Data(Command):
    """SMFIC_DATA ``T`` (v4+): the client sent DATA."""


@dataclass(frozen=True, slots=True)
class Unknown(Command):
    """SMFIC_UNKNOWN ``U`` (v3+): an SMTP command the MTA did not recognise."""

    line: str

    def pack_payload(self) -> bytes:
        return _cstr(self.line)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 1))


# ------------------------------------------------------------------ replies (milter → MTA)


@dataclass(frozen=True, slots=True)
class NegotiateReply(Reply):
    """SMFIC_OPTNEG ``O`` from the milter: chosen version, actions and steps, and the
    macros wanted per stage (SMFIF_SETSYMLIST), each a tuple of macro names."""

    version: int
    actions: int
    protocol: int
    macros: tuple[tuple[MacroStage, tuple[str, ...]], ...] = ()

    def pack_payload(self) -> bytes:
        out = [_OPTNEG.pack(self.version, self.actions, self.protocol)]
        for stage, names in self.macros:
            out.append(_U32.pack(stage) + _cstr(" ".join(names)))
        return b"".join(out)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        if len(payload) < OPTNEG_LEN:
            raise RemoteProtocolError(f"OPTNEG reply: {len(payload)} data bytes, need 12")
        version, actions, protocol = _OPTNEG.unpack_from(payload)
        macros: list[tuple[MacroStage, tuple[str, ...]]] = []
        pos = OPTNEG_LEN
        while pos < len(payload):
            if len(payload) - pos < 5:
                raise RemoteProtocolError("OPTNEG reply: truncated macro list")
            (stage,) = _U32.unpack_from(payload, pos)
            end = payload.find(b"\0", pos + 4)
            if end < 0:
                raise RemoteProtocolError("OPTNEG reply: macro list is not NUL-terminated")
            try:
                stage_enum = MacroStage(stage)
            except ValueError:
                raise RemoteProtocolError(f"OPTNEG reply: unknown macro stage {stage}") from None
            names = decode_str(payload[pos + 4 : end]).split()
            macros.append((stage_enum, tuple(names)))
            pos = end + 1
        return cls(version, actions, protocol, tuple(macros))


@dataclass(frozen=True, slots=True)
class Continue(Reply):
    """SMFIR_CONTINUE ``c``: go on with this step."""


@dataclass(frozen=True, slots=True)
class Accept(Reply):
    """SMFIR_ACCEPT ``a``: accept; no more events for this message (or connection)."""


@dataclass(frozen=True, slots=True)
class Reject(Reply):
    """SMFIR_REJECT ``r``: reject with the MTA's own 5xx text."""


@dataclass(frozen=True, slots=True)
class TempFail(Reply):
    """SMFIR_TEMPFAIL ``t``: tempfail with the MTA's own 4xx text."""


@dataclass(frozen=True, slots=True)
class Discard(Reply):
    """SMFIR_DISCARD ``d``: accept and silently drop the message."""


@dataclass(frozen=True, slots=True)
class Skip(Reply):
    """SMFIR_SKIP ``s``: send no more body chunks (only if SMFIP_SKIP was agreed)."""


@dataclass(frozen=True, slots=True)
class Progress(Reply):
    """SMFIR_PROGRESS ``p``: still working; resets the MTA's timeout. Not a final reply."""


@dataclass(frozen=True, slots=True)
class ConnectionFail(Reply):
    """SMFIR_CONN_FAIL ``f``: defined by libmilter but handled by neither Postfix nor
    Sendmail; listgate never sends it (the legal-reply table has no slot for it)."""



@dataclass(frozen=True, slots=True)
class Shutdown(Reply):
    """SMFIR_SHUTDOWN ``4``: Postfix only (421 and close); Sendmail treats it as bogus,
    so listgate never sends it."""



_DSN = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z", re.ASCII)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\udc80-\udcff]")  # controls; undecodable bytes


def _safe_reply_text(text: str, budget: int) -> bytes:
    """Control characters and bytes that are not UTF-8 → '?'; '%' doubled (libmilter
    and Sendmail treat the text as a printf format; Postfix un-doubles); cut to *budget*
    bytes without splitting a character or a doubled '%' (a cut text ends in "...")."""
    clean = _UNSAFE.sub("?", text)
    out = encode_str(clean.replace("%", "%%"))
    if len(out) <= budget:
        return out
    room = budget - 3
    pieces: list[bytes] = []
    used = 0
    for char in clean:
        piece = b"%%" if char == "%" else encode_str(char)
        if used + len(piece) > room:
            break
        pieces.append(piece)
        used += len(piece)
    return b"".join(pieces) + b"..."


@dataclass(frozen=True, slots=True, init=False)
class ReplyCode(Reply):
    """SMFIR_REPLYCODE ``y``: reject or tempfail with our own SMTP reply.

    The code is 4xx or 5xx and, when a DSN is given, its class agrees (``550`` with
    ``5.x.x``). The text may be anything: when packed, control characters (CR, LF, NUL...)
    become ``?``, ``%`` is doubled and the whole reply is bounded to 980 bytes, so text
    taken from a sender address can never inject a line.
    """

    code: int
    dsn: str | None
    text: str

    def __init__(self, code: int, dsn: str | None, text: str) -> None:
        if not 400 <= code <= 599:
            raise LocalProtocolError(f"reply code {code}: must be 4xx or 5xx")
        if dsn is not None:
            if not _DSN.match(dsn):
                raise LocalProtocolError(f"DSN {dsn!r}: must look like 5.7.1")
            if dsn[0] != str(code)[0]:
                raise LocalProtocolError(f"DSN {dsn} disagrees with reply code {code}")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "dsn", dsn)
        object.__setattr__(self, "text", text)

    @property
    def is_temporary(self) -> bool:
        """A 4xx reply."""
        return self.code < 500

    def pack_payload(self) -> bytes:
        head = f"{self.code} {self.dsn}" if self.dsn else str(self.code)
        if not self.text:
            return head.encode("ascii") + b"\0"
        head_b = head.encode("ascii") + b" "
        return head_b + _safe_reply_text(self.text, MAX_REPLY_TEXT - len(head_b)) + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        (raw,) = _exactly(payload, cls.name, 1)
        lines = raw.split("\r\n")
        first = lines[0]
        code_text = first[:3]
        if len(code_text) < 3 or not (code_text.isascii() and code_text.isdigit()) or (
            first[0] not in "45"
        ):
            raise RemoteProtocolError(f"REPLYCODE: {first[:20]!r} does not start with 4xx/5xx")
        if len(first) > 3 and first[3] not in " -":
            raise RemoteProtocolError("REPLYCODE: code not followed by space or hyphen")
        code = int(first[:3])
        texts = [line[4:] for line in lines]
        dsn: str | None = None
        head, _, tail = texts[0].partition(" ")
        if _DSN.match(head) and head[0] == first[0]:
            dsn, texts[0] = head, tail
        text = "\n".join(texts).replace("%%", "%")
        return cls(code, dsn, text)


@dataclass(frozen=True, slots=True)
class AddRecipient(Reply):
    """SMFIR_ADDRCPT ``+`` (EOM only, needs SMFIF_ADDRCPT)."""

    recipient: str

    def pack_payload(self) -> bytes:
        return _cstr(self.recipient)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 1))


@dataclass(frozen=True, slots=True)
class DeleteRecipient(Reply):
    """SMFIR_DELRCPT ``-`` (EOM only, needs SMFIF_DELRCPT)."""

    recipient: str

    def pack_payload(self) -> bytes:
        return _cstr(self.recipient)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 1))


@dataclass(frozen=True, slots=True)
class AddRecipientWithArgs(Reply):
    """SMFIR_ADDRCPT_PAR ``2`` (EOM only, needs SMFIF_ADDRCPT_PAR); ``args`` is one string
    of space-separated ESMTP arguments, or None."""

    recipient: str
    args: str | None = None

    def pack_payload(self) -> bytes:
        return _cstr(self.recipient) + (b"" if self.args is None else _cstr(self.args))

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        parts = [decode_str(p) for p in _cstrings(payload, cls.name)]
        if len(parts) > 2:
            raise RemoteProtocolError(f"{cls.name}: expected 1 or 2 strings, got {len(parts)}")
        return cls(parts[0], parts[1] if len(parts) == 2 else None)


@dataclass(frozen=True, slots=True)
class ChangeSender(Reply):
    """SMFIR_CHGFROM ``e`` (EOM only, needs SMFIF_CHGFROM)."""

    sender: str
    args: str | None = None

    def pack_payload(self) -> bytes:
        return _cstr(self.sender) + (b"" if self.args is None else _cstr(self.args))

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        parts = [decode_str(p) for p in _cstrings(payload, cls.name)]
        if len(parts) > 2:
            raise RemoteProtocolError(f"{cls.name}: expected 1 or 2 strings, got {len(parts)}")
        return cls(parts[0], parts[1] if len(parts) == 2 else None)


@dataclass(frozen=True, slots=True)
class AddHeader(Reply):
    """SMFIR_ADDHEADER ``h`` (EOM only, needs SMFIF_ADDHDRS)."""

    field: str
    value: str

    def pack_payload(self) -> bytes:
        return _cstr(self.field) + _cstr(self.value)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 2))


def _indexed_header(payload: bytes, name: str) -> tuple[int, str, str]:
    if len(payload) < 4:
        raise RemoteProtocolError(f"{name}: header index is missing")
    (index,) = _U32.unpack_from(payload)
    field, value = _exactly(payload[4:], name, 2)
    return index, field, value


@dataclass(frozen=True, slots=True)
class InsertHeader(Reply):
    """SMFIR_INSHEADER ``i`` (EOM only, needs SMFIF_ADDHDRS); index 0 is the top."""

    index: int
    field: str
    value: str

    def pack_payload(self) -> bytes:
        return _U32.pack(self.index) + _cstr(self.field) + _cstr(self.value)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_indexed_header(payload, cls.name))


@dataclass(frozen=True, slots=True)
class ChangeHeader(Reply):
    """SMFIR_CHGHEADER ``m`` (EOM only, needs SMFIF_CHGHDRS); index 1 is the first
    occurrence of the field; an empty value deletes it."""

    index: int
    field: str
    value: str

    def pack_payload(self) -> bytes:
        return _U32.pack(self.index) + _cstr(self.field) + _cstr(self.value)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_indexed_header(payload, cls.name))


@dataclass(frozen=True, slots=True)
class ReplaceBody(Reply):
    """SMFIR_REPLBODY ``b`` (EOM only, needs SMFIF_CHGBODY): one chunk of a new body."""

    chunk: bytes

    def pack_payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(bytes(payload))


@dataclass(frozen=True, slots=True)
class Quarantine(Reply):
    """SMFIR_QUARANTINE ``q`` (EOM only, needs SMFIF_QUARANTINE); not a verdict."""

    reason: str

    def pack_payload(self) -> bytes:
        return _cstr(self.reason)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls(*_exactly(payload, cls.name, 1))


_WIRE: tuple[tuple[type[Message], bytes, str], ...] = (
    (Abort, b"A", "ABORT"),
    (Body, b"B", "BODY"),
    (Connect, b"C", "CONNECT"),
    (Macro, b"D", "MACRO"),
    (EndOfMessage, b"E", "EOM"),
    (Helo, b"H", "HELO"),
    (QuitNoClose, b"K", "QUIT_NC"),
    (Header, b"L", "HEADER"),
    (EnvelopeFrom, b"M", "MAIL"),
    (EnvelopeRecipient, b"R", "RCPT"),
    (EndOfHeaders, b"N", "EOH"),
    (Negotiate, b"O", "OPTNEG"),
    (Quit, b"Q", "QUIT"),
    (Data, b"T", "DATA"),
    (Unknown, b"U", "UNKNOWN"),
    (NegotiateReply, b"O", "OPTNEG reply"),
    (Continue, b"c", "CONTINUE"),
    (Accept, b"a", "ACCEPT"),
    (Reject, b"r", "REJECT"),
    (TempFail, b"t", "TEMPFAIL"),
    (Discard, b"d", "DISCARD"),
    (Skip, b"s", "SKIP"),
    (Progress, b"p", "PROGRESS"),
    (ConnectionFail, b"f", "CONN_FAIL"),
    (Shutdown, b"4", "SHUTDOWN"),
    (ReplyCode, b"y", "REPLYCODE"),
    (AddRecipient, b"+", "ADDRCPT"),
    (DeleteRecipient, b"-", "DELRCPT"),
    (AddRecipientWithArgs, b"2", "ADDRCPT_PAR"),
    (ChangeSender, b"e", "CHGFROM"),
    (AddHeader, b"h", "ADDHEADER"),
    (InsertHeader, b"i", "INSHEADER"),
    (ChangeHeader, b"m", "CHGHEADER"),
    (ReplaceBody, b"b", "REPLBODY"),
    (Quarantine, b"q", "QUARANTINE"),
)
"""Each message class's wire identifier (``ident``) and protocol name (``name``). They are
set here, after the classes, not in their bodies: mypyc, which compiles this module, would
make a class variable of a dataclass one of its fields (mypyc/mypyc#1122)."""


def _name_the_classes() -> None:
    """Give each class of ``_WIRE`` its ``ident`` and ``name`` (once, at import)."""
    for cls, ident, name in _WIRE:
        cls.ident = ident
        cls.name = name


_name_the_classes()

COMMANDS: dict[bytes, type[Command]] = {
    cls.ident: cls
    for cls in (
        Abort,
        Body,
        Connect,
        Macro,
        EndOfMessage,
        Helo,
        QuitNoClose,
        Header,
        EnvelopeFrom,
        EndOfHeaders,
        Negotiate,
        Quit,
        EnvelopeRecipient,
        Data,
        Unknown,
    )
}
"""Wire identifier → command class, for every SMFIC_* the MTA may send."""

_MACRO_STAGES: frozenset[bytes] = frozenset(COMMANDS) - {b"D", b"O", b"A", b"Q", b"K"}
"""Command codes a MACRO packet may be for: every command but MACRO, OPTNEG, ABORT, QUIT
and QUIT_NC (Postfix sends macros for L, B and U too, which libmilter, and listgate,
drop)."""

REPLIES: dict[bytes, type[Reply]] = {
    cls.ident: cls
    for cls in (
        NegotiateReply,
        Continue,
        Accept,
        Reject,
        TempFail,
        Discard,
        Skip,
        Progress,
        ConnectionFail,
        Shutdown,
        ReplyCode,
        AddRecipient,
        DeleteRecipient,
        AddRecipientWithArgs,
        ChangeSender,
        AddHeader,
        InsertHeader,
        ChangeHeader,
        ReplaceBody,
        Quarantine,
    )
}
"""Wire identifier → reply class, for every SMFIR_* a milter may send. (SMFIR_SETSYMLIST
``l`` is not a packet: macro lists travel inside ``NegotiateReply``.)"""

FINAL_REPLIES: frozenset[type[Reply]] = frozenset(
    {Continue, Accept, Reject, TempFail, Discard, Skip, ReplyCode, ConnectionFail, Shutdown}
)
"""Replies that end the MTA's wait for an answer to one command."""
