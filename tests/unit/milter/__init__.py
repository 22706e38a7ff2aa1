"""Unit tests of the sans-IO milter layer (listgate.milter), plus shared stream helpers.

Every test that feeds a byte stream runs it whole and in chunks of 1, 7 and 4096 bytes
(``CHUNKED``); ``drive`` is the one loop that feeds a ``MilterConnection`` and answers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from listgate.milter import (
    NEED_DATA,
    PAUSED,
    POSTFIX_OFFER,
    REPLIES,
    Command,
    Continue,
    MacroStage,
    Message,
    MilterConnection,
    MilterOptions,
    Negotiate,
    NegotiateReply,
    Reply,
    ReplyCode,
    encode,
    reply_decoder,
)
from listgate.milter import messages as m
from listgate.milter.codec import FrameDecoder

CHUNK_SIZES: list[int | None] = [None, 1, 7, 4096]
CHUNKED = pytest.mark.parametrize(
    "chunk", CHUNK_SIZES, ids=["whole", "chunk1", "chunk7", "chunk4096"]
)
"""Parametrize a test over feeding its stream whole and in chunks of 1, 7 and 4096 bytes."""

CAPTURE_DIR = Path(__file__).resolve().parents[2] / "data" / "postfix_capture"
SCENARIOS = [
    "1-full-member-accepted",
    "2-full-nonmember-multircpt",
    "3-full-tls-auth-member",
    "4-minimal-nonmember-rejected",
    "5-sendmail-nonmember-multircpt",
]


def pieces(data: bytes, chunk: int | None) -> Iterator[bytes]:
    """*data* whole (chunk None) or cut into pieces of *chunk* bytes."""
    if chunk is None:
        yield data
        return
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


def stream(*messages: Message) -> bytes:
    """The wire bytes of *messages*, back to back."""
    return b"".join(encode(m) for m in messages)


def decode_all(decoder: FrameDecoder, data: bytes, chunk: int | None) -> list[Message]:
    """Feed *data* to *decoder* in *chunk*-sized pieces; every message it yields."""
    out: list[Message] = []
    for piece in pieces(data, chunk):
        decoder.feed(piece)
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
    return out


def replies_in(data: bytes) -> list[Reply]:
    """Decode a milter → MTA byte stream completely (it must hold whole packets only)."""
    decoder = reply_decoder()
    out = decode_all(decoder, data, None)
    assert decoder.buffered == 0, "trailing partial reply packet"
    return [m for m in out if isinstance(m, Reply)]


def split_packets(data: bytes) -> list[bytes]:
    """Cut a well-formed milter stream into its packets (length prefix included)."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos : pos + 4 + length])
        pos += 4 + length
    assert pos == len(data)
    return out


Decide = Callable[[Command, MilterConnection], Reply]


def always_continue(event: Command, conn: MilterConnection) -> Reply:
    """The decision that answers everything CONTINUE."""
    return Continue()


def drive(
    conn: MilterConnection,
    data: bytes,
    chunk: int | None,
    decide: Decide = always_continue,
) -> tuple[list[Command], bytes]:
    """Feed *data* in pieces, answer each event that is owed a reply with *decide*.

    Returns the events seen and every byte the connection wanted to send."""
    events: list[Command] = []
    out = bytearray()
    for piece in pieces(data, chunk):
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED, "drive always answers before asking again"
            assert isinstance(event, Command)
            events.append(event)
            if conn.awaiting_reply is not None:
                assert conn.awaiting_reply is type(event)
                conn.send(decide(event, conn))
        out += conn.data_to_send()
    return events, bytes(out)


def negotiated(
    options: MilterOptions | None = None, offer: Negotiate = POSTFIX_OFFER
) -> MilterConnection:
    """A connection that has answered *offer*, with its output already taken."""
    conn = MilterConnection(options)
    conn.receive_data(encode(offer))
    assert conn.next_event() is NEED_DATA
    assert conn.negotiated is not None
    conn.data_to_send()
    return conn


def load_capture(name: str) -> tuple[bytes, bytes]:
    """(MTA → milter bytes, milter → MTA bytes) of one captured scenario."""
    mta = bytes.fromhex((CAPTURE_DIR / f"{name}.mta.hex").read_text().strip())
    milter = bytes.fromhex((CAPTURE_DIR / f"{name}.milter.hex").read_text().strip())
    return mta, milter


def _sample_replies() -> dict[type[Reply], Reply]:
    samples: dict[type[Reply], Reply] = {
        NegotiateReply: NegotiateReply(6, 0, 0, ((MacroStage.ENVRCPT, ("i",)),)),
        ReplyCode: ReplyCode(550, "5.7.1", "no"),
        m.AddRecipient: m.AddRecipient("<a@example.org>"),
        m.DeleteRecipient: m.DeleteRecipient("<a@example.org>"),
        m.AddRecipientWithArgs: m.AddRecipientWithArgs("<a@example.org>", "NOTIFY=NEVER"),
        m.ChangeSender: m.ChangeSender("<s@example.org>"),
        m.AddHeader: m.AddHeader("X-A", "1"),
        m.InsertHeader: m.InsertHeader(0, "X-I", "1"),
        m.ChangeHeader: m.ChangeHeader(1, "Subject", "x"),
        m.ReplaceBody: m.ReplaceBody(b"body"),
        m.Quarantine: m.Quarantine("why"),
    }
    for cls in REPLIES.values():
        if cls not in samples:
            samples[cls] = cls()
    return samples


SAMPLE_REPLIES = _sample_replies()
"""One instance of every reply class in REPLIES."""
