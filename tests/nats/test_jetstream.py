"""Topics backed by NATS JetStream: two edges, one numbering, failover and deep replay.

Each test runs a publisher and one or two edge servers in this process, every one
with a ``JetStreamBackbone`` of its own (its own connection, bridge thread and
local history) on the session's nats-server.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, JetStreamBackbone, OrderAck, ServerConfig

from .conftest import NatsServer, edge

T0 = 1_700_000_000_000_000_000


def order(order_id: int) -> OrderAck:
    return OrderAck(
        seq=0,
        order_id=order_id,
        client_order_id=order_id,
        event_time_ns=T0 + order_id,
        send_time_ns=0,
        price=1_000 + order_id,
        quantity=10,
        filled_quantity=0,
        instrument_id=order_id % 7,
        side=1,
        status=1,
    )


def topic(name: str, backbone: JetStreamBackbone) -> quicframe.Topic[OrderAck]:
    return quicframe.Topic(name, OrderAck, key=lambda a: a.order_id, backbone=backbone)


def fields(value: OrderAck) -> tuple[int, int, int]:
    return (value.seq, value.order_id, value.send_time_ns)


async def collect(
    client_config: ClientConfig, port: int, name: str, from_seq: int, last: int
) -> list[OrderAck]:
    """Subscribe to ``name`` on the edge at ``port`` from ``from_seq`` up to ``last``."""
    received: list[OrderAck] = []
    async with (
        quicframe.connect("127.0.0.1", port, client_config) as client,
        client.subscribe(name, from_seq=from_seq, on_gap="error") as sub,
    ):
        async for value in sub:
            received.append(value)
            if value.seq >= last:
                break
        stats = sub.stats()
    assert stats.gaps == 0
    assert stats.duplicates == 0
    return received


async def test_publish_numbers_by_the_stream_sequence(nats_server: NatsServer) -> None:
    publisher = JetStreamBackbone(nats_server.url, in_flight=16)
    feed = topic("t.numbering", publisher)
    with trio.fail_after(20):
        async with publisher.running():
            assert await feed.publish(order(1)) == 1
            assert await feed.publish_many([order(i) for i in range(2, 101)]) == 100
            with pytest.raises(trio.WouldBlock):
                feed.publish_nowait(order(101))
            assert await feed.publish_many([]) == feed.head


async def test_two_edges_number_alike_and_a_subscriber_fails_over(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    name, first, total = "t.failover", 300, 600
    publisher = JetStreamBackbone(nats_server.url)
    backbone_a = JetStreamBackbone(nats_server.url, history=100)
    backbone_b = JetStreamBackbone(nats_server.url, history=100)
    feed = topic(name, publisher)
    topic_a, topic_b = topic(name, backbone_a), topic(name, backbone_b)
    stop_at = first // 2
    on_a: list[OrderAck] = []
    on_b: list[OrderAck] = []
    with trio.fail_after(30):
        async with (
            publisher.running(),
            backbone_a.running(),
            backbone_b.running(),
            trio.open_nursery() as nursery,
            edge(nursery, topic_a, server_config) as edge_a,
            edge(nursery, topic_b, server_config) as edge_b,
        ):
            await feed.publish_many([order(i) for i in range(1, first + 1)])
            # One client that knows both edges subscribes on edge A and takes
            # half, then edge A goes away.
            failover = dataclasses.replace(
                client_config,
                addresses=[("127.0.0.1", edge_b.port)],
                reconnect=quicframe.ReconnectPolicy(initial_backoff=0.05),
            )
            async with (
                quicframe.connect("127.0.0.1", edge_a.port, failover) as client,
                client.subscribe(name, from_seq=1, on_gap="error") as sub,
            ):
                async for value in sub:
                    on_a.append(value)
                    if value.seq == stop_at:
                        break
                await edge_a.kill()
                # Publishing goes on while the client moves to edge B by itself,
                # where the same subscription resumes after the last number it
                # received (tests/nats/test_failover.py takes A away mid-stream).
                await feed.publish_many([order(i) for i in range(first + 1, total + 1)])
                async for value in sub:
                    on_b.append(value)
                    if value.seq >= total:
                        break
                assert client.address == ("127.0.0.1", edge_b.port)
                assert sub.stats().resubscribes == 1
                assert sub.stats().gaps == sub.stats().duplicates == 0
            assert [v.seq for v in on_a] == list(range(1, stop_at + 1))
            # Edge B, asked from the start, gives the very frames edge A gave.
            again = await collect(client_config, edge_b.port, name, 1, stop_at)
            # And both caches hold the same bytes for the same numbers.
            await backbone_a.wait_for(topic_a, total)
            await backbone_b.wait_for(topic_b, total)
            cache_a = topic_a.core.log.read(total - 99, 100)
            cache_b = topic_b.core.log.read(total - 99, 100)
            nursery.cancel_scope.cancel()
    resumed = on_a + on_b
    assert [v.seq for v in resumed] == list(range(1, total + 1))
    assert [v.order_id for v in resumed] == list(range(1, total + 1))
    assert [fields(v) for v in again] == [fields(v) for v in on_a]
    assert [e.seq for e in cache_a] == list(range(total - 99, total + 1))
    assert [e.data for e in cache_a] == [e.data for e in cache_b]


async def test_replay_older_than_the_cache_comes_from_jetstream(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    name, total, history = "t.deep-replay", 500, 20
    publisher = JetStreamBackbone(nats_server.url)
    feed = topic(name, publisher)
    backbone = JetStreamBackbone(nats_server.url, history=history)
    cached = topic(name, backbone)
    with trio.fail_after(30):
        async with publisher.running():
            await feed.publish_many([order(i) for i in range(1, total + 1)])
            async with backbone.running(), trio.open_nursery() as nursery:
                # Running means caught up with the stream's end: only the last
                # ``history`` frames are held here.
                assert cached.head == total
                assert cached.core.log.first_seq == total - history + 1
                async with edge(nursery, cached, server_config) as server:
                    values = await collect(client_config, server.port, name, 5, total)
                nursery.cancel_scope.cancel()
    assert [v.seq for v in values] == list(range(5, total + 1))
    assert [v.order_id for v in values] == list(range(5, total + 1))


async def test_replay_of_a_range_the_stream_no_longer_holds_is_a_gap(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    name, total = "t.purged", 50
    publisher = JetStreamBackbone(nats_server.url)
    feed = topic(name, publisher)
    backbone = JetStreamBackbone(nats_server.url, history=10)
    cached = topic(name, backbone)
    with trio.fail_after(30):
        async with publisher.running():
            await feed.publish_many([order(i) for i in range(1, total + 1)])
            await purge_below(publisher, name, 21)
            async with backbone.running(), trio.open_nursery() as nursery:
                async with (
                    edge(nursery, cached, server_config) as server,
                    quicframe.connect("127.0.0.1", server.port, client_config) as client,
                ):
                    with pytest.raises(quicframe.pubsub.HistoryGap) as caught:
                        async with client.subscribe(name, from_seq=5, on_gap="error"):
                            pass
                nursery.cancel_scope.cancel()
    assert (caught.value.first_missing, caught.value.last_missing) == (5, 20)


async def purge_below(backbone: JetStreamBackbone, name: str, keep: int) -> None:
    """Remove the stream's messages numbered below ``keep`` (as retention would)."""

    async def purge() -> Any:
        _, js = backbone._running()
        return await js.purge_stream(backbone.stream(name), seq=keep)

    bridge, _ = backbone._running()
    await bridge.call(purge())


async def test_a_full_block_queue_holds_the_consumer_and_nothing_is_lost(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # A bridge of 64 messages, a BLOCK queue of 8 frames, and one write at a time
    # handed to the transport (send_buffer=1: the next waits for the previous one's
    # acknowledgement), for a subscriber that starts reading once everything is
    # published: the edge's consumer keeps waiting for the queue (some 370 times in
    # a run here), the bridge fills up behind it, and still nothing is lost.
    name, total = "t.backpressure", 3000
    publisher = JetStreamBackbone(nats_server.url)
    feed = topic(name, publisher)
    backbone = JetStreamBackbone(nats_server.url, window=64)
    slow = quicframe.Topic(
        name, OrderAck, key=lambda a: a.order_id, backbone=backbone, queue_size=8, send_buffer=1
    )
    with trio.fail_after(60):
        async with (
            publisher.running(),
            backbone.running(),
            trio.open_nursery() as nursery,
            edge(nursery, slow, server_config) as server,
        ):
            async with (
                quicframe.connect("127.0.0.1", server.port, client_config) as client,
                client.subscribe(name, from_seq=1, buffer=16) as sub,
            ):
                await feed.publish_many([order(i) for i in range(1, total + 1)])
                values = [value async for value in _until(sub, total)]
                stats = sub.stats()
                (queue,) = slow.statistics().subscriptions
            nursery.cancel_scope.cancel()
    assert [v.seq for v in values] == list(range(1, total + 1))
    assert stats.gaps == stats.duplicates == 0
    assert queue.dropped == queue.conflated == 0
    assert queue.high_water <= 8


async def _until(sub: AsyncIterator[OrderAck], last: int) -> AsyncIterator[OrderAck]:
    async for value in sub:
        yield value
        if value.seq >= last:
            return


def test_the_backbone_loads_nats_only_when_it_runs() -> None:
    code = (
        "import sys, quicframe\n"
        "assert 'nats' not in sys.modules\n"
        "backbone = quicframe.JetStreamBackbone('nats://127.0.0.1:1')\n"
        "quicframe.Topic('t', quicframe.OrderAck, backbone=backbone)\n"
        "assert 'nats' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
