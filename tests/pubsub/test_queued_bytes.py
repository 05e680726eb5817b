"""The bound on the bytes queued for one subscriber (issue 8), under each policy.

A count bound alone lets a subscriber's queue hold ``capacity`` frames of any
size; these tests show the byte bound acting where the count bound would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import quicframe
from quicframe.errors import SlowConsumer
from quicframe.pubsub import (
    DEFAULT_MAX_QUEUED_BYTES,
    Entry,
    Policy,
    ServerSubscription,
    Subscribe,
    SubscriberQueue,
    TopicCore,
)
from quicframe.wire import MARKET_TICK_CODEC, FrameRegistry, MarketTick, default_registry

from .helpers import fresh, tick

KIB = 1024


def big(seq: int, size: int = KIB, key: int | None = None) -> Entry:
    return Entry(seq, seq if key is None else key, b"x" * size, 0, 0)


def test_drop_oldest_keeps_the_bytes_under_the_bound() -> None:
    queue = SubscriberQueue("t", Policy.DROP_OLDEST, capacity=1000, max_bytes=4 * KIB)
    for seq in range(1, 11):
        assert queue.put(big(seq)) is False
        assert queue.queued_bytes <= 4 * KIB
    assert [e.seq for e in queue.pop_many(0, 100)] == [7, 8, 9, 10]
    assert queue.queued_bytes == 0
    stats = queue.stats()
    assert (stats.dropped, stats.delivered, stats.high_water) == (6, 4, 4)


def test_conflate_drops_the_oldest_keys_past_the_bound() -> None:
    queue = SubscriberQueue("t", Policy.CONFLATE, capacity=1000, max_bytes=3 * KIB)
    for seq in range(1, 6):
        queue.put(big(seq, key=seq))
    queue.put(big(6, 2 * KIB, key=5))  # replaces key 5's entry: 1 KiB more
    assert queue.queued_bytes <= 3 * KIB
    assert [e.seq for e in queue.pop_many(0, 100)] == [4, 6]
    assert queue.stats().conflated == 1
    assert queue.stats().dropped == 3


def test_disconnect_fails_on_bytes_before_the_count() -> None:
    queue = SubscriberQueue("t", Policy.DISCONNECT, capacity=1000, max_bytes=4 * KIB)
    for seq in range(1, 5):
        assert queue.put(big(seq)) is False
    assert queue.put(big(5)) is True  # 5 KiB > 4 KiB, with 5 of 1000 entries
    assert isinstance(queue.error, SlowConsumer)
    assert queue.error.details["unit"] == "bytes"
    assert queue.closed
    assert queue.queued_bytes == 0


def test_block_is_full_at_the_bytes_and_fails_past_twice_them() -> None:
    queue = SubscriberQueue("t", Policy.BLOCK, capacity=1000, max_bytes=4 * KIB)
    assert [queue.put(big(seq)) for seq in range(1, 5)] == [False, False, False, True]
    assert fresh(queue.full)
    assert queue.room <= 0
    queue.pop_many(0, 1)
    assert not fresh(queue.full)
    assert queue.room > 0
    for seq in range(5, 9):
        queue.put(big(seq))
    assert queue.error is None  # 7 KiB: full, not yet past the hard limit
    queue.put(big(9, 2 * KIB))
    assert isinstance(queue.error, SlowConsumer)


def test_stale_and_delivered_entries_leave_the_byte_count() -> None:
    queue = SubscriberQueue("t", Policy.DROP_OLDEST, capacity=10, max_bytes=100 * KIB)
    queue.put(Entry(1, 1, b"a" * 100, 0, 5))  # stale at 10
    queue.put(Entry(2, 2, b"b" * 200, 0, 0))
    assert queue.queued_bytes == 300
    assert [e.seq for e in queue.pop_many(10, 10)] == [2]
    assert queue.queued_bytes == 0
    assert queue.stats().stale == 1


def test_fixed_size_frames_turn_the_byte_bound_into_a_count() -> None:
    size = MARKET_TICK_CODEC.frame_size
    topic = TopicCore("md", MarketTick, key=lambda t: t.instrument_id, max_queued_bytes=10 * size)
    queue = topic.attach(policy=Policy.DROP_OLDEST, capacity=4096)
    assert queue.capacity == 10
    for i in range(25):
        topic.publish(tick(i), 0)
    assert len(queue) == 10
    assert queue.stats().dropped == 15
    # The default bound leaves a tick topic's default queue as it was.
    assert TopicCore("md", MarketTick).attach().capacity == 4096
    assert 4096 * size <= DEFAULT_MAX_QUEUED_BYTES


registry = FrameRegistry(default_registry)


@registry.frame(0x42)
@dataclass(frozen=True)
class Blob:
    seq: int
    body: bytes


def test_a_subscriber_of_large_frames_is_disconnected_by_bytes() -> None:
    topic = TopicCore("blobs", Blob, registry=registry, max_queued_bytes=64 * KIB)
    slow = ServerSubscription(topic, Subscribe("blobs", snapshot=False, policy="disconnect"))
    other = topic.attach(policy=Policy.DROP_OLDEST)
    slow.data_to_send(0)  # SUBSCRIBED
    for _ in range(6):  # 6 frames of 10 KiB: far under the 4096 frames of the queue
        topic.publish(Blob(0, b"z" * (10 * KIB)), 0)
    assert slow.queue.error is None
    assert slow.live
    topic.publish(Blob(0, b"z" * (10 * KIB)), 0)  # the 7th passes 64 KiB
    assert isinstance(fresh(slow.queue.error), SlowConsumer)
    chunks = slow.data_to_send(0)
    assert slow.finished
    assert len(chunks) == 1
    # The other subscriber is unaffected; its own policy keeps it under the bound.
    assert other.error is None
    assert len(other) == 6
    assert other.stats().dropped == 1


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        SubscriberQueue("t", max_bytes=0)
    with pytest.raises(ValueError, match="max_queued_bytes"):
        TopicCore("md", MarketTick, max_queued_bytes=0)


def test_publish_many_stops_at_a_block_subscriber_full_of_bytes() -> None:
    topic = TopicCore("blobs", Blob, registry=registry, max_queued_bytes=32 * KIB)
    queue = topic.attach(policy=Policy.BLOCK)
    values = [Blob(0, b"z" * (10 * KIB)) for _ in range(10)]
    done = 0
    while not topic.backpressure and done < len(values):
        done += topic.publish_many(values, 0, done)
    assert done == 4  # 40 KiB: the first publish that reached 32 KiB
    assert queue.error is None
    assert len(queue) == 4
    queue.pop_many(0, 2)
    assert not topic.backpressure


def test_the_trio_topic_passes_its_bound_to_every_queue() -> None:
    topic = quicframe.Topic("blobs", frame=Blob, registry=registry, max_queued_bytes=48 * KIB)
    assert topic.core.attach().max_bytes == 48 * KIB
    ticks = quicframe.Topic(
        "md", frame=MarketTick, max_queued_bytes=100 * MARKET_TICK_CODEC.frame_size
    )
    assert ticks.core.attach(capacity=4096).capacity == 100
