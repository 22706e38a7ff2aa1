"""The Mailman backend against a real Mailman 3 core: recipient resolution and Mailman's
posting rules, each decided end to end by ``Gate(MailmanBackend(MailmanClient(...)))``.

Truth: Mailman 3.3.10's behaviour as written down in /work/shared/reference/mailman-domain.md
(§1 posting chain, §2 recipients, §5 edge cases); where cheap, Mailman's own
``_find_sender_member`` (``MailmanCore.sender_member``) or its ban endpoint is asked too.
Nothing of Mailman is faked or replaced.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from mailman_harness import MailmanCore
from mailmanclient.restobjects.mailinglist import MailingList

from listgate.config import CacheConfig
from listgate.decision.engine import HoldPolicy, ListOverrides, ReplyTexts
from listgate.decision.gate import Gate
from listgate.decision.model import Decision, PostingRequest, Verdict
from listgate.mailman.backend import MailmanBackend
from listgate.mailman.client import MailmanClient

ACCEPT, REJECT, TEMPFAIL = Verdict.ACCEPT, Verdict.REJECT, Verdict.TEMPFAIL


# --------------------------------------------------------------------------- helpers


def gate_for(
    core: MailmanCore,
    overrides: Mapping[str, ListOverrides] | None = None,
    *,
    directory_file: Path | None = None,
) -> Gate:
    """A gate over a fresh cached Mailman backend (build it inside the event loop)."""
    source = MailmanClient(core.url, core.user, core.password)
    backend = MailmanBackend(source, CacheConfig(), directory_file=directory_file)
    return Gate(backend, ReplyTexts(), overrides=overrides)


def decide(
    core: MailmanCore,
    pairs: Sequence[tuple[str, str]],
    overrides: Mapping[str, ListOverrides] | None = None,
    *,
    directory_file: Path | None = None,
) -> list[Decision]:
    """Decide each (sender, recipient) in turn with one gate, in one event loop."""

    async def run() -> list[Decision]:
        gate = gate_for(core, overrides, directory_file=directory_file)
        try:
            return [await gate.decide(PostingRequest(s, r)) for s, r in pairs]
        finally:
            await gate.backend.aclose()

    return asyncio.run(run())


def verdicts(
    core: MailmanCore,
    ml: MailingList | str,
    senders: Sequence[str],
    overrides: ListOverrides | None = None,
) -> dict[str, Verdict]:
    """sender -> verdict for a post from each sender to *ml*'s posting address."""
    fqdn = ml if isinstance(ml, str) else ml.fqdn_listname
    decisions = decide(
        core, [(s, fqdn) for s in senders], {fqdn: overrides} if overrides else None
    )
    return {s: d.verdict for s, d in zip(senders, decisions, strict=True)}


def reject_list(core: MailmanCore, ml: MailingList, **settings: object) -> MailingList:
    """Make *ml* reject nonmembers (plus any further *settings*)."""
    core.set_settings(ml, default_nonmember_action="reject", **settings)
    return ml


@pytest.fixture
def uid() -> str:
    """A per-test token: Mailman users and addresses outlive the lists, so tests that link
    addresses or ban them use addresses no other test uses."""
    return secrets.token_hex(3)


@pytest.fixture
def other_list(mailman_core: MailmanCore) -> Iterator[MailingList]:
    """A second fresh list, deleted after the test."""
    ml = mailman_core.new_list()
    try:
        yield ml
    finally:
        mailman_core.delete_list(ml)


# --------------------------------------------------------------------------- recipients


def test_recipient_is_lowercased(mailman_core: MailmanCore, mlist: MailingList) -> None:
    """An upper-case spelling of the posting address is gated as that list (§2: lowercased)."""
    reject_list(mailman_core, mlist)
    shout = mlist.fqdn_listname.upper()
    (d,) = decide(mailman_core, [("stranger@example.net", shout)])
    assert d.verdict is REJECT
    assert d.list_address == mlist.fqdn_listname
    assert d.smtp_reply is not None
    assert d.smtp_reply.startswith("550 5.7.1 ")


def test_plus_suffix_is_the_posting_address(
    mailman_core: MailmanCore, mlist: MailingList
) -> None:
    """list+anything@domain posts to the list (verp_delimiter stripped), so it is gated."""
    reject_list(mailman_core, mlist)
    name, domain = mlist.list_name, mlist.mail_host
    recipients = [f"{name}+anything@{domain}", f"{name}+@{domain}", f"{name}+a+b-join@{domain}"]
    for d in decide(mailman_core, [("stranger@example.net", r) for r in recipients]):
        assert d.verdict is REJECT
        assert d.list_address == mlist.fqdn_listname


def test_service_addresses_are_never_gated(
    mailman_core: MailmanCore, mlist: MailingList
) -> None:
    """-bounces, -confirm, -join, -leave, -owner, -request, -subscribe, -unsubscribe (with
    and without +suffix) are the list's service addresses: accepted for anyone (§2)."""
    reject_list(mailman_core, mlist)
    name, domain = mlist.list_name, mlist.mail_host
    subs = ["bounces", "confirm", "join", "leave", "owner", "request", "subscribe", "unsubscribe"]
    cases = [(sub, f"{name}-{sub}{tag}@{domain}") for sub in subs for tag in ("", "+x=y.z")]
    decisions = decide(mailman_core, [("stranger@example.net", r) for _, r in cases])
    for (sub, rcpt), d in zip(cases, decisions, strict=True):
        assert d.verdict is ACCEPT, rcpt
        assert d.list_address == mlist.fqdn_listname, rcpt
        assert d.reasons == (f"list-{sub} address of {mlist.fqdn_listname}: not gated",), rcpt


def test_list_named_like_a_service_address_is_gated(
    mailman_core: MailmanCore, mlist: MailingList
) -> None:
    """If <name>-join is itself a list, <name>-join@ is its posting address and is gated;
    <name>-join-request@ is that list's service address; <name>-leave@ stays a service one."""
    joiner = mailman_core.new_list(
        {"default_nonmember_action": "reject"}, name=f"{mlist.list_name}-join"
    )
    try:
        reject_list(mailman_core, mlist)
        domain = mlist.mail_host
        join, join_req, leave = (
            joiner.fqdn_listname,
            f"{mlist.list_name}-join-request@{domain}",
            f"{mlist.list_name}-leave@{domain}",
        )
        d_join, d_join_tag, d_req, d_leave = decide(
            mailman_core,
            [
                ("stranger@example.net", join),
                ("stranger@example.net", f"{mlist.list_name}-join+x@{domain}"),
                ("stranger@example.net", join_req),
                ("stranger@example.net", leave),
            ],
        )
        assert (d_join.verdict, d_join.list_address) == (REJECT, join)
        assert (d_join_tag.verdict, d_join_tag.list_address) == (REJECT, join)
        assert (d_req.verdict, d_req.list_address) == (ACCEPT, join)
        assert (d_leave.verdict, d_leave.list_address) == (ACCEPT, mlist.fqdn_listname)
    finally:
        mailman_core.delete_list(joiner)


def test_alias_domain_maps_to_mail_host(mailman_core: MailmanCore, rest: httpx.Client) -> None:
    """list@alias_domain is the list at its mail_host: gated; its service addresses are not."""
    host, alias = "lg-lists.example.net", "lg-alias.example.net"
    mailman_core.create_domain(host, alias_domain=alias)
    ml = mailman_core.new_list({"default_nonmember_action": "reject"}, domain=host)
    try:
        post, post_tag, owner = decide(
            mailman_core,
            [
                ("stranger@example.net", f"{ml.list_name}@{alias}"),
                ("stranger@example.net", f"{ml.list_name}+x@{alias.upper()}"),
                ("stranger@example.net", f"{ml.list_name}-owner@{alias}"),
            ],
        )
        assert (post.verdict, post.list_address) == (REJECT, ml.fqdn_listname)
        assert (post_tag.verdict, post_tag.list_address) == (REJECT, ml.fqdn_listname)
        assert (owner.verdict, owner.list_address) == (ACCEPT, ml.fqdn_listname)
    finally:
        mailman_core.delete_list(ml)
        rest.delete(f"domains/{host}").raise_for_status()


def test_non_list_address_passes_untouched(
    mailman_core: MailmanCore, mlist: MailingList
) -> None:
    """An address that is not a list is accepted from the directory alone: no list, no
    policy or membership lookup (only the directory's own 3 REST calls)."""
    reject_list(mailman_core, mlist)
    name, domain = mlist.list_name, mlist.mail_host

    async def run() -> tuple[list[Decision], int]:
        gate = gate_for(mailman_core)
        try:
            decisions = [
                await gate.decide(PostingRequest("stranger@example.net", r))
                for r in (
                    f"nobody-{name}@{domain}",
                    f"{name}@elsewhere.example",
                    f"{name}-bogus@{domain}",
                    f"x{name}@{domain}",
                )
            ]
            return decisions, gate.backend.source.calls  # type: ignore[attr-defined]
        finally:
            await gate.backend.aclose()

    decisions, calls = asyncio.run(run())
    for d in decisions:
        assert d.verdict is ACCEPT
        assert d.list_address is None
        assert d.reasons == ("not a list: not gated",)
    assert calls == 3


def test_directory_file_knows_lists_while_mailman_is_stopped(
    mailman_core: MailmanCore, mlist: MailingList, tmp_path: Path
) -> None:
    """The set of lists is persisted to directory_file; a backend started while Mailman is
    down still knows which addresses are lists: those tempfail, the others pass."""
    reject_list(mailman_core, mlist)
    path = tmp_path / "state" / "lists.json"
    (d,) = decide(mailman_core, [("stranger@example.net", mlist.fqdn_listname)],
                  directory_file=path)
    assert d.verdict is REJECT
    assert mlist.fqdn_listname in path.read_text()

    mailman_core.stop()
    name, domain = mlist.list_name, mlist.mail_host
    post, post_tag, owner, nolist = decide(
        mailman_core,
        [
            ("member@example.com", mlist.fqdn_listname),
            ("member@example.com", f"{name}+x@{domain}"),
            ("member@example.com", f"{name}-owner@{domain}"),
            ("member@example.com", f"someone@{domain}"),
        ],
        directory_file=path,
    )
    for tempfailed in (post, post_tag):
        assert tempfailed.verdict is TEMPFAIL
        assert tempfailed.list_address == mlist.fqdn_listname
        assert tempfailed.smtp_reply is not None
        assert tempfailed.smtp_reply.startswith("451 4.3.0 ")
        assert mlist.fqdn_listname in tempfailed.smtp_reply
    assert (owner.verdict, owner.list_address) == (ACCEPT, mlist.fqdn_listname)
    assert (nolist.verdict, nolist.list_address) == (ACCEPT, None)


# --------------------------------------------------------------------------- members


def test_members_may_post(mailman_core: MailmanCore, mlist: MailingList, uid: str) -> None:
    """A subscribed member posts to a list that rejects nonmembers; a stranger does not."""
    reject_list(mailman_core, mlist)
    mailman_core.subscribe(mlist, f"Anne-{uid}@Example.com")
    assert verdicts(mailman_core, mlist, [f"anne-{uid}@example.com", f"eve-{uid}@example.com"]) == {
        f"anne-{uid}@example.com": ACCEPT,
        f"eve-{uid}@example.com": REJECT,
    }


def test_users_linked_address_may_post(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """A user's other (linked) address counts as the member, both ways round (§1.4 step 2),
    as Mailman's own _find_sender_member agrees."""
    reject_list(mailman_core, mlist)
    frank, frank_alt = f"frank-{uid}@example.com", f"frank-{uid}@alt.example.net"
    gina, gina_alt = f"gina-{uid}@example.com", f"gina-{uid}@alt.example.net"
    mailman_core.subscribe(mlist, frank)
    mailman_core.link_address(frank, frank_alt)
    mailman_core.link_address(gina, gina_alt)
    mailman_core.subscribe(mlist, gina_alt)
    stranger = f"stranger-{uid}@alt.example.net"

    senders = [frank_alt, gina, stranger]
    assert verdicts(mailman_core, mlist, senders) == {
        frank_alt: ACCEPT,
        gina: ACCEPT,
        stranger: REJECT,
    }
    (d,) = decide(mailman_core, [(frank_alt, mlist.fqdn_listname)])
    assert "other address" in d.reasons[0]
    assert mailman_core.sender_member(mlist, *senders) == {
        frank_alt: frank,
        gina: gina_alt,
        stranger: None,
    }


def test_member_determination_agrees_with_mailman(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """For members, linked addresses, owners, moderators and a '*' sender, listgate admits
    exactly the senders Mailman's _find_sender_member counts as members (one oracle call)."""
    reject_list(mailman_core, mlist)
    member = f"m-{uid}@example.org"
    linked = f"m-{uid}@linked.example"
    owner, moderator = f"own-{uid}@example.org", f"mod-{uid}@example.org"
    both = f"both-{uid}@example.org"
    mailman_core.subscribe(mlist, member)
    mailman_core.link_address(member, linked)
    mailman_core.add_owner(mlist, owner)
    mailman_core.add_moderator(mlist, moderator)
    mailman_core.add_owner(mlist, both)
    mailman_core.subscribe(mlist, both)
    senders = [member, linked, owner, moderator, both, "*@example.org", f"*-{uid}@example.org"]

    mailman = mailman_core.sender_member(mlist, *senders)
    ours = verdicts(mailman_core, mlist, senders)
    assert {s: (mailman[s] is not None) for s in senders} == {
        s: ours[s] is ACCEPT for s in senders
    }
    assert [s for s in senders if ours[s] is ACCEPT] == [member, linked, both]


def test_owner_and_moderator_not_subscribed_are_nonmembers(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """Owners and moderators who are not subscribed are nonmembers (§1.5): rejected on a
    list whose nonmember action is reject, despite their role rows' moderation_action."""
    reject_list(mailman_core, mlist)
    owner, moderator = f"owner-{uid}@example.org", f"mod-{uid}@example.org"
    mailman_core.add_owner(mlist, owner)
    mailman_core.add_moderator(mlist, moderator)
    assert verdicts(mailman_core, mlist, [owner, moderator]) == {owner: REJECT, moderator: REJECT}


def test_subscribed_owner_posts(mailman_core: MailmanCore, mlist: MailingList, uid: str) -> None:
    """An owner who is also subscribed as a member posts as that member."""
    reject_list(mailman_core, mlist)
    owner = f"owner-{uid}@example.org"
    mailman_core.add_owner(mlist, owner)
    mailman_core.subscribe(mlist, owner)
    assert verdicts(mailman_core, mlist, [owner]) == {owner: ACCEPT}


@pytest.mark.parametrize(
    ("default_member_action", "expected"),
    [
        ("defer", {"reject": REJECT, "discard": REJECT, "hold": ACCEPT, "defer": ACCEPT,
                   "accept": ACCEPT, None: ACCEPT}),
        ("reject", {"accept": ACCEPT, "defer": ACCEPT, None: REJECT}),
        ("discard", {"hold": ACCEPT, None: REJECT}),
        ("hold", {"discard": REJECT, None: ACCEPT}),
    ],
)
def test_member_moderation_action(
    mailman_core: MailmanCore,
    mlist: MailingList,
    uid: str,
    default_member_action: str,
    expected: dict[str | None, Verdict],
) -> None:
    """A member's own moderation_action decides (reject/discard reject; hold/defer/accept
    accept); a member without one falls back to default_member_action (§1.4)."""
    reject_list(mailman_core, mlist, default_member_action=default_member_action)
    senders = {}
    for action in expected:
        email = f"m-{action or 'none'}-{uid}@example.com"
        mailman_core.subscribe(mlist, email, moderation_action=action)
        senders[email] = expected[action]
    assert verdicts(mailman_core, mlist, list(senders)) == senders


# --------------------------------------------------------------------------- bans


def test_list_and_global_bans_reject(
    mailman_core: MailmanCore, mlist: MailingList, other_list: MailingList, uid: str,
    rest: httpx.Client,
) -> None:
    """List and global bans, exact and ^pattern, reject even members (Mailman discards);
    each verdict matches Mailman's own lists/<id>/bans/<email> answer."""
    mailman_core.set_settings(mlist, default_nonmember_action="accept")
    eve, gone = f"eve-{uid}@example.com", f"gone-{uid}@example.net"
    troll, spammer = f"troll{uid}1@example.com", f"spam{uid}x@example.com"
    member = f"m-{uid}@example.com"
    mailman_core.subscribe(mlist, eve)  # a banned member is still refused
    mailman_core.subscribe(mlist, member)
    mailman_core.ban(mlist, eve)
    mailman_core.ban(mlist, f"^troll{uid}[0-9]+@")
    mailman_core.ban(None, gone)
    mailman_core.ban(None, f"^spam{uid}")
    try:
        senders = [eve, troll, gone, spammer, member]
        ours = verdicts(mailman_core, mlist, senders)
        assert ours == {eve: REJECT, troll: REJECT, gone: REJECT, spammer: REJECT, member: ACCEPT}
        for s in senders:
            banned = rest.get(f"lists/{mlist.list_id}/bans/{s}").status_code == 200
            assert banned is (ours[s] is REJECT), s
        # Another list: only the global bans apply.
        mailman_core.set_settings(other_list, default_nonmember_action="accept")
        assert verdicts(mailman_core, other_list, senders) == {
            eve: ACCEPT, troll: ACCEPT, gone: REJECT, spammer: REJECT, member: ACCEPT
        }
    finally:
        mailman_core.unban(None, gone)
        mailman_core.unban(None, f"^spam{uid}")


def test_ban_exact_entries_are_case_sensitive(
    mailman_core: MailmanCore, mlist: MailingList, uid: str, rest: httpx.Client
) -> None:
    """Exact ban entries compare case-sensitively with the lower-cased sender, so a mixed-case
    entry bans nobody; ^patterns match case-insensitively (§1.7, §1.9)."""
    mailman_core.set_settings(mlist, default_nonmember_action="accept")
    mailman_core.ban(mlist, f"Dora-{uid}@Example.com")
    mailman_core.ban(mlist, f"^TROLL-{uid}@")
    dora, troll = f"dora-{uid}@example.com", f"troll-{uid}@example.com"
    ours = verdicts(mailman_core, mlist, [dora, troll])
    assert ours == {dora: ACCEPT, troll: REJECT}
    for s in (dora, troll):
        banned = rest.get(f"lists/{mlist.list_id}/bans/{s}").status_code == 200
        assert banned is (ours[s] is REJECT), s


# --------------------------------------------------------------------------- nonmembers


@pytest.mark.parametrize(
    ("action", "expected"),
    [("accept", ACCEPT), ("defer", ACCEPT), ("hold", ACCEPT), ("reject", REJECT),
     ("discard", REJECT)],
)
def test_default_nonmember_action(
    mailman_core: MailmanCore, mlist: MailingList, action: str, expected: Verdict
) -> None:
    """With no record action and no list entry, default_nonmember_action decides."""
    mailman_core.set_settings(mlist, default_nonmember_action=action)
    assert verdicts(mailman_core, mlist, ["stranger@example.net"]) == {
        "stranger@example.net": expected
    }


def test_nonmember_record_action_beats_legacy_lists(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """A nonmember record's own moderation_action wins over *_these_nonmembers and the
    default (3.3.6, #978); a record without one falls through to the lists."""
    fan, foe, plain, deferred = (f"{n}-{uid}@partner.example" for n in
                                 ("fan", "foe", "plain", "deferred"))
    reject_list(
        mailman_core, mlist,
        reject_these_nonmembers=[fan, deferred],
        accept_these_nonmembers=[foe, plain],
    )
    mailman_core.add_nonmember(mlist, fan, "accept")
    mailman_core.add_nonmember(mlist, deferred, "defer")
    mailman_core.add_nonmember(mlist, foe, "discard")
    mailman_core.add_nonmember(mlist, plain, None)
    nobody = f"nobody-{uid}@partner.example"
    mailman_core.add_nonmember(mlist, nobody, None)
    assert verdicts(mailman_core, mlist, [fan, deferred, foe, plain, nobody]) == {
        fan: ACCEPT,  # record accept beats the reject entry
        deferred: ACCEPT,  # record defer: no opinion, accepted
        foe: REJECT,  # record discard beats the accept entry
        plain: ACCEPT,  # no record action: accept_these_nonmembers
        nobody: REJECT,  # no record action, no entry: default reject
    }


def test_these_nonmembers_exact_entries_case_sensitive(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """Exact accept/hold/reject/discard_these_nonmembers entries match the lower-cased sender
    exactly: a mixed-case entry matches nobody (§1.5, verified)."""
    dora, hank, rex, dick = (f"{n}-{uid}@example.com" for n in ("dora", "hank", "rex", "dick"))
    mailman_core.set_settings(
        mlist,
        default_nonmember_action="reject",
        accept_these_nonmembers=[f"Dora-{uid}@Example.com", f"x{dora}", f"{dora}x"],
        hold_these_nonmembers=[hank],
    )
    assert verdicts(mailman_core, mlist, [dora, hank]) == {dora: REJECT, hank: ACCEPT}
    mailman_core.set_settings(
        mlist,
        default_nonmember_action="hold",
        accept_these_nonmembers=[],
        reject_these_nonmembers=[rex, f"Hank-{uid}@example.com"],
        discard_these_nonmembers=[dick],
    )
    assert verdicts(mailman_core, mlist, [rex, dick, hank]) == {
        rex: REJECT, dick: REJECT, hank: ACCEPT,
    }


def test_these_nonmembers_regex_entries(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """^regex entries use re.match: anchored at the start only, case-sensitive (an upper-case
    pattern never matches); accept is tried before hold, hold before reject/discard."""
    mailman_core.set_settings(
        mlist,
        default_nonmember_action="reject",
        accept_these_nonmembers=[r"^.*@partner\.example", f"^[A-Z]+-{uid}@"],
        reject_these_nonmembers=[r"^.*@partner\.example$"],
        hold_these_nonmembers=[r"^hold-"],
        discard_these_nonmembers=[r"^hold-x"],
    )
    senders = {
        f"a-{uid}@partner.example": ACCEPT,  # accept before reject
        f"a-{uid}@partner.example.evil.net": ACCEPT,  # start-anchored only
        f"a-{uid}@sub.partner.example": REJECT,  # "@partner" must follow directly
        f"zz-{uid}@example.com": REJECT,  # upper-case pattern vs lower-cased sender
        f"x-{uid}@partner.examplx": REJECT,
        f"hold-x-{uid}@example.com": ACCEPT,  # hold before discard
        f"xhold-{uid}@example.com": REJECT,  # re.match does not search
    }
    assert verdicts(mailman_core, mlist, list(senders)) == senders


def test_at_list_reference_admits_other_lists_members(
    mailman_core: MailmanCore, mlist: MailingList, other_list: MailingList, uid: str
) -> None:
    """'@other@domain' in accept_these_nonmembers admits the exact members of that list
    (not their linked addresses, not its owners); elsewhere such an entry is ignored (§1.5)."""
    member, owner = f"om-{uid}@example.com", f"oo-{uid}@example.com"
    linked = f"om-{uid}@linked.example"
    mailman_core.subscribe(other_list, member)
    mailman_core.link_address(member, linked)
    mailman_core.add_owner(other_list, owner)
    ref = f"@{other_list.fqdn_listname}"
    reject_list(mailman_core, mlist, accept_these_nonmembers=[ref])
    senders = [member, linked, owner, f"x-{uid}@example.com"]
    assert verdicts(mailman_core, mlist, senders) == {
        member: ACCEPT, linked: REJECT, owner: REJECT, f"x-{uid}@example.com": REJECT,
    }
    mailman_core.set_settings(
        mlist,
        default_nonmember_action="hold",
        accept_these_nonmembers=[],
        reject_these_nonmembers=[ref],
        discard_these_nonmembers=[ref],
    )
    assert verdicts(mailman_core, mlist, [member]) == {member: ACCEPT}


# --------------------------------------------------------------------------- list-wide


def test_hold_accepted_by_default_rejected_when_configured(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """What Mailman would hold (nonmember default hold, a member's hold action) is accepted,
    and rejected under ListOverrides(hold=HoldPolicy.REJECT)."""
    held = f"held-{uid}@example.com"
    mailman_core.subscribe(mlist, held, moderation_action="hold")
    senders = [held, "stranger@example.net", f"m-{uid}@example.com"]
    mailman_core.subscribe(mlist, senders[2])
    assert verdicts(mailman_core, mlist, senders) == {
        held: ACCEPT, "stranger@example.net": ACCEPT, senders[2]: ACCEPT
    }
    (d,) = decide(mailman_core, [("stranger@example.net", mlist.fqdn_listname)])
    assert any("hold" in r for r in d.reasons)
    strict = ListOverrides(hold=HoldPolicy.REJECT)
    assert verdicts(mailman_core, mlist, senders, strict) == {
        held: REJECT, "stranger@example.net": REJECT, senders[2]: ACCEPT
    }


def test_emergency_never_rejects(mailman_core: MailmanCore, mlist: MailingList, uid: str) -> None:
    """A list in emergency moderation holds every post (members too), so nothing is rejected,
    not even a nonmember of a reject list or a member whose action is reject."""
    member, rejected = f"m-{uid}@example.com", f"r-{uid}@example.com"
    mailman_core.subscribe(mlist, member)
    mailman_core.subscribe(mlist, rejected, moderation_action="reject")
    reject_list(mailman_core, mlist, emergency=True, reject_these_nonmembers=["^stranger"])
    senders = [member, rejected, "stranger@example.net"]
    assert verdicts(mailman_core, mlist, senders) == dict.fromkeys(senders, ACCEPT)


def test_emergency_never_rejects_under_hold_reject(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """Emergency is not an ordinary hold: §6.3 maps emergency to "never" reject, separately
    from the hold knob, so even ListOverrides(hold=REJECT) must not reject a member's post."""
    member = f"m-{uid}@example.com"
    mailman_core.subscribe(mlist, member)
    reject_list(mailman_core, mlist, emergency=True)
    strict = ListOverrides(hold=HoldPolicy.REJECT)
    assert verdicts(mailman_core, mlist, [member], strict) == {member: ACCEPT}


def test_moderator_password_never_rejects_unless_untrusted(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """With a moderator_password an Approved: header admits anyone (bans too), so nothing is
    rejected; ListOverrides(trust_approved=False) restores the rejects."""
    banned = f"banned-{uid}@example.com"
    reject_list(mailman_core, mlist, moderator_password="s3cret")
    mailman_core.ban(mlist, banned)
    senders = ["stranger@example.net", banned]
    assert verdicts(mailman_core, mlist, senders) == dict.fromkeys(senders, ACCEPT)
    untrusted = ListOverrides(trust_approved=False)
    assert verdicts(mailman_core, mlist, senders, untrusted) == dict.fromkeys(senders, REJECT)


# --------------------------------------------------------------------------- sender forms


def test_null_sender_is_a_nonmember(mailman_core: MailmanCore, mlist: MailingList) -> None:
    """The null sender <> is never a member: it gets the nonmember default (reject on a
    reject list, accepted on a hold list), with no membership lookup."""
    reject_list(mailman_core, mlist)
    mailman_core.subscribe(mlist, "someone@example.com")

    async def run() -> tuple[Decision, Decision, int]:
        gate = gate_for(mailman_core)
        try:
            warm = await gate.decide(PostingRequest("someone@example.com", mlist.fqdn_listname))
            assert warm.verdict is ACCEPT
            before = gate.backend.source.calls  # type: ignore[attr-defined]
            null = await gate.decide(PostingRequest("", mlist.fqdn_listname))
            calls = gate.backend.source.calls - before  # type: ignore[attr-defined]
            return warm, null, calls
        finally:
            await gate.backend.aclose()

    _, null, calls = asyncio.run(run())
    assert null.verdict is REJECT
    assert null.smtp_reply is not None
    assert "<>" in null.smtp_reply
    assert calls == 0
    mailman_core.set_settings(mlist, default_nonmember_action="hold")
    assert verdicts(mailman_core, mlist, [""]) == {"": ACCEPT}


def test_wildcard_sender_is_a_nonmember(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """A sender with '*' (a SQL LIKE pattern to members/find) is a nonmember and never
    matches the members it would pattern-match: Mailman is only asked about that exact
    address (addresses/<email> and users/<email>, both 404), never members/find."""
    members = [f"a-{uid}@example.org", f"b-{uid}@example.org"]
    for m in members:
        mailman_core.subscribe(mlist, m)
    reject_list(mailman_core, mlist)
    wild = ["*@example.org", f"*-{uid}@example.org", f"a-{uid}*", f"a*{uid}@example.org"]

    async def run() -> tuple[dict[str, Verdict], list[str]]:
        gate = gate_for(mailman_core)
        source = gate.backend.source  # type: ignore[attr-defined]
        paths: list[str] = []
        call = source._call

        async def recorded(path: str, **kwargs: bool) -> object:
            paths.append(path)
            return await call(path, **kwargs)

        try:
            out = {}
            for s in members:
                out[s] = (await gate.decide(PostingRequest(s, mlist.fqdn_listname))).verdict
            source._call = recorded
            for s in wild:
                out[s] = (await gate.decide(PostingRequest(s, mlist.fqdn_listname))).verdict
            return out, paths
        finally:
            await gate.backend.aclose()

    out, paths = asyncio.run(run())
    assert out == {**dict.fromkeys(members, ACCEPT), **dict.fromkeys(wild, REJECT)}
    # Each wildcard sender: its exact address (addresses/) and its user (users/), never
    # members/find. A call that failed in passing may be made again: the set is the test.
    asked = {f"{kind}/{quote(w, safe='@')}" for w in wild for kind in ("addresses", "users")}
    assert set(paths) == asked, paths
    assert len(paths) <= len(asked) + 1, paths


def test_srs_batv_and_tag_forms_of_a_member_are_accepted(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """SRS0/SRS1, BATV (prvs=, btv1==) and +tag spellings of a member's envelope address
    are accepted (hints: positive only), an SRS form of a stranger is not."""
    local = f"anne-{uid}"
    mailman_core.subscribe(mlist, f"{local}@example.com")
    reject_list(mailman_core, mlist)
    forms = [
        f"srs0=hhh=tt=example.com={local}@fwd.example",
        f"srs1=xxx=fwd.example==hhh=tt=example.com={local}@fwd2.example",
        f"prvs=1234567890={local}@example.com",
        f"btv1==123abcdef0=={local}@example.com",
        f"{local}+lists@example.com",
        f"srs0=hhh=tt=example.com={local}+lists@fwd.example",
    ]
    stranger = f"srs0=hhh=tt=example.com=eve-{uid}@fwd.example"
    assert verdicts(mailman_core, mlist, [*forms, stranger]) == {
        **dict.fromkeys(forms, ACCEPT), stranger: REJECT
    }


def test_sender_hints_never_reject(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """Hints only accept: +tag of a nonmember on a reject list is rejected, and a +tag whose
    base address is on reject_these_nonmembers is judged as itself (accepted on a hold list)."""
    bob, eve = f"bob-{uid}@example.com", f"eve-{uid}@example.com"
    reject_list(mailman_core, mlist, reject_these_nonmembers=[bob])
    assert verdicts(mailman_core, mlist, [f"eve-{uid}+x@example.com", f"bob-{uid}+x@example.com"]) \
        == {f"eve-{uid}+x@example.com": REJECT, f"bob-{uid}+x@example.com": REJECT}
    mailman_core.set_settings(mlist, default_nonmember_action="hold")
    mailman_core.ban(mlist, eve)
    assert verdicts(mailman_core, mlist, [f"bob-{uid}+x@example.com", f"eve-{uid}+x@example.com"]) \
        == {f"bob-{uid}+x@example.com": ACCEPT, f"eve-{uid}+x@example.com": ACCEPT}


def test_header_senders_any_member_admits_any_ban_refuses(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """At end of headers every sender counts (From:, envelope, Reply-To:, Sender:): any
    member admits, any banned sender refuses, and each nonmember's record is read (§1.4-1.5)."""
    member, friend, eve = (f"{n}-{uid}@example.com" for n in ("m", "friend", "eve"))
    s1, s2 = f"s1-{uid}@example.net", f"s2-{uid}@example.net"
    mailman_core.subscribe(mlist, member)
    reject_list(mailman_core, mlist)
    mailman_core.add_nonmember(mlist, friend, "accept")
    mailman_core.ban(mlist, eve)
    cases = {
        (s1, member): ACCEPT,  # From: a stranger, envelope a member
        (s1, s2, member): ACCEPT,  # only Sender: a member
        (member, eve): REJECT,  # a banned Sender: refuses even a member's post
        (s1, friend): ACCEPT,  # the second sender's nonmember record accepts
        (s1, s2): REJECT,
    }

    async def run() -> dict[tuple[str, ...], Verdict]:
        gate = gate_for(mailman_core)
        try:
            return {
                senders: (await gate.decide(
                    PostingRequest(senders[0], mlist.fqdn_listname, header_senders=senders)
                )).verdict
                for senders in cases
            }
        finally:
            await gate.backend.aclose()

    assert asyncio.run(run()) == cases


def test_linked_address_with_slash_may_post(
    mailman_core: MailmanCore, mlist: MailingList, uid: str
) -> None:
    """'/' is valid in a local part (§1.3): a member's linked address a/b@ is the member for
    Mailman's _find_sender_member, so it must not be rejected (users/<email> cannot route a
    '/' even as %2F: the lookup 404s and the sender looks like a stranger)."""
    reject_list(mailman_core, mlist)
    primary, slashed = f"prim-{uid}@example.com", f"dept/p-{uid}@example.com"
    mailman_core.subscribe(mlist, primary)
    mailman_core.link_address(primary, slashed)
    assert mailman_core.sender_member(mlist, slashed) == {slashed: primary}
    assert verdicts(mailman_core, mlist, [slashed]) == {slashed: ACCEPT}
