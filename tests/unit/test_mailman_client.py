"""The REST client's own rules that need no Mailman (listgate.mailman.client)."""

from __future__ import annotations

import pytest

from listgate.mailman.client import is_lookup_safe


@pytest.mark.parametrize(
    ("address", "safe"),
    [
        pytest.param("anne@example.com", True, id="plain"),
        pytest.param("*@example.com", False, id="star"),
        pytest.param("a*b@example.com", False, id="star-inside"),
        pytest.param("", False, id="null-sender"),
        pytest.param("a%b_c@example.com", True, id="like-chars-without-star"),
    ],
)
def test_is_lookup_safe(address: str, safe: bool) -> None:
    """An address with '*' (LIKE mode in members/find, §3.1) or "" is never looked up."""
    assert is_lookup_safe(address) is safe
