"""The two ends of a subscription stream, driven without an event loop."""

from __future__ import annotations

import pytest

from quicframe.errors import ErrorCode, RemoteProtocolError, SlowConsumer, Unavailable
from quicframe.pubsub import (
    ClientSubscription,
    Entry,
    Gap,
    HistoryGap,
    InMemoryLog,
    Policy,
    ReplayRequest,
    ServerSubscription,
    Snapshot,
    SnapshotRequest,
    Subscribe,
    TopicCore,
    read_subscribe,
)
from quicframe.wire import FrameType, MarketTick, OrderAck, decode_frame, encode_frame

from .helpers import ack, fresh, open_pair, pump, seqs, tick, tick_topic


def test_snapshot_on_subscribe_then_live() -> None:
    topic = tick_topic()
    for i, key in enumerate([1, 2, 1, 3, 2], start=1):
        topic.publish(tick(key, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    server = open_pair(topic, client)
    assert isinstance(server.request, SnapshotRequest)
    got = pump(server, client)
    # Latest per key (1 -> 3, 3 -> 4, 2 -> 5), in sequence order.
    assert seqs(got) == [3, 4, 5]
    assert [t.instrument_id for t in got] == [1, 3, 2]
    assert client.live
    assert client.snapshots == 1
    assert client.subscribed is not None
    assert (client.subscribed.head, client.subscribed.frame_type) == (5, FrameType.MARKET_TICK)
    topic.publish(tick(9), now_ns=6)
    assert seqs(pump(server, client)) == [6]
    assert client.tracker.gap_count == 0


def test_updates_during_the_snapshot_are_applied_once() -> None:
    """Subscribe, then snapshot, then apply later updates: nothing missed or doubled."""
    topic = tick_topic(policy=Policy.BLOCK)
    for i in range(1, 11):
        topic.publish(tick(i % 4, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", policy="block")
    server = open_pair(topic, client)
    # Frames published while the snapshot is still being fetched...
    for i in range(11, 16):
        topic.publish(tick(i % 4, price=i), now_ns=i)
    # ...are queued; the (in-memory) snapshot now reflects them, so they are skipped.
    got = pump(server, client)
    assert seqs(got) == sorted(set(seqs(got)))
    latest = {t.instrument_id: t.price for t in got}
    assert latest == {k: max(i for i in range(1, 16) if i % 4 == k) for k in range(4)}
    topic.publish(tick(0, price=99), now_ns=16)
    assert seqs(pump(server, client)) == [16]


class _OlderSnapshotLog:
    """A log whose snapshot lags behind its head (a remote cache, say)."""

    def __init__(self, inner: InMemoryLog, lag: int) -> None:
        self.inner = inner
        self.lag = lag

    @property
    def head(self) -> int:
        return self.inner.head

    @property
    def first_seq(self) -> int:
        return self.inner.first_seq

    def append(self, entry: Entry, /) -> None:
        self.inner.append(entry)

    def read(self, from_seq: int, limit: int, /) -> list[Entry]:
        return self.inner.read(from_seq, limit)

    def snapshot(self) -> Snapshot:
        seq = self.inner.head - self.lag
        latest: dict[object, Entry] = {}
        for e in self.inner.read(self.inner.first_seq, seq):
            latest[e.key] = e
        return Snapshot(seq, sorted(latest.values(), key=lambda e: e.seq))


def test_a_snapshot_older_than_the_head_is_completed_from_history() -> None:
    topic = tick_topic(policy=Policy.BLOCK)
    for i in range(1, 9):
        topic.publish(tick(i % 2, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    server = open_pair(topic, client)
    server.fulfil(_OlderSnapshotLog(topic.log, lag=3))  # type: ignore[arg-type]
    assert server.request == ReplayRequest(6, 8, server.request.limit)  # type: ignore[union-attr]
    got = pump(server, client)
    assert seqs(got) == [4, 5, 6, 7, 8]  # snapshot at 5 (keys 0 -> 4, 1 -> 5), then 6..8


def test_resume_after_reconnect_replays_with_nothing_missed_or_doubled() -> None:
    topic = tick_topic(policy=Policy.BLOCK, queue_size=1000)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", snapshot=False)
    server = open_pair(topic, client)
    delivered = pump(server, client)
    for i in range(1, 21):
        topic.publish(tick(i), now_ns=i)
    delivered += pump(server, client)
    for i in range(21, 31):
        topic.publish(tick(i), now_ns=i)
    # Part of what was sent is lost with the connection (cut mid-frame).
    in_flight = b"".join(server.data_to_send(0, 1000))
    delivered += client.receive_data(in_flight[: 60 * 4 + 17], 0)
    server.close()
    assert topic.subscribers == 0
    for i in range(31, 41):
        topic.publish(tick(i), now_ns=i)
    client.reset()
    assert read_subscribe(decode_frame(client.subscribe_frame())).from_seq == 25
    server = open_pair(topic, client)
    assert server.request == ReplayRequest(25, 40, server.request.limit)  # type: ignore[union-attr]
    delivered += pump(server, client, chunk=7)
    topic.publish(tick(41), now_ns=41)
    delivered += pump(server, client)
    assert seqs(delivered) == list(range(1, 42))
    assert (client.tracker.duplicates, client.tracker.gap_count) == (0, 0)


def test_replay_comes_in_chunks() -> None:
    topic = tick_topic(policy=Policy.BLOCK)
    for i in range(1, 101):
        topic.publish(tick(i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", from_seq=1)
    server = ServerSubscription(
        topic, read_subscribe(decode_frame(client.subscribe_frame())), replay_chunk=30
    )
    requests = []
    while server.request is not None:
        requests.append(server.request)
        server.fulfil()
    assert [(r.from_seq, r.to_seq) for r in requests] == [  # type: ignore[union-attr]
        (1, 100),
        (31, 100),
        (61, 100),
        (91, 100),
    ]
    assert seqs(pump(server, client)) == list(range(1, 101))


def test_history_running_out_during_a_replay_recovers_without_duplicates() -> None:
    topic = tick_topic(history=50, policy=Policy.BLOCK, queue_size=1000)
    topic.publish(tick(99), now_ns=0)  # key 99: its latest value is seq 1
    for i in range(2, 51):
        topic.publish(tick(i % 5, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", from_seq=1)
    server = ServerSubscription(
        topic, read_subscribe(decode_frame(client.subscribe_frame())), replay_chunk=20
    )
    server.fulfil()  # 1..20
    delivered = client.receive_data(b"".join(server.data_to_send(0)), 0)
    assert seqs(delivered) == list(range(1, 21))
    for i in range(51, 91):  # the history (50 frames) now starts at 41
        topic.publish(tick(i % 5, price=i), now_ns=i)
    delivered += pump(server, client)
    assert client.gap_notices == [Gap(21, 40, "not in the history")]
    assert client.tracker.duplicates == 0
    assert seqs(delivered) == sorted(set(seqs(delivered)))
    # The snapshot brought every key's latest value; live frames follow.
    latest = {t.instrument_id: t.seq for t in delivered}
    assert latest == {e.key: e.seq for e in topic.log.snapshot().entries}
    assert server.live


def test_history_exceeded_recovers_with_gap_and_snapshot() -> None:
    topic = tick_topic(history=10)
    for i in range(1, 31):
        topic.publish(tick(i % 5, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", from_seq=5)
    server = open_pair(topic, client)
    got = pump(server, client)
    assert client.gap_notices == [Gap(5, 20, "not in the history")]
    assert isinstance(server.gap, HistoryGap)
    assert client.tracker.gaps[-1] == (5, 20)
    assert seqs(got) == [26, 27, 28, 29, 30]  # the snapshot: latest per key
    assert client.live
    assert client.error is None
    topic.publish(tick(1), now_ns=31)
    assert seqs(pump(server, client)) == [31]


def test_history_exceeded_is_an_error_naming_the_range_when_asked() -> None:
    topic = tick_topic(history=10)
    for i in range(1, 31):
        topic.publish(tick(i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", from_seq=3, on_gap="error"
    )
    server = open_pair(topic, client)
    assert pump(server, client) == []
    error = client.error
    assert isinstance(error, HistoryGap)
    assert (error.topic, error.first_missing, error.last_missing) == ("md.ticks", 3, 20)
    assert error.code == ErrorCode.SEQUENCE_GAP
    assert server.done
    assert topic.subscribers == 0


def test_disconnect_policy_sends_slow_consumer_and_ends() -> None:
    topic = tick_topic(queue_size=3)
    slow: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", policy="disconnect", snapshot=False
    )
    fine: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", policy="disconnect", snapshot=False
    )
    slow_server = open_pair(topic, slow)
    fine_server = open_pair(topic, fine)
    pump(slow_server, slow)
    received = pump(fine_server, fine)
    for i in range(1, 11):
        topic.publish(tick(i), now_ns=i)
        received += pump(fine_server, fine)
    assert seqs(received) == list(range(1, 11))
    assert pump(slow_server, slow) == []
    assert isinstance(slow.error, SlowConsumer)
    assert slow_server.done
    assert fine.error is None
    assert not fine_server.done


def test_unsubscribe_ends_the_subscription() -> None:
    topic = tick_topic()
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    server = open_pair(topic, client)
    pump(server, client)
    topic.publish(tick(1), 0)
    server.receive_data(client.unsubscribe_frame("bye"))
    assert server.done
    assert topic.subscribers == 0
    assert server.data_to_send(0) == []
    server.receive_eof()


def test_server_close_with_an_error_tells_the_client() -> None:
    topic = tick_topic()
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    server = open_pair(topic, client)
    pump(server, client)
    server.close(Unavailable("shutting down"))
    pump(server, client)
    assert isinstance(client.error, Unavailable)
    assert server.done


def test_client_may_only_send_unsubscribe() -> None:
    topic = tick_topic()
    server = open_pair(topic, ClientSubscription("md.ticks"))
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(encode_frame(FrameType.PING, bytes(8)))
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME


def test_stream_must_start_with_subscribe() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_subscribe(decode_frame(encode_frame(FrameType.PING, bytes(8))))
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(RemoteProtocolError) as bad:
        read_subscribe(decode_frame(encode_frame(FrameType.SUBSCRIBE, b"\x81\xa1x\x01")))
    assert bad.value.code == ErrorCode.MALFORMED_BODY


def test_client_rejects_data_before_subscribed() -> None:
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    data = tick_topic()
    data.publish(tick(1), 0)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data.log.read(1, 1)[0].data, 0)
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME


def test_invalid_subscribe_arguments_fail_locally() -> None:
    from quicframe.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        ClientSubscription("md.ticks", mode="datagram")  # no channel
    with pytest.raises(LocalProtocolError):
        ClientSubscription("md.ticks", policy="fastest")
    with pytest.raises(ValueError, match="names"):
        ServerSubscription(tick_topic(), Subscribe("other"))


def test_byte_by_byte_delivery_gives_the_same_values() -> None:
    topic = tick_topic()
    for i in range(1, 21):
        topic.publish(tick(i % 6), now_ns=i)
    whole: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    byte: ClientSubscription[MarketTick] = ClientSubscription("md.ticks")
    a = pump(open_pair(topic, whole), whole)
    b = pump(open_pair(topic, byte), byte, chunk=1)
    assert a == b
    assert len(a) == 6


def test_stalled_conflating_subscriber_gets_latest_per_key() -> None:
    topic = tick_topic(queue_size=100)
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", snapshot=False)
    server = open_pair(topic, client)
    pump(server, client)
    for i in range(1, 10_001):
        topic.publish(tick(i % 50, price=i), now_ns=i)
    assert len(server.queue) == 50
    got = pump(server, client)
    assert len(got) == 50
    assert seqs(got) == sorted(seqs(got))
    assert {t.instrument_id: t.price for t in got} == {
        k: max(i for i in range(9_951, 10_001) if i % 50 == k) for k in range(50)
    }
    stats = server.queue.stats()
    assert (stats.conflated, stats.delivered) == (10_000 - 50, 50)


def test_order_ack_topic_over_the_slow_path() -> None:
    topic = TopicCore("orders", OrderAck, key=lambda a: a.order_id)
    client: ClientSubscription[OrderAck] = ClientSubscription("orders", snapshot=False)
    server = open_pair(topic, client)
    pump(server, client)
    for i in range(1, 6):
        topic.publish(ack(i), now_ns=100 * i)
    got = pump(server, client, receive_ns=1000)
    assert [a.order_id for a in got] == [1, 2, 3, 4, 5]
    assert client.latency.count == 5
    assert client.stats().latency_p50_ns == 700


def test_datagram_mode_waits_for_the_replay_after_an_older_snapshot() -> None:
    topic = tick_topic()
    for i in range(1, 9):
        topic.publish(tick(i % 2, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", mode="datagram", channel=4
    )
    server = open_pair(topic, client)
    server.fulfil(_OlderSnapshotLog(topic.log, lag=3))  # type: ignore[arg-type]
    snapshot = b"".join(server.data_to_send(0))  # SUBSCRIBED + snapshot at 5
    server.fulfil()  # replay 6..8
    replay = b"".join(server.data_to_send(0))
    topic.publish(tick(1, price=9), now_ns=9)
    (live,) = server.datagrams_to_send(0)
    got = client.receive_data(snapshot, 0)
    assert seqs(got) == [4, 5]
    assert not client.live
    assert client.receive_datagram(live, 0) == []  # held: the replay is not in yet
    got = client.receive_data(replay, 0)
    assert seqs(got) == [6, 7, 8, 9]
    assert fresh(client).live
    assert client.tracker.duplicates == 0
