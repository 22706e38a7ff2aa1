"""Recipient → list resolution, as Mailman's LMTP runner sees it.

Invariants:
- Pure: the caller supplies the ``ListDirectory`` (the set of lists, the alias domains
  and the VERP delimiter); nothing here does I/O.
- ``resolve`` follows ``runners/lmtp.py:split_recipient``: lower-case; map an
  ``alias_domain`` to its ``mail_host``; strip everything from the first VERP delimiter
  ("+") in the local part; a local part that is itself a list is that list's posting
  address (a list may be called ``foo-join``); otherwise ``-bounces``, ``-confirm``,
  ``-join``, ``-leave``, ``-owner``, ``-request``, ``-subscribe`` and ``-unsubscribe``
  name a list's service address, which is never gated.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "SUBADDRESSES",
    "ListDirectory",
    "Resolution",
    "Target",
    "resolve",
]

SUBADDRESSES: frozenset[str] = frozenset(
    {"bounces", "confirm", "join", "leave", "owner", "request", "subscribe", "unsubscribe"}
)
"""Mailman's ``SUBADDRESS_NAMES``: service addresses that never go through the posting chain."""


class Target(enum.Enum):
    """What a recipient address is, for the gate."""

    NOT_A_LIST = "not a list"
    POSTING = "posting address"
    SERVICE = "service address"


@dataclass(frozen=True, slots=True, init=False)
class Resolution:
    """A recipient, resolved (``__init__`` written out, as ``PostingRequest``'s)."""

    target: Target
    list_address: str | None = None
    """The list's posting address (``fqdn_listname``) for POSTING and SERVICE."""
    subaddress: str | None = None
    """``owner``, ``request``, ... for SERVICE."""

    def __init__(self, target: Target, list_address: str | None = None,
                 subaddress: str | None = None) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "list_address", list_address)
        object.__setattr__(self, "subaddress", subaddress)

    @property
    def reason(self) -> str:
        """Why this recipient is or is not gated, for the reason chain."""
        if self.target is Target.POSTING:
            return f"posting address of {self.list_address}"
        if self.target is Target.SERVICE:
            return f"list-{self.subaddress} address of {self.list_address}: not gated"
        return "not a list: not gated"


NOT_A_LIST = Resolution(Target.NOT_A_LIST)


@dataclass(frozen=True, slots=True)
class ListDirectory:
    """The lists a backend knows, and how Mailman spells their addresses."""

    lists: frozenset[str] = field(default_factory=frozenset)
    """Posting addresses (``fqdn_listname``), lower-case."""
    alias_domains: Mapping[str, str] = field(default_factory=dict)
    """``alias_domain`` → ``mail_host``."""
    verp_delimiter: str = "+"
    """Mailman's ``[mta] verp_delimiter``; "" disables stripping."""
    service_addresses: bool = True
    """Whether ``list-owner@`` and friends exist (Mailman lists: yes; a static map: no)."""


def resolve(recipient: str, directory: ListDirectory) -> Resolution:
    """Which list, if any, *recipient* (already bracket-free) addresses, and how."""
    address = recipient.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return NOT_A_LIST
    domain = directory.alias_domains.get(domain, domain)
    if directory.verp_delimiter:
        local = local.split(directory.verp_delimiter, 1)[0]
        if not local:
            return NOT_A_LIST
    whole = f"{local}@{domain}"
    if whole in directory.lists:
        return Resolution(Target.POSTING, whole)
    if directory.service_addresses:
        name, dash, sub = local.rpartition("-")
        if dash and name and sub in SUBADDRESSES:
            owner = f"{name}@{domain}"
            if owner in directory.lists:
                return Resolution(Target.SERVICE, owner, sub)
    return NOT_A_LIST
