"""SLA classes: stream urgency on both sides of a call, and admission order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ServerConfig, SlaClass
from quicframe._server import _Session
from quicframe.middleware import limit_concurrency
from quicframe.session import sla_urgency
from quicframe.transport import Connection, Stream

from .conftest import deadline

ECHO, UPLOAD, DOWNLOAD, HOLD = 0x01, 0x02, 0x03, 0x04
BIG = 1 << 20
LIMIT = 4 << 20  # frames up to 4 MiB, for the bulk calls


def test_sla_class_to_urgency() -> None:
    assert sla_urgency(SlaClass.GOLD) == 1
    assert sla_urgency(SlaClass.SILVER) == 3
    assert sla_urgency(SlaClass.BRONZE) == 5
    assert sla_urgency(None) == 3  # no class: the transport's default
    assert sla_urgency(200) == 1  # unknown above GOLD: scheduled as GOLD


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Stream]]:
    """Every call stream the client opens and the server serves, in order."""
    seen: dict[str, list[Stream]] = {"client": [], "server": []}
    # open_stream() opens through open_stream_nowait(), as client.call() does.
    open_stream_nowait = Connection.open_stream_nowait
    run_call = _Session._run_call

    def recording_open_stream_nowait(
        self: Connection, unidirectional: bool = False, *, urgency: int = 3
    ) -> Stream:
        stream = open_stream_nowait(self, unidirectional, urgency=urgency)
        if stream.stream_id != 0:  # not the control stream
            seen["client"].append(stream)
        return stream

    async def recording_run_call(self: _Session, stream: Stream) -> None:
        seen["server"].append(stream)
        await run_call(self, stream)

    monkeypatch.setattr(Connection, "open_stream_nowait", recording_open_stream_nowait)
    monkeypatch.setattr(_Session, "_run_call", recording_run_call)
    return seen


@deadline(15)
async def test_call_streams_carry_the_urgency_of_the_sla_class(
    server_config: ServerConfig,
    client_config: ClientConfig,
    streams: dict[str, list[Stream]],
) -> None:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return [request, ctx.sla_class]

    classes = [SlaClass.GOLD, SlaClass.SILVER, SlaClass.BRONZE, None, 7]
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        for sla in classes:
            assert await client.call(ECHO, "x", sla_class=sla) == ["x", sla]
    expected = [1, 3, 5, 3, 1]
    assert [s.urgency for s in streams["client"]] == expected
    assert [s.urgency for s in streams["server"]] == expected
    # The same streams on both sides, in the same order.
    assert [s.stream_id for s in streams["client"]] == [s.stream_id for s in streams["server"]]


async def settle_until(condition: Callable[[], bool]) -> None:
    """Let every task run (and the network go quiet) until ``condition()`` holds."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked()


async def race(
    first: Callable[[], Awaitable[None]],
    first_started: Callable[[], bool],
    second: Callable[[], Awaitable[None]],
) -> None:
    """Start ``first``; start ``second`` in the scheduling round where
    ``first_started()`` becomes true; wait for both."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        while not first_started():
            await trio.lowlevel.checkpoint()
        nursery.start_soon(second)


@pytest.mark.aioquic_only("qh3 sends streams in its own order, whatever their urgency")
@deadline(30)
async def test_gold_request_overtakes_a_bronze_upload(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # A BRONZE call's large request is on its way when a GOLD call with a larger
    # one starts on the same connection.  The GOLD request's data goes first, so
    # its handler runs first.  Served round-robin (no priority), the BRONZE
    # request, smaller and ahead, would arrive first.
    arrived: list[Any] = []
    done: list[Any] = []
    router = quicframe.Router()

    @router.rpc(UPLOAD)
    async def upload(request: Any, ctx: quicframe.CallContext) -> Any:
        arrived.append(ctx.sla_class)
        return len(request)

    async with (
        quicframe.open_server(
            router, "127.0.0.1", 0, server_config, max_frame_size=LIMIT
        ) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):

        async def bronze() -> None:
            assert await client.call(UPLOAD, bytes(BIG), sla_class=SlaClass.BRONZE) == BIG
            done.append(SlaClass.BRONZE)

        async def gold() -> None:
            size = BIG + BIG // 4
            assert await client.call(UPLOAD, bytes(size), sla_class=SlaClass.GOLD) == size
            done.append(SlaClass.GOLD)

        # calls_in_flight counts a call once its REQUEST is queued on its stream.
        await race(bronze, lambda: client.statistics().calls_in_flight == 1, gold)
    assert arrived == [SlaClass.GOLD, SlaClass.BRONZE]
    assert done == [SlaClass.GOLD, SlaClass.BRONZE]


@pytest.mark.aioquic_only("qh3 sends streams in its own order, whatever their urgency")
@deadline(30)
async def test_gold_response_overtakes_a_bronze_download(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # Two handlers answer in the same scheduling round: a BRONZE call's large
    # response and a GOLD call's larger one.  The GOLD response's data goes
    # first, so the GOLD call ends first.  Only the server's choice of urgency
    # decides this (the requests are tiny); served round-robin, the smaller
    # BRONZE response would be complete first.
    done: list[Any] = []
    started = 0
    both_started = trio.Event()
    router = quicframe.Router()

    @router.rpc(DOWNLOAD)
    async def download(request: Any, ctx: quicframe.CallContext) -> Any:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()
        return bytes(request)

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config, max_frame_size=LIMIT) as client,
    ):

        async def call(sla: int, size: int) -> None:
            assert len(await client.call(DOWNLOAD, size, sla_class=sla)) == size
            done.append(sla)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, SlaClass.BRONZE, BIG)
            nursery.start_soon(call, SlaClass.GOLD, BIG + BIG // 4)
    assert done == [SlaClass.GOLD, SlaClass.BRONZE]


def hold_router(release: trio.Event, admitted: list[Any]) -> quicframe.Router:
    """HOLD admits one call at a time (the rest queue) and records each request as
    its handler starts; the request "first" holds its slot until ``release``."""
    router = quicframe.Router(middleware=[limit_concurrency({HOLD: 1}, wait=True)])

    @router.rpc(HOLD)
    async def hold(request: Any, ctx: quicframe.CallContext) -> Any:
        admitted.append(request)
        if request == "first":
            await release.wait()
        return request

    return router


@deadline(15)
async def test_queued_calls_are_admitted_most_urgent_first(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    release = trio.Event()
    admitted: list[Any] = []
    router = hold_router(release, admitted)
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):

        async def call(name: str, sla: int | None) -> None:
            assert await client.call(HOLD, name, sla_class=sla) == name

        async with trio.open_nursery() as nursery:
            queue = [
                ("first", SlaClass.BRONZE),
                ("bronze", SlaClass.BRONZE),
                ("none", None),
                ("silver", SlaClass.SILVER),
                ("gold", SlaClass.GOLD),
            ]
            for count, (name, sla) in enumerate(queue, 1):
                nursery.start_soon(call, name, sla)
                # Each call is at the server (running or queued) before the next.
                await settle_until(lambda n=count: server.statistics().calls_in_flight == n)  # type: ignore[misc]
            release.set()
    # GOLD first; SILVER and unclassified calls share an urgency, in arrival order.
    assert admitted == ["first", "gold", "none", "silver", "bronze"]


@deadline(15)
async def test_a_call_cancelled_in_the_admission_queue_leaves_it(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    release = trio.Event()
    admitted: list[Any] = []
    router = hold_router(release, admitted)
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.call, HOLD, "first")
            await settle_until(lambda: server.statistics().calls_in_flight == 1)
            queued = trio.CancelScope()

            async def call_then_give_up() -> None:
                with queued:
                    await client.call(HOLD, "gave up", sla_class=SlaClass.GOLD)

            nursery.start_soon(call_then_give_up)
            await settle_until(lambda: server.statistics().calls_in_flight == 2)
            queued.cancel()  # the server cancels the call while it waits to be admitted
            await settle_until(lambda: server.statistics().calls_in_flight == 1)
            release.set()
        # The token the cancelled waiter never got is not lost: a later call runs.
        assert await client.call(HOLD, "later", sla_class=SlaClass.BRONZE) == "later"
    assert admitted == ["first", "later"]
