"""A milter load generator that talks to a milter the way Postfix 3.7 does.

Each session is one TCP connection: OPTNEG offering version 6, actions 0x1FF and steps
0x1FFFFF; then, following the milter's answer, the ``D`` macro packets for every stage
(Postfix sends them even for steps the milter skipped), CONNECT and HELO unless skipped,
MAIL, one or more RCPTs, and ``A A Q``. Replies are awaited exactly where the milter's
NR_* flags say one is owed. Macros are the milter's SETSYMLIST lists when it sent them,
else Postfix's default lists, with only the macros Postfix has a value for (``i`` only
from the second RCPT on, after one was accepted; never at MAIL).

The packets are built with listgate's own codec (``listgate.milter.encode``) once per
negotiated plan and per sender/recipient; the per-session state machine is hand-rolled
on a raw ``epoll`` loop, because ``MtaConnection`` + asyncio cost more CPU per session
than the milters under test (see docs/performance.md). Every reply is still checked:
its framing, that it answers the command that owes one, and that the verdict is the
expected one (member: CONTINUE; nonmember: REPLYCODE/REJECT for the list recipient).

Several worker processes share the concurrency; each reports its own CPU time.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing as mp
import os
import random
import select
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from listgate.milter import (  # noqa: E402
    POSTFIX_OFFER,
    Abort,
    Connect,
    EnvelopeFrom,
    EnvelopeRecipient,
    Helo,
    Macro,
    MacroStage,
    NegotiateReply,
    ProtocolFlag,
    Quit,
    encode,
)

__all__ = ["LoadResult", "LoadSpec", "Population", "run_load"]

LIST = "list@example.org"
OTHER_RCPT = "user{}@example.org"
"""Recipients 2..n of a session: ordinary addresses on the list's domain (not gated)."""
QUEUE_ID = "4XyZ1q2bc3D"

POSTFIX_DEFAULT_MACROS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    MacroStage.HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}",
                      "{cert_issuer}"),
    MacroStage.ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}",
                         "{mail_host}", "{mail_mailer}"),
    MacroStage.ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
}
"""Postfix 3.7's milter_*_macros defaults (postfix-harness.md §4)."""

_OPTNEG = encode(POSTFIX_OFFER)
_TAIL = encode(Abort()) + encode(Abort()) + encode(Quit())
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Population:
    """Who sends: member senders (allowed to post) and nonmember senders."""

    members: tuple[str, ...]
    nonmembers: tuple[str, ...]
    list_address: str = LIST

    @classmethod
    def make(cls, count: int = 1000, list_address: str = LIST) -> Population:
        return cls(
            tuple(f"member{i:04d}@senders.example" for i in range(count)),
            tuple(f"outsider{i:04d}@elsewhere.example" for i in range(count)),
            list_address,
        )


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    concurrency: int
    rcpts: int = 1
    member_share: float = 0.5
    seconds: float = 4.0
    warmup: float = 1.0
    procs: int = 2
    population: Population = field(default_factory=Population.make)
    fresh_senders: bool = False
    """Every session uses a sender never used before (a cold cache), all nonmembers
    unless member_share picks from ``members`` (cycled)."""
    seed: int = 1
    sweep: bool = False
    """Warm-up mode: one session per sender of the population (members and nonmembers,
    split over the workers), then stop; no time window (``seconds`` is the limit)."""


@dataclass
class LoadResult:
    spec: LoadSpec
    window: float = 0.0
    sessions: int = 0
    rcpts: int = 0
    errors: int = 0
    wrong: int = 0
    gen_cpu: float = 0.0
    latencies_us: array = field(default_factory=lambda: array("I"))
    first_error: str = ""
    started_at: float = 0.0
    """time.monotonic() at the start of the measurement window (for server sampling)."""

    @property
    def sessions_per_s(self) -> float:
        return self.sessions / self.window if self.window else 0.0

    @property
    def rcpts_per_s(self) -> float:
        return self.rcpts / self.window if self.window else 0.0

    @property
    def gen_cpu_pct(self) -> float:
        return 100.0 * self.gen_cpu / self.window if self.window else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_us:
            return float("nan")
        data = sorted(self.latencies_us)
        k = min(len(data) - 1, max(0, round(q / 100.0 * (len(data) - 1))))
        return data[k] / 1000.0


# ------------------------------------------------------------------------ the plan


class Plan:
    """What to send, derived from one milter's OPTNEG reply (cached per reply bytes)."""

    def __init__(self, reply: NegotiateReply) -> None:
        proto = ProtocolFlag(reply.protocol)
        self.reply = reply
        macros = dict(POSTFIX_DEFAULT_MACROS)
        for stage, names in reply.macros:  # the milter's lists replace Postfix's
            macros[stage] = names
        self.macros = macros
        self.skip_connect = bool(proto & ProtocolFlag.NOCONNECT)
        self.skip_helo = bool(proto & ProtocolFlag.NOHELO)
        self.skip_mail = bool(proto & ProtocolFlag.NOMAIL)
        self.skip_rcpt = bool(proto & ProtocolFlag.NORCPT)
        self.reply_connect = not self.skip_connect and not proto & ProtocolFlag.NR_CONN
        self.reply_helo = not self.skip_helo and not proto & ProtocolFlag.NR_HELO
        self.reply_mail = not self.skip_mail and not proto & ProtocolFlag.NR_MAIL
        self.reply_rcpt = not self.skip_rcpt and not proto & ProtocolFlag.NR_RCPT
        if self.skip_rcpt or not self.reply_rcpt:
            raise RuntimeError("the milter does not answer RCPT: nothing to measure")
        values = {
            "j": "mx.bench.test", "{daemon_name}": "mx.bench.test",
            "{daemon_addr}": "127.0.0.1", "v": "Postfix 3.7.11", "_": "unknown [127.0.0.1]",
            "{client_addr}": "127.0.0.1", "{client_name}": "unknown",
        }
        self._values = values
        # CONNECT and HELO are the same for every session.
        self.head_connect = self._macro(b"C", MacroStage.CONNECT, {}) + (
            b"" if self.skip_connect else encode(Connect("[127.0.0.1]", "4", 50000, "127.0.0.1"))
        )
        self.head_helo = self._macro(b"H", MacroStage.HELO, {}) + (
            b"" if self.skip_helo else encode(Helo("client.bench.test"))
        )
        self._mail: dict[str, bytes] = {}
        self._rcpt: dict[tuple[str, bool], bytes] = {}

    def _macro(self, code: bytes, stage: MacroStage, extra: dict[str, str]) -> bytes:
        pairs = []
        for name in self.macros.get(stage, ()):
            value = extra.get(name, self._values.get(name))
            if value:
                pairs.append((name, value))
        return encode(Macro(code, tuple(pairs)))

    def mail(self, sender: str) -> bytes:
        """D(M) + MAIL for *sender* (``i`` is not known at MAIL in Postfix)."""
        out = self._mail.get(sender)
        if out is None:
            host = sender.rpartition("@")[2]
            out = self._macro(b"M", MacroStage.ENVFROM, {
                "{mail_addr}": sender, "{mail_host}": host, "{mail_mailer}": "smtp",
            }) + (b"" if self.skip_mail else encode(EnvelopeFrom(f"<{sender}>")))
            self._mail[sender] = out
        return out

    def rcpt(self, recipient: str, queue_id_known: bool) -> bytes:
        key = (recipient, queue_id_known)
        out = self._rcpt.get(key)
        if out is None:
            extra = {"{rcpt_addr}": recipient, "{rcpt_host}": "relay-discarded",
                     "{rcpt_mailer}": "discard"}
            if queue_id_known:
                extra["i"] = QUEUE_ID
            out = self._macro(b"R", MacroStage.ENVRCPT, extra) + encode(
                EnvelopeRecipient(f"<{recipient}>")
            )
            self._rcpt[key] = out
        return out


# ------------------------------------------------------------------------ the worker

# Session phases
_CONNECTING, _AWAIT_NEG, _NEG, _CONN, _HELO, _MAIL, _RCPT = range(7)


class _Session:
    __slots__ = ("accepted", "buf", "member", "phase", "rcpt", "sender", "sock", "t_sent")

    def __init__(self, sock: socket.socket, sender: str, member: bool) -> None:
        self.sock = sock
        self.sender = sender
        self.member = member
        self.phase = _CONNECTING
        self.buf = b""
        self.rcpt = 0
        self.accepted = False
        self.t_sent = 0.0


class _Worker:
    def __init__(self, spec: LoadSpec, concurrency: int, index: int, start: float) -> None:
        self.spec = spec
        self.concurrency = concurrency
        self.rng = random.Random(spec.seed * 1000 + index)
        self.index = index
        self.addr = (spec.host, spec.port)
        self.plans: dict[bytes, Plan] = {}
        self.plan: Plan | None = None
        self.ep = select.epoll()
        self.sessions: dict[int, _Session] = {}
        self.w0 = start + spec.warmup
        self.w1 = self.w0 + spec.seconds
        self.lat = array("I")
        self.done = 0
        self.rcpts_done = 0
        self.errors = 0
        self.wrong = 0
        self.first_error = ""
        self.cpu0 = self.cpu1 = 0.0
        self.fresh = 0
        self.sweep: list[tuple[str, bool]] | None = None
        if spec.sweep:
            pop = spec.population
            everyone = [(m, True) for m in pop.members] + [(n, False) for n in pop.nonmembers]
            self.sweep = everyone[index :: max(1, min(spec.procs, spec.concurrency))]
            self.w0 = start  # every session counts
        self.recipients = [spec.population.list_address] + [
            OTHER_RCPT.format(k) for k in range(1, spec.rcpts)
        ]

    # -- sessions

    def _pick_sender(self) -> tuple[str, bool]:
        pop = self.spec.population
        if self.sweep is not None:
            return self.sweep.pop()
        member = self.rng.random() < self.spec.member_share
        if self.spec.fresh_senders and not member:
            self.fresh += 1
            return (f"cold{self.spec.seed}-{self.index:02d}x{self.fresh:07d}@elsewhere.example",
                    False)
        pool = pop.members if member else pop.nonmembers
        return pool[self.rng.randrange(len(pool))], member

    def start_session(self) -> None:
        sender, member = self._pick_sender()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = sock.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            self._error(f"connect: {os.strerror(rc)}")
            sock.close()
            return
        fd = sock.fileno()
        self.sessions[fd] = _Session(sock, sender, member)
        self.ep.register(fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)

    def _error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what

    def _end(self, fd: int, s: _Session, ok: bool) -> None:
        with contextlib.suppress(OSError):
            self.ep.unregister(fd)
        s.sock.close()
        del self.sessions[fd]
        if ok:
            now = time.monotonic()
            if self.w0 <= now < self.w1:
                self.done += 1

    def _fail(self, fd: int, s: _Session, what: str) -> None:
        self._error(what)
        self._end(fd, s, False)

    def _send(self, fd: int, s: _Session, data: bytes) -> bool:
        try:
            n = s.sock.send(data)
        except OSError as exc:
            self._fail(fd, s, f"send: {exc}")
            return False
        if n != len(data):  # never happens with these sizes on loopback
            self._fail(fd, s, "short send")
            return False
        return True

    def _advance(self, fd: int, s: _Session) -> None:
        """Send everything up to (and including) the next command that owes a reply."""
        plan = self.plan
        assert plan is not None
        out = b""
        phase = s.phase
        if phase == _NEG:
            out += plan.head_connect
            if plan.reply_connect:
                s.phase = _CONN
                self._send(fd, s, out)
                return
            phase = _CONN
        if phase == _CONN:
            out += plan.head_helo
            if plan.reply_helo:
                s.phase = _HELO
                self._send(fd, s, out)
                return
            phase = _HELO
        if phase == _HELO:
            out += plan.mail(s.sender)
            if plan.reply_mail:
                s.phase = _MAIL
                self._send(fd, s, out)
                return
            phase = _MAIL
        if phase in (_MAIL, _RCPT):
            if phase == _RCPT:
                s.rcpt += 1
            if s.rcpt >= len(self.recipients):
                out += _TAIL
                if self._send(fd, s, out):
                    self._end(fd, s, True)
                return
            out += plan.rcpt(self.recipients[s.rcpt], s.accepted)
            s.phase = _RCPT
            s.t_sent = time.perf_counter()
            self._send(fd, s, out)

    def _negotiated(self, fd: int, s: _Session, packet: bytes) -> None:
        plan = self.plans.get(packet)
        if plan is None:
            reply = NegotiateReply.unpack(packet[5:])
            if reply.protocol & ~POSTFIX_OFFER.protocol or reply.actions & ~POSTFIX_OFFER.actions:
                raise RuntimeError(f"milter asked for more than was offered: {reply}")
            plan = self.plans[packet] = Plan(reply)
        self.plan = plan
        s.phase = _NEG
        self._advance(fd, s)

    def _on_reply(self, fd: int, s: _Session, packet: bytes) -> None:
        code = packet[4]
        phase = s.phase
        if code == 0x70:  # 'p' progress: keep waiting
            return
        if phase == _AWAIT_NEG:
            if code != 0x4F:
                self._fail(fd, s, f"expected OPTNEG reply, got {chr(code)!r}")
                return
            self._negotiated(fd, s, packet)
            return
        if phase == _RCPT:
            now = time.perf_counter()
            if self.w0 <= time.monotonic() < self.w1:
                self.lat.append(int((now - s.t_sent) * 1e6))
                self.rcpts_done += 1
            if code == 0x63:  # 'c'
                s.accepted = True
                if s.rcpt == 0 and not s.member:
                    self.wrong += 1
            elif code in (0x79, 0x72):  # 'y' / 'r'
                if s.member or s.rcpt != 0:
                    self.wrong += 1
            else:
                self.wrong += 1
        elif code not in (0x63, 0x61):
            self._fail(fd, s, f"unexpected reply {chr(code)!r} at phase {phase}")
            return
        self._advance(fd, s)

    def on_event(self, fd: int, ev: int) -> None:
        s = self.sessions.get(fd)
        if s is None:
            return
        if s.phase == _CONNECTING:
            if ev & (select.EPOLLERR | select.EPOLLHUP):
                err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._fail(fd, s, f"connect: {os.strerror(err) if err else 'hangup'}")
                return
            if not ev & select.EPOLLOUT:
                return
            s.phase = _AWAIT_NEG
            if not self._send(fd, s, _OPTNEG):
                return
        if not ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            return
        try:
            data = s.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(fd, s, f"recv: {exc}")
            return
        if not data:
            self._fail(fd, s, f"milter closed the connection (phase {s.phase})")
            return
        buf = s.buf + data if s.buf else data
        while len(buf) >= 5:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            packet, buf = buf[: 4 + n], buf[4 + n :]
            self._on_reply(fd, s, packet)
            if fd not in self.sessions:
                return
        s.buf = buf

    # -- the loop

    def run(self) -> None:
        ep, sessions = self.ep, self.sessions
        stop_at = self.w1
        hard_stop = self.w1 + 10.0
        cpu_marked = False
        while True:
            now = time.monotonic()
            if not cpu_marked and now >= self.w0:
                self.cpu0 = time.process_time()
                cpu_marked = True
            if self.sweep is not None and not self.sweep and now < stop_at:
                stop_at = now  # every sender had its session
            if now < stop_at:
                while len(sessions) < self.concurrency and self.sweep != []:
                    before = self.errors
                    self.start_session()
                    if self.errors > before:
                        time.sleep(0.01)  # refused: do not spin
                        break
            elif not sessions or now >= hard_stop:
                break
            for fd, ev in ep.poll(0.05):
                self.on_event(fd, ev)
            if cpu_marked and self.cpu1 == 0.0 and time.monotonic() >= self.w1:
                self.cpu1 = time.process_time()
        if self.cpu1 == 0.0:
            self.cpu1 = time.process_time()
        for fd, s in list(sessions.items()):
            self._fail(fd, s, "unfinished at the end of the run")


def _worker_main(spec: LoadSpec, concurrency: int, index: int, start: float, conn) -> None:
    w = _Worker(spec, concurrency, index, start)
    try:
        w.run()
        conn.send((w.done, w.rcpts_done, w.errors, w.wrong, w.cpu1 - w.cpu0,
                   w.lat.tobytes(), w.first_error))
    except BaseException as exc:  # report, do not hang the parent
        conn.send((0, 0, 1, 0, 0.0, b"", f"worker crashed: {exc!r}"))
        raise
    finally:
        conn.close()


def run_load(spec: LoadSpec, sampler=None) -> LoadResult:
    """Run one load and return the figures for its measurement window.

    *sampler* (optional) has ``begin()`` and ``end()``, called in this process when the
    measurement window opens and closes (to sample the server's CPU and memory).
    """
    ctx = mp.get_context("fork")
    procs = max(1, min(spec.procs, spec.concurrency))
    shares = [spec.concurrency // procs + (1 if i < spec.concurrency % procs else 0)
              for i in range(procs)]
    start = time.monotonic() + 0.05 * procs
    children = []
    for i, share in enumerate(shares):
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker_main, args=(spec, share, i, start, child_end),
                        daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    result = LoadResult(spec, window=spec.seconds, started_at=start + spec.warmup)
    if sampler is not None:
        delay = result.started_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sampler.begin()
        sampler.wait_until(result.started_at + spec.seconds)
        sampler.end()
    for p, conn in children:
        if conn.poll(spec.warmup + spec.seconds + 30.0):
            done, rcpts, errors, wrong, cpu, lat, first = conn.recv()
        else:
            done, rcpts, errors, wrong, cpu, lat, first = 0, 0, 1, 0, 0.0, b"", "worker hung"
            p.kill()
        p.join(5)
        result.sessions += done
        result.rcpts += rcpts
        result.errors += errors
        result.wrong += wrong
        result.gen_cpu += cpu
        result.latencies_us.frombytes(lat)
        if first and not result.first_error:
            result.first_error = first
    return result


# ------------------------------------------------------------------------ idle connections


def _hold_main(host: str, port: int, count: int, hold_until: float, conn) -> None:
    """Open *count* milter connections as Postfix does (OPTNEG, then the CONNECT and HELO
    macros), keep them open and silent until *hold_until*, report how many were held."""
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    state: dict[int, int] = {}
    errors = 0
    first = ""
    opened = 0
    held = 0
    deadline = min(hold_until, time.monotonic() + 120.0)
    plans: dict[bytes, Plan] = {}
    while time.monotonic() < deadline:
        while opened < count and len(socks) - held < 200:  # open in waves of 200
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            rc = sock.connect_ex((host, port))
            opened += 1
            if rc not in (0, errno.EINPROGRESS):
                errors += 1
                first = first or f"connect: {os.strerror(rc)}"
                sock.close()
                continue
            socks[sock.fileno()] = sock
            state[sock.fileno()] = 0
            ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        if opened >= count and held + errors >= count:
            conn.send(("held", held))
            break
        for fd, ev in ep.poll(0.05):
            sock = socks.get(fd)
            if sock is None:
                continue
            try:
                if state[fd] == 0 and ev & select.EPOLLOUT:
                    sock.send(_OPTNEG)
                    state[fd] = 1
                elif state[fd] == 1 and ev & select.EPOLLIN:
                    data = sock.recv(4096)
                    if not data:
                        raise OSError("closed by the milter")
                    plan = plans.get(data)
                    if plan is None:
                        plan = plans[data] = Plan(NegotiateReply.unpack(data[5:]))
                    sock.send(plan.head_connect + plan.head_helo)
                    state[fd] = 2
                    held += 1
                elif state[fd] == 2 and ev & select.EPOLLIN and not sock.recv(4096):
                    raise OSError("closed by the milter while idle")
            except OSError as exc:
                errors += 1
                first = first or str(exc)
                ep.unregister(fd)
                sock.close()
                del socks[fd]
                if state.pop(fd) == 2:
                    held -= 1
    else:
        conn.send(("held", held))
    while time.monotonic() < hold_until:  # keep them until the parent has measured
        if conn.poll(0.2):
            break
    lost = sum(1 for sock in socks.values() if _closed_by_peer(sock))
    for sock in socks.values():
        sock.close()
    conn.send(("done", errors, lost, first))
    conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def hold_idle(host: str, port: int, count: int, procs: int, measure, hold: float = 60.0):
    """Hold *count* idle milter connections (split over *procs* processes), call
    *measure()* once all are open, then close them. Returns (held, errors, lost while
    held, first error, measure's result)."""
    ctx = mp.get_context("fork")
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    hold_until = time.monotonic() + hold
    children = []
    for share in shares:
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_hold_main, args=(host, port, share, hold_until, child_end),
                        daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    held = 0
    for _, conn in children:
        if conn.poll(hold):
            held += conn.recv()[1]
    result = measure()
    errors = lost = 0
    first = ""
    for p, conn in children:
        with contextlib.suppress(OSError, BrokenPipeError):
            conn.send("release")
        if conn.poll(30):
            _, e, lo, f = conn.recv()
            errors += e
            lost += lo
            first = first or f
        p.join(10)
    return held, errors, lost, first, result


# ------------------------------------------------------------------------ the native one


def run_native(binary: Path, spec: LoadSpec, sampler=None, *, gate: bool = True,
               policy: bool = False) -> LoadResult:
    """The same load from ``miltergen.c`` (one process, C, epoll; every reply checked):
    the generator for every measured figure, so the servers get the CPU they can use.
    *gate*: check verdicts (member CONTINUE/DUNNO, nonmember rejected) rather than
    CONTINUE/DUNNO everywhere; *policy*: Postfix policy requests on persistent
    connections. The figures of the window, as ``run_load`` gives them."""
    import subprocess
    import tempfile

    pop = spec.population
    with tempfile.NamedTemporaryFile(prefix="lg-lat-") as lat:
        cmd = [str(binary), "--conc", str(spec.concurrency), "--rcpts", str(spec.rcpts),
               "--seconds", str(spec.seconds), "--warmup", str(spec.warmup),
               "--members", str(len(pop.members)), "--member-share", str(spec.member_share),
               "--list", pop.list_address, "--seed", str(spec.seed), "--lat", lat.name,
               *(["--gate"] if gate else []), *(["--policy"] if policy else []),
               str(spec.port)]
        began = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        result = LoadResult(spec, window=spec.seconds, started_at=began + spec.warmup)
        if sampler is not None:
            delay = result.started_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sampler.begin()
            sampler.wait_until(result.started_at + spec.seconds)
            sampler.end()
        out, err = proc.communicate(timeout=spec.warmup + spec.seconds + 60)
        fields = dict(kv.split("=", 1) for kv in out.split(" first_error=")[0].split())
        if not fields:
            raise RuntimeError(f"miltergen: {err.strip() or out.strip()}")
        result.sessions = int(fields["sessions"])
        result.rcpts = int(fields["rcpts"])
        result.errors = int(fields["errors"])
        result.wrong = int(fields["wrong"])
        result.gen_cpu = float(fields["user"]) + float(fields["sys"])
        first = out.split(" first_error=", 1)[1].strip() if " first_error=" in out else ""
        result.first_error = "" if first == "-" else first
        result.latencies_us.frombytes(Path(lat.name).read_bytes())
    return result
