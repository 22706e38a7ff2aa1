"""Milter framing: ``uint32 length | command byte | data``, in both directions.

Invariants:
- The 4-byte length is checked *before* anything is allocated for the packet: 0 and
  anything above ``max_packet_size`` raise ``RemoteProtocolError`` at once. The decoder
  only ever holds bytes that were actually received, and never more than one incomplete
  packet's worth plus what the peer sent ahead.
- An unknown command byte is a protocol error, reported with the first bytes in hex so
  that junk on the port (HTTP, TLS, RDP) is recognisable in the log.
- ``FrameDecoder`` is incremental: feeding a stream whole or one byte at a time yields
  the same messages.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from listgate.milter.constants import DEFAULT_MAX_PACKET_SIZE
from listgate.milter.errors import RemoteProtocolError
from listgate.milter.messages import COMMANDS, REPLIES, Message

__all__ = ["FrameDecoder", "command_decoder", "encode", "reply_decoder"]

_LEN = struct.Struct(">I")
_COMPACT_AT = 64 * 1024


def encode(message: Message) -> bytes:
    """The complete packet for *message*, length prefix included."""
    payload = message.pack_payload()
    return _LEN.pack(len(payload) + 1) + message.ident + payload


def _describe_junk(head: bytes) -> str:
    shown = head[:8]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in shown)
    hint = ""
    if head[:1] == b"\x16" and head[1:2] == b"\x03":
        hint = ", looks like a TLS ClientHello"
    elif head[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI"):
        hint = ", looks like HTTP"
    elif head[:2] == b"\x03\x00":
        hint = ", looks like RDP/TPKT"
    return f"first bytes {shown.hex(' ')} {text!r}{hint}"


_BY_CODE: dict[int, tuple[Mapping[bytes, type[Message]], dict[int, type[Message]]]] = {}


def _by_code(table: Mapping[bytes, type[Message]]) -> dict[int, type[Message]]:
    """*table* keyed by the command byte's value (made once per table: one decoder is
    made per connection)."""
    cached = _BY_CODE.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    by_code = {k[0]: v for k, v in table.items()}
    if len(_BY_CODE) < 16:
        _BY_CODE[id(table)] = (table, by_code)
    return by_code


class FrameDecoder:
    """Incremental decoder of one direction of a milter stream.

    Received bytes are not copied while they hold whole packets: a chunk fed into an
    empty decoder is parsed in place, and only an incomplete packet at its end is
    copied into the decoder's own buffer (``feed`` then appends to that).
    """

    __slots__ = ("_buf", "_by_code", "_max", "_pos", "_table", "_what")

    def __init__(
        self,
        table: Mapping[bytes, type[Message]],
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        what: str = "packet",
    ) -> None:
        if max_packet_size < 13:
            raise ValueError("max_packet_size must allow at least an OPTNEG packet (13)")
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._max = max_packet_size
        self._table = table
        self._by_code = _by_code(table)
        self._what = what

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        buf, pos = self._buf, self._pos
        if pos == len(buf):  # nothing pending: parse *data* where it is
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif isinstance(buf, bytearray):
            if pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = 0
            buf += data
        else:  # a partial packet left in a received chunk: now own a copy
            self._buf = bytearray(buf[pos:]) + data
            self._pos = 0

    def _bad_length(self, length: int, pos: int) -> RemoteProtocolError:
        head = bytes(self._buf[pos : pos + 8])
        if length == 0:
            return RemoteProtocolError(f"{self._what} length 0 ({_describe_junk(head)})")
        return RemoteProtocolError(
            f"{self._what} length {length} exceeds the maximum {self._max} "
            f"({_describe_junk(head)})"
        )

    def next_packet(self) -> tuple[int, bytes] | None:
        """The next complete packet as (command byte, data bytes), or None if more
        bytes are needed. Checks the framing and the command byte only (see
        ``next_message``)."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        length = (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
        if length == 0 or length > self._max:
            raise self._bad_length(length, pos)
        if avail == 4:
            return None
        code = buf[pos + 4]
        if code not in self._by_code:
            head = bytes(buf[pos : pos + 8])
            raise RemoteProtocolError(
                f"unknown {self._what} code {bytes((code,))!r} ({_describe_junk(head)})"
            )
        end = pos + 4 + length
        if avail < 4 + length:
            return None
        payload = bytes(buf[pos + 5 : end])
        if end == len(buf):
            self._buf = b""
            self._pos = 0
        else:
            self._pos = end
        return code, payload

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed.

        Raises ``RemoteProtocolError`` for a bad length, an unknown command or malformed
        data; the decoder must not be used after that.
        """
        packet = self.next_packet()
        if packet is None:
            return None
        return self._by_code[packet[0]].unpack(packet[1])


def command_decoder(max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> FrameDecoder:
    """A decoder for the MTA → milter direction."""
    return FrameDecoder(COMMANDS, max_packet_size, "command")


def reply_decoder(max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> FrameDecoder:
    """A decoder for the milter → MTA direction."""
    return FrameDecoder(REPLIES, max_packet_size, "reply")
