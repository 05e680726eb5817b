"""Server middleware (the onion and the built-ins) and client interceptors."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import (
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from quicframe.middleware import cap_deadline, limit_concurrency, log_calls, require_principal
from quicframe.session import Hello
from quicframe.transport import Connection

from .conftest import deadline

ECHO, HOLD, ADMIN = 0x01, 0x02, 0x03


@deadline(10)
async def test_onion_order_and_context_sharing(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    trail: list[str] = []

    def layer(name: str) -> quicframe.Middleware:
        async def middleware(
            ctx: quicframe.CallContext, request: Any, call_next: quicframe.CallNext
        ) -> Any:
            trail.append(f"{name}>")
            ctx.state.setdefault("seen", []).append(name)
            response = await call_next(ctx, request)
            trail.append(f"<{name}")
            return response

        return middleware

    router = quicframe.Router(middleware=[layer("a")])
    router.use(layer("b"))

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        trail.append("handler")
        return [request, ctx.state["seen"]]

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        assert await client.call(ECHO, 5) == [5, ["a", "b"]]
    assert trail == ["a>", "b>", "handler", "<b", "<a"]


@deadline(10)
async def test_log_calls_records_request_id_opcode_status_latency(
    server_config: ServerConfig, client_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    router = quicframe.Router(middleware=[log_calls()])

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        if request == "fail":
            raise quicframe.errors.InvalidArgument("no")
        return request

    with caplog.at_level(logging.INFO, logger="quicframe.calls"):
        async with (
            quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
            quicframe.connect("127.0.0.1", server.port, client_config) as client,
        ):
            await client.call(ECHO, 1, request_id="log-ok")
            with pytest.raises(quicframe.errors.InvalidArgument):
                await client.call(ECHO, "fail", request_id="log-bad")
    records = {
        getattr(r, "request_id", None): r for r in caplog.records if r.name == "quicframe.calls"
    }
    ok, bad = records["log-ok"], records["log-bad"]
    assert getattr(ok, "status", None) == "OK"
    assert getattr(ok, "opcode", None) == ECHO
    assert getattr(ok, "latency_ms", -1.0) >= 0
    assert "log-ok" in ok.getMessage()
    assert getattr(bad, "status", None) == "INVALID_ARGUMENT"
    assert bad.levelno == logging.WARNING


async def by_token(hello: Hello, connection: Connection) -> str | None:
    return hello.credentials.get("token")  # anonymous without a token


@deadline(10)
async def test_require_principal(server_config: ServerConfig, client_config: ClientConfig) -> None:
    router = quicframe.Router(
        middleware=[
            require_principal(lambda ctx: ctx.principal == "root", opcodes=[ADMIN]),
        ]
    )

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    @router.rpc(ADMIN)
    async def admin(request: Any, ctx: quicframe.CallContext) -> Any:
        return "done"

    async with quicframe.open_server(
        router, "127.0.0.1", 0, server_config, authenticator=by_token
    ) as server:
        async with quicframe.connect("127.0.0.1", server.port, client_config) as anonymous:
            assert await anonymous.call(ECHO, 1) == 1
            with pytest.raises(Unauthenticated):
                await anonymous.call(ADMIN, None)
        async with quicframe.connect(
            "127.0.0.1", server.port, client_config, credentials={"token": "bob"}
        ) as bob:
            with pytest.raises(PermissionDenied):
                await bob.call(ADMIN, None)
        async with quicframe.connect(
            "127.0.0.1", server.port, client_config, credentials={"token": "root"}
        ) as root:
            assert await root.call(ADMIN, None) == "done"


@deadline(10)
async def test_limit_concurrency_per_opcode(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    release = trio.Event()
    holding = 0
    both_holding = trio.Event()
    router = quicframe.Router(middleware=[limit_concurrency({HOLD: 2})])

    @router.rpc(HOLD)
    async def hold(request: Any, ctx: quicframe.CallContext) -> Any:
        nonlocal holding
        holding += 1
        if holding == 2:
            both_holding.set()
        await release.wait()
        return "released"

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    results: list[Any] = []

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):

        async def call_hold() -> None:
            results.append(await client.call(HOLD, None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_hold)
            nursery.start_soon(call_hold)
            await both_holding.wait()
            with pytest.raises(ResourceExhausted) as info:
                await client.call(HOLD, None)
            assert info.value.details == {"limit": 2}
            assert await client.call(ECHO, "other opcodes are free") == "other opcodes are free"
            release.set()
        assert results == ["released", "released"]
        assert await client.call(HOLD, None) == "released"


@deadline(10)
async def test_cap_deadline(server_config: ServerConfig, client_config: ClientConfig) -> None:
    router = quicframe.Router(middleware=[cap_deadline(0.05)])

    @router.rpc(HOLD)
    async def hold(request: Any, ctx: quicframe.CallContext) -> Any:
        await trio.sleep_forever()

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await client.call(HOLD, None)
        assert 0.045 < trio.current_time() - start < 1.0


@deadline(10)
async def test_client_interceptors(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return {"request": request, "request_id": ctx.request_id, "sla": ctx.sla_class}

    trail: list[str] = []

    async def tagging(ctx: quicframe.ClientCallContext, request: Any, call_next: Any) -> Any:
        trail.append("outer")
        ctx.request_id = f"tagged-{ctx.request_id}"
        ctx.sla_class = quicframe.SlaClass.SILVER
        return await call_next(ctx, request)

    async def rewriting(ctx: quicframe.ClientCallContext, request: Any, call_next: Any) -> Any:
        trail.append("inner")
        response = await call_next(ctx, [request])
        return {**response, "seen_by": "inner"}

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect(
            "127.0.0.1", server.port, client_config, interceptors=[tagging, rewriting]
        ) as client,
    ):
        reply = await client.call(ECHO, 1, request_id="x")
    assert reply == {"request": [1], "request_id": "tagged-x", "sla": 1, "seen_by": "inner"}
    assert trail == ["outer", "inner"]
