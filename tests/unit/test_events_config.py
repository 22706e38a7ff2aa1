"""The ``[events]`` section: where the change feed's listener binds and its secret file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from listgate.config import Config, EventsConfig, config_to_dict, parse_config
from listgate.errors import ConfigError


def test_default_is_no_feed() -> None:
    """Without [events] there is no listener, and the defaults render as ""."""
    assert Config().events == EventsConfig("", "")
    assert config_to_dict(Config())["events"] == {"listen": "", "secret_file": "",
                                                   "max_silence": 90.0}


MAILMAN: dict[str, object] = {"backend": {"type": "mailman"}, "mailman": {"password": "pw"}}
"""The feed is the Mailman backend's: [events] has an effect only with it."""


def test_listen_with_secret_file_round_trips(tmp_path: Path) -> None:
    """A listen spec and a readable secret file parse, render and parse back equal; the
    secret itself is never part of the configuration."""
    secret = tmp_path / "events-secret"
    secret.write_text("abc\n")
    cfg = parse_config({**MAILMAN, "events": {"listen": "inet:127.0.0.1:8891",
                                              "secret_file": str(secret)}})
    assert cfg.events == EventsConfig("inet:127.0.0.1:8891", str(secret))
    shown = config_to_dict(cfg)
    assert shown["events"] == {"listen": "inet:127.0.0.1:8891", "secret_file": str(secret),
                               "max_silence": 90.0}
    assert "abc" not in repr(cfg)
    assert parse_config(shown).events == cfg.events
    v6 = parse_config({**MAILMAN,
                       "events": {"listen": "inet6:[::1]:8891", "secret_file": str(secret)}})
    assert v6.events.listen == "inet6:[::1]:8891"


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ({"listen": "inet:127.0.0.1:8891"},
         "events.secret_file: required when events.listen is set"),
        ({"listen": "unix:/run/listgate-events.sock", "secret_file": "{secret}"},
         "events.listen: must be \"inet:HOST:PORT\""),
        ({"listen": "tcp:1", "secret_file": "{secret}"}, "events.listen: 'tcp:1'"),
        ({"listen": 8891}, "events.listen: must be a string"),
        ({"listen": "inet:127.0.0.1:8891", "secret_file": "relative"},
         "events.secret_file: must be an absolute path"),
        ({"listen": "inet:127.0.0.1:8891", "secret_file": "/nonexistent/secret"},
         "events.secret_file: cannot read secret file"),
        ({"listen": "inet:127.0.0.1:8891", "secret_file": "{empty}"},
         "events.secret_file: secret file .* is empty"),
        ({"lisen": ""}, 'events.lisen: unknown key (did you mean "listen"?)'),
    ],
)
def test_problems(tmp_path: Path, events: dict[str, object], problem: str) -> None:
    """Each mistake is one problem line naming its key."""
    secret = tmp_path / "secret"
    secret.write_text("abc")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    table = {k: v.format(secret=secret, empty=empty) if isinstance(v, str) else v
             for k, v in events.items()}
    with pytest.raises(ConfigError) as info:
        parse_config({**MAILMAN, "events": table})
    assert len(info.value.problems) == 1
    assert re.match(re.escape(problem).replace(r"\.\*", ".*"), info.value.problems[0]), \
        info.value.problems


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"events": {"listen": "inet:127.0.0.1:8891", "secret_file": "{secret}"}},
         'events.listen: has no effect: backend.type is not set, so it is "static"'),
        ({**MAILMAN, "events": {"secret_file": "{secret}"}},
         'events.secret_file: has no effect: events.listen is "" (no change feed)'),
    ],
)
def test_events_without_effect_are_problems(tmp_path: Path, data: dict[str, object],
                                            problem: str) -> None:
    """[events] under the static backend, or a secret file with no listener, is an error
    naming the key rather than a feed silently never started."""
    secret = tmp_path / "secret"
    secret.write_text("abc")
    events = {k: v.format(secret=secret) if isinstance(v, str) else v
              for k, v in data["events"].items()}  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        parse_config({**data, "events": events})
    assert info.value.problems[0].startswith(problem), info.value.problems


def test_a_feed_goes_with_any_worker_count(tmp_path: Path) -> None:
    """[events] listen with workers = "auto" or an explicit count parses as given: the
    supervisor relays the feed to every worker (listgate.server.feedrelay)."""
    secret = tmp_path / "secret"
    secret.write_text("abc")
    events = {"listen": "inet:127.0.0.1:8891", "secret_file": str(secret)}
    assert parse_config({**MAILMAN, "events": events}).milter.workers == "auto"
    config = parse_config({**MAILMAN, "events": events, "milter": {"workers": 3}})
    assert (config.milter.workers, config.events.listen) == (3, "inet:127.0.0.1:8891")
