"""Hand-written cases, each once found by the generator (seed given) or known to be
subtle: Mailman (the oracle) decides the post, listgate must not reject what it lets
through. Each world is built in the real core and each post goes through its LMTP runner."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from .generator import Batch, PostSpec, UserSpec, WorldSpec
from .oracle import MailmanOracle
from .suite import CaseResult, Runner, RunStats


def _world(uid: str, **kw: Any) -> WorldSpec:
    home = f"{uid}.example.com"
    fields: dict[str, Any] = dict(
        index=0, uid=uid, list_name=f"l-{uid}", settings={}, members=[(f"reader@{home}", "")],
        owners=[f"owner@{home}"], moderators=[], nonmembers=[], users=[], list_bans=[],
        global_bans=[], aux_name=None, aux_members=[], identities={},
    )
    fields.update(kw)
    return WorldSpec(**fields)


def _post(world: WorldSpec, n: int, envelope: str, *headers: tuple[str, str],
          recipient: str | None = None) -> PostSpec:
    return PostSpec(f"k{world.uid}c{n}", world.index, envelope, list(headers),
                    recipient or world.posting_address, {"recipient": "posting"})


def _run(oracle: MailmanOracle, tmp_path: Path, world: WorldSpec,
         posts: list[PostSpec]) -> list[CaseResult]:
    stats = RunStats()
    return Runner(oracle, tmp_path).run_batch(Batch(0, world.uid[:6], [world], posts), stats)


def _uid() -> str:
    return secrets.token_hex(3) + "k0"


def test_oracle_tells_the_outcomes_apart(oracle: MailmanOracle, tmp_path: Path) -> None:
    """The harness itself: one post for each outcome, on a list that rejects nonmembers,
    holds ``held@`` and bans ``eve@``; each is classified from what Mailman visibly did,
    and agrees with the chain Mailman logged."""
    uid = _uid()
    home, out = f"{uid}.example.com", f"{uid}.example.net"
    world = _world(uid, settings={"default_nonmember_action": "reject",
                                  "hold_these_nonmembers": [f"held@{out}"]},
                   list_bans=[f"eve@{out}"])
    local = world.list_name
    posts = [
        _post(world, 0, f"reader@{home}", ("From", f"reader@{home}")),
        _post(world, 1, f"held@{out}", ("From", f"held@{out}")),
        _post(world, 2, f"s@{out}", ("From", f"s@{out}")),
        _post(world, 3, f"reader@{home}", ("From", f"reader@{home}"), ("Sender", f"eve@{out}")),
        _post(world, 4, f"s@{out}", ("From", f"s@{out}"),
              recipient=f"{local}-owner@example.org"),
        _post(world, 5, f"s@{out}", ("From", f"s@{out}"),
              recipient=f"{local}-request@example.org"),
    ]
    posts[4].kinds["recipient"] = "owner"
    posts[5].kinds["recipient"] = "request"
    results = _run(oracle, tmp_path, world, posts)
    got = [(r.mailman.outcome, r.mailman.chain) for r in results]
    assert got == [("accepted", "ACCEPT"), ("held", "HOLD"), ("rejected", "REJECT"),
                   ("discarded", "DISCARD"), ("accepted", "OWNER"), ("service", None)]
    assert all(r.mailman.conflict is None for r in results), [r.summary() for r in results]
    assert results[0].mailman.distributed_to == (f"reader@{home}",)
    # The banned Sender: a member's envelope is accepted at RCPT, and the post (alone in
    # its transaction) is refused at end of headers, as Mailman discards it.
    assert [(r.verdicts["headers"].verdict, r.verdicts["headers"].phase) for r in results] == [
        ("accept", "eoh"), ("accept", "eoh"), ("reject", "eoh"), ("reject", "eoh"),
        ("accept", "rcpt"), ("accept", "rcpt")]
    assert "headers" not in results[3].missed
    assert not any(r.false_reject["headers"] for r in results)


def test_user_with_several_subscribed_addresses(oracle: MailmanOracle, tmp_path: Path) -> None:
    """Generator seed 2 (cases f000002c27, f000002c333, generator of commit a652d29). A post from a
    user's unsubscribed address makes Mailman try the user's *other* addresses in its own
    order (creation order: ``user.addresses``), and the first subscribed one decides. Here
    that is ``u.z@`` (defer: accepted); ``u.a@`` (reject) comes after it. listgate took the
    alphabetically first (``users/<id>/addresses`` is sorted by address), u.a@, and rejected
    the post in both modes."""
    uid = _uid()
    out = f"{uid}.example.net"
    sender, first, second = f"u.from@{out}", f"u.z@{out}", f"u.a@{out}"
    world = _world(
        uid,
        settings={"default_member_action": "defer", "default_nonmember_action": "hold"},
        users=[UserSpec([first, second, sender], None, [(first, "defer"), (second, "reject")])],
    )
    posts = [_post(world, 0, sender, ("From", sender)),  # RCPT sees all Mailman sees
             _post(world, 1, f"s@{out}", ("From", sender)),
             _post(world, 2, sender)]
    for r in _run(oracle, tmp_path, world, posts):
        assert r.mailman.outcome == "accepted", r.summary()
        assert r.verdicts["headers"].verdict == "accept", r.summary()
        if r.post["envelope"] == sender:
            assert r.verdicts["rcpt"].verdict == "accept", r.summary()


def test_member_whose_address_holds_a_star(oracle: MailmanOracle, tmp_path: Path) -> None:
    """Generator seed 3 (case f000003c757, generator of commit a652d29). ``*`` is legal in a local
    part, and Mailman (exact SQL equality) counts a subscribed ``we*ird@`` as the member it
    is. listgate never sends a sender with ``*`` to ``members/find`` (which would read it as
    a LIKE pattern), so it takes the member for a nonmember and rejects the post on a list
    that rejects nonmembers, in both modes."""
    uid = _uid()
    out = f"{uid}.example.net"
    star = f"we*ird@{out}"
    world = _world(uid, settings={"default_nonmember_action": "reject"},
                   members=[(f"reader@{uid}.example.com", ""), (star, "")])
    posts = [_post(world, 0, star, ("From", star)),
             _post(world, 1, f"s@{out}", ("From", star.upper()))]
    for r in _run(oracle, tmp_path, world, posts):
        assert r.mailman.outcome == "accepted", r.summary()
        assert r.verdicts["headers"].verdict == "accept", r.summary()
        if r.post["envelope"] == star:
            assert r.verdicts["rcpt"].verdict == "accept", r.summary()


def test_address_subscribed_directly_and_through_its_user(
    oracle: MailmanOracle, tmp_path: Path
) -> None:
    """An address can be a member twice: subscribed directly, and through its user once it
    becomes the user's preferred address. Mailman's roster then uses the direct
    subscription (``model/roster.py``: ``get_member``); ``members/find`` returns both rows,
    sorted only by list, email and role. listgate must use the direct one too."""
    uid = _uid()
    home, out = f"{uid}.example.com", f"{uid}.example.net"
    lenient, strict = f"u1@{home}", f"u2@{home}"
    world = _world(uid, settings={"default_nonmember_action": "reject"}, users=[
        UserSpec([lenient, f"u1.alt@{out}"], f"u1.alt@{out}", [(lenient, "accept")], "reject",
                 repoint=lenient),
        UserSpec([strict, f"u2.alt@{out}"], f"u2.alt@{out}", [(strict, "reject")], "accept",
                 repoint=strict),
    ])
    posts = [_post(world, 0, lenient, ("From", lenient)),
             _post(world, 1, strict, ("From", strict))]
    accepted, rejected = _run(oracle, tmp_path, world, posts)
    assert accepted.mailman.outcome == "accepted", accepted.summary()
    assert rejected.mailman.outcome == "rejected", rejected.summary()
    for mode in ("rcpt", "headers"):
        assert accepted.verdicts[mode].verdict == "accept", accepted.summary()
        assert rejected.verdicts[mode].verdict == "reject", rejected.summary()
