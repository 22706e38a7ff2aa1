"""What a front-end session is: the contract between a protocol's sans-IO session and the
one connection loop (``listgate.server.connection``).

A session is one conversation with one peer, after h11: bytes go in with
``receive_data``; ``next_event`` says what the session needs next; replies come out of
one outbox, ``data_to_send``. It never touches a socket, a clock or the gate::

    session.receive_data(bytes_from_socket)
    while (event := session.next_event()) is not NEED_DATA:
        if event is CLOSE:                       # the peer ended the conversation
            break
        if isinstance(event, Notice):            # tell the operator, once per service
            log(event)
            continue
        session.decide(gate.decide(event))       # event is a PostingRequest
    socket.write(session.data_to_send())

Invariants:
- Pure: no I/O, no asyncio, no clock, no logging; the session owns what each command of
  its protocol means (which requests are judged, what a decision's reply is, what needs
  no judgement at all and how it is answered).
- ``next_event`` returns, in the order of the peer's bytes: a ``PostingRequest`` (a
  decision is wanted: ``decide`` must be called before anything else), a ``Notice``,
  ``CLOSE`` (the peer ended the conversation: write what is queued, then close),
  ``NEED_DATA`` (feed more bytes) or ``PAUSED`` (a decision is still owed). It raises a
  ``listgate.errors.ProtocolError`` for anything the peer broke; the session is dead
  then.
- Every ``PostingRequest`` gets exactly one ``decide``; each ``decide`` queues exactly the
  one reply that carries the decision, and ``shown_reply`` tells the decision log what
  that reply was.
- Replies of one ``receive_data`` accumulate in the outbox until ``data_to_send`` takes
  them, so the loop writes them in one go.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from listgate.decision.model import Decision, PostingRequest
from listgate.sansio import NEED_DATA, PAUSED, Signal

__all__ = ["CLOSE", "NEED_DATA", "PAUSED", "Close", "Event", "Notice", "Session"]


class Close(enum.Enum):
    """The type of ``CLOSE``."""

    CLOSE = "close"


CLOSE: Final = Close.CLOSE
"""The peer ended the conversation (milter QUIT): write what is queued, then close."""


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the operator should hear about once per service (a WARNING), that is
    not a protocol error: e.g. a request the front end answers without judging it."""

    key: str
    """What makes two notices the same; only the first one per key is logged."""
    message: str
    """A ``%``-template with one ``%s`` per value of *args*."""
    args: tuple[str, ...] = ()
    """Values that came from the peer: the log shows each through ``printable`` (cut to
    40 characters)."""


Event = PostingRequest | Notice | Close | Signal
"""What ``Session.next_event`` returns."""


class Session(Protocol):
    """One front end's side of one conversation (see the module docstring)."""

    requests: int
    """Requests the session has answered (for log lines)."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of an event (for back-pressure and the command
        timeout)."""

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer."""

    def next_event(self) -> Event:
        """What the session needs next."""

    def decide(self, decision: Decision) -> None:
        """Answer the ``PostingRequest`` last returned: queue its reply."""

    def shown_reply(self, decision: Decision) -> str:
        """The reply ``decide`` queued for *decision*, as the decision log shows it."""

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer (every reply queued so far, in order)."""
