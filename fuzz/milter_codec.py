"""atheris harness: the sans-IO milter layer (framing, every message codec, both state
machines) on arbitrary bytes.

Input layout: byte 0 picks the milter options (listgate's own, "every step with replies",
"every step without replies"), byte 1 the chunk size the stream is fed in (1 to 256, or
whole), byte 2 how owed replies are chosen; the rest is the MTA → milter byte stream.
Seeds: the five captured Postfix/Sendmail conversations under each option set.

What counts as a crash (any exception other than the protocol's own errors, or a failed
check):
- ``MilterConnection`` yields commands, ``NEED_DATA`` or ``RemoteProtocolError`` only; after
  ``NEED_DATA`` it holds less than one packet (``max_packet_size + 4`` bytes).
- Its output decodes completely as replies, an OPTNEG reply first and only once, with at
  least one final reply per reply the application sent and at most one per SMTP-step
  command in the stream (never two answers to one command).
- Every command the decoder accepts round-trips (``unpack(pack_payload())``), and so does
  every reply the MTA-side decoder accepts (``ReplyCode`` text is made safe by packing,
  so only its code and DSN must survive).
- ``MtaConnection`` fed the same bytes as a milter's answer gives replies or
  ``RemoteProtocolError`` only.

Run: ``.venv/bin/python fuzz/milter_codec.py -runs=1000000 -timeout=10 fuzz/corpus/milter``.
"""

from __future__ import annotations

import sys

import _common
import atheris

with atheris.instrument_imports():
    from listgate.frontends.milter import milter_options
    from listgate.milter import (
        FINAL_REPLIES,
        NEED_DATA,
        Accept,
        ActionFlag,
        Continue,
        MilterConnection,
        MilterOptions,
        MtaConnection,
        NegotiateReply,
        ProtocolFlag,
        Reject,
        RemoteProtocolError,
        ReplyCode,
        TempFail,
        command_decoder,
        encode,
        reply_decoder,
    )
    from listgate.milter.tables import STEP_FLAGS

MAX = 4096
"""A small max_packet_size, so that claimed lengths often land on both sides of it."""
OPTIONS = [
    milter_options(MAX),
    MilterOptions(events=frozenset(STEP_FLAGS), no_reply=frozenset(), max_packet_size=MAX,
                  actions=ActionFlag.ADDHDRS, capabilities=ProtocolFlag.SKIP),
    MilterOptions(events=frozenset(STEP_FLAGS), no_reply=frozenset(STEP_FLAGS),
                  max_packet_size=MAX),
]
VERDICTS = [Continue(), Accept(), Reject(), TempFail(), ReplyCode(550, "5.7.1", "no %s\r\n")]


def _feed_milter(
    options: MilterOptions, stream: bytes, chunk: int, pick: int
) -> tuple[bytes, int]:
    conn = MilterConnection(options)
    out = bytearray()
    owed = 0
    try:
        for start in range(0, len(stream), chunk):
            conn.receive_data(stream[start : start + chunk])
            while (event := conn.next_event()) is not NEED_DATA:
                if conn.awaiting_reply is not None:
                    if conn.awaiting_reply is not type(event):
                        raise AssertionError("awaiting a reply to another command")
                    conn.send(VERDICTS[(pick + owed) % len(VERDICTS)])
                    owed += 1
            if conn.buffered > options.max_packet_size + 4:
                raise AssertionError(f"{conn.buffered} bytes held after NEED_DATA")
            out += conn.data_to_send()
    except RemoteProtocolError:
        out += conn.data_to_send()
    return bytes(out), owed


def _steps(stream: bytes) -> int:
    """SMTP-step commands (those that can be owed a reply) at the start of *stream*."""
    decoder = command_decoder(MAX)
    decoder.feed(stream)
    n = 0
    try:
        while (msg := decoder.next_message()) is not None:
            n += type(msg) in STEP_FLAGS
    except RemoteProtocolError:
        pass
    return n


def _check_output(out: bytes, owed: int, stream: bytes) -> None:
    decoder = reply_decoder()
    decoder.feed(out)
    first = True
    finals = 0
    while (reply := decoder.next_message()) is not None:
        if isinstance(reply, NegotiateReply) != first:
            raise AssertionError("the OPTNEG reply must come first and only once")
        first = False
        finals += type(reply) in FINAL_REPLIES
    if decoder.buffered:
        raise AssertionError("the milter wrote a partial packet")
    if not owed <= finals <= _steps(stream):
        raise AssertionError(f"{finals} final replies for {owed} owed, {_steps(stream)} steps")


def _round_trip_commands(stream: bytes) -> None:
    decoder = command_decoder(MAX)
    decoder.feed(stream)
    try:
        while (msg := decoder.next_message()) is not None:
            if type(msg).unpack(msg.pack_payload()) != msg:
                raise AssertionError(f"{msg!r} does not round-trip")
            again = command_decoder(MAX)
            again.feed(encode(msg))
            if again.next_message() != msg:
                raise AssertionError(f"{msg!r} does not survive framing")
    except RemoteProtocolError:
        pass


def _round_trip_replies(stream: bytes) -> None:
    decoder = reply_decoder(MAX)
    decoder.feed(stream)
    try:
        while (msg := decoder.next_message()) is not None:
            back = type(msg).unpack(msg.pack_payload())
            if isinstance(msg, ReplyCode):
                assert isinstance(back, ReplyCode)
                if (back.code, back.dsn) != (msg.code, msg.dsn):
                    raise AssertionError(f"{msg!r} lost its code or DSN")
            elif back != msg:
                raise AssertionError(f"{msg!r} does not round-trip")
    except RemoteProtocolError:
        pass


def _mta_side(stream: bytes) -> None:
    mta = MtaConnection()
    mta.start()
    mta.receive_data(stream)
    try:
        for _ in range(64):
            if mta.next_event() is NEED_DATA:
                break
    except RemoteProtocolError:
        pass


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    options = OPTIONS[data[0] % len(OPTIONS)]
    chunk = data[1] + 1 if data[1] < 255 else len(data) + 1
    stream = data[3:]
    out, owed = _feed_milter(options, stream, chunk, data[2])
    _check_output(out, owed, stream)
    _round_trip_commands(stream)
    _round_trip_replies(stream)
    _mta_side(stream)


def seeds() -> list[bytes]:
    out = []
    mta, milter = _common.capture_streams("mta"), _common.capture_streams("milter")
    for i, stream in enumerate(mta + milter):
        for opt in range(len(OPTIONS)):
            out.append(bytes([opt, 255 if i % 2 else 6, i]) + stream)
    return out


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
    sys.exit(0)
