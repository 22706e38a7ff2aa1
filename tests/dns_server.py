"""A real authoritative DNS server for the tests: NLnet Labs' NSD (Debian package ``nsd``)
on 127.0.0.1, started by the suite with its own config, zone files and free port, and
helpers to make DKIM keys (dkimpy's ``dknewkey``, i.e. openssl) and publish them.

Invariants:
- NSD listens on 127.0.0.1 only (UDP and TCP, one free port), runs in the foreground as
  the test's child with its own pid, database-less, chroot-less, with no remote control;
  the Debian package's own service and /etc/nsd are never touched.
- ``stop`` ends exactly that process; ``start`` again serves the same zones on the same
  port (for "DNS server stopped" tests).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from support import free_port, wait_until

INSTALL_HINT = "run .ci/install-test-deps.sh as root (it installs Debian's nsd)"


def _nsd() -> str:
    path = shutil.which("nsd", path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise AssertionError(f"nsd is not installed: {INSTALL_HINT}")
    return path


def txt_record(text: str) -> str:
    """A TXT RDATA for *text*, split into strings of at most 255 bytes."""
    parts = [text[i:i + 250] for i in range(0, len(text), 250)] or [""]
    return "( " + " ".join(f'"{p}"' for p in parts) + " )"


def zone_text(origin: str, records: list[tuple[str, str, str]]) -> str:
    """A zone file for *origin* with an SOA, an NS and *records* (name, type, rdata)."""
    lines = [
        f"$ORIGIN {origin}.",
        "$TTL 60",
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
        f"@ IN NS ns.{origin}.",
        "ns IN A 127.0.0.1",
    ]
    lines += [f"{name} IN {rtype} {rdata}" for name, rtype, rdata in records]
    return "\n".join(lines) + "\n"


class NsdServer:
    """NSD serving *zones* (origin → zone file text) on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, zones: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.zones = dict(zones)
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        for origin, text in self.zones.items():
            (workdir / f"{origin}.zone").write_text(text)
        zone_blocks = "".join(
            f'zone:\n  name: "{origin}"\n  zonefile: "{origin}.zone"\n' for origin in zones
        )
        (workdir / "nsd.conf").write_text(f"""server:
  ip-address: 127.0.0.1
  port: {self.port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{workdir}"
  database: ""
  zonelistfile: "{workdir}/zone.list"
  xfrdfile: "{workdir}/xfrd.state"
  pidfile: "{workdir}/nsd.pid"
  logfile: "{workdir}/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
{zone_blocks}""")

    @property
    def address(self) -> str:
        """The "IP:PORT" to put in ``[auth] nameservers``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> NsdServer:
        """Start NSD and wait until it answers over TCP."""
        self._proc = subprocess.Popen(
            [_nsd(), "-d", "-c", str(self.workdir / "nsd.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10.0, f"nsd on 127.0.0.1:{self.port}",
                   detail=self.log)
        return self

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"nsd exited with {self._proc.returncode}:\n{self.log()}")
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", self.port), timeout=0.5
        ):
            return True
        return False

    def stop(self) -> None:
        """Stop NSD (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log(self) -> str:
        """NSD's log so far."""
        try:
            return (self.workdir / "nsd.log").read_text(errors="replace")
        except OSError:
            return "(no nsd log)"


class DkimKey:
    """An RSA key pair made with dkimpy's dknewkey (openssl), for one selector."""

    def __init__(self, workdir: Path, name: str) -> None:
        from dkim import dknewkey

        private = workdir / f"{name}.pem"
        public = workdir / f"{name}.txt"
        dknewkey.GenRSAKeys(str(private), False)
        dknewkey.ExtractRSADnsPublicKey(str(private), str(public), False)
        self.private = private.read_bytes()
        self.record = public.read_text().strip()
        """The TXT record: "v=DKIM1; k=rsa; h=sha256; p=..."."""

    def sign(self, message: bytes, domain: str, selector: str = "sel") -> bytes:
        """*message* with a DKIM-Signature (relaxed/simple) by *domain* prepended."""
        import dkim

        signature: bytes = dkim.sign(
            message, selector.encode(), domain.encode(), self.private,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return signature + message


MEMBER = "member@example.com"
"""A member; example.com's SPF allows 127.0.0.1 only; its mail is signed d=example.com."""


@dataclass(frozen=True)
class AuthDns:
    """The running DNS server and the keys published in it."""

    server: NsdServer
    example: DkimKey
    """Published at sel._domainkey.example.com."""
    other: DkimKey
    """Published at sel._domainkey.other.org."""


def auth_zones(example: DkimKey, other: DkimKey) -> dict[str, str]:
    """The test zones: SPF, DKIM keys and DMARC records of example.com and other.org."""
    return {
        "example.com": zone_text("example.com", [
            ("@", "TXT", txt_record("v=spf1 ip4:127.0.0.1 include:_spf.example.com -all")),
            ("_spf", "TXT", txt_record("v=spf1 a:ns.example.com -all")),
            ("sel._domainkey", "TXT", txt_record(example.record)),
            ("_dmarc", "TXT", txt_record("v=DMARC1; p=reject")),
        ]),
        "other.org": zone_text("other.org", [
            ("@", "TXT", txt_record("v=spf1 -all")),
            ("sel._domainkey", "TXT", txt_record(other.record)),
            ("_dmarc", "TXT", txt_record("v=DMARC1; p=none")),
        ]),
    }


def start_auth_dns(base: Path) -> AuthDns:
    """Make the keys, write the zones and start NSD under *base*."""
    example, other = DkimKey(base, "example"), DkimKey(base, "other")
    server = NsdServer(base / "nsd", auth_zones(example, other)).start()
    return AuthDns(server, example, other)
