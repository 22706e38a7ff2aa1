"""Fixtures for the end-to-end tests: LMTP sink, private Postfix instance, listgate processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import (
    POSTERS,
    Listener,
    ListgateProcess,
    LmtpSink,
    PostfixInstance,
    RecordingSMTP,
    Transcript,
    free_port,
    ipv6_loopback_available,
    tail,
    traversable_tmpdir,
)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report so fixtures can tell whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@dataclass(frozen=True)
class PostfixEnv:
    """The shared Postfix instance and the milter addresses its listeners use."""

    postfix: PostfixInstance
    base: Path
    main_milter: str
    """listen spec of the session-wide listgate (listeners "main" and "v2")."""
    down_milter: str
    """listen spec for the milter-down test (listener "down")."""
    unix_milter: str
    """listen spec (unix socket) for listener "unix"."""
    inet6_milter: str
    """listen spec (inet6 [::1]) for listener "inet6"."""
    policy_service: str = ""
    """listen spec of the listgate policy server that listener "policy" asks
    (check_policy_service, no milter)."""
    policy_down_service: str = ""
    """listen spec for the policy-server-down test (listener "policy-down")."""

    def port(self, listener: str) -> int:
        """SMTP port of a listener."""
        return self.postfix.listeners[listener].port


@pytest.fixture(scope="session")
def sink() -> Iterator[LmtpSink]:
    """An LMTP server on 127.0.0.1 where Postfix delivers accepted mail."""
    s = LmtpSink()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def postfix_env(sink: LmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixEnv]:
    """One private Postfix instance with a listener per milter setup.

    Listeners: main (listgate on inet 127.0.0.1), v2 (same listgate, milter_protocol = 2),
    nomilter (no milter), down (a milter port whose listgate a test stops), unix (unix
    socket) and inet6 (listgate on [::1]); policy and policy-down: no milter, but
    ``check_policy_service`` to a listgate policy port in smtpd_recipient_restrictions.
    """
    base = traversable_tmpdir("lg-e2e-")
    run_dir = base / "run"
    run_dir.mkdir()
    run_dir.chmod(0o755)
    main_port, down_port = free_port(), free_port()
    v6_port = free_port("::1") if ipv6_loopback_available() else free_port()
    policy_port, policy_down_port = free_port(), free_port()
    unix_path = run_dir / "listgate.sock"
    env = PostfixEnv(
        postfix=PostfixInstance(
            base,
            [
                Listener("main", free_port(), f"inet:127.0.0.1:{main_port}"),
                Listener(
                    "v2",
                    free_port(),
                    f"inet:127.0.0.1:{main_port}",
                    overrides=(("milter_protocol", "2"),),
                ),
                Listener("nomilter", free_port(), ""),
                Listener("down", free_port(), f"inet:127.0.0.1:{down_port}"),
                Listener("unix", free_port(), f"unix:{unix_path}"),
                # Postfix spells an IPv6 milter address inet:[addr]:port (no "inet6:").
                Listener("inet6", free_port(), f"inet:[::1]:{v6_port}"),
                # master.cf -o values cannot hold spaces: a comma separates the restriction
                # from its argument just as well.
                Listener(
                    "policy",
                    free_port(),
                    "",
                    overrides=(
                        ("smtpd_recipient_restrictions",
                         f"check_policy_service,inet:127.0.0.1:{policy_port}"),
                    ),
                ),
                Listener(
                    "policy-down",
                    free_port(),
                    "",
                    overrides=(
                        ("smtpd_recipient_restrictions",
                         f"check_policy_service,inet:127.0.0.1:{policy_down_port}"),
                    ),
                ),
            ],
            sink.port,
        ),
        base=base,
        main_milter=f"inet:127.0.0.1:{main_port}",
        down_milter=f"inet:127.0.0.1:{down_port}",
        unix_milter=f"unix:{unix_path}",
        inet6_milter=f"inet6:[::1]:{v6_port}",
        policy_service=f"inet:127.0.0.1:{policy_port}",
        policy_down_service=f"inet:127.0.0.1:{policy_down_port}",
    )
    try:
        env.postfix.create()
        env.postfix.start()
        yield env
    finally:
        try:
            env.postfix.stop()
        finally:
            keep = tmp_path_factory.mktemp("postfix")
            for name in ("log/maillog", "etc/main.cf", "etc/master.cf"):
                src = base / name
                if src.exists():
                    shutil.copy(src, keep / src.name)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def listgate_main(
    postfix_env: PostfixEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The session-wide listgate that listeners "main" and "v2" use."""
    lg = ListgateProcess(
        tmp_path_factory.mktemp("listgate-main"), [postfix_env.main_milter], POSTERS
    )
    lg.start()
    try:
        yield lg
    finally:
        lg.stop()


@pytest.fixture
def start_listgate(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ListgateProcess]]:
    """Factory: start a listgate on the given listen specs; every one is stopped afterwards.

    Keyword arguments become string settings of its [milter] section.
    """
    started: list[ListgateProcess] = []

    def start(listen: list[str], **milter: str) -> ListgateProcess:
        workdir = tmp_path / f"listgate-{len(started)}"
        workdir.mkdir()
        lg = ListgateProcess(workdir, listen, POSTERS, milter)
        started.append(lg)
        lg.start()
        return lg

    yield start
    for lg in started:
        lg.stop()
        if _failed(request):
            print(f"=== listgate {lg.listen} stderr ===\n{lg.stderr_text()}")


@pytest.fixture
def smtp(
    postfix_env: PostfixEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, str], RecordingSMTP]]:
    """Factory: an SMTP session to a Postfix listener, recording a transcript.

    Transcripts are written to ``<tmp_path>/smtp-transcripts.txt`` and printed (see them
    with ``pytest -s``, or in the report of a failing test).
    """
    sessions: list[RecordingSMTP] = []
    mark = postfix_env.postfix.log_mark()

    def connect(listener: str, title: str) -> RecordingSMTP:
        transcript = Transcript(f"{request.node.name}: {title}")
        client = RecordingSMTP(transcript, "127.0.0.1", postfix_env.port(listener))
        sessions.append(client)
        return client

    yield connect
    for client in sessions:
        client.close_politely()
    text = "".join(c.transcript.render() for c in sessions)
    (tmp_path / "smtp-transcripts.txt").write_text(text)
    print(f"\n{text}", end="")
    if _failed(request):
        print(f"=== Postfix maillog during the test ===\n{postfix_env.postfix.log_since(mark)}")
        if "listgate_main" in request.fixturenames:
            lg = request.getfixturevalue("listgate_main")
            print(f"=== listgate (session) stderr, tail ===\n{tail(lg.stderr_text())}")
