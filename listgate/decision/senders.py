"""The senders Mailman judges a post by, from its headers and envelope.

Mailman 3.3.10 (``email/message.py: senders``) reads ``[mailman] sender_headers`` =
``from from_ reply-to sender``: every address in every occurrence of ``From:``, then the
envelope sender, then ``Reply-To:``, then ``Sender:``. Values are RFC 2047-decoded and
unfolded, split with ``email.utils.getaddresses``, lower-cased, and every address that
fails Mailman's validator is dropped.

Invariants:
- Pure: header (name, value) pairs and the envelope sender in, addresses out.
- Never raises on malformed headers: an unparsable value contributes no address.
- ``sender_hints`` only ever produces *other spellings* of an envelope sender (SRS, BATV,
  +tag), which Mailman itself never tries; callers use them to accept, never to reject.
- Mailman's validator is mirrored, not improved: a quoted local part keeps its quotes
  (``"john.doe"@example.com`` is not ``john.doe@example.com`` to Mailman), UTF-8 local
  parts and U-label domains are invalid, and so are single-label domains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import decode_header, make_header
from email.utils import getaddresses

__all__ = ["SENDER_HEADERS", "is_valid_mailman_address", "mailman_senders", "sender_hints"]

SENDER_HEADERS: tuple[str, ...] = ("from", "from_", "reply-to", "sender")
"""Mailman's default ``sender_headers``; ``from_`` is the envelope sender."""

_LOCAL = re.compile(r"[-0-9a-z!#$%&'*+./=?@_`{}~]+\Z")
_LABEL = re.compile(r"[-a-z0-9]+\Z")


def is_valid_mailman_address(address: str) -> bool:
    """Mailman's ``IEmailValidator.is_valid`` for a lower-cased address."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return False
    bare = local[1:-1] if len(local) >= 2 and local[0] == local[-1] == '"' else local
    if not bare or not _LOCAL.match(bare):
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(label and _LABEL.match(label) and not label.startswith("-") for label in labels)


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def mailman_senders(
    headers: Sequence[tuple[str, str]],
    envelope: str,
    order: Sequence[str] = SENDER_HEADERS,
) -> tuple[str, ...]:
    """Every sender Mailman would consider, in its order, without duplicates."""
    found: list[str] = []
    for name in order:
        if name == "from_":
            values = [envelope] if envelope else []
        else:
            values = [_decoded(v) for k, v in headers if k.lower() == name]
        if not values:
            continue
        unfolded = [re.sub(r"\r?\n[ \t]*", " ", v) for v in values]
        for _display, address in getaddresses(unfolded):
            address = address.lower()
            if is_valid_mailman_address(address):
                found.append(address)
    return tuple(dict.fromkeys(found))


_SRS0 = re.compile(r"srs0[=+-][^=]*=[^=]*=([^=]+)=(.+)@[^@]+\Z", re.IGNORECASE)
_SRS1 = re.compile(r"srs1[=+-].*==[^=]*=[^=]*=([^=]+)=(.+)@[^@]+\Z", re.IGNORECASE)
_BATV = re.compile(r"(?:prvs|msprvs\d*)=[^=]+=(.+)@([^@]+)\Z", re.IGNORECASE)
_BTV1 = re.compile(r"btv1==[^=]*==(.+)@([^@]+)\Z", re.IGNORECASE)


def sender_hints(sender: str, verp_delimiter: str = "+") -> tuple[str, ...]:
    """Other spellings of an envelope sender that Mailman itself would not try: the
    original address inside SRS0/SRS1 and BATV (``prvs=``, ``btv1==``) forms, and the
    address without its ``+tag``. For accepting only."""
    if not sender or "@" not in sender:
        return ()
    found: list[str] = []
    m = _SRS0.match(sender) or _SRS1.match(sender)
    if m:
        found.append(f"{m.group(2)}@{m.group(1)}".lower())
    m = _BATV.match(sender) or _BTV1.match(sender)
    if m:
        found.append(f"{m.group(1)}@{m.group(2)}".lower())
    for candidate in list(found) or [sender]:  # never split an SRS/BATV form at its '+'
        local, _, domain = candidate.rpartition("@")
        if verp_delimiter and verp_delimiter in local:
            base = local.split(verp_delimiter, 1)[0]
            if base:
                found.append(f"{base}@{domain}".lower())
    return tuple(dict.fromkeys(a for a in found if a != sender))
