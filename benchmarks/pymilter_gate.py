"""The comparator: a trivial list gate on pymilter (libmilter, the C reference library).

The same decision as listgate's static backend, written the way a pymilter user would:
the envelope sender is remembered at MAIL (no reply: ``@Milter.noreply``, so libmilter
negotiates SMFIP_NR_MAIL); at RCPT a recipient that is the list, from a sender not in a
set of allowed senders, gets ``550 5.7.1 <sender> is not allowed to post to <list>``;
every other recipient CONTINUE. Every callback it does not override is negotiated away
(libmilter's NO* flags), as listgate does.

Run: python benchmarks/pymilter_gate.py PORT LIST ALLOWED_FILE
(ALLOWED_FILE: one allowed sender per line). Benchmark-only: needs ``pymilter``
(Debian ``libmilter-dev``, then ``pip install pymilter``; ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import sys

import Milter


def normalize(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    return addr.lower()


def make_gate(list_address: str, allowed: frozenset[str]) -> type[Milter.Base]:
    lst = normalize(list_address)

    class ListGate(Milter.Base):
        def __init__(self) -> None:
            self.sender = ""

        @Milter.noreply
        def envfrom(self, mailfrom: str, *esmtp: str) -> int:
            self.sender = normalize(mailfrom)
            return Milter.CONTINUE

        def envrcpt(self, to: str, *esmtp: str) -> int:
            if normalize(to) == lst and self.sender not in allowed:
                who = (self.sender or "").replace("%", "%%")
                self.setreply("550", "5.7.1", f"<{who}> is not allowed to post to <{lst}>")
                return Milter.REJECT
            return Milter.CONTINUE

    return ListGate


def main() -> None:
    port, list_address, allowed_file = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(allowed_file, encoding="utf-8") as fh:
        allowed = frozenset(normalize(line) for line in fh if line.strip())
    Milter.factory = make_gate(list_address, allowed)
    import milter

    milter.setbacklog(4096)
    print(f"pymilter gate on inet:{port}@127.0.0.1, {len(allowed)} allowed senders",
          file=sys.stderr, flush=True)
    Milter.runmilter("pymilter-gate", f"inet:{port}@127.0.0.1", timeout=300)


if __name__ == "__main__":
    main()
