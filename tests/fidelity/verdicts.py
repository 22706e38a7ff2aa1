"""listgate's verdicts for the generated posts, from the code the daemon runs.

In process: ``listgate.app.build_gate`` over the real Mailman backend (``[backend] type =
"mailman"`` against the oracle's REST API), one ``Gate`` per mode sharing one cached
backend, asked exactly as the milter front end asks it:

- ``rcpt``: one ``PostingRequest`` per RCPT (envelope sender, recipient).
- ``headers``: the same RCPT request; a provisional verdict (a reject that waits, or an
  accept of a post that has no other recipient, as every generated post) is judged again
  at the end of headers, with ``header_senders`` built by
  ``listgate.decision.senders.mailman_senders`` from the ``From:``/``Reply-To:``/``Sender:`` headers
  (what ``MilterSession.eoh_request`` does).

As a subprocess, for a sample: ``listgate check SENDER LIST --config CFG --json [--from
ADDR]...`` (the ``--from`` form only for posts whose sender headers are all ``From:``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from listgate.app import build_gate
from listgate.config import load_config
from listgate.decision.gate import Gate
from listgate.decision.model import Decision, Evidence, PostingRequest, normalize_address
from listgate.decision.senders import mailman_senders

from .generator import PostSpec

SENDER_FIELDS = ("from", "reply-to", "sender")
MODES = ("rcpt", "headers")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ModeVerdict:
    """listgate's answer in one mode."""

    verdict: str
    """accept, reject or tempfail."""
    phase: str
    """rcpt (decided at RCPT) or eoh (decided at the end of headers)."""
    reply: str | None
    reasons: list[str]


def write_config(path: Path, url: str, user: str, password: str, decide_at: str) -> Path:
    """A listgate config for the Mailman backend (the REST password in a 0600 file)."""
    secret = path.with_suffix(".password")
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")
    q = json.dumps
    path.write_text(
        "[milter]\nlisten = \"inet:127.0.0.1:1\"\n\n"
        "[backend]\ntype = \"mailman\"\n\n"
        f"[mailman]\nurl = {q(url)}\nuser = {q(user)}\npassword_file = {q(str(secret))}\n"
        "timeout = 20\n\n"
        f"[gate]\ndecide_at = {q(decide_at)}\n"
    )
    return path


def request_for(post: PostSpec) -> PostingRequest:
    """The RCPT-time request, as the milter front end builds it."""
    return PostingRequest(normalize_address(post.envelope), normalize_address(post.recipient))


def eoh_request(post: PostSpec) -> PostingRequest:
    """The end-of-headers request (``MilterTransaction.eoh_request``), List-Post values
    included."""
    rcpt = request_for(post)
    headers = [(n, v) for n, v in post.headers if n.lower() in SENDER_FIELDS]
    senders = mailman_senders(headers, rcpt.sender)
    list_posts = tuple(v.strip().lower() for n, v in post.headers if n.lower() == "list-post")
    return dataclasses.replace(rcpt, header_senders=senders or (rcpt.sender,),
                               list_posts=list_posts)


def _mode(decision: Decision, phase: str) -> ModeVerdict:
    return ModeVerdict(decision.verdict.value, phase, decision.smtp_reply,
                       list(decision.reasons))


async def _decide(gates: dict[str, Gate], post: PostSpec) -> dict[str, ModeVerdict]:
    rcpt = request_for(post)
    out = {"rcpt": _mode(await gates["rcpt"].decide(rcpt), "rcpt")}
    first = await gates["headers"].decide(rcpt)
    if first.provisional:  # a single-recipient post: judged (again) at end of headers
        out["headers"] = _mode(await gates["headers"].decide(eoh_request(post)), "eoh")
    else:
        out["headers"] = _mode(first, "rcpt")
    return out


async def _decide_all(configs: dict[str, Path], posts: Sequence[PostSpec],
                      concurrency: int) -> dict[str, dict[str, ModeVerdict]]:
    rcpt_config = load_config(configs["rcpt"])
    gate_rcpt = build_gate(rcpt_config)
    gates = {"rcpt": gate_rcpt,
             "headers": build_gate(load_config(configs["headers"]), gate_rcpt.backend)}
    limit = asyncio.Semaphore(concurrency)

    async def one(post: PostSpec) -> tuple[str, dict[str, ModeVerdict]]:
        async with limit:
            return post.case_id, await _decide(gates, post)

    try:
        return dict(await asyncio.gather(*(one(p) for p in posts)))
    finally:
        await gate_rcpt.backend.aclose()


def decide_all(configs: dict[str, Path], posts: Sequence[PostSpec],
               concurrency: int = 8) -> dict[str, dict[str, ModeVerdict]]:
    """Both modes' verdicts for every post, with a fresh gate (so fresh caches)."""
    return asyncio.run(_decide_all(configs, posts, concurrency))


def eoh_decisions(config: Path, posts: Sequence[PostSpec]) -> dict[str, ModeVerdict]:
    """The end-of-headers decision alone (what ``listgate check --from`` answers)."""

    async def run() -> dict[str, ModeVerdict]:
        gate = build_gate(load_config(config))
        try:
            return {p.case_id: _mode(await gate.decide(eoh_request(p)), "eoh") for p in posts}
        finally:
            await gate.backend.aclose()

    return asyncio.run(run())


def from_only(post: PostSpec) -> bool:
    """Whether ``listgate check --from`` can state this post's headers (sender headers
    all ``From:``, and no ``List-Post:``, which it has no option for)."""
    names = [n.lower() for n, _ in post.headers if n.lower() in SENDER_FIELDS]
    has_list_post = any(n.lower() == "list-post" for n, _ in post.headers)
    return bool(names) and set(names) == {"from"} and not has_list_post


def cli_check(config: Path, post: PostSpec, *, with_headers: bool) -> dict[str, object]:
    """``listgate check`` as a subprocess (JSON output) for *post*."""
    argv = [sys.executable, "-m", "listgate", "check", post.envelope or "<>", post.recipient,
            "--config", str(config), "--json"]
    if with_headers:
        for name, value in post.headers:
            if name.lower() == "from":
                argv += ["--from", value]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          cwd=REPO_ROOT)
    try:
        answer: dict[str, object] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"listgate check printed no JSON (rc={proc.returncode}): "
                             f"{argv}\n{proc.stdout}\n{proc.stderr}") from None
    answer["exit"] = proc.returncode
    return answer


def _from_addresses(post: PostSpec) -> tuple[str, ...]:
    """The post's From: addresses as listgate's milter front end finds them."""
    return mailman_senders([(n, v) for n, v in post.headers if n.lower() == "from"], "")


def auth_decisions(headers_config: Path, posts: Sequence[PostSpec]
                   ) -> dict[str, dict[str, ModeVerdict]]:
    """End-of-headers verdicts on the same lists with ``require_authenticated``: the
    baseline (option off), "authenticated" (SPF pass for the envelope, a DKIM signature
    aligned with every From: domain) and "forged" (SPF fail, no signature), explained
    with the results ``listgate check --spf/--dkim-domain`` uses (no DNS)."""
    from listgate.auth.authenticator import GivenResults
    from listgate.decision.auth import SpfResult

    auth_config = headers_config.with_name("listgate-auth.toml")
    auth_config.write_text(headers_config.read_text() + "require_authenticated = true\n")

    async def run() -> dict[str, dict[str, ModeVerdict]]:
        base = build_gate(load_config(headers_config))
        config = load_config(auth_config)
        out: dict[str, dict[str, ModeVerdict]] = {}
        try:
            forged = build_gate(config, base.backend, GivenResults(SpfResult.FAIL, ()))
            for post in posts:
                froms = _from_addresses(post)
                domains = tuple(dict.fromkeys(a.rpartition("@")[2] for a in froms))
                proven = build_gate(config, base.backend,
                                    GivenResults(SpfResult.PASS, domains))
                request = dataclasses.replace(
                    eoh_request(post), evidence=Evidence(header_from=froms))
                out[post.case_id] = {
                    "baseline": _mode(await base.decide(request), "eoh"),
                    "authenticated": _mode(await proven.decide(request), "eoh"),
                    "forged": _mode(await forged.decide(request), "eoh"),
                }
        finally:
            await base.backend.aclose()
        return out

    return asyncio.run(run())
