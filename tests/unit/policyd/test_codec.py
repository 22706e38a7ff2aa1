"""The sans-IO policy codec: framing, chunking, limits, replies and hostile input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import source_modules

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

POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=127.0.0.1\n"
    b"client_name=localhost\n"
    b"helo_name=client.feas.test\n"
    b"queue_id=\n"
    b"sender=outsider@example.net\n"
    b"recipient=list@example.org\n"
    b"recipient_count=0\n"
    b"instance=1b2c.6650a1f2.8d3e1.0\n"
    b"size=0\n"
    b"sasl_username=\n"
    b"policy_context=\n"
    b"\n"
)
CHUNK_SIZES = [None, 1, 7, 4096]


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    """*data* whole (size None) or in pieces of *size* bytes."""
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def feed(data: bytes, size: int | None = None, conn: PolicyConnection | None = None,
         answer: str = "DUNNO") -> tuple[list[PolicyRequest], bytes]:
    """Feed *data* in chunks, answering each request; return the requests and replies."""
    conn = conn or PolicyConnection()
    requests: list[PolicyRequest] = []
    out = b""
    for piece in chunks(data, size):
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, PolicyRequest)
            requests.append(event)
            conn.send(answer)
            out += conn.data_to_send()
    return requests, out


# ----------------------------------------------------------------- framing


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_postfix_request_is_parsed_whole_and_in_chunks(size: int | None) -> None:
    """A Postfix RCPT request gives the same typed request however it is chunked."""
    [req], out = feed(POSTFIX_REQUEST, size)
    assert req.request == "smtpd_access_policy"
    assert req.protocol_state == "RCPT"
    assert req.sender == "outsider@example.net"
    assert req.recipient == "list@example.org"
    assert req.client_address == "127.0.0.1"
    assert req.queue_id == ""
    assert req.sasl_username == ""
    assert req.instance == "1b2c.6650a1f2.8d3e1.0"
    assert req.attributes["helo_name"] == "client.feas.test"
    assert len(req.attributes) == 14
    assert out == b"action=DUNNO\n\n"


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_many_requests_on_one_connection(size: int | None) -> None:
    """Several requests back to back are each returned once, in order, with one reply each."""
    data = b"".join(
        encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                        "recipient": f"r{i}@example.org"})
        for i in range(5)
    )
    conn = PolicyConnection()
    requests, out = feed(data, size, conn)
    assert [r.recipient for r in requests] == [f"r{i}@example.org" for i in range(5)]
    assert out == b"action=DUNNO\n\n" * 5
    assert conn.awaiting_reply == 0
    assert conn.buffered == 0
    assert not conn.in_request


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_crlf_line_endings_are_tolerated(size: int | None) -> None:
    """\\r\\n line endings parse like \\n; the \\r is not part of the value."""
    data = POSTFIX_REQUEST.replace(b"\n", b"\r\n")
    [req], _ = feed(data, size)
    assert req.recipient == "list@example.org"
    assert req.queue_id == ""


def test_values_may_contain_equals_signs() -> None:
    """Only the first '=' separates name and value."""
    [req], _ = feed(b"sender=a=b@example.org\nccert_subject=CN=x,O=y\n\n")
    assert req.sender == "a=b@example.org"
    assert req.attributes["ccert_subject"] == "CN=x,O=y"


def test_unknown_attributes_are_kept_and_missing_ones_are_empty() -> None:
    """Attributes listgate does not know survive in .attributes; absent typed ones are ''."""
    [req], _ = feed(b"x_future=1\n\n")
    assert dict(req.attributes) == {"x_future": "1"}
    assert req.protocol_state == req.sender == req.recipient == req.instance == ""


def test_duplicate_attribute_last_value_wins() -> None:
    """A repeated attribute keeps its last value (documented)."""
    [req], _ = feed(b"recipient=first@example.org\nrecipient=last@example.org\n\n")
    assert req.recipient == "last@example.org"
    assert req.attributes["recipient"] == "last@example.org"


def test_non_utf8_bytes_survive() -> None:
    """Bytes that are not UTF-8 decode with surrogateescape and encode back unchanged."""
    [req], _ = feed(b"sender=caf\xe9@example.org\nhelo_name=\xff\xfe\n\n")
    assert req.sender.encode("utf-8", "surrogateescape") == b"caf\xe9@example.org"
    assert req.attributes["helo_name"].encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_empty_value_and_nul_in_value() -> None:
    """An empty value is '' and a NUL inside a value is kept (logs make it printable)."""
    [req], _ = feed(b"queue_id=\nsender=a\x00b\n\n")
    assert req.queue_id == ""
    assert req.sender == "a\x00b"


def test_request_is_frozen() -> None:
    """PolicyRequest is immutable, and so is its attribute mapping."""
    [req], _ = feed(POSTFIX_REQUEST)
    with pytest.raises(AttributeError):
        req.sender = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        req.attributes["sender"] = "x"  # type: ignore[index]


def test_partial_request_needs_data() -> None:
    """Without its final empty line a request is not returned."""
    conn = PolicyConnection()
    conn.receive_data(POSTFIX_REQUEST[:-1])
    assert conn.next_event() is NEED_DATA
    assert conn.in_request
    conn.receive_data(b"\n")
    assert isinstance(conn.next_event(), PolicyRequest)


# ----------------------------------------------------------------- defects


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage\n\n", "without '='"),
        (b"=value\n\n", "empty name"),
        (b"\n", "empty request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "without '='"),
    ],
)
@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_malformed_input_raises_protocol_error(
    data: bytes, message: str, size: int | None
) -> None:
    """Malformed lines and an empty request are protocol errors, however chunked."""
    with pytest.raises(PolicyProtocolError, match=message):
        feed(data, size)


def test_error_is_sticky() -> None:
    """After a protocol error every next_event raises again (the connection is dead)."""
    conn = PolicyConnection()
    conn.receive_data(b"garbage\n")
    with pytest.raises(PolicyProtocolError):
        conn.next_event()
    conn.receive_data(POSTFIX_REQUEST)
    with pytest.raises(PolicyProtocolError):
        conn.next_event()


def test_eof_mid_request_is_an_error_and_clean_eof_is_not() -> None:
    """The stream ending inside a request raises; ending between requests does not."""
    conn = PolicyConnection()
    conn.receive_data(POSTFIX_REQUEST + b"sender=x\n")
    assert isinstance(conn.next_event(), PolicyRequest)
    conn.receive_data(b"")
    assert conn.peer_closed
    with pytest.raises(PolicyProtocolError, match="closed in the middle"):
        conn.next_event()
    clean = PolicyConnection()
    clean.receive_data(POSTFIX_REQUEST)
    clean.receive_data(b"")
    assert isinstance(clean.next_event(), PolicyRequest)
    assert clean.next_event() is NEED_DATA
    with pytest.raises(PolicyStateError):
        clean.receive_data(b"more")


# ----------------------------------------------------------------- limits


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_line_at_the_limit_passes_and_one_byte_more_fails(size: int | None) -> None:
    """max_line_length counts the line without its ending (\\r\\n or \\n)."""
    limits = PolicyLimits(max_line_length=100)
    ok_line = b"sender=" + b"a" * 93  # exactly 100 bytes
    [req], _ = feed(ok_line + b"\r\n\n", size, PolicyConnection(limits))
    assert len(req.sender) == 93
    with pytest.raises(PolicyProtocolError, match="line longer than 100"):
        feed(ok_line + b"a\n\n", size, PolicyConnection(limits))


def test_overlong_line_fails_before_its_end_arrives() -> None:
    """A line already over the limit fails at once, without waiting for a newline."""
    conn = PolicyConnection(PolicyLimits(max_line_length=100))
    conn.receive_data(b"sender=" + b"a" * 200)
    with pytest.raises(PolicyProtocolError, match="line longer"):
        conn.next_event()


def test_huge_line_does_not_scan_past_the_limit() -> None:
    """A multi-megabyte line without a newline is refused from its first bytes."""
    conn = PolicyConnection()
    conn.receive_data(b"x" * 8_000_000)
    with pytest.raises(PolicyProtocolError, match="line longer than 8192"):
        conn.next_event()
    assert conn.buffered == 0  # the buffer is dropped with the connection


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_attribute_count_limit(size: int | None) -> None:
    """max_attributes lines pass; one more is a protocol error (duplicates count too)."""
    limits = PolicyLimits(max_attributes=3)
    [req], _ = feed(b"a=1\nb=2\nc=3\n\n", size, PolicyConnection(limits))
    assert len(req.attributes) == 3
    with pytest.raises(PolicyProtocolError, match="more than 3 attributes"):
        feed(b"a=1\na=2\na=3\na=4\n\n", size, PolicyConnection(limits))


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_request_size_limit(size: int | None) -> None:
    """max_request_bytes counts every byte of the request, the empty line included."""
    data = b"a=1234\nb=5678\n\n"  # 15 bytes
    [req], _ = feed(data, size, PolicyConnection(PolicyLimits(max_request_bytes=15)))
    assert req.attributes["b"] == "5678"
    with pytest.raises(PolicyProtocolError, match="request longer than 14"):
        feed(data, size, PolicyConnection(PolicyLimits(max_request_bytes=14)))


def test_request_size_limit_applies_to_a_partial_request() -> None:
    """A request already over max_request_bytes fails before it is complete."""
    conn = PolicyConnection(PolicyLimits(max_request_bytes=20))
    conn.receive_data(b"a=1\n" * 5 + b"b=")
    with pytest.raises(PolicyProtocolError, match="request longer"):
        conn.next_event()


def test_limits_must_be_positive() -> None:
    """A zero limit is a programming error."""
    with pytest.raises(ValueError, match="max_attributes"):
        PolicyLimits(max_attributes=0)


# ----------------------------------------------------------------- replies


def test_one_reply_per_request_in_order() -> None:
    """send answers the oldest open request; a reply nobody asked for is refused."""
    conn = PolicyConnection()
    with pytest.raises(PolicyStateError):
        conn.send("DUNNO")
    conn.receive_data(encode_request({"n": "1"}) + encode_request({"n": "2"}))
    first, second = conn.next_event(), conn.next_event()
    assert isinstance(first, PolicyRequest)
    assert isinstance(second, PolicyRequest)
    assert conn.awaiting_reply == 2
    conn.send("550 5.7.1 one")
    assert conn.data_to_send() == b"action=550 5.7.1 one\n\n"
    conn.send("DUNNO")
    assert conn.data_to_send() == b"action=DUNNO\n\n"
    assert conn.awaiting_reply == 0
    with pytest.raises(PolicyStateError):
        conn.send("DUNNO")


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("DUNNO", b"action=DUNNO\n\n"),
        ("550 5.7.1 <a@b> is not allowed", b"action=550 5.7.1 <a@b> is not allowed\n\n"),
        ("550 5.7.1 x\r\n\r\naction=OK", b"action=550 5.7.1 x    action=OK\n\n"),
        ("451 4.3.0 a\x00b\nc", b"action=451 4.3.0 a b c\n\n"),
        ("  DUNNO\n", b"action=DUNNO\n\n"),
        ("550 5.7.1 caf\u00e9", "action=550 5.7.1 caf\u00e9\n\n".encode()),
        ("550 5.7.1 \udce9", b"action=550 5.7.1 \xe9\n\n"),
        ("550 5.7.1 \ud800", b"action=550 5.7.1 \\ud800\n\n"),
    ],
)
def test_format_action_never_lets_line_breaks_or_nul_through(text: str, wire: bytes) -> None:
    """CR, LF, NUL and other controls become spaces; the reply is always one line + blank."""
    out = format_action(text)
    assert out == wire
    assert out.count(b"\n") == 2
    assert out.endswith(b"\n\n")
    assert b"\r" not in out
    assert b"\x00" not in out


@pytest.mark.parametrize("text", ["", "  ", "\r\n", "\x00"])
def test_format_action_refuses_an_empty_action(text: str) -> None:
    """An action that is empty after cleaning is a programming error."""
    with pytest.raises(ValueError, match="empty"):
        format_action(text)


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_reply_reader_reads_what_send_writes(size: int | None) -> None:
    """The MTA-side reader gets back each action the server sent."""
    _, out = feed(POSTFIX_REQUEST * 3, answer="550 5.7.1 no = never")
    reader = ReplyReader()
    replies = []
    for piece in chunks(out, size):
        reader.receive_data(piece)
        while (reply := reader.next_reply()) is not NEED_DATA:
            replies.append(reply)
    assert replies == [{"action": "550 5.7.1 no = never"}] * 3


# ----------------------------------------------------------------- round trip / properties

_names = st.text(
    st.characters(blacklist_characters="=\r\n", blacklist_categories=["Cs"]),
    min_size=1, max_size=20,
)
_values = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=60
) | st.binary(max_size=60).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").decode("utf-8", "surrogateescape")
)


@settings(max_examples=200, deadline=None)
@given(
    requests=st.lists(st.dictionaries(_names, _values, min_size=1, max_size=10),
                      min_size=1, max_size=5),
    size=st.sampled_from(CHUNK_SIZES),
)
def test_round_trip(requests: list[dict[str, str]], size: int | None) -> None:
    """encode_request then PolicyConnection gives back every attribute mapping, in order."""
    data = b"".join(encode_request(r) for r in requests)
    got, out = feed(data, size)
    assert [dict(r.attributes) for r in got] == requests
    assert out == b"action=DUNNO\n\n" * len(requests)


def test_encode_request_refuses_what_cannot_be_framed() -> None:
    """Names with '=' or line endings and values with line endings cannot be encoded."""
    for bad in ({}, {"": "x"}, {"a=b": "x"}, {"a\n": "x"}, {"a": "x\ny"}, {"a": "x\r"}):
        with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
            encode_request(bad)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=600)
    | st.lists(st.sampled_from([b"a=1\n", b"\n", b"\r\n", b"=", b"x", b"\r", b"\xff",
                                b"request=smtpd_access_policy\n", b"z" * 70]),
               max_size=40).map(b"".join),
    size=st.integers(min_value=1, max_value=64),
    eof=st.booleans(),
)
def test_any_byte_stream_gives_requests_or_protocol_error(
    data: bytes, size: int, eof: bool
) -> None:
    """Whatever the bytes, the codec returns requests or raises PolicyProtocolError only."""
    conn = PolicyConnection(PolicyLimits(max_line_length=64, max_attributes=8,
                                         max_request_bytes=256))
    try:
        for piece in chunks(data, size):
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, PolicyRequest)
                assert 1 <= len(event.attributes) <= 8
                conn.send("DUNNO")
                assert conn.data_to_send() == b"action=DUNNO\n\n"
        if eof:
            conn.receive_data(b"")
            assert conn.next_event() is NEED_DATA
            assert not conn.in_request
    except PolicyProtocolError:
        pass
    assert conn.buffered <= len(data)


_SOURCE_CODEC = source_modules("listgate.policyd.codec")["listgate.policyd.codec"]


class _LineByLine(_SOURCE_CODEC.PolicyConnection):  # type: ignore[name-defined,misc]
    """The codec, run from its source, with its whole-request fast path switched off
    (a compiled class cannot be subclassed in Python)."""

    __slots__ = ()

    def _whole_request(self) -> None:
        return None


def _outcome(conn: PolicyConnection, data: bytes, size: int) -> list[object]:
    out: list[object] = []
    try:
        for piece in chunks(data, size):
            conn.receive_data(piece)
            # the source codec has its own NEED_DATA and PolicyRequest
            while type(event := conn.next_event()).__name__ != "Signal":
                assert type(event).__name__ == "PolicyRequest"
                out.append(dict(event.attributes))
                conn.send("DUNNO")
            out.append(conn.buffered)
    except PolicyProtocolError as exc:
        out.append(str(exc))
    return out


@settings(max_examples=400)
@given(
    data=st.lists(st.sampled_from([b"a=1\n", b"b=x=y\n", b"\n", b"\r\n", b"=", b"x", b"\r",
                                   b"\xff", b"request=smtpd_access_policy\n", b"z" * 70,
                                   b"a=2\n\n", b"c=\n", b"\xc3", "é".encode(), b"\xe2\x82"]),
                  max_size=40).map(b"".join),
    size=st.sampled_from([1, 3, 17, 64, 4096]),
)
def test_whole_request_path_agrees_with_the_line_by_line_path(data: bytes, size: int) -> None:
    """The fast path (a whole request parsed at once) gives the same requests, the same
    buffered counts and the same error as reading line by line, for any byte stream."""
    limits = PolicyLimits(max_line_length=64, max_attributes=8, max_request_bytes=256)
    assert _outcome(PolicyConnection(limits), data, size) == _outcome(
        _LineByLine(limits), data, size
    )


# ----------------------------------------------------------------- shape shared with milter


def test_replies_accumulate_in_one_outbox_in_order() -> None:
    """send queues; data_to_send gives every queued reply in request order, then nothing."""
    conn = PolicyConnection()
    conn.receive_data(encode_request({"n": "1"}) + encode_request({"n": "2"}))
    assert isinstance(conn.next_event(), PolicyRequest)
    assert isinstance(conn.next_event(), PolicyRequest)
    assert conn.data_to_send() == b""
    conn.send("550 5.7.1 one")
    conn.send("DUNNO")
    assert conn.data_to_send() == b"action=550 5.7.1 one\n\naction=DUNNO\n\n"
    assert conn.data_to_send() == b""


def test_an_empty_action_queues_nothing_and_keeps_the_request_owed() -> None:
    """send of an action that is empty after cleaning raises ValueError and changes nothing."""
    conn = PolicyConnection()
    conn.receive_data(encode_request({"n": "1"}))
    assert isinstance(conn.next_event(), PolicyRequest)
    with pytest.raises(ValueError, match="empty policy action"):
        conn.send(" \r\n\0 ")
    assert conn.awaiting_reply == 1
    assert conn.data_to_send() == b""


def test_need_data_and_errors_are_shared_with_the_milter_codec() -> None:
    """One NEED_DATA object for both codecs; the policy errors are ProtocolErrors."""
    from listgate import milter
    from listgate.errors import ListgateError, ProtocolError
    from listgate.sansio import NEED_DATA as SHARED

    assert NEED_DATA is SHARED is milter.NEED_DATA
    assert PolicyConnection().next_event() is SHARED
    assert issubclass(PolicyProtocolError, ProtocolError)
    assert issubclass(PolicyStateError, ProtocolError)
    assert issubclass(PolicyStateError, RuntimeError)
    assert issubclass(ProtocolError, ListgateError)
    assert issubclass(milter.MilterProtocolError, ProtocolError)


@pytest.mark.parametrize(
    ("line", "request_bytes"), [(8192, 65536), (512, 65536), (70000, 70004)]
)
def test_limits_for_lines(line: int, request_bytes: int) -> None:
    """A request may hold 64 KiB, or one longest line with its framing if that is more."""
    limits = PolicyLimits.for_lines(line, 40)
    assert limits == PolicyLimits(line, 40, request_bytes)
