"""Connection-level behaviour over loopback: datagrams, ping, idle timeout and
keepalive, closing, certificate verification, handshake timeout, garbage input."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed, HandshakeError, HandshakeTimeout, IdleTimeout
from quicframe.transport import DatagramTooLarge, connect

from .conftest import echo_handler, start_server
from .test_streams import connection_pair


async def test_datagram_round_trip_and_oversize(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            limit = client.max_datagram_payload()
            assert limit > 1000
            await client.send_datagram(b"hello")
            assert await server.receive_datagram() == b"hello"
            await server.send_datagram(b"x" * limit)
            assert await client.receive_datagram() == b"x" * limit
            with pytest.raises(DatagramTooLarge) as info:
                await client.send_datagram(b"x" * (limit + 1))
            assert info.value.max_size == limit
            assert server.statistics().datagrams_received == 1


async def test_datagram_unsupported_by_peer(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.max_datagram_frame_size = None
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, _server):
            assert client.max_datagram_payload() == 0
            with pytest.raises(DatagramTooLarge):
                await client.send_datagram(b"x")


async def test_datagram_queue_drops_oldest(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.datagram_queue_size = 2
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            for i in range(5):
                await client.send_datagram(bytes([i]))
            # A ping is acknowledged only after the datagrams before it were processed.
            while server.statistics().datagrams_received < 5:
                await client.ping()
            assert server.statistics().datagrams_dropped == 3
            assert await server.receive_datagram() == b"\x03"
            assert await server.receive_datagram() == b"\x04"


async def test_ping_returns_rtt_and_statistics(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, _server):
            rtt = await client.ping()
            assert 0 < rtt < 5
            stats = client.statistics()
            assert stats.smoothed_rtt > 0
            assert stats.min_rtt > 0
            assert stats.congestion_window > 0
            assert stats.packets_sent > 0


async def test_graceful_close_reaches_peer_with_code_and_reason(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            await client.aclose(0x105, "bye")
            with pytest.raises(ConnectionClosed) as info:
                await server.accept_stream()
            assert info.value.code == 0x105
            assert info.value.code_name == "GOING_AWAY"
            assert info.value.reason == "bye"
            assert info.value.by_peer
            assert not info.value.is_transport
            # Our own side: use after close is a ClosedResourceError.
            with pytest.raises(trio.ClosedResourceError):
                await client.open_stream()


async def test_idle_timeout_closes_with_idle_error(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.idle_timeout = 0.6
    client_config.idle_timeout = 0.6
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, _server):
            start = trio.current_time()
            with pytest.raises(IdleTimeout):
                await client.accept_stream()
            assert trio.current_time() - start >= 0.5
            assert isinstance(client.closed, IdleTimeout)


async def test_keepalive_holds_idle_connection_open(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.idle_timeout = 0.6
    client_config.idle_timeout = 0.6
    client_config.keepalive_interval = 0.15
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            # Three idle timeouts pass while nothing but keepalives flows.
            with trio.move_on_after(1.8):
                await client.accept_stream()
            assert client.closed is None
            assert server.closed is None
            assert await client.ping() > 0


async def test_certificate_verification_fails_without_ca(
    server_config: ServerConfig,
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            config = ClientConfig(server_name="localhost", handshake_timeout=5.0)
            with pytest.raises(HandshakeError) as info:
                async with connect("127.0.0.1", handle.listener.port, config):
                    pass  # pragma: no cover
            assert not isinstance(info.value, HandshakeTimeout)
            # insecure=True is the explicit opt-out.
            insecure = ClientConfig(insecure=True, handshake_timeout=5.0)
            async with connect("127.0.0.1", handle.listener.port, insecure) as conn:
                assert await conn.ping() > 0
            handle.cancel_scope.cancel()


async def test_alpn_mismatch_fails_handshake(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    client_config.alpn_protocols = ["something-else"]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            with pytest.raises(HandshakeError) as info:
                async with connect("127.0.0.1", handle.listener.port, client_config):
                    pass  # pragma: no cover
            # Refused by the server, not timed out.
            assert not isinstance(info.value, HandshakeTimeout)
            handle.cancel_scope.cancel()


async def test_handshake_timeout_when_nobody_answers(client_config: ClientConfig) -> None:
    client_config.handshake_timeout = 0.3
    # A bound socket that never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, trio.fail_after(10):
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(HandshakeTimeout):
            async with connect("127.0.0.1", silent.getsockname()[1], client_config):
                pass  # pragma: no cover


async def test_garbage_leaves_established_connection_undisturbed(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(20):
        async with connection_pair(server_config, client_config) as (client, server):
            stream = await client.open_stream()
            await stream.send_all(b"before")
            remote = await server.accept_stream()
            assert await remote.receive_some() == b"before"

            port = server.local_address[1]
            junk = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with junk:
                await junk.bind(("127.0.0.1", 0))
                rng = os.urandom
                datagrams = [
                    b"",
                    b"\x00",
                    rng(1),
                    rng(20),
                    rng(1200),
                    # Long header, truncated right after the version.
                    b"\xc0\x00\x00\x00\x01",
                    # Long header INITIAL with an unsupported version (gets a VN reply).
                    b"\xc0\x1a\x2a\x3a\x4a\x08" + rng(8) + b"\x08" + rng(8) + bytes(1200),
                    # A Version Negotiation packet: must not be answered.
                    b"\x80\x00\x00\x00\x00\x08" + rng(8) + b"\x08" + rng(8) + b"\x00\x00\x00\x01",
                    # Short header with an unknown connection ID.
                    b"\x40" + rng(8) + rng(40),
                    # Version 1 INITIAL that is too small to open a connection.
                    b"\xc0\x00\x00\x00\x01\x08" + rng(8) + b"\x08" + rng(8) + rng(100),
                    # Version 1 INITIAL, big enough, but its contents are random.
                    b"\xc0\x00\x00\x00\x01\x08" + rng(8) + b"\x08" + rng(8) + rng(1200),
                ]
                # Also random bytes behind the live connection's own connection IDs.
                for cid in list(server._host_cids):
                    datagrams.append(b"\x40" + cid + rng(60))
                for _ in range(20):
                    datagrams.extend(rng(n) for n in (3, 50, 500, 1300))
                for datagram in datagrams:
                    await junk.sendto(datagram, ("127.0.0.1", port))

                # The unknown version deserves a Version Negotiation answer (random
                # long headers may earn one too); nothing else is ever answered.
                replies = []
                with trio.fail_after(2):
                    replies.append(await junk.recv(2048))
                for _ in range(100):
                    with trio.move_on_after(0.1) as scope:
                        replies.append(await junk.recv(2048))
                    if scope.cancelled_caught:
                        break
                assert all(reply[1:5] == b"\x00\x00\x00\x00" for reply in replies)

            # The INITIAL of random bytes left no connection behind.
            assert server._endpoint.connection_count == 1

            await stream.send_all(b"after")
            assert await remote.receive_some() == b"after"
            assert await client.ping() > 0
            assert client.closed is None
            assert server.closed is None
