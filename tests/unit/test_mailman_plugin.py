"""The Mailman plugin's pieces that need no Mailman: its settings, what it imports, and that
importing the ``listgate`` package inside Mailman registers nothing there. (Its behaviour
inside a real Mailman core is tested in tests/mailman/test_feed.py.)"""

from __future__ import annotations

import configparser
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import listgate
from listgate.events import EventError
from listgate.mailman_plugin import (
    ListgatePlugin,
    PluginSettings,
    _Collected,
    _member,
    parse_settings,
)

MAILMAN_COMPONENT_DIRS = ("rules", "chains", "handlers", "pipelines", "styles", "commands")
"""Sub-packages Mailman scans in a plugin's component package (mailman.utilities.modules)."""


def settings_from(text: str) -> PluginSettings:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parse_settings(parser)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "events-secret"
    path.write_text("the-secret\n")
    return path


def test_settings(secret_file: Path) -> None:
    """notify (space-separated URLs), secret_file, and the optional knobs with defaults."""
    s = settings_from(f"[listgate]\nnotify: http://127.0.0.1:8891/ https://mx2.example:9/x\n"
                      f"secret_file: {secret_file}\n")
    assert s == PluginSettings(("http://127.0.0.1:8891/", "https://mx2.example:9/x"),
                               b"the-secret", 30.0, 2.0, 1000)
    s = settings_from(f"[listgate]\nnotify: http://[::1]:8891/\nsecret_file: {secret_file}\n"
                      "heartbeat: 0\ntimeout: 0.5\nqueue_size: 10\n")
    assert (s.heartbeat, s.timeout, s.queue_size) == (0.0, 0.5, 10)
    assert "the-secret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[other]\n", r"no \[listgate\] section"),
        ("[listgate]\nsecret_file: {secret}\n", "notify: name at least one"),
        ("[listgate]\nnotify: ftp://127.0.0.1/\nsecret_file: {secret}\n", "not an http"),
        ("[listgate]\nnotify: redis://:pw@127.0.0.1/\n", "redis_password_file"),
        ("[listgate]\nnotify: http:///x\nsecret_file: {secret}\n", "not an http"),
        ("[listgate]\nnotify: http://h:99999/\nsecret_file: {secret}\n", "bad port"),
        ("[listgate]\nnotify: http://h/\n", "secret_file: required"),
        ("[listgate]\nnotify: http://h/\nsecret_file: /nonexistent/x\n", "cannot read"),
        ("[listgate]\nnotify: http://h/\nsecret_file: {secret}\ntimeout: 0\n", "timeout"),
        ("[listgate]\nnotify: http://h/\nsecret_file: {secret}\nheartbeat: x\n", "heartbeat"),
        ("[listgate]\nnotify: http://h/\nsecret_file: {secret}\nqueue_size: 0\n", "queue_size"),
    ],
)
def test_bad_settings(secret_file: Path, text: str, why: str) -> None:
    """Each problem is an EventError naming the key (the plugin then stays inert)."""
    with pytest.raises(EventError, match=why):
        settings_from(text.format(secret=secret_file))


def test_module_imports_only_the_standard_library() -> None:
    """Importing the plugin (and so the ``listgate`` package) in a fresh interpreter loads
    no third-party module: Mailman's venv need not have listgate's dependencies."""
    code = ("import sys; before = set(sys.modules); import listgate.mailman_plugin; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    tops = {name.split(".")[0] for name in out}
    assert "listgate.mailman_plugin" in out
    assert {n for n in out if n.startswith("listgate")} == {
        "listgate", "listgate.compiled", "listgate.errors", "listgate.events",
        "listgate.mailman_plugin",
        "listgate.facts", "listgate.facts.sharedkeys"}
    assert tops - {"listgate"} <= set(sys.stdlib_module_names)


def test_package_offers_mailman_no_components() -> None:
    """Mailman imports the plugin's component package (``listgate``) in every process and
    scans these sub-packages of it: listgate has none, so it registers no rule or chain."""
    root = Path(listgate.__file__).parent
    assert [name for name in MAILMAN_COMPONENT_DIRS if (root / name).exists()] == []


def test_bare_nonmember_records_are_not_changes() -> None:
    """A nonmember record without its own action (Mailman adds one for every new sender)
    decides what no record decides: nothing is collected, and no SQL is needed for it."""
    out = _Collected()
    record = SimpleNamespace(role=SimpleNamespace(name="nonmember"), moderation_action=None)
    _member(None, record, "new", out)
    _member(None, record, "deleted", out)
    assert out.frozen().empty


def test_plugin_outside_mailman_stays_inert(caplog: pytest.LogCaptureFixture) -> None:
    """Without Mailman the plugin can be made, and post_hook logs why it is disabled
    instead of raising (a raising hook would break Mailman's start)."""
    plugin = ListgatePlugin()
    assert plugin.resource is None
    plugin.pre_hook()
    with caplog.at_level(logging.ERROR, logger="mailman.plugins"):
        plugin.post_hook()
    assert plugin.feed is None
    assert "listgate plugin: disabled, no change feed" in caplog.text


def test_redis_kinds_are_the_mailman_backends_cache_names() -> None:
    """The kinds the plugin deletes and names on the Redis channel are exactly the Mailman
    backend's kinds of fact, so a change published to Redis drops the right entries."""
    from listgate.mailman.backend import MailmanBackend
    from listgate.mailman_plugin import _REDIS_KINDS
    from tests.fakes import FakeMailmanRecords

    kinds = {k for ks in _REDIS_KINDS.values() for k in ks}
    assert kinds == {c.name for c in MailmanBackend(FakeMailmanRecords()).keys.caches}


def test_changes_become_shared_tier_invalidations() -> None:
    """Lists, addresses, directory and site bans map to their facts; ``all`` to
    everything."""
    from listgate.events import EVERYTHING, ChangeSet
    from listgate.mailman_plugin import _invalidation

    change = _invalidation(ChangeSet(frozenset({"l.example.org"}), frozenset({"a@x"}),
                                     directory=True), "mm")
    assert change.keys == {("policy", "l.example.org"), ("memberships", "a@x"),
                           ("linked", "a@x"), ("directory", "")}
    assert _invalidation(EVERYTHING, "mm").everything
