"""Failover across several addresses: ``ClientConfig.addresses`` and the reconnect policy.

Two plain servers on loopback answer ``WHO`` with their own name, so every call
shows which one the client is on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ReconnectPolicy, ServerConfig
from quicframe.errors import ConnectionLost, HandshakeError

from .conftest import deadline

WHO = 0x01
LOCAL = "127.0.0.1"
FAST = ReconnectPolicy(max_retries=3, initial_backoff=0.02, max_backoff=0.1, jitter=0.1)


def router_named(name: str) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(WHO)
    async def who(request: Any, ctx: quicframe.CallContext) -> Any:
        return name

    return router


@dataclasses.dataclass
class Running:
    server: quicframe.Server
    scope: trio.CancelScope
    stopped: trio.Event

    @property
    def address(self) -> tuple[str, int]:
        return (LOCAL, self.server.port)

    async def kill(self) -> None:
        """Stop at once: every connection closes, no GOAWAY first."""
        self.scope.cancel()
        await self.stopped.wait()

    async def goaway(self) -> None:
        """GOAWAY on every session (5 s to drain); the server keeps listening."""
        for session in list(self.server._sessions):
            await session.send_goaway(5.0)


async def start(nursery: trio.Nursery, name: str, config: ServerConfig) -> Running:
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[quicframe.Server]) -> None:
        try:
            with scope:
                await quicframe.serve(router_named(name), LOCAL, 0, config, task_status=task_status)
        finally:
            stopped.set()

    server: quicframe.Server = await nursery.start(run)
    return Running(server, scope, stopped)


@pytest.fixture
def fast_client_config(client_config: ClientConfig) -> ClientConfig:
    return dataclasses.replace(client_config, handshake_timeout=0.3)


@deadline(15)
async def test_a_lost_server_is_replaced_by_the_next_address(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start(nursery, "a", server_config)
        b = await start(nursery, "b", server_config)
        # The address given to connect may be listed too: it is tried once, first.
        config = dataclasses.replace(
            fast_client_config, addresses=[a.address, b.address], reconnect=FAST
        )
        async with quicframe.connect(LOCAL, a.server.port, config) as client:
            assert client.addresses == (a.address, b.address)
            assert await client.call(WHO, None) == "a"
            assert client.address == client.statistics().address == a.address
            await a.kill()
            await client._current.unusable.wait()
            # The call waits for the reconnect, which goes to b at once.
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "b"
            stats = client.statistics()
            assert stats.address == client.address == b.address
            assert stats.reconnects == 1
            assert stats.reconnect_failures == 0  # the dead address was not dialled
        nursery.cancel_scope.cancel()


@deadline(15)
async def test_goaway_moves_the_client_to_the_next_address(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start(nursery, "a", server_config)
        b = await start(nursery, "b", server_config)
        config = dataclasses.replace(fast_client_config, addresses=[b.address], reconnect=FAST)
        async with quicframe.connect(LOCAL, a.server.port, config) as client:
            assert await client.call(WHO, None) == "a"
            # a still listens and would accept a new session: the client goes to
            # b all the same, since a said it is going away.
            await a.goaway()
            await client._current.unusable.wait()
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "b"
            assert client.statistics().address == b.address
            assert client.statistics().reconnects == 1
            # And when b goes away too, the ring comes back round to a.
            await b.goaway()
            await client._current.unusable.wait()
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "a"
            assert client.statistics().address == a.address
            assert client.statistics().reconnects == 2
        nursery.cancel_scope.cancel()


@deadline(15)
async def test_attempts_go_round_the_addresses_within_the_policy_bound(
    server_config: ServerConfig,
    fast_client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ReconnectPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.02, jitter=0)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, "a", server_config)
        b = await start(nursery, "b", server_config)
        config = dataclasses.replace(fast_client_config, addresses=[b.address], reconnect=policy)
        async with quicframe.connect(LOCAL, a.server.port, config) as client:
            assert await client.call(WHO, None) == "a"
            await b.kill()
            with caplog.at_level(logging.WARNING, logger="quicframe.client"):
                await a.kill()
                await client._current.unusable.wait()
                with pytest.raises(ConnectionLost):
                    await client.call(WHO, None)
            stats = client.statistics()
            assert stats.reconnects == 0
            assert stats.reconnect_failures == policy.max_retries + 1
    tried = [
        record.args[1:3]
        for record in caplog.records
        if record.getMessage().startswith("reconnect attempt") and isinstance(record.args, tuple)
    ]
    # b first (the next after the lost a), then round the ring: never a twice running.
    assert tried == [b.address, a.address, b.address, a.address]


@deadline(15)
async def test_connect_tries_the_addresses_in_order(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        gone = await start(nursery, "gone", server_config)
        await gone.kill()  # nothing listens on its port any more
        b = await start(nursery, "b", server_config)
        config = dataclasses.replace(fast_client_config, addresses=[b.address])
        async with quicframe.connect(LOCAL, gone.server.port, config) as client:
            assert client.address == b.address
            assert await client.call(WHO, None) == "b"
            assert client.statistics().reconnects == 0
        await b.kill()
        # Every address fails: the typed error of the last one, as with one address.
        with pytest.raises(HandshakeError):
            async with quicframe.connect(LOCAL, gone.server.port, config):
                pass  # pragma: no cover


def test_addresses_are_checked_when_the_config_is_made() -> None:
    config = ClientConfig(addresses=[["edge-1", 4433], ("edge-2", 4434)])  # type: ignore[list-item]
    assert config.addresses == (("edge-1", 4433), ("edge-2", 4434))
    assert ClientConfig().addresses == ()
    assert dataclasses.replace(config, addresses=[]).addresses == ()
    bad: list[tuple[Any, type[Exception], str]] = [
        ("edge-1:4433", TypeError, "sequence of"),
        (42, TypeError, "sequence of"),
        ([("edge-1", 4433, 1)], TypeError, "pair"),
        (["edge-1"], TypeError, "pair"),
        ([("", 4433)], ValueError, "non-empty"),
        ([(b"edge-1", 4433)], ValueError, "non-empty"),
        ([("edge-1", 0)], ValueError, "1..65535"),
        ([("edge-1", 65536)], ValueError, "1..65535"),
        ([("edge-1", "4433")], ValueError, "1..65535"),
        ([("edge-1", True)], ValueError, "1..65535"),
        ([("edge-1", 4433), ("edge-1", 4433)], ValueError, "twice"),
    ]
    for addresses, error, message in bad:
        with pytest.raises(error, match=message):
            ClientConfig(addresses=addresses)
