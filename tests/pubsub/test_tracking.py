"""SequenceTracker, LatencyStats and DATAGRAM mode."""

from __future__ import annotations

import pytest

from quicframe.errors import ErrorCode, RemoteProtocolError
from quicframe.pubsub import (
    SAMPLES_PER_RUN,
    ClientSubscription,
    LatencyStats,
    SequenceTracker,
    decode_datagram,
    encode_datagram,
    read_subscribe,
)
from quicframe.wire import (
    MARKET_TICK_CODEC,
    FrameType,
    MarketTick,
    Metadata,
    decode_frame,
    default_registry,
    encode_frame,
)

from .helpers import fresh, open_pair, pump, seqs, tick, tick_topic


def test_tracker_counts_gaps_and_drops_duplicates() -> None:
    tracker = SequenceTracker()
    results = [tracker.accept(s) for s in [5, 6, 6, 9, 8, 10, 14]]
    assert results == [True, True, False, True, False, True, True]
    assert tracker.last_seq == 14
    assert tracker.next_seq == 15
    assert (tracker.duplicates, tracker.gap_count, tracker.missing) == (2, 2, 5)
    assert list(tracker.gaps) == [(7, 8), (11, 13)]
    assert tracker.delivered == 5


def test_tracker_baseline_and_announced_gaps() -> None:
    tracker = SequenceTracker(last_seq=10)
    assert tracker.accept(12)
    assert list(tracker.gaps) == [(11, 11)]
    tracker.note_gap(13, 20)
    assert tracker.last_seq == 12  # a snapshot may still bring values from 13..20
    assert tracker.missing == 9
    tracker.skip_to(30)  # a snapshot consistent at 30: no gap
    assert (tracker.last_seq, tracker.gap_count) == (30, 2)
    tracker.skip_to(25)
    assert tracker.last_seq == 30
    assert tracker.accept_quiet(40)
    assert not tracker.accept_quiet(40)
    assert tracker.gap_count == 2


def test_tracker_keeps_a_bounded_list_of_gaps() -> None:
    tracker = SequenceTracker(0, gaps_kept=3)
    for s in range(2, 40, 2):
        tracker.accept(s)
    assert len(tracker.gaps) == 3
    assert tracker.gap_count == 19


def test_accept_run_fast_and_slow_paths_agree() -> None:
    values = [tick(1)._replace(seq=s) for s in [1, 2, 3, 4, 5]]
    fast = SequenceTracker(0)
    assert fast.accept_run(values) is values  # contiguous: the list itself
    assert fast.last_seq == 5
    # A run that starts right but has a hole inside is not taken as contiguous.
    holey = [tick(1)._replace(seq=s) for s in [6, 8, 7, 9, 10]]
    slow = SequenceTracker(5)
    assert seqs(slow.accept_run(holey)) == [6, 8, 9, 10]
    assert (slow.duplicates, slow.gap_count) == (1, 1)
    assert SequenceTracker().accept_run([]) == []


def test_latency_window_is_bounded() -> None:
    stats = LatencyStats(window=100)
    assert fresh(stats.p50) is None
    for i in range(1000):
        stats.record(i)
    assert len(stats) == 100
    assert stats.count == 1000
    assert stats.p50 == 949
    assert stats.p99 == 998
    assert stats.percentile(0) == 900
    assert stats.percentile(100) == 999
    stats.record_run(10_000, [9_000, 9_500], 2)
    assert stats.count == 1002
    assert stats.percentile(100) == 1000


def test_latency_is_measured_from_send_time() -> None:
    topic = tick_topic()
    client: ClientSubscription[MarketTick] = ClientSubscription("md.ticks", snapshot=False)
    server = open_pair(topic, client)
    pump(server, client)
    for i in range(60):
        topic.publish(tick(i), now_ns=1_000 + i)
    pump(server, client, receive_ns=2_000)
    assert client.latency.count == 60
    assert client.latency.p50 == 970  # latencies 941..1000
    assert client.latency.p99 == 1_000
    assert client.stats().latency_p99_ns == 1_000


def test_long_runs_are_sampled_evenly() -> None:
    stats = LatencyStats()
    values = [tick(1)._replace(send_time_ns=i) for i in range(1000)]
    stats.record_values(1000, values, lambda t: t.send_time_ns)
    assert 32 <= stats.count <= SAMPLES_PER_RUN
    p50 = stats.p50
    assert p50 is not None
    assert 450 <= p50 <= 550
    assert stats.percentile(100) == 1000


# ------------------------------------------------------------------------- datagrams


def test_datagram_encoding_puts_the_channel_in_the_opcode() -> None:
    frame = MARKET_TICK_CODEC.encode_frame(tick(42)._replace(seq=7))
    datagram = encode_datagram(frame, 0x1234)
    assert len(datagram) == len(frame)
    assert datagram[4:6] == b"\x12\x34"
    assert datagram[:4] + b"\x00\x00" + datagram[6:] == frame
    whole = decode_frame(datagram)
    assert (whole.type, whole.opcode) == (FrameType.MARKET_TICK, 0x1234)
    channel, value = decode_datagram(datagram, MARKET_TICK_CODEC)
    assert channel == 0x1234
    assert value == tick(42)._replace(seq=7)
    # Without the fast path (no codec given): through the registry.
    assert decode_datagram(datagram, registry=default_registry) == (0x1234, value)


def test_datagram_decoding_rejects_what_is_not_one_frame() -> None:
    frame = MARKET_TICK_CODEC.encode_frame(tick(1))
    with pytest.raises(RemoteProtocolError) as info:
        decode_datagram(frame + b"\x00", MARKET_TICK_CODEC)
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    with pytest.raises(RemoteProtocolError):
        decode_datagram(frame[:-1], MARKET_TICK_CODEC)
    other = encode_frame(FrameType.PING, bytes(8))
    with pytest.raises(RemoteProtocolError) as wrong:
        decode_datagram(other, MARKET_TICK_CODEC)
    assert wrong.value.code == ErrorCode.UNEXPECTED_FRAME
    # A tick frame with metadata still decodes (slow path).
    body = MARKET_TICK_CODEC.encode(tick(3))
    meta = encode_frame(
        FrameType.MARKET_TICK, body, opcode=9, metadata=Metadata.build(request_id="r")
    )
    assert decode_datagram(meta, MARKET_TICK_CODEC) == (9, tick(3))


def test_datagram_mode_counts_gaps_under_loss() -> None:
    topic = tick_topic(queue_size=10_000)
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", mode="datagram", channel=5, snapshot=False, policy="drop-oldest"
    )
    server = open_pair(topic, client)
    assert server.datagram
    assert server.channel == 5
    assert pump(server, client) == []
    assert client.live
    delivered: list[MarketTick] = []
    lost = 0
    for i in range(1, 1001):
        topic.publish(tick(i), now_ns=i)  # distinct keys: nothing conflated
        (datagram,) = server.datagrams_to_send(0)
        if i % 20 == 7:  # 5% loss on the network
            lost += 1
            continue
        delivered += client.receive_datagram(datagram, 0)
    assert len(delivered) == 1000 - lost
    assert client.tracker.missing == lost
    assert client.tracker.gap_count == lost
    assert seqs(delivered) == sorted(seqs(delivered))
    # Nothing but control frames went on the stream.
    assert server.data_to_send(0) == []


def test_late_datagram_is_dropped() -> None:
    topic = tick_topic()
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", mode="datagram", channel=1, snapshot=False
    )
    server = open_pair(topic, client)
    pump(server, client)
    datagrams = []
    for i in range(1, 4):
        topic.publish(tick(i), now_ns=i)
        datagrams += server.datagrams_to_send(0)
    assert seqs(client.receive_datagram(datagrams[0], 0)) == [1]
    assert seqs(client.receive_datagram(datagrams[2], 0)) == [3]
    assert client.receive_datagram(datagrams[1], 0) == []  # came after 3: stale
    assert (client.tracker.duplicates, client.tracker.missing) == (1, 1)


def test_datagrams_overtaking_the_snapshot_are_applied_after_it() -> None:
    topic = tick_topic()
    for i in range(1, 6):
        topic.publish(tick(i % 2, price=i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", mode="datagram", channel=3
    )
    server = open_pair(topic, client)
    server.fulfil()
    stream = b"".join(server.data_to_send(0))  # SUBSCRIBED + snapshot, not yet read
    for i in range(6, 9):
        topic.publish(tick(i % 2, price=i), now_ns=i)
    early = server.datagrams_to_send(0)
    assert len(early) == 2  # conflated per key: 6 was replaced by 8
    # The datagrams arrive first, even before SUBSCRIBED: held back.
    for datagram in early:
        assert client.receive_datagram(datagram, 0) == []
    got = client.receive_data(stream, 0)
    assert seqs(got) == [4, 5, 7, 8]  # snapshot, then the held datagrams above it
    assert client.tracker.duplicates == 0


def test_datagram_resume_waits_for_the_replay() -> None:
    topic = tick_topic(policy="drop-oldest")
    for i in range(1, 11):
        topic.publish(tick(i), now_ns=i)
    client: ClientSubscription[MarketTick] = ClientSubscription(
        "md.ticks", mode="datagram", channel=2, from_seq=6, policy="drop-oldest"
    )
    server = open_pair(topic, client)
    assert read_subscribe(decode_frame(client.subscribe_frame())).from_seq == 6
    server.fulfil()
    replay = b"".join(server.data_to_send(0))
    topic.publish(tick(11), now_ns=11)
    (live,) = server.datagrams_to_send(0)
    assert client.receive_datagram(live, 0) == []  # before the replay: held
    got = client.receive_data(replay, 0)
    assert seqs(got) == [6, 7, 8, 9, 10, 11]
