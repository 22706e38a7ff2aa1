"""What every sans-IO protocol core shares: the signals ``next_event`` returns when it has
no event.

Invariants:
- Pure: imports nothing but ``enum``. The milter codec (``listgate.milter``), the policy
  codec (``listgate.policyd``) and the front-end sessions (``listgate.frontends``) all
  return these very objects, so the connection loop tests one ``NEED_DATA`` for every
  protocol.
- The protocol cores' errors derive from ``listgate.errors.ProtocolError``.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["NEED_DATA", "PAUSED", "Signal"]


class Signal(enum.Enum):
    """What ``next_event`` returns when it has no event."""

    NEED_DATA = "need data"
    """Feed more bytes with ``receive_data``."""
    PAUSED = "paused"
    """A reply is owed: give it first (``send``, or a session's ``decide``)."""


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED
