"""Address normalisation and Decision rendering (listgate.decision.model)."""

from __future__ import annotations

import pytest

from listgate.decision.model import Decision, PostingRequest, Verdict, normalize_address

NORMALIZE = [
    pytest.param("anne@example.com", "anne@example.com", id="plain"),
    pytest.param("<anne@example.com>", "anne@example.com", id="brackets"),
    pytest.param("  < Anne@Example.COM >  ", "anne@example.com", id="blanks-case"),
    pytest.param("ANNE@EXAMPLE.COM", "anne@example.com", id="upper-local-part"),
    pytest.param("<@relay.example:anne@example.com>", "anne@example.com", id="source-route"),
    pytest.param("<@a.example,@b.example:x@y.example>", "x@y.example", id="source-route-two"),
    pytest.param('"list"@example.org', "list@example.org", id="quoted-atom"),
    pytest.param('<"John.Doe"@Example.com>', "john.doe@example.com", id="quoted-dot-atom"),
    pytest.param('"li\\st"@example.org', "list@example.org", id="quoted-pair"),
    pytest.param('"john doe"@example.com', '"john doe"@example.com', id="quoted-space-kept"),
    pytest.param('"a..b"@example.com', '"a..b"@example.com', id="quoted-not-dot-atom-kept"),
    pytest.param('"a@b"@example.com', '"a@b"@example.com', id="quoted-at-kept"),
    pytest.param("anne@example.com.", "anne@example.com", id="trailing-dot"),
    pytest.param("<list@Example.ORG.>", "list@example.org", id="brackets-trailing-dot"),
    pytest.param("<>", "", id="null-sender"),
    pytest.param("", "", id="empty"),
    pytest.param(" < > ", "", id="null-sender-blanks"),
    pytest.param("postmaster", "postmaster", id="no-domain"),
    pytest.param("<@relay:>", "", id="source-route-only"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE)
def test_normalize_address(raw: str, expected: str) -> None:
    """normalize_address gives the mailbox an MTA delivers to, lower-cased."""
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(("raw", "_expected"), NORMALIZE)
def test_normalize_address_idempotent(raw: str, _expected: str) -> None:
    """Normalising twice changes nothing."""
    once = normalize_address(raw)
    assert normalize_address(once) == once


SMTP_REPLIES = [
    pytest.param(Decision(Verdict.ACCEPT, None, None, "", ("ok",)), None, id="accept"),
    pytest.param(Decision(Verdict.REJECT, 550, "5.7.1", "no", ("x",)), "550 5.7.1 no",
                 id="reject"),
    pytest.param(Decision(Verdict.TEMPFAIL, 451, "4.3.0", "later", ("x",)), "451 4.3.0 later",
                 id="tempfail"),
    pytest.param(Decision(Verdict.REJECT, 550, None, "no", ("x",)), "550 no", id="no-dsn"),
    pytest.param(Decision(Verdict.REJECT, 550, "5.7.1", "", ("x",)), "550 5.7.1", id="no-text"),
]


@pytest.mark.parametrize(("decision", "reply"), SMTP_REPLIES)
def test_smtp_reply(decision: Decision, reply: str | None) -> None:
    """smtp_reply joins code, DSN and text; ACCEPT has none."""
    assert decision.smtp_reply == reply


def test_decision_defaults() -> None:
    """A Decision has no list and is final unless told otherwise."""
    decision = Decision(Verdict.ACCEPT, None, None, "", ("r",))
    assert (decision.list_address, decision.provisional) == (None, False)


@pytest.mark.parametrize(
    ("request_", "senders"),
    [
        pytest.param(PostingRequest("e@x.org", "l@x.org"), ("e@x.org",), id="envelope"),
        pytest.param(PostingRequest("", "l@x.org"), ("",), id="null-sender"),
        pytest.param(PostingRequest("e@x.org", "l@x.org", header_senders=("f@x.org", "e@x.org")),
                     ("f@x.org", "e@x.org"), id="headers"),
    ],
)
def test_posting_request_senders(request_: PostingRequest, senders: tuple[str, ...]) -> None:
    """senders is the header senders once known, else the envelope sender."""
    assert request_.senders == senders
