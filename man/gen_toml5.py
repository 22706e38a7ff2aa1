"""Generate man/listgate.toml.5 from listgate's configuration schema and the comments of
deploy/listgate.toml.example.

    python man/gen_toml5.py           # rewrite man/listgate.toml.5
    python man/gen_toml5.py --check   # exit 1 if the committed page is out of date

Invariants:
- The sections, the keys and their defaults come from ``listgate.config`` (the schema that
  ``listgate config check`` enforces, ``config_to_dict(Config())``); the prose for each key
  is the comment above it in deploy/listgate.toml.example, whose keys tests/unit/
  test_config.py holds equal to the schema's. A key the example does not have, or has and
  the schema does not, stops the generator: the page cannot drift from either.
- In the example, comment lines right after a section header and before a lone ``#`` line
  introduce the section; any other comment block belongs to the keys below it, and keys
  with no comment of their own share the block above them (``[lists."..."]`` keys that
  repeat a ``[gate]`` key refer to it instead).
- The output depends on nothing but those two inputs (no date or host in it), so
  regenerating gives the committed file byte for byte (tests/unit/test_manpages.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from listgate import __version__  # noqa: E402
from listgate import config as schema  # noqa: E402
from listgate.config_init import toml_value  # noqa: E402

EXAMPLE = REPO_ROOT / "deploy" / "listgate.toml.example"
PAGE = REPO_ROOT / "man" / "listgate.toml.5"
DATE = "2026-12-03"
"""The page's date; change it with the text it describes."""

_KEY_LINE = re.compile(r'^("[^"]*"|[A-Za-z0-9_-]+)\s*=\s*(.*)$')


@dataclass
class Group:
    """A comment block of the example and the keys right below it."""

    comment: list[str]
    keys: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One table of the example: its introduction, its key groups, its raw lines."""

    intro: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _section_name(header: str) -> str:
    name = header.strip()[1:-1]
    if name.startswith("lists."):
        return "lists"
    return name.split(".", 1)[0]


def parse_example(text: str) -> dict[str, Section]:
    """Section -> its introduction and key groups, read from the example's comments."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(_section_name(stripped), Section())
            current.lines.append(stripped)
            pending = []
            continue
        if current is None:
            continue  # the file's own header
        if stripped:
            current.lines.append(stripped)
        if stripped == "#":
            if not current.groups and not current.intro:
                current.intro, pending = pending, []
            continue
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        match = _KEY_LINE.match(stripped)
        if match is None:
            continue
        key = match.group(1)
        if key.startswith('"'):  # a [static.posters] entry: an example of "posters"
            key = "posters"
        if pending or not current.groups:
            current.groups.append(Group(pending))
            pending = []
        if key not in current.groups[-1].keys:
            current.groups[-1].keys.append(key)
    return sections


def schema_keys() -> dict[str, tuple[str, ...]]:
    """Section -> its keys, in the schema's order (``lists`` after ``gate``)."""
    keys: dict[str, tuple[str, ...]] = {}
    for name, (_, section_keys) in schema._SCHEMA.items():
        keys[name] = tuple(section_keys)
        if name == "gate":
            keys["lists"] = tuple(schema._LIST_KEYS)
    return keys


# --------------------------------------------------------------------------- roff


def _escape(text: str) -> str:
    return text.replace("\\", "\\e")


def paragraph(text: str) -> list[str]:
    """*text* as filled roff text lines of at most 79 bytes."""
    lines = textwrap.wrap(_escape(text), 79, break_long_words=False, break_on_hyphens=False)
    return [f"\\&{line}" if line.startswith((".", "'")) else line for line in lines]


def _default(section: str, key: str) -> str:
    defaults = schema.config_to_dict(schema.Config())
    if section == "lists":
        if key in defaults["gate"]:
            return "the [gate] value"
        if key == "reject_text":
            return "unset ([reply] reject_text)"
        return toml_value([])
    return toml_value(defaults[section][key])


def _title(section: str) -> str:
    return {"lists": '[lists."ADDRESS"]'}.get(section, f"[{section}]")


def render() -> str:
    """The whole page."""
    example = parse_example(EXAMPLE.read_text())
    keys = schema_keys()
    problems = []
    for section, names in keys.items():
        found = [k for g in example.get(section, Section()).groups for k in g.keys]
        if sorted(found) != sorted(names):
            problems.append(f"[{section}]: the example has {sorted(found)}, the schema "
                            f"{sorted(names)}")
    if set(example) != set(keys):
        problems.append(f"sections: the example has {sorted(example)}, the schema "
                        f"{sorted(keys)}")
    if problems:
        raise SystemExit("gen_toml5: " + "; ".join(problems))
    out = [
        ".\\\" Generated by man/gen_toml5.py from listgate/config.py and",
        ".\\\" deploy/listgate.toml.example; do not edit (run: python man/gen_toml5.py).",
        f'.TH LISTGATE.TOML 5 {DATE} "listgate {__version__}" "File Formats Manual"',
        ".SH NAME",
        "listgate.toml \\- configuration file of listgate(8)",
        ".SH SYNOPSIS",
        ".I /etc/listgate/listgate.toml",
        ".SH DESCRIPTION",
        *_DESCRIPTION,
        ".SH KEYS",
        *paragraph("Each section below is a TOML table, each entry a key with its default. "
                   "Durations are seconds (an integer or a decimal); every key may be "
                   "left out."),
    ]
    for section in keys:
        body = example[section]
        out += [".SS " + _quote(_title(section))]
        if body.intro:
            out += paragraph(" ".join(body.intro))
        for group in _split_gate_keys(section, body.groups):
            for i, key in enumerate(group.keys):
                out += [".TP" if i == 0 else ".TQ",
                        f"\\fB{key}\\fR = {_escape(_default(section, key))}"]
            if group.comment:
                out += paragraph(" ".join(group.comment))
            elif section == "lists":
                out += paragraph("As in [gate], for this list only.")
        if section in ("static", "lists"):
            out += [".PP", "For example:", ".PP", ".EX",
                    *(_escape(line) for line in body.lines if not line.startswith("#")),
                    ".EE"]
    out += _TAIL
    return "\n".join(out) + "\n"


def _split_gate_keys(section: str, groups: list[Group]) -> list[Group]:
    """In ``[lists."..."]``, keys without a comment that repeat a ``[gate]`` key get an
    entry of their own ("as in [gate]") instead of sharing the comment above them."""
    if section != "lists":
        return groups
    gate = set(schema._SCHEMA["gate"][1])
    split: list[Group] = []
    for group in groups:
        split.append(Group(group.comment, group.keys[:1]))
        for key in group.keys[1:]:
            if key in gate and split[-1].comment:
                split.append(Group([]))
            split[-1].keys.append(key)
    return split


def _quote(text: str) -> str:
    return '"' + text.replace('"', "\\(dq") + '"'


_DESCRIPTION = [
    *paragraph("listgate(8) reads one TOML file, given with listgate serve --config FILE. "
               "Its tables are the sections below; every key is optional and takes the "
               "default shown when it is left out."),
    ".PP",
    *paragraph("A file listgate cannot use stops it at startup: an unknown section or key "
               "(with a suggestion when one is close), a value of the wrong type or out of "
               "range, a password both inline and in a file. Every problem is reported, "
               "one line each, starting with the dotted key it is about "
               "(milter.max_connections: must be an integer >= 1, got \"ten\"). "
               "listgate config check FILE reports the same lines without starting, or "
               "prints the effective configuration with the Mailman REST password shown "
               "as ***."),
    ".PP",
    *paragraph("SIGHUP re-reads the file: overrides, reply texts, the failure policy, "
               "bypass rules, cache lifetimes, timeouts and logging change at once; "
               "listen addresses, workers, uvloop, [backend] and [mailman] take effect at "
               "the next restart. A bad file is logged and the running configuration "
               "kept."),
    ".PP",
    *paragraph("listgate config init writes a commented file to start from, for the static "
               "map or, from Mailman's mailman.cfg, for Mailman core's REST API."),
    ".PP",
    *paragraph("A listen spec is inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/ABSOLUTE/PATH; "
               "libmilter's inet:PORT@HOST is accepted too."),
]

_TAIL = [
    ".SH FILES",
    ".TP",
    ".I /etc/listgate/listgate.toml",
    "The configuration file, by convention.",
    ".TP",
    ".I /etc/listgate/mailman\\-password",
    "The Mailman REST password ([mailman] password_file), mode 0640.",
    ".SH EXAMPLES",
    "A static map: only boss@ and deputy@ may post to announce@example.org.",
    ".PP",
    ".EX",
    "[milter]",
    'listen = "inet:127.0.0.1:8890"',
    "",
    "[static.posters]",
    '"announce@example.org" = ["boss@example.org", "deputy@example.org"]',
    ".EE",
    ".PP",
    "Mailman core's REST API on this host, rolled out in monitor mode first:",
    ".PP",
    ".EX",
    "[backend]",
    'type = "mailman"',
    "",
    "[mailman]",
    'url = "http://127.0.0.1:8001/3.1"',
    'user = "restadmin"',
    'password_file = "/etc/listgate/mailman\\-password"',
    "",
    "[gate]",
    'mode = "monitor"',
    ".EE",
    ".SH SEE ALSO",
    ".BR listgate (8)",
]


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with --check say whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if man/listgate.toml.5 differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python man/gen_toml5.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
