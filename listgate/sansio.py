"""What every sans-IO protocol core shares: the signals ``next_event`` returns when it has
no event, and the one outbox replies wait in.

Invariants:
- Pure: imports nothing but ``enum`` and ``typing``. The milter codec
  (``listgate.milter``), the policy codec (``listgate.policyd``) and the front-end
  sessions (``listgate.frontends``) all return these very signals, so the connection loop
  tests one ``NEED_DATA`` for every protocol.
- Every protocol core has the same outbox: ``send`` (or an automatic answer) appends
  bytes, ``data_to_send`` hands them all over, in order, and empties it.
- The protocol cores' errors derive from ``listgate.errors.ProtocolError``.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["NEED_DATA", "PAUSED", "Outbox", "Signal"]


class Signal(enum.Enum):
    """What ``next_event`` returns when it has no event."""

    NEED_DATA = "need data"
    """Feed more bytes with ``receive_data``."""
    PAUSED = "paused"
    """A reply is owed: give it first (``send``, or a session's ``decide``)."""


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED


class Outbox:
    """The bytes a protocol core has queued for the peer (a base of each connection)."""

    __slots__ = ("_outbox",)

    def __init__(self) -> None:
        self._outbox = bytearray()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer: everything queued so far, in order."""
        if not self._outbox:
            return b""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out
