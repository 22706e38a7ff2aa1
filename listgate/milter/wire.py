"""Field-level decoding of milter packet data shared by the message classes
(``listgate.milter.messages``) and the state machine (``listgate.milter.connection``).

It is compiled with the state machine, which calls it for every MACRO packet; the
message classes are not (mypyc turns their ``ClassVar`` identifiers into dataclass
fields: mypyc/mypyc#1122), so what the state machine needs on its per-packet path lives
here and ``messages`` delegates to it.

Invariants:
- Pure: bytes in, values out; nothing but ``RemoteProtocolError`` is raised, whatever
  the data.
- Strings are decoded as UTF-8 with ``surrogateescape``: arbitrary bytes survive a
  round trip.
"""

from __future__ import annotations

from listgate.milter.errors import RemoteProtocolError

__all__ = ["decode_str", "encode_str", "macro_pairs", "macro_stage"]


def decode_str(raw: bytes) -> str:
    """Bytes from the wire → str, losslessly (surrogateescape for non-UTF-8 bytes)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    """The inverse of ``decode_str``."""
    return text.encode("utf-8", "surrogateescape")


def macro_stage(payload: bytes, stages: frozenset[bytes]) -> bytes:
    """Check a MACRO packet's data (a command code in *stages*, then NUL-terminated
    name/value pairs) without decoding the pairs; the command code it is for."""
    if not payload:
        raise RemoteProtocolError("MACRO: the command code is missing")
    stage = payload[:1]
    if stage not in stages:
        raise RemoteProtocolError(f"MACRO: for unknown command {stage!r}")
    if len(payload) > 1:
        if payload[-1] != 0:
            raise RemoteProtocolError("MACRO: data is not NUL-terminated")
        if payload.count(b"\0", 1) % 2:
            raise RemoteProtocolError("MACRO: a macro name has no value")
    return stage


def macro_pairs(payload: bytes) -> list[str]:
    """Names and values of MACRO data that ``macro_stage`` accepted, decoded, alternating
    (name, value, name, value...)."""
    if len(payload) == 1:
        return []
    return [p.decode("utf-8", "surrogateescape") for p in payload[1:-1].split(b"\0")]
