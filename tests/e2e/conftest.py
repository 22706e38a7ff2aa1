"""Fixtures for the end-to-end tests: LMTP sink, private Postfix instance, listgate
processes, a Mailman world per module, recorded SMTP sessions.

Invariants:
- Every module-scoped fixture here is set up once per module that uses it, as if the
  module had defined it; session-scoped ones once per run.
- A recorded SMTP session is always closed, its transcript printed and saved; a failing
  test also prints the MTA's log and the listgates' stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailman_harness import MailmanCore

from .harness import (
    POSTERS,
    Listener,
    ListgateProcess,
    LmtpSink,
    PostfixInstance,
    SmtpSessions,
    free_port,
    instance_lifetime,
    ipv6_loopback_available,
    serving,
    tail,
    traversable_tmpdir,
)
from .mailman_fixtures import MailmanWorld, populate, require_mailman

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


POSTFIX_FILES = ("log/maillog", "etc/main.cf", "etc/master.cf")
"""What a test report keeps of a private Postfix instance."""


def recorded_smtp(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    ports: Mapping[str, int],
    mta_log: Callable[[], str],
    listgates: Sequence[str],
) -> Iterator[SmtpSessions]:
    """For ``yield from`` in an ``smtp`` fixture: the test's recorded sessions to *ports*.

    Afterwards the transcripts are written to ``<tmp_path>/smtp-transcripts.txt`` and
    printed (see them with ``pytest -s``, or in the report of a failing test); if the test
    failed, ``mta_log()`` (what the MTA logged during the test) and the stderr tail of each
    fixture in *listgates* that the test uses are printed too.
    """
    sessions = SmtpSessions(ports, request.node.name)
    yield sessions
    text = sessions.close()
    (tmp_path / "smtp-transcripts.txt").write_text(text)
    print(f"\n{text}", end="")
    if _failed(request):
        print(mta_log())
        for name in listgates:
            if name in request.fixturenames:
                lg = request.getfixturevalue(name)
                print(f"=== {name} stderr, tail ===\n{tail(lg.stderr_text())}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanWorld]:
    """A running Mailman core with the test list and its posters (one per module)."""
    require_mailman()
    core = MailmanCore(tmp_path_factory.mktemp("mailman-core"))
    core.start()
    try:
        yield populate(core)
    finally:
        core.stop()


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
    with instance_lifetime(
        env.postfix, base, lambda: tmp_path_factory.mktemp("postfix"), POSTFIX_FILES
    ):
        yield env


@pytest.fixture(scope="session")
def listgate_main(
    postfix_env: PostfixEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListgateProcess]:
    """The session-wide listgate that listeners "main" and "v2" use."""
    yield from serving(ListgateProcess(
        tmp_path_factory.mktemp("listgate-main"), [postfix_env.main_milter], POSTERS
    ))


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
) -> Iterator[SmtpSessions]:
    """Recorded SMTP sessions to the shared Postfix's listeners (see :func:`recorded_smtp`)."""
    mark = postfix_env.postfix.log_mark()
    ports = {name: lst.port for name, lst in postfix_env.postfix.listeners.items()}
    yield from recorded_smtp(
        request, tmp_path, ports,
        lambda: f"=== Postfix maillog during the test ===\n{postfix_env.postfix.log_since(mark)}",
        ("listgate_main", "listgate_policy"),
    )
