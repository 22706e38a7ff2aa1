"""The open files limit follows max_connections: ``ensure_fd_limit`` in a child process
(it changes the limits of the process that calls it), and ``listgate serve`` started
under a low soft limit."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

from support import ListgateServe, free_port

from listgate.server.base import FD_MARGIN

CHILD = """
import resource, sys
from listgate.server.base import ensure_fd_limit
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(ensure_fd_limit(int(sys.argv[3])))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def run_child(soft: int, hard: int, connections: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(soft), str(hard), str(connections)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0], int(out[1])


def current_hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def test_the_soft_limit_is_raised_to_what_the_connections_need() -> None:
    """A soft limit of 256 becomes connections + FD_MARGIN, silently, when the hard
    limit allows it."""
    hard = current_hard()
    problem, soft = run_child(256, hard, 4096)
    assert (problem, soft) == ("None", 4096 + FD_MARGIN)


def test_a_higher_soft_limit_is_never_lowered() -> None:
    """A soft limit above the need is left as it is."""
    hard = current_hard()
    problem, soft = run_child(min(hard, 50_000), hard, 100)
    assert (problem, soft) == ("None", min(hard, 50_000))


def test_a_hard_limit_too_low_is_reported_with_what_to_do() -> None:
    """With the hard limit below the need, the soft limit goes up to it and the problem
    names max_connections and LimitNOFILE."""
    problem, soft = run_child(100, 1024, 4096)
    assert soft == 1024
    assert "the open files limit is 1024" in problem
    assert "max_connections (4096 in all)" in problem
    assert "LimitNOFILE" in problem


def test_serve_raises_its_limit_for_the_default_max_connections(tmp_path: Path) -> None:
    """``listgate serve`` started with a soft limit of 512 runs with room for the default
    milter max_connections (4096), and warns only if the hard limit is lower."""
    port = free_port()
    config = (f'[milter]\nlisten = "inet:127.0.0.1:{port}"\nworkers = 1\n'
              '[static]\nposters = {}\n')
    with ListgateServe(tmp_path, config, nofile=512,
                       wait_for=[f"inet:127.0.0.1:{port}"]).start() as daemon:
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        match = re.search(r"^Max open files\s+(\d+)", limits, re.M)
        assert match is not None, limits
        assert int(match.group(1)) == min(4096 + FD_MARGIN, current_hard())
        warned = "open files limit" in daemon.log()
        assert warned is (current_hard() < 4096 + FD_MARGIN), daemon.log()
