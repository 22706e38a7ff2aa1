"""Load generators for the overload tests, run as their own processes so that their
work does not share a CPU slice with the client whose latency is measured.

``python tests/reliability/loadgen.py slowloris PORT COUNT INTERVAL LIMIT``: open COUNT
milter connections to 127.0.0.1:PORT, negotiate each, print ``READY`` once all are
open, then on every connection send the next byte of a MAIL packet every INTERVAL
seconds (one packet never completes). Each connection ends when the daemon closes it;
after LIMIT seconds the rest are closed here. Prints one JSON line: per connection, the
seconds from its first packet byte to the daemon's close (null = not closed by the
daemon), and the bytes sent.
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import sys
import time

OPTNEG = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)
TRICKLE = struct.pack(">Ic", 200, b"M") + b"<slowloris@example.net>" * 20


async def slowloris(port: int, count: int, interval: float, limit: float) -> dict[str, object]:
    sem = asyncio.Semaphore(200)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(OPTNEG)
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(5), 10)
            (length,) = struct.unpack(">I", head[:4])
            await asyncio.wait_for(reader.readexactly(length - 1), 10)
            conns.append((reader, writer))

    await asyncio.gather(*(connect() for _ in range(count)))
    print("READY", flush=True)
    start = time.monotonic()
    deadline = start + limit

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[object]:
        closed: asyncio.Task[bytes] = asyncio.ensure_future(reader.read())
        first = time.monotonic()
        sent = 0
        try:
            for byte in TRICKLE:
                if closed.done():
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                sent += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.wait({closed}, timeout=min(interval, remaining))
            if not closed.done():
                await asyncio.wait({closed}, timeout=max(0.0, deadline - time.monotonic()))
            if closed.done() and not closed.cancelled():
                return [time.monotonic() - first, sent]
            return [None, sent]
        finally:
            closed.cancel()
            writer.close()

    results = await asyncio.gather(*(trickle(r, w) for r, w in conns), return_exceptions=True)
    return {"connections": len(conns),
            "results": [r if isinstance(r, list) else [None, 0] for r in results]}


def main(argv: list[str]) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if argv[1] == "slowloris":
        port, count, interval, limit = int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5])
        out = asyncio.run(slowloris(port, count, interval, limit))
        print(json.dumps(out), flush=True)
        return 0
    raise SystemExit(f"unknown mode {argv[1]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
