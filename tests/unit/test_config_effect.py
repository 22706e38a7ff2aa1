"""No silently ignored configuration: a setting that has no effect under the file's other
settings is a problem naming its key and what to set; what runs but deserves a word is a
warning. ``NO_EFFECT`` is the table of cases, shared with the CLI tests."""

from __future__ import annotations

import tomllib

import pytest

from listgate.config import EXAMPLE_CONFIG_PATH, config_to_dict, config_warnings, parse_config
from listgate.errors import ConfigError

STATIC_UNSET = 'backend.type is not set, so it is "static" (the default)'
STATIC_SET = 'backend.type is "static"'
TO_MAILMAN = 'set [backend] type = "mailman" to use Mailman'
POSTERS = '[static.posters]\n"list@example.org" = ["member@example.org"]\n'
MAILMAN = '[backend]\ntype = "mailman"\n[mailman]\npassword = "pw"\n'

NO_EFFECT: list[tuple[str, str, list[str]]] = [
    ("mailman-without-backend",
     '[milter]\nlisten = "inet:127.0.0.1:8890"\n'
     '[mailman]\nurl = "http://127.0.0.1:8001/3.1"\nuser = "admin"\npassword = "pw"\n',
     [f"mailman.user: has no effect: {STATIC_UNSET}; {TO_MAILMAN}, or remove it",
      f"mailman.password: has no effect: {STATIC_UNSET}; {TO_MAILMAN}, or remove it"]),
    ("mailman-with-static",
     POSTERS + '[backend]\ntype = "static"\n[mailman]\ndirectory_file = "/var/lib/l.json"\n',
     [f"mailman.directory_file: has no effect: {STATIC_SET}; {TO_MAILMAN}, or remove it"]),
    ("static-with-mailman", MAILMAN + POSTERS,
     ['static.posters: has no effect: backend.type is "mailman"; Mailman decides who may '
      'post; remove it, or set [backend] type = "static"']),
    ("cache-with-static", POSTERS + "[cache]\nttl = 30\nmax_entries = 100000\n",
     [f"cache.ttl: has no effect: {STATIC_UNSET}; [cache] is the Mailman backend's; "
      f"{TO_MAILMAN}, or remove it"]),
    ("gate-hold-with-static", POSTERS + '[gate]\nhold = "reject"\ntrust_approved = false\n',
     [f"gate.hold: has no effect: {STATIC_UNSET}; a static list never holds a post; remove "
      f"it, or {TO_MAILMAN}",
      f"gate.trust_approved: has no effect: {STATIC_UNSET}; a static list has no moderator "
      f"password; remove it, or {TO_MAILMAN}"]),
    ("list-not-in-static-map", POSTERS + '[lists."other@example.org"]\nmode = "monitor"\n',
     ['lists."other@example.org": has no effect: "other@example.org" is not a list of the '
      "static map; add it to [static.posters], or remove the table"]),
    ("list-hold-with-static", POSTERS + '[lists."list@example.org"]\nhold = "reject"\n',
     [f'lists."list@example.org".hold: has no effect: {STATIC_UNSET}; a static list never '
      f"holds a post; remove it, or {TO_MAILMAN}"]),
    ("policy-without-listener", POSTERS + "[policy]\nmax_connections = 50\nlisten = []\n",
     ["policy.max_connections: has no effect: policy.listen is empty (no policy listener); "
      'set policy.listen (e.g. "inet:127.0.0.1:8891") to run the policy listener, or '
      "remove it"]),
    ("policy-socket-mode-inet",
     POSTERS + '[policy]\nlisten = "inet:127.0.0.1:8891"\nsocket_mode = "0600"\n',
     ["policy.socket_mode: has no effect: policy.listen has no unix: socket; it applies to "
      "unix:/PATH sockets only; remove it"]),
    ("milter-socket-mode-inet", POSTERS + '[milter]\nsocket_mode = "0600"\n',
     ["milter.socket_mode: has no effect: milter.listen has no unix: socket; it applies to "
      "unix:/PATH sockets only; remove it"]),
    ("syslog-address-on-stderr", POSTERS + '[log]\nsyslog_address = "/run/log"\n',
     ['log.syslog_address: has no effect: log.target is "stderr"; set log.target = '
      '"syslog" to log there, or remove it']),
]
"""(id, TOML text, the problems it gives, in order)."""

EFFECTIVE: list[tuple[str, str]] = [
    ("workers-with-metrics",
     POSTERS + '[milter]\nworkers = 2\n[metrics]\nlisten = "127.0.0.1:9107"\n'),
    ("defaults-written-down", POSTERS + "[policy]\nlisten = []\nmax_connections = 4096\n"
     '[mailman]\nurl = "http://127.0.0.1:8001/3.1"\n[cache]\nttl = 60\n'
     '[milter]\nsocket_mode = "0660"\n[log]\nsyslog_address = "/dev/log"\n'),
    ("mailman-with-everything", MAILMAN + "[cache]\nttl = 5\n"
     '[gate]\nhold = "reject"\ntrust_approved = false\n[lists."a@example.org"]\nhold = "reject"\n'),
    ("unix-sockets", POSTERS + '[milter]\nlisten = "unix:/run/m.sock"\nsocket_mode = "0600"\n'
     '[policy]\nlisten = ["inet:127.0.0.1:1", "unix:/run/p.sock"]\nsocket_mode = "0600"\n'
     "max_attributes = 50\n"),
    ("syslog", POSTERS + '[log]\ntarget = "syslog"\nsyslog_address = "/run/log"\n'),
    ("list-in-static-map", POSTERS + '[lists."<List@Example.ORG>"]\nmode = "monitor"\n'
     'allow = ["@example.net"]\n'),
]
"""(id, TOML text) of files where every key has an effect."""

NO_LISTS_WARNING = (
    "static.posters: the static backend has no lists, so every post is accepted ungated; "
    'add lists to [static.posters], or set [backend] type = "mailman"'
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "test.toml")
    return list(info.value.problems)


@pytest.mark.parametrize(("text", "problems"), [(t, p) for _, t, p in NO_EFFECT],
                         ids=[i for i, _, _ in NO_EFFECT])
def test_setting_without_effect_is_a_problem(text: str, problems: list[str]) -> None:
    """Each setting that would be silently ignored is a problem line naming its key."""
    assert problems_of(text) == problems


@pytest.mark.parametrize("text", [t for _, t in EFFECTIVE], ids=[i for i, _ in EFFECTIVE])
def test_settings_with_effect_are_accepted(text: str) -> None:
    """Defaults written down, and keys the other settings make effective, are fine."""
    parse_config(tomllib.loads(text), "test.toml")


def test_mailman_section_never_selects_the_mailman_backend() -> None:
    """A [mailman] section does not turn the Mailman backend on by itself."""
    problems = problems_of('[mailman]\npassword = "pw"\n')
    assert problems == [f"mailman.password: has no effect: {STATIC_UNSET}; {TO_MAILMAN}, "
                        "or remove it"]


def test_problems_of_a_bad_section_are_not_doubled() -> None:
    """A section that does not parse gets its parse problems only, and a rule that reads
    an invalid section is skipped (no "no effect" guess on a bad backend.type)."""
    assert problems_of('[mailman]\nurl = "ftp://x"\n') == [
        'mailman.url: must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1",'
        ' got "ftp://x"']
    assert problems_of('[backend]\ntype = "ldap"\n[cache]\nttl = 5\n') == [
        'backend.type: must be one of "static", "mailman", got "ldap"']


def test_static_backend_without_lists_is_a_warning() -> None:
    """No lists at all is allowed but warned about; one list or the Mailman backend is not."""
    assert config_warnings(parse_config({})) == [NO_LISTS_WARNING]
    assert config_warnings(parse_config(tomllib.loads(POSTERS))) == []
    assert config_warnings(parse_config(tomllib.loads(MAILMAN))) == []


def test_config_to_dict_output_has_no_setting_without_effect() -> None:
    """``config check``'s effective config, which shows every key, parses again (keys at
    their defaults never count)."""
    for text in (POSTERS, MAILMAN, EXAMPLE_CONFIG_PATH.read_text()):
        cfg = parse_config(tomllib.loads(text), "a")
        parse_config(config_to_dict(cfg), "b")


def test_headers_over_the_policy_listener_is_a_warning() -> None:
    """decide_at = "headers" with a policy listener is warned about (that front end cannot
    wait for headers), with the line ``serve`` has always logged."""
    text = POSTERS + '[policy]\nlisten = "inet:127.0.0.1:8891"\n[lists."list@example.org"]\n' \
        'decide_at = "headers"\n'
    assert config_warnings(parse_config(tomllib.loads(text))) == [
        'policy listener: decide_at = "headers" cannot wait for headers over the policy '
        "protocol; such senders get DUNNO there and Mailman decides"]
    without_policy = POSTERS + '[lists."list@example.org"]\ndecide_at = "headers"\n'
    assert config_warnings(parse_config(tomllib.loads(without_policy))) == []
