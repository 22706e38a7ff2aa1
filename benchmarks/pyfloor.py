"""The Python floor: the least any milter written in Python on uvloop can cost per session.

A uvloop ``asyncio.Protocol`` that frames milter packets and answers them with fixed
bytes, doing nothing else: OPTNEG with the negotiation it is given (listgate's, so the
MTA sends it exactly what it sends listgate), CONTINUE to every RCPT and EOM, nothing to
the packets that owe no reply (which it ACKs at once with TCP_QUICKACK, as listgate
does: Postfix writes them one by one), and QUIT closes. No session, no decision, no log,
no timeout. One process per core, sharing one listening socket, as listgate's default.

What listgate costs above this row is listgate; what this row costs above the C null
milter is Python and uvloop.

With ``policy`` in place of the negotiation it is the Python floor of a Postfix policy
server instead: "action=DUNNO" to every request (a blank line ends one), nothing parsed.

Run: python benchmarks/pyfloor.py PORT (OPTNEG_REPLY_HEX | policy) [WORKERS]
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import sys

import uvloop

_LENGTH = struct.Struct(">I")
_CONTINUE = _LENGTH.pack(1) + b"c"
_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)


class _Floor(asyncio.Protocol):
    """One connection: the bytes not yet answered, and the transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer = self.answer(self.buffer + data if self.buffer else data, transport)

    def answer(self, buf: bytes, transport: asyncio.Transport) -> bytes:
        """Answer what is complete in *buf*; what is left of it."""
        raise NotImplementedError


class FloorProtocol(_Floor):
    """One milter connection: frame, answer with fixed bytes."""

    def __init__(self, optneg_reply: bytes) -> None:
        super().__init__()
        self.optneg_reply = optneg_reply

    def answer(self, buf: bytes, transport: asyncio.Transport) -> bytes:
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 5:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if len(buf) - pos - 4 < length:
                break
            code = buf[pos + 4]
            pos += 4 + length
            if code == 0x4F:  # O
                out.append(self.optneg_reply)
            elif code in (0x52, 0x45):  # R, E
                out.append(_CONTINUE)
            elif code == 0x51:  # Q
                if out:
                    transport.write(b"".join(out))
                transport.close()
                return b""
        if out:
            transport.write(b"".join(out))
        elif _QUICKACK:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buf[pos:]


class PolicyFloorProtocol(_Floor):
    """One policy connection: answer each request (up to a blank line) with DUNNO."""

    def answer(self, buf: bytes, transport: asyncio.Transport) -> bytes:
        requests = buf.count(b"\n\n")
        if not requests:
            return buf
        transport.write(_DUNNO * requests)
        return buf[buf.rindex(b"\n\n") + 2:]


_DUNNO = b"action=DUNNO\n\n"


def main() -> None:
    port = int(sys.argv[1])
    policy = sys.argv[2] == "policy"
    optneg_reply = b"" if policy else bytes.fromhex(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else (os.cpu_count() or 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            children.clear()
            break
        children.append(pid)
    loop = uvloop.new_event_loop()
    factory = PolicyFloorProtocol if policy else (lambda: FloorProtocol(optneg_reply))
    loop.run_until_complete(loop.create_server(factory, sock=listener, backlog=4096))

    def stop() -> None:  # the benchmark stops the first process: it stops the others
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.run_forever()
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
