"""Overload of a real ``listgate serve`` process.

1. Connections: with ``max_connections = 10000`` the daemon holds 10,000 negotiated
   milter connections at once and refuses the next 50 cleanly (closed at accept, before
   a byte is read, one rate-limited WARNING); its VmRSS is recorded; once one connection
   goes, a new client is served.
2. Slowloris: 1,000 connections each trickling one byte per INTERVAL of a packet that
   never completes are all cut at ``command_timeout``, while a normal client's p99 RCPT
   latency stays within 2x its unloaded p99. CI runs it scaled down (command_timeout
   2 s, 1 byte/s); ``LISTGATE_FULL_SCALE=1`` runs the full scale (command_timeout 30 s,
   one byte every 10 s). Figures: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .helpers import (
    OPTNEG,
    BlockingMilter,
    free_port,
    open_fds,
    percentile,
    raise_nofile,
    rss_kib,
    serving,
    toml,
    wait_until,
)

HOLD = 10_000
EXTRA = 50
FULL = os.environ.get("LISTGATE_FULL_SCALE") == "1"
REJECT = b"550 5.7.1 <outsider@example.net> is not allowed to post to <list@example.org>\0"


def _config(port: int, **milter: object) -> str:
    text = toml({"milter": {"listen": f"inet:127.0.0.1:{port}", **milter},
                 "log": {"level": "info"}})
    return text + '[static.posters]\n"list@example.org" = ["member@example.com"]\n'


async def _open(port: int, count: int, sem: asyncio.Semaphore,
                held: list[asyncio.StreamWriter]) -> tuple[int, int]:
    """Open *count* connections and negotiate each; (negotiated, refused)."""
    negotiated = refused = 0

    async def one() -> None:
        nonlocal negotiated, refused
        async with sem:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(OPTNEG)
                await writer.drain()
                head = await asyncio.wait_for(reader.read(5), 20)
            except (ConnectionError, OSError):
                refused += 1
                return
            if head[4:5] == b"O":
                negotiated += 1
                held.append(writer)
            else:
                refused += 1
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return negotiated, refused


def test_ten_thousand_connections_then_clean_refusal(tmp_path: Path) -> None:
    """10,000 held and served; 50 more refused at once; a freed slot is reused."""
    assert raise_nofile(HOLD + EXTRA + 500) >= HOLD + EXTRA + 200, "RLIMIT_NOFILE hard limit"
    port = free_port()
    config = _config(port, max_connections=HOLD, idle_timeout=300)
    with serving(tmp_path, config, nofile=HOLD + EXTRA + 500,
                 wait_for=(f"inet:127.0.0.1:{port}",)) as daemon:
        rss_idle = rss_kib(daemon.pid)

        async def run() -> dict[str, float]:
            sem = asyncio.Semaphore(400)
            held: list[asyncio.StreamWriter] = []
            began = time.monotonic()
            ok, refused = await _open(port, HOLD, sem, held)
            opened_in = time.monotonic() - began
            assert (ok, refused) == (HOLD, 0)
            await asyncio.sleep(0.5)
            rss_full, fds_full = rss_kib(daemon.pid), open_fds(daemon.pid)
            extra: list[asyncio.StreamWriter] = []
            ok2, refused2 = await _open(port, EXTRA, sem, extra)
            assert (ok2, refused2) == (0, EXTRA), (ok2, refused2)
            # A held connection still works (RCPT decided) while the cap is reached.
            held[0].close()
            await asyncio.sleep(0.3)
            client = await asyncio.to_thread(BlockingMilter, port)
            client.mail("outsider@example.net")
            assert client.rcpt("list@example.org")[:2] == (b"y", REJECT)
            client.close()
            for w in held:
                w.close()
            return {"opened_in": opened_in, "rss_full": rss_full, "fds_full": fds_full}

        figures = asyncio.run(run())
        wait_until(lambda: "max_connections=10000 reached" in daemon.log(), 5,
                   "the refusal warning")
        refusals = [line for line in daemon.log().splitlines() if "refused" in line]
        print(f"\n{HOLD} connections negotiated in {figures['opened_in']:.1f} s; daemon VmRSS "
              f"idle {rss_idle} KiB, at {HOLD} connections {figures['rss_full']:.0f} KiB "
              f"({(figures['rss_full'] - rss_idle) / HOLD:.1f} KiB per connection), "
              f"{figures['fds_full']:.0f} fds; refusal log: {refusals}")
        assert len(refusals) <= 3, refusals  # rate-limited, not one line per refusal


def _measure(client: BlockingMilter, seconds: float, limit: int = 20000) -> list[float]:
    """RCPT round trips (member and outsider alternating) for *seconds*."""
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(samples) < limit:
        sender = "outsider@example.net" if len(samples) % 2 else "member@example.com"
        client.mail(sender)
        ident, payload, took = client.rcpt("list@example.org")
        assert (ident, payload) == ((b"y", REJECT) if len(samples) % 2 else (b"c", b""))
        client.abort()
        samples.append(took)
    return samples


def test_slowloris_cut_at_command_timeout_latency_kept(tmp_path: Path) -> None:
    """1,000 trickling connections are cut at command_timeout; p99 RCPT latency of a
    normal client during the attack stays within 2x of its unloaded p99."""
    count = 1000
    timeout, interval = (30.0, 10.0) if FULL else (2.0, 1.0)
    raise_nofile(4096)
    port = free_port()
    config = _config(port, command_timeout=timeout, idle_timeout=600, max_connections=5000)
    with serving(tmp_path, config, nofile=8192, wait_for=(f"inet:127.0.0.1:{port}",)) as daemon:
        client = BlockingMilter(port)
        _measure(client, 0.5)  # warm up
        attempts = []
        tries: list[str] = []
        for _attempt in range(3):
            unloaded = _measure(client, 2.0)
            gen = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("loadgen.py")), "slowloris",
                 str(port), str(count), str(interval), str(timeout + 15)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                assert gen.stdout is not None
                line = gen.stdout.readline()
                assert line.strip() == "READY", line + (gen.stderr.read() if gen.stderr else "")
                loaded = _measure(client, timeout * 0.8)
                out, _err = gen.communicate(timeout=timeout + 60)
            finally:
                if gen.poll() is None:
                    gen.kill()
                    gen.wait(5)
            result = json.loads(out.strip().splitlines()[-1])
            cut_times = [r[0] for r in result["results"]]
            p99_unloaded, p99_loaded = percentile(unloaded, 99), percentile(loaded, 99)
            attempts.append((p99_unloaded, p99_loaded))
            assert result["connections"] == count
            assert all(t is not None for t in cut_times), "a slowloris connection was not cut"
            cuts = sorted(t for t in cut_times if t is not None)
            figures = (
                f"{count} slowloris (1 byte / {interval:g} s, command_timeout {timeout:g} s): "
                f"cut after min {cuts[0]:.2f} s, median {cuts[len(cuts) // 2]:.2f} s, "
                f"max {cuts[-1]:.2f} s; normal client RCPT p50/p99 unloaded "
                f"{percentile(unloaded, 50) * 1e3:.3f}/{p99_unloaded * 1e3:.3f} ms "
                f"({len(unloaded)} RCPTs), during the attack "
                f"{percentile(loaded, 50) * 1e3:.3f}/{p99_loaded * 1e3:.3f} ms ({len(loaded)})"
            )
            print("\n" + figures)
            assert cuts[0] >= timeout - 0.05, figures  # never before the timeout
            # A cut later than that, or a doubled p99, is retried (at most 3 tries): the
            # 2 cores are shared, and another process's burst can stall the daemon.
            if cuts[-1] <= timeout + 1.0 and p99_loaded <= 2 * p99_unloaded:
                break
            tries.append(figures)
        else:
            raise AssertionError("no clean try in 3:\n" + "\n".join(tries))
        client.close()
        wait_until(lambda: daemon.log().count("incomplete packet for") >= count, 5,
                   "a log line per cut connection")
