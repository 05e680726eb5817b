"""End to end over loopback: fan-out, policies, snapshot, gaps, errors, DATAGRAM fallback."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe._topic import DEFAULT_SEND_BUFFER
from quicframe.errors import ErrorCode, RemoteError, SlowConsumer, UnknownTopic
from quicframe.pubsub import HistoryGap, Subscribe, encode_control
from quicframe.session import error_from_frame
from quicframe.transport import Stream
from quicframe.wire import FrameDecoder, FrameType, decode_frame

from .conftest import serving
from .helpers import ack, tick


def ack_topic(**kwargs: Any) -> quicframe.Topic[quicframe.OrderAck]:
    return quicframe.Topic("orders.acks", frame=quicframe.OrderAck, **kwargs)


def tick_topic(**kwargs: Any) -> quicframe.Topic[quicframe.MarketTick]:
    kwargs.setdefault("key", lambda t: t.instrument_id)
    kwargs.setdefault("history", 100_000)
    return quicframe.Topic("md.ticks", frame=quicframe.MarketTick, **kwargs)


async def test_every_subscriber_receives_every_frame_in_order(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """Reliable mode (BLOCK, the OrderAck default): N subscribers on separate
    connections each get 1..TOTAL exactly once, in order, decoded."""
    subscribers, total = 4, 3000
    acks = ack_topic(queue_size=64)
    router = quicframe.Router()
    router.add_topic(acks)
    received: list[list[int]] = [[] for _ in range(subscribers)]
    with trio.fail_after(30):
        async with serving(router, server_config) as server, trio.open_nursery() as nursery:
            ready = trio.Semaphore(0)

            async def subscriber(index: int) -> None:
                async with (
                    quicframe.connect("127.0.0.1", server.port, client_config) as client,
                    client.subscribe("orders.acks", snapshot=False) as sub,
                ):
                    ready.release()
                    async for value in sub:
                        assert isinstance(value, quicframe.OrderAck)
                        received[index].append(value.seq)
                        if value.seq == total:
                            return

            for index in range(subscribers):
                nursery.start_soon(subscriber, index)
            for _ in range(subscribers):
                await ready.acquire()
            assert acks.subscribers == subscribers
            for order_id in range(1, total + 1):
                seq = await acks.publish(ack(order_id))
                assert seq == order_id
    expected = list(range(1, total + 1))
    for seqs in received:
        assert seqs == expected


async def test_unknown_topic_is_refused_on_entry(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    router = quicframe.Router()
    router.add_topic(tick_topic())
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):
            with pytest.raises(UnknownTopic):
                async with client.subscribe("md.nope"):
                    pytest.fail("subscribed to a topic that does not exist")
            # The session is unharmed: a good subscription still works.
            async with client.subscribe("md.ticks") as sub:
                assert sub.subscribed is not None


async def test_a_server_without_topics_refuses_subscriptions(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    router = quicframe.Router()  # RPC only

    @router.rpc(0x0101)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):
            with pytest.raises(UnknownTopic):
                async with client.subscribe("md.ticks"):
                    pytest.fail("subscribed on a server with no topics")
            assert await client.call(0x0101, "still fine") == "still fine"


STALLED = pytest.mark.aioquic_only(
    "a stalled reader must stop the sender: receive credit follows consumption on aioquic only"
)


def stalled(config: ClientConfig) -> ClientConfig:
    """A client whose streams take at most 1 KiB ahead of what the application read."""
    return dataclasses.replace(
        config, stream_receive_window=1024, connection_receive_window=64 * 1024
    )


@STALLED
async def test_conflate_keeps_the_latest_per_key_for_a_stalled_consumer(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """A consumer that stops reading: its server-side queue holds one frame per key
    (bounded memory, the rest conflated); once it reads again it gets the latest
    value of every key, numbers increasing, the jumps counted as gaps."""
    keys, total = 10, 20_000
    ticks = tick_topic(send_buffer=2048)
    router = quicframe.Router()
    router.add_topic(ticks)
    last_price: dict[int, int] = {}
    with trio.fail_after(30):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, stalled(client_config)) as client,
            client.subscribe("md.ticks", buffer=4) as sub,
        ):
            for i in range(total):
                instrument = i % keys
                last_price[instrument] = 1000 + i
                await ticks.publish(tick(instrument, price=1000 + i))
            (queue,) = ticks.statistics().subscriptions
            assert queue.high_water <= keys  # memory bounded: one entry per key
            assert queue.conflated > total // 2
            seen: dict[int, int] = {}
            seqs: list[int] = []
            async for value in sub:
                seen[value.instrument_id] = value.price
                seqs.append(value.seq)
                if value.seq == total:
                    break
            stats = sub.stats()
    assert seen == last_price  # the latest value of every key arrived
    assert seqs == sorted(set(seqs))  # increasing, no duplicates
    assert len(seqs) < total
    assert stats.gaps > 0
    assert stats.duplicates == 0
    assert stats.received == len(seqs)


@STALLED
async def test_disconnect_fails_only_the_slow_subscriber(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    total = 3000
    acks = ack_topic(send_buffer=2048, queue_size=256)
    router = quicframe.Router()
    router.add_topic(acks)
    fast_seqs: list[int] = []
    with trio.fail_after(30):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as fast_client,
            quicframe.connect("127.0.0.1", server.port, stalled(client_config)) as slow_client,
            fast_client.subscribe("orders.acks") as fast,
            slow_client.subscribe(
                "orders.acks", policy="disconnect", queue_size=32, buffer=4
            ) as slow,
            trio.open_nursery() as nursery,
        ):
            assert slow.subscribed is not None
            assert slow.subscribed.policy == "disconnect"

            async def read_fast() -> None:
                async for value in fast:
                    fast_seqs.append(value.seq)
                    if value.seq == total:
                        return

            nursery.start_soon(read_fast)
            for order_id in range(1, total + 1):
                await acks.publish(ack(order_id))
            with pytest.raises(SlowConsumer):
                async for _ in slow:
                    pass
            assert slow.stats().received < total
    assert fast_seqs == list(range(1, total + 1))
    assert acks.subscribers == 0


@STALLED
async def test_block_loses_nothing_and_holds_the_publisher_back(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    total = 2000
    acks = ack_topic(send_buffer=1024, queue_size=8)
    router = quicframe.Router()
    router.add_topic(acks)
    seqs: list[int] = []
    with trio.fail_after(30):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, stalled(client_config)) as client,
            client.subscribe("orders.acks", buffer=4) as sub,
            trio.open_nursery() as nursery,
        ):
            assert sub.subscribed is not None
            assert sub.subscribed.policy == "block"

            async def publish() -> None:
                for order_id in range(1, total + 1):
                    await acks.publish(ack(order_id))

            nursery.start_soon(publish)
            async for value in sub:
                seqs.append(value.seq)
                if value.seq == total:
                    break
            (queue,) = acks.statistics().subscriptions
            waits = acks.statistics().publisher_waits
    assert seqs == list(range(1, total + 1))
    assert waits > 0  # the publisher was held back
    assert queue.dropped == 0
    assert queue.high_water <= 2 * 8


async def test_snapshot_on_subscribe(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """Subscribing starts with the latest value of each key (ascending numbers),
    then live frames; without a snapshot only the live ones come."""
    ticks = tick_topic()
    router = quicframe.Router()
    router.add_topic(ticks)
    for i in range(20):
        ticks.core.publish(tick(i % 5, price=i), 0)
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
            client.subscribe("md.ticks") as sub,
            client.subscribe("md.ticks", snapshot=False) as live_only,
        ):
            await ticks.publish(tick(3, price=99))
            got = [await sub.__anext__() for _ in range(6)]
            assert [v.seq for v in got] == [16, 17, 18, 19, 20, 21]
            assert [v.price for v in got[:5]] == [15, 16, 17, 18, 19]
            assert sub.stats().snapshots == 1
            assert sub.stats().gaps == 0
            first_live = await live_only.__anext__()
            assert (first_live.seq, first_live.price) == (21, 99)


async def test_history_gap_error_names_the_missing_range(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    ticks = tick_topic(history=10)
    router = quicframe.Router()
    router.add_topic(ticks)
    for i in range(50):
        ticks.core.publish(tick(i % 3, price=i), 0)
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):

            async def resume_or_fail() -> None:
                async with client.subscribe("md.ticks", from_seq=5, on_gap="error") as sub:
                    async for _ in sub:
                        pass

            with pytest.raises(HistoryGap) as caught:
                await resume_or_fail()
            assert (caught.value.topic, caught.value.first_missing) == ("md.ticks", 5)
            assert caught.value.last_missing == 40
            # on_gap="snapshot": the gap is counted, a snapshot of what is newer follows.
            async with client.subscribe("md.ticks", from_seq=5) as sub:
                got = [await sub.__anext__() for _ in range(3)]
                assert [v.seq for v in got] == [48, 49, 50]
                stats = sub.stats()
                assert stats.gaps == 1
                assert stats.missing == 36


async def test_stale_ticks_are_dropped(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """Ticks that were not handed to the transport within ``stale_after`` of their
    publication are dropped, not sent late."""
    now = [1_000_000_000]
    ticks = tick_topic(stale_after=0.001, clock=lambda: now[0])
    router = quicframe.Router()
    router.add_topic(ticks)
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
            client.subscribe("md.ticks", snapshot=False) as sub,
        ):
            for instrument in range(50):  # nothing yields: the sender has not run
                ticks.publish_nowait(tick(instrument))
            now[0] += 1_000_000_000  # one second later, long past their deadline
            fresh = await ticks.publish(tick(99, price=5))
            value = await sub.__anext__()
            assert (value.seq, value.price) == (fresh, 5)
            (queue,) = ticks.statistics().subscriptions
            assert queue.stale == 50
            assert sub.stats().missing == 50


async def test_subscription_limit_and_unsubscribe(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    ticks = tick_topic()
    router = quicframe.Router()
    router.add_topic(ticks)
    router.max_subscriptions = 2
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):
            async with client.subscribe("md.ticks"), client.subscribe("md.ticks"):
                with pytest.raises(RemoteError) as caught:
                    async with client.subscribe("md.ticks"):
                        pytest.fail("a third subscription was accepted")
                assert caught.value.code == ErrorCode.SUBSCRIPTION_LIMIT
                assert ticks.subscribers == 2
            # Leaving the blocks unsubscribed: the server lets the queues go.
            while ticks.subscribers:
                await ticks.publish(tick(1))  # each publish gives the server a turn
            async with client.subscribe("md.ticks") as sub:
                assert sub.subscribed is not None


async def test_a_datagram_channel_in_use_is_refused(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """Two SUBSCRIBEs naming the same datagram channel on one connection: the second
    is answered INVALID_ARGUMENT and FIN; the first is unaffected."""
    router = quicframe.Router()
    router.add_topic(tick_topic())
    request = encode_control(Subscribe("md.ticks", mode="datagram", channel=7))
    with trio.fail_after(10):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):
            first = await client.connection.open_stream()
            await first.send_all(request)
            decoder = FrameDecoder()
            while (frame := decoder.next_frame()) is None:
                decoder.feed(await first.receive_some())
            assert frame.type == FrameType.SUBSCRIBED
            second = await client.connection.open_stream()
            await second.send_all(request)
            reply = decode_frame(await read_to_end(second))
            assert reply.type == FrameType.ERROR
            assert error_from_frame(reply).code == ErrorCode.INVALID_ARGUMENT
            await first.aclose()
            await second.aclose()


async def read_to_end(stream: Stream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def test_send_buffer_follows_the_subscription_policy(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """A subscription that may drop frames keeps 64 KiB with the transport (the
    rest stays in its queue, where it can be conflated); a BLOCK one, which drops
    nothing, gets the connection's stream high-water mark; an explicit
    ``send_buffer`` applies to both."""
    ticks = tick_topic()
    acks = ack_topic()
    sized = quicframe.Topic("sized", frame=quicframe.OrderAck, send_buffer=5000)
    router = quicframe.Router()
    for topic in (ticks, acks, sized):
        router.add_topic(topic)
    with trio.fail_after(30):
        async with (
            serving(router, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
            client.subscribe("md.ticks") as _ticks,
            client.subscribe("md.ticks", policy="block") as _blocked_ticks,
            client.subscribe("orders.acks") as _acks,
            client.subscribe("sized") as _sized,
        ):
            await trio.testing.wait_all_tasks_blocked()
            # Every subscription's writer is parked, waiting for frames.
            marks = {
                topic.name: sorted(d.stream.send_high_water_mark for d in topic._idle)
                for topic in (ticks, acks, sized)
            }
    mark = server_config.stream_high_water_mark
    assert mark != DEFAULT_SEND_BUFFER
    assert marks == {
        "md.ticks": sorted([DEFAULT_SEND_BUFFER, mark]),
        "orders.acks": [mark],
        "sized": [5000],
    }
