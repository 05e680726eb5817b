"""An edge that loses NATS: it serves what it has, shows stale, comes back without gaps,
and reports a range JetStream lost meanwhile as the documented gap error.

The first test stops its own nats-server and starts it again on the same port with
the same store; the second cuts one edge off through a loopback TCP relay while the
publisher (connected directly) goes on and the stream is purged.  The last two drive
the sans-IO subscription with a gap marked on its topic, without NATS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, JetStreamBackbone, OrderAck, ServerConfig
from quicframe.errors import Unavailable
from quicframe.pubsub import (
    Gap,
    HistoryGap,
    ServerSubscription,
    SnapshotMarker,
    Subscribe,
    TopicCore,
    decode_control,
)
from quicframe.wire import FrameDecoder, FrameType, default_registry

from .conftest import NatsServer, RestartableNatsServer, edge
from .test_jetstream import collect, order, purge_below, topic


def fast_backbone(url: str, history: int = 1000) -> JetStreamBackbone:
    """A backbone that tries to reconnect quickly (the tests wait for it)."""
    return JetStreamBackbone(url, history=history, reconnect_min=0.05, reconnect_max=0.2)


async def take(sub: AsyncIterator[OrderAck], last: int, into: list[OrderAck]) -> None:
    """Append values from ``sub`` to ``into`` up to the one numbered ``last``."""
    async for value in sub:
        into.append(value)
        if value.seq >= last:
            return


async def test_an_edge_that_loses_nats_serves_its_cache_and_catches_up(
    own_nats_server: RestartableNatsServer,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    name = "t.outage"
    publisher = fast_backbone(own_nats_server.url)
    backbone = fast_backbone(own_nats_server.url, history=50)
    feed, served = topic(name, publisher), topic(name, backbone)
    received: list[OrderAck] = []
    with trio.fail_after(40):
        async with (
            publisher.running(),
            backbone.running(),
            trio.open_nursery() as nursery,
            edge(nursery, served, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
            client.subscribe(name, from_seq=1, on_gap="error") as sub,
        ):
            await feed.publish_many([order(i) for i in range(1, 101)])
            await take(sub, 100, received)
            before = backbone.statistics()

            await trio.to_thread.run_sync(own_nats_server.stop)
            await backbone.wait_stale(True)
            during = backbone.statistics()
            topic_during = served.statistics()
            # Cut off, the edge still serves: a new subscriber gets the cache, and
            # one asking for more than the cache holds is told to go elsewhere.
            cached = await collect(client_config, server.port, name, 51, 100)
            with pytest.raises(Unavailable):
                async with client.subscribe(name, from_seq=10, on_gap="error") as older:
                    await take(older, 100, [])

            await trio.to_thread.run_sync(own_nats_server.start)
            await publisher.wait_stale(False)  # publishing resumes once it is back
            await feed.publish_many([order(i) for i in range(101, 201)])
            await take(sub, 200, received)
            await backbone.wait_stale(False)
            after = backbone.statistics()
            topic_after = served.statistics()
            stats = sub.stats()
            nursery.cancel_scope.cancel()
    assert not before.stale
    assert before.connected
    assert before.reconnects == 0
    assert during.stale
    assert not during.connected
    assert during.stale_since is not None
    (topic_stats,) = during.topics
    assert topic_stats.stale
    assert topic_stats.stale_since == during.stale_since
    assert topic_during.stale
    assert [v.seq for v in cached] == list(range(51, 101))
    # The first subscriber kept its connection and saw one contiguous sequence.
    assert [v.seq for v in received] == list(range(1, 201))
    assert [v.order_id for v in received] == list(range(1, 201))
    assert stats.duplicates == stats.gaps == 0
    assert stats.resubscribes == 0  # the same subscription, the same connection
    assert not after.stale
    assert after.connected
    assert after.stale_since is None
    assert after.reconnects == 1
    assert after.topics[0].gaps == 0
    assert after.topics[0].head == 200
    assert not topic_after.stale


class Relay:
    """A loopback TCP relay to a NATS server that a test can cut and restore.

    Cut, it closes its relayed connections and stops listening, so the edge's
    attempts are refused, as when the NATS server is unreachable.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._nursery: trio.Nursery | None = None
        self._serving = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.restore()
            task_status.started()
            await trio.sleep_forever()

    def cut(self) -> None:
        self._serving.cancel()

    async def restore(self) -> None:
        """Listen again, on the same port as before."""
        assert self._nursery is not None
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._serving = trio.CancelScope()
        self._nursery.start_soon(self._serve, listeners, self._serving)

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.serve_listeners(self._relay, listeners)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with server, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, server, client, nursery.cancel_scope)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        finally:
            both.cancel()


async def test_an_edge_cut_off_catches_up_what_was_published_meanwhile(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    name = "t.outage-catch-up"
    relay = Relay(int(nats_server.url.rsplit(":", 1)[1]))
    publisher = JetStreamBackbone(nats_server.url)
    feed = topic(name, publisher)
    received: list[OrderAck] = []
    with trio.fail_after(40):
        async with trio.open_nursery() as outer:
            await outer.start(relay.run)
            backbone = fast_backbone(f"nats://127.0.0.1:{relay.port}")
            served = topic(name, backbone)
            async with (
                publisher.running(),
                backbone.running(),
                trio.open_nursery() as nursery,
                edge(nursery, served, server_config) as server,
                quicframe.connect("127.0.0.1", server.port, client_config) as client,
                client.subscribe(name, from_seq=1, on_gap="error") as sub,
            ):
                await feed.publish_many([order(i) for i in range(1, 101)])
                await take(sub, 100, received)
                relay.cut()
                await backbone.wait_stale(True)
                # Published while the edge cannot see it: all of it still in JetStream.
                await feed.publish_many([order(i) for i in range(101, 301)])
                assert served.head == 100
                await relay.restore()
                await take(sub, 300, received)
                await backbone.wait_stale(False)
                stats = backbone.statistics()
                sub_stats = sub.stats()
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    assert [v.seq for v in received] == list(range(1, 301))
    assert [v.order_id for v in received] == list(range(1, 301))
    assert sub_stats.gaps == sub_stats.duplicates == sub_stats.resubscribes == 0
    assert stats.reconnects == 1
    assert stats.topics[0].gaps == 0
    assert not stats.stale


async def test_a_range_jetstream_lost_while_the_edge_was_cut_off_is_a_gap(
    nats_server: NatsServer, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    name = "t.outage-gap"
    nats_port = int(nats_server.url.rsplit(":", 1)[1])
    relay = Relay(nats_port)
    publisher = JetStreamBackbone(nats_server.url)
    feed = topic(name, publisher)
    strict: list[OrderAck] = []
    lenient: list[OrderAck] = []
    with trio.fail_after(40):
        async with trio.open_nursery() as outer:
            await outer.start(relay.run)
            backbone = fast_backbone(f"nats://127.0.0.1:{relay.port}")
            served = topic(name, backbone)
            async with (
                publisher.running(),
                backbone.running(),
                trio.open_nursery() as nursery,
                edge(nursery, served, server_config) as server,
                quicframe.connect("127.0.0.1", server.port, client_config) as client,
                client.subscribe(name, from_seq=1, on_gap="error") as failing,
                client.subscribe(name, from_seq=1) as recovering,
            ):
                await feed.publish_many([order(i) for i in range(1, 51)])
                await take(failing, 50, strict)
                await take(recovering, 50, lenient)

                relay.cut()
                await backbone.wait_stale(True)
                # While the edge is cut off, 51..100 are published and 51..80 purged.
                await feed.publish_many([order(i) for i in range(51, 101)])
                await purge_below(publisher, name, 81)
                await relay.restore()
                await backbone.wait_stale(False)

                with pytest.raises(HistoryGap) as caught:
                    await take(failing, 100, strict)
                # The other subscriber gets GAP, a snapshot (81..100: one per
                # order), then live frames again.
                await feed.publish(order(101))
                await take(recovering, 101, lenient)
                lenient_stats = recovering.stats()
                stats = backbone.statistics()
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    assert [v.seq for v in strict] == list(range(1, 51))
    assert (caught.value.first_missing, caught.value.last_missing) == (51, 80)
    assert caught.value.topic == name
    assert [v.seq for v in lenient] == [*range(1, 51), *range(81, 102)]
    assert (lenient_stats.gaps, lenient_stats.missing, lenient_stats.snapshots) == (1, 30, 1)
    assert lenient_stats.duplicates == 0
    assert (stats.topics[0].gaps, stats.topics[0].missing) == (1, 30)
    assert stats.reconnects == 1
    assert not stats.stale


# -- the subscription's side of a gap, without NATS --------------------------------------


def _frames(chunks: list[bytes]) -> list[Any]:
    """Decoded frames: data values as ``("data", seq)``, control bodies as they are."""
    decoder = FrameDecoder()
    decoder.feed(b"".join(chunks))
    out: list[Any] = []
    for frame in decoder:
        if frame.type == FrameType.ORDER_ACK:
            value: OrderAck = default_registry.decode(frame)  # type: ignore[assignment]
            out.append(("data", value.seq))
        elif frame.type == FrameType.ERROR:
            out.append("ERROR")
        else:
            out.append(decode_control(frame.type, frame.body))
    return out


def _core_with_gap(on_gap: str) -> tuple[TopicCore[OrderAck], ServerSubscription]:
    core = TopicCore("t.gap", OrderAck, key=lambda a: a.order_id)
    sub = ServerSubscription(core, Subscribe("t.gap", snapshot=False, on_gap=on_gap))
    sub.data_to_send(0)  # SUBSCRIBED
    for i in range(1, 6):
        core.publish(order(i), 0)
    core.mark_gap(6, 9)
    for seq in (10, 11):
        core.ingest(seq, core._stamp(order(seq), seq, 0), seq, 0)
    return core, sub


def test_a_marked_gap_fails_an_on_gap_error_subscription_after_the_frames_before_it() -> None:
    core, sub = _core_with_gap("error")
    sent = _frames(sub.data_to_send(0))
    assert sent == [("data", s) for s in range(1, 6)] + ["ERROR"]
    assert sub.done
    assert isinstance(sub.error, HistoryGap)
    assert (sub.error.first_missing, sub.error.last_missing) == (6, 9)
    assert core.subscribers == 0


def test_a_marked_gap_gives_gap_and_a_snapshot_then_live_frames() -> None:
    core, sub = _core_with_gap("snapshot")
    sent = _frames(sub.data_to_send(0))
    assert sent[:5] == [("data", s) for s in range(1, 6)]
    assert sent[5] == Gap(6, 9, sent[5].reason)
    assert sub.request is not None
    sub.fulfil()
    sent = _frames(sub.data_to_send(0))
    assert isinstance(sent[0], SnapshotMarker)
    assert isinstance(sent[-1], SnapshotMarker)
    assert sent[1:-1] == [("data", 10), ("data", 11)]  # only what the client lacks
    core.ingest(12, core._stamp(order(12), 12, 0), 12, 0)
    assert _frames(sub.data_to_send(0)) == [("data", 12)]
