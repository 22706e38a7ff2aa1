"""Table-driven tests of the pure posting decision (listgate.decision.engine)."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest

from listgate.compiled import source_path
from listgate.decision.engine import (
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    NOT_A_LIST_REASON,
    DecideAt,
    GateMode,
    HoldPolicy,
    ListOverrides,
    ReplyTexts,
    decide,
    fail_open_decision,
    failure_decision,
    render_reply_text,
    reply_template_problem,
)
from listgate.decision.facts import ListFacts, not_a_list
from listgate.decision.gate import FailurePolicy
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, ListPolicy, Membership, SenderFacts

LIST = "announce@example.org"
TEXTS = ReplyTexts()
CUSTOM = ReplyTexts(reject_code=554, reject_dsn="5.7.0", reject_text="no: {sender} -> {list}")
POSTING = Resolution(Target.POSTING, LIST)
POLICY = ListPolicy(LIST, default_member_action=Action.ACCEPT,
                    default_nonmember_action=Action.REJECT)
"""The static backend's policy: posters accept, everyone else reject."""
REJECTED = "nonmember <eve@example.com>; default_nonmember_action=reject"


def facts(*senders: SenderFacts, policy: ListPolicy = POLICY,
          hints: tuple[SenderFacts, ...] = ()) -> ListFacts:
    return ListFacts(POSTING, policy, senders, hints)


def poster(address: str) -> SenderFacts:
    return SenderFacts(address, Membership(address))


def nonmember(address: str) -> SenderFacts:
    return SenderFacts(address)


def reject(sender: str, *reasons: str, texts: ReplyTexts = TEXTS, text: str | None = None,
           provisional: bool = False) -> Decision:
    shown = text if text is not None else f"<{sender}> is not allowed to post to <{LIST}>"
    return Decision(Verdict.REJECT, texts.reject_code, texts.reject_dsn, shown, reasons, LIST,
                    provisional)


def accept(*reasons: str, list_address: str | None = LIST, provisional: bool = False) -> Decision:
    return Decision(Verdict.ACCEPT, None, None, "", reasons, list_address, provisional)


DEFAULTS = ListOverrides()


@dataclass(frozen=True)
class Case:
    id: str
    request: PostingRequest
    facts: ListFacts
    expected: Decision
    overrides: ListOverrides = DEFAULTS
    texts: ReplyTexts = TEXTS


EVE = PostingRequest("eve@example.com", LIST)
BOSS = PostingRequest("boss@example.org", LIST)

CASES = [
    Case("not-a-list", PostingRequest("a@example.com", "x@example.org"), not_a_list(),
         accept(NOT_A_LIST_REASON, list_address=None)),
    Case("service-address", PostingRequest("a@example.com", "announce-owner@example.org"),
         ListFacts(Resolution(Target.SERVICE, LIST, "owner")),
         accept(f"list-owner address of {LIST}: not gated")),
    Case("posting-without-policy", EVE, ListFacts(POSTING), accept(f"posting address of {LIST}")),
    Case("poster", BOSS, facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept")),
    Case("non-poster", EVE, facts(nonmember("eve@example.com")), reject("eve@example.com",
                                                                         REJECTED)),
    Case("custom-texts", EVE, facts(nonmember("eve@example.com")),
         reject("eve@example.com", REJECTED, texts=CUSTOM,
                text=f"no: eve@example.com -> {LIST}"), texts=CUSTOM),
    Case("null-sender", PostingRequest("", LIST), facts(nonmember("")),
         reject("", "nonmember <>; default_nonmember_action=reject",
                text=f"<> is not allowed to post to <{LIST}>")),
    Case("crlf-nul-in-sender", PostingRequest("evil\r\n250 ok\x00@example.com", LIST),
         facts(nonmember("evil\r\n250 ok\x00@example.com")),
         reject("", "nonmember <evil\r\n250 ok\x00@example.com>; "
                "default_nonmember_action=reject",
                text=f"<evil??250 ok?@example.com> is not allowed to post to <{LIST}>")),
    Case("non-ascii-sender", PostingRequest("j\u00fcrgen\u2028@example.com", LIST),
         facts(nonmember("j\u00fcrgen\u2028@example.com")),
         reject("", "nonmember <j\u00fcrgen\u2028@example.com>; default_nonmember_action=reject",
                text=f"<j?rgen?@example.com> is not allowed to post to <{LIST}>")),
    Case("discard-is-rejected", EVE,
         facts(nonmember("eve@example.com"),
               policy=ListPolicy(LIST, default_nonmember_action=Action.DISCARD)),
         reject("eve@example.com",
                "nonmember <eve@example.com>; default_nonmember_action=discard")),
    Case("banned-is-rejected", EVE, facts(SenderFacts("eve@example.com", banned=True)),
         reject("eve@example.com", "banned: <eve@example.com>")),
    # Holds: accepted by default (moderators review them), rejected under hold=reject.
    Case("hold-accepted", EVE,
         facts(nonmember("eve@example.com"), policy=ListPolicy(LIST)),
         accept("nonmember <eve@example.com>; default_nonmember_action=hold",
                "Mailman would hold it; hold=accept")),
    Case("hold-rejected", EVE,
         facts(nonmember("eve@example.com"), policy=ListPolicy(LIST)),
         reject("eve@example.com", "nonmember <eve@example.com>; default_nonmember_action=hold",
                "Mailman would hold it; hold=reject"),
         ListOverrides(hold=HoldPolicy.REJECT)),
    Case("emergency-never-rejected", BOSS,
         facts(poster("boss@example.org"), policy=ListPolicy(LIST, emergency=True)),
         accept("list is in emergency moderation: Mailman holds every post",
                "Mailman would hold it; hold=accept")),
    # Approved: bypass, and trust_approved=False.
    Case("moderator-password-trusted", EVE,
         facts(nonmember("eve@example.com"), policy=ListPolicy(
             LIST, default_nonmember_action=Action.REJECT, moderator_password=True)),
         accept("list has a moderator_password: an Approved: header can admit any sender")),
    Case("moderator-password-untrusted", EVE,
         facts(nonmember("eve@example.com"), policy=ListPolicy(
             LIST, default_nonmember_action=Action.REJECT, moderator_password=True)),
         reject("eve@example.com", REJECTED), ListOverrides(trust_approved=False)),
    # Modes.
    Case("mode-off", EVE, facts(nonmember("eve@example.com")),
         accept("gate is off for this list (mode=off)"), ListOverrides(mode=GateMode.OFF)),
    Case("mode-monitor", EVE, facts(nonmember("eve@example.com")),
         accept("monitor mode: would reject", REJECTED), ListOverrides(mode=GateMode.MONITOR)),
    Case("mode-monitor-poster", BOSS, facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept"),
         ListOverrides(mode=GateMode.MONITOR)),
    # Allow overrides: exact (any case), @domain (that domain only), ^regex (ignore case).
    Case("allow-exact", EVE, facts(nonmember("eve@example.com")),
         accept("override allow Eve@Example.com admits <eve@example.com>"),
         ListOverrides(allow=("Eve@Example.com",))),
    Case("allow-domain", EVE, facts(nonmember("eve@example.com")),
         accept("override allow @example.com admits <eve@example.com>"),
         ListOverrides(allow=("@example.com",))),
    Case("allow-domain-not-subdomain", PostingRequest("eve@sub.example.com", LIST),
         facts(nonmember("eve@sub.example.com")),
         reject("eve@sub.example.com",
                "nonmember <eve@sub.example.com>; default_nonmember_action=reject"),
         ListOverrides(allow=("@example.com",))),
    Case("allow-regex", EVE, facts(nonmember("eve@example.com")),
         accept("override allow ^EVE@ admits <eve@example.com>"),
         ListOverrides(allow=("^EVE@",))),
    Case("allow-bad-regex-skipped", EVE, facts(nonmember("eve@example.com")),
         reject("eve@example.com", REJECTED), ListOverrides(allow=("^(",))),
    Case("allow-header-sender",
         PostingRequest("eve@example.com", LIST, header_senders=("boss@partner.example",
                                                                 "eve@example.com")),
         facts(nonmember("boss@partner.example"), nonmember("eve@example.com")),
         accept("override allow boss@partner.example admits <boss@partner.example>"),
         ListOverrides(allow=("boss@partner.example",))),
    Case("allow-never-null-sender", PostingRequest("", LIST), facts(nonmember("")),
         reject("", "nonmember <>; default_nonmember_action=reject",
                text=f"<> is not allowed to post to <{LIST}>"),
         ListOverrides(allow=("^.*",))),
    Case("override-reject-text", EVE, facts(nonmember("eve@example.com")),
         reject("eve@example.com", REJECTED, text=f"ask the owner of {LIST}"),
         ListOverrides(reject_text="ask the owner of {list}")),
    # decide_at=headers: a reject at RCPT is provisional, at end of headers final.
    Case("headers-provisional-at-rcpt", EVE, facts(nonmember("eve@example.com")),
         reject("eve@example.com", REJECTED, provisional=True),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("headers-final-at-eoh",
         PostingRequest("eve@example.com", LIST, header_senders=("eve@example.com",)),
         facts(nonmember("eve@example.com")), reject("eve@example.com", REJECTED),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("headers-from-member-accepts",
         PostingRequest("bounce@esp.example", LIST,
                        header_senders=("boss@example.org", "bounce@esp.example")),
         facts(poster("boss@example.org"), nonmember("bounce@esp.example")),
         accept("member <boss@example.org>; default_member_action=accept"),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("headers-accept-at-rcpt-is-provisional", BOSS, facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept", provisional=True),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("headers-accept-at-eoh-is-final",
         PostingRequest("boss@example.org", LIST, header_senders=("boss@example.org",)),
         facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept"),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("headers-monitor-accept-is-final", BOSS, facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept"),
         ListOverrides(decide_at=DecideAt.HEADERS, mode=GateMode.MONITOR)),
    Case("headers-allow-is-final", EVE, facts(nonmember("eve@example.com")),
         accept("override allow @example.com admits <eve@example.com>"),
         ListOverrides(decide_at=DecideAt.HEADERS, allow=("@example.com",))),
    Case("headers-eoh-decodes-nothing",
         PostingRequest("srs0=h=tt=example.org=boss@fwd.example", LIST,
                        header_senders=("eve@example.com",
                                        "srs0=h=tt=example.org=boss@fwd.example")),
         facts(nonmember("eve@example.com"), nonmember("srs0=h=tt=example.org=boss@fwd.example"),
               hints=(poster("boss@example.org"),)),
         reject("srs0=h=tt=example.org=boss@fwd.example",
                "nonmember <eve@example.com>, <srs0=h=tt=example.org=boss@fwd.example>; "
                "default_nonmember_action=reject"),
         ListOverrides(decide_at=DecideAt.HEADERS)),
    Case("rcpt-accept-is-final", BOSS, facts(poster("boss@example.org")),
         accept("member <boss@example.org>; default_member_action=accept")),
    Case("rcpt-reject-is-final", EVE, facts(nonmember("eve@example.com")),
         reject("eve@example.com", REJECTED)),
    # Hints: a decoded SRS envelope that is a member is accepted, saying why.
    Case("hint-accepts", PostingRequest("srs0=h=tt=example.org=boss@fwd.example", LIST),
         facts(nonmember("srs0=h=tt=example.org=boss@fwd.example"),
               hints=(poster("boss@example.org"),)),
         accept("sender decodes to <boss@example.org>",
                "member <boss@example.org>; default_member_action=accept",
                "nonmember <srs0=h=tt=example.org=boss@fwd.example>; "
                "default_nonmember_action=reject")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case) -> None:
    """decide() maps each (request, facts, overrides, texts) row to exactly its Decision."""
    assert decide(case.request, case.facts, case.texts, case.overrides) == case.expected


def test_reject_renders_full_smtp_reply() -> None:
    """A rejection renders as the one-line "550 5.7.1 <sender> ..." SMTP reply."""
    decision = decide(EVE, facts(nonmember("eve@example.com")), TEXTS)
    assert decision.smtp_reply == f"550 5.7.1 <eve@example.com> is not allowed to post to <{LIST}>"


def test_absurdly_long_sender_is_truncated() -> None:
    """A 2000-byte sender is cut with "..." so the reply stays bounded."""
    sender = "a" * 2000 + "@example.com"
    decision = decide(PostingRequest(sender, LIST), facts(nonmember(sender)), TEXTS)
    assert f"<{'a' * (MAX_VALUE_CHARS - 3)}...>" in decision.text
    assert len(decision.text) < 2 * MAX_VALUE_CHARS + len(TEXTS.reject_text)


def test_rendered_text_never_exceeds_cap() -> None:
    """Even a maximal template with long values renders to at most MAX_TEXT_CHARS chars."""
    template = "{sender}{list}" * 60
    text = render_reply_text(template, "s" * 5000, "l" * 5000)
    assert len(text) == MAX_TEXT_CHARS
    assert text.endswith("...")


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\t", "\x7f", "\x85", "\u2029"])
def test_no_control_character_survives_rendering(char: str) -> None:
    """Every control/line-separator character in sender or list becomes "?"."""
    text = render_reply_text(TEXTS.reject_text, f"a{char}b@x", f"l{char}@x")
    assert char not in text
    assert text == "<a?b@x> is not allowed to post to <l?@x>"


def test_failure_decision_is_tempfail_with_texts() -> None:
    """failure_decision renders the tempfail code, DSN and text, naming the list."""
    request = PostingRequest("eve@example.com", LIST)
    decision = failure_decision(request, LIST, TEXTS, "backend unavailable: down")
    assert decision == Decision(
        Verdict.TEMPFAIL, 451, "4.3.0",
        f"cannot check whether <eve@example.com> may post to <{LIST}> now, try again later",
        ("backend unavailable: down",), LIST,
    )


def test_failure_decision_without_list_names_recipient() -> None:
    """With no known list address, the tempfail text names the envelope recipient."""
    request = PostingRequest("", "who@example.org")
    decision = failure_decision(request, None, TEXTS, "x")
    assert decision.text == (
        "cannot check whether <> may post to <who@example.org> now, try again later"
    )
    assert decision.list_address is None


def test_fail_open_decision_accepts_and_says_so() -> None:
    """fail_open_decision is an ACCEPT whose reason says it was fail-open."""
    decision = fail_open_decision(PostingRequest("a@b", LIST), LIST, "backend error: x")
    assert decision.verdict is Verdict.ACCEPT
    assert decision.reasons == ("fail-open: backend error: x",)
    assert decision.smtp_reply is None


def test_failure_policy_values() -> None:
    """The failure policy values are the config spellings "tempfail" and "accept"."""
    assert {p.value for p in FailurePolicy} == {"tempfail", "accept"}


TEMPLATE_PROBLEMS = [
    ("ok", "<{sender}> to <{list}> {{literal}}", None),
    ("empty", "  ", "must not be empty"),
    ("newline", "a\nb", "printable US-ASCII"),
    ("non-ascii", "caf\u00e9", "printable US-ASCII"),
    ("unknown-field", "{recipient}", "unknown placeholder {recipient}"),
    ("positional", "{}", "unknown placeholder {}"),
    ("conversion", "{sender!r}", "unknown placeholder {sender!r}"),
    ("format-spec", "{sender:>999}", "unknown placeholder {sender:>999}"),
    ("attribute", "{sender.upper}", "unknown placeholder {sender.upper}"),
    ("unbalanced", "x {sender", "not a valid template"),
    ("too-long", "x" * 901, "at most 900 bytes"),
]


@pytest.mark.parametrize(
    ("template", "problem"),
    [(t, p) for _, t, p in TEMPLATE_PROBLEMS],
    ids=[i for i, _, _ in TEMPLATE_PROBLEMS],
)
def test_reply_template_problem(template: str, problem: str | None) -> None:
    """reply_template_problem accepts only {sender}/{list} templates of safe text."""
    found = reply_template_problem(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_reply_texts_refuse_bad_template() -> None:
    """ReplyTexts cannot be built with a template that rendering could choke on."""
    with pytest.raises(ValueError, match="reject_text: unknown placeholder"):
        ReplyTexts(reject_text="{recipient}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"reject_code": 451}, "reject_code: must be 5xx", id="reject-4xx"),
        pytest.param({"reject_code": True}, "reject_code: must be 5xx", id="reject-bool"),
        pytest.param({"tempfail_code": 550}, "tempfail_code: must be 4xx", id="tempfail-5xx"),
        pytest.param({"reject_dsn": "4.7.1"}, "reject_dsn: must look like 5.X.Y", id="dsn-class"),
        pytest.param({"tempfail_dsn": "4.7"}, "tempfail_dsn: must look like 4.X.Y",
                     id="dsn-shape"),
    ],
)
def test_reply_texts_refuse_bad_codes(kwargs: dict[str, object], message: str) -> None:
    """ReplyTexts refuses codes and DSNs of the wrong class or shape."""
    with pytest.raises(ValueError, match=message):
        ReplyTexts(**kwargs)  # type: ignore[arg-type]


def test_engine_is_pure() -> None:
    """engine.py imports nothing that does I/O or concurrency (asyncio, socket, os, logging...)."""
    tree = ast.parse(source_path("listgate.decision.engine").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= {"__future__", "enum", "ipaddress", "re", "string", "dataclasses",
                        "listgate.decision.auth", "listgate.decision.facts",
                        "listgate.decision.model",
                        "listgate.decision.recipients", "listgate.decision.rules"}


def test_null_sender_never_a_poster_whatever_the_backend_says() -> None:
    """engine.py's invariant, and Mailman's validator (§1.3: "" is never a valid sender, so
    never a member): a backend that calls the null sender a member must not admit it."""
    decision = decide(PostingRequest("", LIST), facts(poster("")), TEXTS)
    assert decision.verdict is Verdict.REJECT
