"""The user documentation (README.md and docs/*.md) stands on its own: no path of the
development machine, each docs page says what it is for first, README links every page,
and every relative link points at a file of the project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
USER_DOCS = [REPO_ROOT / "README.md", *DOCS]

OUTSIDE = re.compile(
    r"(?<![\w.])(?:\.\./|~/)"           # relative paths that leave the checkout, home dirs
    r"|/work/|/tmp/|/root/|/home/"      # the development machine's directories
    r"|shared/reference"                # its private reference notes
)
"""A path that points outside the project (as a user has it)."""


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda p: p.name)
def test_no_path_outside_the_project(page: Path) -> None:
    """A page names no path outside the project (nothing a user of it does not have)."""
    hits = [f"{page.name}:{n}: {line.strip()}"
            for n, line in enumerate(page.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


@pytest.mark.parametrize("text", [
    "see /work/shared/reference/postfix-harness.md", "in ../shared/x.md",
    "--out /tmp/lg/run", "shared/reference/mailman-core.md",
])
def test_outside_pattern_catches(text: str) -> None:
    """The pattern above finds each kind of outside path it is meant to."""
    assert OUTSIDE.search(text)


@pytest.mark.parametrize("text", [
    "/etc/listgate/listgate.toml", "/opt/listgate/bin/pip", "tests/data/postfix_capture/",
    "/var/lib/listgate/lists.json", "docs/performance.md",
])
def test_outside_pattern_spares_user_paths(text: str) -> None:
    """Paths a user does have (system paths, project paths) are not flagged."""
    assert not OUTSIDE.search(text)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_page_says_what_it_is_for_first(page: Path) -> None:
    """A docs page opens with its title, then a paragraph of prose (not a heading, list,
    table or code)."""
    blocks = [b.strip() for b in page.read_text().split("\n\n") if b.strip()]
    assert blocks[0].startswith("# ")
    assert "\n" not in blocks[0]
    assert not blocks[1].startswith(("#", "-", "*", "|", "```", ">")), blocks[1][:80]
    assert len(blocks[1].split()) >= 15, blocks[1]


def test_readme_links_every_docs_page() -> None:
    """README's Documentation list links every docs/*.md and both man pages."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(([^)#]+)\)", section))
    want = {f"docs/{p.name}" for p in DOCS} | {"man/listgate.8", "man/listgate.toml.5"}
    assert want <= linked, want - linked


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    """Every relative Markdown link points at a file or directory of the project."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    missing = [link for link in links if not re.match(r"[a-z]+:", link)
               and not (page.parent / link).exists()]
    assert missing == []
