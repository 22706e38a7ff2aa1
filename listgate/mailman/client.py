"""Mailman 3 core's REST API, as typed records: the only module that knows mailmanclient,
httpx and HTTP status codes.

``MailmanClient`` makes the few REST calls listgate needs and returns frozen records;
``listgate.mailman.backend.MailmanBackend`` caches them and assembles the facts the
engine reads.

Invariants:
- Every library error (``urllib.error.HTTPError`` from mailmanclient, httpx transport
  errors and timeouts, malformed JSON) becomes ``BackendUnavailable`` here, with a message
  that names the REST path and never the password. An expected 404 (no such user) is an
  answer, not an error.
- Every call is bounded by ``timeout`` (httpx's per-phase timeouts plus an overall
  ``asyncio.timeout``), well under Postfix's 30 s ``milter_command_timeout``.
- HTTP connections come from one bounded pool (``max_connections``), so a burst of cache
  misses cannot flood Mailman.
- ``members/find`` turns a ``*`` in the subscriber into a SQL LIKE pattern, so a sender
  such as ``*@example.org`` would match every member there. Such an address is first
  looked up exactly (``addresses/<email>``); only if Mailman knows that very address
  (``*`` is legal in a local part, and Mailman matches it exactly when it decides) is
  ``members/find`` asked, and every returned row is kept only if its email equals the
  address asked for. A pattern can never stand in for another member.

Where mailmanclient 3.3.5's ``AsyncClient`` works (``lists()``, ``domains()``), it is
used. Its ``find_members`` sends the filters as a form body on GET, which Mailman
ignores (it always returns ``[]``), and it has no call for bans, users by address or the
system configuration; those calls go through the same client's ``connection.call`` with
the path and query string built here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote, urlencode

import httpx
from mailmanclient.asynclient import AsyncClient

from listgate.decision.rules import Action, ListPolicy
from listgate.errors import BackendUnavailable, ListNotFound

__all__ = [
    "Directory",
    "MailmanClient",
    "MembershipRecord",
    "PolicyRecord",
    "is_lookup_safe",
    "policy_from_config",
]

log = logging.getLogger("listgate.mailman")


@dataclass(frozen=True, slots=True)
class Directory:
    """The lists Mailman serves and how it spells their addresses."""

    lists: Mapping[str, str]
    """``fqdn_listname`` (lower-case) → ``list_id``."""
    alias_domains: Mapping[str, str]
    """``alias_domain`` → ``mail_host``."""
    verp_delimiter: str = "+"

    def to_json(self) -> dict[str, Any]:
        """For persisting the last known directory."""
        return {
            "lists": dict(self.lists),
            "alias_domains": dict(self.alias_domains),
            "verp_delimiter": self.verp_delimiter,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Directory:
        """The inverse of ``to_json``; ``ValueError`` if *data* is not one."""
        lists, aliases = data.get("lists"), data.get("alias_domains")
        delimiter = data.get("verp_delimiter", "+")
        if not isinstance(lists, dict) or not isinstance(aliases, dict):
            raise ValueError("not a listgate directory file")
        if not isinstance(delimiter, str):
            raise ValueError("verp_delimiter must be a string")
        return cls(
            {str(k).lower(): str(v) for k, v in lists.items()},
            {str(k).lower(): str(v).lower() for k, v in aliases.items()},
            delimiter,
        )


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A list's posting policy plus the ban entries that apply to it."""

    policy: ListPolicy
    list_bans: tuple[str, ...]
    """The list's own ban entries (exact addresses and ``^`` patterns)."""


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    """One row of ``members/find``: an address's role on one list."""

    list_id: str
    role: str
    """member, nonmember, owner or moderator."""
    email: str
    moderation_action: Action | None


def is_lookup_safe(address: str) -> bool:
    """Whether *address* can go to Mailman's ``members/find`` as it is: an address with
    ``*`` switches it to a SQL LIKE match (``*`` → ``%``, and ``%``/``_`` become live), so
    it could match other members. Callers look such an address up exactly first, and
    always check that every returned email equals the one asked."""
    return bool(address) and "*" not in address


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def _action(value: object, default: Action) -> Action:
    try:
        return Action(str(value))
    except ValueError:
        return default


def policy_from_config(fqdn: str, list_id: str, cfg: Mapping[str, Any]) -> ListPolicy:
    """A ``ListPolicy`` from ``GET lists/{id}/config``."""
    return ListPolicy(
        posting_address=fqdn,
        list_id=list_id,
        default_member_action=_action(cfg.get("default_member_action"), Action.DEFER),
        default_nonmember_action=_action(cfg.get("default_nonmember_action"), Action.HOLD),
        accept_these_nonmembers=_strings(cfg.get("accept_these_nonmembers")),
        hold_these_nonmembers=_strings(cfg.get("hold_these_nonmembers")),
        reject_these_nonmembers=_strings(cfg.get("reject_these_nonmembers")),
        discard_these_nonmembers=_strings(cfg.get("discard_these_nonmembers")),
        emergency=bool(cfg.get("emergency", False)),
        moderator_password=bool(cfg.get("moderator_password")),
    )


class MailmanClient:
    """The REST calls listgate makes, each returning typed records."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._client = AsyncClient(self._http, self.url, user, password)
        self.calls = 0
        """REST calls made (for the benchmarks and the metrics)."""

    def describe(self) -> str:
        """For logs: the URL, never the credentials."""
        return f"Mailman REST at {self.url}"

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, path: str, *, missing_ok: bool = False) -> Any:
        """GET *path*; the JSON body, None for a 404 when *missing_ok*."""
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                _, content = await self._client.connection.call(path)
        except HTTPError as exc:
            if missing_ok and exc.code == 404:
                return None
            raise BackendUnavailable(
                f"Mailman REST {path.split('?')[0]}: HTTP {exc.code}"
            ) from None
        except TimeoutError:
            raise BackendUnavailable(
                f"Mailman REST {path.split('?')[0]}: no answer within {self.timeout:g} s"
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            raise BackendUnavailable(
                f"Mailman REST {path.split('?')[0]}: {type(exc).__name__}: {exc}"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BackendUnavailable(f"Mailman REST {path.split('?')[0]}: not JSON") from None
        return content

    async def _library(self, what: str, coro: Any) -> Any:
        """Await a mailmanclient call, translating its errors like ``_call``."""
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except HTTPError as exc:
            raise BackendUnavailable(f"Mailman REST {what}: HTTP {exc.code}") from None
        except TimeoutError:
            raise BackendUnavailable(
                f"Mailman REST {what}: no answer within {self.timeout:g} s"
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"Mailman REST {what}: {type(exc).__name__}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
            raise BackendUnavailable(f"Mailman REST {what}: unexpected answer ({exc})") from None

    # ------------------------------------------------------------------ calls

    async def directory(self) -> Directory:
        """Every list, the domains' alias domains and the VERP delimiter (3 calls)."""
        mlists = await self._library("lists", self._client.lists())
        domains = await self._library("domains", self._client.domains())
        mta = await self._call("system/configuration/mta")
        lists: dict[str, str] = {}
        for ml in mlists:
            lists[str(ml.fqdn_listname).lower()] = str(ml.list_id)
        aliases: dict[str, str] = {}
        for dom in domains:
            alias = getattr(dom, "alias_domain", None)  # absent from the JSON when null
            if alias:
                aliases[str(alias).lower()] = str(dom.mail_host).lower()
        delimiter = mta.get("verp_delimiter", "+") if isinstance(mta, dict) else "+"
        return Directory(lists, aliases, str(delimiter))

    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord:
        """The list's config and its ban entries (2 calls)."""
        cfg = await self._call(f"lists/{quote(list_id)}/config", missing_ok=True)
        if cfg is None:
            raise ListNotFound(f"Mailman has no list {fqdn} (deleted?)", list_address=fqdn)
        bans = await self._call(f"lists/{quote(list_id)}/bans")
        if not isinstance(cfg, dict):
            raise BackendUnavailable(f"Mailman REST lists/{list_id}/config: unexpected answer")
        return PolicyRecord(policy_from_config(fqdn, list_id, cfg), _emails(bans))

    async def global_bans(self) -> tuple[str, ...]:
        """The site-wide ban entries (1 call)."""
        return _emails(await self._call("bans"))

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        """Every role *address* holds on any list, directly or as its user's preferred
        address (1 call; none for an address Mailman would read as a pattern)."""
        if not address:
            return ()
        if not is_lookup_safe(address):
            # A '*' would be read as a wildcard: ask first whether Mailman has this exact
            # address at all (a 404 is the common, spam, case: a nonmember).
            known = await self._call(f"addresses/{quote(address, safe='@')}", missing_ok=True)
            if known is None:
                return ()
        query = urlencode({"subscriber": address})
        content = await self._call(f"members/find?{query}")
        records = []
        for entry in content.get("entries", []) if isinstance(content, dict) else []:
            email = str(entry.get("email", "")).lower()
            if email != address:
                continue  # never trust a pattern match
            through_user = entry.get("subscription_mode") == "as_user"
            record = MembershipRecord(
                list_id=str(entry.get("list_id", "")),
                role=str(entry.get("role", "")),
                email=email,
                moderation_action=Action.parse(entry.get("moderation_action")),
            )
            records.append((through_user, record))
        # An address may hold a role on a list twice: directly and through its user (whose
        # preferred address it is). Mailman's roster then uses the direct one
        # (model/roster.py: get_member), so it comes first; members/find sorts by list,
        # email and role only, and leaves the order of the two to the database.
        records.sort(key=lambda pair: pair[0])
        return tuple(record for _, record in records)

    async def linked_addresses(self, address: str) -> tuple[str, ...] | None:
        """The other addresses of the Mailman user that owns *address* (0 to 2 calls);
        None when Mailman's REST API cannot say: it routes ``users/<email>`` by path, and
        answers 404 for any address with a '/' (even written %2F), which is legal in a
        local part."""
        if not address:
            return ()
        if "/" in address:
            return None
        user = await self._call(f"users/{quote(address, safe='@')}", missing_ok=True)
        if not isinstance(user, dict) or not user.get("user_id"):
            return ()
        content = await self._call(f"users/{quote(str(user['user_id']))}/addresses")
        entries = content.get("entries", []) if isinstance(content, dict) else []
        others = {str(e.get("email", "")).lower() for e in entries} - {address, ""}
        return tuple(sorted(others))


def _emails(content: object) -> tuple[str, ...]:
    if not isinstance(content, dict):
        return ()
    return tuple(str(e.get("email", "")) for e in content.get("entries", []) if e.get("email"))
