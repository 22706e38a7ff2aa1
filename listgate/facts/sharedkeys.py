"""The shared tier's names and its invalidation message: what every host and the Mailman
plugin must agree on, written down once.

Redis layout, format version 1 (``VERSION``):

- a fact: ``listgate:v1:<kind>:<subject>`` (e.g. ``listgate:v1:policy:ann.example.org``,
  ``listgate:v1:memberships:alice@example.org``, ``listgate:v1:directory:``), a JSON
  string ``{"k": KEEP, "v": VALUE, "w": WRITE}``: *KEEP* is how many seconds after its
  fetch the value is of no more use, and the key's Redis expiry (``PX``) is set to run
  out exactly then, so the remaining ``PTTL`` tells the value's age without any host's
  clock; *WRITE* is a random tag that tells one write from the next (a host waiting for
  another's refetch knows it has landed even when the value did not change);
- a fetch lock: ``listgate:v1:lock:<kind>:<subject>`` (``SET NX PX``; its value is the
  holder's random token), so no kind may be named ``lock``;
- invalidations: published on ``listgate:v1:invalidate`` as the JSON object
  ``{"v": 1, "from": ORIGIN, "keys": ["policy/ann.example.org", ...],
  "kinds": ["memberships", ...], "all": false}``: each ``keys`` item is one fact
  (``kind/subject``, as ``listgate.facts.keyspace.FactKey`` prints it), each ``kinds`` item
  every fact of that kind, ``all`` every fact. *ORIGIN* names the sender, so a host skips
  its own messages.

A change of the value encoding or of these names takes a new ``VERSION``: hosts of
different versions then simply do not see each other's keys.

Invariants:
- Pure and stdlib-only: the Mailman plugin imports this module in Mailman's venv.
- ``decode_invalidation`` accepts only what ``encode_invalidation`` produces (types and
  bounds checked) and raises only ``InvalidationError``; a message never exceeds
  ``MAX_MESSAGE`` bytes (``encode_invalidation`` collapses a larger one into ``all``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from listgate.errors import ListgateError

__all__ = [
    "CHANNEL",
    "MAX_MESSAGE",
    "PREFIX",
    "VERSION",
    "Invalidation",
    "InvalidationError",
    "decode_invalidation",
    "encode_invalidation",
    "fact_name",
    "kind_pattern",
    "lock_name",
]

VERSION = 1
PREFIX = f"listgate:v{VERSION}:"
CHANNEL = f"{PREFIX}invalidate"
"""The pub/sub channel of invalidations."""
MAX_MESSAGE = 65_536
_MAX_ITEMS = 4096
_MAX_STRING = 400
_LOCK = "lock"


class InvalidationError(ListgateError):
    """A message on the invalidation channel that is not one (safe to log)."""


def fact_name(kind: str, subject: str) -> str:
    """The Redis key of one fact."""
    return f"{PREFIX}{kind}:{subject}"


def lock_name(kind: str, subject: str) -> str:
    """The Redis key of the lock held while one host fetches the fact."""
    return f"{PREFIX}{_LOCK}:{kind}:{subject}"


def kind_pattern(kind: str) -> str:
    """A ``SCAN MATCH`` pattern for every fact of *kind* (kind names are plain words)."""
    return f"{PREFIX}{kind}:*"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Facts to drop on every host: single facts, whole kinds, or everything."""

    origin: str
    keys: frozenset[tuple[str, str]] = frozenset()
    """(kind, subject) pairs."""
    kinds: frozenset[str] = frozenset()
    everything: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to drop."""
        return not (self.keys or self.kinds or self.everything)

    def merge(self, other: Invalidation) -> Invalidation:
        """Both in one (this one's origin); collapses into ``everything`` when large."""
        if self.everything or other.everything:
            return Invalidation(self.origin, everything=True)
        keys, kinds = self.keys | other.keys, self.kinds | other.kinds
        if len(keys) > _MAX_ITEMS or len(kinds) > _MAX_ITEMS:
            return Invalidation(self.origin, everything=True)
        return Invalidation(self.origin, keys, kinds)

    def names(self) -> tuple[str, ...]:
        """The Redis keys of the single facts (for ``DEL``)."""
        return tuple(sorted(fact_name(kind, subject) for kind, subject in self.keys))


def encode_invalidation(message: Invalidation) -> bytes:
    """The channel message for *message* (compact JSON, keys sorted)."""
    data: dict[str, object] = {"v": VERSION, "from": message.origin}
    if message.everything:
        data["all"] = True
    else:
        data["keys"] = sorted(f"{kind}/{subject}" for kind, subject in message.keys)
        data["kinds"] = sorted(message.kinds)
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        return encode_invalidation(Invalidation(message.origin, everything=True))
    return body


def _strings(data: dict[str, object], key: str) -> Iterable[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise InvalidationError(f"{key!r} must be a list of at most {_MAX_ITEMS} strings")
    for item in value:
        if not isinstance(item, str) or len(item) > _MAX_STRING:
            raise InvalidationError(f"{key!r} must hold strings of at most {_MAX_STRING} "
                                    "characters")
        yield item


def decode_invalidation(body: bytes | str) -> Invalidation:
    """The inverse of ``encode_invalidation``; ``InvalidationError`` for anything else."""
    if len(body) > MAX_MESSAGE:
        raise InvalidationError(f"message over {MAX_MESSAGE} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidationError("not JSON") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise InvalidationError(f"not a version {VERSION} invalidation")
    origin = data.get("from", "")
    if not isinstance(origin, str) or len(origin) > _MAX_STRING:
        raise InvalidationError("'from' must be a short string")
    everything = data.get("all", False)
    if not isinstance(everything, bool):
        raise InvalidationError("'all' must be true or false")
    keys: set[tuple[str, str]] = set()
    for item in _strings(data, "keys"):
        kind, slash, subject = item.partition("/")
        if not slash or not kind or kind == _LOCK:
            raise InvalidationError("each key must be 'kind/subject'")
        keys.add((kind, subject))
    kinds = frozenset(_strings(data, "kinds"))
    if _LOCK in kinds or "" in kinds:
        raise InvalidationError("bad kind")
    return Invalidation(origin, frozenset(keys), kinds, everything)
