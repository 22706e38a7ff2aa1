"""listgate's configuration: one typed TOML schema with documented defaults.

Invariants:
- Every setting is a field of a frozen dataclass below, with its default and a docstring
  (meaning, unit, default). ``_SCHEMA`` maps each TOML section and key to its dataclass
  field, its parser and its renderer; a unit test checks both stay in step.
- Parsing never stops at the first problem: all problems are collected, each one line that
  starts with the dotted key it is about (``milter.max_connections: must be ...``), and one
  ``ConfigError(problems, source)`` is raised. Unknown sections and keys are problems, with
  a "did you mean" suggestion when one is close.
- TOML types are checked strictly: a bool is not an integer, a string is not a list.
- ``config_to_dict`` gives back TOML-shaped data that ``parse_config`` accepts and that
  yields an equal ``Config`` (apart from ``source``).
- No I/O except in ``load_config``, which reads one file.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

from listgate.engine import (
    DSN_PATTERN,
    FailurePolicy,
    ReplyTexts,
    reply_template_problem,
)
from listgate.errors import ConfigError
from listgate.model import normalize_address
from listgate.server.spec import ListenSpec, parse_listen_spec

__all__ = [
    "EXAMPLE_CONFIG_PATH",
    "BackendConfig",
    "Config",
    "FailureConfig",
    "LogConfig",
    "MilterConfig",
    "StaticConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]

EXAMPLE_CONFIG_PATH = Path(__file__).resolve().parent / "data" / "example.toml"
"""The example configuration shipped inside the package: a runnable static map."""

DEFAULT_LISTEN = (ListenSpec("inet", "127.0.0.1", 8890, ""),)
LOG_LEVELS: Mapping[str, int] = MappingProxyType(
    {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
     "error": logging.ERROR}
)
BACKEND_TYPES = ("static",)
MIN_PACKET_SIZE = 65_536
"""A milter body chunk is up to 65535 bytes plus the command byte."""
MAX_PACKET_SIZE = 1 << 30


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """``[milter]``: the milter listener and its limits."""

    listen: tuple[ListenSpec, ...] = DEFAULT_LISTEN
    """Sockets to listen on (a spec or a list of specs). Default: ["inet:127.0.0.1:8890"]."""
    socket_mode: int = 0o660
    """Permissions of unix: sockets, written as an octal string. Default: "0660"."""
    max_connections: int = 1000
    """Concurrent milter connections; more are closed at accept. Default: 1000."""
    max_packet_size: int = 1_048_576
    """Bytes; a larger claimed packet length closes the connection. Default: 1048576."""
    idle_timeout: float = 300.0
    """Seconds without a command before the connection is closed. Default: 300."""
    command_timeout: float = 30.0
    """Seconds to receive the rest of a packet once it has started. Default: 30."""
    shutdown_timeout: float = 10.0
    """Seconds SIGTERM waits for in-flight commands before closing. Default: 10."""


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """``[backend]``: where posting rights come from."""

    type: str = "static"
    """Backend kind: "static" (the ``[static]`` map). "mailman" comes next. Default: "static"."""


@dataclass(frozen=True, slots=True)
class StaticConfig:
    """``[static]``: the static backend's map."""

    posters: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """List posting address -> addresses allowed to post, normalised. Default: no lists."""


@dataclass(frozen=True, slots=True)
class FailureConfig:
    """``[failure]``: what to answer when the backend cannot."""

    policy: FailurePolicy = FailurePolicy.TEMPFAIL
    """"tempfail" (4xx, retried later) or "accept" (fail-open: post ungated). Default: tempfail."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: logging."""

    level: str = "info"
    """Lowest level logged: "debug", "info", "warning" or "error". Default: "info"."""

    @property
    def level_number(self) -> int:
        """``level`` as a ``logging`` level number."""
        return LOG_LEVELS[self.level]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``Config()`` is the defaults."""

    milter: MilterConfig = field(default_factory=MilterConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    reply: ReplyTexts = field(default_factory=ReplyTexts)
    """``[reply]``: SMTP reply codes and text templates (see ``ReplyTexts``)."""
    failure: FailureConfig = field(default_factory=FailureConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<defaults>"
    """Where the configuration came from (a path, or "<defaults>")."""


# --------------------------------------------------------------------------- parsing helpers


class _Invalid(Exception):
    """One or more complete problem lines about one key."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = problems


_Parser = Callable[[object, str], object]
_Renderer = Callable[[object], object]


def _show(value: object) -> str:
    """*value* as the TOML it came from, shortened, for "got ..." in a problem."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=True)
        return shown if len(shown) <= 80 else shown[:76] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _bad(key: str, expected: str, value: object) -> _Invalid:
    return _Invalid(f"{key}: {expected}, got {_show(value)}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _integer(low: int, high: int | None = None) -> _Parser:
    expected = (f"must be an integer >= {low}" if high is None
                else f"must be an integer from {low} to {high}")

    def parse(value: object, key: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, expected, value)
        if value < low or (high is not None and value > high):
            raise _bad(key, expected, value)
        return value

    return parse


def _seconds(*, allow_zero: bool) -> _Parser:
    expected = f"must be a number of seconds {'>=' if allow_zero else '>'} 0"

    def parse(value: object, key: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(key, expected, value)
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
            raise _bad(key, expected, value)
        return seconds

    return parse


def _choice(choices: tuple[str, ...]) -> _Parser:
    expected = "must be one of " + ", ".join(f'"{c}"' for c in choices)

    def parse(value: object, key: str) -> object:
        if not isinstance(value, str):
            raise _bad(key, expected, value)
        if value not in choices:
            raise _Invalid(
                f"{key}: {expected}, got {_show(value)}{_suggest(value, list(choices))}"
            )
        return value

    return parse


def _failure_policy(value: object, key: str) -> object:
    name = _choice(tuple(p.value for p in FailurePolicy))(value, key)
    return FailurePolicy(name)


def _string(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _bad(key, "must be a string", value)
    return value


def _listen(value: object, key: str) -> object:
    items: list[tuple[str, object]]
    if isinstance(value, str):
        items = [(key, value)]
    elif isinstance(value, list):
        if not value:
            raise _Invalid(f"{key}: must name at least one socket")
        items = [(f"{key}[{i}]", item) for i, item in enumerate(value)]
    else:
        raise _bad(key, 'must be a listen spec such as "inet:127.0.0.1:8890", or a list', value)
    problems: list[str] = []
    specs: list[ListenSpec] = []
    for item_key, item in items:
        if not isinstance(item, str):
            problems.append(f'{item_key}: must be a string such as "inet:127.0.0.1:8890", '
                            f"got {_show(item)}")
            continue
        try:
            spec = parse_listen_spec(item.strip())
        except ValueError as exc:
            problems.append(f"{item_key}: {exc}")
            continue
        if spec in specs:
            problems.append(f"{item_key}: {_show(str(spec))} is listed twice")
        specs.append(spec)
    if problems:
        raise _Invalid(*problems)
    return tuple(specs)


def _socket_mode(value: object, key: str) -> object:
    expected = 'must be an octal string from "0000" to "0777", such as "0660"'
    if not isinstance(value, str):
        raise _bad(key, expected, value)
    match = re.fullmatch(r"(?:0o|0)?([0-7]{1,3})", value.strip())
    if match is None:
        raise _bad(key, expected, value)
    return int(match.group(1), 8)


def _dsn(klass: str) -> _Parser:
    expected = f'must be an enhanced status code "{klass}.X.Y" (e.g. "{klass}.7.1")'

    def parse(value: object, key: str) -> object:
        if not isinstance(value, str) or not DSN_PATTERN.match(value) or value[0] != klass:
            raise _bad(key, expected, value)
        return value

    return parse


def _template(value: object, key: str) -> object:
    text = _string(value, key)
    problem = reply_template_problem(text)
    if problem is not None:
        raise _Invalid(f"{key}: {problem}, got {_show(text)}")
    return text


def _address_problem(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or re.search(r"[\s\x00-\x1f\x7f]", address):
        return 'must be an address like "user@example.org"'
    return None


def _posters(value: object, key: str) -> object:
    if not isinstance(value, dict):
        raise _bad(key, 'must be a table of "list@domain" = ["poster@domain", ...]', value)
    problems: list[str] = []
    posters: dict[str, tuple[str, ...]] = {}
    written_as: dict[str, str] = {}
    for raw_list, raw_posters in value.items():
        list_key = f"{key}.{_toml_key(raw_list)}"
        list_address = normalize_address(raw_list)
        problem = _address_problem(list_address)
        if problem is not None:
            problems.append(f"{list_key}: the list posting address {problem}")
        elif list_address in written_as:
            problems.append(f"{list_key}: the same list as {_show(written_as[list_address])} "
                            "(case and <> do not matter)")
        written_as.setdefault(list_address, raw_list)
        if not isinstance(raw_posters, list):
            problems.append(f'{list_key}: must be an array of addresses such as '
                            f'["boss@example.org"], got {_show(raw_posters)}')
            continue
        allowed: set[str] = set()
        for i, raw_poster in enumerate(raw_posters):
            item_key = f"{list_key}[{i}]"
            if not isinstance(raw_poster, str):
                problems.append(f"{item_key}: must be an address string, got {_show(raw_poster)}")
                continue
            poster = normalize_address(raw_poster)
            if not poster:
                problems.append(f"{item_key}: {_show(raw_poster)} is the null sender (bounces), "
                                "which can never be a poster; remove it")
            elif (problem := _address_problem(poster)) is not None:
                problems.append(f"{item_key}: {problem}, got {_show(raw_poster)}")
            else:
                allowed.add(poster)
        posters[list_address] = tuple(sorted(allowed))
    if problems:
        raise _Invalid(*problems)
    return MappingProxyType(posters)


# --------------------------------------------------------------------------- rendering helpers


def _as_is(value: object) -> object:
    return value


def _render_listen(value: object) -> object:
    assert isinstance(value, tuple)
    return [str(spec) for spec in value]


def _render_mode(value: object) -> object:
    assert isinstance(value, int)
    return f"{value:04o}"


def _render_enum(value: object) -> object:
    assert isinstance(value, FailurePolicy)
    return value.value


def _render_posters(value: object) -> object:
    assert isinstance(value, Mapping)
    return {list_address: list(allowed) for list_address, allowed in value.items()}


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class _Key:
    parse: _Parser
    render: _Renderer = _as_is


_SCHEMA: Mapping[str, tuple[type, Mapping[str, _Key]]] = {
    "milter": (MilterConfig, {
        "listen": _Key(_listen, _render_listen),
        "socket_mode": _Key(_socket_mode, _render_mode),
        "max_connections": _Key(_integer(1)),
        "max_packet_size": _Key(_integer(MIN_PACKET_SIZE, MAX_PACKET_SIZE)),
        "idle_timeout": _Key(_seconds(allow_zero=False)),
        "command_timeout": _Key(_seconds(allow_zero=False)),
        "shutdown_timeout": _Key(_seconds(allow_zero=True)),
    }),
    "backend": (BackendConfig, {
        "type": _Key(_choice(BACKEND_TYPES)),
    }),
    "static": (StaticConfig, {
        "posters": _Key(_posters, _render_posters),
    }),
    "reply": (ReplyTexts, {
        "reject_code": _Key(_integer(500, 599)),
        "reject_dsn": _Key(_dsn("5")),
        "reject_text": _Key(_template),
        "tempfail_code": _Key(_integer(400, 499)),
        "tempfail_dsn": _Key(_dsn("4")),
        "tempfail_text": _Key(_template),
    }),
    "failure": (FailureConfig, {
        "policy": _Key(_failure_policy, _render_enum),
    }),
    "log": (LogConfig, {
        "level": _Key(_choice(tuple(LOG_LEVELS))),
    }),
}
"""Section -> (dataclass, key -> how to parse and render it)."""


def _unknown_key(section: str, key: str, known: list[str]) -> str:
    hint = _suggest(key, known)
    if not hint and section == "static" and "@" in key:
        hint = ' (list posters go under [static.posters])'
    return f"{section}.{_toml_key(key)}: unknown key{hint}"


def _unknown_section(name: str) -> str:
    hint = _suggest(name, list(_SCHEMA))
    if not hint:
        homes = [s for s, (_, keys) in _SCHEMA.items() if name in keys]
        if homes:
            hint = f" (did you mean {name} in [{homes[0]}]?)"
    return f"{_toml_key(name)}: unknown section{hint}"


def _parse_section(name: str, value: object, problems: list[str]) -> object | None:
    cls, keys = _SCHEMA[name]
    if not isinstance(value, dict):
        problems.append(f"{name}: must be a table ([{name}]), got {_show(value)}")
        return None
    kwargs: dict[str, object] = {}
    before = len(problems)
    for key, raw in value.items():
        spec = keys.get(key)
        if spec is None:
            problems.append(_unknown_key(name, key, list(keys)))
            continue
        try:
            kwargs[key] = spec.parse(raw, f"{name}.{key}")
        except _Invalid as exc:
            problems.extend(exc.problems)
    if len(problems) > before:
        return None
    try:
        built: object = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # cross-field checks of the dataclass itself
        problems.append(f"{name}: {exc}")
        return None
    return built


def parse_config(data: Mapping[str, object], source: str = "<config>") -> Config:
    """Build a ``Config`` from TOML-shaped *data*; one ``ConfigError`` lists all problems."""
    problems: list[str] = []
    sections: dict[str, object] = {}
    for name, value in data.items():
        if name not in _SCHEMA:
            problems.append(_unknown_section(name))
            continue
        section = _parse_section(name, value, problems)
        if section is not None:
            sections[name] = section
    if problems:
        raise ConfigError(problems, source)
    return Config(**sections, source=source)  # type: ignore[arg-type]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse the TOML file at *path*; every failure is a ``ConfigError`` naming it."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: byte {exc.start} ({exc.reason})"], source) from None
    return parse_config(data, source)


def config_to_dict(cfg: Config) -> dict[str, dict[str, object]]:
    """*cfg* as TOML-shaped data (every key, defaults included), for printing.

    There are no secrets yet; when the Mailman backend adds its REST password, redact it
    here (a ``_Key(..., secret=True)`` flag rendering as "********").
    """
    result: dict[str, dict[str, object]] = {}
    for name, (_cls, keys) in _SCHEMA.items():
        section = getattr(cfg, name)
        result[name] = {key: spec.render(getattr(section, key)) for key, spec in keys.items()}
    return result


def _schema_fields() -> dict[str, tuple[str, ...]]:
    """Section -> dataclass field names, for the test that keeps ``_SCHEMA`` in step."""
    return {name: tuple(f.name for f in fields(cls)) for name, (cls, _) in _SCHEMA.items()}
