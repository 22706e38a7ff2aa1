"""The man pages: listgate(8) names every command and option the parser defines (and no
other), listgate.toml(5) is what man/gen_toml5.py generates and lists exactly the schema's
keys, both lint clean with mandoc, and the package installs both."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from listgate import config as config_module
from listgate.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
MAN = REPO_ROOT / "man"
PAGES = [MAN / "listgate.8", MAN / "listgate.toml.5"]


def generator() -> ModuleType:
    """man/gen_toml5.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("gen_toml5", MAN / "gen_toml5.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def plain(roff: str) -> str:
    """roff source as the words a reader sees: font and hyphenation escapes gone, \\- as -."""
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-")
    text = text.replace("\\&", "").replace("\\%", "")
    return re.sub(r'(?m)^\.(?:B|I|BR|RB|BI|IR|RI)\s+', "", text).replace('"', "")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) of the CLI, the top level included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def leaf_commands() -> dict[str, argparse.ArgumentParser]:
    """"serve", "config check", ...: the commands that take no further subcommand."""
    return {" ".join(path): p for path, p in commands(build_parser()) if path and not any(
        isinstance(a, argparse._SubParsersAction) for a in p._actions)}


def subsections(roff: str) -> dict[str, str]:
    """.SS title -> its text, for listgate(8)'s OPTIONS."""
    options = roff.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
    parts = re.split(r"(?m)^\.SS (.+)$", options)
    return {parts[i].strip('"'): plain(parts[i + 1]) for i in range(1, len(parts), 2)}


def test_listgate8_names_every_command_and_option() -> None:
    """Each leaf command is in SYNOPSIS and COMMANDS and has an OPTIONS subsection naming
    each of its options and positionals; --version and --help are there too."""
    roff = (MAN / "listgate.8").read_text()
    text = plain(roff)
    synopsis = plain(roff.split(".SH SYNOPSIS", 1)[1].split(".SH ", 1)[0])
    described = plain(roff.split(".SH COMMANDS", 1)[1].split(".SH ", 1)[0])
    sections = subsections(roff)
    assert set(sections) == set(leaf_commands())
    for name, parser in leaf_commands().items():
        assert f"listgate {name}" in synopsis, name
        assert re.search(rf"(?m)^\.TP\n{re.escape(name)}$", described), name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            words = action.option_strings or [str(action.metavar or action.dest).upper()]
            for word in words:
                assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])",
                                 sections[name]), (name, word)
                if word.startswith("--"):
                    assert word in synopsis, (name, word)
    for top in ("--version", "--help", "-h"):
        assert top in text


def test_listgate8_names_no_option_the_parser_lacks() -> None:
    """Every --option listgate(8) shows for listgate exists (postconf's are not ours)."""
    known = {o for _, p in commands(build_parser()) for a in p._actions
             for o in a.option_strings}
    text = plain((MAN / "listgate.8").read_text())
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert shown <= known, shown - known


def test_toml5_is_generated_from_the_schema() -> None:
    """Regenerating listgate.toml(5) gives the committed page (python man/gen_toml5.py)."""
    assert generator().render() == (MAN / "listgate.toml.5").read_text(), (
        "man/listgate.toml.5 is out of date: run python man/gen_toml5.py")


def test_toml5_lists_exactly_the_schema_keys() -> None:
    """listgate.toml(5) has one entry per schema key, in each section, and no other."""
    roff = (MAN / "listgate.toml.5").read_text()
    page: dict[str, list[str]] = {}
    section = ""
    lines = roff.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            section = ""
        elif line.startswith(".SS "):
            section = line[4:].strip('"').replace("\\(dq", '"')
            page[section] = []
        elif line in (".TP", ".TQ") and section:
            page[section].append(re.match(r"\\fB(\w+)\\fR = ", lines[i + 1]).group(1))  # type: ignore[union-attr]
    want = {f"[{name}]": list(keys) for name, (_, keys) in config_module._SCHEMA.items()}
    want['[lists."ADDRESS"]'] = list(config_module._LIST_KEYS)
    assert {s: sorted(k) for s, k in page.items()} == {s: sorted(k) for s, k in want.items()}


def test_generator_refuses_an_example_that_drifted(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A key missing from deploy/listgate.toml.example stops the generator, naming it."""
    gen = generator()
    example = tmp_path / "example.toml"
    example.write_text(gen.EXAMPLE.read_text().replace("max_attributes = 64\n", ""))
    monkeypatch.setattr(gen, "EXAMPLE", example)
    with pytest.raises(SystemExit, match=r"\[policy\]: the example has"):
        gen.render()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_is_silent(page: Path) -> None:
    """mandoc -T lint (style messages included) reports nothing."""
    mandoc = shutil.which("mandoc")
    assert mandoc, "mandoc is missing: run bash .ci/install-test-deps.sh (Debian: mandoc)"
    proc = subprocess.run([mandoc, "-T", "lint", "-W", "style", str(page)],
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_pages_are_installed_with_the_package() -> None:
    """pyproject.toml installs every page of man/ into share/man/manN."""
    data_files = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["data-files"]
    installed = {(target, Path(f).name) for target, files in data_files.items() for f in files}
    assert installed == {(f"share/man/man{p.suffix[1:]}", p.name) for p in PAGES}
    assert sorted(MAN.glob("*.[1-9]")) == sorted(PAGES)
