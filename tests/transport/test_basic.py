"""Handshake and a first echo on a stream, over real loopback UDP."""

from __future__ import annotations

import trio

from quicframe import ClientConfig
from quicframe.transport import connect

from .conftest import ServerHandle


async def test_handshake_and_echo(echo_server: ServerHandle, client_config: ClientConfig) -> None:
    with trio.fail_after(10):
        async with connect("127.0.0.1", echo_server.listener.port, client_config) as conn:
            assert conn.alpn_protocol == "quicframe/1"
            stream = await conn.open_stream()
            await stream.send_all(b"hello")
            await stream.send_eof()
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            assert received == b"hello"
            await stream.aclose()
