"""Subscriber queues: the four policies, staleness, statistics, bounded memory."""

from __future__ import annotations

import pytest

from quicframe.errors import ErrorCode, SlowConsumer
from quicframe.pubsub import Entry, Policy, SubscriberQueue

from .helpers import fresh


def entry(seq: int, key: int = 0, deadline_ns: int = 0) -> Entry:
    return Entry(seq, key, b"x%d" % seq, 0, deadline_ns)


def drain(queue: SubscriberQueue, now_ns: int = 0) -> list[int]:
    return [e.seq for e in queue.pop_many(now_ns, 1 << 30)]


def check_accounting(queue: SubscriberQueue, offered: int) -> None:
    stats = queue.stats()
    assert stats.enqueued == offered
    assert stats.queued == len(queue)


def test_conflate_keeps_latest_per_key_in_sequence_order() -> None:
    queue = SubscriberQueue("t", Policy.CONFLATE, capacity=100)
    for seq, key in enumerate([1, 2, 1, 3, 2, 1], start=1):
        assert queue.put(entry(seq, key)) is False
    # Latest per key: key 3 -> 4, key 2 -> 5, key 1 -> 6; delivered in seq order.
    assert drain(queue) == [4, 5, 6]
    stats = queue.stats()
    assert (stats.delivered, stats.conflated, stats.dropped) == (3, 3, 0)
    check_accounting(queue, 6)


def test_conflate_memory_is_bounded_by_keys_for_a_stalled_consumer() -> None:
    queue = SubscriberQueue("t", Policy.CONFLATE, capacity=1000)
    for seq in range(1, 100_001):
        queue.put(entry(seq, key=seq % 50))
    assert len(queue) == 50  # one entry per key, however long the stall
    assert queue.stats().high_water == 50
    assert drain(queue) == list(range(100_001 - 50, 100_001))
    check_accounting(queue, 100_000)


def test_conflate_caps_the_number_of_keys() -> None:
    queue = SubscriberQueue("t", Policy.CONFLATE, capacity=3)
    for seq in range(1, 11):
        queue.put(entry(seq, key=seq))  # every key distinct
    assert len(queue) == 3
    assert drain(queue) == [8, 9, 10]
    assert queue.stats().dropped == 7
    check_accounting(queue, 10)


def test_drop_oldest_keeps_the_newest() -> None:
    queue = SubscriberQueue("t", Policy.DROP_OLDEST, capacity=4)
    for seq in range(1, 11):
        assert queue.put(entry(seq, key=0)) is False
    assert drain(queue) == [7, 8, 9, 10]
    assert queue.stats().dropped == 6
    check_accounting(queue, 10)


def test_disconnect_fails_only_on_overflow() -> None:
    queue = SubscriberQueue("md", Policy.DISCONNECT, capacity=3)
    for seq in range(1, 4):
        assert queue.put(entry(seq)) is False
    assert fresh(queue.error) is None
    assert queue.put(entry(4)) is True
    assert isinstance(queue.error, SlowConsumer)
    assert queue.error.code == ErrorCode.SLOW_CONSUMER
    assert queue.error.details["topic"] == "md"
    assert queue.closed
    assert len(queue) == 0  # memory released
    assert queue.put(entry(5)) is False  # a closed queue ignores everything
    check_accounting(queue, 4)


def test_block_loses_nothing_and_reports_full() -> None:
    queue = SubscriberQueue("t", Policy.BLOCK, capacity=3)
    assert [queue.put(entry(seq)) for seq in range(1, 4)] == [False, False, True]
    assert fresh(queue.full)
    assert queue.put(entry(4)) is True  # over capacity, still kept
    assert queue.pop(0) is not None
    assert queue.pop(0) is not None
    assert not fresh(queue.full)
    assert drain(queue) == [3, 4]
    assert queue.stats().dropped == 0
    check_accounting(queue, 4)


def test_block_past_its_hard_limit_fails_as_slow_consumer() -> None:
    queue = SubscriberQueue("t", Policy.BLOCK, capacity=2, block_limit=3)
    for seq in range(1, 4):
        queue.put(entry(seq))
    assert queue.error is None
    assert queue.put(entry(4)) is True
    assert isinstance(queue.error, SlowConsumer)


@pytest.mark.parametrize("policy", list(Policy))
def test_stale_entries_are_dropped_at_dequeue(policy: Policy) -> None:
    queue = SubscriberQueue("t", policy, capacity=10)
    queue.put(entry(1, key=1, deadline_ns=100))
    queue.put(entry(2, key=2, deadline_ns=300))
    queue.put(entry(3, key=3))  # no deadline
    popped = queue.pop(200)
    assert popped is not None
    assert popped.seq == 2
    assert drain(queue, now_ns=10**18) == [3]
    stats = queue.stats()
    assert (stats.stale, stats.delivered) == (1, 2)
    check_accounting(queue, 3)


def test_pop_many_respects_its_limit_and_staleness() -> None:
    queue = SubscriberQueue("t", Policy.DROP_OLDEST, capacity=100)
    for seq in range(1, 11):
        queue.put(entry(seq, deadline_ns=50 if seq % 2 else 0))
    assert [e.seq for e in queue.pop_many(100, 4)] == [2, 4]
    assert [e.seq for e in queue.pop_many(0, 100)] == [5, 6, 7, 8, 9, 10]
    check_accounting(queue, 10)


def test_close_drops_and_counts() -> None:
    queue = SubscriberQueue("t", Policy.CONFLATE, capacity=10)
    queue.put(entry(1, key=1))
    queue.put(entry(2, key=2))
    queue.close()
    assert queue.stats().dropped == 2
    assert queue.pop(0) is None
    check_accounting(queue, 2)


def test_urgency_and_capacity_validation() -> None:
    assert SubscriberQueue("t", urgency=2).urgency == 2
    with pytest.raises(ValueError, match="capacity"):
        SubscriberQueue("t", capacity=0)
    assert Policy("drop-oldest") is Policy.DROP_OLDEST
