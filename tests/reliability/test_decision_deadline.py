"""One decision, however many REST calls it needs, is bounded by the Mailman timeout.

A decision for a list recipient may need several REST calls in a row (the list's config
and bans, the site's bans, the sender's memberships, its user's addresses), each bounded
by ``mailman.timeout``. Against a Mailman that accepts and never answers, with every
cached fact expired, that used to add up: 5 calls x the timeout (25 s with the default
5 s, past Postfix's 30 s with a 6 s timeout), before the stale entries were served.
Two things bound it now: the lookup fetches the expired facts side by side (it scouts,
``listgate.facts.lookup``), and ``MailmanBackend(deadline=...)`` (what the daemon builds,
with ``mailman.timeout``) answers at the deadline from the cache, stale entries included,
or fails with the list named; the fetches finish in the background. A fake REST source
with a real clock.
"""

from __future__ import annotations

import asyncio
import time

from listgate.config import CacheConfig
from listgate.decision.engine import ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import PostingRequest, Verdict
from listgate.decision.rules import Action, ListPolicy
from listgate.errors import BackendUnavailable
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import Directory, MembershipRecord, PolicyRecord

LIST, LIST_ID = "list@example.org", "list.example.org"
MEMBER, OUTSIDER = "member@example.com", "outsider@example.net"
CALL_TIMEOUT = 0.3
SETTINGS = CacheConfig(ttl=0.05, negative_ttl=0.05, policy_ttl=0.05, directory_ttl=0.05,
                         stale_if_error=600)


class HangingSource:
    """A REST source whose every call takes *delay* s (hung past CALL_TIMEOUT: fails)."""

    calls = 0

    def __init__(self) -> None:
        self.hung = False

    async def _call(self) -> None:
        self.calls += 1
        if self.hung:
            await asyncio.sleep(CALL_TIMEOUT)
            raise BackendUnavailable(f"no answer within {CALL_TIMEOUT} s")

    async def directory(self) -> Directory:
        await self._call()
        return Directory({LIST: LIST_ID}, {})

    async def policy(self, fqdn: str, list_id: str) -> PolicyRecord:
        await self._call()
        await self._call()  # config, then bans: two calls, as MailmanClient makes
        return PolicyRecord(ListPolicy(LIST, LIST_ID, default_nonmember_action=Action.REJECT),
                            ())

    async def global_bans(self) -> tuple[str, ...]:
        await self._call()
        return ()

    async def memberships(self, address: str) -> tuple[MembershipRecord, ...]:
        await self._call()
        if address == MEMBER:
            return (MembershipRecord(LIST_ID, "member", MEMBER, None),)
        return ()

    async def linked_addresses(self, address: str) -> tuple[str, ...] | None:
        await self._call()
        return ()

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return "hanging fake"


async def _timed(gate: Gate, sender: str) -> tuple[Verdict, str | None, float]:
    began = time.monotonic()
    d = await gate.decide(PostingRequest(sender, LIST))
    return d.verdict, d.smtp_reply, time.monotonic() - began


def _run(deadline: float | None) -> dict[str, tuple[Verdict, str | None, float]]:
    async def go() -> dict[str, tuple[Verdict, str | None, float]]:
        source = HangingSource()
        backend = MailmanBackend(source, SETTINGS, deadline=deadline)
        gate = Gate(backend, ReplyTexts())
        assert (await _timed(gate, MEMBER))[0] is Verdict.ACCEPT
        assert (await _timed(gate, OUTSIDER))[0] is Verdict.REJECT
        await asyncio.sleep(0.1)  # every fact expired
        source.hung = True
        out = {
            "member": await _timed(gate, MEMBER),
            "outsider": await _timed(gate, OUTSIDER),
            "newcomer": await _timed(gate, "new@example.net"),
        }
        await asyncio.sleep(CALL_TIMEOUT * 3)  # background fetches end (failed)
        assert not any(c._inflight for c in backend.keys.caches)
        return out

    return asyncio.run(go())


def test_without_a_deadline_the_calls_no_longer_add_up() -> None:
    """No deadline: an expired outsider's facts are fetched again side by side (the
    lookup scouts), so the stale verdict comes after about one call's timeout, not after
    the 4-5 in a row it took before."""
    got = _run(None)
    assert got["outsider"][0] is Verdict.REJECT
    assert CALL_TIMEOUT <= got["outsider"][2] < 2 * CALL_TIMEOUT, got


def test_deadline_bounds_every_decision_and_stale_is_served() -> None:
    """With deadline = the REST timeout: stale verdicts (member accept, outsider reject)
    and a tempfail naming the list for a sender never seen, each within the deadline."""
    got = _run(CALL_TIMEOUT)
    assert got["member"][0] is Verdict.ACCEPT
    assert got["outsider"][0] is Verdict.REJECT
    verdict, reply, _ = got["newcomer"]
    assert verdict is Verdict.TEMPFAIL
    assert reply is not None
    assert reply.startswith("451 4.3.0 ")
    assert f"<{LIST}>" in reply
    for name, (_, _, took) in got.items():
        assert took < CALL_TIMEOUT + 0.15, (name, got)
