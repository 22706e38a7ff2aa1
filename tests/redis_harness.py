"""A private redis-server for the tests: Debian's binary on a free loopback port, with its
own config and data directory (the Debian package's own service plays no part).

``RedisServer`` starts, stops, pauses (SIGSTOP) and restarts it on the same port;
``Blackhole`` is a socket that accepts connections and never answers. The fixture
``redis_server`` gives each test a fresh instance.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:*port*, data in *workdir*."""

    def __init__(self, workdir: Path, port: int | None = None, password: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "bind 127.0.0.1", f"port {self.port}", f"dir {workdir}", "save \"\"",
            "appendonly no", "daemonize no", "protected-mode yes", "loglevel warning",
            f"logfile {workdir / 'redis.log'}", "databases 4",
        ]
        if password:
            lines.append(f"requirepass {password}")
        (workdir / "redis.conf").write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        """The redis:// URL (no password: listgate reads it from a file)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.workdir / "redis.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start: {self.workdir / 'redis.log'}")

    def stop(self) -> None:
        """Stop it (SIGKILL after SIGTERM is ignored for 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args: str) -> str:
        """One command through a raw socket (RESP inline); the first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            if self.password:
                s.sendall(f"AUTH {self.password}\r\n".encode())
                s.recv(64)
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(65536).decode(errors="replace")


class Blackhole:
    """A listening socket on 127.0.0.1 that accepts every connection and never answers."""

    def __init__(self, port: int | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh private redis-server for one test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()

