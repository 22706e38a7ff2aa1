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
"""

from __future__ import annotations

import enum
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

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "MilterConnection",
    "MilterOptions",
    "Negotiated",
    "Signal",
    "negotiate",
]


class Signal(enum.Enum):
    """What ``next_event`` returns when it has no event."""

    NEED_DATA = "need data"
    """Feed more bytes with ``receive_data``."""
    PAUSED = "paused"
    """A reply is owed: ``send`` it first."""


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED

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


def _bare(name: str) -> str:
    return name[1:-1] if len(name) > 2 and name[0] == "{" and name[-1] == "}" else name


class MilterConnection:
    """One milter conversation, seen from the milter (server) side."""

    __slots__ = (
        "_awaiting",
        "_closed",
        "_decoder",
        "_events",
        "_in_message",
        "_macros",
        "_negotiated",
        "_no_reply",
        "_options",
        "_outbox",
        "_silent",
    )

    def __init__(self, options: MilterOptions | None = None) -> None:
        self._options = options or MilterOptions()
        self._decoder = command_decoder(self._options.max_packet_size)
        self._events = self._options.events
        self._no_reply = self._options.no_reply
        self._negotiated: Negotiated | None = None
        self._silent: frozenset[type[Command]] = frozenset()
        self._awaiting: type[Command] | None = None
        self._in_message = False
        self._closed = False
        self._macros: list[dict[str, str]] = [{} for _ in MacroStage]
        self._outbox = bytearray()

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
        for stage in reversed(self._macros):
            value = stage.get(key)
            if value is not None:
                return value
        return None

    def macros(self, stage: MacroStage) -> Mapping[str, str]:
        """The macros last received for *stage* (names without braces)."""
        return self._macros[stage]

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the MTA."""
        self._decoder.feed(data)

    def next_event(self) -> Command | Signal:
        """The next command the application must see, ``NEED_DATA`` or ``PAUSED``.

        Raises ``RemoteProtocolError`` when the MTA broke the protocol.
        """
        while True:
            if self._awaiting is not None:
                return PAUSED
            if self._closed:
                return NEED_DATA
            msg = self._decoder.next_message()
            if msg is None:
                return NEED_DATA
            assert isinstance(msg, Command)
            cls = type(msg)
            if self._negotiated is None:
                if cls is not Negotiate:
                    raise RemoteProtocolError(f"expected OPTNEG first, got {msg.name}")
                assert isinstance(msg, Negotiate)
                self._negotiated = negotiate(msg, self._options)
                self._silent = frozenset(
                    c for c in STEP_FLAGS if not self._negotiated.expects_reply(c)
                )
                self._outbox += encode(self._negotiated.as_reply())
                continue
            if cls is Macro:
                assert isinstance(msg, Macro)
                self._store_macros(msg)
                continue
            if cls in NEVER_ANSWERED:
                self._reset(msg)
                return msg
            if cls is Negotiate:
                raise RemoteProtocolError("OPTNEG repeated after negotiation")
            self._enter_step(cls)
            expects = cls not in self._silent
            if cls in self._events:
                if cls in self._no_reply:
                    if expects:
                        self._outbox += _CONTINUE
                elif expects:
                    self._awaiting = cls
                return msg
            if expects:
                self._outbox += _CONTINUE

    def _enter_step(self, cls: type[Command]) -> None:
        if cls is EnvelopeFrom:
            self._in_message = True
        elif cls is EnvelopeRecipient:
            if not self._in_message and EnvelopeFrom in self._events:
                raise RemoteProtocolError("RCPT outside a transaction (no MAIL before it)")
        elif cls is EndOfMessage:
            self._in_message = False

    def _store_macros(self, msg: Macro) -> None:
        stage = STAGE_OF_COMMAND.get(msg.stage)
        if stage is None:
            return  # macros for L, B, U: dropped, as libmilter does
        if stage <= MacroStage.ENVRCPT:
            for later in range(stage + 1, len(self._macros)):
                if self._macros[later]:
                    self._macros[later] = {}
        self._macros[stage] = {_bare(k): v for k, v in msg.macros}

    def _reset(self, msg: Command) -> None:
        if isinstance(msg, Abort):
            self._in_message = False
            for stage in range(MacroStage.ENVFROM, len(self._macros)):
                self._macros[stage] = {}
        elif isinstance(msg, QuitNoClose):
            self._in_message = False
            self._macros = [{} for _ in MacroStage]
        elif isinstance(msg, Quit):
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

    def data_to_send(self) -> bytes:
        """Bytes to write to the MTA (replies and automatic answers, in order)."""
        if not self._outbox:
            return b""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out
