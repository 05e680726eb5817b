"""HELLO -> WELCOME or REJECT: versions, authentication, insecure clients."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import (
    ErrorCode,
    HandshakeError,
    InsecureRejected,
    Unauthorized,
    VersionMismatch,
)
from quicframe.session import Hello
from quicframe.transport import Connection

from .conftest import deadline, read_to_end


def whoami_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(0x0010)
    async def whoami(request: Any, ctx: quicframe.CallContext) -> Any:
        return ctx.principal

    return router


async def token_check(hello: Hello, connection: Connection) -> str | None:
    token = hello.credentials.get("token")
    if token != "secret":
        raise Unauthorized("bad token")
    return f"user:{hello.client_name}"


@deadline(10)
async def test_welcome_carries_limits_and_principal(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with (
        quicframe.open_server(
            whoami_router(),
            "127.0.0.1",
            0,
            server_config,
            authenticator=token_check,
            max_concurrent_calls=77,
            heartbeat_interval=2.5,
            server_name="unit",
        ) as server,
        quicframe.connect(
            "127.0.0.1",
            server.port,
            client_config,
            credentials={"token": "secret"},
            client_name="alice",
        ) as client,
    ):
        welcome = client.welcome
        assert welcome.version == 1
        assert welcome.max_concurrent_calls == 77
        assert welcome.heartbeat_interval_ms == 2500
        assert welcome.max_frame_size == 1 << 20
        assert welcome.server_name == "unit"
        assert client.principal == "user:alice"
        # The principal reaches the handler's CallContext.
        assert await client.call(0x0010, None) == "user:alice"


@deadline(10)
async def test_auth_rejection_raises_unauthorized(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with quicframe.open_server(
        whoami_router(), "127.0.0.1", 0, server_config, authenticator=token_check
    ) as server:
        with pytest.raises(Unauthorized) as info:
            async with quicframe.connect(
                "127.0.0.1", server.port, client_config, credentials={"token": "wrong"}
            ):
                pytest.fail("the session must not open")  # pragma: no cover
        assert info.value.code == ErrorCode.UNAUTHORIZED
        assert "bad token" in str(info.value)
        assert server.statistics().handshakes_rejected == 1
        # The server keeps serving others.
        async with quicframe.connect(
            "127.0.0.1", server.port, client_config, credentials={"token": "secret"}
        ) as client:
            assert await client.call(0x0010, None) == "user:quicframe"


@deadline(10)
async def test_version_mismatch(server_config: ServerConfig, client_config: ClientConfig) -> None:
    async with quicframe.open_server(whoami_router(), "127.0.0.1", 0, server_config) as server:
        with pytest.raises(VersionMismatch) as info:
            async with quicframe.connect("127.0.0.1", server.port, client_config, versions=[7, 9]):
                pytest.fail("the session must not open")  # pragma: no cover
        assert info.value.code == ErrorCode.VERSION_MISMATCH
        assert isinstance(info.value, HandshakeError)


@deadline(10)
async def test_highest_common_version_is_chosen(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with (
        quicframe.open_server(
            whoami_router(), "127.0.0.1", 0, server_config, versions=[1, 2]
        ) as server,
        quicframe.connect("127.0.0.1", server.port, client_config, versions=[1, 2, 3]) as client,
    ):
        assert client.protocol_version == 2


@deadline(10)
async def test_insecure_client_rejected_when_the_server_says_so(
    server_config: ServerConfig,
) -> None:
    insecure = ClientConfig(insecure=True, server_name="localhost", handshake_timeout=5.0)
    async with quicframe.open_server(
        whoami_router(), "127.0.0.1", 0, server_config, allow_insecure=False
    ) as server:
        with pytest.raises(InsecureRejected):
            async with quicframe.connect("127.0.0.1", server.port, insecure):
                pytest.fail("the session must not open")  # pragma: no cover


@deadline(10)
async def test_no_hello_times_out_on_the_server(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with (
        quicframe.open_server(
            whoami_router(), "127.0.0.1", 0, server_config, handshake_timeout=0.2
        ) as server,
        quicframe.transport.connect("127.0.0.1", server.port, client_config) as conn,
    ):
        stream = await conn.open_stream()
        await stream.send_all(b"")
        with pytest.raises(quicframe.ConnectionClosed) as info:
            await stream.receive_some()
        assert info.value.code == ErrorCode.HANDSHAKE_TIMEOUT
        assert info.value.by_peer


@deadline(10)
async def test_garbage_on_the_control_stream_closes_the_connection(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with quicframe.open_server(whoami_router(), "127.0.0.1", 0, server_config) as server:
        async with quicframe.transport.connect("127.0.0.1", server.port, client_config) as conn:
            stream = await conn.open_stream()
            # A well-formed PING before HELLO is out of order.
            await stream.send_all(quicframe.wire.encode_frame(quicframe.FrameType.PING, bytes(8)))
            with pytest.raises(quicframe.ConnectionClosed) as info:
                await read_to_end(stream)
            assert info.value.code == ErrorCode.UNEXPECTED_FRAME
        # ...and the server is still fine.
        with trio.fail_after(5):
            async with quicframe.connect("127.0.0.1", server.port, ClientConfig(insecure=True)):
                pass


@deadline(10)
async def test_a_failing_authenticator_rejects_without_harm(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async def broken(hello: Hello, connection: Connection) -> str | None:
        raise RuntimeError("authenticator bug")

    async with quicframe.open_server(
        whoami_router(), "127.0.0.1", 0, server_config, authenticator=broken
    ) as server:
        for _ in range(2):
            with pytest.raises(HandshakeError) as info:
                async with quicframe.connect("127.0.0.1", server.port, client_config):
                    pytest.fail("the session must not open")  # pragma: no cover
            assert info.value.code == ErrorCode.HANDSHAKE_FAILED
