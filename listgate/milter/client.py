"""The MTA side of a milter conversation, as a sans-IO state machine.

listgate uses it in its tests, in ``listgate check --via`` and in the benchmarks' load
generator; it behaves like Postfix: it offers a version, actions and steps, honours the
milter's NO* and NR* answers, and waits for exactly one final reply per command that
expects one.

Rules:
1. ``start()`` queues OPTNEG; nothing else may be sent until the reply arrived.
2. ``send`` refuses a command while a reply is owed, a step the milter asked to skip,
   and anything after QUIT (``LocalProtocolError``). Use ``negotiated.skips()`` first.
3. The milter's OPTNEG reply must stay within the offer (version, actions, steps), as
   Sendmail requires; otherwise ``RemoteProtocolError``.
4. A reply that nobody asked for, a final reply that is illegal for the command it
   answers, or a modification outside EOM or without its action flag is a
   ``RemoteProtocolError``. PROGRESS is accepted at any step (Postfix does the same).
"""

from __future__ import annotations

from listgate.milter.codec import encode, reply_decoder
from listgate.milter.connection import NEED_DATA, Negotiated, Signal
from listgate.milter.constants import (
    DEFAULT_MAX_PACKET_SIZE,
    MAX_VERSION,
    MIN_VERSION,
    V1_ACTIONS,
    V1_PROTOCOL,
    ActionFlag,
    ProtocolFlag,
)
from listgate.milter.errors import LocalProtocolError, RemoteProtocolError
from listgate.milter.messages import (
    Command,
    EndOfMessage,
    Negotiate,
    NegotiateReply,
    Progress,
    Quit,
    Reply,
)
from listgate.milter.tables import EOM_MODIFICATIONS, FINAL_REPLIES_FOR, NEVER_ANSWERED

__all__ = ["POSTFIX_OFFER", "MtaConnection"]

POSTFIX_OFFER = Negotiate(MAX_VERSION, 0x1FF, 0x1FFFFF)
"""What Postfix 3.x (milter_protocol = 6) and Debian's miltertest offer."""


class MtaConnection:
    """One milter conversation, seen from the MTA (client) side."""

    __slots__ = ("_awaiting", "_decoder", "_negotiated", "_offer", "_outbox", "_quit")

    def __init__(
        self, offer: Negotiate = POSTFIX_OFFER, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    ) -> None:
        if not MIN_VERSION <= offer.version <= MAX_VERSION:
            raise LocalProtocolError(f"cannot offer protocol version {offer.version}")
        self._offer = offer
        self._decoder = reply_decoder(max_packet_size)
        self._negotiated: Negotiated | None = None
        self._awaiting: type[Command] | None = None
        self._outbox = bytearray()
        self._quit = False

    @property
    def negotiated(self) -> Negotiated | None:
        """The milter's choices, once its OPTNEG reply arrived."""
        return self._negotiated

    @property
    def awaiting_reply(self) -> type[Command] | None:
        """The command whose final reply has not arrived yet."""
        return self._awaiting

    def start(self) -> None:
        """Queue the OPTNEG offer (rule 1)."""
        if self._negotiated is not None or self._awaiting is not None:
            raise LocalProtocolError("OPTNEG was already sent")
        self._awaiting = Negotiate
        self._outbox += encode(self._offer)

    def send(self, command: Command) -> bool:
        """Queue *command*; return whether the milter will answer it (rule 2)."""
        cls = type(command)
        if self._quit:
            raise LocalProtocolError(f"{command.name} after QUIT")
        if self._awaiting is not None:
            raise LocalProtocolError(
                f"{command.name} while the reply to {self._awaiting.name} is outstanding"
            )
        negotiated = self._negotiated
        if negotiated is None or cls is Negotiate:
            raise LocalProtocolError(f"{command.name} before option negotiation completed")
        if negotiated.skips(cls):
            raise LocalProtocolError(f"{command.name}: the milter asked to skip this step")
        if cls is Quit:
            self._quit = True
        expects = cls not in NEVER_ANSWERED and negotiated.expects_reply(cls)
        if expects:
            self._awaiting = cls
        self._outbox += encode(command)
        return expects

    def data_to_send(self) -> bytes:
        """Bytes to write to the milter."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the milter."""
        self._decoder.feed(data)

    def next_event(self) -> Reply | Signal:
        """The next reply from the milter, or ``NEED_DATA`` (rules 3 and 4)."""
        msg = self._decoder.next_message()
        if msg is None:
            return NEED_DATA
        assert isinstance(msg, Reply)
        cmd = self._awaiting
        if cmd is None:
            raise RemoteProtocolError(f"unsolicited {msg.name} from the milter")
        if cmd is Negotiate:
            if not isinstance(msg, NegotiateReply):
                raise RemoteProtocolError(f"{msg.name} in answer to OPTNEG")
            self._negotiated = self._check_negotiation(msg)
            self._awaiting = None
            return msg
        rcls = type(msg)
        if rcls in FINAL_REPLIES_FOR[cmd]:
            if rcls.ident == b"s" and not self._negotiated_protocol() & ProtocolFlag.SKIP:
                raise RemoteProtocolError("SKIP although SMFIP_SKIP was not negotiated")
            self._awaiting = None
        elif rcls is Progress:
            pass
        elif rcls in EOM_MODIFICATIONS:
            if cmd is not EndOfMessage:
                raise RemoteProtocolError(f"{msg.name} in answer to {cmd.name} (EOM only)")
            negotiated = self._negotiated
            assert negotiated is not None
            if not negotiated.actions & EOM_MODIFICATIONS[rcls]:
                raise RemoteProtocolError(f"{msg.name} without its action flag")
        else:
            raise RemoteProtocolError(f"{msg.name} is not a legal answer to {cmd.name}")
        return msg

    def _negotiated_protocol(self) -> ProtocolFlag:
        return self._negotiated.protocol if self._negotiated else ProtocolFlag.NONE

    def _check_negotiation(self, reply: NegotiateReply) -> Negotiated:
        offer = self._offer
        offered_actions = offer.actions or V1_ACTIONS
        offered_protocol = offer.protocol or V1_PROTOCOL
        if not MIN_VERSION <= reply.version <= offer.version:
            raise RemoteProtocolError(
                f"milter chose version {reply.version}; offered {MIN_VERSION}..{offer.version}"
            )
        if reply.actions & ~offered_actions:
            raise RemoteProtocolError(
                f"milter wants actions 0x{reply.actions:x} beyond the offer 0x{offered_actions:x}"
            )
        if reply.protocol & ~offered_protocol:
            raise RemoteProtocolError(
                f"milter wants steps 0x{reply.protocol:x} beyond the offer 0x{offered_protocol:x}"
            )
        if reply.macros and not reply.actions & ActionFlag.SETSYMLIST:
            raise RemoteProtocolError("macro lists without SMFIF_SETSYMLIST")
        return Negotiated(
            reply.version, ActionFlag(reply.actions), ProtocolFlag(reply.protocol), reply.macros
        )
