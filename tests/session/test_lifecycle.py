"""GOAWAY graceful shutdown and the heartbeat on the control stream."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ErrorCode, Unavailable

from .conftest import deadline

HOLD, ECHO = 0x01, 0x02


@deadline(10)
async def test_goaway_drains_in_flight_calls(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    started = trio.Event()
    release = trio.Event()
    router = quicframe.Router()

    @router.rpc(HOLD)
    async def hold(request: Any, ctx: quicframe.CallContext) -> Any:
        started.set()
        await release.wait()
        return "finished"

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(quicframe.serve, router, "127.0.0.1", 0, server_config)
        async with quicframe.connect("127.0.0.1", server.port, client_config) as client:

            async def in_flight() -> None:
                results.append(await client.call(HOLD, None))

            nursery.start_soon(in_flight)
            await started.wait()
            closed = trio.Event()

            async def shut_down() -> None:
                await server.aclose()
                closed.set()

            nursery.start_soon(shut_down)
            # GOAWAY reaches the client: new calls are refused, the old one runs on.
            while client.statistics().goaway is None:
                await client.ping()
            goaway = client.statistics().goaway
            assert goaway is not None
            assert goaway.code == ErrorCode.GOING_AWAY
            with pytest.raises(Unavailable):
                await client.call(ECHO, 1)
            assert not closed.is_set()
            release.set()
            await closed.wait()
        # serve() returned on its own: the nursery can finish.
    assert results == ["finished"]
    assert server.statistics().calls_completed == 1


@deadline(10)
async def test_goaway_grace_period_bounds_the_drain(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    started = trio.Event()
    router = quicframe.Router()

    @router.rpc(HOLD)
    async def hold(request: Any, ctx: quicframe.CallContext) -> Any:
        started.set()
        await trio.sleep_forever()

    async with (
        quicframe.open_server(
            router, "127.0.0.1", 0, server_config, shutdown_grace_period=0.1
        ) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
        trio.open_nursery() as nursery,
    ):

        async def in_flight() -> None:
            with pytest.raises((quicframe.ConnectionClosed, quicframe.RemoteError)):
                await client.call(HOLD, None)

        nursery.start_soon(in_flight)
        await started.wait()
        start = trio.current_time()
        await server.aclose()
        assert 0.09 < trio.current_time() - start < 2.0


@deadline(10)
async def test_ping_and_heartbeat_rtt(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    router = quicframe.Router()
    async with (
        quicframe.open_server(
            router, "127.0.0.1", 0, server_config, heartbeat_interval=0.01
        ) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        assert client.welcome.heartbeat_interval_ms == 10
        rtt = await client.ping()
        assert 0 < rtt < 1.0
        assert client.statistics().rtt is not None
        before = client.statistics().heartbeats
        # The heartbeat task pings by itself: wait for two more PONGs.
        with trio.fail_after(2):
            while client.statistics().heartbeats < before + 2:
                await client._current.ping_lot.park()
