"""Errors of the policy protocol layer (the same strategy as ``listgate.milter.errors``).

``PolicyProtocolError`` is raised only by the receiving side when the peer broke the
protocol or a limit; the I/O layer logs it and closes that one connection.
``PolicyStateError`` means the application used the connection wrongly (a reply nobody
asked for). Both are ``listgate.errors.ProtocolError``s. They live apart from the codec so
that the codec stays compilable (``listgate.compiled``) while these stay ordinary Python
classes with several bases.
"""

from __future__ import annotations

from listgate.errors import ProtocolError

__all__ = ["PolicyError", "PolicyProtocolError", "PolicyStateError"]


class PolicyError(ProtocolError):
    """Base class of the policy protocol's errors."""


class PolicyProtocolError(PolicyError):
    """The peer broke the protocol or a limit; close the connection."""


class PolicyStateError(PolicyError, RuntimeError):
    """The application used the connection wrongly (e.g. a reply nobody asked for)."""
