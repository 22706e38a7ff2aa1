"""Errors of the milter protocol layer.

Strategy (after h11): ``RemoteProtocolError`` is raised only by the receiving side
(``receive_data``/``next_event``) when the peer broke the protocol; the I/O layer answers it
by logging and closing that one connection. ``LocalProtocolError`` means *we* tried to send
something the protocol forbids at this point (a bug or a bad configuration); it is raised by
``send`` and by message constructors. Both leave the connection object unusable. Both are
``listgate.errors.ProtocolError``s, which the connection loop handles for every protocol.
"""

from __future__ import annotations

from listgate.errors import ProtocolError

__all__ = ["LocalProtocolError", "MilterProtocolError", "RemoteProtocolError"]


class MilterProtocolError(ProtocolError):
    """The milter conversation cannot go on."""


class RemoteProtocolError(MilterProtocolError):
    """The peer sent bytes that are not a legal milter packet at this point."""


class LocalProtocolError(MilterProtocolError, ValueError):
    """We were asked to send something illegal (wrong reply, bad reply code, ...)."""
