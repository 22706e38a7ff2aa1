"""Tests of listgate.config: defaults, shipped examples, and problems that name their keys."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from listgate import config as config_module
from listgate.config import (
    EXAMPLE_CONFIG_PATH,
    Config,
    config_to_dict,
    load_config,
    parse_config,
)
from listgate.engine import FailurePolicy, ReplyTexts
from listgate.errors import ConfigError
from listgate.server.spec import ListenSpec

DEPLOY_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "listgate.toml.example"


def problems_of(data: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.toml")
    return info.value.problems


def test_defaults() -> None:
    """An empty file gives the documented defaults."""
    cfg = parse_config({}, "empty.toml")
    assert cfg == Config(source="empty.toml")
    assert cfg.milter.listen == (ListenSpec("inet", "127.0.0.1", 8890, ""),)
    assert cfg.milter.socket_mode == 0o660
    assert (cfg.milter.max_connections, cfg.milter.max_packet_size) == (1000, 1_048_576)
    assert (cfg.milter.idle_timeout, cfg.milter.command_timeout,
            cfg.milter.shutdown_timeout) == (300.0, 30.0, 10.0)
    assert cfg.backend.type == "static"
    assert dict(cfg.static.posters) == {}
    assert cfg.reply == ReplyTexts()
    assert cfg.failure.policy is FailurePolicy.TEMPFAIL
    assert cfg.log.level == "info"
    assert cfg.log.level_number == logging.INFO


def test_schema_matches_dataclasses() -> None:
    """Every dataclass field has exactly one schema entry, and vice versa."""
    for section, names in config_module._schema_fields().items():
        assert tuple(config_module._SCHEMA[section][1]) == names, section
    assert set(config_module._SCHEMA) == {"milter", "backend", "static", "reply", "failure",
                                          "log"}


def test_packaged_example_loads() -> None:
    """The example shipped in the package loads and gates announce@ for boss/deputy."""
    assert EXAMPLE_CONFIG_PATH.parent.name == "data"
    assert EXAMPLE_CONFIG_PATH.parent.parent == Path(config_module.__file__).resolve().parent
    cfg = load_config(EXAMPLE_CONFIG_PATH)
    assert cfg.source == str(EXAMPLE_CONFIG_PATH)
    assert [str(s) for s in cfg.milter.listen] == ["inet:127.0.0.1:8890"]
    assert dict(cfg.static.posters) == {
        "announce@example.org": ("boss@example.org", "deputy@example.org"),
    }


def test_deploy_example_documents_every_key_with_its_default() -> None:
    """deploy/listgate.toml.example loads, names every key, and shows the defaults."""
    cfg = load_config(DEPLOY_EXAMPLE)
    raw = tomllib.loads(DEPLOY_EXAMPLE.read_text())
    defaults = config_to_dict(Config())
    assert {s: set(keys) for s, keys in raw.items()} == {s: set(k) for s, k in defaults.items()}
    shown = config_to_dict(cfg)
    del shown["static"], defaults["static"]  # the posters map is an example, not a default
    assert shown == defaults


def test_round_trip() -> None:
    """config_to_dict output parses back to an equal Config."""
    cfg = parse_config({
        "milter": {"listen": ["unix:/run/listgate.sock", "inet6:[::1]:9"], "socket_mode": "0600",
                   "idle_timeout": 5},
        "static": {"posters": {"<A@X.org>": ["<P@x.org>", "q@x.org"], "b@x.org": []}},
        "reply": {"reject_text": "{{no}} {list}"},
        "failure": {"policy": "accept"},
        "log": {"level": "debug"},
    }, "a")
    assert parse_config(config_to_dict(cfg), "b") == replace(cfg, source="b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("inet:127.0.0.1:1", ("inet:127.0.0.1:1",), id="string"),
        pytest.param(["inet:127.0.0.1:1"], ("inet:127.0.0.1:1",), id="list-of-one"),
        pytest.param(["unix:/run/l.sock", "inet6:[::1]:2", "inet:3@localhost"],
                     ("unix:/run/l.sock", "inet6:[::1]:2", "inet:localhost:3"), id="list"),
    ],
)
def test_listen_string_or_list(value: object, expected: tuple[str, ...]) -> None:
    """milter.listen takes one spec or a list of specs."""
    cfg = parse_config({"milter": {"listen": value}})
    assert tuple(str(s) for s in cfg.milter.listen) == expected


@pytest.mark.parametrize(("text", "mode"), [("0660", 0o660), ("600", 0o600), ("0o640", 0o640),
                                            ("0000", 0), ("0777", 0o777)])
def test_socket_mode_octal(text: str, mode: int) -> None:
    """milter.socket_mode is read as octal."""
    assert parse_config({"milter": {"socket_mode": text}}).milter.socket_mode == mode


def test_posters_normalised() -> None:
    """[static.posters] keys and values are normalised, deduplicated and sorted."""
    cfg = parse_config({"static": {"posters": {
        "<Announce@Example.ORG>": ["Deputy@example.org", "<boss@example.org>",
                                   "BOSS@example.org"]}}})
    assert dict(cfg.static.posters) == {
        "announce@example.org": ("boss@example.org", "deputy@example.org"),
    }


def test_integers_accepted_for_seconds() -> None:
    """A TOML integer is fine where seconds are expected."""
    assert parse_config({"milter": {"command_timeout": 7}}).milter.command_timeout == 7.0
    assert parse_config({"milter": {"shutdown_timeout": 0}}).milter.shutdown_timeout == 0.0


BAD = [
    ("max-connections-string", {"milter": {"max_connections": "ten"}},
     'milter.max_connections: must be an integer >= 1, got "ten"'),
    ("max-connections-bool", {"milter": {"max_connections": True}},
     "milter.max_connections: must be an integer >= 1, got true"),
    ("max-connections-float", {"milter": {"max_connections": 10.0}},
     "milter.max_connections: must be an integer >= 1, got 10.0"),
    ("max-connections-zero", {"milter": {"max_connections": 0}},
     "milter.max_connections: must be an integer >= 1, got 0"),
    ("max-packet-size-small", {"milter": {"max_packet_size": 1024}},
     "milter.max_packet_size: must be an integer from 65536 to 1073741824, got 1024"),
    ("idle-timeout-zero", {"milter": {"idle_timeout": 0}},
     "milter.idle_timeout: must be a number of seconds > 0, got 0"),
    ("command-timeout-negative", {"milter": {"command_timeout": -1.5}},
     "milter.command_timeout: must be a number of seconds > 0, got -1.5"),
    ("shutdown-timeout-inf", {"milter": {"shutdown_timeout": float("inf")}},
     "milter.shutdown_timeout: must be a number of seconds >= 0, got inf"),
    ("idle-timeout-string", {"milter": {"idle_timeout": "300"}},
     'milter.idle_timeout: must be a number of seconds > 0, got "300"'),
    ("socket-mode-int", {"milter": {"socket_mode": 660}},
     'milter.socket_mode: must be an octal string from "0000" to "0777", such as "0660", '
     "got 660"),
    ("socket-mode-not-octal", {"milter": {"socket_mode": "0680"}},
     'milter.socket_mode: must be an octal string from "0000" to "0777", such as "0660", '
     'got "0680"'),
    ("socket-mode-setuid", {"milter": {"socket_mode": "4755"}},
     'milter.socket_mode: must be an octal string from "0000" to "0777", such as "0660", '
     'got "4755"'),
    ("listen-bad-spec", {"milter": {"listen": "tcp:1.2.3.4:5"}},
     "milter.listen: 'tcp:1.2.3.4:5': unknown socket family 'tcp' (use inet, inet6 or unix)"),
    ("listen-bad-item", {"milter": {"listen": ["inet:127.0.0.1:1", "unix:relative"]}},
     "milter.listen[1]: 'unix:relative': unix socket path must be absolute"),
    ("listen-not-string", {"milter": {"listen": [8890]}},
     'milter.listen[0]: must be a string such as "inet:127.0.0.1:8890", got 8890'),
    ("listen-empty", {"milter": {"listen": []}}, "milter.listen: must name at least one socket"),
    ("listen-duplicate", {"milter": {"listen": ["inet:127.0.0.1:1", "inet:1@127.0.0.1"]}},
     'milter.listen[1]: "inet:127.0.0.1:1" is listed twice'),
    ("listen-table", {"milter": {"listen": {}}},
     'milter.listen: must be a listen spec such as "inet:127.0.0.1:8890", or a list, '
     "got a table"),
    ("unknown-key", {"milter": {"lisen": "inet:127.0.0.1:1"}},
     'milter.lisen: unknown key (did you mean "listen"?)'),
    ("unknown-key-no-suggestion", {"milter": {"zzz": 1}}, "milter.zzz: unknown key"),
    ("unknown-section", {"miltr": {}}, 'miltr: unknown section (did you mean "milter"?)'),
    ("top-level-key", {"listen": "inet:127.0.0.1:1"},
     "listen: unknown section (did you mean listen in [milter]?)"),
    ("section-not-table", {"log": "debug"}, 'log: must be a table ([log]), got "debug"'),
    ("backend-type", {"backend": {"type": "ldap"}}, 'backend.type: must be one of "static", '
     'got "ldap"'),
    ("failure-policy", {"failure": {"policy": "acept"}},
     'failure.policy: must be one of "tempfail", "accept", got "acept" (did you mean "accept"?)'),
    ("log-level", {"log": {"level": "INFO"}},
     'log.level: must be one of "debug", "info", "warning", "error", got "INFO"'),
    ("reject-code-4xx", {"reply": {"reject_code": 451}},
     "reply.reject_code: must be an integer from 500 to 599, got 451"),
    ("tempfail-code-5xx", {"reply": {"tempfail_code": 550}},
     "reply.tempfail_code: must be an integer from 400 to 499, got 550"),
    ("reject-dsn-class", {"reply": {"reject_dsn": "4.7.1"}},
     'reply.reject_dsn: must be an enhanced status code "5.X.Y" (e.g. "5.7.1"), got "4.7.1"'),
    ("tempfail-dsn-shape", {"reply": {"tempfail_dsn": "4.3"}},
     'reply.tempfail_dsn: must be an enhanced status code "4.X.Y" (e.g. "4.7.1"), got "4.3"'),
    ("reject-text-placeholder", {"reply": {"reject_text": "{recipient} no"}},
     "reply.reject_text: unknown placeholder {recipient} (only {sender} and {list} are "
     'allowed), got "{recipient} no"'),
    ("tempfail-text-crlf", {"reply": {"tempfail_text": "a\r\n250 ok"}},
     "reply.tempfail_text: must be printable US-ASCII on one line (no control or non-ASCII "
     'characters), got "a\\r\\n250 ok"'),
    ("reject-text-too-long", {"reply": {"reject_text": "x" * 901}},
     "reply.reject_text: must be at most 900 bytes long (this one is 901), got \""
     + "x" * 75 + '..."'),
    ("reject-text-not-string", {"reply": {"reject_text": 5}},
     "reply.reject_text: must be a string, got 5"),
    ("posters-null-sender", {"static": {"posters": {"a@x.org": ["b@x.org", "<>"]}}},
     'static.posters."a@x.org"[1]: "<>" is the null sender (bounces), which can never be a '
     "poster; remove it"),
    ("posters-empty-string", {"static": {"posters": {"a@x.org": [""]}}},
     'static.posters."a@x.org"[0]: "" is the null sender (bounces), which can never be a '
     "poster; remove it"),
    ("posters-not-address", {"static": {"posters": {"a@x.org": ["boss"]}}},
     'static.posters."a@x.org"[0]: must be an address like "user@example.org", got "boss"'),
    ("posters-not-string", {"static": {"posters": {"a@x.org": [1]}}},
     'static.posters."a@x.org"[0]: must be an address string, got 1'),
    ("posters-value-string", {"static": {"posters": {"a@x.org": "b@x.org"}}},
     'static.posters."a@x.org": must be an array of addresses such as ["boss@example.org"], '
     'got "b@x.org"'),
    ("posters-list-not-address", {"static": {"posters": {"announce": []}}},
     'static.posters.announce: the list posting address must be an address like '
     '"user@example.org"'),
    ("posters-duplicate-list", {"static": {"posters": {"a@x.org": [], "<A@X.ORG>": []}}},
     'static.posters."<A@X.ORG>": the same list as "a@x.org" (case and <> do not matter)'),
    ("posters-not-table", {"static": {"posters": ["a@x.org"]}},
     'static.posters: must be a table of "list@domain" = ["poster@domain", ...], got an array'),
    ("posters-in-static", {"static": {"a@x.org": []}},
     'static."a@x.org": unknown key (list posters go under [static.posters])'),
]


@pytest.mark.parametrize(("data", "problem"), [(d, p) for _, d, p in BAD],
                         ids=[i for i, _, _ in BAD])
def test_each_problem_names_its_key(data: dict[str, object], problem: str) -> None:
    """Each invalid setting yields exactly one problem line, starting with its dotted key."""
    assert problems_of(data) == (problem,)


def test_all_problems_reported_together() -> None:
    """Problems in several sections are collected into one ConfigError, in file order."""
    problems = problems_of({
        "milter": {"max_connections": "ten", "lisen": "x", "idle_timeout": -1},
        "reply": {"reject_code": 250},
        "log": {"level": "loud"},
        "extra": {},
    })
    assert [p.split(":")[0] for p in problems] == [
        "milter.max_connections", "milter.lisen", "milter.idle_timeout", "reply.reject_code",
        "log.level", "extra",
    ]


def test_config_error_message_names_source() -> None:
    """str(ConfigError) starts with the source and joins the problems."""
    with pytest.raises(ConfigError, match=r"^test\.toml: milter\.zzz: unknown key$"):
        parse_config({"milter": {"zzz": 1}}, "test.toml")


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ("cannot read: No such file or directory",)


def test_load_directory(tmp_path: Path) -> None:
    """An unreadable path (a directory) is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path)
    assert info.value.source == str(tmp_path)


def test_load_syntax_error_names_line(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError naming the file and the line."""
    path = tmp_path / "bad.toml"
    path.write_text('[milter]\nlisten = "inet:127.0.0.1:1"\nmax_connections = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    [problem] = info.value.problems
    assert problem.startswith("invalid TOML: ")
    assert "line 3" in problem


def test_load_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "d\xe9bug"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(path)
    assert info.value.source == str(path)


def test_load_validates(tmp_path: Path) -> None:
    """load_config applies the same validation, with the path as source."""
    path = tmp_path / "l.toml"
    path.write_text("[milter]\nmax_connections = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ("milter.max_connections: must be an integer >= 1, got true",)
