"""The milter side of one milter conversation, as a sans-IO state machine.

Usage (the I/O layer's whole job)::

    conn = MilterConnection(options)
    conn.receive_data(bytes_from_socket)
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        if conn.awaiting_reply:            # the event is a command that wants an answer
            conn.send(decide(event))
        ...                                # Abort / Quit / QuitNoClose / no-reply events
    socket.write(conn.data_to_send())

Rules this module keeps (everything that touches the protocol's state lives here):

1. OPTNEG comes first and is answered here, from ``MilterOptions``: steps the application
   does not want are skipped (SMFIP_NO*) when the MTA offers that, steps it never answers
   are marked no-reply (SMFIP_NR_*) when offered, macros are requested with SETSYMLIST
   when offered. Versions 2 to 6 are accepted; the reply carries min(6, offered).
2. Exactly one final reply per command that expects one, and none to ``D``, ``A``, ``Q``,
   ``K`` or any step negotiated as no-reply. Commands the application did not ask for,
   and no-reply steps the MTA could not be told about, are answered CONTINUE here, so the
   application only ever answers what it asked to see. ``send`` refuses a reply that is
   illegal at the current command (see ``tables``), or when no reply is owed.
3. While a reply is owed, ``next_event`` returns ``PAUSED`` and decodes nothing further.
4. ``A`` (ABORT) ends the message and keeps the connection state; ``K`` (QUIT_NC)
   returns to the state before CONNECT (negotiation kept); ``Q`` ends the conversation.
5. Macros are kept per stage (C H M R T E N). New macros for C, H, M or R clear the later
   stages; ABORT clears the message stages. Empty ``D`` packets and ``D`` packets for
   steps that were negotiated away (Postfix sends them) are accepted; macros for L, B and
   U are dropped as libmilter does.
6. Every protocol violation by the MTA raises ``RemoteProtocolError``; the connection is
   then dead and the I/O layer closes it.
7. The same shape as every protocol core in listgate (``listgate.policyd`` too): the one
   ``NEED_DATA``/``PAUSED`` of ``listgate.sansio``, one outbox (``send`` queues,
   ``data_to_send`` empties it), errors under ``listgate.errors.ProtocolError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from listgate.milter.codec import command_decoder, encode
from listgate.milter.constants import (
    DEFAULT_MAX_PACKET_SIZE,
    MAX_VERSION,
    MIN_VERSION,
    STAGE_OF_COMMAND,
    V1_ACTIONS,
    V1_PROTOCOL,
    ActionFlag,
    MacroStage,
    ProtocolFlag,
)
from listgate.milter.errors import LocalProtocolError, RemoteProtocolError
from listgate.milter.messages import (
    COMMANDS,
    Abort,
    Command,
    Continue,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Macro,
    Negotiate,
    NegotiateReply,
    Progress,
    Quit,
    QuitNoClose,
    Reply,
)
from listgate.milter.tables import (
    EOM_MODIFICATIONS,
    FINAL_REPLIES_FOR,
    NEVER_ANSWERED,
    PROGRESS_ALLOWED,
    STEP_FLAGS,
)
from listgate.sansio import NEED_DATA, PAUSED, Outbox, Signal

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "MilterConnection",
    "MilterOptions",
    "Negotiated",
    "Signal",
    "negotiate",
]


_CONTINUE = encode(Continue())


@dataclass(frozen=True, slots=True)
class MilterOptions:
    """What the application wants from each conversation."""

    events: frozenset[type[Command]] = frozenset({EnvelopeFrom, EnvelopeRecipient})
    """Steps the application wants to see. Others are skipped when the MTA allows it and
    answered CONTINUE here when it does not. (EOM cannot be skipped.)"""
    no_reply: frozenset[type[Command]] = frozenset({EnvelopeFrom})
    """Wanted steps the application never answers: negotiated as SMFIP_NR_* when
    offered, otherwise answered CONTINUE here as soon as they are decoded."""
    actions: ActionFlag = ActionFlag.NONE
    """End-of-message actions the application needs (listgate: none)."""
    capabilities: ProtocolFlag = ProtocolFlag.NONE
    """Extra protocol capabilities to request if offered (SKIP, HDR_LEADSPC, RCPT_REJ)."""
    macros: Mapping[MacroStage, tuple[str, ...]] = field(default_factory=dict)
    """Macro names to request per stage (replaces the MTA's configured lists for us)."""
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    agreements: dict[tuple[int, int, int], _Agreement] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """Negotiation outcomes already computed, by offer (version, actions, protocol): an
    MTA makes the same offer on every connection, so each is worked out once."""

    def __post_init__(self) -> None:
        unknown = self.events - set(STEP_FLAGS)
        if unknown:
            raise ValueError(f"not SMTP steps: {sorted(c.__name__ for c in unknown)}")
        if not self.no_reply <= self.events:
            raise ValueError("no_reply must be a subset of events")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of option negotiation, as both sides will apply it."""

    version: int
    actions: ActionFlag
    protocol: ProtocolFlag
    macros: tuple[tuple[MacroStage, tuple[str, ...]], ...]

    def skips(self, command: type[Command]) -> bool:
        """The MTA will not send this step."""
        flags = STEP_FLAGS.get(command)
        return flags is not None and bool(flags[0]) and bool(self.protocol & flags[0])

    def expects_reply(self, command: type[Command]) -> bool:
        """The MTA waits for an answer to this command."""
        if command in NEVER_ANSWERED:
            return False
        flags = STEP_FLAGS.get(command)
        return flags is None or not (flags[1] and self.protocol & flags[1])

    def as_reply(self) -> NegotiateReply:
        """The OPTNEG packet that announces this outcome."""
        return NegotiateReply(self.version, int(self.actions), int(self.protocol), self.macros)


def negotiate(offer: Negotiate, options: MilterOptions) -> Negotiated:
    """Choose version, actions, steps and macros for an MTA's offer (rule 1)."""
    if offer.version < MIN_VERSION:
        raise RemoteProtocolError(f"OPTNEG: MTA protocol version {offer.version} is below 2")
    offered_actions = offer.actions or V1_ACTIONS
    offered = ProtocolFlag(offer.protocol or V1_PROTOCOL)
    missing = options.actions & ~offered_actions
    if missing:
        raise RemoteProtocolError(
            f"OPTNEG: MTA does not offer the actions listgate needs ({ActionFlag(missing)!r})"
        )
    protocol = ProtocolFlag.NONE
    for step, (skip_flag, silent_flag) in STEP_FLAGS.items():
        if step not in options.events:
            protocol |= skip_flag & offered
        elif step in options.no_reply:
            protocol |= silent_flag & offered
    protocol |= options.capabilities & offered
    actions = ActionFlag(options.actions)
    macros: tuple[tuple[MacroStage, tuple[str, ...]], ...] = ()
    if options.macros and offered_actions & ActionFlag.SETSYMLIST:
        actions |= ActionFlag.SETSYMLIST
        macros = tuple(sorted(options.macros.items()))
    return Negotiated(min(offer.version, MAX_VERSION), actions, protocol, macros)


# What ``next_event`` does with each command, once negotiated (see ``_Agreement``).
_ASK = 0  # the application sees it and owes the final reply
_TELL = 1  # the application sees it; no reply (never answered, or SMFIP_NR_*)
_TELL_CONTINUE = 2  # the application sees it; CONTINUE is sent for it here
_CONTINUE_ONLY = 3  # not wanted: CONTINUE is sent here; the application never sees it
_IGNORE = 4  # not wanted and not answered


@dataclass(frozen=True, slots=True)
class _Agreement:
    """One negotiation outcome and everything derived from it for the hot path."""

    negotiated: Negotiated
    reply: bytes
    """The encoded OPTNEG reply."""
    handling: dict[int, int]
    """Command byte → one of the ``_ASK``... values, for every step command."""


def _agree(offer: Negotiate, options: MilterOptions) -> _Agreement:
    """Negotiate (rule 1) and precompute what each command means for this outcome."""
    negotiated = negotiate(offer, options)
    handling: dict[int, int] = {}
    for cls in STEP_FLAGS:
        expects = negotiated.expects_reply(cls)
        if cls in options.events:
            if cls in options.no_reply:
                how = _TELL_CONTINUE if expects else _TELL
            else:
                how = _ASK if expects else _TELL
        else:
            how = _CONTINUE_ONLY if expects else _IGNORE
        handling[cls.ident[0]] = how
    return _Agreement(negotiated, encode(negotiated.as_reply()), handling)


def _bare(name: str) -> str:
    return name[1:-1] if len(name) > 2 and name[0] == "{" and name[-1] == "}" else name


_STAGES = len(MacroStage)
_STAGE_BY_CODE: dict[int, int] = {code[0]: int(stage) for code, stage in STAGE_OF_COMMAND.items()}
_ENVRCPT = int(MacroStage.ENVRCPT)
_ENVFROM = int(MacroStage.ENVFROM)
_CODE_MACRO = Macro.ident[0]
_CODE_OPTNEG = Negotiate.ident[0]
_CODE_MAIL = EnvelopeFrom.ident[0]
_CODE_RCPT = EnvelopeRecipient.ident[0]
_CODE_EOM = EndOfMessage.ident[0]
_CODE_ABORT = Abort.ident[0]
_CODE_QUIT_NC = QuitNoClose.ident[0]
_CODE_QUIT = Quit.ident[0]
_COMMAND_BY_CODE: dict[int, type[Command]] = {k[0]: v for k, v in COMMANDS.items()}

_StageMacros = dict[str, str] | bytes | None
"""One stage's macros: parsed, still the raw MACRO data (parsed when first read), or
none."""


_PROBES: dict[str, tuple[bytes, ...]] = {}


def _probes(key: str) -> tuple[bytes, ...]:
    """How macro *key* can appear in raw MACRO data: as the first name (right after
    the command code) or after a NUL, bare or braced, always followed by a NUL."""
    probes = _PROBES.get(key)
    if probes is None:
        raw = key.encode("utf-8", "surrogateescape")
        bare, braced = raw + b"\0", b"{" + raw + b"}\0"
        probes = (b"\0" + bare, b"\0" + braced, bare, braced)
        if len(_PROBES) < 256:  # the application asks for a handful of names
            _PROBES[key] = probes
    return probes


def _may_hold(raw: bytes, probes: tuple[bytes, ...]) -> bool:
    """Whether raw MACRO data may define the name *probes* were made for (a cheap
    search of the bytes; a false positive only costs a parse)."""
    bare, braced = probes[2], probes[3]
    return (
        probes[0] in raw
        or probes[1] in raw
        or raw[1 : 1 + len(bare)] == bare  # the first name, right after the command code
        or raw[1 : 1 + len(braced)] == braced
    )


def _parse_stage(raw: bytes) -> dict[str, str]:
    it = iter(Macro.pairs(raw))
    return {_bare(k): v for k, v in zip(it, it, strict=True)}


class MilterConnection(Outbox):
    """One milter conversation, seen from the milter (server) side. Replies and automatic
    answers wait in the outbox: ``data_to_send`` (rule 7)."""

    __slots__ = (
        "_awaiting",
        "_closed",
        "_decoder",
        "_handling",
        "_in_message",
        "_macros",
        "_negotiated",
        "_options",
    )

    def __init__(self, options: MilterOptions | None = None) -> None:
        super().__init__()
        self._options = options or _DEFAULT_OPTIONS
        self._decoder = command_decoder(self._options.max_packet_size)
        self._negotiated: Negotiated | None = None
        self._handling: dict[int, int] = {}
        self._awaiting: type[Command] | None = None
        self._in_message = False
        self._closed = False
        self._macros: list[_StageMacros] = [None] * _STAGES

    # ------------------------------------------------------------------ inspection

    @property
    def negotiated(self) -> Negotiated | None:
        """The negotiation outcome, once OPTNEG was answered."""
        return self._negotiated

    @property
    def awaiting_reply(self) -> type[Command] | None:
        """The command that is owed a final reply, if any."""
        return self._awaiting

    @property
    def closed(self) -> bool:
        """QUIT was received: the conversation is over."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (for back-pressure)."""
        return self._decoder.buffered

    def macro(self, name: str) -> str | None:
        """The newest value of macro *name* (``i`` and ``{i}`` are the same name)."""
        key = _bare(name)
        probes: tuple[bytes, ...] | None = None
        macros = self._macros
        for index in range(_STAGES - 1, -1, -1):
            stage = macros[index]
            if stage is None:
                continue
            if type(stage) is bytes:
                if probes is None:
                    probes = _probes(key)
                if not _may_hold(stage, probes):
                    continue  # cannot hold the name: leave it unparsed
                stage = macros[index] = _parse_stage(stage)
            assert isinstance(stage, dict)
            value = stage.get(key)
            if value is not None:
                return value
        return None

    def macros(self, stage: MacroStage) -> Mapping[str, str]:
        """The macros last received for *stage* (names without braces)."""
        found = self._macros[stage]
        if found is None:
            return {}
        if type(found) is bytes:
            found = self._macros[stage] = _parse_stage(found)
        assert isinstance(found, dict)
        return found

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the MTA."""
        self._decoder.feed(data)

    def next_event(self) -> Command | Signal:
        """The next command the application must see, ``NEED_DATA`` or ``PAUSED``.

        Raises ``RemoteProtocolError`` when the MTA broke the protocol.
        """
        decoder = self._decoder
        while True:
            if self._awaiting is not None:
                return PAUSED
            if self._closed:
                return NEED_DATA
            packet = decoder.next_packet()
            if packet is None:
                return NEED_DATA
            code, payload = packet
            if code == _CODE_MACRO:
                self._store_macros(payload)
                continue
            msg = _COMMAND_BY_CODE[code].unpack(payload)
            how = self._handling.get(code)
            if how is None:  # not a step: OPTNEG or a command that is never answered
                if self._negotiated is None:
                    if code != _CODE_OPTNEG:
                        raise RemoteProtocolError(f"expected OPTNEG first, got {msg.name}")
                    assert isinstance(msg, Negotiate)
                    self._negotiate(msg)
                    continue
                if code == _CODE_OPTNEG:
                    raise RemoteProtocolError("OPTNEG repeated after negotiation")
                self._reset(code)
                return msg
            if code == _CODE_MAIL:
                self._in_message = True
            elif code == _CODE_RCPT:
                if not self._in_message and EnvelopeFrom in self._options.events:
                    raise RemoteProtocolError("RCPT outside a transaction (no MAIL before it)")
            elif code == _CODE_EOM:
                self._in_message = False
            if how == _ASK:
                self._awaiting = type(msg)
                return msg
            if how == _TELL:
                return msg
            if how == _TELL_CONTINUE:
                self._outbox += _CONTINUE
                return msg
            if how == _CONTINUE_ONLY:
                self._outbox += _CONTINUE

    def _negotiate(self, offer: Negotiate) -> None:
        key = (offer.version, offer.actions, offer.protocol)
        agreements = self._options.agreements
        agreement = agreements.get(key)
        if agreement is None:
            agreement = _agree(offer, self._options)
            if len(agreements) < 64:  # bounded: an MTA makes one or two offers
                agreements[key] = agreement
        self._negotiated = agreement.negotiated
        self._handling = agreement.handling
        self._outbox += agreement.reply

    def _store_macros(self, payload: bytes) -> None:
        Macro.check(payload)
        if self._negotiated is None:
            raise RemoteProtocolError("expected OPTNEG first, got MACRO")
        stage = _STAGE_BY_CODE.get(payload[0])
        if stage is None:
            return  # macros for L, B, U: dropped, as libmilter does
        macros = self._macros
        if stage <= _ENVRCPT:
            for later in range(stage + 1, _STAGES):
                macros[later] = None
        macros[stage] = payload if len(payload) > 1 else None

    def _reset(self, code: int) -> None:
        if code == _CODE_ABORT:
            self._in_message = False
            macros = self._macros
            for stage in range(_ENVFROM, _STAGES):
                macros[stage] = None
        elif code == _CODE_QUIT_NC:
            self._in_message = False
            self._macros = [None] * _STAGES
        elif code == _CODE_QUIT:
            self._closed = True

    # ------------------------------------------------------------------ sending

    def send(self, reply: Reply) -> None:
        """Queue *reply* to the command that is owed one (rule 2)."""
        cmd = self._awaiting
        if cmd is None:
            raise LocalProtocolError(f"{reply.name}: no command is waiting for a reply")
        rcls = type(reply)
        negotiated = self._negotiated
        assert negotiated is not None
        if rcls in FINAL_REPLIES_FOR[cmd]:
            if rcls.ident == b"s" and not negotiated.protocol & ProtocolFlag.SKIP:
                raise LocalProtocolError("SKIP: SMFIP_SKIP was not negotiated")
            self._awaiting = None
            if cmd is EnvelopeFrom and rcls is not Continue:
                self._in_message = False  # rejected MAIL ends the transaction
        elif rcls is Progress:
            if cmd not in PROGRESS_ALLOWED:
                raise LocalProtocolError(f"PROGRESS is only sent at EOM, not at {cmd.name}")
        elif rcls in EOM_MODIFICATIONS:
            if cmd is not EndOfMessage:
                raise LocalProtocolError(f"{reply.name} is only allowed at EOM")
            if not negotiated.actions & EOM_MODIFICATIONS[rcls]:
                raise LocalProtocolError(f"{reply.name}: action was not negotiated")
        else:
            raise LocalProtocolError(f"{reply.name} is not a legal reply to {cmd.name}")
        self._outbox += encode(reply)


_DEFAULT_OPTIONS = MilterOptions()
