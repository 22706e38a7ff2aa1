"""A sans-IO implementation of the Postfix policy delegation protocol.

Bytes go in, frozen ``PolicyRequest``s come out, and each gets exactly one
``action=...`` reply; no sockets, no asyncio. See ``codec`` for the wire format, the
limits and the invariants.
"""

from listgate.policyd.codec import (
    DEFAULT_MAX_ATTRIBUTES,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_REQUEST_BYTES,
    NEED_DATA,
    PolicyConnection,
    PolicyError,
    PolicyLimits,
    PolicyProtocolError,
    PolicyRequest,
    PolicyStateError,
    ReplyReader,
    encode_request,
    format_action,
)

__all__ = [
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_REQUEST_BYTES",
    "NEED_DATA",
    "PolicyConnection",
    "PolicyError",
    "PolicyLimits",
    "PolicyProtocolError",
    "PolicyRequest",
    "PolicyStateError",
    "ReplyReader",
    "encode_request",
    "format_action",
]
