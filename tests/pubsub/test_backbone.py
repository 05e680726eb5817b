"""The in-memory backbone: numbering, bounded history, gaps, snapshot."""

from __future__ import annotations

import gc

import pytest

from quicframe.errors import ErrorCode, QuicframeError, SequenceGap
from quicframe.pubsub import Entry, HistoryGap, InMemoryBackbone, InMemoryLog, TopicCore, TopicLog
from quicframe.wire import MarketTick

from .helpers import tick


def entry(seq: int, key: int = 0) -> Entry:
    return Entry(seq, key, f"frame-{seq}".encode())


def test_empty_log() -> None:
    log = InMemoryLog("t", history=4)
    assert (log.head, log.first_seq, len(log)) == (0, 1, 0)
    assert log.read(1, 10) == []
    assert log.snapshot().seq == 0
    assert log.snapshot().entries == []


def test_history_is_bounded_and_reads_wrap() -> None:
    log = InMemoryLog("t", history=4)
    for seq in range(1, 11):
        log.append(entry(seq))
    assert (log.head, log.first_seq, len(log)) == (10, 7, 4)
    assert [e.seq for e in log.read(7, 100)] == [7, 8, 9, 10]
    assert [e.seq for e in log.read(8, 2)] == [8, 9]
    assert [e.seq for e in log.read(9, 100)] == [9, 10]
    assert log.read(11, 5) == []
    for start in range(7, 11):  # every start position of the wrapped ring
        assert [e.seq for e in log.read(start, 4)] == list(range(start, 11))


def test_read_of_a_range_that_is_gone_names_it() -> None:
    log = InMemoryLog("md.ticks", history=3)
    for seq in range(1, 9):
        log.append(entry(seq))
    with pytest.raises(HistoryGap) as info:
        log.read(2, 10)
    gap = info.value
    assert (gap.topic, gap.first_missing, gap.last_missing, gap.missing) == ("md.ticks", 2, 5, 4)
    # In the SDK's hierarchy, with the market-data code, and it says which range.
    assert isinstance(gap, SequenceGap)
    assert isinstance(gap, QuicframeError)
    assert gap.code == ErrorCode.SEQUENCE_GAP
    assert "2..5" in str(gap)
    assert gap.details == {"topic": "md.ticks", "first_missing": 2, "last_missing": 5}


def test_history_gap_round_trips_through_a_remote_error() -> None:
    gap = HistoryGap("t", 3, 9)
    remote = SequenceGap.from_wire(gap.code, gap.message, gap.details)
    rebuilt = HistoryGap.from_remote(remote)
    assert isinstance(rebuilt, HistoryGap)
    assert (rebuilt.topic, rebuilt.first_missing, rebuilt.last_missing) == ("t", 3, 9)
    other = SequenceGap.from_wire(ErrorCode.SEQUENCE_GAP, "no details")
    assert HistoryGap.from_remote(other) is other


def test_zero_history_keeps_numbering_and_snapshot() -> None:
    log = InMemoryLog("t", history=0)
    log.append(entry(1, key=5))
    log.append(entry(2, key=5))
    assert (log.head, log.first_seq) == (2, 3)
    with pytest.raises(HistoryGap):
        log.read(2, 1)
    assert [e.seq for e in log.snapshot().entries] == [2]


def test_append_must_move_forward_and_a_jump_restarts_history() -> None:
    log = InMemoryLog("t", history=10)
    log.append(entry(1))
    log.append(entry(2))
    with pytest.raises(ValueError, match="not above the head"):
        log.append(entry(2))
    # Numbers assigned elsewhere (a remote backbone) may jump: history restarts.
    log.append(entry(50))
    assert (log.head, log.first_seq) == (50, 50)
    log.append(entry(51))
    assert [e.seq for e in log.read(50, 10)] == [50, 51]
    with pytest.raises(HistoryGap) as info:
        log.read(2, 10)
    assert (info.value.first_missing, info.value.last_missing) == (2, 49)


def test_snapshot_is_latest_per_key_in_sequence_order() -> None:
    log = InMemoryLog("t", history=2)
    for seq, key in [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b")]:
        log.append(entry(seq, key))  # type: ignore[arg-type]
    snap = log.snapshot()
    assert snap.seq == 5
    assert [(e.seq, e.key) for e in snap.entries] == [(3, "a"), (4, "c"), (5, "b")]


def test_backbone_gives_one_log_per_topic() -> None:
    backbone = InMemoryBackbone(history=7)
    a = backbone.log("a")
    assert backbone.log("a") is a
    assert backbone.log("b") is not a
    assert a.capacity == 7
    assert backbone.log("c", history=3).capacity == 3
    assert backbone.topics() == ["a", "b", "c"]
    typed: TopicLog = a  # the in-memory log satisfies the protocol
    assert typed.head == 0


def test_history_holds_no_entry_tuples() -> None:
    """The ring keeps frames by column (bytes and ints, which the garbage collector
    does not track): a full history of a busy topic is not a hundred thousand
    tuples for every full collection to walk.  Only the latest entry per key (the
    snapshot) stays an Entry."""
    topic = TopicCore("md.ticks", MarketTick, key=lambda t: t.instrument_id, history=5000)
    queue = topic.attach(policy="block", capacity=20_000)
    values = [tick(i % 10) for i in range(1000)]
    gc.collect()
    before = sum(type(o) is Entry for o in gc.get_objects())
    for _ in range(8):
        topic.publish_many(values, 0)
    topic.publish(values[0], 0)
    gc.collect()
    after = sum(type(o) is Entry for o in gc.get_objects())
    assert after - before <= 10
    # Queued entries are plain tuples too, which the collector no longer tracks
    # once it has seen them: a subscriber's backlog does not age into the oldest
    # generation.
    assert len(queue) == 8001
    assert not any(map(gc.is_tracked, queue._entries))
    assert [e.seq for e in queue.pop_many(0, 2)] == [1, 2]
    log = topic.log
    assert isinstance(log, InMemoryLog)
    assert len(log) == 5000
    assert [e.seq for e in log.read(log.first_seq, 3)] == [3002, 3003, 3004]
    (last,) = log.read(8001, 1)
    assert (last.seq, last.key, last.urgency, last.deadline_ns) == (8001, 0, topic.urgency, 0)
    assert last.data == topic.log.snapshot().entries[-1].data
