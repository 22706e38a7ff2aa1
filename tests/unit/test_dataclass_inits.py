"""The dataclasses whose ``__init__`` is written out by hand (per-session values of the
compiled core and milter messages: mypyc compiles a written ``__init__``, not the one
``dataclasses`` generates) take exactly their fields, in order, with the fields' defaults, and store
each argument in its own field, on the compiled build and from the sources alike."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from support import source_modules

from listgate.decision.model import Decision, Evidence, PostingRequest, Verdict
from listgate.decision.recipients import Resolution, Target
from listgate.decision.rules import Action, Membership, Outcome, SenderFacts
from listgate.frontends.milter import AuthStage, MilterTransaction
from listgate.frontends.policy import PolicyAnswer
from listgate.milter.messages import EnvelopeFrom, EnvelopeRecipient, Negotiate, ReplyCode
from listgate.policyd.codec import PolicyRequest

SAMPLES: dict[type[Any], dict[str, Any]] = {
    PostingRequest: {
        "sender": "a@example.com", "recipient": "list@example.org",
        "client_address": "192.0.2.1", "queue_id": "4Q1", "auth_user": "alice",
        "header_senders": ("h@example.com",), "list_posts": ("<list@example.org>",),
        "evidence": Evidence(helo="mx.example.com"),
    },
    Evidence: {
        "helo": "mx.example.com", "header_from": ("h@example.com",),
        "auth_results": ("mx.example.org; spf=pass",), "message": b"x", "more": True,
    },
    PolicyAnswer: {"action": "DUNNO", "note": "why"},
    Decision: {
        "verdict": Verdict.REJECT, "smtp_code": 550, "dsn": "5.7.1", "text": "no",
        "reasons": ("why",), "list_address": "list@example.org", "provisional": True,
        "awaits_proof": True,
    },
    Resolution: {"target": Target.SERVICE, "list_address": "list@example.org",
                 "subaddress": "owner"},
    Outcome: {"action": Action.HOLD, "reasons": ("held",), "never_reject": True},
    SenderFacts: {
        "address": "a@example.com", "member": Membership("a@example.com"),
        "nonmember_action": Action.ACCEPT, "banned": True,
        "member_of": frozenset({"other@example.org"}), "unverifiable": "why",
        "proven": False,
    },
    EnvelopeFrom: {"sender": "<a@example.com>", "args": ("SIZE=10",)},
    EnvelopeRecipient: {"recipient": "<list@example.org>", "args": ("NOTIFY=NEVER",)},
    Negotiate: {"version": 6, "actions": 0x1FF, "protocol": 0x1FFFFF},
    ReplyCode: {"code": 451, "dsn": "4.7.1", "text": "try later"},
    PolicyRequest: {
        "request": "smtpd_access_policy", "protocol_state": "RCPT",
        "sender": "a@example.com", "recipient": "list@example.org",
        "client_address": "192.0.2.1", "queue_id": "4Q1", "sasl_username": "alice",
        "instance": "1.2.3", "attributes": {"size": "10"},
    },
    MilterTransaction: {
        "sender": "a@example.com", "auth_user": "alice", "client_address": "192.0.2.1",
        "accepted": 2, "pending": PostingRequest("a@example.com", "list@example.org"),
        "recheck": PostingRequest("b@example.com", "list@example.org"),
        "headers": [("From", "a@example.com")], "auth": AuthStage.HEADERS,
        "max_message": 1234, "helo": "mx.example.com", "awaits_message": True,
        "message": bytearray(b"x"), "message_size": 1, "in_body": True,
    },
}

_MODULE_OF = {cls: cls.__module__ for cls in SAMPLES}


def _source_class(cls: type[Any]) -> type[Any]:
    """*cls* as run from its ``.py`` source (a compiled ``__init__`` has no signature)."""
    module = source_modules(_MODULE_OF[cls])[_MODULE_OF[cls]]
    found: type[Any] = getattr(module, cls.__name__)
    return found


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_init_parameters_are_the_fields_with_their_defaults(cls: type[Any]) -> None:
    """One parameter per field, in field order, each with the field's default (None for a
    default factory, which the ``__init__`` then calls)."""
    source = _source_class(cls)
    params = list(inspect.signature(source.__init__).parameters.values())[1:]
    fields = dataclasses.fields(source)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert param.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert param.default is None, f.name
        else:
            assert param.default is inspect.Parameter.empty, f.name


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_init_stores_each_argument_in_its_field(cls: type[Any]) -> None:
    """Values unlike every default, passed by keyword, come back from their own fields;
    ``dataclasses.replace`` and equality still work."""
    sample = SAMPLES[cls]
    fields = dataclasses.fields(cls)
    assert set(sample) == {f.name for f in fields}
    for f in fields:
        assert f.default is dataclasses.MISSING or sample[f.name] != f.default, f.name
    value = cls(**sample)
    assert {f.name: getattr(value, f.name) for f in fields} == sample
    assert value == cls(**sample)
    first = fields[0].name
    assert getattr(dataclasses.replace(value, **{first: sample[first]}), first) == sample[first]


@pytest.mark.parametrize("cls", [c for c in SAMPLES if c is not MilterTransaction],
                         ids=lambda c: c.__name__)
def test_frozen_ones_stay_frozen(cls: type[Any]) -> None:
    """Assigning to a field of a frozen one still fails, and equal values hash alike."""
    value = cls(**SAMPLES[cls])
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, getattr(value, first))
    assert hash(value) == hash(dataclasses.replace(value))


def test_default_factory_gives_each_transaction_its_own_list() -> None:
    """Two transactions made without ``headers`` do not share one list, a sender's
    ``member_of`` defaults to the empty set and a policy request's ``attributes`` to an
    empty read-only mapping."""
    one, two = MilterTransaction(), MilterTransaction()
    one.headers.append(("From", "a@example.com"))
    assert two.headers == []
    assert SenderFacts("a@example.com").member_of == frozenset()
    attributes = PolicyRequest().attributes
    assert dict(attributes) == {}
    with pytest.raises(TypeError):
        attributes["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(("code", "dsn"), [(250, None), (550, "4.7.1"), (451, "4.7"), (550, "x")])
def test_reply_code_init_still_refuses_what_is_no_reply(code: int, dsn: str | None) -> None:
    """The written-out ``ReplyCode.__init__`` keeps the checks: 4xx/5xx only, a DSN that
    looks like one and agrees with the code."""
    from listgate.milter.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        ReplyCode(code, dsn, "text")
