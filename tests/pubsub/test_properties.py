"""Property: whatever interleaving of publishing, partial delivery, connection loss,
history loss and resubscription, what a subscriber delivers is strictly increasing,
never repeats a frame, and ends with the topic's latest value for every key."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings, strategies as st

from quicframe.errors import SlowConsumer
from quicframe.pubsub import (
    ClientSubscription,
    Policy,
    ServerSubscription,
    TopicCore,
    read_subscribe,
)
from quicframe.wire import MarketTick, decode_frame

from .helpers import tick

# (operation, argument)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 5)),  # key
        st.tuples(st.just("burst"), st.integers(1, 30)),  # frames, keys 0-3 in turn
        st.tuples(st.just("batch"), st.integers(1, 30)),  # as burst, by publish_many
        st.tuples(st.just("send"), st.integers(1, 50)),  # frames the server writes
        st.tuples(st.just("deliver"), st.integers(1, 400)),  # bytes that arrive
        st.tuples(st.just("drop"), st.just(0)),  # the connection dies
        st.tuples(st.just("connect"), st.just(0)),
    ),
    max_size=120,
)


@dataclass
class Link:
    topic: TopicCore[MarketTick]
    client: ClientSubscription[MarketTick]
    server: ServerSubscription | None = None
    wire: bytearray = field(default_factory=bytearray)
    delivered: list[MarketTick] = field(default_factory=list)

    def connect(self) -> None:
        if self.server is None:
            self.client.reset()
            self.wire.clear()
            request = read_subscribe(decode_frame(self.client.subscribe_frame()))
            # Small replay chunks, so that history can run out in the middle.
            self.server = ServerSubscription(self.topic, request, replay_chunk=3)

    def drop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            self.wire.clear()

    def send(self, frames: int, *, answer_all: bool = False) -> None:
        server = self.server
        if server is None:
            return
        # One answer per step, as an asynchronous backbone would give them: frames
        # may be published between a request and its answer.
        if server.request is not None:
            server.fulfil()
        while answer_all and server.request is not None:
            server.fulfil()
        for chunk in server.data_to_send(0, frames):
            self.wire += chunk

    def deliver(self, size: int) -> None:
        if self.server is None or not self.wire:
            return
        data = bytes(self.wire[:size])
        del self.wire[:size]
        self.delivered += self.client.receive_data(data, 0)
        if self.client.error is not None:
            assert isinstance(self.client.error, SlowConsumer)
            self.drop()  # the server ended the stream; the client comes back


def run(policy: Policy, capacity: int, history: int, script: list[tuple[str, int]]) -> Link:
    topic = TopicCore(
        "md.ticks",
        MarketTick,
        key=lambda t: t.instrument_id,
        history=history,
        policy=policy,
        queue_size=capacity,
    )
    link = Link(topic, ClientSubscription("md.ticks"))
    link.connect()
    price = 0
    for op, arg in script:
        if op == "publish":
            price += 1
            topic.publish(tick(arg, price=price), now_ns=price)
        elif op == "burst":
            for i in range(arg):
                price += 1
                topic.publish(tick(i % 4, price=price), now_ns=price)
        elif op == "batch":
            values = [tick(i % 4, price=price + 1 + i) for i in range(arg)]
            price += arg
            done = 0
            while done < arg:  # ignoring backpressure, as burst does
                done += topic.publish_many(values, price, done)
        elif op == "send":
            link.send(arg)
        elif op == "deliver":
            link.deliver(arg)
        elif op == "drop":
            link.drop()
        else:
            link.connect()
    # Finally let everything through, reconnecting as often as needed.
    for _ in range(3):
        link.connect()
        while link.server is not None and (link.server.request is not None or link.wire):
            link.send(1 << 20, answer_all=True)
            link.deliver(1 << 30)
        link.send(1 << 20, answer_all=True)
        link.deliver(1 << 30)
    return link


def check(link: Link) -> None:
    seqs = [t.seq for t in link.delivered]
    assert seqs == sorted(set(seqs)), "delivered out of order or twice"
    assert link.client.tracker.duplicates == 0
    latest: dict[int, int] = {}
    for t in link.delivered:
        latest[t.instrument_id] = t.seq
    expected = {e.key: e.seq for e in link.topic.log.snapshot().entries}
    assert latest == expected, "a key's latest value never arrived"
    assert link.client.tracker.last_seq in (None, link.topic.head) or link.topic.head == 0


@settings(max_examples=300, deadline=None)
@given(script=ops, history=st.integers(0, 12))
def test_block_loses_nothing_silently(script: list[tuple[str, int]], history: int) -> None:
    """A reliable policy with a short history: every gap the subscriber sees is one
    the server announced (GAP, then a snapshot), never a silent hole."""
    link = run(Policy.BLOCK, 10_000, history, script)
    check(link)
    tracker = link.client.tracker
    assert tracker.gap_count == len(link.client.gap_notices)
    assert tracker.last_seq == link.topic.head or link.topic.head == 0


@settings(max_examples=300, deadline=None)
@given(script=ops)
def test_with_enough_history_nothing_is_missed(script: list[tuple[str, int]]) -> None:
    """Ample history and a reliable policy: across any connection losses, the frames
    after the snapshot arrive contiguously (no gap at all) up to the head, once."""
    link = run(Policy.BLOCK, 10_000, 10_000, script)
    check(link)
    tracker = link.client.tracker
    assert not link.client.gap_notices
    assert (tracker.gap_count, tracker.missing, tracker.duplicates) == (0, 0, 0)
    assert tracker.last_seq == link.topic.head or link.topic.head == 0
    assert link.client.snapshots <= 1


@settings(max_examples=200, deadline=None)
@given(script=ops, history=st.integers(0, 12))
def test_conflate_delivers_increasing_latest_values(
    script: list[tuple[str, int]], history: int
) -> None:
    check(run(Policy.CONFLATE, 64, history, script))


@settings(max_examples=200, deadline=None)
@given(script=ops, history=st.integers(5, 40))
def test_disconnect_resubscribes_without_duplicates(
    script: list[tuple[str, int]], history: int
) -> None:
    check(run(Policy.DISCONNECT, 4, history, script))
