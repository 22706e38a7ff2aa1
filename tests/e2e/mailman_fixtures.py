"""Helpers for the listgate + real Mailman core end-to-end tests.

A private Postfix instance of its own (listeners "rcpt", "headers", "tempfail", "failopen",
each with its own listgate milter port), listgate processes configured with
``backend.type = "mailman"`` against a :class:`MailmanCore`, and the Mailman test data
(one list whose nonmembers are rejected, with a member, a subscribed owner, an accepted
nonmember and a user with a linked second address).

Everything listens on loopback only. Waits are polls bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import smtplib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailman_harness import INSTALL_HINT as MAILMAN_INSTALL_HINT
from mailman_harness import MailmanCore, mailman_venv

from .harness import (  # MEMBER and OUTSIDER are re-exported: the same posters here
    MEMBER,
    OUTSIDER,
    Listener,
    ListgateProcess,
    PostfixInstance,
    free_port,
    traversable_tmpdir,
    wait_until,
)

OWNER = "owner@example.com"
"""An owner of the list who is also subscribed to it."""
FRIEND = "friend@example.net"
"""A nonmember with a nonmember record whose moderation_action is accept."""
CAROL = "carol@example.com"
CAROL_ALT = "carol.alt@example.net"
"""Carol's second address, linked to her Mailman user (only carol@ is subscribed)."""
STRANGER = "stranger@example.net"
SRS_SENDER = "SRS0=HHH=TT=example.com=anne@fwd.example"
"""A forwarder's SRS envelope; the address inside it (anne@example.com) is no member."""
BANNED = "banned@example.net"
"""Banned from the list (Mailman discards any post that names it as a sender)."""
ALONE = "452 4.5.3 Too many recipients: send the list post in a transaction of its own"

LISTENERS = ("rcpt", "headers", "tempfail", "failopen")


def tempfail(sender: str, lst: str) -> str:
    """listgate's default tempfail reply line (backend unavailable)."""
    return f"451 4.3.0 cannot check whether <{sender}> may post to <{lst}> now, try again later"


def require_mailman() -> None:
    """Fail (never skip) when the Mailman test venv is missing."""
    runner = mailman_venv() / "bin" / "runner"
    if not os.access(runner, os.X_OK):
        pytest.fail(f"{runner} not found: {MAILMAN_INSTALL_HINT}", pytrace=False)


@dataclass(frozen=True)
class MailmanWorld:
    """The running core and the list the tests post to."""

    core: MailmanCore
    list_address: str
    list_id: str

    def service(self, name: str) -> str:
        """A service address of the list, e.g. ``service("owner")`` = ``<list>-owner@...``."""
        local, _, domain = self.list_address.partition("@")
        return f"{local}-{name}@{domain}"

    def tagged(self, tag: str) -> str:
        """The posting address with a ``+tag``."""
        local, _, domain = self.list_address.partition("@")
        return f"{local}+{tag}@{domain}"


def populate(core: MailmanCore) -> MailmanWorld:
    """A list that rejects nonmembers, with every kind of poster the tests need."""
    ml = core.new_list(settings={"default_nonmember_action": "reject"})
    core.subscribe(ml, MEMBER)
    core.add_owner(ml, OWNER)
    core.subscribe(ml, OWNER)
    core.add_nonmember(ml, FRIEND, "accept")
    core.subscribe(ml, CAROL)
    core.link_address(CAROL, CAROL_ALT)
    core.ban(ml, BANNED)
    return MailmanWorld(core, str(ml.fqdn_listname), str(ml.list_id))


# --------------------------------------------------------------------------- listgate


def listgate_toml(
    listen: Sequence[str],
    core: MailmanCore,
    password_file: Path,
    sections: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """A listgate config for the Mailman backend; *sections* adds TOML tables (a key with
    a dot, like ``lists."a@b"``, is written as given)."""
    q = json.dumps  # JSON strings and numbers of ASCII text are valid TOML
    tables: dict[str, Mapping[str, object]] = {
        "milter": {"listen": list(listen)},
        "backend": {"type": "mailman"},
        "mailman": {
            "url": core.url,
            "user": core.user,
            "password_file": str(password_file),
            "timeout": 3.0,
        },
        "log": {"level": "info"},
    }
    tables.update(sections or {})
    out: list[str] = []
    for name, values in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {q(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


class MailmanListgate(ListgateProcess):
    """``listgate serve`` with the Mailman backend; the REST password in a 0600 file."""

    def __init__(
        self,
        workdir: Path,
        listen: Sequence[str],
        core: MailmanCore,
        sections: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        super().__init__(workdir, listen, {})
        password_file = workdir / "mailman.password"
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(core.password + "\n")
        self.config_path.write_text(listgate_toml(listen, core, password_file, sections))


# --------------------------------------------------------------------------- Postfix


@dataclass(frozen=True)
class MailmanPostfix:
    """A private Postfix instance whose listeners each use their own listgate port."""

    postfix: PostfixInstance
    base: Path
    milters: Mapping[str, str]
    """listener name -> listgate listen spec ("inet:127.0.0.1:PORT")."""

    def port(self, listener: str) -> int:
        """SMTP port of a listener."""
        return self.postfix.listeners[listener].port


def make_postfix(sink_port: int) -> MailmanPostfix:
    """Create (not start) the instance; Postfix relays example.org to the sink."""
    base = traversable_tmpdir("lg-e2e-mm-")
    milters = {name: f"inet:127.0.0.1:{free_port()}" for name in LISTENERS}
    listeners = [Listener(name, free_port(), milters[name]) for name in LISTENERS]
    return MailmanPostfix(PostfixInstance(base, listeners, sink_port), base, milters)


# --------------------------------------------------------------------------- SMTP


def rcpt_reply(port: int, sender: str, recipient: str) -> str:
    """One unrecorded MAIL/RCPT on 127.0.0.1:*port*: the RCPT reply line (for polling)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="poll.feas.test", timeout=20) as s:
        s.ehlo()
        s.mail(sender)
        code, msg = s.rcpt(recipient)
        text = msg.decode("utf-8", "replace").splitlines()
        return f"{code} {text[-1] if text else ''}".rstrip()


def wait_for_rcpt(
    port: int, sender: str, recipient: str, want: Callable[[str], bool], what: str,
    timeout: float = 15.0,
) -> str:
    """Poll (unrecorded sessions) until the RCPT reply satisfies *want*; return it."""
    last: list[str] = []

    def probe() -> str | None:
        line = rcpt_reply(port, sender, recipient)
        last[:] = [line]
        return line if want(line) else None

    return wait_until(probe, timeout, what, interval=0.1, detail=lambda: f"last reply: {last}")


__all__ = [
    "ALONE",
    "CAROL",
    "CAROL_ALT",
    "FRIEND",
    "MEMBER",
    "OUTSIDER",
    "OWNER",
    "SRS_SENDER",
    "STRANGER",
    "MailmanListgate",
    "MailmanPostfix",
    "MailmanWorld",
    "make_postfix",
    "populate",
    "require_mailman",
    "tempfail",
    "wait_for_rcpt",
]
