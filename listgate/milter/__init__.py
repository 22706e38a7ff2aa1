"""A sans-IO implementation of the Sendmail milter protocol, versions 2 to 6.

Bytes go in, typed frozen messages come out; no sockets, no asyncio. The milter side is
``MilterConnection``, the MTA side ``MtaConnection``; the wire formats are in
``messages``, the framing in ``codec``, the legality rules in ``tables``.
"""

from listgate.milter.client import POSTFIX_OFFER, MtaConnection
from listgate.milter.codec import FrameDecoder, command_decoder, encode, reply_decoder
from listgate.milter.connection import (
    NEED_DATA,
    PAUSED,
    MilterConnection,
    MilterOptions,
    Negotiated,
    Signal,
    negotiate,
)
from listgate.milter.constants import ActionFlag, MacroStage, ProtocolFlag
from listgate.milter.errors import LocalProtocolError, MilterProtocolError, RemoteProtocolError
from listgate.milter.messages import *  # noqa: F403 - the message classes are the API
from listgate.milter.messages import __all__ as _messages_all

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "POSTFIX_OFFER",
    "ActionFlag",
    "FrameDecoder",
    "LocalProtocolError",
    "MacroStage",
    "MilterConnection",
    "MilterOptions",
    "MilterProtocolError",
    "MtaConnection",
    "Negotiated",
    "ProtocolFlag",
    "RemoteProtocolError",
    "Signal",
    "command_decoder",
    "encode",
    "negotiate",
    "reply_decoder",
    *_messages_all,
]
