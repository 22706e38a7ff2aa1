"""Logging set-up and helpers shared by the daemon and the CLI.

Invariants:
- Anything that came from the network is passed through ``printable`` before it reaches
  a log line, so a sender address can never forge or split log lines (``printable``,
  ``fast_line`` and connection ids live in ``listgate.logline``, compiled with the
  connection loop; they are re-exported here).
- Secrets never reach a log line (nothing here formats config values).
- Other libraries' loggers (``THIRD_PARTY_LOGGERS``) log WARNING and above only, unless
  listgate's own level is DEBUG: then they log everything too (REST traffic included).
  So at the default level every line is listgate's own.
- ``fast_line`` formats a line exactly as listgate's own stderr (or journal) handler
  would, without building a ``LogRecord``, and only while that handler is the one place
  the logger's lines go (no other handler or filter on the way, e.g. a test's capture);
  otherwise the caller logs through ``logging`` as usual. Its lines wait in a buffer
  until ``flush_lines`` (the caller schedules it when ``fast_line`` says it buffered the
  first one; the event loop runs it at its next turn), and are always written before any
  other line that handler writes, so the order on the stream is the order of the calls.
- Importing this module imports only ``logging`` and ``listgate.logline`` (the syslog
  handler is imported when it is used), so ``listgate.config`` can read ``LOG_TARGETS``
  and stay light.
"""

from __future__ import annotations

import logging
import sys

from listgate.logline import (
    JOURNAL_PRIORITY,
    fast_line,
    flush_lines,
    install,
    installed,
    next_conn_id,
    printable,
)

__all__ = [
    "LOG_TARGETS",
    "THIRD_PARTY_LOGGERS",
    "fast_line",
    "flush_lines",
    "next_conn_id",
    "printable",
    "setup_logging",
]

LOG_TARGETS = ("stderr", "syslog", "journal")
"""Where log lines go: stderr with timestamps; syslog (facility mail, /dev/log); or the
systemd journal (stderr with ``<N>`` priority prefixes, which journald reads)."""

THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "mailmanclient", "asyncio", "urllib3")
"""Loggers of the libraries listgate uses; held at WARNING unless ``[log] level = "debug"``
(httpx logs each REST request at INFO)."""


class _JournalFormatter(logging.Formatter):
    """``<priority>name: message``: journald turns the prefix into the entry's priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The stderr line; ``fast_line`` writes the same."""


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """listgate's stderr/journal handler: writes ``fast_line``'s pending lines first."""

    def emit(self, record: logging.LogRecord) -> None:
        flush_lines()
        super().emit(record)

    def close(self) -> None:
        if installed() is self:
            flush_lines()
        super().close()


def setup_logging(level: int, target: str = "stderr", syslog_address: str = "/dev/log") -> None:
    """Send log lines to *target* (one of ``LOG_TARGETS``) from *level* up, other libraries'
    from WARNING up unless *level* is DEBUG; idempotent (a reload calls it again)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_listgate", False):
            root.removeHandler(old)
            old.close()
    install(None)
    handler: logging.Handler
    if target == "syslog":
        from logging.handlers import SysLogHandler  # imports socket: only when used

        handler = SysLogHandler(address=syslog_address, facility=SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter("listgate[%(process)d]: %(name)s: %(message)s"))
    elif target == "journal":
        handler = _StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter("%(message)s"))
        install(handler, journal=True)
    else:
        handler = _StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
        install(handler)
    setattr(handler, "_listgate", True)  # noqa: B010 - marks our own handlers
    root.addHandler(handler)
    root.setLevel(level)
    others = logging.NOTSET if level <= logging.DEBUG else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(others)
