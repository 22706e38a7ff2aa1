"""The change feed from Mailman: its wire format, its authentication, and what listgate does
with each message (drop exactly the cache entries it names, and keep the feed's health).

Mailman's side (``listgate.mailman_plugin``, run inside Mailman's own venv) and listgate's
side (``listgate.server.events``) share this module, so the format is written down once.

Wire format, version 1: one HTTP ``POST`` to the notify URL, ``Content-Type:
application/json``, with the header ``X-Listgate-Signature: sha256=<hex>``: the HMAC-SHA256
of the exact body bytes under the shared secret (the secret file's content, stripped). The
body is one JSON object::

    {"v": 1, "stream": "mail.example.org/4711/9f2c01ab", "since": 1764750000.2,
     "seq": 17, "sent": 1764750031.5,
     "lists": ["announce.example.org"], "addresses": ["alice@example.org"],
     "directory": false, "global_bans": false, "all": false}

- ``stream`` names one sending Mailman process (host, pid, a random tag against pid reuse);
  ``since`` is when it started (Unix time). ``seq`` counts the stream's messages from 1; it
  moves on only when a message was delivered (2xx) or given up, and a retry repeats its
  seq, so a seq that skips ahead means lost messages (a *gap*).
- ``lists`` are Mailman ``list_id`` values (``announce.example.org``), ``addresses`` are
  lower-cased e-mail addresses; nothing else about a member is ever sent.
- ``directory``: a list was created or deleted or renamed, or a domain or its alias domain
  changed. ``global_bans``: the site-wide ban list changed. ``all``: the sender lost track of
  what changed (its queue overflowed, or a change could not be read): drop everything.
- A message with no change at all is a heartbeat: the sender sends one after
  ``heartbeat`` seconds without any other message, so a silent feed means trouble.
- Missing optional keys mean empty/false; unknown keys are ignored (later additions).

Why an HMAC and not a bearer token: the secret never travels, so a captured request (plain
HTTP between hosts, or a log of one) neither reveals it nor lets anyone forge or alter a
message; checking it costs one SHA-256 over at most ``MAX_BODY`` bytes.

Invariants:
- Pure: no I/O, no asyncio, no threads; stdlib only (plus ``listgate.errors``), because
  Mailman's venv imports this module too.
- ``decode`` accepts only what ``encode`` can produce (types and bounds checked); every
  failure is an ``EventError`` whose message is safe to log (never the secret).
- A message never exceeds ``MAX_BODY`` bytes: ``encode`` collapses a change set that would
  into ``all``.
- ``FeedState.receive`` makes exactly these ``Invalidator`` calls: ``invalidate_all()``
  alone when the message says ``all`` or reveals a gap; otherwise
  ``invalidate_directory()``, ``invalidate_global_bans()``, ``invalidate_lists(ids)`` and
  ``invalidate_addresses(addrs)``, each only when its part is non-empty, in that order;
  none for a heartbeat.
- ``FeedState`` is bounded: it remembers at most ``MAX_STREAMS`` streams.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from listgate.errors import ListgateError

__all__ = [
    "CONTENT_TYPE",
    "MAX_BODY",
    "SIGNATURE_HEADER",
    "WIRE_VERSION",
    "ChangeSet",
    "EventError",
    "FeedHealth",
    "FeedState",
    "Invalidator",
    "Message",
    "RateLimit",
    "decode",
    "encode",
    "read_secret",
    "sign",
    "verify",
]

WIRE_VERSION = 1
SIGNATURE_HEADER = "X-Listgate-Signature"
CONTENT_TYPE = "application/json"
MAX_BODY = 65_536
"""Bytes; a larger body is refused (413) by the listener and never built by the sender."""
MAX_STREAMS = 4096
"""Streams the listener remembers (least recently heard forgotten first)."""
MAX_ITEMS = 4096
"""List ids or addresses a change set holds before it collapses into ``all``."""
_MAX_STRING = 320
"""An address is at most 254 octets by RFC 5321; a list_id is shorter still."""
_SIGNATURE_PREFIX = "sha256="


class EventError(ListgateError):
    """A change-feed message that cannot be accepted (the text is safe to log)."""


# --------------------------------------------------------------------------- change sets


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What changed in Mailman, as cache keys: lists by ``list_id``, addresses lower-cased."""

    lists: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    directory: bool = False
    global_bans: bool = False
    everything: bool = False
    """Drop every cached fact (the wire's ``all``)."""

    @property
    def empty(self) -> bool:
        """No change at all (a heartbeat carries this)."""
        return not (self.lists or self.addresses or self.directory or self.global_bans
                    or self.everything)

    def merge(self, other: ChangeSet) -> ChangeSet:
        """Both change sets in one; collapses into ``everything`` past ``MAX_ITEMS``."""
        if self.everything or other.everything:
            return EVERYTHING
        merged = ChangeSet(
            self.lists | other.lists,
            self.addresses | other.addresses,
            self.directory or other.directory,
            self.global_bans or other.global_bans,
        )
        if len(merged.lists) > MAX_ITEMS or len(merged.addresses) > MAX_ITEMS:
            return EVERYTHING
        return merged


NOTHING = ChangeSet()
EVERYTHING = ChangeSet(everything=True)


class Invalidator(Protocol):
    """What the feed drops from listgate's cache (implemented by the fact cache)."""

    def invalidate_lists(self, list_ids: Iterable[str]) -> None:
        """Each list's policy (its settings and its own bans), by Mailman ``list_id``."""

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        """Each address's facts: its memberships on every list and its linked addresses."""

    def invalidate_directory(self) -> None:
        """The directory of lists and alias domains."""

    def invalidate_global_bans(self) -> None:
        """The site-wide bans."""

    def invalidate_all(self) -> None:
        """Every cached fact."""


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded feed message."""

    stream: str
    since: float
    seq: int
    sent: float
    changes: ChangeSet = NOTHING

    @property
    def heartbeat(self) -> bool:
        """True when the message carries no change."""
        return self.changes.empty


def encode(message: Message) -> bytes:
    """The JSON body for *message*: compact, keys sorted, false/empty parts left out;
    a change set too large for ``MAX_BODY`` is sent as ``all``."""
    body = _encode(message, message.changes)
    if len(body) > MAX_BODY:
        body = _encode(message, EVERYTHING)
    return body


def _encode(message: Message, changes: ChangeSet) -> bytes:
    data: dict[str, object] = {
        "v": WIRE_VERSION,
        "stream": message.stream,
        "since": round(message.since, 3),
        "seq": message.seq,
        "sent": round(message.sent, 3),
    }
    if changes.everything:
        data["all"] = True
    else:
        if changes.lists:
            data["lists"] = sorted(changes.lists)
        if changes.addresses:
            data["addresses"] = sorted(changes.addresses)
        if changes.directory:
            data["directory"] = True
        if changes.global_bans:
            data["global_bans"] = True
    return json.dumps(data, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=True).encode("ascii")


def _number(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(f"{key!r} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise EventError(f"{key!r} must be a finite number >= 0")
    return number


def _flag(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise EventError(f"{key!r} must be true or false")
    return value


def _strings(data: Mapping[str, object], key: str, *, lower: bool) -> frozenset[str]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise EventError(f"{key!r} must be an array of strings")
    if len(value) > MAX_ITEMS:
        raise EventError(f"{key!r} holds more than {MAX_ITEMS} entries")
    items = set()
    for item in value:
        if not isinstance(item, str) or not item or len(item) > _MAX_STRING:
            raise EventError(f"{key!r} must hold non-empty strings of at most "
                             f"{_MAX_STRING} characters")
        if any(c < " " or c == "\x7f" for c in item):
            raise EventError(f"{key!r} entries must not contain control characters")
        items.add(item.lower() if lower else item)
    return frozenset(items)


def decode(body: bytes) -> Message:
    """The message in *body*; ``EventError`` if it is not a version-1 feed message."""
    if len(body) > MAX_BODY:
        raise EventError(f"body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EventError("body is not JSON") from None
    if not isinstance(data, dict):
        raise EventError("body must be a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or version != WIRE_VERSION:
        raise EventError(f"unsupported version {version!r} (this listgate speaks "
                         f"{WIRE_VERSION})")
    stream = data.get("stream")
    if not isinstance(stream, str) or not 0 < len(stream) <= 200 or not stream.isprintable():
        raise EventError("'stream' must be a printable string of 1 to 200 characters")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise EventError("'seq' must be an integer >= 1")
    changes = ChangeSet(
        _strings(data, "lists", lower=False),
        _strings(data, "addresses", lower=True),
        _flag(data, "directory"),
        _flag(data, "global_bans"),
        _flag(data, "all"),
    )
    return Message(stream, _number(data, "since"), seq, _number(data, "sent"),
                   EVERYTHING if changes.everything else changes)


# --------------------------------------------------------------------------- authentication


def read_secret(path: str) -> bytes:
    """The shared secret in the file at *path* (stripped); ``EventError`` if it cannot be
    read or is empty. The message names the file, never its content."""
    try:
        with open(path, "rb") as fh:
            secret = fh.read(4096).strip()
    except OSError as exc:
        raise EventError(f"cannot read secret file {path!r}: {exc.strerror or exc}") from None
    if not secret:
        raise EventError(f"secret file {path!r} is empty")
    return secret


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Listgate-Signature`` header value for *body*."""
    return _SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """True when *signature* (the header value, or None when absent) signs *body*."""
    if signature is None:
        return False
    expected = sign(secret, body)
    return hmac.compare_digest(expected.encode("ascii"),
                               signature.strip().encode("ascii", "replace"))


# --------------------------------------------------------------------------- listener state


@dataclass(frozen=True, slots=True)
class FeedHealth:
    """The change feed as listgate sees it (a snapshot for metrics and status).

    Times are on the listener's monotonic clock; None until it happened once."""

    messages: int = 0
    """Messages accepted (heartbeats included)."""
    heartbeats: int = 0
    changes: int = 0
    """Accepted messages that carried a change."""
    gaps: int = 0
    """Messages known lost: seqs skipped on a stream (each gap dropped the whole cache)."""
    last_message: float | None = None
    last_change: float | None = None
    last_gap: float | None = None
    lag: float | None = None
    """Seconds from the sender's clock stamp to receipt, for the last message (clock skew
    between hosts shows up here)."""
    streams: int = 0
    """Sending Mailman processes currently remembered."""
    resumed: float | None = None
    """When the feed was last heard after a silence longer than the state's
    ``max_silence`` (or for the first time): facts fetched since are covered by it."""
    refused: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Requests refused, by reason: unauthorized, malformed, too_large, timeout, method,
    overloaded, incomplete (the sender closed mid-request), error (the ``Invalidator``
    raised; answered 500 so the sender retries)."""

    def healthy(self, now: float, max_silence: float) -> bool:
        """True when a message arrived within *max_silence* seconds before *now*: the
        cache may then rely on the feed instead of short lifetimes."""
        return self.last_message is not None and now - self.last_message <= max_silence

    def covers(self, fetched_at: float, now: float, max_silence: float) -> bool:
        """True when the feed is healthy at *now* and has been since *fetched_at*
        (monotonic): every change since that fact was fetched has reached listgate, or
        been detected as lost (a gap drops the whole cache)."""
        return (self.healthy(now, max_silence) and self.resumed is not None
                and fetched_at >= self.resumed)


@dataclass(slots=True)
class _Stream:
    seq: int


class FeedState:
    """Applies accepted messages to an ``Invalidator`` and keeps the feed's health."""

    REFUSALS = ("unauthorized", "malformed", "too_large", "timeout", "method", "overloaded",
                "incomplete", "error")

    def __init__(self, invalidator: Invalidator, *, started_wall: float,
                 max_silence: float = math.inf) -> None:
        self._invalidator = invalidator
        self.max_silence = max_silence
        """A pause between messages longer than this is a silence (``FeedHealth.resumed``)."""
        self._started_wall = started_wall
        """Unix time the listener started: a stream begun later must be heard from seq 1."""
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._health = FeedHealth(refused=MappingProxyType(dict.fromkeys(self.REFUSALS, 0)))
        self.lost = False
        """Set by ``lose``: messages are ignored from then on."""

    @property
    def health(self) -> FeedHealth:
        """The current snapshot."""
        return self._health

    def healthy(self, now: float, max_silence: float) -> bool:
        """See ``FeedHealth.healthy``."""
        return self._health.healthy(now, max_silence)

    def refuse(self, reason: str) -> None:
        """Count one refused request (*reason* is one of ``REFUSALS``)."""
        refused = dict(self._health.refused)
        refused[reason] = refused.get(reason, 0) + 1
        self._health = replace(self._health, refused=MappingProxyType(refused))

    def _missed(self, message: Message) -> int:
        """How many of the stream's messages before this one were lost (and remember it)."""
        stream = self._streams.get(message.stream)
        if stream is None:
            self._streams[message.stream] = _Stream(message.seq)
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
            # A stream begun before this listener: its earlier messages predate every fact
            # cached here. One begun since must have reached us from seq 1 on.
            if message.since >= self._started_wall:
                return message.seq - 1
            return 0
        self._streams.move_to_end(message.stream)
        missed = max(0, message.seq - stream.seq - 1)
        stream.seq = max(stream.seq, message.seq)  # a retry repeats its seq
        return missed

    def receive(self, message: Message, now: float, now_wall: float) -> None:
        """Apply *message* (already authenticated and decoded) at monotonic time *now*."""
        if self.lost:
            return
        missed = self._missed(message)
        changes = EVERYTHING if missed else message.changes
        _apply(changes, self._invalidator)
        h = self._health
        self._health = replace(
            h,
            messages=h.messages + 1,
            heartbeats=h.heartbeats + message.heartbeat,
            changes=h.changes + (not message.heartbeat),
            gaps=h.gaps + missed,
            last_message=now,
            last_change=h.last_change if message.heartbeat else now,
            last_gap=now if missed else h.last_gap,
            lag=now_wall - message.sent,
            streams=len(self._streams),
            resumed=(now if h.last_message is None or now - h.last_message > self.max_silence
                     else h.resumed),
        )


    def lose(self) -> None:
        """The feed can no longer reach this state (a worker's relay link broke): drop
        every cached fact and vouch for none from now on (never healthy again)."""
        self.lost = True
        self._health = replace(self._health, last_message=None, resumed=None)
        _apply(EVERYTHING, self._invalidator)


def _apply(changes: ChangeSet, invalidator: Invalidator) -> None:
    """The ``Invalidator`` calls for *changes* (see the module invariants)."""
    if changes.everything:
        invalidator.invalidate_all()
        return
    if changes.directory:
        invalidator.invalidate_directory()
    if changes.global_bans:
        invalidator.invalidate_global_bans()
    if changes.lists:
        invalidator.invalidate_lists(sorted(changes.lists))
    if changes.addresses:
        invalidator.invalidate_addresses(sorted(changes.addresses))


class RateLimit:
    """At most one line per kind per ``interval`` seconds; counts the lines held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def check(self, kind: str, now: float) -> int | None:
        """None if a line of *kind* at *now* is held back; otherwise how many were held
        back since the last one let through."""
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)
