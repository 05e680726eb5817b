"""End to end over a FakeNetwork under autojump_clock: congestion and DATAGRAM loss.

Everything runs on trio's virtual clock (the topics' and subscriptions' clocks are
trio's, in ns), so latencies are protocol facts, not machine speed: a frame's
latency is the link delay plus the queueing it met, identical on any machine.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.pubsub import LatencyStats
from quicframe.testing import FakeNetwork, LinkPolicy

from .helpers import ack, tick


def virtual_ns() -> int:
    return math.floor(trio.current_time() * 1e9)


@contextlib.asynccontextmanager
async def session(
    network: FakeNetwork,
    router: quicframe.Router,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> AsyncIterator[quicframe.Client]:
    async with trio.open_nursery() as nursery:
        server: quicframe.Server = await nursery.start(_serve, network, router, server_config)
        async with quicframe.connect(
            "127.0.0.1", server.port, client_config, socket_factory=network.socket_factory
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


async def _serve(
    network: FakeNetwork,
    router: quicframe.Router,
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[quicframe.Server],
) -> None:
    await quicframe.serve(
        router,
        "127.0.0.1",
        0,
        config,
        socket_factory=network.socket_factory,
        task_status=task_status,
    )


def p99(samples: list[int]) -> int:
    stats = LatencyStats(len(samples))
    for sample in samples:
        stats.record(sample)
    value = stats.p99
    assert value is not None
    return value


@pytest.mark.aioquic_only("qh3 sends streams in its own order, whatever their urgency")
async def test_order_acks_keep_their_latency_under_a_tick_flood(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    """A 2 MB/s link, 10 ms each way, flooded with ~5 MB/s of ticks: the ticks
    absorb the congestion (conflated on the server, gaps on the client) while the
    order acknowledgements' p99 latency stays within 3x of its idle value."""
    link = LinkPolicy(delay=0.01, bandwidth=2_000_000, queue_bytes=96 * 1024)
    # The link's bandwidth-delay product is 40 KB: a tick subscription may keep
    # 48 KiB with the transport, enough to fill the link, and the rest waits in
    # its conflating queue rather than in the network's.
    ticks = quicframe.Topic(
        "md.ticks",
        frame=quicframe.MarketTick,
        key=lambda t: t.instrument_id,
        send_buffer=48 * 1024,
        clock=virtual_ns,
    )
    acks = quicframe.Topic("orders.acks", frame=quicframe.OrderAck, clock=virtual_ns)
    router = quicframe.Router()
    router.add_topic(ticks)
    router.add_topic(acks)
    per_phase = 100
    idle: list[int] = []
    flooded: list[int] = []
    ack_seqs: list[int] = []
    ticks_received = 0
    with trio.fail_after(120):
        async with (
            FakeNetwork(seed=5, policy=link) as network,
            session(network, router, server_config, client_config) as client,
            client.subscribe("md.ticks", clock=virtual_ns) as tick_sub,
            client.subscribe("orders.acks", clock=virtual_ns) as ack_sub,
            trio.open_nursery() as nursery,
        ):
            all_acks = trio.Event()

            async def read_acks() -> None:
                async for value in ack_sub:
                    latency = virtual_ns() - value.send_time_ns
                    (idle if value.seq <= per_phase else flooded).append(latency)
                    ack_seqs.append(value.seq)
                    if value.seq == 2 * per_phase:
                        all_acks.set()
                        return

            async def read_ticks() -> None:
                nonlocal ticks_received
                with contextlib.suppress(trio.EndOfChannel):
                    while True:
                        ticks_received += len(await tick_sub.receive_many())

            async def flood() -> None:
                i = 0
                while True:
                    for _ in range(250):
                        i += 1
                        ticks.publish_nowait(tick(i % 200, price=i))
                    await trio.sleep(0.0025)  # 100,000 ticks/s, about 4.9 MB/s

            nursery.start_soon(read_acks)
            nursery.start_soon(read_ticks)
            for order_id in range(1, per_phase + 1):
                await acks.publish(ack(order_id))
                await trio.sleep(0.01)
            nursery.start_soon(flood)
            await trio.sleep(0.5)  # let the flood build up before measuring
            for order_id in range(per_phase + 1, 2 * per_phase + 1):
                await acks.publish(ack(order_id))
                await trio.sleep(0.01)
            await all_acks.wait()
            (tick_queue,) = ticks.statistics().subscriptions
            tick_stats = tick_sub.stats()
            ack_stats = ack_sub.stats()
            nursery.cancel_scope.cancel()
    assert ack_seqs == list(range(1, 2 * per_phase + 1))
    assert len(idle) == len(flooded) == per_phase
    idle_p99, flooded_p99 = p99(idle), p99(flooded)
    assert idle_p99 >= 10_000_000  # the link's one-way delay, at least
    assert flooded_p99 <= 3 * idle_p99, (idle_p99, flooded_p99)
    # The ticks took the congestion: most were conflated away, the rest arrived late.
    published = ticks.head
    assert tick_queue.conflated > published // 2
    assert 0 < ticks_received < published
    assert tick_stats.gaps > 0
    assert tick_stats.duplicates == 0
    assert ack_stats.gaps == 0
    assert ack_stats.latency_p99_ns is not None
    statistics = network.statistics()
    assert statistics.bytes_forwarded > 1_000_000  # the link was busy


async def test_datagram_mode_delivers_under_loss_with_gaps_counted(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    ticks = quicframe.Topic(
        "md.ticks", frame=quicframe.MarketTick, key=lambda t: t.instrument_id, clock=virtual_ns
    )
    router = quicframe.Router()
    router.add_topic(ticks)
    total = 2000
    seqs: list[int] = []
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=7, policy=LinkPolicy(loss=0.05, delay=0.005)) as network,
            session(network, router, server_config, client_config) as client,
            client.subscribe("md.ticks", mode="datagram", clock=virtual_ns) as sub,
        ):
            assert sub.mode == "datagram"
            for i in range(1, total + 1):
                await ticks.publish(tick(i % 10, price=i))
                await trio.sleep(0.001)  # a 1,000 ticks/s feed
            # The last tick may itself be lost: one more marks the end.
            while not seqs or seqs[-1] < total:
                await ticks.publish(tick(99))
                seqs.extend(v.seq for v in await sub.receive_many())
            stats = sub.stats()
            lost = network.statistics().dropped_loss
    assert seqs == sorted(set(seqs))  # increasing, never twice
    assert lost > 0
    assert stats.gaps > 0
    assert stats.missing > 0
    assert stats.received + stats.missing >= total  # every number accounted for
    assert stats.received > total * 0.85  # most arrive


async def test_datagram_mode_falls_back_to_streams(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    """A server that does not accept DATAGRAM frames gets a stream subscription."""
    server_config.max_datagram_frame_size = None
    ticks = quicframe.Topic("md.ticks", frame=quicframe.MarketTick, clock=virtual_ns)
    router = quicframe.Router()
    router.add_topic(ticks)
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=8) as network,
            session(network, router, server_config, client_config) as client,
            client.subscribe("md.ticks", mode="datagram", snapshot=False) as sub,
        ):
            assert sub.mode == "stream"
            assert sub.subscribed is not None
            assert sub.subscribed.mode == "stream"
            for i in range(100):
                await ticks.publish(tick(1, price=i))
            got: list[Any] = []
            while len(got) < 1 or got[-1].seq < 100:
                got.extend(await sub.receive_many())
            assert [v.seq for v in got] == sorted({v.seq for v in got})
