"""TopicCore.publish_many against publish: a batch must leave the history, the
snapshot and every queue exactly as publishing its values one by one does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from quicframe.errors import LocalProtocolError
from quicframe.pubsub import Policy, SubscriberQueue, TopicCore
from quicframe.pubsub._backbone import InMemoryLog
from quicframe.wire import MarketTick

from .helpers import tick

# (operation, argument): a batch of n values (keys 0-4 in a pattern), or a partial
# drain of every queue.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.integers(0, 40)),
        st.tuples(st.just("drain"), st.integers(1, 30)),
    ),
    max_size=25,
)


def make(history: int, capacity: int, stale: int | None) -> TopicCore[MarketTick]:
    topic = TopicCore(
        "md.ticks",
        MarketTick,
        key=lambda t: t.instrument_id,
        history=history,
        queue_size=capacity,
        stale_after_ns=stale,
    )
    for policy in Policy:
        topic.attach(policy=policy)
    return topic


def state(topic: TopicCore[MarketTick], queues: list[SubscriberQueue]) -> object:
    log = topic.log
    assert isinstance(log, InMemoryLog)
    history = log.read(log.first_seq, len(log) + 1)
    return (
        topic.head,
        log.first_seq,
        history,
        log.snapshot(),
        topic.backpressure,
        [
            (q.stats(), repr(q.error), q.closed, list(q._entries), list(q._latest.items()))
            for q in queues
        ],
    )


@settings(max_examples=300, deadline=None)
@given(
    script=steps,
    history=st.integers(0, 25),
    capacity=st.integers(1, 20),
    stale=st.sampled_from([None, 5]),
    ignore_backpressure=st.booleans(),
)
def test_publish_many_matches_publish_one_by_one(
    script: list[tuple[str, int]],
    history: int,
    capacity: int,
    stale: int | None,
    ignore_backpressure: bool,
) -> None:
    single = make(history, capacity, stale)
    batched = make(history, capacity, stale)
    single_queues = list(single._queues)
    batched_queues = list(batched._queues)
    for now, (op, arg) in enumerate(script, 1):
        if op == "batch":
            values = [tick((i * 7 + now) % 5, price=now * 100 + i) for i in range(arg)]
            done = 0
            while done < arg:
                if batched.backpressure and not ignore_backpressure:
                    break
                step = batched.publish_many(values, now, done)
                assert step >= 1
                for value in values[done : done + step]:
                    single.publish(value, now)
                done += step
        else:
            for a, b in zip(single_queues, batched_queues, strict=True):
                assert a.pop_many(now, arg) == b.pop_many(now, arg)
        assert state(single, single_queues) == state(batched, batched_queues)


def pressed(topic: TopicCore[MarketTick]) -> bool:
    return topic.backpressure  # (a call: mypy does not narrow it between asserts)


def test_publish_many_stops_at_the_room_of_block_queues() -> None:
    topic = TopicCore("md.ticks", MarketTick, key=lambda t: t.instrument_id, queue_size=4)
    queue = topic.attach(policy=Policy.BLOCK)
    values = [tick(i) for i in range(10)]
    assert topic.publish_many(values, 1) == 4
    assert pressed(topic)
    assert [e.seq for e in queue.pop_many(0, 1)] == [1]
    assert not pressed(topic)
    assert topic.publish_many(values, 2, 4) == 1  # the room left
    assert pressed(topic)
    # Pushed on regardless of backpressure: one at a time, as publish would.
    assert topic.publish_many(values, 3, 5) == 1
    assert [e.seq for e in queue.pop_many(0, 10)] == [2, 3, 4, 5, 6]
    assert topic.publish_many(values, 4, 6) == 4
    assert [e.seq for e in queue.pop_many(0, 10)] == [7, 8, 9, 10]
    assert topic.head == 10


def test_publish_many_publishes_the_values_before_a_bad_one() -> None:
    topic = TopicCore("md.ticks", MarketTick, key=lambda t: t.instrument_id)
    queue = topic.attach(policy=Policy.BLOCK)
    values = [tick(1), tick(2), tick(3)._replace(price="x"), tick(4)]  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        topic.publish_many(values, 1)
    assert topic.head == 2
    assert [e.seq for e in queue.pop_many(0, 10)] == [1, 2]
    assert [e.seq for e in topic.log.read(1, 10)] == [1, 2]


def test_log_extend_refuses_numbers_that_do_not_run_on() -> None:
    log = InMemoryLog("t", 4)
    topic = TopicCore("t", MarketTick)
    entries = [e for e in (topic.publish(tick(1), 0), topic.publish(tick(2), 0))]
    assert entries == [1, 2]
    good = topic.log.read(1, 2)
    log.extend(good)
    assert log.head == 2
    with pytest.raises(ValueError, match="not above the head"):
        log.extend(good)
    with pytest.raises(ValueError, match="not numbered in a run"):
        log.extend([good[0]._replace(seq=3), good[1]._replace(seq=5)])
    assert log.head == 2
