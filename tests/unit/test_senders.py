"""Other spellings of an envelope sender (listgate.decision.senders.sender_hints), per
mailman-domain.md §5."""

from __future__ import annotations

import pytest

from listgate.decision.senders import sender_hints

HINTS = [
    pytest.param("srs0=hhh=tt=example.com=anne@fwd.example", ("anne@example.com",), id="srs0"),
    pytest.param("SRS0+hhh=tt=Example.com=Anne@fwd.example", ("anne@example.com",),
                 id="srs0-plus-upper"),
    pytest.param("srs1=xxx=fwd1.example==hhh=tt=example.com=anne@fwd2.example",
                 ("anne@example.com",), id="srs1"),
    pytest.param("prvs=1234567890=anne@example.com", ("anne@example.com",), id="batv-prvs"),
    pytest.param("msprvs1=17abc=anne@example.com", ("anne@example.com",), id="batv-msprvs"),
    pytest.param("btv1==0350b9fe9c4==anne@example.com", ("anne@example.com",), id="btv1"),
    pytest.param("anne+lists@example.com", ("anne@example.com",), id="plus-tag"),
    pytest.param("prvs=123=anne+lists@example.com", ("anne+lists@example.com",
                                                     "anne@example.com"), id="batv-and-tag"),
    pytest.param("srs0=h=tt=example.com=anne+x@fwd.example", ("anne+x@example.com",
                                                              "anne@example.com"),
                 id="srs-and-tag"),
    pytest.param("anne@example.com", (), id="plain"),
    pytest.param("+x@example.com", (), id="only-tag"),
    pytest.param("", (), id="null-sender"),
    pytest.param("nobody", (), id="no-at"),
]


@pytest.mark.parametrize(("sender", "expected"), HINTS)
def test_sender_hints(sender: str, expected: tuple[str, ...]) -> None:
    """sender_hints decodes SRS0/SRS1/BATV and strips +tags (in that order), never
    returning the sender itself; other spellings may follow (they can only accept)."""
    hints = sender_hints(sender)
    assert set(expected) <= set(hints)
    assert hints[:1] == expected[:1]
    assert sender not in hints
    assert len(set(hints)) == len(hints)


def test_sender_hints_respect_verp_delimiter() -> None:
    """Tag stripping uses the given delimiter; "" disables it."""
    assert sender_hints("anne-x@example.com", "-") == ("anne@example.com",)
    assert sender_hints("anne+x@example.com", "") == ()
