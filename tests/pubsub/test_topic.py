"""TopicCore: numbering, stamping, encode once, fan-out of one bytes object."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from quicframe.errors import LocalProtocolError, SlowConsumer
from quicframe.pubsub import (
    Backbone,
    Entry,
    InMemoryBackbone,
    Policy,
    TopicCore,
    TopicLog,
    Urgency,
    make_stamper,
)
from quicframe.wire import (
    MARKET_TICK_CODEC,
    FrameRegistry,
    MarketTick,
    OrderAck,
    decode_frame,
    default_registry,
)

from .helpers import T0, ack, fresh, tick, tick_topic


def test_publish_stamps_seq_and_send_time_and_encodes_once() -> None:
    topic = tick_topic()
    queues = [topic.attach(policy=Policy.BLOCK) for _ in range(3)]
    assert topic.publish(tick(7, price=101), now_ns=T0 + 5) == 1
    assert topic.publish(tick(8, price=102), now_ns=T0 + 9) == 2
    assert topic.head == 2
    firsts = [e for e in (q.pop(0) for q in queues) if e is not None]
    assert len(firsts) == 3
    # Encoded once: the very same bytes object in every queue.
    assert firsts[0].data is firsts[1].data is firsts[2].data
    assert firsts[0] == firsts[1] == firsts[2]
    entry = firsts[0]
    assert MARKET_TICK_CODEC.decode(decode_frame(entry.data).body) == MarketTick(
        seq=1, event_time_ns=T0, send_time_ns=T0 + 5, price=101, quantity=1, instrument_id=7
    )
    assert entry.key == 7
    # The history holds the same bytes.
    assert [e.data for e in topic.log.read(1, 10)] == [entry.data, queues[0].pop(0).data]  # type: ignore[union-attr]


def test_the_value_passed_in_is_not_changed() -> None:
    topic = tick_topic()
    value = tick(1)
    topic.publish(value, now_ns=123)
    assert value.seq == 0
    assert value.send_time_ns == 0


def test_every_subscriber_gets_every_frame_in_order() -> None:
    topic = tick_topic(policy=Policy.BLOCK, queue_size=10_000)
    queues = [topic.attach() for _ in range(10)]
    for i in range(1000):
        topic.publish(tick(i % 7), now_ns=i)
    expected = list(range(1, 1001))
    for queue in queues:
        assert [e.seq for e in queue.pop_many(0, 10_000)] == expected


def test_defaults_follow_the_frame_class() -> None:
    ticks = tick_topic()
    acks = TopicCore("orders", OrderAck, key=lambda a: a.order_id)
    assert (ticks.policy, ticks.urgency) == (Policy.CONFLATE, Urgency.LOW)
    assert (acks.policy, acks.urgency) == (Policy.BLOCK, Urgency.HIGH)
    assert acks.frame_type == 0x11
    assert acks.attach().urgency == Urgency.HIGH
    acks.publish(ack(5), now_ns=9)
    entry = acks.log.read(1, 1)[0]
    decoded = default_registry.decode(decode_frame(entry.data))
    assert isinstance(decoded, OrderAck)
    assert (decoded.seq, decoded.send_time_ns, decoded.order_id) == (1, 9, 5)


def test_disconnect_affects_only_the_slow_subscriber() -> None:
    topic = tick_topic(queue_size=4)
    slow = topic.attach(policy=Policy.DISCONNECT)
    fast = topic.attach(policy=Policy.DISCONNECT)
    other = topic.attach(policy=Policy.CONFLATE)
    for i in range(1, 21):
        topic.publish(tick(i % 3), now_ns=i)
        assert fast.pop(0) is not None  # keeps up
    assert isinstance(slow.error, SlowConsumer)
    assert fast.error is None
    assert other.error is None
    assert topic.subscribers == 2  # the failed one was detached
    assert fast.stats().delivered == 20


def test_block_subscribers_create_backpressure() -> None:
    topic = tick_topic(queue_size=3)
    queue = topic.attach(policy=Policy.BLOCK)
    topic.attach(policy=Policy.CONFLATE)
    topic.publish(tick(1), 0)
    topic.publish(tick(1), 0)
    assert not fresh(topic.backpressure)
    topic.publish(tick(1), 0)
    assert fresh(topic.backpressure)
    assert topic.blocking_queues() == [queue]
    queue.pop(0)
    assert not fresh(topic.backpressure)
    assert [e.seq for e in queue.pop_many(0, 10)] == [2, 3]


def test_staleness_deadline_comes_from_the_topic() -> None:
    topic = tick_topic(stale_after_ns=100)
    queue = topic.attach(policy=Policy.DROP_OLDEST)
    topic.publish(tick(1), now_ns=1000)
    topic.publish(tick(2), now_ns=1050)
    assert [e.seq for e in queue.pop_many(1120, 10)] == [2]
    assert queue.stats().stale == 1


def test_detach_stops_delivery() -> None:
    topic = tick_topic()
    queue = topic.attach()
    topic.detach(queue)
    topic.publish(tick(1), 0)
    assert len(queue) == 0
    assert topic.subscribers == 0


def test_an_unencodable_value_consumes_no_number() -> None:
    topic = tick_topic()
    with pytest.raises(LocalProtocolError):
        topic.publish(tick(-1), now_ns=0)  # instrument_id is a u32
    assert topic.head == 0
    assert topic.publish(tick(1), now_ns=0) == 1


def test_shared_backbone_and_existing_log_continue_numbering() -> None:
    backbone = InMemoryBackbone(history=10)
    first = TopicCore("md", MarketTick, backbone=backbone)
    first.publish(tick(1), 0)
    again = TopicCore("md", MarketTick, backbone=backbone)
    assert again.head == 1
    assert again.publish(tick(1), 0) == 2


class _CountingBackbone:
    """A custom backbone: the topic uses whatever log it supplies."""

    def __init__(self) -> None:
        self.inner = InMemoryBackbone(history=5)
        self.asked: list[str] = []

    def log(self, topic: str, /) -> TopicLog:
        self.asked.append(topic)
        return self.inner.log(topic)


def test_custom_backbone_is_used() -> None:
    backbone = _CountingBackbone()
    typed: Backbone = backbone
    topic = TopicCore("md", MarketTick, backbone=typed)
    topic.publish(tick(1), 0)
    assert backbone.asked == ["md"]
    assert backbone.inner.log("md").head == 1


def test_ingest_fans_out_frames_numbered_elsewhere() -> None:
    topic = tick_topic()
    queue = topic.attach(policy=Policy.BLOCK)
    data = MARKET_TICK_CODEC.encode_frame(tick(3)._replace(seq=40))
    topic.ingest(40, data, 3, now_ns=0)
    popped = queue.pop(0)
    assert popped == Entry(40, 3, data, topic.urgency, 0)
    assert topic.head == 40
    assert topic.log.first_seq == 40


registry = FrameRegistry(default_registry)


@registry.frame(0x40)
@dataclass(frozen=True)
class Quote:
    seq: int
    send_time_ns: int
    symbol: str


def test_msgpack_frames_are_stamped_too() -> None:
    topic = TopicCore("quotes", Quote, key=lambda q: q.symbol, registry=registry)
    topic.publish(Quote(0, 0, "ABC"), now_ns=77)
    data = topic.log.read(1, 1)[0].data
    assert registry.decode(decode_frame(data)) == Quote(1, 77, "ABC")
    assert topic.log.snapshot().entries[0].key == "ABC"


def test_stamper_needs_a_registered_class_with_seq() -> None:
    with pytest.raises(TypeError, match="not a registered"):
        make_stamper(int)

    @dataclass
    class NoSeq:
        x: int

    reg = FrameRegistry()
    reg.register(0x41, NoSeq)
    with pytest.raises(TypeError, match="'seq'"):
        make_stamper(NoSeq, reg)
    with pytest.raises(TypeError, match="not a registered"):
        TopicCore("x", NoSeq)


def test_a_field_name_keys_values() -> None:
    """``key="instrument_id"`` keys by that field (read in C), as the lambda would."""
    by_name = TopicCore("md.ticks", MarketTick, key="instrument_id")
    by_function = TopicCore("md.ticks", MarketTick, key=lambda t: t.instrument_id)
    values = [tick(i % 3, price=100 + i) for i in range(7)]
    for topic in (by_name, by_function):
        topic.publish_many(values[:4], T0)
        topic.publish(values[4], T0)
        topic.publish_many(values[5:], T0)
    name_snapshot = by_name.log.snapshot()
    assert name_snapshot == by_function.log.snapshot()
    assert [(e.seq, e.key) for e in name_snapshot.entries] == [(5, 1), (6, 2), (7, 0)]
    with pytest.raises(ValueError, match="no field 'instrument'"):
        TopicCore("md.ticks", MarketTick, key="instrument")
