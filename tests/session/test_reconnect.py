"""Reconnect: a lost connection is re-established in the background, bounded by policy."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ReconnectPolicy, ServerConfig
from quicframe.errors import ConnectionClosed, ConnectionLost, Unauthorized
from quicframe.transport import ServerTicketStore, SessionTicketStore

from .conftest import deadline

WHO, HOLD = 0x01, 0x02
FAST = ReconnectPolicy(max_retries=3, initial_backoff=0.02, max_backoff=0.1, jitter=0.1)


def make_router(name: str, hold: trio.Event | None = None) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(WHO, idempotent=True)  # may run from 0-RTT early data
    async def who(request: Any, ctx: quicframe.CallContext) -> Any:
        return name

    @router.rpc(HOLD)
    async def held(request: Any, ctx: quicframe.CallContext) -> Any:
        if hold is not None:
            hold.set()
            await trio.sleep_forever()
        return name

    return router


@dataclasses.dataclass
class RunningServer:
    server: quicframe.Server
    scope: trio.CancelScope
    stopped: trio.Event

    async def kill(self) -> None:
        """Stop abruptly (every connection closed with GOING_AWAY, no GOAWAY frame)."""
        self.scope.cancel()
        await self.stopped.wait()


async def start_server(
    nursery: trio.Nursery, router: quicframe.Router, port: int, config: ServerConfig
) -> RunningServer:
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[quicframe.Server]) -> None:
        try:
            with scope:
                await quicframe.serve(router, "127.0.0.1", port, config, task_status=task_status)
        finally:
            stopped.set()

    server = await nursery.start(run)
    return RunningServer(server, scope, stopped)


async def goaway_everyone(server: quicframe.Server) -> None:
    """GOAWAY (5 s to drain) on every session of ``server``, which keeps listening."""
    for session in list(server._sessions):
        await session.send_goaway(5.0)


@pytest.fixture
def fast_client_config(client_config: ClientConfig) -> ClientConfig:
    return dataclasses.replace(client_config, handshake_timeout=0.3)


@deadline(15)
async def test_reconnects_after_the_server_restarts_on_the_same_port(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_router("first"), 0, server_config)
        port = first.server.port
        async with quicframe.connect(
            "127.0.0.1", port, fast_client_config, reconnect=FAST
        ) as client:
            assert await client.call(WHO, None) == "first"
            old_connection = client.connection
            await first.kill()
            # A call made before the client has read the CONNECTION_CLOSE would be in
            # flight on a dead connection (and fail with ConnectionLost, as it should):
            # wait for the client to notice the loss first.
            await client._current.unusable.wait()
            second = await start_server(nursery, make_router("second"), port, server_config)
            # The call waits for the background reconnect, within its deadline.
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "second"
            assert client.connection is not old_connection
            stats = client.statistics()
            assert stats.reconnects == 1
            assert stats.reconnect_failures <= FAST.max_retries
            await second.kill()


@deadline(15)
async def test_retries_are_bounded_by_the_policy(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    policy = ReconnectPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02, jitter=0)
    async with trio.open_nursery() as nursery:
        only = await start_server(nursery, make_router("only"), 0, server_config)
        async with quicframe.connect(
            "127.0.0.1", only.server.port, fast_client_config, reconnect=policy
        ) as client:
            assert await client.call(WHO, None) == "only"
            await only.kill()
            await client._current.unusable.wait()
            with pytest.raises(ConnectionLost):
                await client.call(WHO, None)
            stats = client.statistics()
            assert stats.reconnects == 0
            assert stats.reconnect_failures == policy.max_retries + 1


@deadline(15)
async def test_idempotent_call_in_flight_is_retried_on_the_new_connection(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    holding = trio.Event()
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_router("first", holding), 0, server_config)
        port = first.server.port
        async with quicframe.connect(
            "127.0.0.1", port, fast_client_config, reconnect=FAST, idempotent=[HOLD]
        ) as client:
            results: list[Any] = []
            lost: list[BaseException] = []

            async def idempotent_call() -> None:
                with trio.fail_after(5):
                    results.append(await client.call(HOLD, None))

            async def other_call() -> None:
                try:
                    await client.call(WHO + 0x10, None)  # not idempotent: fails
                except ConnectionLost as exc:
                    lost.append(exc)

            async with trio.open_nursery() as calls:
                calls.start_soon(idempotent_call)
                await holding.wait()
                await first.kill()
                await start_server(nursery, make_router("second"), port, server_config)
            assert results == ["second"]
            assert client.statistics().retries == 1
            assert not lost
            nursery.cancel_scope.cancel()


@deadline(15)
async def test_goaway_moves_new_calls_to_a_new_connection(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    holding = trio.Event()
    release = trio.Event()
    router = quicframe.Router()

    @router.rpc(HOLD)
    async def held(request: Any, ctx: quicframe.CallContext) -> Any:
        holding.set()
        await release.wait()
        return "drained"

    @router.rpc(WHO)
    async def who(request: Any, ctx: quicframe.CallContext) -> Any:
        return "fresh"

    async with trio.open_nursery() as nursery:
        old = await start_server(nursery, router, 0, server_config)
        async with quicframe.connect(
            "127.0.0.1", old.server.port, fast_client_config, reconnect=FAST
        ) as client:
            results: list[Any] = []

            async def in_flight() -> None:
                results.append(await client.call(HOLD, None))

            nursery.start_soon(in_flight)
            await holding.wait()
            first_connection = client.connection
            # GOAWAY from this server, but the same server keeps listening: the
            # client dials again while the old connection drains.
            await goaway_everyone(old.server)
            assert await client.call(WHO, None) == "fresh"
            assert client.connection is not first_connection
            release.set()
            while not results:
                await trio.testing.wait_all_tasks_blocked()
                await client.ping()
            assert results == ["drained"]
            assert client.statistics().reconnects == 1
        old.scope.cancel()


@deadline(15)
async def test_a_policy_in_the_client_config_reconnects_after_a_restart(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    config = dataclasses.replace(fast_client_config, reconnect=FAST)
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_router("first"), 0, server_config)
        port = first.server.port
        async with quicframe.connect("127.0.0.1", port, config) as client:  # no reconnect=
            assert await client.call(WHO, None) == "first"
            await first.kill()
            await client._current.unusable.wait()
            second = await start_server(nursery, make_router("second"), port, server_config)
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "second"
            assert client.statistics().reconnects == 1
            await second.kill()


@deadline(15)
async def test_an_explicit_reconnect_argument_overrides_the_config(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    config = dataclasses.replace(fast_client_config, reconnect=FAST)
    never = ReconnectPolicy(max_retries=0)
    async with trio.open_nursery() as nursery:
        only = await start_server(nursery, make_router("only"), 0, server_config)
        async with quicframe.connect("127.0.0.1", only.server.port, config, reconnect=never) as c:
            assert await c.call(WHO, None) == "only"
            await only.kill()
            await c._current.unusable.wait()
            with pytest.raises(ConnectionClosed):
                await c.call(WHO, None)
            assert c.statistics().reconnects == 0
            assert c.statistics().reconnect_failures == 0


class _OnRecord(logging.Handler):
    """Calls ``action`` for every log record whose message starts with ``prefix``."""

    def __init__(self, prefix: str, action: Callable[[], None]) -> None:
        super().__init__()
        self._prefix = prefix
        self._action = action

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self._prefix):
            self._action()


def _resuming(
    server_config: ServerConfig, client_config: ClientConfig
) -> tuple[ServerConfig, ClientConfig, SessionTicketStore]:
    """Configs whose tickets outlive one server run and one client connection."""
    tickets = SessionTicketStore()
    return (
        dataclasses.replace(server_config, session_tickets=ServerTicketStore()),
        dataclasses.replace(client_config, session_tickets=tickets, reconnect=FAST),
        tickets,
    )


@deadline(15)
async def test_a_later_connect_with_the_same_config_resumes_with_early_data(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config, client_config, tickets = _resuming(server_config, client_config)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_router("s"), 0, server_config)
        port = server.server.port
        async with quicframe.connect("127.0.0.1", port, client_config) as client:
            assert await client.call(WHO, None) == "s"
            assert not client.connection.session_resumed
        assert len(tickets) >= 1
        async with quicframe.connect("127.0.0.1", port, client_config, early_data=True) as client:
            # HELLO went out as 0-RTT data on the resumed session.
            assert client.connection.session_resumed
            assert client.connection.early_data_accepted
            assert await client.call(WHO, None) == "s"
        # Without early_data the session is resumed all the same.
        async with quicframe.connect("127.0.0.1", port, client_config) as client:
            assert client.connection.session_resumed
            assert client.statistics().early_calls == 0
        await server.kill()


@deadline(15)
async def test_reconnect_resumes_and_sends_idempotent_calls_as_early_data(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config, client_config, tickets = _resuming(server_config, client_config)
    OTHER = 0x03
    router = make_router("s")

    @router.rpc(OTHER)
    async def other(request: Any, ctx: quicframe.CallContext) -> Any:
        return "other"

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, router, 0, server_config)
        async with quicframe.connect(
            "127.0.0.1", server.server.port, client_config, idempotent=[WHO], early_data=True
        ) as client:
            assert await client.call(WHO, None) == "s"
            assert len(tickets) >= 1
            first_connection = client.connection
            await goaway_everyone(server.server)
            await client._current.unusable.wait()
            results: dict[int, Any] = {}

            async def call(opcode: int) -> None:
                results[opcode] = await client.call(opcode, None)

            # Both calls wait for the new connection; only the idempotent one may
            # be written before WELCOME, as 0-RTT data.
            async with trio.open_nursery() as calls:
                calls.start_soon(call, WHO)
                calls.start_soon(call, OTHER)
            assert results == {WHO: "s", OTHER: "other"}
            assert client.connection is not first_connection
            assert client.connection.session_resumed
            assert client.connection.early_data_accepted
            stats = client.statistics()
            assert stats.reconnects == 1
            assert stats.early_calls == 1
        await server.kill()


@deadline(15)
async def test_the_server_refuses_a_non_idempotent_call_sent_as_early_data(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # A client that wrongly treats OTHER as idempotent sends it as 0-RTT data:
    # the server, where OTHER is not registered idempotent, does not run it
    # (0-RTT can be replayed), while the idempotent WHO runs as usual.
    server_config, client_config, _tickets = _resuming(server_config, client_config)
    OTHER = 0x03
    router = make_router("s")
    ran: list[int] = []

    @router.rpc(OTHER)
    async def other(request: Any, ctx: quicframe.CallContext) -> Any:
        ran.append(OTHER)
        return "other"

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, router, 0, server_config)
        port = server.server.port
        async with quicframe.connect(
            "127.0.0.1", port, client_config, idempotent=[WHO, OTHER], early_data=True
        ) as client:
            assert await client.call(WHO, None) == "s"  # and a ticket arrives
            await goaway_everyone(server.server)
            await client._current.unusable.wait()
            # Both calls wait for the new, resumed connection and go out as 0-RTT.
            results = await asyncio_free_gather(client, [WHO, OTHER])
            assert client.connection.early_data_accepted
            assert client.statistics().early_calls == 2
        assert results[WHO] == "s"
        error = results[OTHER]
        assert isinstance(error, quicframe.errors.Unavailable)
        assert error.details == {"early_data": True}
        assert ran == []
        await server.kill()


async def asyncio_free_gather(client: quicframe.Client, opcodes: list[int]) -> dict[int, Any]:
    """Start one call per opcode at once; the reply or the exception of each."""
    results: dict[int, Any] = {}

    async def call(opcode: int) -> None:
        try:
            results[opcode] = await client.call(opcode, None)
        except quicframe.errors.QuicframeError as exc:
            results[opcode] = exc

    async with trio.open_nursery() as nursery:
        for opcode in opcodes:
            nursery.start_soon(call, opcode)
    return results


@deadline(15)
async def test_an_early_call_on_a_refused_connection_is_retried_on_the_next(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config, client_config, _ = _resuming(server_config, client_config)
    verdicts = iter([True, False])  # the first reconnect attempt is refused

    async def flaky(hello: quicframe.session.Hello, connection: Any) -> str | None:
        await trio.lowlevel.checkpoint()
        if not next(verdicts, True):
            raise Unauthorized("not now")
        return "user"

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                quicframe.serve,
                make_router("s"),
                "127.0.0.1",
                0,
                server_config,
                authenticator=flaky,
            ),
        )
        async with quicframe.connect(
            "127.0.0.1", server.port, client_config, idempotent=[WHO], early_data=True
        ) as client:
            assert await client.call(WHO, None) == "s"
            await goaway_everyone(server)
            await client._current.unusable.wait()
            # Written early on a connection whose HELLO is then refused, the call
            # is sent again on the connection after it.
            assert await client.call(WHO, None) == "s"
            # The reply can arrive with the WELCOME (both 0-RTT answers): let the
            # link's task take the WELCOME before reading the statistics.
            await trio.testing.wait_all_tasks_blocked()
            stats = client.statistics()
            assert stats.reconnects == 1
            assert stats.reconnect_failures == 1
            assert stats.early_calls == 2
            assert stats.retries == 1
        nursery.cancel_scope.cancel()


@deadline(15)
async def test_reconnect_after_a_restart_resumes_the_session(
    server_config: ServerConfig, fast_client_config: ClientConfig
) -> None:
    # The restarted server shares the first one's ticket store, as a server that
    # persists its tickets would; attempts made while it was down keep the ticket.
    server_config, client_config, tickets = _resuming(server_config, fast_client_config)
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_router("first"), 0, server_config)
        port = first.server.port
        async with quicframe.connect(
            "127.0.0.1", port, client_config, idempotent=[WHO], early_data=True
        ) as client:
            assert await client.call(WHO, None) == "first"
            assert len(tickets) >= 1
            failed = trio.Event()
            handler = _OnRecord("reconnect attempt", failed.set)
            logging.getLogger("quicframe.client").addHandler(handler)
            try:
                await first.kill()
                await failed.wait()  # one attempt failed while no server listened
            finally:
                logging.getLogger("quicframe.client").removeHandler(handler)
            second = await start_server(nursery, make_router("second"), port, server_config)
            with trio.fail_after(5):
                assert await client.call(WHO, None) == "second"
            await trio.testing.wait_all_tasks_blocked()  # as above: the WELCOME too
            assert client.connection.session_resumed
            assert client.statistics().reconnect_failures >= 1
            assert client.statistics().reconnects == 1
            await second.kill()


def test_backoff_grows_caps_and_jitters() -> None:
    import random

    policy = ReconnectPolicy(max_retries=10, initial_backoff=0.1, max_backoff=1.0, jitter=0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittery = ReconnectPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=0.25)
    rng = random.Random(7)
    waits = [jittery.backoff(1, rng) for _ in range(200)]
    assert all(0.75 <= w <= 1.25 for w in waits)
    assert max(waits) - min(waits) > 0.25
    for bad in (
        {"max_retries": -1},
        {"initial_backoff": 2.0, "max_backoff": 1.0},
        {"jitter": 1.5},
    ):
        with pytest.raises(ValueError, match=r"must be|need"):
            ReconnectPolicy(**bad)
