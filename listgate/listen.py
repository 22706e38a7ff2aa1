"""Listen addresses, as Postfix and libmilter spell them, and the metrics endpoint's.

Accepted forms (one per socket):

- ``inet:HOST:PORT``     IPv4 address or host name, e.g. ``inet:127.0.0.1:8890``
- ``inet6:[ADDR]:PORT``  IPv6 address in brackets, e.g. ``inet6:[::1]:8890``
- ``unix:/PATH``         absolute path of a unix-domain socket

libmilter's ``inet:PORT@HOST`` form is accepted too, since postmasters paste it from
Sendmail configs. The metrics endpoint is a plain ``HOST:PORT`` (``[ADDR]:PORT`` for IPv6).

Invariants:
- Pure parsing: no sockets, no asyncio, nothing but the standard library's ``ipaddress``;
  ``listgate.config`` and the server both read these types from here.
- Errors are ``ValueError`` with a message that quotes the offending spec.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

__all__ = ["ListenSpec", "parse_listen_spec", "parse_metrics_listen"]

Family = Literal["inet", "inet6", "unix"]


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on."""

    family: Family
    host: str
    """Address or host name for inet/inet6; "" for unix."""
    port: int
    """TCP port (0 = any free port); 0 for unix."""
    path: str
    """Socket path for unix; "" otherwise."""

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        if self.family == "inet6":
            return f"inet6:[{self.host}]:{self.port}"
        return f"inet:{self.host}:{self.port}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"{spec!r}: port must be a number from 0 to 65535")
    return int(text)


def parse_listen_spec(spec: str) -> ListenSpec:
    """Parse *spec*; raise ``ValueError`` naming it when it is not one of the forms above."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"{spec!r}: expected inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH")
    if kind == "unix" or kind == "local":
        if not rest.startswith("/"):
            raise ValueError(f"{spec!r}: unix socket path must be absolute")
        return ListenSpec("unix", "", 0, rest)
    if kind == "inet":
        if "@" in rest:  # libmilter style: inet:PORT@HOST
            port_text, _, host = rest.partition("@")
        else:
            host, _, port_text = rest.rpartition(":")
        if not host:
            raise ValueError(f"{spec!r}: missing host (inet:HOST:PORT)")
        return ListenSpec("inet", host, _port(port_text, spec), "")
    if kind == "inet6":
        if rest.startswith("["):
            addr, close, tail = rest[1:].partition("]")
            if not close or not tail.startswith(":"):
                raise ValueError(f"{spec!r}: expected inet6:[ADDR]:PORT")
            port_text = tail[1:]
        elif "@" in rest:
            port_text, _, addr = rest.partition("@")
        else:
            raise ValueError(f"{spec!r}: expected inet6:[ADDR]:PORT")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ValueError(f"{spec!r}: {addr!r} is not an IPv6 address") from None
        return ListenSpec("inet6", addr, _port(port_text, spec), "")
    raise ValueError(f"{spec!r}: unknown socket family {kind!r} (use inet, inet6 or unix)")


def parse_metrics_listen(spec: str) -> tuple[str, int]:
    """``"127.0.0.1:9107"`` or ``"[::1]:9107"`` → (host, port); ``ValueError`` otherwise."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{spec!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{spec!r}: missing host")
    return host, int(port)
