"""A sample of generated cases through the real milter path: a private Postfix instance
whose listeners ask two ``listgate serve`` processes (backend mailman, against the oracle's
core), one deciding at RCPT and one at the end of headers.

For each post of the sample, Postfix's answers (RCPT reply, then the reply to the end of
DATA) must give the verdict the in-process gate gave, with the same SMTP reply text; and
every verdict is compared against what Mailman did with the same post (no false rejects).
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e.harness import Listener, LmtpSink, PostfixInstance, free_port, traversable_tmpdir
from e2e.mailman_fixtures import MailmanListgate

from .generator import PostSpec, generate
from .oracle import MailmanOracle
from .suite import CaseResult, run
from .test_fidelity import FIXED_SEED
from .verdicts import MODES

pytestmark = pytest.mark.postfix

SAMPLE_SEED = FIXED_SEED + 1
SAMPLE_CASES = 40


@dataclass
class SmtpAnswer:
    verdict: str
    reply: str | None
    transcript: list[str]


def _line(code: int, msg: bytes) -> str:
    text = msg.decode("utf-8", "replace").splitlines()
    return f"{code} {text[-1] if text else ''}".rstrip()


def smtp_verdict(port: int, post: PostSpec, to: str) -> SmtpAnswer:
    """One SMTP transaction through Postfix: accept (250 after DATA), reject (5xx at RCPT
    or after DATA) or tempfail (4xx)."""
    log: list[str] = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname="fidelity.test", timeout=30) as s:
        s.ehlo()
        code, msg = s.mail(post.envelope)
        log.append(f"MAIL FROM:<{post.envelope}> -> {_line(code, msg)}")
        code, msg = s.rcpt(post.recipient)
        log.append(f"RCPT TO:<{post.recipient}> -> {_line(code, msg)}")
        if code >= 400:
            return SmtpAnswer("reject" if code >= 500 else "tempfail", _line(code, msg), log)
        code, msg = s.data(post.raw(to))
        log.append(f"DATA -> {_line(code, msg)}")
        if code >= 400:
            return SmtpAnswer("reject" if code >= 500 else "tempfail", _line(code, msg), log)
        return SmtpAnswer("accept", None, log)


@dataclass
class Milters:
    postfix: PostfixInstance
    ports: dict[str, int]


@pytest.fixture(scope="module")
def milters(oracle: MailmanOracle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Milters]:
    sink = LmtpSink()
    sink.start()
    base = traversable_tmpdir("lg-fidelity-pf-")
    specs = {mode: f"inet:127.0.0.1:{free_port()}" for mode in MODES}
    listeners = [Listener(mode, free_port(), specs[mode]) for mode in MODES]
    postfix = PostfixInstance(base, listeners, sink.port)
    daemons = []
    try:
        postfix.create()
        postfix.start()
        for mode in MODES:
            workdir = tmp_path_factory.mktemp(f"listgate-{mode}")
            lg = MailmanListgate(workdir, [specs[mode]], oracle.core,
                                 {"gate": {"decide_at": mode}})
            lg.start()
            daemons.append(lg)
        yield Milters(postfix, {mode: postfix.listeners[mode].port for mode in MODES})
    finally:
        for lg in daemons:
            with contextlib.suppress(AssertionError):
                lg.stop()
        postfix.stop()
        sink.stop()


@pytest.fixture(scope="module")
def sample(oracle: MailmanOracle,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[list[PostSpec], list[CaseResult]]:
    stats, results = run(oracle, tmp_path_factory.mktemp("fidelity-pf"), SAMPLE_SEED,
                         SAMPLE_CASES)
    assert not stats.errors, stats.errors
    return generate(SAMPLE_SEED, SAMPLE_CASES).posts, results


def test_milter_through_postfix(sample: tuple[list[PostSpec], list[CaseResult]],
                                milters: Milters) -> None:
    posts, results = sample
    worlds = {w.index: w for w in generate(SAMPLE_SEED, SAMPLE_CASES).worlds}
    problems = []
    seen: set[tuple[str, str, str]] = set()
    for post, r in zip(posts, results, strict=True):
        for mode in MODES:
            got = smtp_verdict(milters.ports[mode], post, worlds[post.world].posting_address)
            seen.add((mode, got.verdict, got.transcript[-1].split(" ", 1)[0]))
            want = r.verdicts[mode]
            if got.verdict != want.verdict or got.reply != want.reply:
                problems.append(f"{mode}: Postfix+milter {got.verdict} {got.reply!r} vs "
                                f"in-process {want.verdict} {want.reply!r}\n    "
                                + "\n    ".join(got.transcript) + f"\n    {r.summary()}")
            if got.verdict == "reject" and r.false_reject[mode]:
                problems.append(f"{mode}: false reject through Postfix: {r.summary()}")
    assert not problems, (f"seed {SAMPLE_SEED}, {SAMPLE_CASES} cases\n"
                          + "\n".join(problems) + f"\n{milters.postfix.maillog_tail()}")
    # The sample exercises every path: rejects at RCPT (rcpt mode) and at the end of DATA
    # (headers mode), and accepts in both.
    assert {("rcpt", "reject", "RCPT"), ("headers", "reject", "DATA"),
            ("rcpt", "accept", "DATA"), ("headers", "accept", "DATA")} <= seen, seen
