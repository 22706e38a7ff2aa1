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
- Nothing is silently ignored: a key the file sets (to other than its default) that has no
  effect under the file's other settings is a problem that names it and says what to set
  (``_NO_EFFECT`` lists every such case; ``[mailman]`` never turns the Mailman backend on
  by itself). ``config_warnings`` gives what runs but deserves a word (no lists at all);
  ``serve`` logs and ``config check`` prints the same text.
- ``config_to_dict`` gives back TOML-shaped data that ``parse_config`` accepts and that
  yields an equal ``Config`` (apart from ``source``).
- ``config_to_dict`` never shows a secret: ``mailman.password`` is rendered as ``"***"``
  (or ``""`` when unset or read from ``mailman.password_file``), so that one key does not
  round-trip; everything else does. ``Secret`` keeps the password out of ``repr``/``str``.
- ``[gate]`` holds the defaults of every ``ListOverrides`` field except ``allow`` and
  ``reject_text``; each ``[lists."addr"]`` table is merged over it, so ``Config.lists``
  holds complete overrides keyed by normalised posting address.
- No I/O except in ``load_config``, which reads one file, and in reading
  ``mailman.password_file`` and ``events.secret_file`` (at parse time, so they are
  checked at startup; the events secret is read again where it is used, never kept here).
- A leaf: it imports only the decision core's value types, the pure ``listen`` and
  ``events`` modules and ``log``'s constants, never the server, metrics or a backend, and
  importing it does not import asyncio, prometheus_client, httpx or mailmanclient.
"""

from __future__ import annotations

import difflib
import enum
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from listgate.decision.engine import (
    DSN_PATTERN,
    DecideAt,
    GateMode,
    HoldPolicy,
    ListOverrides,
    ReplyTexts,
    reply_template_problem,
)
from listgate.decision.gate import Bypass, FailurePolicy
from listgate.decision.model import normalize_address
from listgate.errors import ConfigError, ListgateError
from listgate.events import EventError, read_secret
from listgate.listen import ListenSpec, parse_listen_spec, parse_metrics_listen
from listgate.log import LOG_TARGETS

__all__ = [
    "EXAMPLE_CONFIG_PATH",
    "AuthConfig",
    "AuthSource",
    "BackendConfig",
    "CacheConfig",
    "Config",
    "EventsConfig",
    "FailureConfig",
    "LogConfig",
    "MailmanConfig",
    "MilterConfig",
    "PolicyConfig",
    "Secret",
    "StaticConfig",
    "config_to_dict",
    "config_warnings",
    "load_config",
    "parse_config",
    "password_file_warnings",
    "read_redis_password",
    "worker_count",
]

EXAMPLE_CONFIG_PATH = Path(__file__).resolve().parent / "data" / "example.toml"
"""The example configuration shipped inside the package: a runnable static map."""

DEFAULT_LISTEN = (ListenSpec("inet", "127.0.0.1", 8890, ""),)
LOG_LEVELS: Mapping[str, int] = MappingProxyType(
    {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
     "error": logging.ERROR}
)
BACKEND_TYPES = ("static", "mailman")
MAX_REST_TIMEOUT = 30.0
"""``mailman.timeout`` must stay below Postfix's ``milter_command_timeout`` (30 s)."""
DEFAULT_GATE = ListOverrides()
MIN_PACKET_SIZE = 65_536
"""A milter body chunk is up to 65535 bytes plus the command byte."""
MAX_PACKET_SIZE = 1 << 30
MIN_POLICY_LINE = 512
"""Postfix's own line_length_limit is 2048; no real attribute line is shorter than this."""
MAX_POLICY_LINE = 1 << 20
MIN_POLICY_ATTRIBUTES = 40
"""Postfix 3.7 sends about 30 attributes per request; newer versions add a few."""
MAX_POLICY_ATTRIBUTES = 4096


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """``[milter]``: the milter listener and its limits."""

    listen: tuple[ListenSpec, ...] = DEFAULT_LISTEN
    """Sockets to listen on (a spec or a list of specs). Default: ["inet:127.0.0.1:8890"]."""
    socket_mode: int = 0o660
    """Permissions of unix: sockets, written as an octal string. Default: "0660"."""
    max_connections: int = 4096
    """Concurrent milter connections, all workers together (Postfix holds one per SMTP
    session in progress); more are closed at accept. listgate raises its open files limit
    to match at start. Default: 4096."""
    max_packet_size: int = 1_048_576
    """Bytes; a larger claimed packet length closes the connection. Default: 1048576."""
    idle_timeout: float = 300.0
    """Seconds without a command before the connection is closed. Default: 300."""
    command_timeout: float = 30.0
    """Seconds to receive the rest of a packet once it has started. Default: 30."""
    shutdown_timeout: float = 10.0
    """Seconds SIGTERM waits for in-flight commands before closing. Default: 10."""
    workers: int | Literal["auto"] = "auto"
    """Processes serving the listeners (1 to 64, or "auto": one per CPU core this process
    may run on, at most 4): inet listeners are shared with SO_REUSEPORT, unix ones through
    one inherited socket; with more than 1 the first process supervises, serves the
    [metrics] endpoint, summed over the workers, and listens for the [events] change feed,
    relaying each message to every worker's cache. Default: "auto"."""
    uvloop: bool = True
    """Run the event loop on uvloop (installed with listgate where the platform has it);
    false, or uvloop missing (logged once), runs asyncio's own loop. Default: true."""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """``[policy]``: the Postfix policy-delegation listener (an alternative to the milter;
    RCPT only) and its limits."""

    listen: tuple[ListenSpec, ...] = ()
    """Sockets to listen on (a spec or a list of specs); "" or [] = no policy listener.
    Default: [] (disabled)."""
    socket_mode: int = 0o660
    """Permissions of unix: sockets, written as an octal string. Default: "0660"."""
    max_connections: int = 4096
    """Concurrent policy connections, all workers together (Postfix opens one per smtpd
    process); more are closed at accept. Default: 4096."""
    idle_timeout: float = 600.0
    """Seconds a connection may take to complete its next request; keep it above
    Postfix's smtpd_policy_service_max_idle (300 s). Default: 600."""
    max_line_length: int = 8192
    """Bytes per attribute line; a longer line closes the connection. Default: 8192."""
    max_attributes: int = 64
    """Attributes per request; more close the connection. Default: 64."""


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """``[backend]``: where posting rights come from."""

    type: str = "static"
    """Backend kind: "static" (the ``[static]`` map) or "mailman" (Mailman core's REST API,
    ``[mailman]``). Default: "static"."""


class Secret:
    """A secret string that never shows itself in ``repr``/``str`` (both are ``'***'``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is sent (the HTTP Authorization header)."""
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


@dataclass(frozen=True, slots=True)
class MailmanConfig:
    """``[mailman]``: how to reach Mailman core's REST API (used when backend.type = "mailman")."""

    url: str = "http://127.0.0.1:8001/3.1"
    """http(s) URL of the REST API, with its version. Default: "http://127.0.0.1:8001/3.1"."""
    user: str = "restadmin"
    """REST admin user (``[webservice] admin_user``). Default: "restadmin"."""
    password: Secret | None = None
    """REST admin password, from ``password`` or read (stripped) from ``password_file``.
    Exactly one of the two is required when backend.type = "mailman". Default: unset."""
    password_file: str = ""
    """File holding the password, read at load time; "" = use ``password``. Default: ""."""
    timeout: float = 5.0
    """Seconds per REST call, and for each decision as a whole (past it, the cache answers,
    stale entries included, or the failure policy does); > 0 and < 30 (Postfix's
    milter_command_timeout). Default: 5."""
    max_connections: int = 10
    """HTTP connection pool size (>= 1). Default: 10."""
    directory_file: str = ""
    """Where the last known set of lists is persisted; "" = do not persist. Default: ""."""


@dataclass(frozen=True, slots=True)
class StaticConfig:
    """``[static]``: the static backend's map."""

    posters: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """List posting address -> addresses allowed to post, normalised. Default: no lists."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``[cache]``: how long the Mailman backend trusts what it learned."""

    ttl: float = 60.0
    """Seconds a positive answer (may post) is reused. Default: 60."""
    negative_ttl: float = 10.0
    """Seconds an answer that would reject is reused; keep it short, so a new subscriber's
    first post is not refused for long. Default: 10."""
    policy_ttl: float = 120.0
    """Seconds a list's policy (config, nonmember patterns) is reused. Default: 120."""
    directory_ttl: float = 300.0
    """Seconds the set of lists, domains and [mta] settings is reused. Default: 300."""
    max_entries: int = 100_000
    """Most cached answers kept (>= 1). Default: 100000."""
    stale_if_error: float = 3600.0
    """Seconds past expiry an answer may still be served while Mailman fails (0 = never).
    Default: 3600."""
    reject_max_age: float = 2.0
    """Seconds: an answer that would reject must rest on facts no older than this (older
    ones are fetched again before the 5xx is sent), unless a healthy change feed
    (``[events]``) covers them. Answers that accept use the lifetimes above. Default: 2."""
    redis_url: str = ""
    """The shared cache tier that several MX hosts (and workers) use: "redis://HOST:PORT/DB",
    "rediss://..." (TLS) or "unix:///PATH?db=N"; "" = none. A user name may be given
    ("redis://listgate@host/0"), a password never (use ``redis_password_file``).
    Default: ""."""
    redis_password_file: str = ""
    """File holding the Redis password (ACL user's or requirepass), read at start; "" =
    no password. Default: ""."""
    redis_timeout: float = 0.2
    """Seconds per Redis call; past it, listgate goes on as if Redis were absent (> 0 and
    <= 5). Default: 0.2."""


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
    target: str = "stderr"
    """Where lines go: "stderr", "syslog" (facility mail) or "journal" (stderr with
    priority prefixes that journald reads). Default: "stderr"."""
    syslog_address: str = "/dev/log"
    """The syslog socket for target = "syslog". Default: "/dev/log"."""

    @property
    def level_number(self) -> int:
        """``level`` as a ``logging`` level number."""
        return LOG_LEVELS[self.level]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint."""

    listen: str = ""
    """HOST:PORT of the /metrics HTTP endpoint, e.g. "127.0.0.1:9107"; "" = off.
    Default: ""."""


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``[events]``: the change feed from Mailman (listgate's Mailman core plugin,
    ``listgate.mailman_plugin``), which tells listgate which cached facts went stale."""

    listen: str = ""
    """Where the feed's HTTP listener binds: "inet:HOST:PORT" or "inet6:[ADDR]:PORT", the
    address the plugin's ``notify`` URL names, e.g. "inet:127.0.0.1:8891"; "" = no feed
    (the cache lifetimes alone bound how stale a fact can be). Default: ""."""
    secret_file: str = ""
    """File holding the secret shared with the plugin (the plugin's ``secret_file``),
    read at load time; required when ``listen`` is set. Default: ""."""
    max_silence: float = 90.0
    """Seconds without any message (the plugin sends a heartbeat after its ``heartbeat``
    seconds of quiet, 30 by default) after which the feed counts as silent: listgate then
    relies on ``[cache] reject_max_age`` again until the feed is back. Keep it at about 3
    times the plugin's heartbeat. Default: 90."""


class AuthSource(enum.Enum):
    """Where the authentication results of ``require_authenticated`` lists come from."""

    VERIFY = "verify"
    """listgate checks SPF at RCPT and DKIM at end of message itself (the milter then
    asks the MTA for the header fields and, for such lists' messages only, the body)."""
    UPSTREAM = "upstream"
    """A milter before listgate (OpenDKIM, OpenDMARC, rspamd) adds an
    Authentication-Results: header with ``authserv_id``; listgate reads it at end of
    headers."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: how lists with ``require_authenticated`` learn what a message proves."""

    source: AuthSource = AuthSource.VERIFY
    """"verify" (SPF and DKIM checked by listgate) or "upstream" (a trusted
    Authentication-Results: header of an earlier milter). Default: "verify"."""
    nameservers: tuple[str, ...] = ()
    """DNS servers listgate's resolver asks ("IP" or "IP:PORT", "[IPv6]:PORT"); [] = the
    system's (/etc/resolv.conf). Default: []."""
    dns_timeout: float = 5.0
    """Seconds all the DNS lookups of one check may take together (SPF at RCPT, DKIM at
    end of message); past it the post gets 451 4.7.5, never a reject; > 0 and < 30.
    Default: 5."""
    max_message_size: int = 4_194_304
    """Bytes of a message kept to verify its DKIM signatures; a larger message has no
    valid signature for listgate (only SPF can prove its sender). Default: 4194304."""
    authserv_id: str = ""
    """The authserv-id of the trusted milter's Authentication-Results: header fields
    (OpenDKIM's AuthservID); required with source = "upstream". Default: ""."""
    upstream_headers: int = 1
    """How many Authentication-Results: header fields with ``authserv_id`` the milters
    before listgate add to every message; when listgate sees more, one came from outside
    (forged) and none is trusted. Default: 1."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``Config()`` is the defaults."""

    milter: MilterConfig = field(default_factory=MilterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    mailman: MailmanConfig = field(default_factory=MailmanConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    gate: ListOverrides = DEFAULT_GATE
    """``[gate]``: the defaults for every list (``allow`` and ``reject_text`` stay empty)."""
    lists: Mapping[str, ListOverrides] = field(default_factory=lambda: MappingProxyType({}))
    """``[lists."addr"]``: per-list overrides keyed by normalised posting address, each
    complete (keys a list does not set take their ``[gate]`` value)."""
    reply: ReplyTexts = field(default_factory=ReplyTexts)
    """``[reply]``: SMTP reply codes and text templates (see ``ReplyTexts``)."""
    failure: FailureConfig = field(default_factory=FailureConfig)
    bypass: Bypass = field(default_factory=Bypass)
    """``[bypass]``: senders never judged (SASL-authenticated, trusted networks); off."""
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    """``[auth]``: where require_authenticated lists' proof comes from."""
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


def _enum(cls: type[enum.Enum]) -> _Parser:
    choose = _choice(tuple(str(member.value) for member in cls))

    def parse(value: object, key: str) -> object:
        return cls(choose(value, key))

    return parse


_failure_policy = _enum(FailurePolicy)


def _boolean(value: object, key: str) -> object:
    if not isinstance(value, bool):
        raise _bad(key, "must be true or false", value)
    return value


AUTO_WORKERS_MAX = 4
"""``workers = "auto"``: one process per usable CPU core, at most this many."""


def _workers(value: object, key: str) -> object:
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise _bad(key, 'must be "auto" or an integer from 1 to 64', value)
    return _integer(1, 64)(value, key)


def worker_count(workers: int | Literal["auto"]) -> int:
    """How many processes ``[milter] workers`` means on this machine ("auto": one per CPU
    core this process may run on, at most ``AUTO_WORKERS_MAX``)."""
    if workers != "auto":
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, AUTO_WORKERS_MAX))


def _rest_timeout(value: object, key: str) -> object:
    expected = f"must be a number of seconds > 0 and < {MAX_REST_TIMEOUT:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, expected, value)
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds < MAX_REST_TIMEOUT:
        raise _Invalid(f"{key}: {expected} (Postfix's milter_command_timeout is 30 s), "
                       f"got {_show(value)}")
    return seconds


def _url(value: object, key: str) -> object:
    expected = 'must be an http:// or https:// URL such as "http://127.0.0.1:8001/3.1"'
    if not isinstance(value, str):
        raise _bad(key, expected, value)
    if not value.startswith(("http://", "https://")) or re.search(r"[\s\x00-\x1f\x7f]", value):
        raise _bad(key, expected, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise _Invalid(f"{key}: {exc}, got {_show(value)}") from None
    if not parts.hostname:
        raise _bad(key, expected + " (with a host)", value)
    if parts.username is not None or parts.password is not None:
        raise _Invalid(f"{key}: must not contain credentials; use mailman.user and "
                       "mailman.password or mailman.password_file")
    return value


def _user(value: object, key: str) -> object:
    expected = "must be a non-empty user name without ':' or control characters"
    if not isinstance(value, str) or not value or ":" in value or _CONTROL.search(value):
        raise _bad(key, expected, value)
    return value


def _password(value: object, key: str) -> object:
    if not isinstance(value, str):  # never echo the value: it may be (part of) the secret
        raise _Invalid(f"{key}: must be a string")
    if _CONTROL.search(value):
        raise _Invalid(f"{key}: must not contain control characters")
    return Secret(value) if value else None


def _path(value: object, key: str) -> object:
    text = _string(value, key)
    if _CONTROL.search(text):
        raise _bad(key, 'must be a file path (or "") without control characters', value)
    if text and not text.startswith("/"):
        raise _bad(key, 'must be an absolute path (or "")', value)
    return text


def _read_password_file(path: str, key: str) -> Secret:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError as exc:
        raise _Invalid(f"{key}: cannot read {_show(path)}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _Invalid(f"{key}: {_show(path)} is not UTF-8 text") from None
    if not text:
        raise _Invalid(f"{key}: {_show(path)} is empty")
    if _CONTROL.search(text):
        raise _Invalid(f"{key}: {_show(path)} must hold the password on one line")
    return Secret(text)


@dataclass(frozen=True, slots=True)
class _SecretFile:
    """A file that holds a secret, and what reading it would give away."""

    key: str
    """Its dotted key."""
    path: Callable[[Config], str]
    """The path the config sets ("" when the file is not used under this config)."""
    gives: str
    """What anyone who can read it gets."""


_SECRET_FILES = (
    _SecretFile("mailman.password_file",
                lambda c: c.mailman.password_file if c.backend.type == "mailman" else "",
                "the Mailman REST password"),
    _SecretFile("cache.redis_password_file",
                lambda c: c.cache.redis_password_file if c.cache.redis_url else "",
                "the password of the Redis shared by every MX host (and so a way to "
                "plant facts every host decides on)"),
    _SecretFile("events.secret_file",
                lambda c: c.events.secret_file if c.events.listen else "",
                "the secret of the change feed (and so a way to forge change messages)"),
)


def password_file_warnings(cfg: Config) -> list[str]:
    """Warnings about how secrets are stored: one for each file in use that holds one
    (``mailman.password_file``, ``cache.redis_password_file``, ``events.secret_file``)
    and is readable by "other" users (``st_mode & 0o004``). Only the file's metadata is
    read; its content never appears in a warning."""
    warnings = []
    for secret in _SECRET_FILES:
        path = secret.path(cfg)
        if not path:
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # it was readable at load time; a later problem shows when it is used
        if mode & 0o004:
            warnings.append(
                f"{secret.key}: {_show(path)} is readable by other users (mode "
                f"{stat.S_IMODE(mode):04o}); anyone on this host can read {secret.gives}: "
                "chmod o-r it (0640, group of the listgate user)")
    return warnings


def _finish_mailman(kwargs: dict[str, object], name: str) -> None:
    path = kwargs.get("password_file")
    if isinstance(path, str) and path and kwargs.get("password") is None:
        kwargs["password"] = _read_password_file(path, f"{name}.password_file")


REDIS_SCHEMES = ("redis", "rediss", "unix")
"""URL schemes of ``cache.redis_url``: plain TCP, TLS, a Unix socket."""
MAX_REDIS_TIMEOUT = 5.0


def _redis_url(value: object, key: str) -> object:
    text = _string(value, key)
    if not text:
        return text
    expected = ('must be "" or a URL such as "redis://127.0.0.1:6379/0", "rediss://host/0" '
                'or "unix:///run/redis/redis.sock?db=0"')
    if _SPACE_OR_CONTROL.search(text):
        raise _bad(key, expected, value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise _Invalid(f"{key}: {exc}") from None
    if parts.password is not None:  # never echo the value: it holds a password
        raise _Invalid(f"{key}: must not contain a password; put it in "
                       "cache.redis_password_file")
    if parts.scheme not in REDIS_SCHEMES:
        raise _bad(key, expected, value)
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise _bad(key, expected + " (unix: an absolute socket path)", value)
    if parts.scheme != "unix" and not parts.hostname:
        raise _bad(key, expected + " (with a host)", value)
    return text


def _redis_timeout(value: object, key: str) -> object:
    expected = f"must be a number of seconds > 0 and <= {MAX_REDIS_TIMEOUT:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, expected, value)
    if not 0 < value <= MAX_REDIS_TIMEOUT or math.isnan(value):
        raise _bad(key, expected, value)
    return float(value)


def _finish_cache(kwargs: dict[str, object], name: str) -> None:
    path = kwargs.get("redis_password_file")
    if isinstance(path, str) and path:
        _read_password_file(path, f"{name}.redis_password_file")  # checked, not kept


def read_redis_password(cache: CacheConfig) -> Secret | None:
    """The Redis password from ``cache.redis_password_file`` (None when unset); read where
    it is used, never kept in the ``Config``. ``ListgateError`` if unreadable."""
    if not cache.redis_password_file:
        return None
    try:
        return _read_password_file(cache.redis_password_file, "cache.redis_password_file")
    except _Invalid as exc:
        raise ListgateError("; ".join(exc.problems)) from None


def _allow(value: object, key: str) -> object:
    if not isinstance(value, list):
        raise _bad(key, 'must be an array such as ["boss@example.org", "@example.org", '
                        '"^.*@staff\\\\.example\\\\.org$"]', value)
    problems: list[str] = []
    entries: list[str] = []
    for i, raw in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(raw, str):
            problems.append(f"{item_key}: must be a string, got {_show(raw)}")
            continue
        entry = raw.strip()
        if entry.startswith("^"):
            try:
                re.compile(entry, re.IGNORECASE)
            except re.error as exc:
                problems.append(f"{item_key}: bad regular expression ({exc}), got {_show(raw)}")
                continue
        elif entry.startswith("@"):
            domain = entry[1:].lower().rstrip(".")
            if not domain or "@" in domain or _SPACE_OR_CONTROL.search(domain):
                problems.append(f'{item_key}: must be "@domain" such as "@example.org", '
                                f"got {_show(raw)}")
                continue
            entry = "@" + domain
        else:
            address = normalize_address(entry)
            if not address:
                problems.append(f"{item_key}: {_show(raw)} is the null sender, which can "
                                "never be allowed; remove it")
                continue
            if _address_problem(address) is not None:
                problems.append(f'{item_key}: must be an address, "@domain" or "^regex", '
                                f"got {_show(raw)}")
                continue
            entry = address
        if entry not in entries:
            entries.append(entry)
    if problems:
        raise _Invalid(*problems)
    return tuple(entries)


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


def _optional_listen(value: object, key: str) -> object:
    """Like ``_listen``, but "" or [] means "no listener"."""
    if value == "" or value == []:
        return ()
    return _listen(value, key)


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _address_problem(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or _SPACE_OR_CONTROL.search(address):
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
    assert isinstance(value, enum.Enum)
    return value.value


def _render_secret(value: object) -> object:
    assert value is None or isinstance(value, Secret)
    return "" if value is None else "***"


def _render_allow(value: object) -> object:
    assert isinstance(value, tuple)
    return list(value)


def _render_posters(value: object) -> object:
    assert isinstance(value, Mapping)
    return {list_address: list(allowed) for list_address, allowed in value.items()}


# --------------------------------------------------------------------------- the schema


def _networks(value: object, key: str) -> object:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(key, "a list of networks such as \"10.0.0.0/8\" or \"2001:db8::/32\"", value)
    nets = []
    problems = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            problems.append(f"{key}: {item!r} is not a network ({exc})")
    if problems:
        raise _Invalid(*problems)
    return tuple(nets)


def _render_networks(value: object) -> object:
    assert isinstance(value, tuple)
    return [str(n) for n in value]


def _metrics_listen(value: object, key: str) -> object:
    text = _string(value, key)
    if text:
        try:
            parse_metrics_listen(text)
        except ValueError as exc:
            raise _Invalid(f"{key}: {exc}") from None
    return text


def _events_listen(value: object, key: str) -> object:
    text = _string(value, key)
    if text:
        try:
            spec = parse_listen_spec(text.strip())
        except ValueError as exc:
            raise _Invalid(f"{key}: {exc}") from None
        if spec.family == "unix":
            raise _Invalid(f'{key}: must be "inet:HOST:PORT" or "inet6:[ADDR]:PORT" (the '
                           f"Mailman plugin sends HTTP over TCP), got {_show(value)}")
    return text


def _finish_events(kwargs: dict[str, object], name: str) -> None:
    listen, path = kwargs.get("listen", ""), kwargs.get("secret_file", "")
    if listen and not path:
        raise _Invalid(f"{name}.secret_file: required when {name}.listen is set (the file "
                       "the Mailman plugin's secret_file names)")
    if isinstance(path, str) and path:
        try:
            read_secret(path)
        except EventError as exc:
            raise _Invalid(f"{name}.secret_file: {exc}") from None


def _socket_path(value: object, key: str) -> object:
    text = _string(value, key)
    if not text.startswith("/"):
        raise _Invalid(f"{key}: must be an absolute path, got {_show(value)}")
    return text


def _nameservers(value: object, key: str) -> object:
    expected = 'must be a list of "IP" or "IP:PORT" such as ["127.0.0.1:5353"]'
    if not isinstance(value, list):
        raise _bad(key, expected, value)
    problems: list[str] = []
    servers: list[str] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, str):
            problems.append(f"{item_key}: {expected}, got {_show(item)}")
            continue
        try:
            address, port = parse_nameserver(item)
        except ValueError:
            problems.append(f"{item_key}: {expected}, got {_show(item)}")
            continue
        servers.append(format_nameserver(address, port))
    if problems:
        raise _Invalid(*problems)
    return tuple(servers)


def parse_nameserver(text: str) -> tuple[str, int]:
    """("IP", port) from "IP", "IP:PORT", "[IPv6]" or "[IPv6]:PORT"; ``ValueError``."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(text)
            port = int(rest[1:])
    elif text.count(":") == 1:
        address, _, raw_port = text.partition(":")
        port = int(raw_port)
    else:
        address = text
    if not 0 < port < 65536:
        raise ValueError(text)
    return str(ipaddress.ip_address(address)), port


def format_nameserver(address: str, port: int) -> str:
    """The canonical spelling of a nameserver entry."""
    host = f"[{address}]" if ":" in address else address
    return host if port == 53 else f"{host}:{port}"


def _authserv_id(value: object, key: str) -> object:
    text = _string(value, key)
    if _SPACE_OR_CONTROL.search(text) or ";" in text:
        raise _bad(key, 'must be an authserv-id such as "mx.example.org" (no spaces or ";")',
                   value)
    return text


def _finish_auth(kwargs: dict[str, object], name: str) -> None:
    if kwargs.get("source") is AuthSource.UPSTREAM and not kwargs.get("authserv_id"):
        raise _Invalid(f'{name}.authserv_id: required when {name}.source = "upstream" (the '
                       "authserv-id of the milter before listgate, e.g. OpenDKIM's AuthservID)")


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
        "workers": _Key(_workers),
        "uvloop": _Key(_boolean),
    }),
    "policy": (PolicyConfig, {
        "listen": _Key(_optional_listen, _render_listen),
        "socket_mode": _Key(_socket_mode, _render_mode),
        "max_connections": _Key(_integer(1)),
        "idle_timeout": _Key(_seconds(allow_zero=False)),
        "max_line_length": _Key(_integer(MIN_POLICY_LINE, MAX_POLICY_LINE)),
        "max_attributes": _Key(_integer(MIN_POLICY_ATTRIBUTES, MAX_POLICY_ATTRIBUTES)),
    }),
    "backend": (BackendConfig, {
        "type": _Key(_choice(BACKEND_TYPES)),
    }),
    "static": (StaticConfig, {
        "posters": _Key(_posters, _render_posters),
    }),
    "mailman": (MailmanConfig, {
        "url": _Key(_url),
        "user": _Key(_user),
        "password": _Key(_password, _render_secret),
        "password_file": _Key(_path),
        "timeout": _Key(_rest_timeout),
        "max_connections": _Key(_integer(1)),
        "directory_file": _Key(_path),
    }),
    "cache": (CacheConfig, {
        "ttl": _Key(_seconds(allow_zero=False)),
        "negative_ttl": _Key(_seconds(allow_zero=False)),
        "policy_ttl": _Key(_seconds(allow_zero=False)),
        "directory_ttl": _Key(_seconds(allow_zero=False)),
        "max_entries": _Key(_integer(1)),
        "stale_if_error": _Key(_seconds(allow_zero=True)),
        "reject_max_age": _Key(_seconds(allow_zero=True)),
        "redis_url": _Key(_redis_url),
        "redis_password_file": _Key(_path),
        "redis_timeout": _Key(_redis_timeout),
    }),
    "gate": (ListOverrides, {
        "mode": _Key(_enum(GateMode), _render_enum),
        "decide_at": _Key(_enum(DecideAt), _render_enum),
        "hold": _Key(_enum(HoldPolicy), _render_enum),
        "trust_approved": _Key(_boolean),
        "require_authenticated": _Key(_boolean),
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
    "bypass": (Bypass, {
        "authenticated": _Key(_boolean),
        "networks": _Key(_networks, _render_networks),
    }),
    "log": (LogConfig, {
        "level": _Key(_choice(tuple(LOG_LEVELS))),
        "target": _Key(_choice(LOG_TARGETS)),
        "syslog_address": _Key(_socket_path),
    }),
    "metrics": (MetricsConfig, {
        "listen": _Key(_metrics_listen),
    }),
    "events": (EventsConfig, {
        "listen": _Key(_events_listen),
        "secret_file": _Key(_path),
        "max_silence": _Key(_seconds(allow_zero=False)),
    }),
    "auth": (AuthConfig, {
        "source": _Key(_enum(AuthSource), _render_enum),
        "nameservers": _Key(_nameservers, _render_allow),
        "dns_timeout": _Key(_rest_timeout),
        "max_message_size": _Key(_integer(65_536, MAX_PACKET_SIZE)),
        "authserv_id": _Key(_authserv_id),
        "upstream_headers": _Key(_integer(1, 16)),
    }),
}
"""Section -> (dataclass, key -> how to parse and render it)."""

_NOT_IN_GATE = ("allow", "reject_text")
"""``ListOverrides`` fields that only a ``[lists."addr"]`` table may set."""

_LIST_KEYS: Mapping[str, _Key] = {
    "allow": _Key(_allow, _render_allow),
    "mode": _SCHEMA["gate"][1]["mode"],
    "reject_text": _Key(_template),
    "decide_at": _SCHEMA["gate"][1]["decide_at"],
    "hold": _SCHEMA["gate"][1]["hold"],
    "trust_approved": _SCHEMA["gate"][1]["trust_approved"],
    "require_authenticated": _SCHEMA["gate"][1]["require_authenticated"],
}
"""Keys of a ``[lists."addr"]`` table."""

_FINISH: Mapping[str, Callable[[dict[str, object], str], None]] = {
    "mailman": _finish_mailman,
    "events": _finish_events,
    "auth": _finish_auth,
    "cache": _finish_cache,
}
"""Section -> a step run on its parsed keys before the dataclass is built (may raise
``_Invalid``)."""

_SECTIONS = tuple(
    section for name in _SCHEMA for section in ((name, "lists") if name == "gate" else (name,))
)
"""Every top-level table, in the order ``config_to_dict`` shows them."""


def _unknown_key(section: str, key: str, known: list[str]) -> str:
    hint = _suggest(key, known)
    if not hint and section == "static" and "@" in key:
        hint = ' (list posters go under [static.posters])'
    return f"{section}.{_toml_key(key)}: unknown key{hint}"


def _unknown_section(name: str) -> str:
    homes = [s for s, (_, keys) in _SCHEMA.items() if name in keys]
    if homes:  # a key written outside its table ("listen" is not a typo of "lists")
        hint = f" (did you mean {name} in [{homes[0]}]?)"
    elif name in _LIST_KEYS:
        hint = f' (did you mean {name} in [lists."list@domain"]?)'
    else:
        hint = _suggest(name, list(_SECTIONS))
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
    finish = _FINISH.get(name)
    if finish is not None and len(problems) == before:
        try:
            finish(kwargs, name)
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


def _parse_list(
    list_key: str, value: object, base: ListOverrides, problems: list[str]
) -> ListOverrides | None:
    if not isinstance(value, dict):
        problems.append(f"{list_key}: must be a table of per-list settings "
                        f"([{list_key}]), got {_show(value)}")
        return None
    kwargs: dict[str, object] = {}
    before = len(problems)
    for key, raw in value.items():
        spec = _LIST_KEYS.get(key)
        if spec is None:
            problems.append(f"{list_key}.{_toml_key(key)}: unknown key"
                            f"{_suggest(key, list(_LIST_KEYS))}")
            continue
        try:
            kwargs[key] = spec.parse(raw, f"{list_key}.{key}")
        except _Invalid as exc:
            problems.extend(exc.problems)
    if len(problems) > before:
        return None
    return replace(base, **kwargs)  # type: ignore[arg-type]


def _parse_lists(
    value: object, base: ListOverrides, problems: list[str]
) -> Mapping[str, ListOverrides] | None:
    if not isinstance(value, dict):
        problems.append(f'lists: must be tables [lists."list@domain"], got {_show(value)}')
        return None
    before = len(problems)
    lists: dict[str, ListOverrides] = {}
    written_as: dict[str, str] = {}
    for raw_list, table in value.items():
        list_key = f"lists.{_toml_key(raw_list)}"
        list_address = normalize_address(raw_list)
        if not isinstance(table, dict) and raw_list in _LIST_KEYS:
            problems.append(f'{list_key}: per-list settings go in a table '
                            f'[lists."list@domain"], not directly in [lists]')
            continue
        problem = _address_problem(list_address)
        if problem is not None:
            problems.append(f"{list_key}: the list posting address {problem}")
        elif list_address in written_as:
            problems.append(f"{list_key}: the same list as {_show(written_as[list_address])} "
                            "(case and <> do not matter)")
        written_as.setdefault(list_address, raw_list)
        overrides = _parse_list(list_key, table, base, problems)
        if overrides is not None:
            lists[list_address] = overrides
    if len(problems) > before:
        return None
    return MappingProxyType(lists)


def _cross_section_problems(data: Mapping[str, object]) -> list[str]:
    """Problems that need more than one key: the Mailman backend's password."""
    backend = data.get("backend")
    backend_type = backend.get("type") if isinstance(backend, dict) else None
    mailman = data.get("mailman")
    if not isinstance(mailman, dict):
        mailman = {}
    has_password = mailman.get("password", "") != ""
    has_file = mailman.get("password_file", "") != ""
    if has_password and has_file:
        return ["mailman.password: set either mailman.password or mailman.password_file, "
                "not both"]
    if backend_type == "mailman" and not has_password and not has_file:
        return ['mailman.password: required when backend.type = "mailman" '
                "(set mailman.password or mailman.password_file)"]
    return []


# ------------------------------------------------------------------------ settings with no effect


def _backend_reason(cfg: Config, data: Mapping[str, object], backend_type: str) -> str | None:
    if cfg.backend.type != backend_type:
        return None
    backend = data.get("backend")
    if isinstance(backend, dict) and "type" in backend:
        return f'backend.type is "{backend_type}"'
    return f'backend.type is not set, so it is "{backend_type}" (the default)'


def _static_backend(cfg: Config, data: Mapping[str, object]) -> str | None:
    return _backend_reason(cfg, data, "static")


def _mailman_backend(cfg: Config, data: Mapping[str, object]) -> str | None:
    return _backend_reason(cfg, data, "mailman")


def _no_policy_listener(cfg: Config, data: Mapping[str, object]) -> str | None:
    return None if cfg.policy.listen else "policy.listen is empty (no policy listener)"


def _no_unix_socket(name: str) -> Callable[[Config, Mapping[str, object]], str | None]:
    def why(cfg: Config, data: Mapping[str, object]) -> str | None:
        specs: tuple[ListenSpec, ...] = getattr(cfg, name).listen
        if not specs or any(spec.family == "unix" for spec in specs):
            return None
        return f"{name}.listen has no unix: socket"

    return why


def _no_events_listener(cfg: Config, data: Mapping[str, object]) -> str | None:
    return None if cfg.events.listen else 'events.listen is "" (no change feed)'


def _no_redis(cfg: Config, data: Mapping[str, object]) -> str | None:
    return None if cfg.cache.redis_url else 'cache.redis_url is "" (no shared tier)'


def _not_syslog(cfg: Config, data: Mapping[str, object]) -> str | None:
    if cfg.log.target == "syslog":
        return None
    return f'log.target is "{cfg.log.target}"'


def requires_authentication(cfg: Config) -> bool:
    """Whether any list (or the ``[gate]`` default) has ``require_authenticated``."""
    return cfg.gate.require_authenticated or any(
        o.require_authenticated for o in cfg.lists.values()
    )


def _no_authenticated_list(cfg: Config, data: Mapping[str, object]) -> str | None:
    if requires_authentication(cfg):
        return None
    return "no list sets require_authenticated (nor [gate])"


def _auth_source_is(source: AuthSource) -> Callable[[Config, Mapping[str, object]], str | None]:
    def why(cfg: Config, data: Mapping[str, object]) -> str | None:
        if cfg.auth.source is not source:
            return None
        return f'auth.source is "{source.value}"'

    return why


@dataclass(frozen=True, slots=True)
class _NoEffect:
    """Keys of *section* that have no effect when *why* gives a reason (``None``: they do).

    A key counts only when the file sets it to something other than its default: writing
    a default down changes nothing, whether or not the key is read (the documented example
    and ``config_to_dict``'s output show every key)."""

    section: str
    keys: tuple[str, ...] | None
    """The keys concerned; None = every key of the section."""
    why: Callable[[Config, Mapping[str, object]], str | None]
    fix: str
    """What to do instead, after "; "."""
    reads: tuple[str, ...]
    """The other sections *why* reads; a rule is skipped when one of them is invalid."""


_TO_MAILMAN = 'set [backend] type = "mailman" to use Mailman'
_NO_EFFECT: tuple[_NoEffect, ...] = (
    _NoEffect("mailman", None, _static_backend, f"{_TO_MAILMAN}, or remove it", ("backend",)),
    _NoEffect("cache", None, _static_backend,
              f"[cache] is the Mailman backend's; {_TO_MAILMAN}, or remove it", ("backend",)),
    _NoEffect("static", None, _mailman_backend,
              'Mailman decides who may post; remove it, or set [backend] type = "static"',
              ("backend",)),
    _NoEffect("gate", ("hold",), _static_backend,
              f"a static list never holds a post; remove it, or {_TO_MAILMAN}", ("backend",)),
    _NoEffect("gate", ("trust_approved",), _static_backend,
              f"a static list has no moderator password; remove it, or {_TO_MAILMAN}",
              ("backend",)),
    _NoEffect("policy", tuple(k for k in _SCHEMA["policy"][1] if k != "listen"),
              _no_policy_listener,
              'set policy.listen (e.g. "inet:127.0.0.1:8891") to run the policy listener, '
              "or remove it", ()),
    _NoEffect("policy", ("socket_mode",), _no_unix_socket("policy"),
              "it applies to unix:/PATH sockets only; remove it", ()),
    _NoEffect("milter", ("socket_mode",), _no_unix_socket("milter"),
              "it applies to unix:/PATH sockets only; remove it", ()),
    _NoEffect("events", None, _static_backend,
              f"the change feed comes from Mailman; {_TO_MAILMAN}, or remove it",
              ("backend",)),
    _NoEffect("events", ("secret_file", "max_silence"), _no_events_listener,
              'set events.listen (e.g. "inet:127.0.0.1:8891") to receive the feed, or '
              "remove it", ()),
    _NoEffect("cache", ("redis_password_file", "redis_timeout"), _no_redis,
              'set cache.redis_url (e.g. "redis://127.0.0.1:6379/0") to share the cache, '
              "or remove it", ()),
    _NoEffect("log", ("syslog_address",), _not_syslog,
              'set log.target = "syslog" to log there, or remove it', ()),
    _NoEffect("auth", None, _no_authenticated_list,
              "set require_authenticated = true for a list (or in [gate]), or remove it",
              ("gate", "lists")),
    _NoEffect("auth", ("authserv_id", "upstream_headers"), _auth_source_is(AuthSource.VERIFY),
              'they are read with auth.source = "upstream" only; remove them', ()),
    _NoEffect("auth", ("nameservers", "dns_timeout", "max_message_size"),
              _auth_source_is(AuthSource.UPSTREAM),
              'listgate checks nothing itself with auth.source = "upstream"; remove them',
              ()),
)
"""Every setting that can be silently ignored, and when. The rest always has an effect:
all of [milter] (the milter listener always runs), policy.listen, backend.type, gate.mode
and gate.decide_at, [reply] and [failure] (a backend may fail, or have a bug, whatever its
type), [bypass], log.level, log.target and metrics.listen."""

_LIST_NO_EFFECT: Mapping[str, str] = {
    "hold": "a static list never holds a post",
    "trust_approved": "a static list has no moderator password",
}
"""``[lists."addr"]`` keys that have no effect on a static list (as in ``[gate]``)."""


def _set_keys(section: object, raw: object, keys: Mapping[str, _Key],
              default: object) -> list[str]:
    """The keys of the TOML table *raw* whose parsed value in *section* is not the default."""
    if not isinstance(raw, dict):
        return []
    return [key for key in raw
            if key in keys and getattr(section, key) != getattr(default, key)]


def _no_effect_problems(data: Mapping[str, object], cfg: Config,
                        invalid: set[str]) -> list[str]:
    """One problem per key the file sets that has no effect under its other settings
    (sections in *invalid* did not parse: their keys, and rules reading them, are skipped)."""
    problems: list[str] = []
    defaults = Config()
    for rule in _NO_EFFECT:
        if rule.section in invalid or invalid.intersection(rule.reads):
            continue
        keys = _SCHEMA[rule.section][1]
        set_keys = _set_keys(getattr(cfg, rule.section), data.get(rule.section), keys,
                             getattr(defaults, rule.section))
        concerned = [k for k in set_keys if rule.keys is None or k in rule.keys]
        if not concerned:
            continue
        reason = rule.why(cfg, data)
        if reason is not None:
            problems.extend(f"{rule.section}.{key}: has no effect: {reason}; {rule.fix}"
                            for key in concerned)
    raw_lists = data.get("lists")
    if "lists" in invalid or invalid.intersection(("backend", "static", "gate")) or \
            not isinstance(raw_lists, dict):
        return problems
    reason = _static_backend(cfg, data)
    if reason is None:
        return problems
    for raw_list, table in raw_lists.items():
        list_key = f"lists.{_toml_key(raw_list)}"
        list_address = normalize_address(raw_list)
        if list_address not in cfg.static.posters:
            problems.append(f"{list_key}: has no effect: {_show(list_address)} is not a list "
                            "of the static map; add it to [static.posters], or remove the table")
            continue
        for key, why in _LIST_NO_EFFECT.items():
            if isinstance(table, dict) and key in table and \
                    getattr(cfg.lists[list_address], key) != getattr(DEFAULT_GATE, key):
                problems.append(f"{list_key}.{key}: has no effect: {reason}; {why}; remove "
                                f"it, or {_TO_MAILMAN}")
    return problems


def config_warnings(cfg: Config) -> list[str]:
    """What ``serve`` warns about at startup and ``config check`` prints: a static backend
    with no lists (every post passes ungated), lists deciding at end of headers that the
    policy listener cannot wait for, and a REST password file other users can read."""
    warnings: list[str] = []
    if cfg.backend.type == "static" and not cfg.static.posters:
        warnings.append(
            "static.posters: the static backend has no lists, so every post is accepted "
            'ungated; add lists to [static.posters], or set [backend] type = "mailman"'
        )
    if cfg.policy.listen and any(o.decide_at is DecideAt.HEADERS
                                 for o in (cfg.gate, *cfg.lists.values())):
        warnings.append(
            'policy listener: decide_at = "headers" cannot wait for headers over the '
            "policy protocol; such senders get DUNNO there and Mailman decides"
        )
    warnings.extend(password_file_warnings(cfg))
    return warnings


def parse_config(data: Mapping[str, object], source: str = "<config>") -> Config:
    """Build a ``Config`` from TOML-shaped *data*; one ``ConfigError`` lists all problems.

    A setting the file changes from its default that has no effect under the file's other
    settings (``[mailman]`` with the static backend, ``[policy]`` limits with no policy
    listener...) is a problem too. Reads ``mailman.password_file`` when it is set (an
    unreadable file is a problem)."""
    problems: list[str] = []
    sections: dict[str, object] = {}
    invalid: set[str] = set()
    for name, value in data.items():
        if name == "lists":
            continue  # after [gate], which its tables are merged over
        if name not in _SCHEMA:
            problems.append(_unknown_section(name))
            continue
        section = _parse_section(name, value, problems)
        if section is not None:
            sections[name] = section
        else:
            invalid.add(name)
    if "lists" in data:
        gate = sections.get("gate", DEFAULT_GATE)
        assert isinstance(gate, ListOverrides)
        lists = _parse_lists(data["lists"], gate, problems)
        if lists is not None:
            sections["lists"] = lists
        else:
            invalid.add("lists")
    problems.extend(_cross_section_problems(data))
    cfg = Config(**sections, source=source)  # type: ignore[arg-type]
    problems.extend(_no_effect_problems(data, cfg, invalid))
    if (requires_authentication(cfg) and cfg.backend.type == "mailman"
            and cfg.auth.source is AuthSource.VERIFY
            and cfg.mailman.timeout + cfg.auth.dns_timeout >= MAX_REST_TIMEOUT):
        problems.append(
            f"auth.dns_timeout: mailman.timeout + auth.dns_timeout must stay below "
            f"{MAX_REST_TIMEOUT:g} s (one decision may wait for both; Postfix's "
            f"milter_command_timeout is 30 s), got {cfg.mailman.timeout:g} + "
            f"{cfg.auth.dns_timeout:g}")
    if problems:
        raise ConfigError(problems, source)
    return cfg


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


def _render_list(overrides: ListOverrides) -> dict[str, object]:
    shown: dict[str, object] = {}
    for key, spec in _LIST_KEYS.items():
        value = getattr(overrides, key)
        if value is not None:  # reject_text None: use [reply] reject_text (TOML has no null)
            shown[key] = spec.render(value)
    return shown


def config_to_dict(cfg: Config) -> dict[str, dict[str, object]]:
    """*cfg* as TOML-shaped data (every key, defaults included), for printing.

    Parsing the result gives back an equal ``Config`` (apart from ``source``), except for
    the REST password, which is never shown: ``mailman.password`` is ``"***"`` when it was
    given inline and ``""`` when unset or read from ``mailman.password_file`` (which then
    round-trips by being read again). Each ``[lists."addr"]`` table is shown complete
    (merged over ``[gate]``).
    """
    result: dict[str, dict[str, object]] = {}
    for name in _SECTIONS:
        if name == "lists":
            result[name] = {addr: _render_list(o) for addr, o in cfg.lists.items()}
            continue
        keys = _SCHEMA[name][1]
        section = getattr(cfg, name)
        result[name] = {key: spec.render(getattr(section, key)) for key, spec in keys.items()}
    if cfg.mailman.password_file:
        result["mailman"]["password"] = ""
    return result


def _schema_fields() -> dict[str, tuple[str, ...]]:
    """Section -> dataclass field names, for the test that keeps ``_SCHEMA`` in step
    (``[gate]`` leaves out the fields only a list table may set)."""
    return {
        name: tuple(f.name for f in fields(cls)
                    if not (name == "gate" and f.name in _NOT_IN_GATE))
        for name, (cls, _) in _SCHEMA.items()
    }


def _list_fields() -> tuple[str, ...]:
    """``ListOverrides`` field names, for the test that keeps ``[lists]`` keys in step."""
    return tuple(f.name for f in fields(ListOverrides))
