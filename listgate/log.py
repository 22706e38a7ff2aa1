"""Logging set-up and helpers shared by the daemon and the CLI.

Invariants:
- Anything that came from the network is passed through ``printable`` before it reaches
  a log line, so a sender address can never forge or split log lines.
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
- Importing this module imports only ``logging`` (the syslog handler is imported when it
  is used), so ``listgate.config`` can read ``LOG_TARGETS`` and stay light.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time

__all__ = [
    "LOG_TARGETS",
    "THIRD_PARTY_LOGGERS",
    "fast_line",
    "flush_lines",
    "next_conn_id",
    "printable",
    "setup_logging",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ids = itertools.count(1)


def printable(value: str | None, limit: int = 320) -> str:
    """*value* with control characters shown as ``\\xNN`` and cut to *limit* characters."""
    if value is None:
        return "-"
    if len(value) > limit:
        value = value[:limit] + "..."
    if value.isprintable():  # no control character in it (the common case)
        return value
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def next_conn_id() -> str:
    """A short id for one connection, unique within this process; it prefixes every log
    line about that connection."""
    return f"c{next(_ids):x}"


LOG_TARGETS = ("stderr", "syslog", "journal")
"""Where log lines go: stderr with timestamps; syslog (facility mail, /dev/log); or the
systemd journal (stderr with ``<N>`` priority prefixes, which journald reads)."""

THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "mailmanclient", "asyncio", "urllib3")
"""Loggers of the libraries listgate uses; held at WARNING unless ``[log] level = "debug"``
(httpx logs each REST request at INFO)."""

_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    """``<priority>name: message``: journald turns the prefix into the entry's priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_fast_handler: _StreamHandler | None = None
"""listgate's own stderr/journal handler, while it is installed (``fast_line``)."""
_fast_journal = False
_second = -1
_second_text = ""
_pending: list[str] = []
"""Lines ``fast_line`` formatted that are not written yet."""
_MAX_PENDING = 256
"""More pending lines than this are written at once."""


def flush_lines() -> None:
    """Write the lines ``fast_line`` buffered (one write for all of them)."""
    if not _pending:
        return
    text = "".join(_pending)
    _pending.clear()
    handler = _fast_handler
    if handler is None:
        return
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.stream.flush()
    except Exception:  # noqa: S110 - as logging does: a log line never stops the daemon
        pass
    finally:
        handler.release()


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """listgate's stderr/journal handler: writes ``fast_line``'s pending lines first."""

    def emit(self, record: logging.LogRecord) -> None:
        if _pending:
            flush_lines()
        super().emit(record)

    def close(self) -> None:
        if _pending and _fast_handler is self:
            flush_lines()
        super().close()


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
    global _second, _second_text
    handler = _fast_handler
    if handler is None or handler.filters or level < handler.level or not _routes_only_to(
            logger, handler):
        return False
    name = logging.getLevelName(level)
    if _fast_journal:
        line = f"<{_JOURNAL_PRIORITY.get(level, 6)}>{logger.name}: {message}\n"
    else:
        now = time.time()
        second = int(now)
        if second != _second:
            _second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            _second = second
        line = f"{_second_text},{int((now - second) * 1000):03d} {name} {logger.name}: {message}\n"
    _pending.append(line)
    if len(_pending) == 1:
        return True
    if len(_pending) >= _MAX_PENDING:
        flush_lines()
    return None


def setup_logging(level: int, target: str = "stderr", syslog_address: str = "/dev/log") -> None:
    """Send log lines to *target* (one of ``LOG_TARGETS``) from *level* up, other libraries'
    from WARNING up unless *level* is DEBUG; idempotent (a reload calls it again)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_listgate", False):
            root.removeHandler(old)
            old.close()
    global _fast_handler, _fast_journal
    flush_lines()
    _fast_handler = None
    handler: logging.Handler
    if target == "syslog":
        from logging.handlers import SysLogHandler  # imports socket: only when used

        handler = SysLogHandler(address=syslog_address, facility=SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter("listgate[%(process)d]: %(name)s: %(message)s"))
    elif target == "journal":
        handler = _fast_handler = _StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter("%(message)s"))
        _fast_journal = True
    else:
        handler = _fast_handler = _StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
        _fast_journal = False
    setattr(handler, "_listgate", True)  # noqa: B010 - marks our own handlers
    root.addHandler(handler)
    root.setLevel(level)
    others = logging.NOTSET if level <= logging.DEBUG else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(others)
