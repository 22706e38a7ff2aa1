"""Helpers for the end-to-end tests: a private Postfix instance, an LMTP sink, listgate
processes, an SMTP client that records a transcript (and the sessions of one test), the
lifetime of a private daemon, and a miltertest runner.

Everything listens on loopback only (127.0.0.1 / ::1) on ports found by binding port 0.
No helper sleeps for correctness: waits are polls bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from support import (  # free_port and the others are re-exported for the e2e tests
    ListgateServe,
)
from support import accepts_connections as accepts_connections
from support import free_port as free_port
from support import listgate_command as listgate_command
from support import wait_until as wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = Path(__file__).resolve().parent / "lua"
INSTALL_HINT = "run .ci/install-test-deps.sh as root to install the test dependencies"

LIST = "list@example.org"
MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"
ANNOUNCE = "announce@example.org"
BOSS = "boss@example.org"
POSTERS: dict[str, list[str]] = {LIST: [MEMBER], ANNOUNCE: [BOSS]}
ALICE = "alice@example.org"
"""A recipient in the relayed domain that is not a list (delivered to the sink)."""
BOB = "bob@example.org"
"""Another such recipient."""
CLIENT_HELO = "client.feas.test"

# Postfix's own replies (smtpd), where listgate has no say.
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
NO_VALID_RCPT = "554 5.5.1 Error: no valid recipients"


def reject_text(sender: str, lst: str = LIST) -> str:
    """The text of listgate's default reject reply (after ``550 5.7.1 ``)."""
    return f"<{sender}> is not allowed to post to <{lst}>"


def rejection(sender: str, lst: str = LIST) -> str:
    """listgate's default reject reply line (as a milter reply reaches the client)."""
    return f"550 5.7.1 {reject_text(sender, lst)}"


# --------------------------------------------------------------------------- generic


def find_binary(name: str) -> str:
    """Absolute path of *name* (also looked up in the sbin dirs), or fail with the install hint."""
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin"])
    path = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)
    if path is None:
        raise AssertionError(f"required program {name!r} is not installed: {INSTALL_HINT}")
    return path


def ipv6_loopback_available() -> bool:
    """True if a TCP socket can be bound on ::1 (false in containers with IPv6 disabled)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def traversable_tmpdir(prefix: str) -> Path:
    """A fresh dir under /tmp that every user can traverse (Postfix runs as user postfix).

    pytest's own tmp dirs live under a 0700 dir, which the postfix user cannot enter.
    The path is kept short: unix-socket paths must fit in 107 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def tail(text: str, lines: int = 40) -> str:
    """The last *lines* lines of *text*."""
    return "\n".join(text.splitlines()[-lines:])


def message_bytes(
    sender: str, recipients: Sequence[str], token: str, subject: str = "e2e"
) -> bytes:
    """A small RFC 5322 message carrying *token* in an X-E2E-Token header."""
    headers = [
        f"From: <{sender}>",
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <{token}@e2e.feas.test>",
        f"X-E2E-Token: {token}",
    ]
    body = ["", f"token {token}", ""]
    return "\r\n".join(headers + body).encode("ascii")


def new_token() -> str:
    """A unique token to find one message in the sink."""
    return uuid.uuid4().hex


class Instance(Protocol):
    """A private daemon of the tests (an MTA): written once, started, stopped."""

    def create(self) -> None:
        """Write its configuration and directories."""

    def start(self) -> None:
        """Start it; return once it answers."""

    def stop(self) -> None:
        """Stop it and every process it started."""


_I = TypeVar("_I", bound=Instance)


@contextlib.contextmanager
def instance_lifetime(
    instance: _I, base: Path, keep: Callable[[], Path], files: Sequence[str]
) -> Iterator[_I]:
    """Create and start *instance* (whose files are under *base*); on exit stop it, copy
    *files* (paths under *base*) into ``keep()`` for the test report and remove *base*."""
    try:
        instance.create()
        instance.start()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            dest = keep()
            for name in files:
                if (base / name).exists():
                    shutil.copy(base / name, dest / Path(name).name)
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- LMTP sink


@dataclass(frozen=True)
class Delivery:
    """One LMTP transaction received by the sink."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    @property
    def token(self) -> str | None:
        """The X-E2E-Token header value, if any."""
        m = re.search(rb"^X-E2E-Token: *(\S+)", self.data, re.MULTILINE)
        return m.group(1).decode("ascii") if m else None


class _SinkHandler:
    """aiosmtpd handler: record every envelope, answer once per recipient (LMTP)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.deliveries.append(
                Delivery(envelope.mail_from or "", tuple(envelope.rcpt_tos), bytes(content))
            )
        # aiosmtpd's LMTP class sends a single reply after DATA, but an LMTP client
        # (Postfix) waits for one reply per accepted recipient (RFC 2033 section 4.2).
        return "\r\n".join(f"250 2.0.0 <{r}> delivered" for r in envelope.rcpt_tos)


class _LmtpController(Controller):
    def factory(self) -> SMTP:
        return LMTP(self.handler, hostname="sink.feas.test")


class LmtpSink:
    """An aiosmtpd LMTP server on 127.0.0.1 that records what Postfix delivers."""

    def __init__(self) -> None:
        self._handler = _SinkHandler()
        self.port = free_port()
        self._controller = _LmtpController(self._handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        """Start the server thread (returns once it accepts connections)."""
        self._controller.start()

    def stop(self) -> None:
        """Stop the server thread."""
        self._controller.stop()

    @property
    def deliveries(self) -> list[Delivery]:
        """A snapshot of every delivery so far."""
        with self._handler.lock:
            return list(self._handler.deliveries)

    def deliveries_for(self, token: str) -> list[Delivery]:
        """Deliveries of the message carrying *token*."""
        return [d for d in self.deliveries if d.token == token]

    def recipients_for(self, token: str) -> list[str]:
        """Every recipient that received the message carrying *token* (with repeats)."""
        return sorted(r.lower() for d in self.deliveries_for(token) for r in d.rcpt_tos)

    def wait_for(self, token: str, recipients: Iterable[str], timeout: float = 15.0) -> list[str]:
        """Wait until every one of *recipients* received *token*; return all its recipients."""
        want = {r.lower() for r in recipients}

        def probe() -> list[str] | None:
            got = self.recipients_for(token)
            return got if want <= set(got) else None

        return wait_until(
            probe,
            timeout,
            f"delivery of {token} to {sorted(want)}",
            detail=lambda: f"delivered so far: {self.recipients_for(token)}",
        )


# --------------------------------------------------------------------------- Postfix


@dataclass(frozen=True)
class Listener:
    """One smtpd listener of the private Postfix instance and the milter it talks to."""

    name: str
    port: int
    milters: str = ""
    """Value for smtpd_milters on this listener ("" = no milter)."""
    overrides: tuple[tuple[str, str], ...] = ()
    """Further per-listener main.cf overrides (master.cf -o name=value)."""


def _postfix_main_cf(base: Path, sink_port: int, ipv6: bool) -> str:
    return f"""\
# Private Postfix instance for listgate's end-to-end tests (generated).
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-e2e
maillog_file = {base}/log/maillog
maillog_file_prefixes = {base}
myhostname = mx.feas.test
mydomain = feas.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = {"all" if ipv6 else "ipv4"}
mynetworks = 127.0.0.1/32
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = example.org
relay_recipient_maps =
relay_transport = lmtp:inet:127.0.0.1:{sink_port}
default_transport = error:5.3.0 no outbound delivery in the e2e test instance
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP listgate-e2e
smtpd_relay_restrictions = reject_unauth_destination
smtpd_milters =
non_smtpd_milters =
milter_default_action = tempfail
milter_protocol = 6
milter_connect_timeout = 3s
milter_command_timeout = 5s
milter_content_timeout = 10s
biff = no
append_dot_mydomain = no
"""


_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _postfix_master_cf(listeners: Sequence[Listener]) -> str:
    lines = ["# service type  private unpriv  chroot  wakeup  maxproc command + args"]
    for lst in listeners:
        lines.append(f"127.0.0.1:{lst.port} inet n - n - - smtpd")
        lines.append(f"  -o syslog_name=postfix-e2e/{lst.name}")
        lines.append(f"  -o smtpd_milters={lst.milters}")
        lines.extend(f"  -o {k}={v}" for k, v in lst.overrides)
    return "\n".join(lines) + "\n" + _MASTER_CF_SERVICES


class PostfixInstance:
    """A private Postfix instance (own config, queue and data dirs) on 127.0.0.1.

    Several smtpd listeners share the instance, one per milter setup, so no test has to
    change the configuration (and race a ``postfix reload``) while Postfix runs.
    """

    def __init__(self, base: Path, listeners: Sequence[Listener], sink_port: int) -> None:
        self.base = base
        self.listeners = {lst.name: lst for lst in listeners}
        self.config_dir = base / "etc"
        self.maillog = base / "log" / "maillog"
        self._postfix = find_binary("postfix")
        self._postqueue = find_binary("postqueue")
        self._script = find_binary("script")
        self._sink_port = sink_port
        self._started = False

    # -- lifecycle

    def create(self) -> None:
        """Write main.cf/master.cf and the directory layout Postfix insists on."""
        for sub in ("etc", "spool", "data", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
            (self.base / sub).chmod(0o755)
        shutil.chown(self.base / "data", "postfix", "postfix")  # must belong to mail_owner
        (self.config_dir / "main.cf").write_text(
            _postfix_main_cf(self.base, self._sink_port, ipv6_loopback_available())
        )
        (self.config_dir / "master.cf").write_text(
            _postfix_master_cf(list(self.listeners.values()))
        )

    def _run_postfix(self, action: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        # postfix(1) prints its fatal errors only to a terminal: give it one with script(1).
        cmd = f"{shlex.quote(self._postfix)} -c {shlex.quote(str(self.config_dir))} {action}"
        return subprocess.run(
            [self._script, "-qec", cmd, "/dev/null"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Start Postfix and wait until every listener answers with a 220 banner."""
        proc = self._run_postfix("start")
        if proc.returncode != 0:
            raise AssertionError(
                f"postfix start failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"--- maillog tail ---\n{self.maillog_tail()}"
            )
        self._started = True
        for lst in self.listeners.values():
            wait_until(
                functools.partial(_smtp_banner, lst.port),
                10.0,
                f"Postfix listener {lst.name} on 127.0.0.1:{lst.port} to send 220",
                interval=0.05,
                detail=lambda: (
                    f"postfix start output:\n{proc.stdout}\n"
                    f"--- maillog tail ---\n{self.maillog_tail()}"
                ),
            )

    def master_pid(self) -> int | None:
        """The master process id while it runs."""
        try:
            pid = int((self.base / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def processes(self) -> list[int]:
        """Ids of the running Postfix processes of this instance (MAIL_CONFIG = our dir)."""
        want = f"MAIL_CONFIG={self.config_dir}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
        master = self.master_pid()
        if master is not None and master not in pids:
            pids.append(master)
        return [p for p in pids if _pid_alive(p)]

    def stop(self) -> None:
        """Stop Postfix and wait until none of its processes is left."""
        if not self._started:
            return
        proc = self._run_postfix("stop")
        try:
            wait_until(
                lambda: not self.processes(),
                10.0,
                "the Postfix processes of the e2e instance to exit",
                interval=0.1,
                detail=lambda: (
                    f"postfix stop output: {proc.stdout}{proc.stderr}\nleft: {self.processes()}"
                ),
            )
        finally:
            for pid in self.processes():  # only processes of this instance
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self._started = False

    # -- inspection

    def maillog_text(self) -> str:
        """The whole maillog so far."""
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return "(no maillog)"

    def maillog_tail(self, lines: int = 40) -> str:
        """The end of the maillog, for assertion messages."""
        return tail(self.maillog_text(), lines)

    def log_mark(self) -> int:
        """The current maillog size, to look only at what is logged after this point."""
        try:
            return self.maillog.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        """What was logged after :meth:`log_mark` returned *mark*."""
        try:
            with self.maillog.open("rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, since: int, timeout: float = 10.0) -> str:
        """Wait until a maillog line after offset *since* matches *pattern*; return it."""

        def probe() -> str | None:
            for line in self.log_since(since).splitlines():
                if re.search(pattern, line):
                    return line
            return None

        return wait_until(
            probe, timeout, f"maillog line matching {pattern!r}", detail=self.maillog_tail
        )

    def queue_listing(self) -> str:
        """Output of ``postqueue -p`` for this instance."""
        proc = subprocess.run(
            [self._postqueue, "-c", str(self.config_dir), "-p"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return proc.stdout + proc.stderr

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        """Wait until the instance's mail queue is empty (every message delivered)."""
        wait_until(
            lambda: "Mail queue is empty" in self.queue_listing(),
            timeout,
            "the Postfix queue to drain",
            interval=0.1,
            detail=lambda: f"{self.queue_listing()}\n--- maillog tail ---\n{self.maillog_tail()}",
        )


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _smtp_banner(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            banner = s.recv(512)
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
            return banner.startswith(b"220")
    except OSError:
        return False


# --------------------------------------------------------------------------- SMTP client


@dataclass(frozen=True)
class Reply:
    """One SMTP reply."""

    code: int
    text: str
    """Reply text without the code; lines of a multi-line reply are joined with newlines."""

    @property
    def line(self) -> str:
        """The last reply line as sent on the wire, e.g. ``550 5.7.1 <a> is not ...``."""
        return f"{self.code} {self.text.splitlines()[-1] if self.text else ''}".rstrip()

    def __str__(self) -> str:
        return self.line


@dataclass
class Transcript:
    """An SMTP conversation: client lines as ``-> ...``, server lines as ``<- ...``."""

    title: str
    lines: list[str] = field(default_factory=list)

    def client(self, data: str) -> None:
        """Record what the client sent (one entry per line)."""
        lines = data.split("\r\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.lines.extend(f"-> {line}".rstrip() for line in lines)

    def server(self, code: int, text: str) -> None:
        """Record a (possibly multi-line) reply."""
        parts = text.split("\n") if text else [""]
        for i, part in enumerate(parts):
            sep = " " if i == len(parts) - 1 else "-"
            self.lines.append(f"<- {code}{sep}{part}".rstrip())

    def render(self) -> str:
        """The transcript as text, with a title line."""
        return f"=== {self.title} ===\n" + "\n".join(self.lines) + "\n"


class RecordingSMTP(smtplib.SMTP):
    """smtplib client that logs every line in a :class:`Transcript`."""

    def __init__(self, transcript: Transcript, host: str, port: int, timeout: float = 20.0) -> None:
        self.transcript = transcript
        super().__init__(host, port, local_hostname=CLIENT_HELO, timeout=timeout)

    def send(self, s: str | bytes) -> None:  # type: ignore[override]
        """Send raw data, recording it."""
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
        self.transcript.client(text)
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        """Read a reply, recording it."""
        code, msg = super().getreply()
        self.transcript.server(code, msg.decode("utf-8", "replace"))
        return code, msg

    def command(self, line: str) -> Reply:
        """Send one command line verbatim (e.g. ``MAIL FROM:<a@b>``) and return the reply."""
        code, msg = self.docmd(line)
        return Reply(code, msg.decode("utf-8", "replace"))

    def hello(self) -> Reply:
        """EHLO with a fixed name (no DNS)."""
        return self.command(f"EHLO {CLIENT_HELO}")

    def mail(self, sender: str) -> Reply:  # type: ignore[override]
        """MAIL FROM:<sender>."""
        return self.command(f"MAIL FROM:<{sender}>")

    def rcpt(self, recipient: str) -> Reply:  # type: ignore[override]
        """RCPT TO:<recipient>."""
        return self.command(f"RCPT TO:<{recipient}>")

    def reset(self) -> Reply:
        """RSET."""
        return self.command("RSET")

    def data_message(self, message: bytes) -> tuple[Reply, Reply | None]:
        """DATA + message; returns the DATA reply and (if it was 354) the final reply."""
        first = self.command("DATA")
        if first.code != 354:
            return first, None
        body = re.sub(rb"(?m)^\.", b"..", message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body + b".\r\n")
        code, msg = self.getreply()
        return first, Reply(code, msg.decode("utf-8", "replace"))

    def close_politely(self) -> None:
        """QUIT if still connected, then close."""
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if self.sock is not None:
                self.command("QUIT")
        self.close()


class SmtpSessions:
    """Recorded SMTP sessions of one test to one MTA instance (listener name -> port)."""

    def __init__(self, ports: Mapping[str, int], test_name: str) -> None:
        self.ports = ports
        self.test_name = test_name
        self.clients: list[RecordingSMTP] = []

    def connect(self, listener: str, title: str) -> RecordingSMTP:
        """A new recorded session to *listener*."""
        transcript = Transcript(f"{self.test_name}: {title}")
        client = RecordingSMTP(transcript, "127.0.0.1", self.ports[listener])
        self.clients.append(client)
        return client

    def close(self) -> str:
        """QUIT every session; the transcripts as text."""
        for client in self.clients:
            client.close_politely()
        return "".join(c.transcript.render() for c in self.clients)


# --------------------------------------------------------------------------- listgate


def toml_config(
    listen: Sequence[str],
    posters: dict[str, list[str]],
    milter: dict[str, str] | None = None,
    *,
    policy_listen: Sequence[str] = (),
    policy: dict[str, str | int | float] | None = None,
) -> str:
    """A listgate config file (TOML): [milter] listen (+ *milter* string settings), posters;
    with *policy_listen* also [policy] listen (+ *policy* settings)."""
    q = json.dumps  # a JSON string of ASCII text is a valid TOML basic string
    out = ["[milter]", f"listen = [{', '.join(q(s) for s in listen)}]"]
    out += [f"{k} = {q(v)}" for k, v in (milter or {}).items()]
    if policy_listen:
        out += ["", "[policy]", f"listen = [{', '.join(q(s) for s in policy_listen)}]"]
        out += [f"{k} = {q(v)}" for k, v in (policy or {}).items()]
    out += ["", "[static.posters]"]
    out += [f"{q(k)} = [{', '.join(q(v) for v in vs)}]" for k, vs in posters.items()]
    return "\n".join(out) + "\n"


class ListgateProcess(ListgateServe):
    """``listgate serve --config FILE`` as a child process, logging to a file; ready once
    every milter and policy listen spec accepts connections. ``stop`` fails the test if
    SIGTERM does not end it in time."""

    def __init__(
        self,
        workdir: Path,
        listen: Sequence[str],
        posters: dict[str, list[str]],
        milter: dict[str, str] | None = None,
        *,
        policy_listen: Sequence[str] = (),
        policy: dict[str, str | int | float] | None = None,
    ) -> None:
        self.listen = list(listen)
        self.policy_listen = list(policy_listen)
        """[policy] listen specs; start() waits for these too."""
        super().__init__(
            workdir,
            toml_config(self.listen, posters, milter, policy_listen=self.policy_listen,
                        policy=policy),
            wait_for=self.listen + self.policy_listen,
            ready_line=None,
        )

    def stderr_text(self) -> str:
        """What the process logged so far."""
        return self.log()

    def decisions(self) -> list[str]:
        """Its decision log lines so far."""
        return [ln for ln in self.stderr_text().splitlines() if "listgate.decision" in ln]

    def decided(self, sender: str, rcpt: str, verdict: str) -> bool:
        """True once it logged the decision *verdict* for *sender* -> *rcpt*."""
        return any(f"from=<{sender}> to=<{rcpt}>" in ln and f"verdict={verdict}" in ln
                   for ln in self.decisions())

    def stop(self, timeout: float = 10.0, *, must_exit: bool = True) -> int | None:
        """SIGTERM, wait up to *timeout* s (then SIGKILL, and fail); return the exit status."""
        return super().stop(timeout, must_exit=must_exit)


# --------------------------------------------------------------------------- miltertest


@dataclass(frozen=True)
class MiltertestRun:
    """Outcome of one miltertest script run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def results(self) -> dict[str, str]:
        """``RESULT key=value`` lines printed by the script."""
        out = {}
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                key, _, value = line[len("RESULT ") :].partition("=")
                out[key.strip()] = value.strip()
        return out

    def describe(self) -> str:
        """Everything about the run, for assertion messages."""
        return (
            f"$ {shlex.join(self.argv)}\nrc={self.returncode}\n--- stdout ---\n{self.stdout}"
            f"--- stderr ---\n{self.stderr}"
        )


def run_miltertest(script: Path, defines: dict[str, Any], timeout: float = 30.0) -> MiltertestRun:
    """Run ``miltertest -D k=v ... -s script``; values reach the Lua script as globals."""
    argv = [find_binary("miltertest")]
    for key, value in defines.items():
        argv += ["-D", f"{key}={value}"]
    argv += ["-s", str(script)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=script.parent
    )
    return MiltertestRun(argv, proc.returncode, proc.stdout, proc.stderr)


_L = TypeVar("_L", bound=ListgateServe)


def serving(lg: _L) -> Iterator[_L]:
    """For ``yield from`` in a fixture: start *lg*, yield it, stop it."""
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@contextlib.contextmanager
def running_listgate(
    workdir: Path, listen: Sequence[str], posters: dict[str, list[str]] | None = None
) -> Iterator[ListgateProcess]:
    """Context manager: a started listgate, stopped on exit."""
    lg = ListgateProcess(workdir, listen, POSTERS if posters is None else posters)
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()
