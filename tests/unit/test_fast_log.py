"""``listgate.log.fast_line``: the decision log's path without a ``LogRecord`` writes the
same line logging would, and steps aside whenever the line could go anywhere else."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

from listgate.log import fast_line, flush_lines, setup_logging

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@contextlib.contextmanager
def only_listgate(target: str = "stderr") -> Iterator[logging.Handler]:
    """listgate's handler for *target* as the root's only handler (pytest's capture
    removed meanwhile), writing into a buffer."""
    setup_logging(logging.INFO, target)
    root = logging.getLogger()
    ours = next(h for h in root.handlers if getattr(h, "_listgate", False))
    assert isinstance(ours, logging.StreamHandler)
    others = [h for h in root.handlers if h is not ours]
    for h in others:
        root.removeHandler(h)
    ours.setStream(io.StringIO())
    try:
        yield ours
    finally:
        for h in others:
            root.addHandler(h)


def _text(handler: logging.Handler) -> str:
    assert isinstance(handler, logging.StreamHandler)
    out = handler.stream.getvalue()
    handler.stream.seek(0)
    handler.stream.truncate()
    return str(out)


def test_fast_line_writes_what_logging_writes(restore_logging: None) -> None:
    """The same message through logging and through fast_line gives the same line, but
    for the time stamp's value (same format)."""
    log = logging.getLogger("listgate.decision")
    message = "[c1] queue=- client=- from=<a@b> to=<l@x> list=l@x verdict=reject"
    with only_listgate() as handler:
        log.info("%s", message)
        slow = _text(handler)
        assert fast_line(log, logging.INFO, message) is True  # the first waiting
        assert _text(handler) == ""  # until flushed
        flush_lines()
        fast = _text(handler)
    assert STAMP.match(slow), slow
    assert STAMP.match(fast), fast
    assert STAMP.sub("", fast) == STAMP.sub("", slow) == (
        f"INFO listgate.decision: {message}\n")


def test_fast_line_journal_format(restore_logging: None) -> None:
    """With the journal target the line has the priority prefix, as logging writes it;
    waiting lines go out before any line logged after them."""
    log = logging.getLogger("listgate.decision")
    with only_listgate("journal") as handler:
        log.warning("%s", "x=1")
        slow = _text(handler)
        assert fast_line(log, logging.WARNING, "x=1") is True
        assert fast_line(log, logging.WARNING, "x=2") is None  # behind the first
        log.warning("%s", "x=3")  # a line through logging writes the waiting ones first
        assert slow == "<4>listgate.decision: x=1\n"
        assert _text(handler) == slow + "<4>listgate.decision: x=2\n<4>listgate.decision: x=3\n"


def test_fast_line_steps_aside_for_any_other_handler(restore_logging: None) -> None:
    """A second handler (on the root or on the way), a filter, or no listgate stream
    handler (syslog): fast_line writes nothing and says so, so the caller logs through
    logging."""
    log = logging.getLogger("listgate.decision")
    with only_listgate() as handler:
        for where in (logging.getLogger(), logging.getLogger("listgate"), log):
            extra = logging.NullHandler()
            where.addHandler(extra)
            try:
                assert fast_line(log, logging.INFO, "m") is False
            finally:
                where.removeHandler(extra)
        log.addFilter(lambda record: True)
        try:
            assert fast_line(log, logging.INFO, "m") is False
        finally:
            log.filters.clear()
        assert _text(handler) == ""
    setup_logging(logging.INFO, "syslog", "/nonexistent")
    assert fast_line(log, logging.INFO, "m") is False
