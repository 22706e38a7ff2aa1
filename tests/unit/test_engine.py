"""Table-driven tests of the pure posting decision (listgate.engine)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import listgate.engine
from listgate.engine import (
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    NOT_A_LIST_REASON,
    NULL_SENDER_REASON,
    FailurePolicy,
    PostingFacts,
    ReplyTexts,
    decide,
    fail_open_decision,
    failure_decision,
    render_reply_text,
    reply_template_problem,
)
from listgate.model import Decision, PostingRequest, Verdict

LIST = "announce@example.org"
TEXTS = ReplyTexts()
CUSTOM = ReplyTexts(reject_code=554, reject_dsn="5.7.0", reject_text="no: {sender} -> {list}")


@dataclass(frozen=True)
class Case:
    id: str
    sender: str
    facts: PostingFacts | None
    texts: ReplyTexts
    expected: Decision


CASES = [
    Case(
        "not-a-list",
        "anyone@example.com",
        None,
        TEXTS,
        Decision(Verdict.ACCEPT, None, None, "", (NOT_A_LIST_REASON,), None),
    ),
    Case(
        "poster",
        "boss@example.org",
        PostingFacts(LIST, True, ("static poster",)),
        TEXTS,
        Decision(Verdict.ACCEPT, None, None, "", ("static poster",), LIST),
    ),
    Case(
        "non-poster",
        "eve@example.com",
        PostingFacts(LIST, False, (f"not in static posters of {LIST}",)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1",
            f"<eve@example.com> is not allowed to post to <{LIST}>",
            (f"not in static posters of {LIST}",), LIST,
        ),
    ),
    Case(
        "custom-texts",
        "eve@example.com",
        PostingFacts(LIST, False, ("nope",)),
        CUSTOM,
        Decision(Verdict.REJECT, 554, "5.7.0", f"no: eve@example.com -> {LIST}", ("nope",), LIST),
    ),
    Case(
        "non-poster-without-reasons",
        "eve@example.com",
        PostingFacts(LIST, False),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1",
            f"<eve@example.com> is not allowed to post to <{LIST}>",
            ("not allowed to post",), LIST,
        ),
    ),
    Case(
        "null-sender-backend-says-no",
        "",
        PostingFacts(LIST, False, (NULL_SENDER_REASON,)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1", f"<> is not allowed to post to <{LIST}>",
            (NULL_SENDER_REASON,), LIST,
        ),
    ),
    Case(
        "null-sender-backend-wrongly-says-yes",
        "",
        PostingFacts(LIST, True, ("static poster",)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1", f"<> is not allowed to post to <{LIST}>",
            (NULL_SENDER_REASON,), LIST,
        ),
    ),
    Case(
        "null-sender-other-reason-kept",
        "",
        PostingFacts(LIST, False, ("banned",)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1", f"<> is not allowed to post to <{LIST}>",
            (NULL_SENDER_REASON, "banned"), LIST,
        ),
    ),
    Case(
        "crlf-nul-in-sender",
        "evil\r\n250 ok\x00@example.com",
        PostingFacts(LIST, False, ("nope",)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1",
            f"<evil??250 ok?@example.com> is not allowed to post to <{LIST}>", ("nope",), LIST,
        ),
    ),
    Case(
        "non-ascii-sender",
        "j\u00fcrgen\u2028@example.com",
        PostingFacts(LIST, False, ("nope",)),
        TEXTS,
        Decision(
            Verdict.REJECT, 550, "5.7.1",
            f"<j?rgen?@example.com> is not allowed to post to <{LIST}>", ("nope",), LIST,
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case) -> None:
    """decide() maps each (sender, facts, texts) row to exactly the expected Decision."""
    request = PostingRequest(sender=case.sender, recipient=LIST)
    assert decide(request, case.facts, case.texts) == case.expected


def test_reject_renders_full_smtp_reply() -> None:
    """A rejection renders as the one-line "550 5.7.1 <sender> ..." SMTP reply."""
    decision = decide(PostingRequest("eve@example.com", LIST), PostingFacts(LIST, False), TEXTS)
    assert decision.smtp_reply == f"550 5.7.1 <eve@example.com> is not allowed to post to <{LIST}>"


def test_absurdly_long_sender_is_truncated() -> None:
    """A 2000-byte sender is cut with "..." so the reply stays bounded."""
    sender = "a" * 2000 + "@example.com"
    decision = decide(PostingRequest(sender, LIST), PostingFacts(LIST, False), TEXTS)
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
    tree = ast.parse(Path(listgate.engine.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= {"__future__", "enum", "re", "string", "dataclasses", "listgate.model"}
