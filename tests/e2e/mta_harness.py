"""Private Exim and Sendmail instances for the end-to-end tests, run from Debian's packages
unpacked (``dpkg -x``, never installed) into ``.cache/mta/root`` by
``.ci/install-test-deps.sh``.

Invariants:
- Nothing outside the instance's own directory is written. Each MTA runs in private mount
  and UTS namespaces (``unshare --uts --mount``, propagation private) where its own
  ``hosts``, ``resolv.conf`` (``nameserver 127.0.0.1``), ``passwd``, ``group``,
  ``ld.so.cache`` and ``nsswitch.conf`` (hosts: files) are bind-mounted over ``/etc`` and
  the host name is fixed; the real ``/etc`` and host name never change.
- Loopback only: the MTA listens on 127.0.0.1, asks listgate on 127.0.0.1 and delivers to
  the aiosmtpd LMTP sink on 127.0.0.1 by address. Each MTA runs under ``strace -f`` from
  start to stop, so a test can prove from the trace that no process of it sent anything
  to a resolver (port 53) or to a non-loopback address (:func:`outbound_calls`).
- The private ``ld.so.cache`` names the unpacked libraries (``libidn.so.12``,
  ``libwrap.so.0``): setuid/setgid re-executions run in secure mode and ignore
  ``LD_LIBRARY_PATH``, but honour the cache.
- A missing component is a failure with the install hint, never a skip. Waits are polls
  bounded by a timeout; a started instance is always stopped, its processes reaped.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    INSTALL_HINT,
    REPO_ROOT,
    Reply,
    find_binary,
    tail,
    wait_until,
)

MTA_ROOT = REPO_ROOT / ".cache" / "mta" / "root"
"""Where .ci/install-test-deps.sh unpacks exim4-daemon-light, sendmail-* and libraries."""
MTA_LIBDIR = MTA_ROOT / "usr" / "lib" / "x86_64-linux-gnu"
EXIM_BINARY = MTA_ROOT / "usr" / "sbin" / "exim4"
SENDMAIL_BINARY = MTA_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
SENDMAIL_CF_M4 = MTA_ROOT / "usr" / "share" / "sendmail" / "cf" / "m4" / "cf.m4"
DEPLOY = REPO_ROOT / "deploy"

_NS_FILES = ("hosts", "resolv.conf", "passwd", "group", "ld.so.cache", "nsswitch.conf")


def require_file(path: Path) -> Path:
    """*path*, or fail (never skip) with the install hint."""
    if not path.exists():
        raise AssertionError(f"{path} is missing: {INSTALL_HINT}")
    return path


def unused_id(database: str, start: int = 120) -> int:
    """The first numeric id >= *start* that no entry of /etc/passwd or /etc/group has."""
    used = set()
    for line in Path(f"/etc/{database}").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            used.add(int(fields[2]))
    return next(i for i in range(start, 60000) if i not in used)


# --------------------------------------------------------------------------- namespace


class PrivateNamespace:
    """Files to bind-mount over /etc, and the command prefix that does it.

    ``command(argv)`` runs *argv* as ``unshare --uts --mount sh -c ...`` which mounts the
    files, sets the host name and ``exec``s *argv*: the process keeps the pid it was
    started with.
    """

    def __init__(self, directory: Path, hostname: str, users: Sequence[str] = ()) -> None:
        self.directory = directory
        self.hostname = hostname
        self.users = tuple(users)
        self.ids: dict[str, int] = {}
        """user name -> the uid (= gid) given to each of *users* in the private passwd."""

    def create(self) -> None:
        """Write the files (passwd and group: the host's plus *users*; ld.so.cache: the
        unpacked libraries first)."""
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        short = self.hostname.split(".")[0]
        (d / "hosts").write_text(
            f"127.0.0.1 {self.hostname} {short} localhost\n::1 {self.hostname} localhost\n"
        )
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (d / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n"
            "services: files\nprotocols: files\naliases: files\n"
        )
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        uid, gid = unused_id("passwd"), unused_id("group")
        for user in self.users:
            self.ids[user] = uid
            passwd += f"{user}:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin\n"
            group += f"{user}:x:{gid}:\n"
            uid, gid = uid + 1, gid + 1
        (d / "passwd").write_text(passwd)
        (d / "group").write_text(group)
        conf_d = sorted(Path("/etc/ld.so.conf.d").glob("*.conf"))
        lines = [str(MTA_LIBDIR)] + [
            ln for f in conf_d for ln in f.read_text().splitlines() if ln and ln[0] == "/"
        ]
        (d / "ld.so.conf").write_text("\n".join(lines) + "\n")
        subprocess.run(
            [find_binary("ldconfig"), "-X", "-C", str(d / "ld.so.cache"),
             "-f", str(d / "ld.so.conf")],
            check=True, capture_output=True, timeout=60,
        )

    def command(self, argv: Sequence[str]) -> list[str]:
        """*argv* run inside the private namespaces (same pid: unshare and sh exec)."""
        mounts = " && ".join(
            f"mount --bind {self.directory}/{name} /etc/{name}" for name in _NS_FILES
        )
        script = f'{mounts} && hostname {self.hostname} && exec "$@"'
        return [find_binary("unshare"), "--uts", "--mount", "sh", "-ec", script, "sh", *argv]


# --------------------------------------------------------------------------- strace


@dataclass(frozen=True)
class NetworkCall:
    """One socket call with a peer address, from the strace log."""

    pid: int
    syscall: str
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8 and ::1 (also IPv4-mapped)."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        return f"[{self.pid}] {self.syscall} {self.address} port {self.port}"


_CALL = re.compile(r"^(\d+)\s+(connect|sendto|sendmsg|sendmmsg)\((.*)$")
_INET = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"')


def network_calls(strace_log: str) -> list[NetworkCall]:
    """Every connect/sendto/sendmsg/sendmmsg with an IPv4 or IPv6 peer address."""
    calls = []
    for line in strace_log.splitlines():
        m = _CALL.match(line)
        if not m:
            continue
        pid, syscall, rest = int(m.group(1)), m.group(2), m.group(3)
        for port, addr in _INET.findall(rest):
            calls.append(NetworkCall(pid, syscall, addr, int(port)))
        for port, addr in _INET6.findall(rest):
            calls.append(NetworkCall(pid, syscall, addr, int(port)))
    return calls


def outbound_calls(calls: Sequence[NetworkCall]) -> list[NetworkCall]:
    """The calls that would have left loopback or asked a resolver (port 53 anywhere)."""
    return [c for c in calls if c.port == 53 or not c.loopback]


class TracedDaemon:
    """A foreground MTA daemon started as ``strace -f -o LOG <argv>``.

    The daemon is strace's only child; stop() sends it SIGTERM and waits for strace to
    exit (it does once every traced process has exited).
    """

    def __init__(self, argv: Sequence[str], strace_log: Path, output_log: Path) -> None:
        self.argv = list(argv)
        self.strace_log = strace_log
        self.output_log = output_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.daemon_pid: int | None = None

    def start(self) -> None:
        """Start strace with the daemon and wait until strace has forked it."""
        argv = [find_binary("strace"), "-f", "-qq", "-e", "trace=network",
                "-o", str(self.strace_log), *self.argv]
        with self.output_log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemon_pid = wait_until(self._child, 10.0, "strace to start the daemon")

    def _child(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"exited early (rc {self.proc.returncode}): {self.argv}\n{self.output()}"
            )
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            return int(children.split()[0]) if children.split() else None
        return None

    def running(self) -> bool:
        """True while strace (and so the daemon or one of its children) runs."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What strace and the daemon printed."""
        try:
            return tail(self.output_log.read_text(errors="replace"))
        except OSError:
            return ""

    def trace(self) -> str:
        """The strace log so far."""
        try:
            return self.strace_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0, grace: float = 3.0) -> None:
        """SIGTERM the daemon; after *grace* seconds SIGTERM whatever it left running too
        (a daemon's SIGTERM does not end its children: Exim's receiving process of a
        client socket not yet closed waits for its next command); wait until every
        traced process is gone (then reap)."""
        proc = self.proc
        if proc is None:
            return
        try:
            if self.daemon_pid is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.daemon_pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                for pid in _descendants(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # strace's own session: only ours
            proc.wait(5)
            raise AssertionError(
                f"{self.argv[-1]} did not stop within {timeout} s of SIGTERM (killed)"
            ) from None
        finally:
            self.proc = None


def _descendants(pid: int) -> list[int]:
    """Every process below *pid* (not *pid* itself), read from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            found += map(int, children)
            todo += map(int, children)
    return found


def smtp_banner(port: int) -> str | None:
    """The first line the server on 127.0.0.1:*port* sends if it is a 220, else None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(5)
            banner = s.recv(512).decode("ascii", "replace")
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
    except OSError:
        return None
    return banner.splitlines()[0] if banner.startswith("220") else None


# --------------------------------------------------------------------------- Exim


@dataclass(frozen=True)
class EximListener:
    """One SMTP port of the private Exim and the listgate policy service it asks."""

    name: str
    port: int
    policy: str
    """listgate's [policy] listen spec, ``inet:127.0.0.1:PORT``."""
    timeout: str = "10s"
    """LISTGATE_TIMEOUT for this port (readsocket's connect/write/read bound)."""


EXIM_USER = "Debian-exim"


def by_received_port(listeners: Sequence[EximListener], value: Callable[[EximListener], str]
                     ) -> str:
    """An Exim expansion that gives ``value(listener)`` for the SMTP port a message came in
    on (nested ``${if ={$received_port}{PORT}{...}{...}}``)."""
    *firsts, last = listeners
    expr = value(last)
    for lst in reversed(firsts):
        expr = f"${{if ={{$received_port}}{{{lst.port}}}{{{value(lst)}}}{{{expr}}}}}"
    return expr


def spec_port(spec: str) -> int:
    """The port of a listgate listen spec ``inet:127.0.0.1:PORT``."""
    return int(spec.rsplit(":", 1)[1])


def exim_localmacros(acl_file: Path, policy_socket: str, timeout: str) -> str:
    """deploy/exim/exim4.conf.localmacros with the test's ACL path, socket and timeout."""
    text = (DEPLOY / "exim" / "exim4.conf.localmacros").read_text()
    replace = {
        "/etc/exim4/listgate_rcpt_acl": str(acl_file),
        "inet:127.0.0.1:8891": policy_socket,
        "LISTGATE_TIMEOUT = 30s": f"LISTGATE_TIMEOUT = {timeout}",
    }
    for old, new in replace.items():
        if old not in text:
            raise AssertionError(f"exim4.conf.localmacros no longer mentions {old!r}")
        text = text.replace(old, new)
    return text


def exim_config(base: Path, listeners: Sequence[EximListener], sink_port: int) -> str:
    """A private Exim configuration: Debian's acl_check_rcpt in miniature (relay check,
    the CHECK_RCPT_LOCAL_ACL_FILE hook, accept) around the shipped listgate drop-in."""
    macros = exim_localmacros(
        base / "listgate_rcpt_acl",
        by_received_port(listeners, lambda lst: f"inet:127.0.0.1:{spec_port(lst.policy)}"),
        by_received_port(listeners, lambda lst: lst.timeout),
    )
    ports = " : ".join(str(lst.port) for lst in listeners)
    return f"""\
# Private Exim instance for listgate's end-to-end tests (generated).
# ---- deploy/exim/exim4.conf.localmacros (paths and socket of this instance)
{macros}
# ---- the instance
primary_hostname = mx.exim.test
qualify_domain = mx.exim.test
exim_path = {EXIM_BINARY}
spool_directory = {base}/spool
log_file_path = {base}/log/%slog
pid_file_path = {base}/exim.pid
keep_environment =
local_interfaces = 127.0.0.1
daemon_smtp_ports = {ports}
# no reverse DNS, no ident (RFC 1413) callbacks
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
# no STARTTLS, and no self-signed certificate generated at start
tls_advertise_hosts =
tls_certificate = ${{if false{{}}}}
smtp_banner = $smtp_active_hostname ESMTP Exim $version_number listgate-e2e
domainlist local_domains = example.org
acl_smtp_rcpt = acl_check_rcpt
log_selector = +smtp_connection +received_recipients
# deliver at once, one message at a time per SMTP session
queue_only = false
smtp_accept_queue_per_connection = 0

begin acl

acl_check_rcpt:
  require message = relay not permitted
          domains = +local_domains

  .ifdef CHECK_RCPT_LOCAL_ACL_FILE
  .include CHECK_RCPT_LOCAL_ACL_FILE
  .endif

  accept

begin routers

to_sink:
  driver = manualroute
  route_list = * 127.0.0.1
  # 127.0.0.1 is a local interface: deliver there all the same
  self = send
  transport = to_sink_lmtp

begin transports

to_sink_lmtp:
  driver = smtp
  protocol = lmtp
  port = {sink_port}

begin retry
*  *  F,5m,10s
"""


class EximInstance:
    """A private Exim 4.96 daemon (``-bdf``) on 127.0.0.1, one SMTP port per listener."""

    def __init__(self, base: Path, listeners: Sequence[EximListener], sink_port: int) -> None:
        self.base = base
        self.listeners = {lst.name: lst for lst in listeners}
        self.sink_port = sink_port
        self.namespace = PrivateNamespace(base / "ns", "mx.exim.test", [EXIM_USER])
        self.config = base / "exim.conf"
        self.mainlog = base / "log" / "mainlog"
        self.daemon: TracedDaemon | None = None

    def port(self, listener: str) -> int:
        """SMTP port of a listener."""
        return self.listeners[listener].port

    def create(self) -> None:
        """Write the config, copy the shipped ACL drop-in, make the spool and log dirs."""
        require_file(EXIM_BINARY)
        self.namespace.create()
        uid = self.namespace.ids[EXIM_USER]
        for sub in ("spool", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.base / sub, uid, uid)
        (self.base / "listgate_rcpt_acl").write_text(
            (DEPLOY / "exim" / "listgate_rcpt_acl").read_text()
        )
        self.config.write_text(exim_config(self.base, list(self.listeners.values()),
                                           self.sink_port))
        self.config.chmod(0o644)  # Exim insists: owned by root, not writable by others

    def exim(self, *args: str) -> list[str]:
        """An exim4 command line with this instance's config, inside the namespaces."""
        return self.namespace.command([str(EXIM_BINARY), "-C", str(self.config), *args])

    def start(self) -> None:
        """Start the daemon under strace; wait for the 220 banner on every port."""
        self.daemon = TracedDaemon(
            self.exim("-bdf", "-oP", str(self.base / "exim.pid")),
            self.base / "strace.log", self.base / "daemon.out",
        )
        self.daemon.start()
        for lst in self.listeners.values():
            wait_until(
                functools.partial(smtp_banner, lst.port), 15.0,
                f"Exim listener {lst.name} on 127.0.0.1:{lst.port} to send 220", interval=0.05,
                detail=self.describe,
            )

    def stop(self) -> None:
        """Stop the daemon (and every process it started)."""
        if self.daemon is not None:
            self.daemon.stop()

    def describe(self) -> str:
        """Daemon output and the mainlog tail, for assertion messages."""
        out = self.daemon.output() if self.daemon else ""
        return f"--- exim output ---\n{out}\n--- mainlog tail ---\n{tail(self.log_text())}"

    def log_text(self) -> str:
        """The whole mainlog so far."""
        try:
            return self.mainlog.read_text(errors="replace")
        except OSError:
            return ""

    def queue_count(self) -> int:
        """Messages in the queue (``exim -bpc``)."""
        proc = subprocess.run(self.exim("-bpc"), capture_output=True, text=True, timeout=30,
                              check=False)
        if proc.returncode != 0:
            raise AssertionError(f"exim -bpc failed: {proc.stdout}{proc.stderr}")
        return int(proc.stdout.strip())

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        """Wait until every queued message was delivered."""
        wait_until(lambda: self.queue_count() == 0, timeout, "the Exim queue to drain",
                   interval=0.1, detail=self.describe)


# --------------------------------------------------------------------------- Sendmail


SENDMAIL_HOSTNAME = "mx.sendmail.test"


@dataclass(frozen=True)
class SendmailListener:
    """One SMTP daemon port of the private Sendmail and the listgate milter it uses.

    The listener named ``main`` uses the filter that deploy/sendmail/listgate.mc defines
    (INPUT_MAIL_FILTER, every daemon's default); the others name a filter of their own
    (MAIL_FILTER + the daemon's InputMailFilters) with the same flags and timeouts.
    """

    name: str
    port: int
    milter: str
    """listgate's [milter] listen spec, ``inet:127.0.0.1:PORT``."""

    @property
    def sendmail_socket(self) -> str:
        """The milter address as Sendmail writes it: ``inet:PORT@127.0.0.1``."""
        return f"inet:{spec_port(self.milter)}@127.0.0.1"


_FILTER_LINE = re.compile(r"^INPUT_MAIL_FILTER\(`listgate', `([^']*)'\)dnl$", re.MULTILINE)


def sendmail_mc(base: Path, listeners: Sequence[SendmailListener], sink_port: int) -> str:
    """A private sendmail.mc around the shipped deploy/sendmail/listgate.mc (its socket
    replaced by listener ``main``'s milter)."""
    shipped = (DEPLOY / "sendmail" / "listgate.mc").read_text()
    m = _FILTER_LINE.search(shipped)
    if m is None or "S=inet:8890@127.0.0.1" not in m.group(1):
        raise AssertionError("listgate.mc no longer has INPUT_MAIL_FILTER(`listgate', "
                             "`S=inet:8890@127.0.0.1, ...')")
    args = m.group(1)
    by_name = {lst.name: lst for lst in listeners}
    filter_mc = shipped.replace("S=inet:8890@127.0.0.1", f"S={by_name['main'].sendmail_socket}")
    daemons = []
    for lst in listeners:
        if lst.name == "main":
            daemons.append(f"DAEMON_OPTIONS(`Port={lst.port}, Addr=127.0.0.1, Name=main')dnl")
            continue
        own = args.replace("S=inet:8890@127.0.0.1", f"S={lst.sendmail_socket}")
        daemons.append(f"MAIL_FILTER(`{lst.name}', `{own}')dnl")
        daemons.append(f"DAEMON_OPTIONS(`Port={lst.port}, Addr=127.0.0.1, Name={lst.name}, "
                       f"InputMailFilters={lst.name}')dnl")
    run = base / "run"
    daemon_mc = "\n".join(daemons)
    return f"""\
divert(-1)
# Private Sendmail instance for listgate's end-to-end tests (generated).
divert(0)dnl
include(`{SENDMAIL_CF_M4}')dnl
VERSIONID(`listgate e2e sendmail instance')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{SENDMAIL_HOSTNAME}')dnl
define(`QUEUE_DIR', `{run}/mqueue')dnl
define(`MSP_QUEUE_DIR', `{run}/clientmqueue')dnl
define(`confPID_FILE', `{run}/sendmail.pid')dnl
define(`STATUS_FILE', `{run}/statistics')dnl
define(`ALIAS_FILE', `{run}/aliases')dnl
define(`HELP_FILE', `{run}/helpfile')dnl
define(`confCW_FILE', `{run}/local-host-names')dnl
define(`confCT_FILE', `{run}/trusted-users')dnl
define(`confSERVICE_SWITCH_FILE', `{run}/service.switch')dnl
define(`confHOSTS_FILE', `/etc/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `true')dnl
define(`confTO_IDENT', `0')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confPRIVACY_FLAGS', `goaway')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confLOG_LEVEL', `9')dnl
define(`confREFUSE_LA', `100')dnl
define(`confQUEUE_LA', `100')dnl
define(`confDELAY_LA', `0')dnl
define(`confCONNECTION_RATE_THROTTLE', `0')dnl
define(`confMIN_QUEUE_AGE', `0')dnl
define(`SMART_HOST', `lmtpsink:[127.0.0.1]')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
RELAY_DOMAIN(`example.org')dnl
{daemon_mc}
dnl ---- deploy/sendmail/listgate.mc
{filter_mc}dnl ---- end of listgate.mc
MAILER(`local')dnl
MAILER(`smtp')dnl
MAILER_DEFINITIONS
# every relayed recipient goes to the aiosmtpd LMTP sink on 127.0.0.1 (SMART_HOST)
Mlmtpsink, P=[IPC], F=mDFMuXz8, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\\r\\n, L=990,
\t\tT=DNS/RFC822/SMTP, A=TCP $h {sink_port}
"""


class SendmailInstance:
    """A private Sendmail 8.17 daemon (``-bD``) on 127.0.0.1, one port per listener."""

    def __init__(
        self, base: Path, listeners: Sequence[SendmailListener], sink_port: int
    ) -> None:
        self.base = base
        self.listeners = {lst.name: lst for lst in listeners}
        self.sink_port = sink_port
        self.namespace = PrivateNamespace(base / "ns", SENDMAIL_HOSTNAME)
        self.run = base / "run"
        self.mc = base / "sendmail.mc"
        self.cf = base / "sendmail.cf"
        self.traffic_log = base / "smtp-traffic.log"
        self.daemon: TracedDaemon | None = None

    def port(self, listener: str) -> int:
        """SMTP port of a listener."""
        return self.listeners[listener].port

    def create(self) -> None:
        """Write sendmail.mc, build sendmail.cf with m4 and Debian's sendmail-cf macros,
        make the queue and the (empty) files the config names."""
        require_file(SENDMAIL_BINARY)
        require_file(SENDMAIL_CF_M4)
        self.namespace.create()
        for sub in ("mqueue", "clientmqueue"):
            (self.run / sub).mkdir(parents=True, exist_ok=True)
            (self.run / sub).chmod(0o700)
        self.run.chmod(0o755)
        for name in ("aliases", "helpfile", "local-host-names", "trusted-users", "statistics"):
            (self.run / name).touch()
        (self.run / "service.switch").write_text("hosts files\naliases files\n")
        self.mc.write_text(sendmail_mc(self.base, list(self.listeners.values()), self.sink_port))
        proc = subprocess.run(
            [find_binary("m4"), str(self.mc)], capture_output=True, text=True, timeout=60,
            check=False,
        )
        if proc.returncode != 0 or proc.stderr:
            raise AssertionError(f"m4 {self.mc} failed (rc {proc.returncode}):\n{proc.stderr}")
        self.cf.write_text(proc.stdout)
        self.cf.chmod(0o644)

    def sendmail(self, *args: str) -> list[str]:
        """A sendmail command line with this instance's config, inside the namespaces."""
        return self.namespace.command([str(SENDMAIL_BINARY), "-C", str(self.cf), *args])

    def start(self) -> None:
        """Start the daemon under strace; wait for the 220 banner on every port."""
        self.daemon = TracedDaemon(
            self.sendmail("-bD", "-L", "sm-e2e", "-X", str(self.traffic_log)),
            self.base / "strace.log", self.base / "daemon.out",
        )
        self.daemon.start()
        for lst in self.listeners.values():
            wait_until(
                functools.partial(smtp_banner, lst.port), 30.0,
                f"Sendmail listener {lst.name} on 127.0.0.1:{lst.port} to send 220",
                interval=0.05, detail=self.describe,
            )

    def stop(self) -> None:
        """Stop the daemon (and every process it started)."""
        if self.daemon is not None:
            self.daemon.stop()

    def describe(self) -> str:
        """Daemon output and the end of the SMTP traffic log, for assertion messages."""
        out = self.daemon.output() if self.daemon else ""
        try:
            traffic = tail(self.traffic_log.read_text(errors="replace"), 60)
        except OSError:
            traffic = ""
        return (f"--- sendmail output ---\n{out}\n--- traffic log tail ---\n{traffic}\n"
                f"--- queue ---\n{self.queued()}")

    def queued(self) -> list[str]:
        """Queue ids of the messages in the queue (their qf files)."""
        try:
            return sorted(p.name[2:] for p in (self.run / "mqueue").iterdir()
                          if p.name.startswith("qf"))
        except OSError:
            return []

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        """Wait until every queued message was delivered."""
        wait_until(lambda: not self.queued(), timeout, "the Sendmail queue to drain",
                   interval=0.1, detail=self.describe)


# --------------------------------------------------------------------------- SMTP


def reply_text(reply: Reply) -> str:
    """The reply as one line: a multi-line reply's continuation lines joined with spaces,
    each line's repeated enhanced status code dropped (Exim splits long texts, e.g.
    ``550-5.7.1 <a> is not allowed to post to`` / ``550 5.7.1 <list>``)."""
    lines = reply.text.split("\n")
    first = lines[0]
    status = first.split(" ", 1)[0] if re.match(r"^[245]\.\d+\.\d+ ", first) else ""
    rest = [ln[len(status) + 1:] if status and ln.startswith(status + " ") else ln
            for ln in lines[1:]]
    return " ".join([f"{reply.code} {first}", *rest]).rstrip()


def wait_for_lines(
    read: Callable[[], str], pattern: str, what: str, timeout: float = 10.0
) -> str:
    """Wait until a line of ``read()`` matches *pattern*; return it."""
    rx = re.compile(pattern)

    def probe() -> str | None:
        return next((ln for ln in read().splitlines() if rx.search(ln)), None)

    return wait_until(probe, timeout, what, detail=lambda: tail(read()))
