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
    CacheConfig,
    Config,
    MailmanConfig,
    Secret,
    config_to_dict,
    load_config,
    parse_config,
)
from listgate.decision.engine import (
    DecideAt,
    GateMode,
    HoldPolicy,
    ListOverrides,
    ReplyTexts,
)
from listgate.decision.gate import FailurePolicy
from listgate.errors import ConfigError
from listgate.listen import ListenSpec

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
    assert (cfg.milter.max_connections, cfg.milter.max_packet_size) == (4096, 1_048_576)
    assert (cfg.milter.idle_timeout, cfg.milter.command_timeout,
            cfg.milter.shutdown_timeout) == (300.0, 30.0, 10.0)
    assert cfg.backend.type == "static"
    assert dict(cfg.static.posters) == {}
    assert cfg.reply == ReplyTexts()
    assert cfg.failure.policy is FailurePolicy.TEMPFAIL
    assert cfg.log.level == "info"
    assert cfg.log.level_number == logging.INFO
    assert cfg.mailman == MailmanConfig(
        url="http://127.0.0.1:8001/3.1", user="restadmin", password=None, password_file="",
        timeout=5.0, max_connections=10, directory_file="",
    )
    assert cfg.cache == CacheConfig(ttl=60.0, negative_ttl=10.0, policy_ttl=120.0,
                                    directory_ttl=300.0, max_entries=100_000,
                                    stale_if_error=3600.0)
    assert cfg.gate == ListOverrides(mode=GateMode.ENFORCE, decide_at=DecideAt.RCPT,
                                     hold=HoldPolicy.ACCEPT, trust_approved=True)
    assert dict(cfg.lists) == {}


def test_schema_matches_dataclasses() -> None:
    """Every dataclass field has exactly one schema entry, and vice versa."""
    for section, names in config_module._schema_fields().items():
        assert tuple(config_module._SCHEMA[section][1]) == names, section
    assert set(config_module._SCHEMA) == {
        "milter", "policy", "backend", "static", "mailman", "cache", "gate", "reply", "failure",
        "bypass", "log", "metrics", "events", "auth",
    }
    assert tuple(config_module._LIST_KEYS) == config_module._list_fields()


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
    sections = {s: set(keys) for s, keys in raw.items() if s != "lists"}
    assert sections == {s: set(k) for s, k in defaults.items() if s != "lists"}
    assert "lists" in raw
    shown = config_to_dict(cfg)
    # The posters map and the per-list table are examples, not defaults.
    del shown["static"], defaults["static"], shown["lists"], defaults["lists"]
    assert shown == defaults
    [example] = raw["lists"].values()
    assert set(example) == set(config_module._LIST_KEYS)
    assert {k: v for k, v in example.items() if k in raw["gate"]} == raw["gate"]


ROUND_TRIP = [
    pytest.param({
        "milter": {"listen": ["unix:/run/listgate.sock", "inet6:[::1]:9"], "socket_mode": "0600",
                   "idle_timeout": 5},
        "reply": {"reject_text": "{{no}} {list}"},
        "failure": {"policy": "accept"},
        "log": {"level": "debug"},
        "backend": {"type": "mailman"},
        "mailman": {"url": "https://mm.example:8443/3.1", "user": "u", "password": "pw",
                    "timeout": 2, "max_connections": 3,
                    "directory_file": "/var/lib/listgate/lists.json"},
        "cache": {"ttl": 1, "negative_ttl": 0.5, "policy_ttl": 2, "directory_ttl": 3,
                  "max_entries": 4, "stale_if_error": 0},
        "gate": {"mode": "monitor", "decide_at": "headers", "hold": "reject",
                 "trust_approved": False},
        "lists": {"<L@X.org>": {"allow": ["A@x.org", "@Y.org", "^b"], "reject_text": "no {list}"},
                  "m@x.org": {"mode": "off"}},
    }, id="mailman"),
    pytest.param({
        "static": {"posters": {"<A@X.org>": ["<P@x.org>", "q@x.org"], "b@x.org": []}},
        "policy": {"listen": "unix:/run/listgate-policy.sock", "socket_mode": "0600",
                   "max_attributes": 50},
        "log": {"target": "syslog", "syslog_address": "/run/log"},
        "lists": {"a@x.org": {"allow": ["A@x.org"], "mode": "monitor"}},
    }, id="static"),
]


@pytest.mark.parametrize("data", ROUND_TRIP)
def test_round_trip(data: dict[str, object]) -> None:
    """config_to_dict output parses back to an equal Config."""
    cfg = parse_config(data, "a")
    again = parse_config(config_to_dict(cfg), "b")
    if cfg.mailman.password is not None:
        assert again.mailman.password == Secret("***")  # the one key that does not round-trip
    assert replace(again, mailman=replace(again.mailman, password=None)) == replace(
        cfg, source="b", mailman=replace(cfg.mailman, password=None))


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
    milter = {"listen": "unix:/run/listgate.sock", "socket_mode": text}
    assert parse_config({"milter": milter}).milter.socket_mode == mode


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
     '"mailman", got "ldap"'),
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


# --------------------------------------------------------------------------- new sections

MAILMAN_OK = {"backend": {"type": "mailman"}, "mailman": {"password": "s3cret"}}


def with_mailman(**mailman: object) -> dict[str, object]:
    """A Mailman-backend config with these [mailman] keys (and a password)."""
    return {"backend": {"type": "mailman"}, "mailman": {"password": "s3cret", **mailman}}

NEW_BAD = [
    ("backend-type-new", {"backend": {"type": "mailmain"}},
     'backend.type: must be one of "static", "mailman", got "mailmain" (did you mean '
     '"mailman"?)'),
    ("mailman-no-password", {"backend": {"type": "mailman"}},
     'mailman.password: required when backend.type = "mailman" (set mailman.password or '
     "mailman.password_file)"),
    ("mailman-empty-password", {"backend": {"type": "mailman"}, "mailman": {"password": ""}},
     'mailman.password: required when backend.type = "mailman" (set mailman.password or '
     "mailman.password_file)"),
    ("mailman-both-passwords",
     {"backend": {"type": "mailman"},
      "mailman": {"password": "x", "password_file": "/etc/listgate/pw"}},
     "mailman.password: set either mailman.password or mailman.password_file, not both"),
    ("mailman-password-not-string", {"mailman": {"password": 1234}},
     "mailman.password: must be a string"),
    ("mailman-url-scheme", {"mailman": {"url": "ftp://mm.example/3.1"}},
     'mailman.url: must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1", '
     'got "ftp://mm.example/3.1"'),
    ("mailman-url-no-scheme", {"mailman": {"url": "127.0.0.1:8001"}},
     'mailman.url: must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1", '
     'got "127.0.0.1:8001"'),
    ("mailman-url-no-host", {"mailman": {"url": "http:///3.1"}},
     'mailman.url: must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1" '
     '(with a host), got "http:///3.1"'),
    ("mailman-url-credentials", {"mailman": {"url": "http://u:pw@mm.example/3.1"}},
     "mailman.url: must not contain credentials; use mailman.user and mailman.password or "
     "mailman.password_file"),
    ("mailman-url-not-string", {"mailman": {"url": 8001}},
     'mailman.url: must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1", '
     "got 8001"),
    ("mailman-user-empty", {"mailman": {"user": ""}},
     "mailman.user: must be a non-empty user name without ':' or control characters, "
     'got ""'),
    ("mailman-timeout-30", {"mailman": {"timeout": 30}},
     "mailman.timeout: must be a number of seconds > 0 and < 30 (Postfix's "
     "milter_command_timeout is 30 s), got 30"),
    ("mailman-timeout-zero", {"mailman": {"timeout": 0}},
     "mailman.timeout: must be a number of seconds > 0 and < 30 (Postfix's "
     "milter_command_timeout is 30 s), got 0"),
    ("mailman-timeout-bool", {"mailman": {"timeout": True}},
     "mailman.timeout: must be a number of seconds > 0 and < 30, got true"),
    ("mailman-max-connections", {"mailman": {"max_connections": 0}},
     "mailman.max_connections: must be an integer >= 1, got 0"),
    ("mailman-directory-file-relative", {"mailman": {"directory_file": "lists.json"}},
     'mailman.directory_file: must be an absolute path (or ""), got "lists.json"'),
    ("mailman-unknown-key", {"mailman": {"pasword": "x"}},
     'mailman.pasword: unknown key (did you mean "password"?)'),
    ("cache-ttl-zero", {"cache": {"ttl": 0}},
     "cache.ttl: must be a number of seconds > 0, got 0"),
    ("cache-negative-ttl", {"cache": {"negative_ttl": -1}},
     "cache.negative_ttl: must be a number of seconds > 0, got -1"),
    ("cache-policy-ttl-string", {"cache": {"policy_ttl": "2m"}},
     'cache.policy_ttl: must be a number of seconds > 0, got "2m"'),
    ("cache-directory-ttl-nan", {"cache": {"directory_ttl": float("nan")}},
     "cache.directory_ttl: must be a number of seconds > 0, got nan"),
    ("cache-max-entries", {"cache": {"max_entries": 0}},
     "cache.max_entries: must be an integer >= 1, got 0"),
    ("cache-stale-negative", {"cache": {"stale_if_error": -1}},
     "cache.stale_if_error: must be a number of seconds >= 0, got -1"),
    ("cache-unknown-key", {"cache": {"tll": 1}}, 'cache.tll: unknown key (did you mean "ttl"?)'),
    ("gate-mode", {"gate": {"mode": "enforcing"}},
     'gate.mode: must be one of "enforce", "monitor", "off", got "enforcing" (did you mean '
     '"enforce"?)'),
    ("gate-mode-enum-name", {"gate": {"mode": "ENFORCE"}},
     'gate.mode: must be one of "enforce", "monitor", "off", got "ENFORCE"'),
    ("gate-decide-at", {"gate": {"decide_at": "eoh"}},
     'gate.decide_at: must be one of "rcpt", "headers", got "eoh"'),
    ("gate-hold", {"gate": {"hold": "discard"}},
     'gate.hold: must be one of "accept", "reject", got "discard"'),
    ("gate-trust-approved-string", {"gate": {"trust_approved": "yes"}},
     'gate.trust_approved: must be true or false, got "yes"'),
    ("gate-trust-approved-int", {"gate": {"trust_approved": 1}},
     "gate.trust_approved: must be true or false, got 1"),
    ("gate-allow-only-per-list", {"gate": {"allow": ["a@x.org"]}},
     'gate.allow: unknown key'),
    ("gate-reject-text-only-per-list", {"gate": {"reject_text": "no"}},
     'gate.reject_text: unknown key'),
    ("lists-key-not-address", {"lists": {"announce": {"mode": "off"}}},
     'lists.announce: the list posting address must be an address like "user@example.org"'),
    ("lists-duplicate", {"lists": {"a@x.org": {}, "<A@X.org>": {}}},
     'lists."<A@X.org>": the same list as "a@x.org" (case and <> do not matter)'),
    ("lists-not-table", {"lists": ["a@x.org"]},
     'lists: must be tables [lists."list@domain"], got an array'),
    ("lists-setting-at-top", {"lists": {"mode": "off"}},
     'lists.mode: per-list settings go in a table [lists."list@domain"], not directly in '
     "[lists]"),
    ("lists-entry-not-table", {"lists": {"a@x.org": "off"}},
     'lists."a@x.org": must be a table of per-list settings ([lists."a@x.org"]), got "off"'),
    ("lists-unknown-key", {"lists": {"a@x.org": {"allwo": []}}},
     'lists."a@x.org".allwo: unknown key (did you mean "allow"?)'),
    ("lists-mode", {"lists": {"a@x.org": {"mode": "monitoring"}}},
     'lists."a@x.org".mode: must be one of "enforce", "monitor", "off", got "monitoring" '
     '(did you mean "monitor"?)'),
    ("lists-hold", {"lists": {"a@x.org": {"hold": True}}},
     'lists."a@x.org".hold: must be one of "accept", "reject", got true'),
    ("lists-trust-approved", {"lists": {"a@x.org": {"trust_approved": "false"}}},
     'lists."a@x.org".trust_approved: must be true or false, got "false"'),
    ("lists-reject-text", {"lists": {"a@x.org": {"reject_text": "{recipient}"}}},
     'lists."a@x.org".reject_text: unknown placeholder {recipient} (only {sender} and {list} '
     'are allowed), got "{recipient}"'),
    ("lists-allow-not-array", {"lists": {"a@x.org": {"allow": "b@x.org"}}},
     'lists."a@x.org".allow: must be an array such as ["boss@example.org", "@example.org", '
     '"^.*@staff\\\\.example\\\\.org$"], got "b@x.org"'),
    ("lists-allow-bad-regex", {"lists": {"a@x.org": {"allow": ["^(unclosed"]}}},
     'lists."a@x.org".allow[0]: bad regular expression (missing ), unterminated subpattern '
     'at position 1), got "^(unclosed"'),
    ("lists-allow-bare-word", {"lists": {"a@x.org": {"allow": ["boss"]}}},
     'lists."a@x.org".allow[0]: must be an address, "@domain" or "^regex", got "boss"'),
    ("lists-allow-bad-domain", {"lists": {"a@x.org": {"allow": ["@"]}}},
     'lists."a@x.org".allow[0]: must be "@domain" such as "@example.org", got "@"'),
    ("lists-allow-domain-with-at", {"lists": {"a@x.org": {"allow": ["@a@b.org"]}}},
     'lists."a@x.org".allow[0]: must be "@domain" such as "@example.org", got "@a@b.org"'),
    ("lists-allow-null-sender", {"lists": {"a@x.org": {"allow": ["<>"]}}},
     'lists."a@x.org".allow[0]: "<>" is the null sender, which can never be allowed; '
     "remove it"),
    ("lists-allow-not-string", {"lists": {"a@x.org": {"allow": [7]}}},
     'lists."a@x.org".allow[0]: must be a string, got 7'),
    ("list-section-typo", {"list": {}}, 'list: unknown section (did you mean "lists"?)'),
    ("allow-at-top-level", {"allow": []},
     'allow: unknown section (did you mean allow in [lists."list@domain"]?)'),
    ("password-at-top-level", {"password": "x"},
     "password: unknown section (did you mean password in [mailman]?)"),
]


@pytest.mark.parametrize(("data", "problem"), [(d, p) for _, d, p in NEW_BAD],
                         ids=[i for i, _, _ in NEW_BAD])
def test_new_section_problem_names_its_key(data: dict[str, object], problem: str) -> None:
    """Each invalid [backend]/[mailman]/[cache]/[gate]/[lists] setting is one problem line."""
    assert problems_of(data) == (problem,)


def test_new_section_problems_collected() -> None:
    """Problems in the new sections, and the missing password, are reported together."""
    problems = problems_of({
        "backend": {"type": "mailman"},
        "mailman": {"timeout": 60, "url": "x"},
        "cache": {"ttl": 0},
        "gate": {"mode": "x"},
        "lists": {"a@x.org": {"allow": ["^("], "mode": "y"}, "bad": {}},
    })
    assert [p.split(":")[0] for p in problems] == [
        "mailman.timeout", "mailman.url", "cache.ttl", "gate.mode", 'lists."a@x.org".allow[0]',
        'lists."a@x.org".mode', "lists.bad", "mailman.password",
    ]


def test_mailman_password_inline() -> None:
    """An inline password is kept as a Secret that reveals it only on request."""
    cfg = parse_config(MAILMAN_OK)
    assert cfg.backend.type == "mailman"
    assert isinstance(cfg.mailman.password, Secret)
    assert cfg.mailman.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg.mailman)


def test_secret_hides_itself() -> None:
    """Secret's repr and str are '***'; equality compares the hidden values."""
    secret = Secret("hunter2")
    assert (repr(secret), str(secret), f"{secret}") == ("'***'", "***", "***")
    assert secret == Secret("hunter2")
    assert secret != Secret("other")
    assert secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [pytest.param("s3cret\n", "s3cret", id="newline-stripped"),
     pytest.param("  pw with inner space \t\n", "pw with inner space", id="blanks-stripped")],
)
def test_mailman_password_file(tmp_path: Path, content: str, expected: str) -> None:
    """password_file is read at load time and stripped; its path is kept."""
    path = tmp_path / "pw"
    path.write_text(content)
    cfg = parse_config({"backend": {"type": "mailman"},
                        "mailman": {"password_file": str(path)}})
    assert cfg.mailman.password is not None
    assert cfg.mailman.password.reveal() == expected
    assert cfg.mailman.password_file == str(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [pytest.param(None, "cannot read", id="missing"),
     pytest.param(" \n", "is empty", id="empty"),
     pytest.param("a\nb\n", "must hold the password on one line", id="two-lines")],
)
def test_mailman_password_file_problems(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """An unreadable, empty or multi-line password file is a problem naming the key."""
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    [found] = problems_of({"backend": {"type": "mailman"},
                           "mailman": {"password_file": str(path)}})
    assert found.startswith(f'mailman.password_file: "{path}"' if content is not None
                            else f'mailman.password_file: cannot read "{path}"')
    assert problem in found


def test_mailman_password_file_unreadable_directory(tmp_path: Path) -> None:
    """A directory as password_file is reported on mailman.password_file, not raised."""
    [found] = problems_of({"backend": {"type": "mailman"},
                           "mailman": {"password_file": str(tmp_path)}})
    assert found.startswith(f'mailman.password_file: cannot read "{tmp_path}": ')


def test_password_not_required_for_static() -> None:
    """With the static backend no REST password is needed (nor allowed: see test_no_effect)."""
    cfg = parse_config({"static": {"posters": {"a@x.org": ["b@x.org"]}}})
    assert cfg.mailman.password is None
    assert cfg.mailman.url == "http://127.0.0.1:8001/3.1"


def test_password_problem_never_echoes_value() -> None:
    """A bad password value is reported without showing it."""
    [found] = problems_of({"mailman": {"password": "hunter2\n"}})
    assert found == "mailman.password: must not contain control characters"


@pytest.mark.parametrize(
    ("mailman", "shown"),
    [pytest.param({"password": "s3cret"}, "***", id="inline"),
     pytest.param({}, "", id="unset")],
)
def test_config_to_dict_redacts_password(mailman: dict[str, object], shown: str) -> None:
    """config_to_dict shows an inline password as "***" and an unset one as ""."""
    cfg = parse_config({"backend": {"type": "mailman"}, "mailman": mailman} if mailman else {})
    assert config_to_dict(cfg)["mailman"]["password"] == shown


def test_config_to_dict_password_file_round_trips(tmp_path: Path) -> None:
    """With password_file, config_to_dict shows password "" and the path, which re-reads."""
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    cfg = parse_config({"backend": {"type": "mailman"},
                        "mailman": {"password_file": str(path)}}, "a")
    shown = config_to_dict(cfg)
    assert shown["mailman"]["password"] == ""
    assert "s3cret" not in repr(shown)
    assert parse_config(shown, "b") == replace(cfg, source="b")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8001/3.1", "https://mailman.example.org/rest/3.1", "http://[::1]:8001/3.1"],
)
def test_mailman_url_accepted(url: str) -> None:
    """http and https URLs with a host are accepted as written."""
    assert parse_config(with_mailman(url=url)).mailman.url == url


def test_mailman_timeout_just_under_postfix() -> None:
    """29.9 s is accepted; integers become floats."""
    assert parse_config(with_mailman(timeout=29.9)).mailman.timeout == 29.9
    assert parse_config(with_mailman(timeout=3)).mailman.timeout == 3.0


def test_cache_values() -> None:
    """[cache] values are read as given; stale_if_error may be 0 (never)."""
    cfg = parse_config({**MAILMAN_OK, "cache": {"ttl": 30, "negative_ttl": 2.5, "policy_ttl": 60,
                                                "directory_ttl": 600, "max_entries": 5,
                                                "stale_if_error": 0}})
    assert cfg.cache == CacheConfig(30.0, 2.5, 60.0, 600.0, 5, 0.0)


def test_gate_defaults_parsed_by_value() -> None:
    """[gate] enums are read by their value and trust_approved as a bool."""
    cfg = parse_config({**MAILMAN_OK, "gate": {"mode": "monitor", "decide_at": "headers",
                                               "hold": "reject", "trust_approved": False}})
    assert cfg.gate == ListOverrides(mode=GateMode.MONITOR, decide_at=DecideAt.HEADERS,
                                     hold=HoldPolicy.REJECT, trust_approved=False)


LIST_MERGE = [
    pytest.param({}, {}, ListOverrides(), id="empty-table-no-gate"),
    pytest.param({"mode": "monitor", "hold": "reject"}, {},
                 ListOverrides(mode=GateMode.MONITOR, hold=HoldPolicy.REJECT),
                 id="gate-inherited"),
    pytest.param({"mode": "monitor", "hold": "reject"}, {"mode": "enforce"},
                 ListOverrides(mode=GateMode.ENFORCE, hold=HoldPolicy.REJECT),
                 id="list-key-wins"),
    pytest.param({"trust_approved": False}, {"decide_at": "headers", "reject_text": "no {list}"},
                 ListOverrides(trust_approved=False, decide_at=DecideAt.HEADERS,
                               reject_text="no {list}"),
                 id="list-only-keys"),
    pytest.param({}, {"allow": ["<Boss@Partner.Example>", "@Trusted.Example.", "^X.*@s$",
                                "boss@partner.example"]},
                 ListOverrides(allow=("boss@partner.example", "@trusted.example", "^X.*@s$")),
                 id="allow-normalised-deduplicated"),
]


@pytest.mark.parametrize(("gate", "table", "expected"), LIST_MERGE)
def test_list_merged_over_gate(
    gate: dict[str, object], table: dict[str, object], expected: ListOverrides
) -> None:
    """A [lists."addr"] table takes each key it does not set from [gate]."""
    cfg = parse_config({**MAILMAN_OK, "gate": gate, "lists": {"<Announce@Example.ORG>": table}})
    assert dict(cfg.lists) == {"announce@example.org": expected}


def test_lists_merge_independent_of_table_order() -> None:
    """[lists] written before [gate] still merges over [gate]."""
    cfg = parse_config({"lists": {"a@x.org": {}}, "gate": {"mode": "off"}, **MAILMAN_OK})
    assert cfg.lists["a@x.org"].mode is GateMode.OFF


def test_lists_mapping_is_read_only() -> None:
    """Config.lists cannot be changed after parsing."""
    cfg = parse_config({**MAILMAN_OK, "lists": {"a@x.org": {}}})
    with pytest.raises(TypeError):
        cfg.lists["b@x.org"] = ListOverrides()  # type: ignore[index]


def test_allowed_regex_used_like_engine() -> None:
    """A configured ^regex allow entry admits what ListOverrides.allows admits."""
    cfg = parse_config({**MAILMAN_OK,
                        "lists": {"a@x.org": {"allow": [r"^.*@staff\.example\.org$"]}}})
    overrides = cfg.lists["a@x.org"]
    assert overrides.allows("ann@staff.example.org") == r"^.*@staff\.example\.org$"
    assert overrides.allows("ann@staff.example.org.evil") is None
