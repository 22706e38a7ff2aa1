"""``listgate config init``: a complete, commented configuration for a new site, for the
static map or, from Mailman's own ``mailman.cfg``, for Mailman core's REST API.

Invariants:
- Rendering is pure: ``webservice_from_ini`` (Mailman's ``[webservice]`` from parsed ini
  data, Mailman's own defaults for absent keys), ``render_config`` (the listgate.toml
  text) and ``mta_hints`` (lines to add to the MTA) do no I/O. Reading ``mailman.cfg``,
  asking Mailman, looking for an MTA and writing files are the functions below them.
- The written config sets only keys that take effect for the chosen backend (``[milter]
  listen``, ``[backend] type`` and ``[static.posters]`` or ``[mailman] url/user/
  password_file``); every other key of the sections that apply is a comment showing its
  default, taken from ``Config()``, so the file cannot drift from the schema. Sections
  that have no effect for the backend (``[mailman]``/``[cache]``/``[failure]`` for the
  static map, ``[static]`` for Mailman) are left out.
- The REST password goes only into the password file, created with mode 0640 and never
  over an existing file; it never appears in the config, on stdout or stderr, or in an
  error message.
- Nothing is written unless everything before succeeded: existing files are refused
  before any work, and (unless ``--no-check``) Mailman must have answered. The password
  file is removed again if the config cannot be written.
- The MTA is never changed: what to add is printed on stderr, so that stdout carries the
  config alone when there is no ``--output``.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import enum
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from listgate import __version__
from listgate.config import Config, MailmanConfig, config_to_dict, parse_config
from listgate.errors import BackendUnavailable, ConfigError
from listgate.listen import ListenSpec, parse_listen_spec

__all__ = [
    "MAILMAN_WEBSERVICE_DEFAULTS",
    "Mta",
    "WebService",
    "add_arguments",
    "detect_mtas",
    "mta_hints",
    "read_mailman_cfg",
    "render_config",
    "run",
    "toml_value",
    "webservice_from_ini",
]

Backend = Literal["static", "mailman"]

MAILMAN_WEBSERVICE_DEFAULTS: Mapping[str, str] = MappingProxyType({
    "hostname": "localhost",
    "port": "8001",
    "use_https": "no",
    "api_version": "3.1",
    "admin_user": "restadmin",
    "admin_pass": "restpass",
})
"""Mailman core's own ``[webservice]`` defaults (``mailman/config/schema.cfg``, 3.3), used
for every key that ``mailman.cfg`` leaves out, as Mailman itself does."""

LISTGATE_API = "3.1"
"""The REST API version listgate speaks; Mailman 3.1+ serves it whatever its
``api_version`` (which only names the default that ``mailman info`` shows)."""

_BOOLEANS = MappingProxyType({
    **dict.fromkeys(("true", "yes", "1", "on", "enable", "enabled"), True),
    **dict.fromkeys(("false", "no", "0", "off", "disable", "disabled"), False),
})
"""lazr.config's ``as_boolean``, which Mailman applies to ``use_https``."""

_WILDCARD_HOSTS = MappingProxyType({"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"})  # noqa: S104
"""A REST server bound to every address is reached on loopback."""

PASSWORD_FILE_MODE = 0o640
CONFIG_FILE_MODE = 0o644
"""The config holds no secret."""
DEFAULT_LISTEN = Config().milter.listen
REST_TIMEOUT = MailmanConfig().timeout
"""The check waits as long as the daemon waits for one REST call."""


# --------------------------------------------------------------------------- Mailman's cfg


@dataclass(frozen=True, slots=True)
class WebService:
    """Mailman's ``[webservice]``, as far as a REST client needs it."""

    hostname: str
    port: int
    use_https: bool
    admin_user: str
    admin_pass: str
    api_version: str
    defaulted: tuple[str, ...]
    """Keys ``mailman.cfg`` left out, which took Mailman's default."""

    def __repr__(self) -> str:  # never show admin_pass
        return (f"WebService({self.hostname!r}, {self.port}, https={self.use_https}, "
                f"user={self.admin_user!r}, pass='***', api={self.api_version!r})")

    @property
    def url(self) -> str:
        """The REST root listgate uses, e.g. ``http://localhost:8001/3.1``."""
        host = _WILDCARD_HOSTS.get(self.hostname, self.hostname)
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass  # a host name
        scheme = "https" if self.use_https else "http"
        return f"{scheme}://{host}:{self.port}/{LISTGATE_API}"


def webservice_from_ini(values: Mapping[str, str], source: str) -> WebService:
    """Mailman's ``[webservice]`` from its raw *values* (absent keys: Mailman's defaults);
    ``ConfigError`` names each bad key as ``webservice.KEY``."""
    merged = {**MAILMAN_WEBSERVICE_DEFAULTS, **{k: v for k, v in values.items()
                                               if k in MAILMAN_WEBSERVICE_DEFAULTS}}
    problems = []
    port_text = merged["port"].strip()
    port = int(port_text) if port_text.isdigit() else 0
    if not 0 < port < 65536:
        problems.append(f"webservice.port: must be a port number from 1 to 65535, "
                        f"got {json.dumps(port_text)}")
    use_https = _BOOLEANS.get(merged["use_https"].strip().lower())
    if use_https is None:
        problems.append(f"webservice.use_https: must be yes or no, got "
                        f"{json.dumps(merged['use_https'])}")
    if not merged["admin_pass"]:  # never echo any part of it
        problems.append("webservice.admin_pass: is empty")
    if problems:
        raise ConfigError(problems, source)
    return WebService(
        hostname=merged["hostname"].strip(),
        port=port,
        use_https=bool(use_https),
        admin_user=merged["admin_user"].strip(),
        admin_pass=merged["admin_pass"].strip(),
        api_version=merged["api_version"].strip(),
        defaulted=tuple(k for k in MAILMAN_WEBSERVICE_DEFAULTS if k not in values),
    )


def _read_ini(path: Path, parser: configparser.RawConfigParser, depth: int) -> None:
    """Read *path* into *parser* after the file its ``[meta] extends`` names (as lazr.config
    does: the extending file wins)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: byte {exc.start}"], str(path)) from None
    own = configparser.RawConfigParser(strict=False)
    try:
        own.read_string(text, str(path))
    except configparser.ParsingError as exc:  # its lines may hold the password: numbers only
        lines = ", ".join(str(n) for n, _ in exc.errors)
        raise ConfigError([f"not an ini file Mailman can read (line {lines})"],
                          str(path)) from None
    except configparser.Error as exc:
        raise ConfigError([f"not an ini file Mailman can read ({type(exc).__name__})"],
                          str(path)) from None
    if own.has_option("meta", "extends"):
        if depth >= 8:
            raise ConfigError(["meta.extends: nested more than 8 deep"], str(path))
        _read_ini(path.parent / own.get("meta", "extends").strip(), parser, depth + 1)
    parser.read_string(text, str(path))


def read_mailman_cfg(path: Path) -> WebService:
    """The ``[webservice]`` settings of Mailman's ``mailman.cfg`` at *path*."""
    parser = configparser.RawConfigParser(strict=False)
    _read_ini(path, parser, 0)
    values = dict(parser.items("webservice")) if parser.has_section("webservice") else {}
    return webservice_from_ini(values, str(path))


# --------------------------------------------------------------------------- rendering


def toml_value(value: object) -> str:
    """*value* (as ``config_to_dict`` gives it) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: same escapes as JSON
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class _Section:
    """How ``config init`` writes one top-level table."""

    backends: tuple[Backend, ...]
    """Backends for which the section takes effect (it is left out for the others)."""
    comment: str
    """What the section is for, written above it."""


_BOTH: tuple[Backend, ...] = ("static", "mailman")
_SECTIONS: Mapping[str, _Section] = MappingProxyType({
    "milter": _Section(_BOTH, "The milter listener: the MTA connects here (Postfix "
                              "smtpd_milters, Sendmail INPUT_MAIL_FILTER S=)."),
    "policy": _Section(_BOTH, "Postfix's policy delegation (check_policy_service), an "
                              "alternative to the milter (RCPT only): uncomment it and set "
                              'listen, e.g. "inet:127.0.0.1:8891".'),
    "backend": _Section(_BOTH, "Where posting rights come from."),
    "static": _Section(("static",), "List posting address = [addresses allowed to post]; "
                                    "mail to any other recipient is not gated."),
    "mailman": _Section(("mailman",), "Mailman core's REST API."),
    "cache": _Section(("mailman",), "How long Mailman's answers are reused."),
    "gate": _Section(_BOTH, 'Defaults for every list; roll out with mode = "monitor" '
                            "(log what would be rejected), then switch to enforce."),
    "lists": _Section(_BOTH, "Per-list overrides (an example)."),
    "reply": _Section(_BOTH, "The SMTP replies."),
    "failure": _Section(("mailman",), "What to answer while Mailman cannot: tempfail (4xx) "
                                      "or accept (fail-open)."),
    "bypass": _Section(_BOTH, "Senders never judged."),
    "log": _Section(_BOTH, 'Logging (under systemd: target = "journal").'),
    "metrics": _Section(_BOTH, 'The Prometheus endpoint, e.g. listen = "127.0.0.1:9107".'),
    "events": _Section(("mailman",), "The change feed from listgate's Mailman plugin "
                                     "(README: Keeping listgate in step with Mailman)."),
    "auth": _Section(_BOTH, "Where require_authenticated lists' proof comes from (README: "
                            "Stopping forged member posts)."),
})
"""Every top-level table of the schema, in the order ``config_to_dict`` shows them."""

_EXAMPLE_LIST = "announce@example.org"


@dataclass(frozen=True, slots=True)
class MailmanTarget:
    """The ``[mailman]`` keys ``config init`` sets."""

    url: str
    user: str
    password_file: str
    source: str
    """The mailman.cfg they came from."""


def _wrap(text: str, width: int = 88) -> list[str]:
    lines: list[str] = []
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def _mailman_lines(mailman: MailmanTarget) -> list[str]:
    return [
        *_wrap(f"From Mailman's [webservice] in {mailman.source}: hostname, port and "
               "use_https (listgate speaks REST API 3.1).", ),
        f"url = {toml_value(mailman.url)}",
        "# [webservice] admin_user",
        f"user = {toml_value(mailman.user)}",
        "# [webservice] admin_pass is in this file only, never in this config (keep it",
        "# mode 0640, in the listgate user's group).",
        f"password_file = {toml_value(mailman.password_file)}",
    ]


def render_config(
    backend: Backend,
    listen: Sequence[ListenSpec],
    mailman: MailmanTarget | None = None,
) -> str:
    """The text of a listgate.toml for *backend*, listening on *listen* (pure)."""
    if (backend == "mailman") != (mailman is not None):
        raise ValueError("render_config: mailman settings go with the mailman backend only")
    defaults = config_to_dict(Config())
    made_from = f" from {mailman.source}" if mailman is not None else ""
    out = [
        *_wrap(f'listgate configuration, written by "listgate config init" (listgate '
               f"{__version__}){made_from}."),
        "#",
        '# Lines "#key = value" show a key\'s default: uncomment one to change it.',
        '# listgate.toml(5) describes every key; "listgate config check FILE" checks this',
        '# file, and "listgate lists --config FILE" shows the lists it gates.',
    ]
    active: dict[str, list[str]] = {
        "milter": [f"listen = {toml_value([str(s) for s in listen])}"],
        "backend": [f"type = {toml_value(backend)}"],
    }
    if mailman is not None:
        active["mailman"] = _mailman_lines(mailman)
    for name, section in _SECTIONS.items():
        if backend not in section.backends:
            continue
        out += ["", *_wrap(section.comment)]
        if name == "static":
            out += ["[static.posters]", f'#"{_EXAMPLE_LIST}" = ["boss@example.org"]']
        elif name == "lists":
            out += [f'#[lists."{_EXAMPLE_LIST}"]', '#mode = "monitor"',
                    '#allow = ["boss@partner.example", "@trusted.example"]']
        elif name in active:
            out += [f"[{name}]", *active[name]]
            written = {line.split(" = ")[0] for line in active[name] if " = " in line}
            hidden = written | ({"password"} if name == "mailman" else set())
            out += [f"#{key} = {toml_value(value)}" for key, value in defaults[name].items()
                    if key not in hidden]
        else:
            out.append(f"#[{name}]")
            out += [f"#{key} = {toml_value(value)}" for key, value in defaults[name].items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the MTA


class Mta(enum.Enum):
    """The MTAs Mailman documents."""

    POSTFIX = "Postfix"
    SENDMAIL = "Sendmail"
    EXIM = "Exim"


@dataclass(frozen=True, slots=True)
class FoundMta:
    """An MTA on this host and, for Postfix, its current milter settings."""

    mta: Mta
    evidence: str
    """What showed it (a program or a file)."""
    smtpd_milters: str = ""
    non_smtpd_milters: str = ""


def _postfix_milter(spec: ListenSpec) -> str:
    if spec.family == "unix":
        return f"unix:{spec.path}"
    host = f"[{spec.host}]" if spec.family == "inet6" else spec.host
    return f"inet:{host}:{spec.port}"


def _sendmail_socket(spec: ListenSpec) -> str:
    if spec.family == "unix":
        return f"local:{spec.path}"
    return f"{spec.family}:{spec.port}@{spec.host}"


def _postfix_hints(found: FoundMta, spec: ListenSpec) -> list[str]:
    milter = _postfix_milter(spec)
    existing = [m.strip() for m in found.smtpd_milters.replace(",", " ").split() if m.strip()]
    lines = [f"# Postfix ({found.evidence}): the milter. As root (then: postfix reload):"]
    settings = []
    if milter in existing:
        lines.append(f"# smtpd_milters already names {milter}.")
    else:
        settings.append(f"smtpd_milters = {', '.join([milter, *existing])}")
        if existing:
            lines.append("# listgate goes first, before the milters you already run.")
    settings += ["milter_default_action = tempfail", "milter_protocol = 6",
                 "milter_connect_timeout = 10s", "milter_command_timeout = 10s"]
    quoted = [shlex.quote(setting) for setting in settings]
    lines.append("postconf -e \\")
    lines += [f"  {q} \\" for q in quoted[:-1]] + [f"  {quoted[-1]}"]
    if milter in found.non_smtpd_milters:
        lines += _wrap(f"And take {milter} out of non_smtpd_milters: locally submitted mail "
                       "must not pass listgate.")
    if spec.family == "unix":
        lines += _wrap("smtpd runs chrooted on Debian: a unix: socket needs chroot off for "
                       "smtpd in master.cf, or use an inet: socket.")
    lines += _wrap("Or Postfix's policy delegation instead of the milter (RCPT only; it "
                   "costs Postfix less): set [policy] listen and add check_policy_service "
                   "to smtpd_recipient_restrictions, see listgate(8).")
    return lines


def _sendmail_hints(found: FoundMta, spec: ListenSpec) -> list[str]:
    return [
        *_wrap(f"Sendmail ({found.evidence}): add to sendmail.mc before the MAILER lines, "
               "then rebuild sendmail.cf and restart sendmail:"),
        f"INPUT_MAIL_FILTER(`listgate', `S={_sendmail_socket(spec)}, F=T, "
        "T=C:10s;S:10s;R:10s;E:5m')dnl",
    ]


def _exim_hints(found: FoundMta, spec: ListenSpec) -> list[str]:
    del spec
    return _wrap(
        f"Exim ({found.evidence}): Exim speaks neither milter nor Postfix's policy "
        "protocol, so listgate cannot gate posts on Exim yet. An Exim front end is being "
        "added (listgate issue 16): an acl_check_rcpt snippet that asks listgate's policy "
        'listener ([policy] listen, e.g. "inet:127.0.0.1:8891") with ${readsocket}.')


_HINTS: Mapping[Mta, Callable[[FoundMta, ListenSpec], list[str]]] = MappingProxyType({
    Mta.POSTFIX: _postfix_hints,
    Mta.SENDMAIL: _sendmail_hints,
    Mta.EXIM: _exim_hints,
})


def mta_hints(found: Sequence[FoundMta], listen: Sequence[ListenSpec]) -> list[str]:
    """What to add to each MTA in *found* to reach listgate's first listener (pure); for
    every MTA Mailman documents when none was found."""
    spec = listen[0]
    shown = list(found) or [FoundMta(mta, "not found here; if you use it")
                            for mta in Mta]
    lines = ["# ---- the MTA: listgate changes nothing there; add this yourself ----"]
    if not found:
        lines.append("# No MTA found (postconf, exim4/exim, sendmail or /etc/mail/sendmail.mc).")
    for item in shown:
        lines += _HINTS[item.mta](item, spec)
    return lines


def _search_path() -> str:
    """$PATH plus the sbin directories where MTAs keep their tools."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def _postconf(postconf: str, names: Iterable[str]) -> list[str]:
    """``postconf -h NAME...`` (read only); '' for each value it cannot give."""
    names = list(names)
    try:
        proc = subprocess.run([postconf, "-h", *names], capture_output=True, text=True,  # noqa: S603
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return [""] * len(names)
    values = proc.stdout.splitlines() if proc.returncode == 0 else []
    return (values + [""] * len(names))[: len(names)]


def detect_mtas(
    which: Callable[[str], str | None] | None = None,
    exists: Callable[[str], bool] = os.path.exists,
    postconf: Callable[[str, Iterable[str]], list[str]] = _postconf,
) -> list[FoundMta]:
    """The MTAs installed here (Postfix and Exim install a ``sendmail`` of their own, so
    Sendmail counts only through ``/etc/mail/sendmail.mc`` or when neither is there)."""
    def find(name: str) -> str | None:
        return shutil.which(name, path=_search_path()) if which is None else which(name)

    found = []
    postconf_path = find("postconf")
    if postconf_path:
        smtpd, non_smtpd = postconf(postconf_path, ("smtpd_milters", "non_smtpd_milters"))
        found.append(FoundMta(Mta.POSTFIX, postconf_path, smtpd, non_smtpd))
    exim = find("exim4") or find("exim")
    if exim:
        found.append(FoundMta(Mta.EXIM, exim))
    if exists("/etc/mail/sendmail.mc"):
        found.append(FoundMta(Mta.SENDMAIL, "/etc/mail/sendmail.mc"))
    elif not found and (sendmail := find("sendmail")):
        found.append(FoundMta(Mta.SENDMAIL, sendmail))
    return found


# --------------------------------------------------------------------------- the command


class _Refused(Exception):
    """``config init`` stops (exit 2); the message is one line for stderr."""


class _CheckFailed(_Refused):
    """Mailman's REST API did not answer as it should (exit 1)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``listgate config init``."""
    parser.add_argument(
        "--output", "-o", type=Path, metavar="FILE",
        help="write the config to FILE (never over an existing file); default: stdout")
    parser.add_argument(
        "--mailman-cfg", type=Path, metavar="MAILMAN_CFG",
        help="Mailman core's mailman.cfg (e.g. /etc/mailman3/mailman.cfg): write a config "
             "for its REST API, from its [webservice] settings")
    parser.add_argument(
        "--password-file", type=Path, metavar="FILE",
        help="with --mailman-cfg (required there): where to write the REST password "
             "(mode 0640, never over an existing file)")
    parser.add_argument(
        "--listen", action="append", default=[], metavar="SOCKETSPEC",
        help="[milter] listen (repeatable); default inet:127.0.0.1:8890")
    parser.add_argument(
        "--no-check", action="store_true",
        help="write the files without first checking that Mailman's REST API answers")


def _say(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _listen_specs(texts: Sequence[str]) -> tuple[ListenSpec, ...]:
    if not texts:
        return DEFAULT_LISTEN
    specs = []
    for text in texts:
        try:
            specs.append(parse_listen_spec(text.strip()))
        except ValueError as exc:
            raise _Refused(f"--listen: {exc}") from None
    return tuple(specs)


def _refuse_existing(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and (path.exists() or path.is_symlink()):
            raise _Refused(f"{path} exists; config init never overwrites a file (move it "
                           "away, or choose another name)")


def _validate(text: str, password: str | None) -> None:
    """The rendered config must be one ``listgate`` accepts; checked with the password
    inline (the password file is not written yet)."""
    data = tomllib.loads(text)
    mailman = data.get("mailman")
    if password is not None and isinstance(mailman, dict):
        mailman.pop("password_file", None)
        mailman["password"] = password
    try:
        parse_config(data, "the new config")
    except ConfigError as exc:
        raise _Refused("the config would not load: " + "; ".join(exc.problems)) from None


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create *path* (never over an existing file) holding *text*, with *mode* exactly."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise _Refused(f"{path} exists; config init never overwrites a file") from None
    except OSError as exc:
        raise _Refused(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise _Refused(f"cannot write {path}: {exc.strerror or exc}") from None


def _check(url: str, user: str, password: str) -> None:
    """Ask Mailman and say what it answered (its lists); ``_CheckFailed`` names the
    failure."""
    from listgate.mailman.probe import probe_rest

    try:
        probe = asyncio.run(probe_rest(url, user, password, timeout=REST_TIMEOUT))
    except BackendUnavailable as exc:
        raise _CheckFailed(f"Mailman REST check failed: {exc}") from None
    count = f"{len(probe.lists)} list{'' if len(probe.lists) == 1 else 's'}"
    _say(f"listgate: {probe.mailman_version} answers at {url} (REST API "
         f"{probe.api_version or LISTGATE_API}, user {user}): {count}",
         *(f"listgate:   {address}" for address in probe.lists))


def _from_mailman_cfg(args: argparse.Namespace, listen: Sequence[ListenSpec]) -> tuple[
        str, MailmanTarget, str]:
    """The config text, the [mailman] settings and the password, from --mailman-cfg."""
    try:
        ws = read_mailman_cfg(args.mailman_cfg)
    except ConfigError as exc:
        raise _Refused("; ".join(f"{exc.source}: {p}" for p in exc.problems)) from None
    target = MailmanTarget(ws.url, ws.admin_user, str(args.password_file.absolute()),
                           str(args.mailman_cfg))
    _say(f"listgate: read {args.mailman_cfg}: REST API {ws.url}, user {ws.admin_user}")
    if ws.defaulted:
        _say(f"listgate: Mailman's defaults for [webservice] {', '.join(ws.defaulted)} "
             f"(not set in {args.mailman_cfg})")
    if "admin_pass" in ws.defaulted:
        _say("listgate: warning: Mailman runs with its default REST password; set "
             "[webservice] admin_pass in mailman.cfg")
    if ws.api_version != LISTGATE_API:
        _say(f"listgate: [webservice] api_version is {ws.api_version}; listgate uses REST "
             f"API {LISTGATE_API}, which Mailman serves as well")
    return render_config("mailman", listen, target), target, ws.admin_pass


def _run(args: argparse.Namespace) -> int:
    if args.password_file is not None and args.mailman_cfg is None:
        raise _Refused("--password-file goes with --mailman-cfg")
    if args.mailman_cfg is not None and args.password_file is None:
        raise _Refused("--mailman-cfg needs --password-file FILE: the REST password goes "
                       "there, never into the config")
    if args.no_check and args.mailman_cfg is None:
        raise _Refused("--no-check goes with --mailman-cfg (the static map has nothing to "
                       "check)")
    listen = _listen_specs(args.listen)
    _refuse_existing(args.output, args.password_file)
    if args.mailman_cfg is None:
        text, password = render_config("static", listen), None
        _say("listgate: the static map has no lists yet: add them under [static.posters]")
    else:
        text, target, password = _from_mailman_cfg(args, listen)
    _validate(text, password)
    if password is not None:
        if args.no_check:
            _say("listgate: --no-check: Mailman was not asked")
        else:
            _check(target.url, target.user, password)
        _write_new(args.password_file, password + "\n", PASSWORD_FILE_MODE)
        _say(f"listgate: wrote the REST password to {args.password_file} (mode "
             f"{PASSWORD_FILE_MODE:04o}: chgrp it to the listgate user's group)")
    if args.output is not None:
        try:
            _write_new(args.output, text, CONFIG_FILE_MODE)
        except _Refused:
            if password is not None:
                args.password_file.unlink(missing_ok=True)
            raise
        _say(f"listgate: wrote {args.output}; next: listgate config check {args.output}, "
             f"then listgate serve --config {args.output}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    _say("", *mta_hints(detect_mtas(), listen))
    return 0


def run(args: argparse.Namespace) -> int:
    """``listgate config init``: 0 written; 1 Mailman's REST API failed the check (nothing
    written); 2 anything else that stopped it (nothing written)."""
    try:
        return _run(args)
    except _CheckFailed as exc:
        _say(f"listgate: {exc}",
             "listgate: nothing written (--no-check writes the files without asking)")
        return 1
    except _Refused as exc:
        _say(f"listgate: {exc}")
        return 2
