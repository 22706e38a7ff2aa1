"""listgate's error taxonomy.

Invariants:
- Every error listgate raises on purpose derives from ``ListgateError`` (an ``Exception``,
  never a ``BaseException``), so one ``except ListgateError`` at a boundary catches them all.
- Library errors (tomllib, OSError, mailmanclient, HTTP) are translated into these at the
  module boundary that sees them; nothing above that boundary knows the library's types.
- Every defect in what a peer sends (a milter MTA, a Postfix policy client) is a
  ``ProtocolError``: the connection loop catches that one class, closes that one
  connection and logs one WARNING.
- Messages never carry secrets (passwords, Authorization headers).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "ListNotFound",
    "ListgateError",
    "ProtocolError",
]


class ListgateError(Exception):
    """Root of every error listgate raises on purpose."""


class ConfigError(ListgateError):
    """The configuration is unusable. Each problem names the dotted key it is about."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


class BackendError(ListgateError):
    """A membership backend could not answer."""

    def __init__(self, message: str, list_address: str | None = None) -> None:
        super().__init__(message)
        self.list_address = list_address
        """The list the failed lookup was for, when the backend knows it."""


class BackendUnavailable(BackendError):
    """The backend is down, slow past its timeout, or answered with a server error."""


class ListNotFound(BackendError):
    """The backend does not know the list that was asked about."""


class ProtocolError(ListgateError):
    """A protocol conversation cannot go on: the peer broke the protocol or a limit, or
    the application tried to send what the protocol forbids. Close that connection."""
