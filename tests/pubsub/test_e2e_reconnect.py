"""After a forced reconnect a subscription resumes by replay: nothing missed, nothing twice."""

from __future__ import annotations

import trio

import quicframe
from quicframe import ClientConfig, ReconnectPolicy, ServerConfig

from .helpers import ack

POLICY = ReconnectPolicy(max_retries=50, initial_backoff=0.01, max_backoff=0.05, jitter=0.1)


class Restartable:
    """A session server that can be killed and started again on the same port."""

    def __init__(self, router: quicframe.Router, config: ServerConfig) -> None:
        self.router = router
        self.config = config
        self.port = 0
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        server: quicframe.Server = await nursery.start(self._run)
        self.port = server.port

    async def _run(self, *, task_status: trio.TaskStatus[quicframe.Server]) -> None:
        try:
            with self._scope:
                await quicframe.serve(
                    self.router, "127.0.0.1", self.port, self.config, task_status=task_status
                )
        finally:
            self._stopped.set()

    async def kill(self) -> None:
        """Stop at once: every connection is closed, no GOAWAY first."""
        self._scope.cancel()
        await self._stopped.wait()


async def test_resubscribes_after_a_reconnect_and_resumes_by_replay(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    first, total = 500, 1200
    acks = quicframe.Topic("orders.acks", frame=quicframe.OrderAck, history=10_000)
    router = quicframe.Router()
    router.add_topic(acks)
    seqs: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = Restartable(router, server_config)
            await server.start(nursery)
            async with (
                quicframe.connect(
                    "127.0.0.1", server.port, client_config, reconnect=POLICY
                ) as client,
                client.subscribe("orders.acks") as sub,
            ):
                reached = trio.Event()
                done = trio.Event()

                async def consume() -> None:
                    async for value in sub:
                        seqs.append(value.seq)
                        if value.seq == first // 2:
                            reached.set()
                        if value.seq == total:
                            done.set()
                            return

                nursery.start_soon(consume)
                for order_id in range(1, first + 1):
                    await acks.publish(ack(order_id))
                await reached.wait()
                # Kill the server with frames still in flight, publish more while it
                # is down, and bring it back on the same port.
                await server.kill()
                for order_id in range(first + 1, total // 2 + 1):
                    await acks.publish(ack(order_id))
                await server.start(nursery)
                for order_id in range(total // 2 + 1, total + 1):
                    await acks.publish(ack(order_id))
                await done.wait()
                stats = sub.stats()
                assert client.statistics().reconnects >= 1
            nursery.cancel_scope.cancel()
    assert seqs == list(range(1, total + 1))
    assert stats.resubscribes >= 1
    assert stats.duplicates == 0
    assert stats.gaps == 0
