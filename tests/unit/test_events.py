"""The change feed's pure core (``listgate.events``): wire format, authentication, the exact
``Invalidator`` calls for each message, gap detection and health."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listgate import events
from listgate.events import (
    EVERYTHING,
    MAX_BODY,
    NOTHING,
    ChangeSet,
    EventError,
    FeedState,
    Message,
    RateLimit,
    decode,
    encode,
    read_secret,
    sign,
    verify,
)

SECRET = b"s3cret-shared-with-mailman"
START = 1_000_000.0
"""The listener's start (Unix time) in these tests."""


class Recording:
    """An ``Invalidator`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def invalidate_lists(self, list_ids: Iterable[str]) -> None:
        self.calls.append(("lists", tuple(list_ids)))

    def invalidate_addresses(self, addresses: Iterable[str]) -> None:
        self.calls.append(("addresses", tuple(addresses)))

    def invalidate_directory(self) -> None:
        self.calls.append(("directory", ()))

    def invalidate_global_bans(self) -> None:
        self.calls.append(("global_bans", ()))

    def invalidate_all(self) -> None:
        self.calls.append(("all", ()))


def msg(seq: int = 1, changes: ChangeSet = NOTHING, *, stream: str = "mm/1/ab",
        since: float = START + 1) -> Message:
    return Message(stream, since, seq, START + 2, changes)


# --------------------------------------------------------------------------- wire format

_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=40)
_changes = st.builds(
    ChangeSet,
    st.frozensets(_text, max_size=5),
    st.frozensets(_text.map(str.lower), max_size=5),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@given(_changes, st.integers(1, 2**40), st.floats(0, 2e9))
def test_encode_decode_round_trip(changes: ChangeSet, seq: int, sent: float) -> None:
    """Whatever the sender encodes decodes to the same message (``all`` absorbs the rest)."""
    message = Message("host/42/0a1b", round(sent, 3), seq, round(sent, 3), changes)
    decoded = decode(encode(message))
    expected = EVERYTHING if changes.everything else changes
    assert decoded == Message(message.stream, message.since, seq, message.sent, expected)


def test_wire_example() -> None:
    """The documented body: compact, sorted, empty parts left out."""
    body = encode(Message("mail.example.org/4711/9f2c01ab", 1764750000.2, 17, 1764750031.5,
                          ChangeSet(frozenset({"announce.example.org"}),
                                    frozenset({"alice@example.org"}))))
    assert body == (b'{"addresses":["alice@example.org"],"lists":["announce.example.org"],'
                    b'"sent":1764750031.5,"seq":17,"since":1764750000.2,'
                    b'"stream":"mail.example.org/4711/9f2c01ab","v":1}')


def test_a_change_set_too_large_for_one_message_is_sent_as_all() -> None:
    """A change set whose JSON would pass MAX_BODY goes out as ``all``, never oversized."""
    many = frozenset(f"{'x' * 200}{i}@example.org" for i in range(400))
    body = encode(msg(changes=ChangeSet(addresses=many)))
    assert len(body) < MAX_BODY
    assert decode(body).changes == EVERYTHING


def test_merge_collapses_past_max_items(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merging keeps memory bounded: past MAX_ITEMS keys the set becomes ``all``."""
    monkeypatch.setattr(events, "MAX_ITEMS", 3)
    a = ChangeSet(addresses=frozenset({"a@x", "b@x"}))
    assert a.merge(ChangeSet(addresses=frozenset({"c@x"}))).addresses == {"a@x", "b@x", "c@x"}
    assert a.merge(ChangeSet(addresses=frozenset({"c@x", "d@x"}))) == EVERYTHING
    assert a.merge(EVERYTHING) == EVERYTHING
    assert NOTHING.merge(ChangeSet(directory=True)) == ChangeSet(directory=True)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"v": 2, "stream": "s", "seq": 1, "since": 0, "sent": 0}', "version"),
        (b'{"v": true, "stream": "s", "seq": 1, "since": 0, "sent": 0}', "version"),
        (b'{"v": 1, "seq": 1, "since": 0, "sent": 0}', "'stream'"),
        (b'{"v": 1, "stream": "a\\nb", "seq": 1, "since": 0, "sent": 0}', "'stream'"),
        (b'{"v": 1, "stream": "s", "seq": 0, "since": 0, "sent": 0}', "'seq'"),
        (b'{"v": 1, "stream": "s", "seq": true, "since": 0, "sent": 0}', "'seq'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": NaN, "sent": 0}', "'since'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0}', "'sent'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0, "sent": 0, "lists": "x"}', "'lists'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0, "sent": 0, "lists": [1]}', "'lists'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0, "sent": 0, "addresses": [""]}',
         "'addresses'"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0, "sent": 0, "addresses": ["a\\u0000"]}',
         "control"),
        (b'{"v": 1, "stream": "s", "seq": 1, "since": 0, "sent": 0, "all": 1}', "'all'"),
        (b"[" * 100_000, "larger"),
    ],
)
def test_decode_refuses_what_encode_cannot_produce(body: bytes, why: str) -> None:
    """Each malformed body is an EventError that says what is wrong."""
    with pytest.raises(EventError, match=why):
        decode(body)


def test_decode_lowercases_addresses_and_ignores_unknown_keys() -> None:
    """Addresses are cache keys (lower-case); keys a later sender adds are ignored."""
    body = (b'{"v": 1, "stream": "s", "seq": 3, "since": 1, "sent": 2, "future": {"x": 1},'
            b' "addresses": ["Alice@Example.ORG"]}')
    assert decode(body) == Message("s", 1.0, 3, 2.0,
                                   ChangeSet(addresses=frozenset({"alice@example.org"})))


# --------------------------------------------------------------------------- authentication


def test_signature_verifies_only_the_same_body_under_the_same_secret() -> None:
    """HMAC-SHA256 over the exact body: another secret, another body or no header fail."""
    body = encode(msg())
    signature = sign(SECRET, body)
    assert signature.startswith("sha256=")
    assert len(signature) == len("sha256=") + 64
    assert verify(SECRET, body, signature)
    assert verify(SECRET, body, f"  {signature} ")
    assert not verify(b"another secret", body, signature)
    assert not verify(SECRET, body + b" ", signature)
    assert not verify(SECRET, body, None)
    assert not verify(SECRET, body, signature.removeprefix("sha256="))
    assert not verify(SECRET, body, "sha256=\u00e9" + signature[8:])


def test_read_secret(tmp_path: Path) -> None:
    """The secret is the file's content stripped; a missing or empty file is an EventError
    that names the file and never shows a secret."""
    good = tmp_path / "secret"
    good.write_bytes(b"  abc123\n")
    assert read_secret(str(good)) == b"abc123"
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n \n")
    with pytest.raises(EventError, match="empty"):
        read_secret(str(empty))
    with pytest.raises(EventError, match=r"cannot read secret file .*missing"):
        read_secret(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- FeedState


@pytest.mark.parametrize(
    ("changes", "calls"),
    [
        (NOTHING, []),
        (ChangeSet(lists=frozenset({"b.x", "a.x"})), [("lists", ("a.x", "b.x"))]),
        (ChangeSet(addresses=frozenset({"b@x", "a@x"})), [("addresses", ("a@x", "b@x"))]),
        (ChangeSet(directory=True), [("directory", ())]),
        (ChangeSet(global_bans=True), [("global_bans", ())]),
        (ChangeSet(frozenset({"l.x"}), frozenset({"a@x"}), True, True),
         [("directory", ()), ("global_bans", ()), ("lists", ("l.x",)),
          ("addresses", ("a@x",))]),
        (EVERYTHING, [("all", ())]),
    ],
)
def test_exact_invalidator_calls(changes: ChangeSet, calls: list[tuple[str, tuple[str, ...]]],
                                 ) -> None:
    """Each part of a message becomes one call, in a fixed order; a heartbeat none."""
    recording = Recording()
    FeedState(recording, started_wall=START).receive(msg(1, changes), 5.0, START + 3)
    assert recording.calls == calls


def test_gap_on_a_known_stream_drops_everything() -> None:
    """A seq that skips ahead means lost messages: everything is dropped, once, and counted;
    a retry repeating its seq and an older seq are no gap."""
    recording = Recording()
    state = FeedState(recording, started_wall=START)
    one = ChangeSet(addresses=frozenset({"a@x"}))
    state.receive(msg(1, one), 1.0, START)
    state.receive(msg(1, one), 2.0, START)  # a retry
    state.receive(msg(2), 3.0, START)
    assert recording.calls == [("addresses", ("a@x",))] * 2
    state.receive(msg(5, one), 4.0, START)
    assert recording.calls[-1] == ("all", ())
    assert state.health.gaps == 2
    assert state.health.last_gap == 4.0
    state.receive(msg(3), 5.0, START)  # late, out of order: no gap, nothing to do
    state.receive(msg(6), 6.0, START)
    assert state.health.gaps == 2
    assert recording.calls[-1] == ("all", ())
    assert len(recording.calls) == 3


def test_a_new_stream_must_start_at_seq_1_unless_it_predates_the_listener() -> None:
    """A stream begun after the listener started and first heard at seq 3 lost 2 messages;
    one begun before (listgate restarted, its cache empty then) lost nothing that matters."""
    recording = Recording()
    state = FeedState(recording, started_wall=START)
    state.receive(msg(3, stream="old", since=START - 100), 1.0, START)
    assert recording.calls == []
    state.receive(msg(3, stream="new", since=START + 1), 2.0, START)
    assert recording.calls == [("all", ())]
    assert state.health.gaps == 2


def test_streams_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only MAX_STREAMS streams are remembered, the least recently heard forgotten first."""
    monkeypatch.setattr(events, "MAX_STREAMS", 2)
    state = FeedState(Recording(), started_wall=START)
    for name in ("a", "b", "a", "c"):
        state.receive(msg(1, stream=name, since=START - 1), 1.0, START)
    assert state.health.streams == 2
    assert set(state._streams) == {"a", "c"}


def test_health_counts_and_silence() -> None:
    """Messages, heartbeats, changes, lag and refusals are counted; the feed is healthy
    while the last message is at most max_silence old."""
    state = FeedState(Recording(), started_wall=START)
    assert not state.healthy(0.0, 30.0)
    state.receive(msg(1), 10.0, START + 2.5)
    state.receive(msg(2, ChangeSet(directory=True)), 12.0, START + 2.25)
    state.refuse("unauthorized")
    state.refuse("unauthorized")
    state.refuse("too_large")
    h = state.health
    assert (h.messages, h.heartbeats, h.changes, h.gaps) == (2, 1, 1, 0)
    assert (h.last_message, h.last_change, h.lag, h.streams) == (12.0, 12.0, 0.25, 1)
    assert h.refused["unauthorized"] == 2
    assert h.refused["too_large"] == 1
    assert h.refused["malformed"] == 0
    assert state.healthy(42.0, 30.0)
    assert not state.healthy(42.5, 30.0)


def test_rate_limit() -> None:
    """One line per kind per interval; the next one says how many were held back."""
    limit = RateLimit(10.0)
    assert limit.check("a", 0.0) == 0
    assert limit.check("a", 1.0) is None
    assert limit.check("b", 1.0) == 0
    assert limit.check("a", 9.9) is None
    assert limit.check("a", 10.0) == 2
    assert limit.check("a", 10.5) is None


def test_events_module_is_stdlib_only() -> None:
    """Mailman's venv imports this module: it may import only the standard library and
    listgate's errors."""
    source = Path(events.__file__).read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported - {"listgate", "__future__"} <= set(__import__("sys").stdlib_module_names)
    assert json.loads(encode(msg()))["v"] == 1
