"""Client failover between edges: one client, two addresses, one subscription that moves.

Two edge servers consume the same JetStream stream (so they number every frame
alike) and a publisher keeps publishing.  One client is made with both addresses
and a reconnect policy; its subscription starts on edge A.  When A is killed, or
sends GOAWAY, the same subscription goes on from edge B by itself: sequence numbers
contiguous, nothing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import trio

import quicframe
from quicframe import ClientConfig, JetStreamBackbone, OrderAck, ServerConfig
from quicframe.testing import ChaosProxy

from .conftest import Edge, NatsServer
from .test_jetstream import order, topic

LOCAL = "127.0.0.1"
POLICY = quicframe.ReconnectPolicy(max_retries=5, initial_backoff=0.05, max_backoff=0.5)
# FIRST frames wait before the subscriber starts; it takes STOP_AT of them, and
# then edge A goes while TOTAL - FIRST more are published.
FIRST, STOP_AT, TOTAL, BATCH = 1500, 100, 2000, 50
HISTORY = 100  # each edge's cache
SILENT_IDLE_TIMEOUT = 1.0  # how soon a client gives up on an edge that went silent


class DrainableEdge(Edge):
    """An edge that can also send GOAWAY to its clients and keep serving them."""

    server: quicframe.Server

    async def start(self, nursery: trio.Nursery) -> None:
        self.server = await nursery.start(self._run)
        self.port = self.server.port

    async def goaway(self, grace: float) -> None:
        for session in list(self.server._sessions):
            await session.send_goaway(grace)


@contextlib.asynccontextmanager
async def drainable_edge(
    nursery: trio.Nursery, served: quicframe.Topic[Any], config: ServerConfig
) -> AsyncIterator[DrainableEdge]:
    router = quicframe.Router()
    router.add_topic(served)
    server = DrainableEdge(router, config)
    await server.start(nursery)
    try:
        yield server
    finally:
        await server.kill()


async def publish(feed: quicframe.Topic[OrderAck], first: int, last: int) -> None:
    for start in range(first, last + 1, BATCH):
        await feed.publish_many([order(i) for i in range(start, min(start + BATCH, last + 1))])


@dataclasses.dataclass
class Outcome:
    received: list[OrderAck]
    stats: quicframe.SubscriptionStatistics
    client: quicframe.ClientStatistics
    edge_a: tuple[str, int]
    edge_b: tuple[str, int]
    a_still_serving: bool
    resume_from: int  # the number the client resumed from, on a kill
    b_cache_from: int  # the oldest number in edge B's cache then


async def fail_over(
    nats_server: NatsServer,
    server_config: ServerConfig,
    client_config: ClientConfig,
    name: str,
    *,
    goaway: bool,
    silent: bool = False,
) -> Outcome:
    """Subscribe on edge A, take it away after STOP_AT frames, read on up to TOTAL.

    ``silent``: the client reaches edge A through a chaos proxy, which then drops
    everything both ways, as a crashed host or a partition would: no
    CONNECTION_CLOSE ever arrives, and the client finds out by its idle timeout.
    """
    publisher = JetStreamBackbone(nats_server.url)
    backbone_a = JetStreamBackbone(nats_server.url, history=HISTORY)
    backbone_b = JetStreamBackbone(nats_server.url, history=HISTORY)
    feed = topic(name, publisher)
    topic_b = topic(name, backbone_b)
    received: list[OrderAck] = []
    resume_from = b_cache_from = 0
    with trio.fail_after(30):
        async with (
            publisher.running(),
            backbone_a.running(),
            backbone_b.running(),
            trio.open_nursery() as nursery,
            drainable_edge(nursery, topic(name, backbone_a), server_config) as edge_a,
            drainable_edge(nursery, topic_b, server_config) as edge_b,
            ChaosProxy((LOCAL, edge_a.port), seed=7) as proxy,
        ):
            config = dataclasses.replace(
                client_config, addresses=[(LOCAL, edge_b.port)], reconnect=POLICY
            )
            a_port = edge_a.port
            if silent:
                a_port = proxy.port
                config.idle_timeout = SILENT_IDLE_TIMEOUT
            await publish(feed, 1, FIRST)
            await backbone_b.wait_for(topic_b, FIRST)
            gone = trio.Event()

            async def publish_on() -> None:
                # Half of the rest before edge A goes, half after it.
                middle = (FIRST + TOTAL) // 2
                await publish(feed, FIRST + 1, middle)
                await gone.wait()
                await publish(feed, middle + 1, TOTAL)

            async with (
                quicframe.connect(LOCAL, a_port, config) as client,
                # A small buffer keeps the client reading well behind the edge.
                client.subscribe(name, from_seq=1, on_gap="error", buffer=16) as sub,
            ):
                assert client.address == (LOCAL, a_port)
                nursery.start_soon(publish_on)
                async for value in sub:
                    received.append(value)
                    if value.seq == STOP_AT:
                        if goaway:
                            # The start of a graceful shutdown with a long drain:
                            # A keeps serving, yet the subscription moves.
                            await edge_a.goaway(30.0)
                        elif silent:
                            proxy.blackhole(60.0)  # longer than the test
                        else:
                            last = sub.last_seq
                            assert last is not None
                            resume_from, b_cache_from = last + 1, topic_b.core.log.first_seq
                            await edge_a.kill()
                        gone.set()
                    if value.seq >= TOTAL:
                        break
                stats = sub.stats()
                client_stats = client.statistics()
            a_still_serving = not edge_a._stopped.is_set()
            if goaway:
                await edge_a.server.aclose()
            nursery.cancel_scope.cancel()
    return Outcome(
        received,
        stats,
        client_stats,
        (LOCAL, edge_a.port),
        (LOCAL, edge_b.port),
        a_still_serving,
        resume_from,
        b_cache_from,
    )


def check_resumed_on_b(outcome: Outcome) -> None:
    assert [v.seq for v in outcome.received] == list(range(1, TOTAL + 1))
    assert [v.order_id for v in outcome.received] == list(range(1, TOTAL + 1))
    assert outcome.stats.gaps == outcome.stats.duplicates == 0
    assert outcome.stats.resubscribes == 1
    assert outcome.client.address == outcome.edge_b
    assert outcome.client.reconnects == 1


async def test_a_subscriber_moves_to_edge_b_when_edge_a_is_killed(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    outcome = await fail_over(
        nats_server, server_config, client_config, "t.failover-kill", goaway=False
    )
    check_resumed_on_b(outcome)
    # The first attempt went to edge B: the dead edge was not dialled again.
    assert outcome.client.reconnect_failures == 0
    # The client had read ahead of what it delivered, yet far behind the head:
    # edge B replayed the start of the resumed range from JetStream.
    assert STOP_AT < outcome.resume_from < outcome.b_cache_from


async def test_a_subscriber_moves_to_edge_b_when_edge_a_sends_goaway(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    outcome = await fail_over(
        nats_server, server_config, client_config, "t.failover-goaway", goaway=True
    )
    check_resumed_on_b(outcome)
    assert outcome.client.reconnect_failures == 0
    # The subscription left edge A while A was still serving it.
    assert outcome.a_still_serving


async def test_a_subscriber_moves_to_edge_b_when_edge_a_goes_silent(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # A crash of A's host, or a partition: nothing more from A, not even a
    # CONNECTION_CLOSE. The client's idle timeout ends the connection, and the
    # subscription resumes on B as after a kill.
    outcome = await fail_over(
        nats_server, server_config, client_config, "t.failover-silent", goaway=False, silent=True
    )
    check_resumed_on_b(outcome)
    assert outcome.client.reconnect_failures == 0
