"""Domain values shared by the decision engine, the backends and the front ends.

Invariants:
- Pure: no I/O, no clock, no asyncio. Every value is a frozen dataclass or an enum.
- Addresses are compared in their normalised form (``normalize_address``): surrounding
  whitespace and one pair of angle brackets removed, lower-cased. The null sender is "".
- A ``Decision`` is complete: a front end renders it without consulting anything else.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "Decision",
    "Evidence",
    "PostingRequest",
    "Verdict",
    "normalize_address",
]


class Verdict(enum.Enum):
    """What the MTA is told to do with one recipient."""

    ACCEPT = "accept"
    """Let the recipient through (milter CONTINUE, policy DUNNO)."""
    REJECT = "reject"
    """Refuse permanently (5xx)."""
    TEMPFAIL = "tempfail"
    """Refuse for now (4xx); the sending MTA retries later."""


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


def normalize_address(raw: str) -> str:
    """Return *raw* as listgate compares it: the mailbox an MTA would deliver to, lower-cased.

    Like Postfix's own parsing of a ``MAIL FROM``/``RCPT TO`` path: surrounding whitespace
    and one pair of angle brackets go, an RFC 5321 source route (``@relay:``) goes, a
    quoted local part is unquoted when its content is a plain dot-atom (``"list"@x`` is
    ``list@x``), and a trailing dot on the domain goes. ``"<Boss@Example.ORG>"`` becomes
    ``"boss@example.org"``; ``"<>"`` and ``""`` become ``""`` (the null sender, which is
    never a poster). Anything that cannot be parsed is returned trimmed and lower-cased,
    so it matches no list and no member.
    """
    addr = raw.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if addr.startswith("@") and ":" in addr:  # source route: @a,@b:user@domain
        addr = addr.split(":", 1)[1]
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr.lower()
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_ATOM.match(inner):
            local = inner
    domain = domain.rstrip(".")
    return f"{local}@{domain}".lower()


@dataclass(frozen=True, slots=True, init=False)
class Evidence:
    """What the MTA showed listgate that may prove who sent the message (raw material
    for ``require_authenticated`` lists; turned into an ``Authentication`` by the
    authenticator in ``listgate.auth``). ``__init__`` written out, as ``PostingRequest``'s."""

    helo: str = ""
    """The client's HELO/EHLO name (SPF's HELO identity and %{h})."""
    header_from: tuple[str, ...] = ()
    """The addresses of the From: header, normalised (once the headers are known)."""
    auth_results: tuple[str, ...] = ()
    """Every Authentication-Results: header value, in the order the MTA showed them."""
    message: bytes | None = None
    """The whole message (header fields and body, CRLF), at end of message: for DKIM."""
    more: bool = False
    """The front end will ask again in this transaction with more evidence (the headers,
    or the whole message): a verdict that needs proof may wait for it."""

    def __init__(
        self,
        helo: str = "",
        header_from: tuple[str, ...] = (),
        auth_results: tuple[str, ...] = (),
        message: bytes | None = None,
        more: bool = False,
    ) -> None:
        object.__setattr__(self, "helo", helo)
        object.__setattr__(self, "header_from", header_from)
        object.__setattr__(self, "auth_results", auth_results)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "more", more)


@dataclass(frozen=True, slots=True, init=False)
class PostingRequest:
    """One (sender, recipient) pair the MTA asks about, with what else it told us.

    Its ``__init__`` is written out (``dataclasses`` would generate one in Python, which
    a mypyc build does not compile): one per RCPT. ``tests/unit/test_dataclass_inits.py``
    holds it to the fields."""

    sender: str
    """Envelope sender, normalised ("" for the null sender)."""
    recipient: str
    """Envelope recipient, normalised."""
    client_address: str | None = None
    queue_id: str | None = None
    auth_user: str | None = None
    header_senders: tuple[str, ...] = ()
    """At end of headers: every sender Mailman would consider, in its order (From:,
    envelope, Reply-To:, Sender:), normalised. Empty at RCPT time."""
    list_posts: tuple[str, ...] = ()
    """At end of headers: every ``List-Post:`` header value as Mailman's loop rule reads
    it (surrounding whitespace removed, lower-cased). Empty at RCPT time."""

    evidence: Evidence | None = None
    """What may prove the senders (see ``Evidence``); None: nothing beyond the envelope."""

    def __init__(
        self,
        sender: str,
        recipient: str,
        client_address: str | None = None,
        queue_id: str | None = None,
        auth_user: str | None = None,
        header_senders: tuple[str, ...] = (),
        list_posts: tuple[str, ...] = (),
        evidence: Evidence | None = None,
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "recipient", recipient)
        object.__setattr__(self, "client_address", client_address)
        object.__setattr__(self, "queue_id", queue_id)
        object.__setattr__(self, "auth_user", auth_user)
        object.__setattr__(self, "header_senders", header_senders)
        object.__setattr__(self, "list_posts", list_posts)
        object.__setattr__(self, "evidence", evidence)

    @property
    def senders(self) -> tuple[str, ...]:
        """The senders to judge: the header senders once known, else the envelope."""
        return self.header_senders or (self.sender,)

    @property
    def decodes_envelope(self) -> bool:
        """Whether other spellings of the envelope sender (SRS/BATV decoded, ``+tag``
        stripped) may admit the post: at RCPT only, where the envelope is all there is.
        At end of headers listgate judges exactly the senders Mailman judges, and
        Mailman decodes none of them."""
        return not self.header_senders


@dataclass(frozen=True, slots=True, init=False)
class Decision:
    """The engine's answer for one ``PostingRequest`` (``__init__`` written out, as
    ``PostingRequest``'s)."""

    verdict: Verdict
    smtp_code: int | None
    """550, 451, ...; None for ACCEPT."""
    dsn: str | None
    """Enhanced status code such as "5.7.1"; None for ACCEPT."""
    text: str
    """Human text of the SMTP reply (without code and DSN); "" for ACCEPT."""
    reasons: tuple[str, ...]
    """Why, most important first: e.g. ("not a list: not gated",)."""
    list_address: str | None = None
    """The list posting address the recipient resolved to, if any."""
    provisional: bool = False
    """A verdict taken at RCPT, on the envelope alone, for a list that decides at end of
    headers. A provisional REJECT: the header senders may still admit the post, so the
    front end must wait for them. A provisional ACCEPT: a header sender may still make
    Mailman refuse the post; a front end that sees the headers may judge it again."""
    awaits_proof: bool = False
    """With ``provisional``: the verdict waits for proof that a later stage of the
    message may give (an aligned DKIM signature at end of message, upstream
    Authentication-Results at end of headers): the front end keeps the evidence (header
    fields, body) and asks again."""

    def __init__(
        self,
        verdict: Verdict,
        smtp_code: int | None,
        dsn: str | None,
        text: str,
        reasons: tuple[str, ...],
        list_address: str | None = None,
        provisional: bool = False,
        awaits_proof: bool = False,
    ) -> None:
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "smtp_code", smtp_code)
        object.__setattr__(self, "dsn", dsn)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "list_address", list_address)
        object.__setattr__(self, "provisional", provisional)
        object.__setattr__(self, "awaits_proof", awaits_proof)

    @property
    def smtp_reply(self) -> str | None:
        """The one-line SMTP reply the MTA shows the client, or None for ACCEPT."""
        if self.smtp_code is None:
            return None
        parts = [str(self.smtp_code)]
        if self.dsn:
            parts.append(self.dsn)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)
