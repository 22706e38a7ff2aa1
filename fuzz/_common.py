"""Shared plumbing of the atheris harnesses: corpus seeding and the libFuzzer entry.

Each harness is a script: ``python fuzz/<name>.py [libFuzzer flags] [CORPUS_DIR ...]``.
Corpus directories that do not exist yet (or are empty) are created and seeded with the
harness's ``seeds()`` before libFuzzer starts, so a fresh checkout fuzzes from the real
Postfix/Sendmail captures in ``tests/data/postfix_capture``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTURE_DIR = REPO_ROOT / "tests" / "data" / "postfix_capture"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def capture_streams(direction: str) -> list[bytes]:
    """The captured byte streams of one direction: ``"mta"`` (MTA → milter) or
    ``"milter"`` (milter → MTA), one per scenario."""
    return [
        bytes.fromhex(path.read_text().strip())
        for path in sorted(CAPTURE_DIR.glob(f"*.{direction}.hex"))
    ]


def seed_corpus(argv: list[str], seeds: Iterable[bytes]) -> None:
    """Create and fill every corpus directory named in *argv* that is missing or empty."""
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    items = list(seeds)
    for corpus in dirs:
        if corpus.exists() and any(corpus.iterdir()):
            continue
        corpus.mkdir(parents=True, exist_ok=True)
        for item in items:
            name = hashlib.sha1(item, usedforsecurity=False).hexdigest()
            (corpus / name).write_bytes(item)


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """Seed the corpus directories, then hand over to libFuzzer (atheris)."""
    import atheris

    seed_corpus(sys.argv, seeds())
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
