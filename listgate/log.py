"""Logging set-up and helpers shared by the daemon and the CLI.

Invariants:
- Anything that came from the network is passed through ``printable`` before it reaches
  a log line, so a sender address can never forge or split log lines.
- Secrets never reach a log line (nothing here formats config values).
"""

from __future__ import annotations

import itertools
import logging
import re
import sys

__all__ = ["next_conn_id", "printable", "setup_logging"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ids = itertools.count(1)


def printable(value: str | None, limit: int = 320) -> str:
    """*value* with control characters shown as ``\\xNN`` and cut to *limit* characters."""
    if value is None:
        return "-"
    if len(value) > limit:
        value = value[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def next_conn_id() -> str:
    """A short id for one connection, unique within this process; it prefixes every log
    line about that connection."""
    return f"c{next(_ids):x}"


def setup_logging(level: int) -> None:
    """Log to stderr with timestamps; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_listgate", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._listgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
