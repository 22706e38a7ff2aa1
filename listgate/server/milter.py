"""The milter listener: the milter front end on the one connection loop.

Invariants:
- Everything about a connection (admission, timers, back-pressure, the no-wait fast path,
  drain, the decision log) is ``listgate.server.connection``'s; everything about the
  protocol is ``listgate.frontends.milter.MilterSession``'s. This module only wires them:
  the ``[milter]`` settings, the negotiation, and the milter's hooks below.
- ``idle_timeout`` runs between commands, ``command_timeout`` from the first byte of a
  packet to its last; at most ``max_packet_size`` bytes are read ahead of a decision.
- A packet that gets no reply is ACKed at once (TCP_QUICKACK): MTAs write the MACRO, MAIL
  (no reply) and RCPT packets one by one.
- A protocol error aborts the connection at once (nothing more is written).
"""

from __future__ import annotations

import logging

from listgate.config import MilterConfig
from listgate.decision.gate import Gate
from listgate.frontends.milter import (
    DEFAULT_MAX_MESSAGE,
    AuthStage,
    MilterSession,
    milter_options,
)
from listgate.server.connection import SessionService

__all__ = ["MilterService"]


class MilterService(SessionService[MilterConfig]):
    """Milter listeners sharing one gate, one ``[milter]`` group and one connection cap."""

    log = logging.getLogger("listgate.milter")
    ack_unanswered = True

    def __init__(
        self,
        config: MilterConfig,
        gate: Gate,
        *,
        headers: bool = False,
        auth: AuthStage | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        super().__init__("milter", config, gate, max_buffered=config.max_packet_size,
                         shutdown_timeout=config.shutdown_timeout)
        self.options = milter_options(config.max_packet_size, headers, auth)
        """What each new connection negotiates; a reload replaces it."""
        self.auth = auth
        """The authentication evidence sessions gather (require_authenticated lists);
        a reload replaces it together with ``options``."""
        self.max_message = max_message

    @property
    def command_timeout(self) -> float:
        return self.config.command_timeout

    def new_session(self) -> MilterSession:
        return MilterSession(self.options, self.auth, self.max_message)
