"""A real GNU Mailman 3 core for tests: the REST runner of a private instance, plus helpers
that build test data (domains, lists, members, roles, bans, linked addresses, settings).

Mailman itself lives in its own venv (``.venv-mailman``, or ``$LISTGATE_MAILMAN_VENV``),
installed by ``.ci/install-test-deps.sh`` from ``.ci/requirements-mailman.txt``. This module
runs in listgate's venv and only needs ``mailmanclient`` (3.3.5) there; it talks to the core
over HTTP on 127.0.0.1.

The core runs ``<venv>/bin/runner -C <cfg> -r rest`` (by default the REST runner only: no
master, no LMTP, no MTA) with SQLite in its own var dir, on a free loopback port, with a
random admin user and password. ``runners=("lmtp", "in", ...)`` starts further runners, one
``runner -r NAME`` process each (``master -r`` is broken in 3.3.10), and ``smtp_port`` points
Mailman's outgoing SMTP at a sink of the caller's on 127.0.0.1; ``lmtp_port`` is where the
LMTP runner listens. ``stop()``/``start()`` keep the var dir and the port, so a test can take
Mailman down and bring it back with its data intact. No helper sleeps for correctness: waits
are polls bounded by a timeout.

Typical use::

    with MailmanCore() as core:
        ml = core.new_list(settings={"default_nonmember_action": "reject"})
        core.subscribe(ml, "alice@example.com")
        core.ban(None, "^spam.*@")                     # a global pattern ban
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from support import free_port as free_port  # re-exported: tests import it from here

if TYPE_CHECKING:
    import httpx
    from mailmanclient import Client
    from mailmanclient.restobjects.domain import Domain
    from mailmanclient.restobjects.mailinglist import MailingList
    from mailmanclient.restobjects.member import Member
    from mailmanclient.restobjects.user import User

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_ENV = "LISTGATE_MAILMAN_VENV"
INSTALL_HINT = (
    "run `bash .ci/install-test-deps.sh` (as root) to install the Mailman test venv "
    f"(.venv-mailman, or the path in ${VENV_ENV})"
)
TEST_DOMAIN = "example.org"
"""mail_host of the domain that :meth:`MailmanCore.new_list` creates lists in by default."""

ACTIONS = ("accept", "hold", "reject", "discard", "defer")
"""Mailman's ``Action`` names, as the REST API spells them."""

_SUBSCRIBE_FLAGS: dict[str, Any] = {
    "pre_verified": True,
    "pre_confirmed": True,
    "pre_approved": True,
    "send_welcome_message": False,
}
_LIST_COUNTER = itertools.count(1)
_RUNNING: set[MailmanCore] = set()


def mailman_venv() -> Path:
    """The Mailman venv: ``$LISTGATE_MAILMAN_VENV`` (relative to the repo root) or
    ``<repo>/.venv-mailman``. The same rule as in ``.ci/install-test-deps.sh``."""
    return REPO_ROOT / os.environ.get(VENV_ENV, ".venv-mailman")


def tail(path: Path, lines: int = 40) -> str:
    """The last *lines* lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this process dies (Linux
    PR_SET_PDEATHSIG), so a killed pytest does not leave a core running; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return preexec


class MailmanStartError(RuntimeError):
    """The REST runner died or did not answer in time; the message carries its log tails."""


class MailmanCore:
    """A private Mailman 3 core (REST runner only) on 127.0.0.1.

    ``base_dir`` holds ``mailman.cfg``, ``runner.log`` (the runner's stdout+stderr) and
    ``var/`` (SQLite DB, Mailman's logs). Without it, a temporary directory is made and
    removed again by :meth:`close`. The port is chosen on the first :meth:`start` and kept.
    """

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        venv: Path | str | None = None,
        startup_timeout: float = 30.0,
        workers: int = 2,
        fast_passwords: bool = True,
        extra_config: str = "",
        runners: Sequence[str] = (),
        smtp_port: int = 9,
        pythonpath: Sequence[Path | str] = (),
    ) -> None:
        self.venv = Path(venv) if venv is not None else mailman_venv()
        self._owns_dir = base_dir is None
        self.base_dir = Path(
            tempfile.mkdtemp(prefix="listgate-mailman-") if base_dir is None else base_dir
        ).resolve()
        self.var_dir = self.base_dir / "var"
        self.config_path = self.base_dir / "mailman.cfg"
        self.runner_log = self.base_dir / "runner.log"
        self.startup_timeout = startup_timeout
        self.workers = workers
        self.fast_passwords = fast_passwords
        self.extra_config = extra_config
        """Appended to mailman.cfg; a repeated section overrides single keys of the earlier one."""
        self.runners: tuple[str, ...] = tuple(r for r in runners if r != "rest")
        """Runners started besides REST (e.g. lmtp, in, pipeline, out, virgin), one process each."""
        self.smtp_port = smtp_port
        """Where Mailman's out runner sends mail (127.0.0.1); 9 (discard) by default."""
        self.pythonpath: tuple[str, ...] = tuple(str(p) for p in pythonpath)
        """PYTHONPATH of every Mailman process (e.g. a plugin's package); empty: inherited."""
        self.user = "admin-" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self._lmtp_port = 0
        self.startup_seconds: float | None = None
        """How long the last :meth:`start` took until REST answered."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._runner_procs: dict[str, subprocess.Popen[bytes]] = {}
        self._client: Client | None = None

    # ------------------------------------------------------------------ process

    @property
    def url(self) -> str:
        """REST API root, e.g. ``http://127.0.0.1:PORT/3.1`` (valid after the first start)."""
        return f"http://127.0.0.1:{self.port}/3.1"

    @property
    def auth(self) -> tuple[str, str]:
        """(user, password) for HTTP basic auth."""
        return (self.user, self.password)

    @property
    def is_running(self) -> bool:
        """True while the runner process exists (it may not answer yet during start)."""
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        gunicorn_cfg = self.base_dir / "gunicorn.cfg"
        # control_socket_disable: gunicorn >= 25.1 otherwise opens ~/.gunicorn/gunicorn.ctl,
        # one path shared by every instance on the machine.
        gunicorn_cfg.write_text(
            "[gunicorn]\ngraceful_timeout = 5\ntimeout = 360\ncontrol_socket_disable = true\n"
        )
        passwords = ""
        if self.fast_passwords:
            # Mailman's own passlib.cfg leaves passlib's default of 656,000 sha512_crypt
            # rounds: about 0.4 s for every password set (users, moderator_password). Same
            # scheme and hash format here, with the fewest rounds passlib allows by default.
            passlib_cfg = self.base_dir / "passlib.cfg"
            passlib_cfg.write_text(
                "[passlib]\nschemes = sha512_crypt\ndefault = sha512_crypt\n"
                "sha512_crypt__default_rounds = 1000\n"
            )
            passwords = f"\n[passwords]\nconfiguration: {passlib_cfg}\n"
        self.config_path.write_text(
            f"""\
[mailman]
site_owner: postmaster@{TEST_DOMAIN}
layout: testing

[paths.testing]
var_dir: {self.var_dir}

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///$DATA_DIR/mailman.db

[webservice]
hostname: 127.0.0.1
port: {self.port}
admin_user: {self.user}
admin_pass: {self.password}
workers: {self.workers}
configuration: {gunicorn_cfg}

[mta]
incoming: mailman.mta.null.NullMTA
smtp_host: 127.0.0.1
smtp_port: {self.smtp_port}
lmtp_host: 127.0.0.1
lmtp_port: {self._lmtp_port}

[devmode]
enabled: yes
recipient: devnull@example.invalid
{passwords}
{self.extra_config}"""
        )

    def start(self) -> None:
        """Start the REST runner and wait until ``GET /system/versions`` answers 200.

        Raises :class:`MailmanStartError` (with the logs' tails) if the runner dies or does
        not answer within ``startup_timeout`` seconds; the process is stopped in that case.
        """
        if self.is_running:
            return
        runner = self.venv / "bin" / "runner"
        if not os.access(runner, os.X_OK):
            raise MailmanStartError(f"{runner} not found: {INSTALL_HINT}")
        if self.port == 0:
            self.port = free_port()
            self._lmtp_port = free_port()  # nothing listens on it unless "lmtp" is a runner
            self._write_config()
        self._client = None
        began = time.monotonic()
        with self.runner_log.open("ab") as log:
            log.write(f"==== start {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(runner), "-C", str(self.config_path), "-r", "rest"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._runner_env(),
                start_new_session=True,  # own process group: stop() can kill the workers too
                preexec_fn=_die_with_parent(),
            )
        _RUNNING.add(self)
        try:
            self._wait_ready(began)
            self._start_runners(runner, began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    @property
    def lmtp_port(self) -> int:
        """The port of Mailman's LMTP runner on 127.0.0.1 (valid after the first start)."""
        return self._lmtp_port

    def runner_log_path(self, name: str) -> Path:
        """stdout+stderr of the runner *name* (one file per extra runner)."""
        return self.base_dir / f"runner-{name}.log"

    def _start_runners(self, runner: Path, began: float) -> None:
        """Start every runner of ``self.runners``; wait until LMTP (if any) accepts."""
        for name in self.runners:
            with self.runner_log_path(name).open("ab") as log:
                log.write(f"==== start {time.strftime('%H:%M:%S')}\n".encode())
                log.flush()
                self._runner_procs[name] = subprocess.Popen(
                    [str(runner), "-C", str(self.config_path), "-r", name],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                    env=self._runner_env(),
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
        if "lmtp" not in self.runners:
            return
        deadline = began + self.startup_timeout
        delay = 0.05
        while True:
            for name, proc in self._runner_procs.items():
                rc = proc.poll()
                if rc is not None:
                    raise MailmanStartError(
                        f"Mailman runner {name} exited with rc={rc}\n"
                        + tail(self.runner_log_path(name))
                        + self._logs()
                    )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self._lmtp_port), timeout=1.0
            ):
                return
            if time.monotonic() >= deadline:
                raise MailmanStartError(
                    f"Mailman LMTP on 127.0.0.1:{self._lmtp_port} did not accept within "
                    f"{self.startup_timeout:.0f} s\n" + tail(self.runner_log_path("lmtp"))
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def runners_alive(self) -> dict[str, bool]:
        """Each extra runner: is its process still alive?"""
        return {name: proc.poll() is None for name, proc in self._runner_procs.items()}

    def _runner_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAN_")}
        env["HOME"] = str(self.base_dir)  # nothing of the instance lands in the real $HOME
        env.pop("XDG_RUNTIME_DIR", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return env

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.startup_timeout
        last_error = "no attempt"
        delay = 0.05
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise MailmanStartError(f"Mailman REST runner exited with rc={rc}" + self._logs())
            try:
                status = self._get_status("system/versions", timeout=2.0)
            except OSError as e:
                last_error = repr(e)
            else:
                if status == 200:
                    return
                last_error = f"HTTP {status}"
            if time.monotonic() >= deadline:
                raise MailmanStartError(
                    f"Mailman REST on {self.url} did not answer 200 within "
                    f"{self.startup_timeout:.0f} s (last: {last_error})" + self._logs()
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _get_status(self, path: str, timeout: float = 5.0) -> int:
        """HTTP status of ``GET {url}/{path}`` with admin auth (stdlib only)."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(
            f"{self.url}/{path}", headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def _logs(self) -> str:
        parts = [f"\n--- {self.runner_log} (tail) ---\n{tail(self.runner_log)}"]
        for name in ("mailman.log", "http.log", "error.log"):
            text = tail(self.var_dir / "logs" / name, 20)
            if text:
                parts.append(f"\n--- var/logs/{name} (tail) ---\n{text}")
        return "".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the runner and wait; SIGKILL its process group if it is not gone in time.

        The var dir and the port are kept, so :meth:`start` brings the same data back.
        """
        extra, self._runner_procs = self._runner_procs, {}
        for proc in extra.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in extra.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the runner leads its own process group
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(5)
        # Workers left behind by an arbiter that died abnormally.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def close(self) -> None:
        """Stop, and remove the base dir if this object made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> MailmanCore:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self) -> str:
        """Tails of the runner's output and of Mailman's own logs (for failure messages)."""
        return self._logs()

    # ------------------------------------------------------------------ REST client

    def client(self) -> Client:
        """A ``mailmanclient.Client`` for this core (one per start; it keeps no connection)."""
        if self._client is None:
            from mailmanclient import Client

            self._client = Client(self.url, self.user, self.password)
        return self._client

    # ------------------------------------------------------------------ test data

    def create_domain(self, mail_host: str, alias_domain: str | None = None) -> Domain:
        """The domain *mail_host*, created if it does not exist yet."""
        from urllib.error import HTTPError

        c = self.client()
        try:
            return c.get_domain(mail_host)
        except HTTPError as e:
            if e.code != 404:
                raise
        return c.create_domain(mail_host, alias_domain=alias_domain)

    def new_list(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        domain: str = TEST_DOMAIN,
        name: str | None = None,
    ) -> MailingList:
        """A new list ``t<counter>-<random>@<domain>`` (the domain is created if needed),
        with *settings* applied through :meth:`set_settings`."""
        dom = self.create_domain(domain)
        if name is None:
            name = f"t{next(_LIST_COUNTER)}-{secrets.token_hex(3)}"
        ml = dom.create_list(name)
        if settings:
            self.set_settings(ml, **settings)
        return ml

    def delete_list(self, mlist: MailingList | str) -> None:
        """Delete a list (by object or fqdn); a list that is already gone is fine."""
        from urllib.error import HTTPError

        fqdn = mlist if isinstance(mlist, str) else mlist.fqdn_listname
        try:
            self.client().delete_list(fqdn)
        except HTTPError as e:
            if e.code != 404:
                raise

    def set_settings(self, mlist: MailingList, **settings: Any) -> dict[str, Any]:
        """PATCH ``lists/<id>/config`` with *settings* (one request) and return the config
        as Mailman reports it afterwards.

        Values are what the REST API takes: action names ("accept", "hold", "reject",
        "discard", "defer") for ``default_member_action``/``default_nonmember_action``,
        lists of strings for ``*_these_nonmembers``, a bool for ``emergency``. A plain-text
        ``moderator_password`` is hashed by Mailman (passlib, sha512_crypt) before it is
        stored; the config then shows the hash, never the plain text. It cannot be cleared
        through REST: ``""`` stores the hash of the empty password, and None is refused here.
        """
        # mailmanclient form-encodes None as the string 'None' (for moderator_password that
        # would set the password "None"); Mailman's REST API has no way to unset a value.
        if nones := [k for k, v in settings.items() if v is None]:
            raise ValueError(f"None cannot be sent through REST (keys: {nones})")
        s = mlist.settings
        for key, value in settings.items():
            s[key] = value
        s.save()
        return dict(mlist.settings.rest_data)

    def subscribe(
        self,
        mlist: MailingList,
        email: str,
        moderation_action: str | None = None,
        *,
        display_name: str | None = None,
    ) -> Member:
        """Subscribe *email* as a regular member right away (no confirmation, no welcome
        mail) and optionally set its personal ``moderation_action``."""
        member = mlist.subscribe(email, display_name, **_SUBSCRIBE_FLAGS)
        if isinstance(member, dict):  # 202: a pending request, not a Member
            raise AssertionError(f"subscription of {email} is pending: {member}")
        if moderation_action is not None:
            member.moderation_action = moderation_action
            member.save()
        return member

    def _add_role(
        self, mlist: MailingList, role: str, email: str, display_name: str | None
    ) -> Member:
        # display_name is always sent: without it mailmanclient stores the string 'None'.
        mlist.add_role(role, email, display_name if display_name is not None else "")
        return self.get_membership(mlist, role, email)

    def get_membership(self, mlist: MailingList, role: str, email: str) -> Member:
        """The *role* membership (member/owner/moderator/nonmember) of *email* on *mlist*."""
        found = [
            m for m in mlist.find_members(address=email, role=role) if m.email == email.lower()
        ]
        if len(found) != 1:
            raise AssertionError(f"{email} has {len(found)} {role} records on {mlist.list_id}")
        return found[0]

    def add_owner(self, mlist: MailingList, email: str, display_name: str | None = None) -> Member:
        """Make *email* an owner of *mlist* (owners are not members for posting)."""
        return self._add_role(mlist, "owner", email, display_name)

    def add_moderator(
        self, mlist: MailingList, email: str, display_name: str | None = None
    ) -> Member:
        """Make *email* a moderator of *mlist* (moderators are not members for posting)."""
        return self._add_role(mlist, "moderator", email, display_name)

    def add_nonmember(
        self,
        mlist: MailingList,
        email: str,
        moderation_action: str | None,
        display_name: str | None = None,
    ) -> Member:
        """A nonmember record for *email* with its own ``moderation_action`` (None: no
        specific action, as for records Mailman creates by itself)."""
        member = self._add_role(mlist, "nonmember", email, display_name)
        if moderation_action is not None:
            member.moderation_action = moderation_action
            member.save()
        return member

    def ban(self, mlist: MailingList | None, email_or_pattern: str) -> None:
        """Ban an address (exact) or a pattern (starting with ``^``) on *mlist*, or
        site-wide if *mlist* is None."""
        bans = self.client().bans if mlist is None else mlist.bans
        bans.add(email_or_pattern)

    def unban(self, mlist: MailingList | None, email_or_pattern: str) -> None:
        """Remove a ban entry added by :meth:`ban` (list or, with None, global)."""
        bans = self.client().bans if mlist is None else mlist.bans
        bans.remove(email_or_pattern)

    def link_address(
        self, user_email: str, other_email: str, *, display_name: str = "Linked User"
    ) -> User:
        """Give the User of *user_email* (created if there is none) the further address
        *other_email*, so Mailman treats a post from either as coming from the same user.

        *other_email* may already exist on its own or belong to another User: it is absorbed
        (``absorb_existing``), merging that User into this one.
        """
        from urllib.error import HTTPError

        c = self.client()
        try:
            user = c.get_user(user_email)
        except HTTPError as e:
            if e.code != 404:
                raise
            user = c.create_user(user_email, secrets.token_urlsafe(12), display_name)
        user.add_address(other_email, absorb_existing=True)
        return c.get_user(user_email)

    def sender_member(self, mlist: MailingList, *senders: str) -> dict[str, str | None]:
        """Ask Mailman's own code (``rules.moderation._find_sender_member``, run through
        ``mailman withlist`` against this instance's database) which member each sender
        counts as: sender -> the subscribed member's email, or None for a nonmember.

        Slow (about 2 s per call: one ``mailman`` process); meant as an oracle that the
        test data means to Mailman what a test assumes, not for every test.
        """
        probe_dir = self.base_dir / "probe"
        probe_dir.mkdir(exist_ok=True)
        (probe_dir / "listgate_mm_probe.py").write_text(_PROBE_SOURCE)
        env = self._runner_env()
        env["PYTHONPATH"] = os.pathsep.join((str(probe_dir), *self.pythonpath))
        proc = subprocess.run(
            [
                str(self.venv / "bin" / "mailman"),
                "-C",
                str(self.config_path),
                "--run-as-root",  # harmless when not root; required when root
                "withlist",
                "-r",
                "listgate_mm_probe.find_sender_member",
                "-l",
                mlist.fqdn_listname,
                *senders,
            ],
            capture_output=True,
            text=True,
            cwd=self.base_dir,
            env=env,
            timeout=60,
            check=False,
        )
        answers: dict[str, str | None] = {}
        for line in proc.stdout.splitlines():
            if line.startswith(_PROBE_TAG):
                sender, _, member = line[len(_PROBE_TAG) :].partition(" ")
                answers[sender] = member or None
        if proc.returncode != 0 or set(answers) != {s.lower() for s in senders}:
            raise AssertionError(
                f"mailman withlist probe failed (rc={proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return answers

    def mailman_cli(
        self, *args: str, pythonpath: Sequence[Path | str] = (), timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``mailman -C <cfg> ARGS...`` against this instance (one process, about 2 s);
        *pythonpath* goes before the instance's own. Output is captured; not checked."""
        env = self._runner_env()
        env["PYTHONPATH"] = os.pathsep.join((*map(str, pythonpath), *self.pythonpath))
        return subprocess.run(
            [str(self.venv / "bin" / "mailman"), "-C", str(self.config_path),
             "--run-as-root", *args],
            capture_output=True, text=True, cwd=self.base_dir, env=env, timeout=timeout,
            check=False,
        )

    def http(self, timeout: float = 10.0) -> httpx.Client:
        """An ``httpx.Client`` with base_url :attr:`url` and the admin auth (close it)."""
        import httpx

        return httpx.Client(base_url=self.url + "/", auth=self.auth, timeout=timeout)

    def user_id(self, email: str) -> str | None:
        """The user_id of the User owning *email*, or None if the address has no User."""
        from urllib.error import HTTPError

        try:
            return str(self.client().get_user(email).user_id)
        except HTTPError as e:
            if e.code == 404:
                return None
            raise


_PROBE_TAG = "LISTGATE-PROBE "
_PROBE_SOURCE = f"""\
# Written by tests/mailman_harness.py; run inside Mailman by `mailman withlist -r`.
from mailman.email.message import Message
from mailman.rules.moderation import _find_sender_member


def find_sender_member(mlist, *senders):
    for sender in senders:
        msg = Message()
        msg["From"] = sender
        member = _find_sender_member(mlist, msg)
        found = "" if member is None else member.address.email
        print("{_PROBE_TAG}" + sender.lower() + " " + found)
"""


def stop_all(cores: Iterable[MailmanCore] | None = None) -> None:
    """Stop every core still running (also run at interpreter exit)."""
    for core in list(_RUNNING if cores is None else cores):
        core.stop()


atexit.register(stop_all)
