"""Nothing lost, end to end: real Postfix, a real ``listgate serve`` and an aiosmtpd LMTP
sink, under load from ``smtp-source`` (Postfix's own load generator) and from threaded
SMTP clients whose every reply is recorded.

- Every post Postfix accepted is delivered exactly once (matched by a token); every post
  refused got a 5xx at RCPT (``decide_at = "rcpt"``) or at the end of DATA (a
  ``decide_at = "headers"`` list), and is never delivered.
- While listgate restarts (SIGTERM, drain, down, started again) under that load, Postfix
  with ``milter_default_action = tempfail`` answers 4xx: no post to a list is accepted
  unchecked. A listener with ``milter_default_action = accept`` (fail-open) lets the
  outsider's post through while listgate is down, as documented.
Counts: docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.e2e.harness import (
    Listener,
    ListgateProcess,
    LmtpSink,
    PostfixInstance,
    find_binary,
    free_port,
    message_bytes,
    new_token,
    traversable_tmpdir,
    wait_until,
)

LIST = "list@example.org"
FORUM = "forum@example.org"
"""A decide_at = "headers" list."""
MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"
ALICE = "alice@example.org"
"""Not a list: delivered to the sink."""


@dataclass
class Env:
    postfix: PostfixInstance
    sink: LmtpSink
    listgate: ListgateProcess
    spec: str

    def port(self, listener: str) -> int:
        return self.postfix.listeners[listener].port


def _config(spec: str) -> str:
    q = json.dumps
    return "\n".join([
        "[milter]", f"listen = [{q(spec)}]", "shutdown_timeout = 5", "",
        "[static.posters]", f"{q(LIST)} = [{q(MEMBER)}]", f"{q(FORUM)} = [{q(MEMBER)}]", "",
        f"[lists.{q(FORUM)}]", 'decide_at = "headers"', "",
    ])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    sink = LmtpSink()
    sink.start()
    base = traversable_tmpdir("lg-rel-")
    spec = f"inet:127.0.0.1:{free_port()}"
    postfix = PostfixInstance(base, [
        Listener("gate", free_port(), spec),
        Listener("failopen", free_port(), spec,
                 overrides=(("milter_default_action", "accept"),)),
    ], sink.port)
    workdir = tmp_path_factory.mktemp("listgate-nothing-lost")
    lg = ListgateProcess(workdir, [spec], {})
    lg.config_path.write_text(_config(spec))
    try:
        postfix.create()
        # More smtpd processes than the clients below open at once.
        (postfix.config_dir / "main.cf").write_text(
            (postfix.config_dir / "main.cf").read_text() + "default_process_limit = 60\n")
        postfix.start()
        lg.start()
        yield Env(postfix, sink, lg, spec)
    finally:
        lg.stop()
        postfix.stop()
        sink.stop()
        keep = tmp_path_factory.mktemp("postfix-log")
        if (base / "log" / "maillog").exists():
            shutil.copy(base / "log" / "maillog", keep / "maillog")
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Post:
    """One message a client tried to post, and what Postfix answered."""

    token: str
    sender: str
    recipient: str
    header_from: str
    expect: str
    """"accept" or "reject" (what listgate would say), or "deliver" (not a list)."""
    rcpt: int = 0
    final: int = 0
    """The reply to the end of DATA (0 if DATA was not reached)."""
    at: float = 0.0
    stage: str = ""

    @property
    def accepted(self) -> bool:
        return self.final == 250


KINDS = [
    (MEMBER, LIST, MEMBER, "accept"),
    (OUTSIDER, LIST, OUTSIDER, "reject"),
    (OUTSIDER, FORUM, OUTSIDER, "reject"),  # 250 at RCPT, 550 at end of DATA
    (OUTSIDER, FORUM, MEMBER, "accept"),  # From: a member: Mailman accepts it
    (MEMBER, FORUM, MEMBER, "accept"),
    (OUTSIDER, ALICE, OUTSIDER, "deliver"),
]


def send(port: int, post: Post) -> None:
    """One SMTP session, one message; record the RCPT and final replies (never raises
    for an SMTP-level refusal)."""
    post.at = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="load.feas.test",
                          timeout=30) as smtp:
            smtp.ehlo()
            code, _ = smtp.mail(post.sender)
            if code != 250:
                post.rcpt, post.stage = code, "mail"
                return
            post.rcpt, _ = smtp.rcpt(post.recipient)
            if post.rcpt != 250:
                post.stage = "rcpt"
                return
            msg = message_bytes(post.header_from, [post.recipient], post.token)  # From: header
            code, _ = smtp.docmd("DATA")
            if code != 354:
                post.final, post.stage = code, "data"
                return
            body = re.sub(rb"(?m)^\.", b"..", msg)
            smtp.send(body + b"\r\n.\r\n")
            post.final, _ = smtp.getreply()
            post.stage = "eod"
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        post.stage = f"error: {exc}"


@dataclass
class Load:
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_clients(port: int, clients: int, per_client: int, load: Load,
                stop: threading.Event | None = None, pause: float = 0.0) -> None:
    def client(n: int) -> None:
        for i in range(per_client):
            if stop is not None and stop.is_set():
                return
            sender, rcpt, hfrom, expect = KINDS[(n + i) % len(KINDS)]
            post = Post(new_token(), sender, rcpt, hfrom, expect)
            send(port, post)
            with load.lock:
                load.posts.append(post)
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)


def smtp_source(port: int, subject: str, count: int, sessions: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [find_binary("smtp-source"), "-s", str(sessions), "-m", str(count), "-f", MEMBER,
         "-t", LIST, "-S", subject, "-M", "load.feas.test", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def deliveries_by_token(sink: LmtpSink) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for d in sink.deliveries:
        if d.token:
            out.setdefault(d.token, []).append(tuple(r.lower() for r in d.rcpt_tos))
    return out


def count_subject(sink: LmtpSink, subject: str) -> int:
    return sum(1 for d in sink.deliveries
               if re.search(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", d.data,
                            re.MULTILINE))


def check_exactly_once(env: Env, posts: list[Post]) -> dict[str, int]:
    """Every accepted post delivered exactly once; every refused one never; tallies."""
    env.postfix.wait_queue_empty(60)
    got = deliveries_by_token(env.sink)
    tally: dict[str, int] = {}
    problems = []
    for p in posts:
        copies = got.get(p.token, [])
        key = f"{p.expect}/{p.stage}/{p.final or p.rcpt}"
        tally[key] = tally.get(key, 0) + 1
        if p.accepted:
            if copies != [(p.recipient,)]:
                problems.append(f"accepted {p} delivered {copies}")
            if p.expect == "reject":
                problems.append(f"a post listgate rejects was accepted: {p}")
        else:
            if copies:
                problems.append(f"refused {p} but delivered {copies}")
    assert not problems, "\n".join(problems[:20])
    return tally


def test_load_every_accepted_post_delivered_once(env: Env) -> None:
    """600 recorded posts from 6 clients (members, outsiders, a headers-mode list, a
    non-list) plus 300 member posts from smtp-source (4 sessions), at once."""
    subject = f"smtp-source {secrets.token_hex(4)}"
    source = smtp_source(env.port("gate"), subject, 300, 4)
    load = Load()
    began = time.monotonic()
    run_clients(env.port("gate"), 6, 100, load)
    out, _ = source.communicate(timeout=240)
    elapsed = time.monotonic() - began
    assert source.returncode == 0, out
    tally = check_exactly_once(env, load.posts)
    wait_until(lambda: count_subject(env.sink, subject) >= 300, 30, "smtp-source deliveries")
    assert count_subject(env.sink, subject) == 300
    posts = load.posts
    assert all(p.stage != "" and not p.stage.startswith("error") for p in posts), tally
    for p in posts:
        if p.expect == "reject" and p.recipient == LIST:
            assert (p.stage, p.rcpt) == ("rcpt", 550), p
        elif p.expect == "reject":
            assert (p.stage, p.rcpt, p.final) == ("eod", 250, 550), p
        else:
            assert p.accepted, p
    print(f"\n{len(posts)} recorded posts + 300 smtp-source posts in {elapsed:.1f} s: {tally}")


def test_restart_under_load_tempfails_never_accepts_unchecked(env: Env) -> None:
    """listgate is stopped (SIGTERM: drain) and started again while 6 clients post
    without pause: each post is delivered exactly once if accepted, none that listgate
    rejects is ever accepted, and posts during the restart window get 4xx. While it is
    down, probes to the tempfail listener get 451 and to the fail-open listener 250."""
    load = Load()
    stop = threading.Event()
    runner = threading.Thread(
        target=run_clients, args=(env.port("gate"), 6, 10_000, load, stop, 0.01))
    runner.start()
    probes: list[tuple[str, Post]] = []
    try:
        time.sleep(2.0)
        down_from = time.monotonic()
        rc = env.listgate.stop()
        assert rc == 0, env.listgate.stderr_text()[-2000:]
        for listener in ("gate", "failopen"):
            for _ in range(3):
                post = Post(new_token(), OUTSIDER, LIST, OUTSIDER, "reject")
                send(env.port(listener), post)
                probes.append((listener, post))
        time.sleep(1.0)
        env.listgate.start()
        up_at = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        runner.join(120)
    posts = load.posts
    tally = check_exactly_once(env, posts)
    window = [p for p in posts if down_from - 0.5 <= p.at <= up_at]
    tempfailed = [p for p in window if 400 <= (p.final or p.rcpt) < 500]
    accepted_in_window = [p for p in window if p.accepted]
    after = [p for p in posts if p.at > up_at + 1.0]
    got = deliveries_by_token(env.sink)
    gate_probes = [p for listener, p in probes if listener == "gate"]
    open_probes = [p for listener, p in probes if listener == "failopen"]
    summary = (f"{len(posts)} posts; restart window {up_at - down_from:.1f} s: "
               f"{len(window)} posts, {len(tempfailed)} got 4xx, {len(accepted_in_window)} "
               f"accepted (all checked: {all(p.expect != 'reject' for p in accepted_in_window)});"
               f" probes while down: tempfail listener "
               f"{[p.rcpt for p in gate_probes]}, fail-open listener "
               f"{[(p.rcpt, p.final) for p in open_probes]}; tally {tally}")
    print("\n" + summary)
    assert tempfailed, summary
    assert all(p.rcpt == 451 or p.stage == "mail" for p in gate_probes), summary
    assert all(not got.get(p.token) for p in gate_probes), summary
    # Fail-open, as documented: the outsider's post passes unchecked and is delivered.
    assert all(p.accepted for p in open_probes), summary
    assert all(len(got.get(p.token, [])) == 1 for p in open_probes), summary
    # listgate came back: posts after the restart are judged again.
    assert any(p.expect == "reject" and p.rcpt == 550 for p in after), summary
    assert any(p.expect == "accept" and p.accepted for p in after), summary
