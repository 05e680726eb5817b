"""Session resumption and 0-RTT: tickets stored, early data accepted, replays refused."""

from __future__ import annotations

import copy

import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.transport import Connection, SessionTicketStore, connect

from .conftest import start_server


async def test_resumption_early_data_and_replay(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    store = SessionTicketStore()
    client_config.session_tickets = store
    # What the server saw on each connection: (resumed, early data accepted, request).
    seen: list[tuple[bool, bool, bytes]] = []

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        request = bytearray()
        while chunk := await stream.receive_some():
            request += chunk
        seen.append((connection.session_resumed, connection.early_data_accepted, bytes(request)))
        await stream.send_all(b"re:" + request)
        await stream.send_eof()
        await connection.accept_stream()  # until the client closes

    async def request(port: int, body: bytes, *, early_data: bool) -> Connection:
        async with connect("127.0.0.1", port, client_config, early_data=early_data) as conn:
            stream = await conn.open_stream()
            await stream.send_all(body)
            await stream.send_eof()
            reply = bytearray()
            while chunk := await stream.receive_some():
                reply += chunk
            assert reply == b"re:" + body
            # The server's ticket follows the handshake; a round trip collects it.
            await conn.ping()
            return conn

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            port = handle.listener.port

            first = await request(port, b"one", early_data=True)  # no ticket yet
            assert not first.session_resumed
            assert len(store) >= 1
            ticket = store.pop("localhost")
            assert ticket is not None
            store.add(ticket)

            second = await request(port, b"two", early_data=True)
            assert second.session_resumed
            assert second.early_data_accepted

            # Replaying the ticket the second connection used: the server refuses it
            # (single use) and a full handshake follows, without 0-RTT.
            store.add(copy.copy(ticket))
            third = await request(port, b"three", early_data=True)
            assert not third.session_resumed
            assert not third.early_data_accepted

            assert seen == [
                (False, False, b"one"),
                (True, True, b"two"),
                (False, False, b"three"),
            ]
            handle.cancel_scope.cancel()
