"""Run by the *Mailman* venv's Python (not listgate's): ``msg.senders`` for each message,
computed by Mailman's own code, on the message parsed as its LMTP runner parses it.

    python mm_probe.py MAILMAN_CFG IN.json OUT.json

IN.json maps a key to ``[envelope, raw message text]``; OUT.json maps it to the list of
senders Mailman's posting chain would judge (From:, envelope, Reply-To:, Sender:).
"""

import email
import json
import sys


def main(cfg: str, src: str, dst: str) -> None:
    from mailman.core.initialize import initialize

    initialize(cfg)
    from mailman.email.message import Message

    out = {}
    with open(src, encoding="utf-8") as fh:
        cases = json.load(fh)
    for key, (envelope, raw) in cases.items():
        msg = email.message_from_bytes(raw.encode("utf-8"), Message)
        msg.set_unixfrom(envelope)  # as runners/lmtp.py does with the MAIL FROM
        out[key] = list(msg.senders)
    with open(dst, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
