"""Mailman's list directory as the backend uses it, and its copy on disk.

The directory (every list, the alias domains, the VERP delimiter) is what tells a list
recipient from any other. The backend keeps the newest one it has, and persists it to
``[mailman] directory_file`` so that a restart during a Mailman outage still knows which
addresses are lists.

Invariants:
- ``DirectoryView`` is built once per fetched directory and never changes: the resolver
  for ``listgate.decision.recipients.resolve`` and the list id → address map with it.
- The file is written atomically (a temporary file renamed over it); failing to read or
  write it is logged on ``listgate.cache`` and never raises: the backend goes on without.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from listgate.decision.recipients import ListDirectory
from listgate.mailman.client import Directory

__all__ = ["DirectoryView", "load_directory", "save_directory", "view"]

log = logging.getLogger("listgate.cache")


@dataclass(frozen=True, slots=True)
class DirectoryView:
    """A fetched directory with what lookups derive from it."""

    directory: Directory
    resolver: ListDirectory
    fqdn_by_id: dict[str, str]


def view(directory: Directory) -> DirectoryView:
    """The view of *directory*."""
    return DirectoryView(
        directory,
        ListDirectory(
            frozenset(directory.lists),
            dict(directory.alias_domains),
            directory.verp_delimiter,
        ),
        {list_id: fqdn for fqdn, list_id in directory.lists.items()},
    )


def load_directory(path: Path) -> DirectoryView | None:
    """The directory persisted at *path*, or None (no file, or not readable: logged)."""
    try:
        with path.open(encoding="utf-8") as fh:
            return view(Directory.from_json(json.load(fh)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring list directory file %s: %s", path, exc)
        return None


def save_directory(path: Path, directory: Directory) -> None:
    """Persist *directory* at *path* (failures are logged)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lists.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(directory.to_json(), fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot persist the list directory to %s: %s", path, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
