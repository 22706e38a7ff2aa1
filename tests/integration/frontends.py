"""Both front ends behind one interface, for the tests every front end must pass on the
one connection loop (tests/integration/test_connection_loop.py).

A ``FrontEnd`` knows its configuration section, its service, the replies a member and an
outsider get, the garbage that breaks it and how its protocol-error WARNING reads. A
``Peer`` is a blocking client over one loopback socket that speaks the front end's
protocol the way its MTA does: ``hello`` (the milter's negotiation; nothing for policy),
``ask`` (one RCPT, one reply), ``wire`` (the bytes of several RCPTs, for pipelining).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from listgate.app import build_milter_service, build_policy_service
from listgate.config import Config, parse_config
from listgate.decision.engine import ListFacts
from listgate.decision.facts import PENDING, LookupNow
from listgate.decision.model import PostingRequest
from listgate.facts.static import StaticBackend
from listgate.milter import (
    POSTFIX_OFFER,
    Abort,
    Continue,
    EnvelopeFrom,
    EnvelopeRecipient,
    NegotiateReply,
    Reply,
    ReplyCode,
    encode,
    reply_decoder,
)
from listgate.policyd import NEED_DATA, ReplyReader, encode_request, format_action
from tests.integration.conftest import BuildService, raw_connect, wait_closed_by_peer

__all__ = [
    "FRONT_ENDS",
    "LIST",
    "MEMBER",
    "MILTER",
    "OUTSIDER",
    "POLICY",
    "POSTERS",
    "FrontEnd",
    "Peer",
    "SlowBackend",
    "rcpt",
]

LIST = "list@example.org"
MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"
POSTERS = {LIST: [MEMBER]}
REJECT_TEXT = f"<{OUTSIDER}> is not allowed to post to <{LIST}>"


class Peer:
    """One blocking connection to a front end (the MTA's side)."""

    def __init__(self, to: int | socket.socket | None, timeout: float = 5.0) -> None:
        if isinstance(to, socket.socket):
            self.sock = to
        else:
            self.sock = raw_connect(to, timeout) if to is not None else socket.socket()
        """The connection: to a port on 127.0.0.1, a connected socket, or (None) an
        unconnected socket (only ``wire`` works then)."""

    @property
    def opening(self) -> bytes:
        """What ``hello`` sends."""
        return b""

    def hello(self) -> None:
        """What the MTA does first on a new connection."""

    def wire(self, rcpts: Sequence[tuple[str, str]]) -> bytes:
        """The bytes that ask about each (sender, recipient), in order."""
        raise NotImplementedError

    def begin(self, sender: str, recipient: str) -> bytes:
        """Send the start of one RCPT (not enough to answer it); the rest, for later."""
        raise NotImplementedError

    def replies(self, count: int) -> list[object]:
        """Read *count* replies."""
        out: list[object] = []
        while len(out) < count:
            reply = self._next_reply()
            if reply is None:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed by the server after {len(out)} replies")
                self._feed(data)
                continue
            out.append(reply)
        return out

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _next_reply(self) -> object | None:
        raise NotImplementedError

    def decode(self, data: bytes) -> list[object]:
        """Every reply in *data*, which must hold whole replies and nothing else."""
        raise NotImplementedError

    def ask(self, sender: str, recipient: str) -> object:
        """One RCPT and its reply."""
        self.send(self.wire([(sender, recipient)]))
        [reply] = self.replies(1)
        return reply

    def send(self, data: bytes) -> None:
        """Write *data*."""
        self.sock.sendall(data)

    def closed_by_peer(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; what it sent meanwhile. Fails on timeout."""
        return wait_closed_by_peer(self.sock, timeout)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MilterPeer(Peer):
    """A Postfix-like milter client: OPTNEG, then MAIL (no reply) and RCPT per
    transaction, ABORT between transactions."""

    def __init__(self, to: int | socket.socket | None, timeout: float = 5.0) -> None:
        super().__init__(to, timeout)
        self.decoder = reply_decoder()
        self.in_transaction = False

    @property
    def opening(self) -> bytes:
        return encode(POSTFIX_OFFER)

    def hello(self) -> None:
        self.send(self.opening)
        [reply] = self.replies(1)
        assert isinstance(reply, NegotiateReply)

    def wire(self, rcpts: Sequence[tuple[str, str]]) -> bytes:
        out = b""
        for sender, recipient in rcpts:
            if self.in_transaction:
                out += encode(Abort())
            out += encode(EnvelopeFrom(f"<{sender}>")) + encode(EnvelopeRecipient(f"<{recipient}>"))
            self.in_transaction = True
        return out

    def begin(self, sender: str, recipient: str) -> bytes:
        rest = encode(EnvelopeRecipient(f"<{recipient}>"))
        data = self.wire([(sender, recipient)])
        self.send(data[: -len(rest)])  # up to MAIL, which gets no reply
        return rest

    def _feed(self, data: bytes) -> None:
        self.decoder.feed(data)

    def _next_reply(self) -> object | None:
        msg = self.decoder.next_message()
        assert msg is None or isinstance(msg, Reply)
        return msg

    def decode(self, data: bytes) -> list[object]:
        decoder = reply_decoder()
        decoder.feed(data)
        out: list[object] = []
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
        assert decoder.buffered == 0, "a partial reply packet"
        return out


class PolicyPeer(Peer):
    """A Postfix-like policy client: one request per RCPT on a connection kept open."""

    def __init__(self, to: int | socket.socket | None, timeout: float = 5.0) -> None:
        super().__init__(to, timeout)
        self.reader = ReplyReader()

    def wire(self, rcpts: Sequence[tuple[str, str]]) -> bytes:
        return b"".join(encode_request(rcpt(sender, recipient)) for sender, recipient in rcpts)

    def begin(self, sender: str, recipient: str) -> bytes:
        data = self.wire([(sender, recipient)])
        self.send(data[: len(data) // 2])
        return data[len(data) // 2 :]

    def _feed(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def _next_reply(self) -> object | None:
        reply = self.reader.next_reply()
        if reply is NEED_DATA:
            return None
        assert isinstance(reply, dict)
        assert set(reply) == {"action"}
        return reply["action"]

    def decode(self, data: bytes) -> list[object]:
        actions: list[object] = []
        for part in data.split(b"\n\n")[:-1]:
            assert part.startswith(b"action=")
            actions.append(part.removeprefix(b"action=").decode())
        assert b"".join(format_action(str(a)) for a in actions) == data, "not exact replies"
        return actions


def rcpt(sender: str, recipient: str, **extra: str) -> dict[str, str]:
    """The attributes of a Postfix RCPT-state request."""
    return {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": "127.0.0.1", "queue_id": "", "sender": sender,
        "recipient": recipient, "instance": "abc.1", **extra,
    }


def _milter_config(own: Mapping[str, Any], milter: Mapping[str, Any]) -> Config:
    return parse_config({
        "milter": {"listen": ["inet:127.0.0.1:0"], **milter, **own},
        "static": {"posters": POSTERS},
    }, "<test>")


def _policy_config(own: Mapping[str, Any], milter: Mapping[str, Any]) -> Config:
    return parse_config({
        "milter": {"listen": ["inet:127.0.0.1:0"], **milter},
        "policy": {"listen": ["inet:127.0.0.1:0"], **own},
        "static": {"posters": POSTERS},
    }, "<test>")


@dataclass(frozen=True)
class FrontEnd:
    """One front end, as the common tests drive it."""

    name: str
    logger: str
    """The logger of its connection lines."""
    broken: str
    """What its protocol-error WARNING says, up to the peer's port."""
    accepted: object
    """The reply to a member posting to the list."""
    rejected: object
    """The reply to an outsider posting to the list."""
    garbage: Mapping[str, bytes]
    """Bytes that break the protocol at once."""
    garbage_unanswered: bool
    """Nothing at all comes back to garbage (policy; the milter may answer OPTNEG first)."""
    idle_tail: bytes
    """Partial data that must not extend ``idle_timeout``."""
    smallest_buffer: Mapping[str, Any]
    """The front end's settings for the least it reads ahead of a decision."""
    peer: Callable[[int | None], Peer]
    """A client of the front end (on a port, or unconnected for ``wire``)."""
    build: BuildService
    make_config: Callable[[Mapping[str, Any], Mapping[str, Any]], Config] = field(repr=False)

    def config(self, own: Mapping[str, Any] | None = None, **milter: Any) -> Config:
        """A config with the front end on a free port, its section's settings *own*, and
        ``[milter]`` settings *milter* (``shutdown_timeout`` serves both)."""
        return self.make_config(own or {}, milter)


OPTNEG_PACKET = encode(POSTFIX_OFFER)

MILTER = FrontEnd(
    name="milter",
    logger="listgate.milter",
    broken="closing connection from 127.0.0.1:",
    accepted=Continue(),
    rejected=ReplyCode(550, "5.7.1", REJECT_TEXT),
    garbage={
        "http-get": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "tls-client-hello": bytes.fromhex("1603010200010001fc0303") + os.urandom(32),
        "rdp": bytes.fromhex("0300002f2ae00000000000436f6f6b69653a"),
        "length-zero": b"\x00\x00\x00\x00O",
        "length-ffffffff": b"\xff\xff\xff\xffO",
        "above-max": (1024 * 1024 + 1).to_bytes(4, "big") + b"L",
        "unknown-command": (1).to_bytes(4, "big") + b"Z",
        "missing-nul": OPTNEG_PACKET + (6).to_bytes(4, "big") + b"Hhello",
        "wrong-field-count": OPTNEG_PACKET + (5).to_bytes(4, "big") + b"Ha\0b\0",
        "macro-unknown-stage": OPTNEG_PACKET + (3).to_bytes(4, "big") + b"DZ\0",
        "rcpt-before-optneg": (4).to_bytes(4, "big") + b"R<x\0",
    },
    garbage_unanswered=False,
    idle_tail=b"",  # a partial packet has its own limit, command_timeout
    smallest_buffer={"max_packet_size": 65536},
    peer=MilterPeer,
    build=build_milter_service,
    make_config=_milter_config,
)

POLICY = FrontEnd(
    name="policy",
    logger="listgate.policy",
    broken="closing policy connection from 127.0.0.1:",
    accepted="DUNNO",
    rejected=f"550 5.7.1 {REJECT_TEXT}",
    garbage={
        "no-equals": b"this is not a policy request\n",
        "empty-request": b"\n",
        "empty-name": b"=value\n\n",
        "oversized-line": b"x" * 9000,
        "http": b"GET / HTTP/1.0\r\n\r\n",
    },
    garbage_unanswered=True,
    idle_tail=b"request=smtpd_access_policy\n",
    smallest_buffer={"max_line_length": 512},
    peer=PolicyPeer,
    build=build_policy_service,
    make_config=_policy_config,
)

FRONT_ENDS = (MILTER, POLICY)


class SlowBackend:
    """A backend whose answers need I/O: each lookup waits until released."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.started: asyncio.Event | None = None

    def lookup_now(self, request: PostingRequest) -> LookupNow:
        return PENDING

    async def lookup(self, request: PostingRequest) -> ListFacts:
        assert self.release is not None
        assert self.started is not None
        self.started.set()
        await self.release.wait()
        facts = StaticBackend(POSTERS).lookup_now(request)
        assert isinstance(facts, ListFacts)
        return facts

    async def aclose(self) -> None:
        return None

    def describe(self) -> str:
        return "slow test backend"

    def known_lists(self) -> tuple[str, ...]:
        return (LIST,)
