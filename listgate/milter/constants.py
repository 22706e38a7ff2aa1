"""Wire constants of the Sendmail milter protocol (versions 2 to 6).

Every value here was checked against libmilter's ``mfdef.h``/``mfapi.h`` and Postfix's
``milter8.c`` (see docs/milter-protocol notes). Invariant: this module is data only.
"""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_REPLY_TEXT",
    "MAX_VERSION",
    "MIN_VERSION",
    "OPTNEG_LEN",
    "STAGE_OF_COMMAND",
    "V1_ACTIONS",
    "V1_PROTOCOL",
    "ActionFlag",
    "MacroStage",
    "ProtocolFlag",
]

MIN_VERSION = 2
"""Oldest protocol version listgate negotiates (libmilter's SMFI_PROT_VERSION_MIN)."""
MAX_VERSION = 6
"""Newest protocol version (SMFI_PROT_VERSION); Postfix and Sendmail 8.14+ speak it."""
OPTNEG_LEN = 12
"""Bytes of version, actions and protocol words in an OPTNEG packet."""
DEFAULT_MAX_PACKET_SIZE = 1024 * 1024
"""Largest packet (length field) accepted by default. Postfix sends unchunked headers of up
to ``header_size_limit`` (100 KiB), so libmilter's 64 KiB is too small."""
V1_ACTIONS = 0x0F
"""libmilter: an OPTNEG offer of 0 actions means SMFI_V1_ACTS."""
V1_PROTOCOL = 0x3F
"""libmilter: an OPTNEG offer of 0 steps means SMFI_V1_PROT."""
MAX_REPLY_TEXT = 980
"""libmilter's MAXREPLYLEN: the longest SMTP reply text in a REPLYCODE packet."""


class ActionFlag(enum.IntFlag):
    """SMFIF_*: what the milter may do at end of message (OPTNEG ``actions`` word)."""

    NONE = 0x000
    ADDHDRS = 0x001
    CHGBODY = 0x002
    ADDRCPT = 0x004
    DELRCPT = 0x008
    CHGHDRS = 0x010
    QUARANTINE = 0x020
    CHGFROM = 0x040
    ADDRCPT_PAR = 0x080
    SETSYMLIST = 0x100


class ProtocolFlag(enum.IntFlag):
    """SMFIP_*: steps the MTA skips, steps it expects no reply to, and capabilities."""

    NONE = 0
    NOCONNECT = 0x00000001
    NOHELO = 0x00000002
    NOMAIL = 0x00000004
    NORCPT = 0x00000008
    NOBODY = 0x00000010
    NOHDRS = 0x00000020
    NOEOH = 0x00000040
    NR_HDR = 0x00000080
    NOUNKNOWN = 0x00000100
    NODATA = 0x00000200
    SKIP = 0x00000400
    RCPT_REJ = 0x00000800
    NR_CONN = 0x00001000
    NR_HELO = 0x00002000
    NR_MAIL = 0x00004000
    NR_RCPT = 0x00008000
    NR_DATA = 0x00010000
    NR_UNKN = 0x00020000
    NR_EOH = 0x00040000
    NR_BODY = 0x00080000
    HDR_LEADSPC = 0x00100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


class MacroStage(enum.IntEnum):
    """SMFIM_*: the stages a SETSYMLIST macro request names. The order is the wire's,
    not SMTP's (EOM = 5 comes before EOH = 6)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


STAGE_OF_COMMAND: dict[bytes, MacroStage] = {
    b"C": MacroStage.CONNECT,
    b"H": MacroStage.HELO,
    b"M": MacroStage.ENVFROM,
    b"R": MacroStage.ENVRCPT,
    b"T": MacroStage.DATA,
    b"E": MacroStage.EOM,
    b"N": MacroStage.EOH,
}
"""Command code of a SMFIC_MACRO packet → the macro stage libmilter stores it under.
Postfix also sends macros for ``L``, ``B`` and ``U``; libmilter drops those, and so do we."""
