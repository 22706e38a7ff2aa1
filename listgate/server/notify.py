"""systemd's sd_notify protocol, without libsystemd: one datagram per state change.

Invariant: a no-op without ``NOTIFY_SOCKET``; a failure to notify is logged once and never
stops the daemon (systemd then times out the unit, which is the right signal).
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify"]

log = logging.getLogger("listgate.notify")


def notify(*states: str) -> bool:
    """Send ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``; True if sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or not states:
        return False
    lines = list(states)
    if "RELOADING=1" in lines:  # systemd >= 253 wants the monotonic time with it
        lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", path, exc)
        return False
    return True
