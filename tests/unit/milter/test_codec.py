"""Framing: encode layout, incremental decoding, and limits checked before allocation."""

from __future__ import annotations

import re
import tracemalloc

import pytest

from listgate.milter import (
    Abort,
    Body,
    Continue,
    EnvelopeRecipient,
    FrameDecoder,
    Helo,
    Message,
    Quit,
    RemoteProtocolError,
    ReplyCode,
    command_decoder,
    encode,
    reply_decoder,
)
from listgate.milter.constants import DEFAULT_MAX_PACKET_SIZE

from . import CHUNKED, decode_all, pieces


def _packet(ident: bytes, payload: bytes = b"") -> bytes:
    return (len(payload) + 1).to_bytes(4, "big") + ident + payload


def _decode(
    data: bytes, chunk: int | None = None, max_packet_size: int | None = None
) -> list[Message]:
    decoder = command_decoder() if max_packet_size is None else command_decoder(max_packet_size)
    return decode_all(decoder, data, chunk)


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (Continue(), b"\x00\x00\x00\x01c"),
        (Abort(), b"\x00\x00\x00\x01A"),
        (Helo("x"), b"\x00\x00\x00\x03Hx\x00"),
        (Body(b"ab"), b"\x00\x00\x00\x03Bab"),
        (ReplyCode(550, None, ""), b"\x00\x00\x00\x05y550\x00"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_encode_prefixes_length_counting_the_command_byte(msg: object, wire: bytes) -> None:
    """encode = uint32 BE (1 + data length) | command byte | data."""
    assert encode(msg) == wire  # type: ignore[arg-type]


@CHUNKED
def test_incomplete_packets_wait_for_more_data(chunk: int | None) -> None:
    """The decoder yields nothing until a packet is complete, then exactly that packet."""
    data = encode(EnvelopeRecipient("<list@example.org>")) + encode(Quit())
    decoder = command_decoder()
    for piece in pieces(data[:-1], chunk):
        decoder.feed(piece)
    assert decoder.next_message() == EnvelopeRecipient("<list@example.org>")
    assert decoder.next_message() is None
    assert decoder.buffered == 4
    decoder.feed(data[-1:])
    assert decoder.next_message() == Quit()
    assert decoder.buffered == 0


@CHUNKED
def test_many_packets_past_the_compaction_point(chunk: int | None) -> None:
    """Over 64 KiB of packets decode completely; consumed bytes are released."""
    msgs = [Body(bytes([i % 251]) * 1000) for i in range(100)]
    data = b"".join(encode(m) for m in msgs)
    decoder = command_decoder()
    assert decode_all(decoder, data, chunk) == msgs
    assert decoder.buffered == 0


# --------------------------------------------------------------------------- lengths


@CHUNKED
def test_length_zero_is_refused(chunk: int | None) -> None:
    """A zero length field is a protocol error (libmilter would desync)."""
    with pytest.raises(RemoteProtocolError, match="command length 0"):
        _decode(b"\x00\x00\x00\x00A" + _packet(b"Q"), chunk)


@pytest.mark.parametrize(
    ("max_size", "length"),
    [
        (None, DEFAULT_MAX_PACKET_SIZE + 1),
        (None, 0xFFFFFFFF),
        (100, 101),
        (13, 14),
    ],
    ids=["default+1", "0xFFFFFFFF", "custom100+1", "minimum13+1"],
)
def test_length_above_maximum_is_refused_from_the_header_alone(
    max_size: int | None, length: int
) -> None:
    """A length above max_packet_size raises as soon as the 4 length bytes are in."""
    decoder = command_decoder() if max_size is None else command_decoder(max_size)
    decoder.feed(length.to_bytes(4, "big")[:3])
    assert decoder.next_message() is None
    decoder.feed(length.to_bytes(4, "big")[3:])
    limit = DEFAULT_MAX_PACKET_SIZE if max_size is None else max_size
    with pytest.raises(RemoteProtocolError, match=f"length {length} exceeds the maximum {limit}"):
        decoder.next_message()


@pytest.mark.parametrize(
    "max_size", [None, 100, 13], ids=["default", "custom100", "minimum13"]
)
def test_length_equal_to_maximum_is_accepted(max_size: int | None) -> None:
    """A packet exactly max_packet_size long is still decoded."""
    limit = DEFAULT_MAX_PACKET_SIZE if max_size is None else max_size
    body = Body(b"b" * (limit - 1))
    assert _decode(encode(body), None, max_size) == [body]


def test_max_packet_size_below_optneg_is_a_value_error() -> None:
    """A decoder that could not even read OPTNEG (13 bytes) cannot be made."""
    with pytest.raises(ValueError, match="at least an OPTNEG"):
        FrameDecoder({}, 12)


def test_huge_claimed_length_raises_before_more_data() -> None:
    """`ff ff ff ff 4f` raises at once; nothing waits for (or allocates) 4 GiB."""
    decoder = command_decoder()
    decoder.feed(bytes.fromhex("ffffffff4f"))
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum") as info:
        decoder.next_message()
    assert decoder.buffered <= 5
    assert "ff ff ff ff 4f" in str(info.value)


def test_claimed_length_is_not_allocated() -> None:
    """A header claiming 1 MiB - 1 plus 10 bytes allocates nothing near 1 MiB."""
    claimed = DEFAULT_MAX_PACKET_SIZE - 1
    decoder = command_decoder()
    header = claimed.to_bytes(4, "big") + b"B"
    tail = b"0123456789"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        decoder.feed(header)
        assert decoder.next_message() is None
        decoder.feed(tail)
        assert decoder.next_message() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == len(header) + len(tail)
    assert peak < claimed // 100, f"peak {peak} bytes for a claimed {claimed}"


# -------------------------------------------------------------------- bad commands


@pytest.mark.parametrize(
    ("head", "hint"),
    [
        (b"GET / HTTP/1.1\r\n", "looks like HTTP"),
        (b"POST /x HTTP/1.1\r\n", "looks like HTTP"),
        (bytes.fromhex("16030100a5010000a1"), "looks like a TLS ClientHello"),
        (bytes.fromhex("0300002f2ae00000"), "looks like RDP"),
    ],
    ids=["http-get", "http-post", "tls", "rdp"],
)
def test_junk_on_the_port_is_named(head: bytes, hint: str) -> None:
    """Non-milter traffic fails on its absurd length, with a hint of what it was."""
    with pytest.raises(RemoteProtocolError, match=hint):
        _decode(head)


@CHUNKED
@pytest.mark.parametrize("ident", [b"Z", b"\x00", b"c", b"y", b"\x7f"], ids=repr)
def test_unknown_command_byte_is_refused(ident: bytes, chunk: int | None) -> None:
    """A command byte the MTA never sends is a protocol error shown in hex."""
    shown = re.escape(repr(ident))
    expected = f"unknown command.* {shown} \\(first bytes 00 00 00 04 {ident.hex()}"
    with pytest.raises(RemoteProtocolError, match=expected):
        _decode(_packet(ident, b"xyz"), chunk)


def test_unknown_command_refused_before_its_data_arrives() -> None:
    """An unknown command byte raises as soon as the 5-byte header is in."""
    decoder = command_decoder()
    decoder.feed(_packet(b"Z", b"x" * 1000)[:5])
    with pytest.raises(RemoteProtocolError, match="unknown command"):
        decoder.next_message()


@pytest.mark.parametrize("ident", [b"A", b"O", b"Z", b"H"], ids=repr)
def test_reply_decoder_refuses_command_bytes(ident: bytes) -> None:
    """The MTA side refuses bytes that are not SMFIR_* codes."""
    decoder = reply_decoder()
    decoder.feed(_packet(ident) if ident != b"O" else _packet(b"Z"))
    with pytest.raises(RemoteProtocolError, match="unknown reply code"):
        decoder.next_message()


@CHUNKED
@pytest.mark.parametrize(
    ("ident", "payload", "message"),
    [
        (b"H", b"client.example", "HELO: data is not NUL-terminated"),
        (b"M", b"<a@b>", "MAIL: data is not NUL-terminated"),
        (b"R", b"<a@b>", "RCPT: data is not NUL-terminated"),
        (b"L", b"Subject\0x", "HEADER: data is not NUL-terminated"),
        (b"C", b"[127.0.0.1]", "CONNECT: host name is not NUL-terminated"),
        (b"C", b"h\x004\x00\x19127.0.0.1", "CONNECT: port and NUL-terminated address"),
        (b"U", b"XYZZY", "UNKNOWN: data is not NUL-terminated"),
        (b"H", b"a\0b\0", "HELO: expected 1 string\\(s\\), got 2"),
        (b"L", b"Subject\0", "HEADER: expected 2 string\\(s\\), got 1"),
        (b"L", b"a\0b\0c\0", "HEADER: expected 2 string\\(s\\), got 3"),
        (b"D", b"Ri\0", "MACRO: a macro name has no value"),
        (b"A", b"x", "ABORT: carries 1 unexpected data byte"),
        (b"N", b"x", "EOH: carries 1 unexpected data byte"),
        (b"Q", b"x", "QUIT: carries 1 unexpected data byte"),
        (b"T", b"x", "DATA: carries 1 unexpected data byte"),
        (b"K", b"x", "QUIT_NC: carries 1 unexpected data byte"),
        (b"O", b"\0\0\0\x06\0\0\x01\xff\0\x1f\xff", "OPTNEG: 11 data bytes, need 12"),
    ],
    ids=[
        "helo-no-nul", "mail-no-nul", "rcpt-no-nul", "header-no-nul", "connect-host-no-nul",
        "connect-addr-no-nul", "unknown-no-nul", "helo-2-strings", "header-1-string",
        "header-3-strings", "macro-no-value", "abort-data", "eoh-data", "quit-data",
        "data-data", "quitnc-data", "optneg-short",
    ],
)
def test_malformed_packet_is_a_remote_error(
    ident: bytes, payload: bytes, message: str, chunk: int | None
) -> None:
    """Each malformed command raises RemoteProtocolError with a message naming the defect."""
    with pytest.raises(RemoteProtocolError, match=message):
        _decode(_packet(ident, payload), chunk)
