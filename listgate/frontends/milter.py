"""The milter front end: what listgate negotiates, what each milter command means, and
how decisions become replies.

Invariants:
- Pure: no I/O. ``MilterSession`` is the whole conversation as listgate holds it: bytes in,
  ``PostingRequest``s out, ``Decision``s in, reply bytes out (see
  ``listgate.frontends.session``). The asyncio layer only moves bytes and asks the gate.
- listgate asks the MTA for MAIL (no reply: SMFIP_NR_MAIL) and RCPT; when some list
  decides at end of headers, also for the headers (no reply: SMFIP_NR_HDR) and EOH. Every
  other step is skipped where the MTA allows it. The client address and queue id come
  from macros, so CONNECT can be skipped too.
- What each command means is decided here: MAIL starts a transaction; RCPT asks for a
  decision (unless a pending list recipient makes it ``452 4.5.3`` at once); EOH asks for
  one when a list recipient is judged there, else it is answered CONTINUE; ABORT ends the
  transaction and keeps the connection (and its client address); QUIT_NC starts afresh
  (a new ``MilterTransaction``); QUIT ends the conversation (``CLOSE``); any other wanted
  step we do not judge is answered CONTINUE.
- One ``Decision`` becomes exactly one final reply: ACCEPT → CONTINUE (never ACCEPT,
  which would end milter processing for the whole message), REJECT and TEMPFAIL →
  REPLYCODE with the decision's code, DSN and text.
- Headers mode (``decide_at = "headers"``): a list recipient whose envelope sender may
  not post is *pending*: accepted at RCPT, judged at EOH on every sender Mailman reads.
  A reject at EOH rejects the whole message, so a pending recipient must be alone in
  its transaction: if other recipients were accepted before it, it gets ``452 4.5.3``;
  once one is pending, every later recipient gets ``452 4.5.3``. SMTP clients retry a
  452 recipient in a transaction of its own, so no other recipient is ever rejected
  because of the list.
- Authenticated posters (``require_authenticated`` lists; ``AuthStage``): a decision that
  ``awaits_proof`` is treated like headers mode's (a provisional REJECT is pending and
  must be alone, a provisional ACCEPT is judged again if it is the only recipient), and
  the request is asked again with more ``Evidence``: at EOH with the From: addresses and
  every Authentication-Results: value (``AuthStage.HEADERS``: upstream results), and,
  with ``AuthStage.MESSAGE``, at EOM with the whole message for DKIM. Only then is the
  whole message kept (at most ``max_message`` bytes); every other transaction's body is
  answered SKIP at its first chunk (CONTINUE when the MTA did not offer SMFIP_SKIP), and
  its EOM CONTINUE. The HELO name (for SPF) comes from the HELO step, asked for with
  ``AuthStage.MESSAGE`` only (Postfix has no HELO macro).
- Headers mode, the other way round: a list recipient whose envelope sender may post is
  accepted at RCPT, but Mailman may still refuse the post because of a header sender (a
  banned ``From:``, a member whose action rejects, a nonmember rule). If that recipient
  is the transaction's only one, it is judged again at EOH and may be refused there;
  with any other recipient accepted, the RCPT verdict stands (a refusal at EOH would hit
  the others too). The same goes for Mailman's loop rule: the ``List-Post:`` headers are
  kept with the sender headers, and a post whose ``List-Post:`` names the list itself is
  refused at EOH when the list is its only recipient.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import getaddresses

from listgate.decision.model import (
    Decision,
    Evidence,
    PostingRequest,
    Verdict,
    normalize_address,
)
from listgate.decision.senders import mailman_senders
from listgate.frontends.session import CLOSE, Event
from listgate.milter import (
    Abort,
    Body,
    Command,
    Continue,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    LocalProtocolError,
    MacroStage,
    MilterConnection,
    MilterOptions,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Reject,
    Reply,
    ReplyCode,
    Skip,
    TempFail,
)
from listgate.sansio import NEED_DATA, PAUSED, Signal

__all__ = [
    "ALONE_REPLY",
    "DEFAULT_MAX_MESSAGE",
    "AuthStage",
    "MilterSession",
    "MilterTransaction",
    "milter_options",
    "reply_for",
]

WANTED_MACROS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.ENVFROM: ("{client_addr}", "{auth_authen}", "i"),
    MacroStage.ENVRCPT: ("i",),
    MacroStage.EOH: ("i",),
}
"""Macros listgate asks for (SETSYMLIST). They replace the MTA's configured lists for
listgate only: the client address and SASL login at MAIL, the queue id at RCPT (Postfix
knows it only from the second accepted recipient on; Sendmail already at MAIL) and EOH."""

ALONE_REPLY = ReplyCode(
    452, "4.5.3", "Too many recipients: send the list post in a transaction of its own"
)
"""RFC 5321 §4.5.3.1.10: the client retries this recipient later, in a new transaction."""

class AuthStage(enum.Enum):
    """The last stage at which authentication evidence is gathered (when some list has
    ``require_authenticated``)."""

    HEADERS = "headers"
    """End of headers: the Authentication-Results: of a milter before listgate."""
    MESSAGE = "message"
    """End of message: the whole message, for listgate's own DKIM check (and the HELO
    name, for its SPF check at RCPT)."""


DEFAULT_MAX_MESSAGE = 4_194_304
"""Bytes of a message kept for DKIM by default ([auth] max_message_size)."""

_CONTINUE = Continue()
_SKIP = Skip()
_REJECT = Reject()
_TEMPFAIL = TempFail()
_MAX_HEADERS = 64
"""Sender headers kept per message; more are ignored (Mailman reads a handful)."""
_SENDER_FIELDS = frozenset({"from", "reply-to", "sender"})
_KEPT_FIELDS = _SENDER_FIELDS | {"list-post"}
"""Header fields kept for EOH: Mailman's senders, and List-Post (its loop rule)."""
_EVIDENCE_FIELDS = _KEPT_FIELDS | {"authentication-results"}
_SKIP_FLAG = ProtocolFlag.SKIP


def _header_bytes(name: str, value: str) -> bytes:
    """One header field as it was sent (with SMFIP_HDR_LEADSPC the value keeps its
    leading space; folds come as LF)."""
    text = f"{name}:{value}".replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
    return text.encode("utf-8", "surrogateescape")


def _from_addresses(values: Iterable[str]) -> tuple[str, ...]:
    """The addresses of the From: header values, normalised."""
    unfolded = [v.replace("\r", " ").replace("\n", " ") for v in values]
    found = [normalize_address(a) for _n, a in getaddresses(unfolded) if "@" in a]
    return tuple(dict.fromkeys(found))


_NORMALIZED: dict[str, str] = {}
_NORMALIZED_MAX = 4096
_NORMALIZED_KEY_MAX = 256


def _normalized(raw: str) -> str:
    """``normalize_address`` with a small memo: MTAs send the same few list addresses
    and senders again and again. Bounded (entries and key length): it is emptied when
    full, so a flood of new addresses costs one ``clear`` per 4096."""
    value = _NORMALIZED.get(raw)
    if value is None:
        value = normalize_address(raw)
        if len(raw) <= _NORMALIZED_KEY_MAX:
            if len(_NORMALIZED) >= _NORMALIZED_MAX:
                _NORMALIZED.clear()
            _NORMALIZED[raw] = value
    return value


def milter_options(
    max_packet_size: int, headers: bool = False, auth: AuthStage | None = None
) -> MilterOptions:
    """The negotiation listgate wants: RCPT, MAIL without reply, and with *headers* (or
    any *auth*) the header fields (without reply) and EOH; with ``AuthStage.MESSAGE``
    also HELO (without reply), the body (answered, so that it can be skipped: SMFIP_SKIP)
    and EOM, with header values as sent (SMFIP_HDR_LEADSPC, for DKIM)."""
    events: set[type[Command]] = {EnvelopeFrom, EnvelopeRecipient}
    no_reply: set[type[Command]] = {EnvelopeFrom}
    capabilities = ProtocolFlag.NONE
    if headers or auth is not None:
        events |= {Header, EndOfHeaders}
        no_reply.add(Header)
    if auth is AuthStage.MESSAGE:
        events |= {Helo, Body, EndOfMessage}
        no_reply.add(Helo)
        capabilities = ProtocolFlag.SKIP | ProtocolFlag.HDR_LEADSPC
    return MilterOptions(
        events=frozenset(events),
        no_reply=frozenset(no_reply),
        capabilities=capabilities,
        macros=WANTED_MACROS,
        max_packet_size=max_packet_size,
    )


def reply_for(decision: Decision) -> Reply:
    """The milter reply that carries *decision* to the MTA."""
    if decision.verdict is Verdict.ACCEPT:
        return _CONTINUE
    if decision.smtp_code is None:  # no text of our own: the MTA's default reply
        return _REJECT if decision.verdict is Verdict.REJECT else _TEMPFAIL
    return ReplyCode(decision.smtp_code, decision.dsn, decision.text)


@dataclass(slots=True, init=False)
class MilterTransaction:
    """The state of one transaction (and the connection's client address), and the
    headers-mode rules over it (``__init__`` written out, as ``PostingRequest``'s: one
    per connection)."""

    sender: str | None = None
    auth_user: str | None = None
    client_address: str | None = None
    accepted: int = 0
    """Recipients answered CONTINUE in this transaction."""
    pending: PostingRequest | None = None
    """The list recipient waiting for the end of headers (headers mode)."""
    recheck: PostingRequest | None = None
    """The transaction's first recipient, a list accepted on its envelope sender alone
    (headers mode): judged again at EOH if it is still the only recipient."""
    headers: list[tuple[str, str]] = field(default_factory=list)
    auth: AuthStage | None = None
    """Authentication evidence this session gathers (None: no list needs it)."""
    max_message: int = DEFAULT_MAX_MESSAGE
    """Bytes of header fields and body kept for DKIM; a larger message is not kept."""
    helo: str = ""
    """The client's HELO name (connection state; from the HELO step)."""
    awaits_message: bool = False
    """The recipient judged later waits for the whole message (DKIM at EOM)."""
    message: bytearray | None = None
    """Header fields and body as received, while ``awaits_message`` (None: not kept)."""
    message_size: int = 0
    """Bytes of header fields and body seen in this transaction (kept or not)."""
    in_body: bool = False

    def __init__(
        self,
        sender: str | None = None,
        auth_user: str | None = None,
        client_address: str | None = None,
        accepted: int = 0,
        pending: PostingRequest | None = None,
        recheck: PostingRequest | None = None,
        headers: list[tuple[str, str]] | None = None,
        auth: AuthStage | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        helo: str = "",
        awaits_message: bool = False,
        message: bytearray | None = None,
        message_size: int = 0,
        in_body: bool = False,
    ) -> None:
        self.sender = sender
        self.auth_user = auth_user
        self.client_address = client_address
        self.accepted = accepted
        self.pending = pending
        self.recheck = recheck
        self.headers = [] if headers is None else headers
        self.auth = auth
        self.max_message = max_message
        self.helo = helo
        self.awaits_message = awaits_message
        self.message = message
        self.message_size = message_size
        self.in_body = in_body

    def on_mail(self, event: EnvelopeFrom, conn: MilterConnection) -> None:
        """A new transaction: remember the envelope sender and its macros."""
        self.on_abort()
        self.sender = _normalized(event.sender)
        self.auth_user = conn.macro("auth_authen") or None
        self.client_address = conn.macro("client_addr") or self.client_address

    def on_abort(self) -> None:
        """The transaction ended; the connection stays."""
        self.sender = None
        self.auth_user = None
        self.accepted = 0
        self.pending = None
        self.recheck = None
        self.headers.clear()
        self.awaits_message = False
        self.message = None
        self.message_size = 0
        self.in_body = False

    def _evidence(self, more: bool, message: bytes | None = None) -> Evidence | None:
        """What the request carries to prove its senders (None without ``auth``)."""
        if self.auth is None:
            return None
        headers = self.headers
        return Evidence(
            helo=self.helo,
            header_from=_from_addresses(v for k, v in headers if k.lower() == "from"),
            auth_results=tuple(v for k, v in headers
                               if k.lower() == "authentication-results"),
            message=message,
            more=more,
        )

    def request_for(self, event: EnvelopeRecipient, conn: MilterConnection) -> PostingRequest:
        """The posting request for one RCPT of the current transaction."""
        return PostingRequest(
            sender=self.sender or "",
            recipient=_normalized(event.recipient),
            client_address=self.client_address,
            queue_id=conn.macro("i"),
            auth_user=self.auth_user,
            evidence=self._evidence(more=True),
        )

    def precheck_rcpt(self) -> Reply | None:
        """The reply for a recipient that must not be judged at all: one that follows a
        pending list recipient (it must stay alone). None: ask the gate."""
        return ALONE_REPLY if self.pending is not None else None

    def answer_rcpt(self, request: PostingRequest, decision: Decision) -> Reply:
        """The RCPT reply for *decision*, applying the headers-mode rules."""
        if decision.verdict is Verdict.REJECT and decision.provisional:
            if self.accepted:
                return ALONE_REPLY
            self.pending = request
            self.accepted += 1
            self._await(decision)
            return _CONTINUE
        reply = reply_for(decision)
        if reply is _CONTINUE:
            if decision.provisional and not self.accepted:
                self.recheck = request
                self._await(decision)
            self.accepted += 1
        return reply

    def _await(self, decision: Decision) -> None:
        """Keep the whole message when *decision* waits for DKIM at EOM."""
        if decision.awaits_proof and self.auth is AuthStage.MESSAGE:
            self.awaits_message = True

    def _judged_at_eoh(self) -> PostingRequest | None:
        """The recipient EOH decides: the pending one, or the one to judge again."""
        if self.pending is not None:
            return self.pending
        return self.recheck if self.accepted == 1 else None

    def on_header(self, event: Header) -> None:
        """Keep the sender and List-Post headers while a recipient waits for EOH (with ``auth``, the
        Authentication-Results: too; with ``AuthStage.MESSAGE`` every header field, in
        case the recipient waits for DKIM)."""
        waiting = self.pending is not None or self.recheck is not None
        if not waiting:
            return
        wanted = _KEPT_FIELDS if self.auth is None else _EVIDENCE_FIELDS
        if event.field.lower() in wanted and len(self.headers) < _MAX_HEADERS:
            self.headers.append((event.field, event.value))
        if self.auth is AuthStage.MESSAGE:
            if self.message is None and self.message_size == 0:
                self.message = bytearray()
            self._keep(_header_bytes(event.field, event.value))

    def _keep(self, data: bytes) -> bool:
        """Add *data* to the kept message; past ``max_message`` it is dropped for good.
        Whether the message is still kept."""
        self.message_size += len(data)
        message = self.message
        if message is None:
            return False
        if self.message_size > self.max_message:
            self.message = None
            return False
        message += data
        return True

    def on_body(self, event: Body) -> bool:
        """Keep a body chunk while the message waits for DKIM; whether more are wanted."""
        if not self.awaits_message or self.message is None:
            return False
        if not self.in_body:
            self.in_body = True
            self._keep(b"\r\n")
        # what _keep says, not ``self.message``: mypy (and so mypyc) would still take the
        # attribute for the bytearray the guard above saw
        return self._keep(event.chunk)

    def eom_request(self, conn: MilterConnection) -> PostingRequest | None:
        """The request to judge at end of message (the whole message for DKIM), or None."""
        waiting = self._judged_at_eoh()
        if waiting is None or not self.awaits_message:
            return None
        if not self.in_body:
            self._keep(b"\r\n")
        message = bytes(self.message) if self.message is not None else None
        return dataclasses.replace(
            waiting,
            queue_id=conn.macro("i") or waiting.queue_id,
            evidence=self._evidence(more=False, message=message),
        )

    def eoh_request(self, conn: MilterConnection) -> PostingRequest | None:
        """The request to judge at end of headers, or None when there is none."""
        waiting = self._judged_at_eoh()
        if waiting is None:
            return None
        senders = mailman_senders(self.headers, waiting.sender)
        if not self.awaits_message:
            self.message = None  # nothing waits for DKIM: stop keeping the message
        return dataclasses.replace(
            waiting,
            header_senders=senders or (waiting.sender,),
            queue_id=conn.macro("i") or waiting.queue_id,
            evidence=self._evidence(more=self.auth is AuthStage.MESSAGE),
            list_posts=tuple(v.strip().lower() for k, v in self.headers
                             if k.lower() == "list-post"),
        )

    def answer_eoh(self, request: PostingRequest, decision: Decision) -> Reply:
        """The EOH reply: that recipient's final verdict (for the whole message, which
        holds no other recipient), or CONTINUE while it waits for the whole message."""
        if decision.provisional and decision.awaits_proof and self.auth is AuthStage.MESSAGE:
            if decision.verdict is Verdict.REJECT:
                self.pending, self.recheck = request, None
            else:
                self.pending, self.recheck = None, request
            self._await(decision)
            return _CONTINUE
        self.pending = None
        self.recheck = None
        self.awaits_message = False
        self.message = None
        return reply_for(decision)

    def answer_eom(self, decision: Decision) -> Reply:
        """The EOM reply: the waiting recipient's final verdict."""
        self.pending = None
        self.recheck = None
        self.awaits_message = False
        self.message = None
        return reply_for(decision)


class MilterSession:
    """One milter conversation as listgate holds it (a ``listgate.frontends.session.Session``):
    a ``MilterConnection`` for the protocol and a ``MilterTransaction`` for what it means."""

    __slots__ = (
        "_asked",
        "_at_eoh",
        "_at_eom",
        "_reply",
        "conn",
        "data_to_send",
        "receive_data",
        "requests",
        "transaction",
    )

    def __init__(
        self,
        options: MilterOptions,
        auth: AuthStage | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        conn = self.conn = MilterConnection(options)
        self.receive_data: Callable[[bytes], None] = conn.receive_data
        """Add bytes received from the MTA (the connection's own method: no extra call)."""
        self.data_to_send: Callable[[], bytes] = conn.data_to_send
        """Bytes to write to the MTA: replies and automatic answers, in order."""
        self.transaction = MilterTransaction(auth=auth, max_message=max_message)
        self.requests = 0
        """Posting requests decided on this connection."""
        self._asked: PostingRequest | None = None
        """The request returned by ``next_event`` that waits for ``decide``."""
        self._at_eoh = False
        """Whether ``_asked`` is judged at end of headers (else at RCPT)."""
        self._at_eom = False
        """Whether ``_asked`` is judged at end of message."""
        self._reply: Reply = _CONTINUE
        """The reply to the last decision (for the decision log)."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return self.conn.buffered

    def next_event(self) -> Event:
        """Handle every buffered command that needs no decision; return the first
        ``PostingRequest`` to decide, ``CLOSE`` at QUIT, else ``NEED_DATA`` (``PAUSED``
        while a decision is owed). Raises ``MilterProtocolError``."""
        if self._asked is not None:
            return PAUSED
        conn = self.conn
        tx = self.transaction
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return event
            kind = type(event)
            if kind is EnvelopeRecipient:
                assert isinstance(event, EnvelopeRecipient)
                early = tx.precheck_rcpt()
                if early is not None:  # 452: no need to judge
                    conn.send(early)
                    continue
                request = tx.request_for(event, conn)
                self._asked = request
                self._at_eoh = self._at_eom = False
                return request
            if kind is Header:
                assert isinstance(event, Header)
                tx.on_header(event)
            elif kind is EndOfHeaders:
                at_eoh = tx.eoh_request(conn)
                if at_eoh is None:
                    conn.send(_CONTINUE)
                    continue
                self._asked = at_eoh
                self._at_eoh, self._at_eom = True, False
                return at_eoh
            elif kind is Body:
                assert isinstance(event, Body)
                more = tx.on_body(event)
                negotiated = conn.negotiated
                skip = negotiated is not None and bool(negotiated.protocol & _SKIP_FLAG)
                conn.send(_CONTINUE if more or not skip else _SKIP)
            elif kind is EndOfMessage:
                at_eom = tx.eom_request(conn)
                if at_eom is None:
                    tx.on_abort()  # the transaction is over; the connection stays
                    conn.send(_CONTINUE)
                    continue
                self._asked = at_eom
                self._at_eoh, self._at_eom = False, True
                return at_eom
            elif kind is Helo:
                assert isinstance(event, Helo)
                tx.helo = event.helo
                if conn.awaiting_reply is not None:  # the MTA could not be told NR_HELO
                    conn.send(_CONTINUE)
            elif kind is EnvelopeFrom:
                assert isinstance(event, EnvelopeFrom)
                tx.on_mail(event, conn)
            elif kind is Abort:
                tx.on_abort()
            elif kind is QuitNoClose:
                tx = self.transaction = MilterTransaction(auth=tx.auth,
                                                          max_message=tx.max_message)
            elif kind is Quit:
                return CLOSE
            elif isinstance(event, Signal):  # PAUSED: not reached (owed only for _asked)
                return event
            elif conn.awaiting_reply is not None:  # a wanted step we do not judge
                conn.send(_CONTINUE)

    def decide(self, decision: Decision) -> None:
        """Queue the reply to the request last returned, by the rules of its stage.
        Raises ``LocalProtocolError`` when no request waits for a decision."""
        request = self._asked
        if request is None:
            raise LocalProtocolError("no posting request is waiting for a decision")
        self._asked = None
        tx = self.transaction
        if self._at_eom:
            reply = tx.answer_eom(decision)
            tx.on_abort()
        elif self._at_eoh:
            reply = tx.answer_eoh(request, decision)
        else:
            reply = tx.answer_rcpt(request, decision)
        self._reply = reply
        self.conn.send(reply)
        self.requests += 1

    def shown_reply(self, decision: Decision) -> str:
        """The reply to *decision* as the decision log shows it: the SMTP reply, or
        CONTINUE and why a headers-mode recipient was let through."""
        reply = self._reply
        if isinstance(reply, ReplyCode):
            return f"{reply.code} {reply.dsn or ''} {reply.text}"
        if decision.provisional and decision.verdict is Verdict.REJECT:
            if decision.awaits_proof and self.transaction.auth is AuthStage.MESSAGE:
                return "continue (pending: judged at end of message)"
            return "continue (pending: judged at end of headers)"
        if decision.provisional:
            return "continue (judged again at end of headers if the only recipient)"
        return "continue"
