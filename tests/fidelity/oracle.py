"""Mailman itself as the oracle: a private Mailman 3 core that processes real posts.

``MailmanOracle`` runs a :class:`mailman_harness.MailmanCore` with the runners a post needs
(REST, lmtp, in, pipeline, out, virgin: a reject notice and a hold notice are *virgin*
messages, a distribution goes through *pipeline*; all leave through *out*), each polling
its queue every 50 ms. Mailman's outgoing SMTP goes to an aiosmtpd sink on 127.0.0.1;
posts arrive over LMTP on 127.0.0.1, exactly as an MTA hands them over.

Each post is classified by what Mailman visibly did, never by what we expect:

- **accepted**: a copy carrying the post's own Message-ID went out (the distribution to
  the members; for ``-owner`` the delivery to the owners);
- **held**: the post is in the list's held-message queue (``GET lists/<id>/held``);
- **rejected**: a notice went out to the sender with the post attached, under the post's
  own Subject (Mailman's ``bounce_message``), that is neither a distribution nor a
  hold notice;
- **discarded**: none of the above within the bound.

Mailman's own log of the terminal chain (``vette.log``: ACCEPT/OWNER, HOLD, REJECT,
DISCARD) is used to stop waiting early and as a cross-check: an observation that
contradicts the chain Mailman logged is reported as an oracle conflict, never silently
resolved. A post to a service address other than ``-owner`` (``-request``, ``-join``,
``-bounces``, ``-confirm``...) never enters a posting chain: its outcome is **service**.

Only loopback addresses are used. ``[devmode]`` is off on purpose, so the distribution's
envelope recipients are the real members (Mailman's SMTP can only reach the sink).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email
import email.policy
import json
import re
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailman_harness import MailmanCore, free_port

from .generator import LIST_DOMAIN, PostSpec, UserSpec, WorldSpec

RUNNERS = ("lmtp", "in", "pipeline", "out", "virgin")
"""Runners a post needs besides REST (verified: without virgin no notice goes out)."""
SLEEP = "0.05s"
OUTCOMES = ("accepted", "held", "rejected", "discarded", "service")
REFUSED = frozenset({"rejected", "discarded"})
CHAIN_OUTCOME = {"ACCEPT": "accepted", "OWNER": "accepted", "HOLD": "held",
                 "REJECT": "rejected", "DISCARD": "discarded"}

_PROBE = Path(__file__).with_name("mm_probe.py")


def _decoded(value: str | None) -> str:
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass(frozen=True)
class SinkMessage:
    """One message Mailman sent."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str
    subject: str
    to: str
    attached_ids: tuple[str, ...]
    """Message-IDs of message/rfc822 parts (a notice carrying the post)."""


class _SinkHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[SinkMessage] = []
        self.by_id: dict[str, list[SinkMessage]] = {}
        """Message-ID -> messages that are, or carry, that message."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw)
        attached = []
        for part in msg.walk():
            if part.get_content_type() == "message/rfc822":
                payload = part.get_payload()
                inner = payload[0] if isinstance(payload, list) and payload else None
                if inner is not None and inner.get("Message-ID"):
                    attached.append(str(inner.get("Message-ID")).strip())
        record = SinkMessage(
            envelope.mail_from or "",
            tuple(r.lower() for r in envelope.rcpt_tos),
            str(msg.get("Message-ID", "")).strip(),
            _decoded(msg.get("Subject")),
            _decoded(msg.get("To")),
            tuple(attached),
        )
        with self.lock:
            self.messages.append(record)
            for mid in dict.fromkeys((record.message_id, *record.attached_ids)):
                self.by_id.setdefault(mid, []).append(record)
        return "250 OK"


class SmtpSink:
    """aiosmtpd SMTP server on 127.0.0.1 recording what Mailman's out runner sends."""

    def __init__(self) -> None:
        self.handler = _SinkHandler()
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def snapshot(self) -> list[SinkMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def about(self, message_id: str) -> list[SinkMessage]:
        """The messages that are, or carry, the message with this Message-ID."""
        with self.handler.lock:
            return list(self.handler.by_id.get(message_id, ()))


@dataclass
class Observation:
    """What Mailman did with one post."""

    outcome: str
    chain: str | None = None
    """The terminal chain Mailman logged (ACCEPT, OWNER, HOLD, REJECT, DISCARD) or None."""
    chain_detail: str = ""
    lmtp: str = "250"
    distributed_to: tuple[str, ...] = ()
    evidence: list[str] = field(default_factory=list)
    conflict: str | None = None
    """Set when what was observed contradicts the chain Mailman logged."""


@dataclass(frozen=True)
class Delivery:
    """A message to hand to Mailman's LMTP runner."""

    key: str
    """Unique id (the case id, or ``<case id>-t`` for a twin)."""
    world: WorldSpec
    envelope: str
    recipient: str
    raw: bytes
    message_id: str
    subject: str
    service: bool
    """A service address other than -owner: no posting chain runs."""


_VETTE = re.compile(
    r"\) (?:(?P<simple>ACCEPT|OWNER|REJECT): (?P<mid>\S+)"
    r"|DISCARD: (?P<dmid>\S+?);(?P<dwhy>.*)"
    r"|HOLD: .*? message-id=(?P<hmid>\S+?): (?P<hwhy>.*))$"
)


class MailmanOracle:
    """A Mailman core with the posting runners, an SMTP sink and a REST client."""

    def __init__(self, base_dir: Path | None = None, *, sleep: str = SLEEP) -> None:
        self.sink = SmtpSink()
        extra = "".join(f"[runner.{r}]\nsleep_time: {sleep}\n" for r in RUNNERS)
        extra += "[logging.vette]\npath: vette.log\n[devmode]\nenabled: no\n"
        # No DNS, no real MTA: Mailman's out runner can only reach the sink on loopback.
        self.core = MailmanCore(base_dir, runners=RUNNERS, smtp_port=self.sink.port,
                                extra_config=extra, startup_timeout=60.0)
        self._http: httpx.Client | None = None
        self._vette_pos = 0
        self._vette: dict[str, tuple[str, str]] = {}
        self._domains: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.sink.start()
        try:
            self.core.start()
        except BaseException:
            self.sink.stop()
            raise
        self._http = httpx.Client(base_url=self.core.url + "/", auth=self.core.auth,
                                  timeout=30.0)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        try:
            self.core.close()
        finally:
            self.sink.stop()

    def __enter__(self) -> MailmanOracle:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http(self) -> httpx.Client:
        assert self._http is not None, "oracle not started"
        return self._http

    def health(self) -> str:
        """'' when every runner is alive; otherwise which died, with log tails."""
        dead = [n for n, alive in self.core.runners_alive().items() if not alive]
        if not dead and self.core.is_running:
            return ""
        return f"dead runners: {dead or ['rest']}" + self.core.log_tail()

    # ------------------------------------------------------------------ REST

    def _rest(self, method: str, path: str, data: Any = None, ok: Iterable[int] = ()) -> Any:
        r = self.http.request(method, path, data=data)
        if r.status_code >= 400 and r.status_code not in set(ok):
            raise AssertionError(f"Mailman REST {method} {path} {data!r}: HTTP "
                                 f"{r.status_code} {r.text[:300]}")
        if r.status_code == 201:
            return r.headers.get("location", "")
        if r.content and r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return None

    def _member(self, list_id: str, subscriber: str, role: str = "member",
                action: str = "") -> None:
        data: dict[str, Any] = {"list_id": list_id, "subscriber": subscriber}
        if role == "member":
            data.update(pre_verified=True, pre_confirmed=True, pre_approved=True,
                        send_welcome_message=False)
        else:
            data.update(role=role, display_name="")
        location = self._rest("POST", "members", data)
        if not location:
            raise AssertionError(f"subscribing {subscriber} ({role}) to {list_id}: pending?")
        if action:
            self._rest("PATCH", location, {"moderation_action": action})

    def _user(self, list_id: str, spec: UserSpec) -> None:
        first, *others = spec.addresses
        location = self._rest("POST", "users", {"email": first, "display_name": "Fidelity"})
        user_path = location.split("/3.1/", 1)[1]
        for address in others:
            self._rest("POST", f"{user_path}/addresses",
                       {"email": address, "absorb_existing": True})
        for address in spec.addresses:
            self._rest("POST", f"addresses/{quote(address, safe='@')}/verify", {})
        for address, action in spec.address_subs:
            self._member(list_id, address, action=action)
        if spec.preferred is not None:
            self._rest("POST", f"{user_path}/preferred_address", {"email": spec.preferred})
        if spec.user_sub is not None:
            user_id = self._rest("GET", user_path)["user_id"]
            self._member(list_id, user_id, action=spec.user_sub)
        if spec.repoint is not None:
            self._rest("POST", f"{user_path}/preferred_address", {"email": spec.repoint})

    def build_world(self, world: WorldSpec) -> None:
        """Create the world's lists, settings, roster and bans (through REST)."""
        self._domain()
        if world.aux_name:
            self._rest("POST", "lists", {"fqdn_listname": world.aux_address})
            aux_id = f"{world.aux_name}.{LIST_DOMAIN}"
            for address in world.aux_members:
                self._member(aux_id, address)
            for spec in world.aux_users:
                self._user(aux_id, spec)
        self._rest("POST", "lists", {"fqdn_listname": world.posting_address})
        list_id = f"{world.list_name}.{LIST_DOMAIN}"
        settings = dict(world.settings)
        if world.moderator_password:
            settings["moderator_password"] = world.moderator_password
        if settings:
            self._rest("PATCH", f"lists/{list_id}/config", settings)
        for address, action in world.members:
            self._member(list_id, address, action=action)
        for address in world.owners:
            self._member(list_id, address, role="owner")
        for address in world.moderators:
            self._member(list_id, address, role="moderator")
        for address, action in world.nonmembers:
            self._member(list_id, address, role="nonmember", action=action)
        for spec in world.users:
            self._user(list_id, spec)
        for entry in world.list_bans:
            self._rest("POST", f"lists/{list_id}/bans", {"email": entry})
        for entry in world.global_bans:
            self._rest("POST", "bans", {"email": entry})

    def _domain(self) -> None:
        with self._lock:
            if LIST_DOMAIN not in self._domains:
                if self.http.get(f"domains/{LIST_DOMAIN}").status_code == 404:
                    self._rest("POST", "domains", {"mail_host": LIST_DOMAIN})
                self._domains.add(LIST_DOMAIN)

    def build_worlds(self, worlds: Sequence[WorldSpec], threads: int = 2) -> None:
        self._domain()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(self.build_world, w) for w in worlds]:
                future.result()

    def held_ids(self, list_ids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for list_id in set(list_ids):
            content = self._rest("GET", f"lists/{list_id}/held", ok=(404,)) or {}
            found.update(str(e.get("message_id", "")).strip() for e in content.get("entries", []))
        return found

    # ------------------------------------------------------------------ Mailman's senders

    def senders(self, deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
        """``msg.senders`` as Mailman's own code computes it for each delivery (run in the
        Mailman venv, on the message as the LMTP runner parses it)."""
        work = self.core.base_dir / "probe"
        work.mkdir(exist_ok=True)
        src = work / "senders-in.json"
        dst = work / "senders-out.json"
        src.write_text(json.dumps(
            {d.key: [d.envelope, d.raw.decode("utf-8")] for d in deliveries}))
        proc = subprocess.run(
            [str(self.core.venv / "bin" / "python"), str(_PROBE), str(self.core.config_path),
             str(src), str(dst)],
            capture_output=True, text=True, timeout=300, check=False,
            cwd=self.core.base_dir, env=self.core._runner_env(),
        )
        if proc.returncode != 0:
            raise AssertionError(f"Mailman senders probe failed (rc={proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        result: dict[str, list[str]] = json.loads(dst.read_text())
        return result

    # ------------------------------------------------------------------ posting

    def _deliver_some(self, deliveries: Sequence[Delivery]) -> dict[str, str]:
        replies: dict[str, str] = {}
        lmtp = smtplib.LMTP("127.0.0.1", self.core.lmtp_port, timeout=60)
        try:
            for d in deliveries:
                try:
                    refused = lmtp.sendmail(d.envelope, [d.recipient], d.raw)
                    replies[d.key] = "250" if not refused else repr(refused)
                except smtplib.SMTPRecipientsRefused as exc:
                    replies[d.key] = " ".join(
                        f"{code} {msg.decode(errors='replace')}"
                        for code, msg in exc.recipients.values())
                    lmtp.rset()
                except smtplib.SMTPResponseException as exc:
                    replies[d.key] = f"{exc.smtp_code} {exc.smtp_error!r}"
                    with contextlib.suppress(smtplib.SMTPException):
                        lmtp.rset()
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                lmtp.quit()
        return replies

    def deliver(self, deliveries: Sequence[Delivery], concurrency: int = 6) -> dict[str, str]:
        """Hand every delivery to Mailman's LMTP runner; the LMTP reply per key."""
        chunks = [list(deliveries[i::concurrency]) for i in range(concurrency)]
        replies: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for part in pool.map(self._deliver_some, [c for c in chunks if c]):
                replies.update(part)
        return replies

    def _read_vette(self) -> None:
        path = self.core.var_dir / "logs" / "vette.log"
        try:
            with path.open("rb") as fh:
                fh.seek(self._vette_pos)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._vette_pos += end + 1
        for line in data[: end + 1].decode("utf-8", "replace").splitlines():
            m = _VETTE.search(line)
            if not m:
                continue
            if m.group("simple"):
                self._vette[m.group("mid")] = (m.group("simple"), "")
            elif m.group("dmid"):
                self._vette[m.group("dmid")] = ("DISCARD", m.group("dwhy").strip())
            else:
                self._vette[m.group("hmid")] = ("HOLD", m.group("hwhy").strip())

    def collect(self, deliveries: Sequence[Delivery], lmtp: dict[str, str], *,
                stall: float = 60.0, bound: float = 1800.0,
                grace: float = 1.0) -> dict[str, Observation]:
        """Wait until Mailman has visibly dealt with every delivery, then classify.

        The wait ends when nothing is pending, when nothing has settled for *stall*
        seconds (a loaded machine slows Mailman's runners down, it does not stop them),
        or after *bound* seconds in all. A post still unsettled then is classified by what
        was seen (nothing: discarded) and, having no chain logged, reported as a conflict.
        """
        began = time.monotonic()
        progress = began
        posts = [d for d in deliveries if not d.service and lmtp.get(d.key) == "250"]
        pending = list(posts)
        while True:
            self._read_vette()
            still = [d for d in pending if not self._settled(d)]
            now = time.monotonic()
            if len(still) < len(pending):
                progress = now
            pending = still
            if not pending or now - progress >= stall or now - began >= bound:
                break
            if health := self.health():
                raise AssertionError(health)
            time.sleep(0.1)
        # The bound for "none of the above": give the out runner a moment more, then look.
        time.sleep(grace)
        self._read_vette()
        held = self.held_ids(f"{d.world.list_name}.{LIST_DOMAIN}" for d in posts)
        return {d.key: self._classify(d, lmtp.get(d.key, "no reply"), held)
                for d in deliveries}

    def _settled(self, d: Delivery) -> bool:
        chain = self._vette.get(d.message_id)
        if chain is None:
            return False
        seen = self.sink.about(d.message_id)
        if chain[0] in ("ACCEPT", "OWNER"):
            return any(m.message_id == d.message_id for m in seen)
        if chain[0] == "REJECT":
            return any(self._is_reject_notice(d, m) for m in seen)
        return True  # HOLD: read from REST at the end; DISCARD: nothing to wait for

    @staticmethod
    def _is_reject_notice(d: Delivery, m: SinkMessage) -> bool:
        return (m.message_id != d.message_id and d.message_id in m.attached_ids
                and m.subject == d.subject)

    def _classify(self, d: Delivery, lmtp: str, held: set[str]) -> Observation:
        if lmtp != "250":
            # Mailman's LMTP runner refused it: the MTA would bounce it to the envelope.
            return Observation("rejected", None, "LMTP refused", lmtp, evidence=[lmtp])
        chain, detail = self._vette.get(d.message_id, (None, ""))
        seen = self.sink.about(d.message_id)
        copies = [m for m in seen if m.message_id == d.message_id]
        notices = [m for m in seen if self._is_reject_notice(d, m)]
        evidence = [f"{m.mail_from} -> {','.join(m.rcpt_tos)}: {m.subject[:60]}" for m in seen]
        if d.service:
            obs = Observation("service", chain, detail, lmtp, evidence=evidence)
            if chain is not None or copies:
                obs.conflict = f"service address post went through a chain: {chain}"
            return obs
        if copies:
            outcome = "accepted"
        elif d.message_id in held:
            outcome = "held"
        elif notices:
            outcome = "rejected"
        else:
            outcome = "discarded"
        obs = Observation(outcome, chain, detail, lmtp,
                          tuple(sorted({r for m in copies for r in m.rcpt_tos})), evidence)
        expected = CHAIN_OUTCOME.get(chain or "")
        if expected != outcome:
            obs.conflict = f"Mailman logged {chain} but the observed outcome is {outcome}"
        return obs


def delivery(post: PostSpec, world: WorldSpec, *, twin: bool = False) -> Delivery:
    """The LMTP delivery of *post*; a *twin* keeps only the envelope as sender (From: the
    envelope, no other sender header): what Mailman decides on what RCPT can see."""
    to = world.posting_address
    if twin:
        headers = [("From", post.envelope)] if post.envelope else []
        twin_post = PostSpec(f"{post.case_id}-t", post.world, post.envelope, headers,
                             post.recipient, {"twin": post.case_id,
                                              "recipient": post.kinds["recipient"]})
        return delivery(twin_post, world)
    service = post.kinds.get("recipient") not in ("posting", "posting-upper", "posting+x",
                                                   "owner")
    return Delivery(post.case_id, world, post.envelope, post.recipient, post.raw(to),
                    post.message_id, post.subject, service)
