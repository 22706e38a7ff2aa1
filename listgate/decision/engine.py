"""The posting decision: a pure function from (request, backend facts, reply texts) to a Decision.

Invariants:
- Pure: no I/O, no clock, no asyncio, no logging. Same inputs, same ``Decision``.
- The null sender ("") is never a poster, whatever the backend says.
- Rendered reply texts are single-line printable US-ASCII (RFC 5321 ``textstring``): every
  character of the substituted sender/list outside 0x20..0x7E becomes ``?``, so CR, LF and
  NUL can never reach the MTA. Each substituted value is cut to ``MAX_VALUE_CHARS`` and the
  whole text to ``MAX_TEXT_CHARS`` (with "...").
- Templates use only the ``{sender}`` and ``{list}`` placeholders; ``ReplyTexts`` refuses
  anything else at construction (``reply_template_problem``), so rendering cannot fail, and
  refuses reject codes outside 5xx/"5.X.Y" and tempfail codes outside 4xx/"4.X.Y".
- On a ``require_authenticated`` list every sender the message does not prove
  (``listgate.decision.auth.proof``) is judged as an unknown nonmember. When that alone
  refuses the post: while more evidence may come it is a provisional REJECT that
  ``awaits_proof``; after a DNS temperror it is a TEMPFAIL ``451 4.7.5``, never a reject;
  otherwise ``AUTH_REJECT_TEXT``. Monitor mode accepts with a reason that starts "monitor
  mode: would reject: unauthenticated member". A verdict that does not depend on
  authentication is the one without the option.
- The failure policy is *not* applied here: ``failure_decision``/``fail_open_decision`` build
  the decisions, and ``listgate.decision.gate.Gate`` is the one place that chooses between them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string
from dataclasses import dataclass

from listgate.decision.auth import NO_AUTHENTICATION, Authentication, proof, temporary
from listgate.decision.facts import ListFacts
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.decision.recipients import NOT_A_LIST, Target
from listgate.decision.rules import Action, Outcome, SenderFacts, mailman_outcome

__all__ = [
    "AUTH_REJECT_TEXT",
    "AUTH_TEMPFAIL",
    "DSN_PATTERN",
    "MAX_TEMPLATE_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_VALUE_CHARS",
    "NOT_A_LIST_REASON",
    "TEMPLATE_FIELDS",
    "DecideAt",
    "GateMode",
    "HoldPolicy",
    "ListOverrides",
    "ReplyTexts",
    "decide",
    "fail_open_decision",
    "failure_decision",
    "render_reply_text",
    "reply_template_problem",
    "sanitize_reply_value",
]

TEMPLATE_FIELDS: frozenset[str] = frozenset({"sender", "list"})
"""The only placeholders a reply template may use."""
MAX_TEMPLATE_BYTES = 900
"""Longest reply template accepted, in UTF-8 bytes."""
MAX_VALUE_CHARS = 200
"""Longest sender/list address substituted into a reply; longer ones end in "..."."""
MAX_TEXT_CHARS = 950
"""Longest rendered reply text; longer ones end in "..."."""
DSN_PATTERN = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
"""An RFC 3463 enhanced status code."""

NOT_A_LIST_REASON = NOT_A_LIST.reason
AUTH_REJECT_TEXT = (
    "<{sender}> is {role} of <{list}>, but this message is not authenticated as coming "
    "from that address (no SPF pass, no aligned DKIM signature)"
)
"""The reply text when only the missing authentication refuses the post."""
AUTH_TEMPFAIL = (451, "4.7.5")
"""RFC 3463 X.7.5 "cryptographic failure": the proof could not be checked now (DNS)."""
AUTH_TEMPFAIL_TEXT = (
    "cannot verify now that this message comes from <{sender}> (DNS), try again later"
)
UNAUTHENTICATED = "would reject: unauthenticated member"
"""The greppable part of the monitor-mode reason."""

_ELLIPSIS = "..."
# Everything outside printable US-ASCII (controls, DEL, non-ASCII) becomes "?".
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def reply_template_problem(template: str) -> str | None:
    """Return why *template* is not a usable reply template, or None when it is.

    A usable template is non-empty printable US-ASCII of at most ``MAX_TEMPLATE_BYTES``
    bytes whose only replacement fields are ``{sender}`` and ``{list}`` (no conversions or
    format specs); literal braces are written ``{{`` and ``}}``.
    """
    if not template.strip():
        return "must not be empty"
    if _UNSAFE.search(template):
        return "must be printable US-ASCII on one line (no control or non-ASCII characters)"
    size = len(template.encode())
    if size > MAX_TEMPLATE_BYTES:
        return f"must be at most {MAX_TEMPLATE_BYTES} bytes long (this one is {size})"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc}; write literal braces as {{{{ and }}}})"
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            return f"unknown placeholder {shown} (only {{sender}} and {{list}} are allowed)"
    return None


def sanitize_reply_value(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """Return *value* made safe for an SMTP reply: printable ASCII, at most *limit* chars."""
    # Printable ASCII is exactly what _UNSAFE leaves alone: skip the regex then.
    safe = value if value.isascii() and value.isprintable() else _UNSAFE.sub("?", value)
    if len(safe) > limit:
        safe = safe[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS
    return safe


def render_reply_text(template: str, sender: str, list_address: str) -> str:
    """Render a validated *template*; the null sender "" shows as ``<>`` in ``<{sender}>``."""
    text = template.format(
        sender=sanitize_reply_value(sender), list=sanitize_reply_value(list_address)
    )
    return sanitize_reply_value(text, MAX_TEXT_CHARS)


@dataclass(frozen=True, slots=True)
class ReplyTexts:
    """The SMTP replies listgate gives; templates may use ``{sender}`` and ``{list}``."""

    reject_code: int = 550
    """SMTP code for a sender who may not post (5xx). Default: 550."""
    reject_dsn: str = "5.7.1"
    """Enhanced status code for a rejection ("5.x.y"). Default: "5.7.1"."""
    reject_text: str = "<{sender}> is not allowed to post to <{list}>"
    """Rejection text template."""
    tempfail_code: int = 451
    """SMTP code when the backend cannot answer (4xx). Default: 451."""
    tempfail_dsn: str = "4.3.0"
    """Enhanced status code for a temporary failure ("4.x.y"). Default: "4.3.0"."""
    tempfail_text: str = "cannot check whether <{sender}> may post to <{list}> now, try again later"
    """Temporary-failure text template."""

    def __post_init__(self) -> None:
        # listgate.config reports these per key first; this keeps hand-built texts sane too.
        for name, code, dsn, klass in (("reject", self.reject_code, self.reject_dsn, 5),
                                       ("tempfail", self.tempfail_code, self.tempfail_dsn, 4)):
            if isinstance(code, bool) or not isinstance(code, int) or code // 100 != klass:
                raise ValueError(f"{name}_code: must be {klass}xx, got {code!r}")
            if not DSN_PATTERN.match(dsn) or dsn[0] != str(klass):
                raise ValueError(f"{name}_dsn: must look like {klass}.X.Y, got {dsn!r}")
        for name, template in (("reject_text", self.reject_text),
                               ("tempfail_text", self.tempfail_text)):
            problem = reply_template_problem(template)
            if problem is not None:
                raise ValueError(f"{name}: {problem}")


class GateMode(enum.Enum):
    """How a list's verdicts are applied (per-list ``mode``)."""

    ENFORCE = "enforce"
    """Reject what Mailman would reject or discard."""
    MONITOR = "monitor"
    """Decide and log what would be rejected, but accept."""
    OFF = "off"
    """Do not gate this list at all."""


class DecideAt(enum.Enum):
    """When a list's posting decision is taken (per-list ``decide_at``)."""

    RCPT = "rcpt"
    """At RCPT, on the envelope sender alone."""
    HEADERS = "headers"
    """Mailman-faithful: accept at RCPT if the envelope sender may post, otherwise wait
    for the end of headers; there, judge every address Mailman would (From:, envelope,
    Reply-To:, Sender:). A post accepted at RCPT is judged again at the end of headers
    too, and refused there if it is the transaction's only recipient."""


class HoldPolicy(enum.Enum):
    """What listgate does with a post Mailman would hold for moderation."""

    ACCEPT = "accept"
    """Let it through: the moderator chose to review such posts. The default."""
    REJECT = "reject"
    """Reject it at SMTP (no hold notice backscatter; moderators never see it)."""


@dataclass(frozen=True, slots=True)
class ListOverrides:
    """Per-list settings from listgate's own config (``[lists."addr"]``), for any backend."""

    allow: tuple[str, ...] = ()
    """Senders always allowed: exact addresses, ``@domain`` or ``^regex`` (case-insensitive)."""
    mode: GateMode = GateMode.ENFORCE
    reject_text: str | None = None
    """Overrides ``[reply] reject_text`` for this list."""
    decide_at: DecideAt = DecideAt.RCPT
    hold: HoldPolicy = HoldPolicy.ACCEPT
    trust_approved: bool = True
    """Never reject on a list with a moderator_password (an Approved: header can admit
    anyone). Set False only if the password is never used to approve posts by mail."""
    require_authenticated: bool = False
    """A sender counts as a member (or accepted nonmember) only when the message proves
    it comes from that address (SPF pass, aligned DKIM, SASL); others are judged as
    unknown nonmembers."""

    def allows(self, address: str) -> str | None:
        """The allow entry that admits *address*, or None."""
        if not address:
            return None
        for entry in self.allow:
            if entry.startswith("^"):
                try:
                    if re.match(entry, address, re.IGNORECASE):
                        return entry
                except re.error:
                    continue
            elif entry.startswith("@"):
                if address.endswith(entry.lower()) and address.count("@") == 1:
                    return entry
            elif entry.lower() == address:
                return entry
        return None


DEFAULT_OVERRIDES = ListOverrides()


def _accept(
    reasons: tuple[str, ...],
    list_address: str | None,
    *,
    provisional: bool = False,
    awaits_proof: bool = False,
) -> Decision:
    return Decision(Verdict.ACCEPT, None, None, "", reasons, list_address, provisional,
                    awaits_proof)


_REFUSED = frozenset({Action.REJECT, Action.DISCARD})


def _demoted(
    request: PostingRequest,
    senders: tuple[SenderFacts, ...],
    hints: tuple[SenderFacts, ...],
    auth: Authentication,
) -> tuple[tuple[SenderFacts, ...], tuple[SenderFacts, ...], list[SenderFacts]]:
    """*senders* and *hints* with every address the message does not prove marked
    ``proven=False``, and those of them that Mailman would have trusted."""
    unproven: list[SenderFacts] = []

    def mark(sender: SenderFacts) -> SenderFacts:
        if not sender.address or proof(sender.address, request, auth) is not None:
            return sender
        if sender.member is not None or sender.nonmember_action in _TRUSTING or \
                sender.member_of:
            unproven.append(sender)
        return dataclasses.replace(sender, proven=False)

    marked = tuple(mark(s) for s in senders)
    marked_hints = tuple(mark(h) for h in hints)
    if not unproven:  # an accept_these_nonmembers hit is trusted too: name the first
        unproven.extend(s for s in senders if s.address and
                        proof(s.address, request, auth) is None)
    return marked, marked_hints, unproven


_TRUSTING = frozenset({Action.ACCEPT, Action.DEFER})


def _unauthenticated(
    request: PostingRequest,
    texts: ReplyTexts,
    overrides: ListOverrides,
    auth: Authentication,
    unproven: list[SenderFacts],
    outcome: Outcome,
    list_address: str,
) -> Decision:
    """The decision when only the missing proof of *unproven* refuses the post."""
    who = unproven[0]
    role = "a member" if who.member is not None else "an accepted nonmember"
    shown = ", ".join(f"<{s.address}>" for s in unproven)
    why = (f"require_authenticated: not proven by this message ({_evidence(auth)}): "
           f"{shown}, judged as unknown nonmember")
    reasons = (why, *outcome.reasons)
    if auth.pending and overrides.mode is not GateMode.OFF:
        reasons = (f"{why}; waiting for more evidence", *outcome.reasons)
        if overrides.mode is GateMode.MONITOR:
            return _accept(reasons, list_address or None, provisional=True,
                           awaits_proof=True)
        text = render_reply_text(
            overrides.reject_text or texts.reject_text, request.sender, list_address
        )
        return Decision(Verdict.REJECT, texts.reject_code, texts.reject_dsn, text, reasons,
                        list_address or None, provisional=True, awaits_proof=True)
    if any(temporary(s.address, request, auth) for s in unproven):
        if overrides.mode is GateMode.MONITOR:
            return _accept(("monitor mode: would tempfail: authentication temporarily "
                            "unavailable", *reasons), list_address or None)
        code, dsn = AUTH_TEMPFAIL
        text = sanitize_reply_value(
            AUTH_TEMPFAIL_TEXT.format(sender=sanitize_reply_value(who.address)),
            MAX_TEXT_CHARS,
        )
        return Decision(Verdict.TEMPFAIL, code, dsn, text,
                        ("authentication temporarily unavailable (DNS)", *reasons),
                        list_address or None)
    if overrides.mode is GateMode.MONITOR:
        return _accept((f"monitor mode: {UNAUTHENTICATED} <{who.address}>", *reasons),
                       list_address or None)
    text = sanitize_reply_value(
        AUTH_REJECT_TEXT.format(sender=sanitize_reply_value(who.address), role=role,
                                list=sanitize_reply_value(list_address)),
        MAX_TEXT_CHARS,
    )
    return Decision(Verdict.REJECT, texts.reject_code, texts.reject_dsn, text, reasons,
                    list_address or None)


def _evidence(auth: Authentication) -> str:
    """What was checked, for the reasons."""
    parts = []
    if auth.spf is None:
        parts.append("SPF not checked")
    else:
        parts.append(f"SPF {auth.spf.value} for {auth.spf_domain or '-'}")
    if auth.dkim_domains:
        parts.append("DKIM valid for " + ", ".join(auth.dkim_domains) + " (not aligned)")
    elif auth.dkim_checked:
        parts.append("no valid DKIM signature")
    else:
        parts.append("DKIM not checked yet" if auth.pending else "DKIM not checked")
    if auth.source != "listgate":
        parts.append(f"results of {auth.source}")
    parts.extend(auth.notes)
    return ", ".join(parts)


def decide(
    request: PostingRequest,
    facts: ListFacts,
    texts: ReplyTexts,
    overrides: ListOverrides = DEFAULT_OVERRIDES,
    authentication: Authentication | None = None,
) -> Decision:
    """Decide *request* from the backend's *facts*, the list's *overrides* and, for a
    ``require_authenticated`` list, what the message proves (*authentication*)."""
    resolution = facts.resolution
    list_address = resolution.list_address
    if resolution.target is not Target.POSTING or facts.policy is None:
        return _accept((resolution.reason,), list_address)
    if overrides.mode is GateMode.OFF:
        return _accept(("gate is off for this list (mode=off)",), list_address)
    addresses = [s.address for s in facts.senders] or [request.sender]
    for address in addresses:
        entry = overrides.allows(address)
        if entry is not None:
            return _accept((f"override allow {entry} admits <{address}>",), list_address)
    senders, hints = facts.senders, facts.hints if request.decodes_envelope else ()
    unproven: list[SenderFacts] = []
    proven: tuple[str, ...] = ()
    auth = authentication or NO_AUTHENTICATION
    if overrides.require_authenticated:
        senders, hints, unproven = _demoted(request, senders, hints, auth)
        proven = tuple(
            f"authenticated <{s.address}>: {why}" for s in senders
            if s.proven and s.address and (why := proof(s.address, request, auth))
        )
    outcome = mailman_outcome(
        facts.policy, senders, hints, trust_approved=overrides.trust_approved,
        list_posts=request.list_posts,
    )
    if unproven and outcome.action in _REFUSED:
        trusted = mailman_outcome(
            facts.policy, facts.senders, facts.hints if request.decodes_envelope else (),
            trust_approved=overrides.trust_approved, list_posts=request.list_posts,
        )
        if trusted.action not in _REFUSED:
            return _unauthenticated(
                request, texts, overrides, auth, unproven, outcome, list_address or ""
            )
    refused = outcome.action in _REFUSED or (
        outcome.action is Action.HOLD
        and overrides.hold is HoldPolicy.REJECT
        and not outcome.never_reject
    )
    reasons = (*outcome.reasons, *proven)
    if outcome.action is Action.HOLD:
        reasons = (*reasons, f"Mailman would hold it; hold={overrides.hold.value}")
    at_rcpt_of_headers_list = (
        overrides.decide_at is DecideAt.HEADERS and not request.header_senders
    )
    if not refused:
        # Accepted on the envelope alone at RCPT of a headers list: a header sender may
        # still make Mailman refuse the post (a ban, a member whose action rejects, a
        # nonmember rule), so the front end may judge it again.
        return _accept(
            reasons,
            list_address,
            provisional=at_rcpt_of_headers_list and overrides.mode is GateMode.ENFORCE,
        )
    if overrides.mode is GateMode.MONITOR:
        return _accept(("monitor mode: would reject", *reasons), list_address)
    text = render_reply_text(
        overrides.reject_text or texts.reject_text, request.sender, list_address or ""
    )
    return Decision(
        Verdict.REJECT,
        texts.reject_code,
        texts.reject_dsn,
        text,
        reasons,
        list_address,
        provisional=at_rcpt_of_headers_list,
    )


def failure_decision(
    request: PostingRequest, list_address: str | None, texts: ReplyTexts, reason: str
) -> Decision:
    """The TEMPFAIL decision for *request* when the backend could not answer, for *reason*."""
    text = render_reply_text(texts.tempfail_text, request.sender, list_address or request.recipient)
    return Decision(
        Verdict.TEMPFAIL, texts.tempfail_code, texts.tempfail_dsn, text, (reason,), list_address
    )


def fail_open_decision(request: PostingRequest, list_address: str | None, reason: str) -> Decision:
    """The fail-open ACCEPT for *request* when the backend could not answer, for *reason*."""
    del request  # same signature shape as failure_decision; nothing to render
    return _accept((f"fail-open: {reason}",), list_address)
