"""Address validation with Retry (ServerConfig.retry): tokens accepted, bad ones refused."""

from __future__ import annotations

import socket

import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import TransportErrorCode
from quicframe.transport import connect

from .conftest import echo_handler, start_server


async def test_retry_token_accepted(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.retry = True
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"validated")
                await stream.send_eof()
                assert await stream.receive_some() == b"validated"
            stats = handle.listener.statistics()
            # One Retry per token-less INITIAL datagram: qh3's post-quantum key
            # share spreads its ClientHello over two of them (it ignores the second Retry).
            assert stats.retries_sent == (2 if client_config.core == "qh3" else 1)
            assert stats.invalid_tokens == 0
            handle.cancel_scope.cancel()


async def test_bad_retry_token_refused_with_invalid_token(
    server_config: ServerConfig,
) -> None:
    server_config.retry = True
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            # A raw aioquic client presenting a token the server never issued.
            configuration = QuicConfiguration(
                is_client=True, alpn_protocols=["quicframe/1"], token=b"forged-token" * 3
            )
            client = QuicConnection(configuration=configuration)
            server_address = ("127.0.0.1", handle.listener.port)
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                client.connect(server_address, trio.current_time())
                for data, _ in client.datagrams_to_send(trio.current_time()):
                    await sock.sendto(data, server_address)
                reply = await sock.recv(2048)
                client.receive_datagram(reply, server_address, trio.current_time())
            events = []
            while (event := client.next_event()) is not None:
                events.append(event)
            # The client enters draining at once; the event comes at the timer.
            client.handle_timer(client.get_timer() or trio.current_time())
            while (event := client.next_event()) is not None:
                events.append(event)
            closes = [e for e in events if isinstance(e, ConnectionTerminated)]
            assert len(closes) == 1
            assert closes[0].error_code == TransportErrorCode.INVALID_TOKEN
            stats = handle.listener.statistics()
            assert stats.invalid_tokens == 1
            assert stats.connections == 0
            handle.cancel_scope.cancel()
