"""atheris harness: the sans-IO Postfix policy-delegation codec on arbitrary bytes.

Input layout: byte 0 picks the limits (tight ones, so every limit is reached, or the
defaults), byte 1 the chunk size (1 to 256, or whole), byte 2 whether the stream ends
with EOF; the rest is what Postfix (or anything else on the port) sends.
Seeds: real Postfix requests (RCPT, a pipelined pair, CRLF endings, non-UTF-8 bytes),
plus each captured milter stream (junk for this protocol).

What counts as a crash (any exception other than ``PolicyProtocolError``, or a failed
check):
- ``PolicyConnection`` yields requests or ``NEED_DATA``, or raises ``PolicyProtocolError``
  (and then the same error on every later call).
- After ``NEED_DATA`` it holds at most one request's worth (``max_request_bytes`` + 1).
- Every request has 1 to ``max_attributes`` attributes; each gets exactly one
  ``action=...`` reply, which ``ReplyReader`` reads back as the one action sent, and a
  second ``send`` is refused.
- A request that ``encode_request`` can frame again parses back to the same attributes.
- ``format_action`` of any decoded value never lets a line break or NUL through.
- ``ReplyReader`` fed the same bytes gives replies, ``NEED_DATA`` or the protocol error.

Run: ``.venv/bin/python fuzz/policy_codec.py -runs=1000000 -timeout=10 fuzz/corpus/policy``.
"""

from __future__ import annotations

import sys

import _common
import atheris

with atheris.instrument_imports():
    from listgate.policyd import (
        NEED_DATA,
        PolicyConnection,
        PolicyLimits,
        PolicyProtocolError,
        PolicyRequest,
        PolicyStateError,
        ReplyReader,
        encode_request,
        format_action,
    )

LIMITS = [PolicyLimits(max_line_length=64, max_attributes=8, max_request_bytes=256),
          PolicyLimits()]


def _reparse(request: PolicyRequest) -> None:
    try:
        wire = encode_request(request.attributes)
    except ValueError:
        return  # a value ending in CR, which the framing cannot carry
    again = PolicyConnection(PolicyLimits(max_line_length=1 << 20, max_attributes=4096,
                                          max_request_bytes=1 << 22))
    again.receive_data(wire)
    back = again.next_event()
    if not isinstance(back, PolicyRequest) or dict(back.attributes) != dict(request.attributes):
        raise AssertionError(f"{request!r} does not round-trip")


def _answer(conn: PolicyConnection, request: PolicyRequest) -> None:
    value = request.sender or request.recipient or "DUNNO"
    try:
        conn.send(value)
    except ValueError:
        conn.send("DUNNO")  # a value that is all control characters and blanks
    wire = conn.data_to_send()
    if wire.count(b"\n") != 2 or not wire.endswith(b"\n\n") or b"\0" in wire:
        raise AssertionError(f"reply {wire!r} is not one action line")
    reader = ReplyReader()
    reader.receive_data(wire)
    reply = reader.next_reply()
    if not isinstance(reply, dict) or list(reply) != ["action"]:
        raise AssertionError(f"reply {wire!r} does not read back as one action")
    try:
        conn.send("DUNNO")
    except PolicyStateError:
        return
    raise AssertionError("a second reply to one request was accepted")


def _feed(limits: PolicyLimits, stream: bytes, chunk: int, eof: bool) -> None:
    conn = PolicyConnection(limits)
    try:
        for start in range(0, len(stream), chunk):
            conn.receive_data(stream[start : start + chunk])
            while (event := conn.next_event()) is not NEED_DATA:
                if not isinstance(event, PolicyRequest):
                    raise AssertionError(f"unexpected event {event!r}")
                if not 1 <= len(event.attributes) <= limits.max_attributes:
                    raise AssertionError(f"{len(event.attributes)} attributes")
                _reparse(event)
                _answer(conn, event)
            if conn.buffered > limits.max_request_bytes + 1:
                raise AssertionError(f"{conn.buffered} bytes held after NEED_DATA")
        if eof:
            conn.receive_data(b"")
            if conn.next_event() is not NEED_DATA:
                raise AssertionError("a request after EOF")
    except PolicyProtocolError as exc:
        try:
            conn.next_event()
        except PolicyProtocolError as again:
            if again is not exc:
                raise AssertionError("the error is not sticky") from None
        else:
            raise AssertionError("the connection works again after an error") from None


def _reader(stream: bytes) -> None:
    reader = ReplyReader(LIMITS[0])
    reader.receive_data(stream)
    try:
        for _ in range(64):
            if reader.next_reply() is NEED_DATA:
                break
    except PolicyProtocolError:
        pass


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    limits = LIMITS[data[0] % len(LIMITS)]
    chunk = data[1] + 1 if data[1] < 255 else len(data) + 1
    stream = data[3:]
    _feed(limits, stream, chunk, bool(data[2] & 1))
    _reader(stream)
    text = stream.decode("utf-8", "surrogateescape")
    try:
        action = format_action(text)
    except ValueError:
        return
    if action.count(b"\n") != 2 or b"\r" in action or b"\0" in action:
        raise AssertionError(f"format_action let a control character through: {action!r}")


POSTFIX_RCPT = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=127.0.0.1\nclient_name=localhost\nreverse_client_name=localhost\n"
    b"helo_name=client.example\nsender=outsider@example.net\nrecipient=list@example.org\n"
    b"recipient_count=0\nqueue_id=\ninstance=1a2b.5f3c.1\nsize=0\netrn_domain=\n"
    b"stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n"
    b"ccert_issuer=\nccert_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
    b"encryption_keysize=0\nserver_address=127.0.0.1\nserver_port=25\n\n"
)


def seeds() -> list[bytes]:
    streams = [
        POSTFIX_RCPT,
        POSTFIX_RCPT.replace(b"RCPT", b"MAIL") + POSTFIX_RCPT,
        POSTFIX_RCPT.replace(b"\n", b"\r\n"),
        POSTFIX_RCPT.replace(b"outsider", b"\xff\xfe=\x00x"),
        b"request=smtpd_access_policy\nsender=a=b@c\n\n\n",
        *_common.capture_streams("mta")[:2],
    ]
    return [bytes([lim, c, eof]) + s for s in streams for lim in (0, 1) for c in (0, 255)
            for eof in (0, 1)]


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
    sys.exit(0)
