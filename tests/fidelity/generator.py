"""Seeded generator of differential cases: *worlds* (a Mailman list, its settings and its
roster) and *posts* to them (envelope, sender headers, recipient).

Everything is data (JSON-serialisable dataclasses) drawn from one ``random.Random(seed)``:
the same seed and case count give the same worlds and posts, so any failure can be replayed
with ``python tests/fidelity/run.py --seed SEED --cases N``. Names embed a fixed-length
*namespace* (6 hex digits) so that two runs on one Mailman core never share a list, an
address or a Mailman user; the namespace never influences a random draw.

A world holds, on purpose, what makes Mailman's posting chain subtle:

- list settings: ``default_member_action``, ``default_nonmember_action``, the four
  ``*_these_nonmembers`` lists (exact, mixed-case exact, ``^regex`` incl. upper-case ones
  (REST refuses a malformed one), ``@list`` references to another list, to an unknown
  one and to the list itself), ``emergency``, ``moderator_password``; list and site-wide
  bans (exact, mixed-case exact, ``^pattern``);
- a roster: members with and without their own ``moderation_action``, owners and moderators
  (subscribed or not), nonmember records with and without an action, Mailman users whose
  other addresses are linked (several of them subscribed, in a creation order that differs
  from their alphabetical order; subscriptions through the user; an address subscribed both
  directly and through its user), members whose address holds ``*`` or ``/``;
- always one plain member (``reader``), so that an accepted post is visibly distributed.

A post picks its envelope sender and its ``From:``/``Reply-To:``/``Sender:`` addresses from
the world's identities (or strangers, the null sender, invalid addresses), spelled in case
variants, with ``+tags``, SRS0/SRS1 and BATV forms, display names, RFC 2047 words and
comments; its recipient is the posting address (any case), a ``+x`` form, or a service
address (``-owner``, ``-request``, ``-join``, ``-bounces``, ``-confirm+cookie``, ...).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("accept", "hold", "reject", "discard", "defer")
LIST_DOMAIN = "example.org"
"""Every generated list lives here (the Postfix sample relays this domain)."""

MEMBER_ACTION = (("", 40), ("defer", 10), ("accept", 15), ("hold", 10), ("reject", 13),
                 ("discard", 12))
"""A member's own moderation_action ("" = none: the list default applies)."""
NONMEMBER_RECORD_ACTION = (("", 25), ("accept", 15), ("defer", 10), ("hold", 15),
                           ("reject", 20), ("discard", 15))
DEFAULT_MEMBER_ACTION = (("defer", 50), ("accept", 15), ("hold", 10), ("reject", 13),
                         ("discard", 12))
DEFAULT_NONMEMBER_ACTION = (("hold", 25), ("reject", 35), ("discard", 25), ("accept", 8),
                            ("defer", 7))
SERVICE_SUFFIXES = ("request", "join", "leave", "subscribe", "unsubscribe", "bounces")


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    values, weights = zip(*weighted, strict=True)
    return rng.choices(values, weights)[0]


@dataclass
class UserSpec:
    """A Mailman user: its addresses in creation order, the preferred one (if any), which
    addresses are subscribed directly (with their action) and whether the user itself is
    subscribed (through its preferred address)."""

    addresses: list[str]
    preferred: str | None = None
    address_subs: list[tuple[str, str]] = field(default_factory=list)
    """(address, action or "") subscribed as addresses, in this order."""
    user_sub: str | None = None
    """The action of a subscription *as the user* ("" = none); None = no such subscription."""
    repoint: str | None = None
    """A new preferred address, set after the subscriptions (REST refuses to subscribe a
    user whose preferred address is subscribed already, but not this)."""


@dataclass
class WorldSpec:
    """One list with its settings and roster, and the identities posts are drawn from."""

    index: int
    uid: str
    list_name: str
    settings: dict[str, Any]
    members: list[tuple[str, str]]
    """(address as subscribed, action or "")."""
    owners: list[str]
    moderators: list[str]
    nonmembers: list[tuple[str, str]]
    users: list[UserSpec]
    list_bans: list[str]
    global_bans: list[str]
    aux_name: str | None
    """Another list, referenced by ``@aux@...`` entries."""
    aux_members: list[str]
    identities: dict[str, list[str]]
    """category -> addresses (lower-case, canonical) a post may use."""
    moderator_password: str | None = None
    aux_users: list[UserSpec] = field(default_factory=list)
    """Users subscribed to the other list through their preferred address."""

    @property
    def posting_address(self) -> str:
        return f"{self.list_name}@{LIST_DOMAIN}"

    @property
    def aux_address(self) -> str | None:
        return f"{self.aux_name}@{LIST_DOMAIN}" if self.aux_name else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PostSpec:
    """One message to deliver over LMTP."""

    case_id: str
    world: int
    envelope: str
    """MAIL FROM as the client sent it ("" = the null sender)."""
    headers: list[tuple[str, str]]
    """Decision-relevant headers (From, Reply-To, Sender, List-Post, Approved), in order."""
    recipient: str
    kinds: dict[str, str]
    """What each position was drawn as (for reports): envelope, from, reply-to, sender."""

    @property
    def message_id(self) -> str:
        return f"<{self.case_id}@fidelity.test>"

    @property
    def subject(self) -> str:
        return f"fidelity case {self.case_id}"

    def raw(self, to: str) -> bytes:
        """The message as delivered: the sender headers, To: the posting address (so that
        Mailman's implicit-destination rule never holds it), Subject and Message-ID."""
        lines = [f"{name}: {value}" for name, value in self.headers]
        lines += [
            f"To: {to}",
            f"Subject: {self.subject}",
            f"Message-ID: {self.message_id}",
            "Date: Tue, 25 Nov 2026 05:00:00 +0000",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            f"Differential fidelity case {self.case_id}.",
            "",
        ]
        return "\r\n".join(lines).encode("utf-8")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """Worlds and the posts to them."""

    seed: int
    namespace: str
    worlds: list[WorldSpec]
    posts: list[PostSpec]


# --------------------------------------------------------------------------- worlds


def _world(rng: random.Random, index: int, namespace: str) -> WorldSpec:
    uid = f"{namespace}w{index}"
    home = f"{uid}.example.com"
    out = f"{uid}.example.net"
    partner = f"p.{uid}.example.net"
    ids: dict[str, list[str]] = {k: [] for k in (
        "member", "owner", "linked", "nonmember", "legacy", "banned", "aux", "stranger", "odd")}

    # ---- roster: members
    members: list[tuple[str, str]] = [(f"reader@{home}", "")]
    ids["member"].append(f"reader@{home}")
    for i in range(rng.randint(2, 4)):
        addr = f"mem{i}@{home}"
        spelled = addr if rng.random() < 0.8 else f"Mem{i}@{home.upper()}"
        members.append((spelled, _pick(rng, MEMBER_ACTION)))
        ids["member"].append(addr)
    owners = [f"owner@{home}"]
    ids["owner"].append(f"owner@{home}")
    if rng.random() < 0.4:
        members.append((f"owner@{home}", _pick(rng, MEMBER_ACTION)))
    moderators: list[str] = []
    if rng.random() < 0.5:
        moderators.append(f"mod@{home}")
        ids["owner"].append(f"mod@{home}")
        if rng.random() < 0.3:
            members.append((f"mod@{home}", _pick(rng, MEMBER_ACTION)))

    # ---- Mailman users with linked addresses
    users: list[UserSpec] = []
    for u in range(rng.choice((0, 1, 1, 2, 2, 3))):
        kind = rng.choice(("classic", "classic", "multi", "as_user", "double"))
        base = f"u{u}"
        if kind == "classic":
            primary, alt = f"{base}@{home}", f"{base}.alt@{out}"
            users.append(UserSpec([primary, alt], None, [(primary, _pick(rng, MEMBER_ACTION))]))
            ids["linked"] += [primary, alt]
        elif kind == "multi":
            # Several subscribed addresses of one user, created in an order that is not
            # alphabetical: Mailman tries them in its own (creation) order.
            sender = f"{base}.from@{out}"
            first, second = f"{base}.z@{out}", f"{base}.a@{out}"
            subs = [(first, _pick(rng, MEMBER_ACTION)), (second, _pick(rng, MEMBER_ACTION))]
            order = [sender, first, second] if rng.random() < 0.5 else [first, second, sender]
            users.append(UserSpec(order, None, subs))
            ids["linked"] += [sender, sender, first, second]
        elif kind == "as_user":
            pref, alt = f"{base}@{home}", f"{base}.alt@{out}"
            users.append(UserSpec([pref, alt], pref, [], _pick(rng, MEMBER_ACTION)))
            ids["linked"] += [pref, alt, alt]
        else:  # double: the same address subscribed directly and through its user
            pref, alt = f"{base}@{home}", f"{base}.alt@{out}"
            users.append(UserSpec([pref, alt], alt, [(pref, _pick(rng, MEMBER_ACTION))],
                                  _pick(rng, MEMBER_ACTION), repoint=pref))
            ids["linked"] += [pref, pref, alt]

    # ---- nonmember records
    nonmembers: list[tuple[str, str]] = []
    for i in range(rng.randint(1, 3)):
        addr = f"nm{i}@{out}"
        nonmembers.append((addr, _pick(rng, NONMEMBER_RECORD_ACTION)))
        ids["nonmember"].append(addr)

    # ---- the legacy *_these_nonmembers lists
    legacy: dict[str, list[str]] = {a: [] for a in ("accept", "hold", "reject", "discard")}
    esc_out = re.escape(out)
    for _ in range(rng.randint(0, 5)):
        action = rng.choice(("accept", "accept", "hold", "reject", "reject", "discard"))
        form = rng.choice(("exact", "exact", "mixed", "regex", "regex", "regex_open",
                           "regex_upper", "partner"))
        tag = f"{action[:3]}{len(legacy[action])}"
        if form == "exact":
            legacy[action].append(f"{tag}@{out}")
            ids["legacy"].append(f"{tag}@{out}")
        elif form == "mixed":  # never matches: senders are lower-cased, entries are not
            legacy[action].append(f"{tag.capitalize()}@{out}")
            ids["legacy"].append(f"{tag}@{out}")
        elif form == "regex":
            legacy[action].append(f"^{tag}-.*@{esc_out}$")
            ids["legacy"] += [f"{tag}-x@{out}", f"{tag}-yy@{out}"]
        elif form == "regex_open":  # start-anchored only: also matches a longer domain
            legacy[action].append(f"^{tag}o.*@{esc_out}")
            ids["legacy"] += [f"{tag}o@{out}", f"{tag}o@{out}.evil.test"]
        elif form == "regex_upper":  # can never match a lower-cased sender
            legacy[action].append(f"^{tag.upper()}U")
            ids["legacy"].append(f"{tag}u@{out}")
        else:
            legacy[action].append(f"^.*@{re.escape(partner)}$")
            ids["legacy"].append(f"someone@{partner}")

    # ---- @list references and the other list they name
    aux_name: str | None = None
    aux_members: list[str] = []
    aux_users: list[UserSpec] = []
    if rng.random() < 0.35:
        aux_name = f"l-{uid}-aux"
        aux_members = [f"aux{i}@{out}" for i in range(rng.randint(1, 2))]
        ids["aux"] += aux_members
        if rng.random() < 0.4:  # a member of the other list through its user
            pref, alt = f"ua@{out}", f"ua.alt@{out}"  # alt: no @list match (not the member)
            aux_users.append(UserSpec([pref, alt], pref, [], rng.choice(("", "hold"))))
            ids["aux"] += [pref, alt]
        legacy["accept"].append(f"@{aux_name}@{LIST_DOMAIN}")
        if rng.random() < 0.3:  # honoured in accept_these_nonmembers only
            legacy[rng.choice(("hold", "reject", "discard"))].append(f"@{aux_name}@{LIST_DOMAIN}")
    if rng.random() < 0.1:
        legacy["accept"].append(f"@l-{uid}-gone@{LIST_DOMAIN}")  # no such list
    if rng.random() < 0.1:
        legacy["accept"].append(f"@l-{uid}@{LIST_DOMAIN}")  # the list itself: ignored

    # ---- bans
    list_bans: list[str] = []
    global_bans: list[str] = []
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 3)):
            form = rng.choice(("list_exact", "list_mixed", "list_regex", "list_regex_upper",
                               "global_exact", "global_regex"))
            n = len(list_bans) + len(global_bans)
            if form == "list_exact":
                list_bans.append(f"ban{n}@{out}")
                ids["banned"].append(f"ban{n}@{out}")
            elif form == "list_mixed":  # exact bans compare case-sensitively: bans nobody
                list_bans.append(f"Ban{n}@{out}")
                ids["banned"].append(f"ban{n}@{out}")
            elif form == "list_regex":
                list_bans.append(f"^spam{n}.*@{esc_out}$")
                ids["banned"] += [f"spam{n}@{out}", f"spam{n}-x@{out}"]
            elif form == "list_regex_upper":  # patterns match case-insensitively
                list_bans.append(f"^SPAMU{n}")
                ids["banned"].append(f"spamu{n}@{out}")
            elif form == "global_exact":
                global_bans.append(f"gban{n}@{out}")
                ids["banned"].append(f"gban{n}@{out}")
            else:
                global_bans.append(f"^gspam{n}.*@{esc_out}$")
                ids["banned"].append(f"gspam{n}-x@{out}")
        if rng.random() < 0.3:  # a banned member: the ban wins
            victim = rng.choice(ids["member"][1:] or ids["member"])
            list_bans.append(victim)
            ids["banned"].append(victim)

    # ---- odd addresses Mailman accepts as members
    if rng.random() < 0.15:
        addr = f"we*ird@{out}"
        members.append((addr, rng.choice(("", "accept", "reject"))))
        ids["odd"] += [addr, f"w*@{out}"]
    if rng.random() < 0.1:
        addr = f"sl/ash@{out}"
        members.append((addr, rng.choice(("", "accept"))))
        ids["odd"].append(addr)
    if rng.random() < 0.15:
        members.append((f"dotted.name@{home}", rng.choice(("", "accept", "reject"))))
        ids["odd"] += [f"dotted.name@{home}", f'"dotted.name"@{home}']

    ids["stranger"] += [f"s{i}@{out}" for i in range(3)]
    ids["odd"] += ["local@localhost", f"nobody@{out}."]

    settings: dict[str, Any] = {
        "default_member_action": _pick(rng, DEFAULT_MEMBER_ACTION),
        "default_nonmember_action": _pick(rng, DEFAULT_NONMEMBER_ACTION),
    }
    for action, entries in legacy.items():
        if entries:
            settings[f"{action}_these_nonmembers"] = entries
    if rng.random() < 0.05:
        settings["emergency"] = True
    password = f"pw-{uid}" if rng.random() < 0.05 else None
    return WorldSpec(
        index=index,
        uid=uid,
        list_name=f"l-{uid}",
        settings=settings,
        members=members,
        owners=owners,
        moderators=moderators,
        nonmembers=nonmembers,
        users=users,
        list_bans=list_bans,
        global_bans=global_bans,
        aux_name=aux_name,
        aux_members=aux_members,
        identities={k: v for k, v in ids.items() if v},
        moderator_password=password,
        aux_users=aux_users,
    )


# --------------------------------------------------------------------------- posts

IDENTITY_WEIGHTS = (("member", 20), ("linked", 12), ("owner", 5), ("nonmember", 11),
                    ("legacy", 14), ("banned", 8), ("aux", 5), ("stranger", 20), ("odd", 5))


def _identity(rng: random.Random, world: WorldSpec) -> tuple[str, str]:
    weights = tuple((k, w) for k, w in IDENTITY_WEIGHTS if k in world.identities)
    kind = _pick(rng, weights)
    return kind, rng.choice(world.identities[kind])


def _case_variant(rng: random.Random, address: str) -> str:
    """Mailman lower-cases every sender; so does listgate."""
    local, _, domain = address.rpartition("@")
    mode = rng.choice(("upper", "title", "domain"))
    if mode == "upper":
        return address.upper()
    if mode == "title":
        return f"{local[:1].upper()}{local[1:]}@{domain}"
    return f"{local}@{domain.upper()}"


def _envelope(rng: random.Random, world: WorldSpec) -> tuple[str, str]:
    r = rng.random()
    if r < 0.06:
        return "null", ""
    kind, addr = _identity(rng, world)
    local, _, domain = addr.rpartition("@")
    if not re.fullmatch(r"[a-z0-9.*/_-]+", local) or "." not in domain or domain.endswith("."):
        # Postfix hands Mailman a dot-atom unquoted and without a trailing dot (its
        # address canonicalisation); keep such forms, and invalid ones, to the headers.
        kind, addr = "stranger", rng.choice(world.identities["stranger"])
        local, _, domain = addr.rpartition("@")
    r = rng.random()
    fwd = f"fwd.{world.uid}.example"
    if r < 0.05:
        return f"{kind}+srs0", f"SRS0=HhH=TT={domain}={local}@{fwd}"
    if r < 0.07:
        return f"{kind}+srs1", f"SRS1=XyZ=hop.example==HhH=TT={domain}={local}@{fwd}"
    if r < 0.11:
        return f"{kind}+batv", f"prvs=1234567890={local}@{domain}"
    if r < 0.19:
        return f"{kind}+tag", f"{local}+lists@{domain}"
    if r < 0.39:
        return f"{kind}+case", _case_variant(rng, addr)
    return kind, addr


def _header_value(rng: random.Random, address: str) -> str:
    if rng.random() < 0.15:
        address = _case_variant(rng, address)
    form = rng.choice(("bare", "bare", "bare", "name", "name", "name", "comma", "rfc2047",
                       "comment", "angle", "folded"))
    if form == "bare":
        return address
    if form == "name":
        return f"Some Body <{address}>"
    if form == "comma":
        return f'"Body, Some" <{address}>'
    if form == "rfc2047":
        return f"=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <{address}>"
    if form == "comment":
        return f"{address} (Some Body)"
    if form == "folded":
        return f"Some\r\n Body <{address}>"
    return f"<{address}>"


LIST_POST_SHARE = 0.08
"""Share of posts with a ``List-Post:`` header (Mailman's loop rule)."""
LOOP_KINDS = ("own-bare", "own-bare-upper", "own-folded")
"""The ``List-Post:`` kinds Mailman's loop rule discards (the whole stripped,
lower-cased value is the posting address)."""


def _list_post(rng: random.Random, world: WorldSpec) -> tuple[str, str] | None:
    """A ``List-Post:`` header for some posts: (kind, value). Drawn from its own random
    stream (per case), so the rest of a seed's cases stay as they were."""
    if rng.random() >= LIST_POST_SHARE:
        return None
    own = world.posting_address
    other = f"other-{world.list_name}@{LIST_DOMAIN}"
    return rng.choice((
        ("own-bare", own),
        ("own-bare-upper", own.upper()),
        ("own-mailto", f"<mailto:{own}>"),
        ("other-list", f"<mailto:{other}>"),
        ("other-list-bare", other),
        ("own-folded", f"\r\n {own}"),
        ("own-mailto-folded", f"\r\n <mailto:{own}>"),
    ))


def _post(rng: random.Random, world: WorldSpec, case_id: str) -> PostSpec:
    env_kind, envelope = _envelope(rng, world)
    kinds = {"envelope": env_kind}
    headers: list[tuple[str, str]] = []
    r = rng.random()
    if r < 0.04:
        kinds["from"] = "none"
    else:
        if r < 0.45 and envelope and "=" not in envelope.split("@")[0]:
            from_kind, from_addr = "same-as-envelope", envelope
        else:
            from_kind, from_addr = _identity(rng, world)
        value = _header_value(rng, from_addr)
        kinds["from"] = from_kind
        if rng.random() < 0.04:  # two authors in one From:
            other_kind, other = _identity(rng, world)
            value = f"{value}, {other}"
            kinds["from"] += f",{other_kind}"
        headers.append(("From", value))
        if rng.random() < 0.02:  # a second From: header
            other_kind, other = _identity(rng, world)
            headers.append(("From", other))
            kinds["from"] += f";{other_kind}"
    for name, p in (("Reply-To", 0.2), ("Sender", 0.15)):
        if rng.random() < p:
            kind, addr = _identity(rng, world)
            if rng.random() < 0.05:
                kind, addr = "posting-address", world.posting_address
            value = _header_value(rng, addr)
            if rng.random() < 0.04:
                other_kind, other = _identity(rng, world)
                value, kind = f"{value}, {other}", f"{kind},{other_kind}"
            headers.append((name, value))
            kinds[name.lower()] = kind
    list_post = _list_post(random.Random(f"{case_id}/list-post"), world)
    if list_post is not None:
        kinds["list-post"], value = list_post
        headers.append(("List-Post", value))
    if world.moderator_password and rng.random() < 0.4:
        good = rng.random() < 0.75
        headers.append(("Approved", world.moderator_password if good else "wrong-password"))
        kinds["approved"] = "good" if good else "wrong"
    local = world.list_name
    r = rng.random()
    if r < 0.72:
        rcpt, kinds["recipient"] = f"{local}@{LIST_DOMAIN}", "posting"
    elif r < 0.77:
        rcpt, kinds["recipient"] = f"{local}@{LIST_DOMAIN}".upper(), "posting-upper"
    elif r < 0.87:
        rcpt, kinds["recipient"] = f"{local}+x{rng.randint(0, 9)}@{LIST_DOMAIN}", "posting+x"
    elif r < 0.91:
        rcpt = f"{local}-owner{'+x' if rng.random() < 0.3 else ''}@{LIST_DOMAIN}"
        kinds["recipient"] = "owner"
    elif r < 0.93:
        rcpt, kinds["recipient"] = f"{local}-confirm+c00k1e@{LIST_DOMAIN}", "confirm"
    else:
        sub = rng.choice(SERVICE_SUFFIXES)
        rcpt, kinds["recipient"] = f"{local}-{sub}@{LIST_DOMAIN}", sub
    return PostSpec(case_id, world.index, envelope, headers, rcpt, kinds)


def generate(seed: int, cases: int, *, namespace: str | None = None,
             posts_per_world: tuple[int, int] = (6, 14)) -> Batch:
    """*cases* posts over as many worlds as needed, all from *seed*."""
    rng = random.Random(seed)
    ns = namespace if namespace is not None else f"{seed & 0xFFFFFF:06x}"
    if not re.fullmatch(r"[0-9a-f]{6}", ns):
        raise ValueError(f"namespace must be 6 hex digits, got {ns!r}")
    worlds: list[WorldSpec] = []
    posts: list[PostSpec] = []
    while len(posts) < cases:
        world = _world(rng, len(worlds), ns)
        worlds.append(world)
        for _ in range(min(rng.randint(*posts_per_world), cases - len(posts))):
            posts.append(_post(rng, world, f"f{ns}c{len(posts)}"))
    return Batch(seed, ns, worlds, posts)
