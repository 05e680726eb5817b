"""The trio-level market-data API without a network: names, defaults, backpressure."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import quicframe
from quicframe._subscription import Subscription, SubscriptionStatistics
from quicframe._topic import Topic, TopicStatistics, stream_urgency
from quicframe.errors import RegistrationError
from quicframe.pubsub import Policy, Urgency

from .helpers import ack, tick


def test_the_names_are_exported_lazily() -> None:
    assert quicframe.Topic is Topic
    assert quicframe.TopicStatistics is TopicStatistics
    assert quicframe.Subscription is Subscription
    assert quicframe.SubscriptionStatistics is SubscriptionStatistics
    assert quicframe.MarketTick.__name__ == "MarketTick"
    assert quicframe.OrderAck.__name__ == "OrderAck"


def test_defaults_put_order_acks_before_ticks() -> None:
    ticks = quicframe.Topic("md.ticks", frame=quicframe.MarketTick)
    acks = quicframe.Topic("orders.acks", frame=quicframe.OrderAck)
    assert ticks.policy is Policy.CONFLATE
    assert acks.policy is Policy.BLOCK
    assert (ticks.urgency, acks.urgency) == (Urgency.LOW, Urgency.HIGH)
    # QUIC stream urgency: lower is more urgent.
    assert stream_urgency(acks.urgency) < stream_urgency(Urgency.NORMAL)
    assert stream_urgency(Urgency.NORMAL) < stream_urgency(ticks.urgency)
    assert 0 <= stream_urgency(99) <= stream_urgency(-5) <= 7


def test_router_refuses_a_second_topic_of_the_same_name() -> None:
    router = quicframe.Router()
    topic = router.add_topic(quicframe.Topic("md.ticks", frame=quicframe.MarketTick))
    assert router.topic("md.ticks") is topic
    assert router.topic("nope") is None
    assert router.topics == (topic,)
    with pytest.raises(RegistrationError):
        router.add_topic(quicframe.Topic("md.ticks", frame=quicframe.MarketTick))


async def test_block_backpressure_holds_publish_until_the_queue_drains() -> None:
    acks = quicframe.Topic("orders.acks", frame=quicframe.OrderAck)
    queue = acks.core.attach(capacity=2)
    assert await acks.publish(ack(1)) == 1
    assert acks.publish_nowait(ack(2)) == 2
    with pytest.raises(trio.WouldBlock):
        acks.publish_nowait(ack(3))  # the queue is full: nothing published
    assert acks.head == 2
    published = trio.Event()

    async def publisher() -> None:
        await acks.publish(ack(3))
        published.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert not published.is_set()  # waiting for the subscriber
            assert [e.seq for e in queue.pop_many(0, 10)] == [1, 2]
            acks._drained()  # what the subscription's sender does after taking frames
            await published.wait()
    assert acks.head == 3
    assert acks.statistics().publisher_waits == 1


async def test_publish_many_numbers_in_order() -> None:
    ticks = quicframe.Topic("md.ticks", frame=quicframe.MarketTick, key=lambda t: t.instrument_id)
    queue = ticks.core.attach()
    assert await ticks.publish_many(tick(i) for i in range(5)) == 5
    assert await ticks.publish_many([]) == 5
    assert [e.seq for e in queue.pop_many(0, 10)] == [1, 2, 3, 4, 5]
    stats = ticks.statistics()
    assert (stats.head, stats.subscribers, len(stats.subscriptions)) == (5, 1, 1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="send_buffer"):
        quicframe.Topic("t", frame=quicframe.MarketTick, send_buffer=0)
    with pytest.raises(ValueError, match="stale_after"):
        quicframe.Topic("t", frame=quicframe.MarketTick, stale_after=0)
