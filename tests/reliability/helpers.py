"""Helpers shared by the reliability tests: a real ``listgate serve`` process
(``support.ListgateServe``, with its RSS and open descriptors readable from /proc), raw
milter packets, a blocking milter client for latency measurements, and an asyncio TCP
proxy that can delay, break or answer HTTP 500 in front of Mailman's REST API.

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from support import ListgateServe, free_port, wait_until

__all__ = [
    "BlockingMilter",
    "FaultProxy",
    "Serve",
    "free_port",
    "open_fds",
    "packet",
    "percentile",
    "raise_nofile",
    "rss_kib",
    "serving",
    "toml",
    "wait_until",
]


OPTNEG = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)
"""Postfix 3.x's OPTNEG offer (v6, all actions, all protocol steps)."""


def packet(cmd: bytes, payload: bytes = b"") -> bytes:
    """One framed milter command."""
    return struct.pack(">I", len(payload) + 1) + cmd + payload


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards *want* (up to the hard
    limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text for {section: {key: value}}; keys with dots or quotes are written as given."""
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            out.append(f"{key} = {json.dumps(value)}")
        out.append("")
    return "\n".join(out)


def rss_kib(pid: int) -> int:
    """VmRSS of *pid* in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """How many descriptors *pid* holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Serve(ListgateServe):
    """``listgate serve --config FILE`` as a child process (logging to a file), ready once
    it logged "listgate ready" and every spec in *wait_for* accepts connections."""

    def start(self, timeout: float = 15.0) -> Serve:
        return super().start(timeout)


# --------------------------------------------------------------------------- milter client


class BlockingMilter:
    """A Postfix-like milter conversation over a plain blocking socket: OPTNEG, then MAIL
    (no reply, listgate negotiates NR_MAIL) and RCPTs, each RCPT's reply timed."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(OPTNEG)
        ident, payload = self.read_packet()
        assert ident == b"O", (ident, payload)
        self.protocol = struct.unpack(">III", payload[:12])[2]

    def read_packet(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 4:
                (length,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + length:
                    body, self.buf = self.buf[4 : 4 + length], self.buf[4 + length :]
                    return body[:1], body[1:]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("milter closed the connection")
            self.buf += chunk

    def mail(self, sender: str) -> None:
        self.sock.sendall(packet(b"M", f"<{sender}>".encode() + b"\0"))
        if not self.protocol & 0x4000:  # no SMFIP_NR_MAIL: a reply comes
            self.read_packet()

    def rcpt(self, recipient: str) -> tuple[bytes, bytes, float]:
        """(reply code byte, payload, seconds)."""
        began = time.perf_counter()
        self.sock.sendall(packet(b"R", f"<{recipient}>".encode() + b"\0"))
        ident, payload = self.read_packet()
        return ident, payload, time.perf_counter() - began

    def abort(self) -> None:
        self.sock.sendall(packet(b"A"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(packet(b"Q"))
        self.sock.close()


def percentile(values: list[float], pct: float) -> float:
    """The *pct* percentile (nearest rank) of *values*."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- REST proxy


class FaultProxy:
    """A loopback TCP proxy in front of Mailman's REST API, in its own thread and loop.

    ``mode``: ``"pass"`` forwards bytes both ways; ``"delay"`` holds each request
    ``delay`` seconds before forwarding it (the reply arrives after the client's
    timeout); ``"500"`` answers every request ``HTTP/1.1 500`` itself; ``"reset"``
    closes each connection at once. Changing ``mode`` affects new requests.
    """

    def __init__(self, upstream_port: int, mode: str = "pass", delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.delay = delay
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.request_lines: list[bytes] = []
        """The request line of every request, in order of arrival."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/3.1"

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        return head + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    request = await self._read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                if request is None:
                    return
                self.requests += 1
                self.request_lines.append(request.split(b"\r\n", 1)[0])
                mode = self.mode
                if mode == "reset":
                    return
                if mode == "500":
                    body = b'{"title": "500 Internal Server Error"}'
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\n"
                                 b"Content-Type: application/json\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    await writer.drain()
                    continue
                if mode == "delay":
                    await asyncio.sleep(self.delay)
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                up_reader, up_writer = upstream
                up_writer.write(request)
                await up_writer.drain()
                response = await self._read_response(up_reader)
                writer.write(response)
                await writer.drain()
        finally:
            if upstream is not None:
                upstream[1].close()

    async def _read_response(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length, chunked = None, False
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                chunk = await reader.readexactly(size + 2)
                body += size_line + chunk
                if size == 0:
                    break
            return head + body
        if length is None:
            return head + await reader.read()
        return head + (await reader.readexactly(length) if length else b"")


@contextlib.contextmanager
def serving(workdir: Path, config: str, **kw: Any) -> Iterator[Serve]:
    """A started Serve, stopped (drained) on exit."""
    s = Serve(workdir, config, **kw).start()
    try:
        yield s
    finally:
        s.stop()
