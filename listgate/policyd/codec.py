"""The Postfix policy delegation protocol (SMTPD_POLICY_README), as a sans-IO state machine.

Usage (the I/O layer's whole job)::

    conn = PolicyConnection(limits)
    conn.receive_data(bytes_from_socket)          # b"" = the peer closed its side
    while (event := conn.next_event()) is not NEED_DATA:
        conn.send(decide(event))                  # exactly one reply per request
    socket.write(conn.data_to_send())

Wire format:

- A request is a sequence of ``name=value`` lines, each ended by ``\\n`` (a ``\\r``
  before it is tolerated and dropped), and the request is ended by an empty line. The
  connection stays open for any number of requests.
- The name is everything before the first ``=``; the value is everything after it, so a
  value may itself contain ``=``. Unknown attributes are kept in ``attributes``.
- An attribute that appears twice keeps its **last** value (Postfix never repeats one;
  last-wins is what Postfix's own ``attr_scan_plain`` and most policy servers do).
- Bytes are decoded as UTF-8 with ``surrogateescape``, so bytes that are not UTF-8 survive
  (``value.encode("utf-8", "surrogateescape")`` gives them back) and never raise.
- A reply is ``action=TEXT\\n\\n``. ``format_action`` turns every control character
  (CR, LF, NUL included) into a space, so a reply can never end early or smuggle a second
  reply or a second attribute.

Invariants:

- Pure: no sockets, no asyncio, no clock.
- Limits are checked before anything is allocated for the data they guard: the end of a
  line is searched only within ``max_line_length`` bytes, the end of a whole request
  (parsed in one go when it arrived whole, as Postfix writes it) only within
  ``max_request_bytes``; the attribute count and the
  request size are checked before a line is sliced or decoded; a partial line or request
  that is already over its limit fails at once, without waiting for its end.
- Every defect of the peer's byte stream raises ``PolicyProtocolError``; the connection is
  dead afterwards (every later ``next_event`` raises the same error) and must be closed.
  Nothing else is ever raised for anything the peer sends.
- Exactly one reply per request, in order: ``send`` answers the oldest request that has
  no reply yet and refuses (``PolicyStateError``) when every request has been answered.
  Requests may be read ahead of their replies (pipelining); replies still go out in
  request order.
- The same shape as the milter codec: the one ``NEED_DATA`` of ``listgate.sansio``, one
  outbox (``send`` queues a reply, ``data_to_send`` empties the outbox), errors under
  ``listgate.errors.ProtocolError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, cast

from listgate.policyd.errors import PolicyError, PolicyProtocolError, PolicyStateError
from listgate.sansio import NEED_DATA, Outbox, Signal

__all__ = [
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_REQUEST_BYTES",
    "NEED_DATA",
    "PolicyConnection",
    "PolicyError",
    "PolicyLimits",
    "PolicyProtocolError",
    "PolicyRequest",
    "PolicyStateError",
    "ReplyReader",
    "encode_request",
    "format_action",
]

DEFAULT_MAX_LINE_LENGTH: Final = 8192
"""Bytes per attribute line, without its line ending."""
DEFAULT_MAX_ATTRIBUTES: Final = 64
"""Attribute lines per request (Postfix 3.7 sends about 30)."""
DEFAULT_MAX_REQUEST_BYTES: Final = 65536
"""Bytes per request, line endings and the final empty line included."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")




@dataclass(frozen=True, slots=True)
class PolicyLimits:
    """What one connection accepts; exceeding any of these is a ``PolicyProtocolError``."""

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_attributes: int = DEFAULT_MAX_ATTRIBUTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        for name in ("max_line_length", "max_attributes", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def for_lines(cls, max_line_length: int, max_attributes: int) -> PolicyLimits:
        """The limits for lines of *max_line_length* bytes: a request may be at most
        ``DEFAULT_MAX_REQUEST_BYTES``, or one such line (and its framing) if longer."""
        return cls(
            max_line_length=max_line_length,
            max_attributes=max_attributes,
            max_request_bytes=max(DEFAULT_MAX_REQUEST_BYTES, max_line_length + 4),
        )


@dataclass(frozen=True, slots=True, init=False)
class PolicyRequest:
    """One policy request. The attributes listgate uses are typed fields ("" when absent);
    ``attributes`` holds every attribute received, known or not (last value wins).
    (``__init__`` written out: mypyc compiles it, not the one ``dataclasses`` makes.)"""

    request: str = ""
    """"smtpd_access_policy" for the Postfix SMTP server."""
    protocol_state: str = ""
    """The SMTP stage: "CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE",
    "VRFY" or "ETRN"."""
    sender: str = ""
    """Envelope sender as Postfix passes it (no angle brackets; "" for the null sender)."""
    recipient: str = ""
    """Envelope recipient of this RCPT."""
    client_address: str = ""
    queue_id: str = ""
    """Empty until Postfix has created the queue file (e.g. for the first recipient)."""
    sasl_username: str = ""
    instance: str = ""
    """Postfix's id of the current message transaction."""
    attributes: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __init__(
        self,
        request: str = "",
        protocol_state: str = "",
        sender: str = "",
        recipient: str = "",
        client_address: str = "",
        queue_id: str = "",
        sasl_username: str = "",
        instance: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "protocol_state", protocol_state)
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "recipient", recipient)
        object.__setattr__(self, "client_address", client_address)
        object.__setattr__(self, "queue_id", queue_id)
        object.__setattr__(self, "sasl_username", sasl_username)
        object.__setattr__(self, "instance", instance)
        object.__setattr__(self, "attributes",
                           MappingProxyType({}) if attributes is None else attributes)

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str]) -> PolicyRequest:
        """The request carrying *attributes* (copied)."""
        return _request_of(dict(attributes))


def _request_of(attrs: dict[str, str]) -> PolicyRequest:
    """The request carrying *attrs*, which it then owns (read-only from then on)."""
    get = attrs.get
    return PolicyRequest(
        get("request", ""),
        get("protocol_state", ""),
        get("sender", ""),
        get("recipient", ""),
        get("client_address", ""),
        get("queue_id", ""),
        get("sasl_username", ""),
        get("instance", ""),
        MappingProxyType(attrs),
    )


def _decode(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    # surrogateescape gives back the bytes a request brought in; a lone surrogate that
    # did not come from decoding is shown as \\udXXX rather than raising.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def format_action(text: str) -> bytes:
    """The reply ``action=TEXT`` plus the empty line that ends it.

    Every control character in *text* (CR, LF and NUL included) becomes a space and the
    result is stripped; an action that is then empty raises ``ValueError``."""
    clean = _CONTROL.sub(" ", text).strip()
    if not clean:
        raise ValueError("empty policy action")
    return b"action=" + _encode(clean) + b"\n\n"


def encode_request(attributes: Mapping[str, str]) -> bytes:
    """A request with *attributes*, in order, then the empty line (the MTA's side, for
    clients and tests). Raises ``ValueError`` for a name that is empty or holds ``=`` or
    a line ending, a value with a line ending, or no attributes at all."""
    if not attributes:
        raise ValueError("a policy request needs at least one attribute")
    out = bytearray()
    for name, value in attributes.items():
        if not name or "=" in name or "\n" in name or "\r" in name:
            raise ValueError(f"bad attribute name {name!r}")
        if "\n" in value or value.endswith("\r"):
            raise ValueError(f"attribute {name!r}: value cannot hold a line ending")
        out += _encode(name) + b"=" + _encode(value) + b"\n"
    out += b"\n"
    return bytes(out)


class PolicyConnection(Outbox):
    """The policy-server side of one connection: bytes in, ``PolicyRequest``s out, one
    reply per request; replies wait in the outbox (``data_to_send``)."""

    __slots__ = (
        "_attrs",
        "_buf",
        "_eof",
        "_error",
        "_lines",
        "_owed",
        "_request_bytes",
        "limits",
    )

    def __init__(self, limits: PolicyLimits | None = None) -> None:
        super().__init__()
        self.limits = limits or PolicyLimits()
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._lines = 0
        self._request_bytes = 0
        self._owed = 0
        self._eof = False
        self._error: PolicyProtocolError | None = None

    # ------------------------------------------------------------------ state

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a returned request."""
        return len(self._buf) + self._request_bytes

    @property
    def awaiting_reply(self) -> int:
        """Requests returned by ``next_event`` and not yet answered with ``send``."""
        return self._owed

    @property
    def in_request(self) -> bool:
        """True when part of a request has been received (it is not complete yet)."""
        return bool(self._buf) or self._lines > 0

    @property
    def peer_closed(self) -> bool:
        """True once ``receive_data(b"")`` reported the end of the stream."""
        return self._eof

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            if data:
                raise PolicyStateError("data received after the end of the stream")
            return
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> PolicyRequest | Signal:
        """The next complete request, or ``NEED_DATA``. Raises ``PolicyProtocolError``
        when the stream is broken or over a limit (and on every later call)."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except PolicyProtocolError as exc:
            self._error = exc
            self._buf.clear()
            self._attrs.clear()
            raise

    def _next(self) -> PolicyRequest | Signal:
        if self._lines == 0:
            request = self._whole_request()
            if request is not None:
                return request
        return self._next_by_line()

    def _whole_request(self) -> PolicyRequest | None:
        """The fast path: a whole request at the start of the buffer, parsed in one go.

        Taken only when nothing of the request has been consumed yet, its end (the first
        empty line) lies within ``max_request_bytes``, it has no ``\\r``, and it is within
        every limit; None otherwise, and ``_next_by_line`` takes it (and finds the defect,
        with the same error it always gives). Postfix writes each request at once, so
        this is the path its requests take."""
        limits = self.limits
        buf = self._buf
        if buf[:1] == b"\n":
            return None
        end = buf.find(b"\n\n", 0, limits.max_request_bytes)
        if end < 0 or end + 2 > limits.max_request_bytes or buf.count(b"\n", 0, end) >= (
            limits.max_attributes
        ):
            return None
        if buf.find(b"\r", 0, end) >= 0:
            return None
        block = buf[:end]
        longest = limits.max_line_length
        if end > longest and max(map(len, block.split(b"\n"))) > longest:
            return None
        # One decode for the whole request: "=" and LF are ASCII, never part of a UTF-8
        # sequence, so this is what decoding each name and value on its own gives.
        # dict() takes each [name, value] pair (the last of a repeated name wins) and
        # refuses a line without "=" (a one-item split); an empty name stays as "".
        lines = block.decode("utf-8", "surrogateescape").split("\n")
        try:
            attrs = dict(cast("list[tuple[str, str]]", [line.split("=", 1) for line in lines]))
        except ValueError:
            return None
        if "" in attrs:
            return None
        del buf[: end + 2]
        self._owed += 1
        return _request_of(attrs)

    def _next_by_line(self) -> PolicyRequest | Signal:
        limits = self.limits
        buf = self._buf
        while True:
            # Look for the end of the line only as far as a legal line may reach.
            end = buf.find(b"\n", 0, limits.max_line_length + 2)
            if end < 0:
                pending = len(buf)
                if pending > limits.max_line_length + (1 if buf.endswith(b"\r") else 0):
                    raise PolicyProtocolError(
                        f"line longer than {limits.max_line_length} bytes"
                    )
                if self._request_bytes + pending > limits.max_request_bytes:
                    raise PolicyProtocolError(
                        f"request longer than {limits.max_request_bytes} bytes"
                    )
                if self._eof and (pending or self._lines):
                    raise PolicyProtocolError("connection closed in the middle of a request")
                return NEED_DATA
            length = end - 1 if end > 0 and buf[end - 1] == 0x0D else end  # drop one \r
            if length > limits.max_line_length:
                raise PolicyProtocolError(f"line longer than {limits.max_line_length} bytes")
            if self._request_bytes + end + 1 > limits.max_request_bytes:
                raise PolicyProtocolError(
                    f"request longer than {limits.max_request_bytes} bytes"
                )
            if length == 0:  # the empty line: the request is complete
                del buf[: end + 1]
                if self._lines == 0:
                    raise PolicyProtocolError("empty request (an empty line with no attributes)")
                request = _request_of(self._attrs)
                self._attrs = {}
                self._lines = 0
                self._request_bytes = 0
                self._owed += 1
                return request
            if self._lines >= limits.max_attributes:
                raise PolicyProtocolError(
                    f"more than {limits.max_attributes} attributes in one request"
                )
            eq = buf.find(b"=", 0, length)
            if eq < 0:
                raise PolicyProtocolError("attribute line without '=' (expected name=value)")
            if eq == 0:
                raise PolicyProtocolError("attribute line with an empty name")
            self._attrs[_decode(buf[:eq])] = _decode(buf[eq + 1 : length])
            self._lines += 1
            self._request_bytes += end + 1
            del buf[: end + 1]

    # ------------------------------------------------------------------ output

    def send(self, action: str) -> None:
        """Queue the reply to the oldest unanswered request (see ``format_action``).
        Raises ``PolicyStateError`` when no request awaits a reply, ``ValueError`` for an
        empty action (nothing is queued then)."""
        if self._owed == 0:
            raise PolicyStateError("no policy request is waiting for a reply")
        data = format_action(action)
        self._owed -= 1
        self._outbox += data


class ReplyReader:
    """The MTA's side of the replies (for clients and tests): bytes in, one attribute
    mapping per reply out (normally just ``{"action": ...}``)."""

    __slots__ = ("_attrs", "_buf", "limits")

    def __init__(self, limits: PolicyLimits | None = None) -> None:
        self.limits = limits or PolicyLimits()
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the policy server."""
        self._buf += data

    def next_reply(self) -> dict[str, str] | Signal:
        """The next complete reply, or ``NEED_DATA``; ``PolicyProtocolError`` if broken."""
        buf = self._buf
        while True:
            end = buf.find(b"\n", 0, self.limits.max_line_length + 2)
            if end < 0:
                if len(buf) > self.limits.max_line_length + 1:
                    raise PolicyProtocolError("reply line too long")
                return NEED_DATA
            line = bytes(buf[:end]).removesuffix(b"\r")
            del buf[: end + 1]
            if not line:
                if not self._attrs:
                    raise PolicyProtocolError("empty reply")
                reply, self._attrs = self._attrs, {}
                return reply
            name, eq, value = line.partition(b"=")
            if not eq or not name:
                raise PolicyProtocolError(f"bad reply line {line[:80]!r}")
            self._attrs[_decode(name)] = _decode(value)
