"""An asyncio milter client (the MTA side), over ``listgate.milter.MtaConnection``.

Used by the tests, by ``listgate check --via`` and by the benchmarks. It behaves like
Postfix: one connection per conversation, OPTNEG first, macros before each step, steps the
milter skipped are not sent, and every command that expects an answer is read to its
final reply. Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from listgate.decision.model import Verdict
from listgate.errors import ListgateError
from listgate.listen import ListenSpec, parse_listen_spec
from listgate.milter import (
    FINAL_REPLIES,
    NEED_DATA,
    POSTFIX_OFFER,
    Abort,
    Accept,
    Command,
    Connect,
    Continue,
    Data,
    Discard,
    EndOfHeaders,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    Macro,
    MtaConnection,
    Negotiate,
    NegotiateReply,
    Quit,
    Reject,
    Reply,
    ReplyCode,
    TempFail,
)

__all__ = ["MilterClient", "ViaReply", "ask_daemon", "verdict_of"]


class MilterClient:
    """One milter conversation with a running milter."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        offer: Negotiate,
        timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = MtaConnection(offer)
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, spec: str | ListenSpec, *, offer: Negotiate = POSTFIX_OFFER, timeout: float = 10.0
    ) -> Self:
        """Open a connection to *spec* (``inet:``, ``inet6:`` or ``unix:``)."""
        where = parse_listen_spec(spec) if isinstance(spec, str) else spec
        if where.family == "unix":
            opening = asyncio.open_unix_connection(where.path)
        else:
            opening = asyncio.open_connection(where.host, where.port)
        reader, writer = await asyncio.wait_for(opening, timeout)
        return cls(reader, writer, offer, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _read_reply(self) -> Reply:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, Reply)
                return event
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise ListgateError("the milter closed the connection")
            self.conn.receive_data(data)

    async def negotiate(self) -> NegotiateReply:
        """Send the offer and return the milter's choices."""
        self.conn.start()
        self._writer.write(self.conn.data_to_send())
        reply = await self._read_reply()
        assert isinstance(reply, NegotiateReply)
        return reply

    def skips(self, command: type[Command]) -> bool:
        """The milter asked not to be sent this step."""
        negotiated = self.conn.negotiated
        return negotiated is not None and negotiated.skips(command)

    async def send(self, command: Command) -> list[Reply]:
        """Send *command*; return its replies (modifications, then the final one), or []
        when it expects none."""
        expects = self.conn.send(command)
        self._writer.write(self.conn.data_to_send())
        if not expects:
            return []
        replies: list[Reply] = []
        while True:
            reply = await self._read_reply()
            replies.append(reply)
            if type(reply) in FINAL_REPLIES:
                return replies

    async def step(
        self, command: Command, macros: Sequence[tuple[str, str]] = ()
    ) -> Reply | None:
        """Send the macros for *command*'s stage, then *command*, as Postfix does; return
        the final reply, or None if the milter skipped the step or gives no reply."""
        self.conn.send(Macro(command.ident, tuple(macros)))
        if self.skips(type(command)):
            self._writer.write(self.conn.data_to_send())
            return None
        replies = await self.send(command)
        return replies[-1] if replies else None

    async def close(self) -> None:
        """Send QUIT if possible and close the socket."""
        if self.conn.negotiated is not None and self.conn.awaiting_reply is None:
            with contextlib.suppress(ListgateError):
                self.conn.send(Quit())
                self._writer.write(self.conn.data_to_send())
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), self.timeout)


def verdict_of(reply: Reply | None) -> Verdict:
    """What a final milter reply means for the recipient."""
    if reply is None or isinstance(reply, (Continue, Accept)):
        return Verdict.ACCEPT
    if isinstance(reply, ReplyCode):
        return Verdict.TEMPFAIL if reply.is_temporary else Verdict.REJECT
    if isinstance(reply, TempFail):
        return Verdict.TEMPFAIL
    if isinstance(reply, (Reject, Discard)):
        return Verdict.REJECT
    raise ListgateError(f"unexpected final reply {reply.name}")


@dataclass(frozen=True, slots=True)
class ViaReply:
    """What a running daemon answered for one RCPT."""

    verdict: Verdict
    smtp_reply: str | None
    packet: str

    def as_dict(self) -> dict[str, object]:
        """For ``--json``."""
        return {"verdict": self.verdict.value, "smtp_reply": self.smtp_reply, "packet": self.packet}


def _smtp_reply(reply: Reply | None) -> str | None:
    if isinstance(reply, ReplyCode):
        return " ".join(str(p) for p in (reply.code, reply.dsn, reply.text) if p)
    if isinstance(reply, Reject):
        return "550 5.7.1 Command rejected"
    if isinstance(reply, TempFail):
        return "451 4.7.1 Service unavailable - try again later"
    return None


async def ask_daemon(
    spec: str,
    sender: str,
    recipient: str,
    *,
    header_from: Sequence[str] = (),
    timeout: float = 10.0,
) -> ViaReply:
    """Ask a running milter about one (sender, recipient) as Postfix would. When the
    daemon also asked for the headers (a list that decides at end of headers), the
    conversation goes on to EOH with ``From:`` *header_from* (default: the envelope
    sender), and the verdict is the one given there."""
    sender_arg = sender if sender.startswith("<") else f"<{sender}>"
    rcpt_arg = recipient if recipient.startswith("<") else f"<{recipient}>"
    client = await MilterClient.connect(spec, timeout=timeout)
    async with client:
        await client.negotiate()
        for command in (Connect("localhost", "4", 25, "127.0.0.1"), Helo("listgate-check")):
            final = await client.step(command)
            if verdict_of(final) is not Verdict.ACCEPT:
                return ViaReply(verdict_of(final), _smtp_reply(final), _name(final))
        final = await client.step(
            EnvelopeFrom(sender_arg), [("{mail_addr}", sender_arg.strip("<>"))]
        )
        if verdict_of(final) is Verdict.ACCEPT:
            final = await client.step(
                EnvelopeRecipient(rcpt_arg), [("{rcpt_addr}", rcpt_arg.strip("<>"))]
            )
        if verdict_of(final) is Verdict.ACCEPT and not client.skips(EndOfHeaders):
            final = await _through_headers(client, header_from or [sender_arg.strip("<>")])
        await client.send(Abort())
        return ViaReply(verdict_of(final), _smtp_reply(final), _name(final))


async def _through_headers(client: MilterClient, froms: Sequence[str]) -> Reply | None:
    """DATA, the From: headers and EOH; the first refusal or EOH's reply."""
    if not client.skips(Data):
        reply = await client.step(Data())
        if verdict_of(reply) is not Verdict.ACCEPT:
            return reply
    if not client.skips(Header):
        for value in froms:
            reply = await client.step(Header("From", value))
            if verdict_of(reply) is not Verdict.ACCEPT:
                return reply
    return await client.step(EndOfHeaders())


def _name(reply: Reply | None) -> str:
    return "none (no-reply step)" if reply is None else reply.name
