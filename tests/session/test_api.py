"""The contract API of issue 4: Router, rpc, serve, open_server, connect, call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

import quicframe
from quicframe import ClientConfig, ServerConfig

from .conftest import deadline


@dataclass
class LoginRequest:
    user_id: int
    token: str


@dataclass
class LoginResponse:
    session: str
    user_id: int


def make_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(0x0101, request=LoginRequest, response=LoginResponse)
    async def login(request: LoginRequest, ctx: quicframe.CallContext) -> LoginResponse:
        return LoginResponse(session=f"s-{request.token}", user_id=request.user_id)

    @router.rpc(0x0001)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    return router


@deadline(10)
async def test_serve_with_nursery_start_and_typed_call(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(quicframe.serve, make_router(), "127.0.0.1", 0, server_config)
        assert isinstance(server, quicframe.Server)
        assert server.port > 0
        async with quicframe.connect("127.0.0.1", server.port, client_config) as client:
            assert client.connection.alpn_protocol == "quicframe/1"
            assert client.protocol_version == 1
            with trio.fail_after(0.5):
                reply = await client.call(
                    0x0101, LoginRequest(user_id=7, token="t"), response=LoginResponse
                )
            assert reply == LoginResponse(session="s-t", user_id=7)
            # Without a response type the body comes back as a plain msgpack value.
            untyped = await client.call(0x0101, LoginRequest(user_id=8, token="u"))
            assert untyped == {"session": "s-u", "user_id": 8}
        await server.aclose()


@deadline(10)
async def test_open_server_and_plain_values(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    values: list[Any] = [None, 1, -5, 2.5, "text", b"\x00\xff", [1, "a"], {"k": [1, 2]}, True]
    async with (
        quicframe.open_server(make_router(), "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        for value in values:
            assert await client.call(0x0001, value) == value
        stats = client.statistics()
        assert stats.calls_completed == len(values)
        assert stats.calls_in_flight == 0
    assert server.closing
