"""The Postfix policy listener: the policy front end on the one connection loop.

Invariants:
- Everything about a connection (admission, timers, back-pressure, the no-wait fast path,
  drain, the decision log) is ``listgate.server.connection``'s; everything about the
  protocol is ``listgate.frontends.policy.PolicySession``'s. This module only wires them:
  the ``[policy]`` settings and the policy connection's hooks below.
- ``idle_timeout``: a connection must complete its next request within this many seconds
  of the previous reply (or of being opened), else it is closed; partial data does not
  extend it. Reading pauses while more than one request's worth waits for a decision.
- A protocol violation or an exceeded limit first writes the replies to the complete
  requests before the defect, then closes (aborts if the peer is not reading either).
- Requests that are not judged are logged once per service and (request, protocol_state)
  (``PolicySession``'s notice), at most for 32 such pairs.
"""

from __future__ import annotations

import logging

from listgate.config import PolicyConfig
from listgate.decision.gate import Gate
from listgate.frontends.policy import PolicySession
from listgate.policyd import PolicyLimits
from listgate.server.connection import SessionService, Wording

__all__ = ["PolicyService"]


class PolicyService(SessionService[PolicyConfig]):
    """Policy listeners sharing one gate, one ``[policy]`` group and one connection cap."""

    log = logging.getLogger("listgate.policy")
    wording = Wording(
        opened="[%(id)s] policy connection from %(peer)s",
        closed="[%(id)s] policy connection closed after %(requests)d request(s)%(exc)s",
        idle="[%(id)s] closing idle policy connection from %(peer)s after %(seconds).0f s "
        "(idle_timeout; %(requests)d request(s) served)",
        broken="[%(id)s] closing policy connection from %(peer)s: %(error)s",
    )
    idle_since_reply = True
    flush_on_error = True

    def __init__(
        self, config: PolicyConfig, gate: Gate, *, shutdown_timeout: float = 10.0
    ) -> None:
        self.codec_limits = PolicyLimits.for_lines(config.max_line_length, config.max_attributes)
        """What each connection's codec accepts (from ``max_line_length`` and
        ``max_attributes``; a request's worth is read ahead of a decision)."""
        super().__init__("policy", config, gate,
                         max_buffered=self.codec_limits.max_request_bytes,
                         shutdown_timeout=shutdown_timeout)

    def new_session(self) -> PolicySession:
        return PolicySession(self.codec_limits)
