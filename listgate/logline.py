"""The per-decision part of logging, compiled with the connection loop: ``printable``,
connection ids, and ``fast_line``/``flush_lines`` (a log line without a ``LogRecord``).

Invariants:
- Anything that came from the network goes through ``printable`` before it reaches a log
  line, so a sender address can never forge or split log lines.
- ``fast_line`` formats a line exactly as listgate's own stderr (or journal) handler would
  (``listgate.log`` installs it here with ``install``), and only while that handler is the
  one place the logger's lines go (no other handler or filter on the way, e.g. a test's
  capture); otherwise the caller logs through ``logging`` as usual. Its lines wait in a
  buffer until ``flush_lines`` (the caller schedules it when ``fast_line`` says it
  buffered the first one; the event loop runs it at its next turn), and that handler
  writes them before any line of its own, so the order on the stream is the order of the
  calls.
- Standard library only, and no class derived from ``logging``'s (mypyc compiles this
  module; the handler classes stay in ``listgate.log``).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Final

__all__ = ["fast_line", "flush_lines", "install", "installed", "next_conn_id", "printable"]

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

JOURNAL_PRIORITY: Final[dict[int, int]] = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
"""The ``<N>`` prefix journald reads as a line's priority, by logging level."""

_MAX_PENDING: Final = 256
"""More pending lines than this are written at once."""


def printable(value: str | None, limit: int = 320) -> str:
    """*value* with control characters shown as ``\\xNN`` and cut to *limit* characters."""
    if value is None:
        return "-"
    if len(value) > limit:
        value = value[:limit] + "..."
    if value.isprintable():  # no control character in it (the common case)
        return value
    return _CONTROL.sub(_escape, value)


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class _Sink:
    """Where ``fast_line`` writes, and what it has not written yet."""

    def __init__(self) -> None:
        self.handler: Any = None
        """listgate's own stderr/journal ``logging.StreamHandler``, while installed."""
        self.journal = False
        self.second = -1
        self.second_text = ""
        self.pending: list[str] = []
        self.next_id = 1


_sink: Final = _Sink()


def next_conn_id() -> str:
    """A short id for one connection, unique within this process; it prefixes every log
    line about that connection."""
    number = _sink.next_id
    _sink.next_id = number + 1
    return f"c{number:x}"


def install(handler: logging.Handler | None, journal: bool = False) -> None:
    """Make *handler* (a ``logging.StreamHandler``; None: none) the one ``fast_line``
    formats for, with journald priority prefixes if *journal*; lines still waiting for
    the previous one are written first."""
    flush_lines()
    _sink.handler = handler
    _sink.journal = journal


def installed() -> Any:
    """The handler ``fast_line`` formats for (None: none)."""
    return _sink.handler


def flush_lines() -> None:
    """Write the lines ``fast_line`` buffered (one write for all of them)."""
    pending = _sink.pending
    if not pending:
        return
    text = "".join(pending)
    pending.clear()
    handler = _sink.handler
    if handler is None:
        return
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(text)
        stream.flush()
    except Exception:  # noqa: S110 - as logging does: a log line never stops the daemon
        pass
    finally:
        handler.release()


def _routes_only_to(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether every line of *logger* goes to *handler* alone, unfiltered."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return False
        if node.parent is None:  # the root
            return len(node.handlers) == 1 and node.handlers[0] is handler
        if node.handlers or not node.propagate:
            return False
        node = node.parent
    return False


def fast_line(logger: logging.Logger, level: int, message: str) -> bool | None:
    """Format *message* as *logger*'s line at *level* (already known to be enabled) the
    way listgate's stderr or journal handler does, without a ``LogRecord``, and buffer it.
    True: it is the first line waiting (the caller makes ``flush_lines`` run soon);
    None: buffered behind others; False: nothing done (log it through ``logging``),
    because that handler is not the only place the line goes."""
    sink = _sink
    handler = sink.handler
    if handler is None or handler.filters or level < handler.level or not _routes_only_to(
            logger, handler):
        return False
    if sink.journal:
        line = f"<{JOURNAL_PRIORITY.get(level, 6)}>{logger.name}: {message}\n"
    else:
        now = time.time()
        second = int(now)
        if second != sink.second:
            sink.second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            sink.second = second
        millis = int((now - second) * 1000)
        name = logging.getLevelName(level)
        line = f"{sink.second_text},{millis:03d} {name} {logger.name}: {message}\n"
    pending = sink.pending
    pending.append(line)
    if len(pending) == 1:
        return True
    if len(pending) >= _MAX_PENDING:
        flush_lines()
    return None
