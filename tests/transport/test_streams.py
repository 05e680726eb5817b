"""Streams over one loopback connection: trio's generic stream checks, bulk data,
backpressure, flow control and resets."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import StreamReset
from quicframe.transport import Connection, Stream, StreamResetByPeer, connect

from .conftest import CertFiles, echo_handler, start_server


@asynccontextmanager
async def connection_pair(
    server_config: ServerConfig, client_config: ClientConfig, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[Connection, Connection]]:
    """A client connection and the server's side of it."""
    async with trio.open_nursery() as nursery:
        handle = await start_server(nursery, server_config, host=host)
        async with connect(host, handle.listener.port, client_config) as client:
            # The server runs the handler once its side of the handshake is done,
            # which can be just after the client's; a ping round trip orders them.
            await client.ping()
            while not handle.connections:
                await trio.testing.wait_all_tasks_blocked()
            yield client, handle.connections[0]
        handle.cancel_scope.cancel()


async def stream_pair(client: Connection, server: Connection) -> tuple[Stream, Stream]:
    """A client-opened stream and the server's end of it (one marker byte sent first)."""
    local = await client.open_stream()
    await local.send_all(b"!")
    remote = await server.accept_stream()
    assert await remote.receive_some(1) == b"!"
    return local, remote


async def receive_until_error(stream: Stream) -> None:
    for _ in range(10_000):
        await stream.receive_some()
    raise AssertionError("receive_some never failed")


async def send_until_error(stream: Stream) -> None:
    for _ in range(10_000):
        await stream.send_all(b"data")
    raise AssertionError("send_all never failed")


async def test_check_half_closeable_stream(
    server_config: ServerConfig, client_config: ClientConfig, cert_files: CertFiles
) -> None:
    # The clogged pair lives on its own connection with a 1-byte high-water mark
    # and the smallest receive window: writing one window plus a little in each
    # direction leaves bytes the peer has no credit for, so send_all blocks until
    # the other side reads.
    window = 1024
    tight_server = ServerConfig(
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        stream_high_water_mark=1,
        stream_receive_window=window,
    )
    tight_client = ClientConfig(
        ca_file=cert_files.certificate,
        server_name="localhost",
        stream_high_water_mark=1,
        stream_receive_window=window,
    )
    with trio.fail_after(60):
        async with (
            connection_pair(server_config, client_config) as (client, server),
            connection_pair(tight_server, tight_client) as (tight_c, tight_s),
        ):

            async def maker() -> tuple[Stream, Stream]:
                return await stream_pair(client, server)

            async def clogged_maker() -> tuple[Stream, Stream]:
                local, remote = await stream_pair(tight_c, tight_s)
                local.send_nowait(b"c" * (window + 2))
                remote.send_nowait(b"s" * (window + 2))
                return local, remote

            await trio.testing.check_half_closeable_stream(maker, clogged_maker)


async def test_send_nowait_with_eof_queues_the_data_and_the_fin(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            local.send_nowait(b"request", eof=True)
            with pytest.raises(trio.ClosedResourceError):
                local.send_nowait(b"more")
            received = bytearray()
            while chunk := await remote.receive_some():
                received += chunk
            assert received == b"request"
            assert remote.receive_finished


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_echo_ipv4_and_ipv6(
    host: str, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler, host=host)
            async with connect(host, handle.listener.port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"ping over " + host.encode())
                await stream.send_eof()
                received = bytearray()
                while chunk := await stream.receive_some():
                    received += chunk
                assert received == b"ping over " + host.encode()
            handle.cancel_scope.cancel()


async def test_thousand_streams_on_one_connection(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                results: dict[int, bytes] = {}
                limiter = trio.CapacityLimiter(100)

                async def one(i: int) -> None:
                    async with limiter:
                        stream = await conn.open_stream()
                        payload = i.to_bytes(4, "big") * 4
                        await stream.send_all(payload)
                        await stream.send_eof()
                        received = bytearray()
                        while chunk := await stream.receive_some():
                            received += chunk
                        results[i] = bytes(received)
                        await stream.aclose()

                async with trio.open_nursery() as streams:
                    for i in range(1000):
                        streams.start_soon(one, i)
            assert len(results) == 1000
            assert all(results[i] == i.to_bytes(4, "big") * 4 for i in range(1000))
            handle.cancel_scope.cancel()


async def test_eight_mib_transfer_intact(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    payload = random.Random(8).randbytes(8 * 1024 * 1024)
    with trio.fail_after(60):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            digest = hashlib.sha256()

            async def send() -> None:
                view = memoryview(payload)
                for offset in range(0, len(payload), 100_000):
                    await local.send_all(view[offset : offset + 100_000])
                await local.send_eof()

            async def receive() -> None:
                while chunk := await remote.receive_some(1 << 20):
                    digest.update(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                nursery.start_soon(receive)
            assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.aioquic_only("qh3 grants receive credit as data arrives, not as it is read")
async def test_stalled_reader_bounds_sender(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    window = 64 * 1024
    high_water = 32 * 1024
    chunk = 16 * 1024
    server_config.stream_receive_window = window
    client_config.stream_high_water_mark = high_water
    total = 2 * 1024 * 1024
    with trio.fail_after(60):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            sent = 0

            async def send() -> None:
                nonlocal sent
                for _ in range(total // chunk):
                    await local.send_all(b"x" * chunk)
                    sent += chunk
                await local.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                # Everyone blocked for a while: the sender is parked on backpressure.
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                # The peer may run ahead of the reader by one window, the sender may
                # hold its high-water mark plus one write, plus a credit step of slack.
                assert sent < total
                assert sent <= window + window // 4 + high_water + chunk
                assert remote.statistics().receive_buffered <= window
                assert local.statistics().send_buffered <= high_water + chunk
                received = 1  # the marker byte
                while data := await remote.receive_some():
                    received += len(data)
                assert received == total + 1


async def test_peer_reset_raises_stream_reset_with_code(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            local.reset(0x1234)
            with pytest.raises(StreamReset) as info:
                await receive_until_error(remote)
            assert info.value.code == 0x1234
            assert info.value.stream_id == local.stream_id
            assert not info.value.stop_sending

            # STOP_SENDING from the reader: the writer's send_all fails with the code.
            local2, remote2 = await stream_pair(client, server)
            remote2.stop_sending(0x77)
            with pytest.raises(StreamResetByPeer) as info2:
                await send_until_error(local2)
            assert info2.value.code == 0x77
            assert info2.value.stop_sending


async def test_migrate_mid_transfer_keeps_stream_intact(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    payload = random.Random(6).randbytes(2 * 1024 * 1024)
    with trio.fail_after(60):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            old_client_port = client.local_address[1]
            assert server.remote_address[1] == old_client_port
            digest = hashlib.sha256()
            halfway = trio.Event()

            async def send() -> None:
                view = memoryview(payload)
                for offset in range(0, len(payload), 64 * 1024):
                    await local.send_all(view[offset : offset + 64 * 1024])
                    if offset >= len(payload) // 2:
                        halfway.set()
                await local.send_eof()

            async def receive() -> None:
                while chunk := await remote.receive_some(1 << 20):
                    digest.update(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                nursery.start_soon(receive)
                await halfway.wait()
                await client.migrate()
            assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
            assert client.local_address[1] != old_client_port
            await client.ping()
            assert server.remote_address[1] == client.local_address[1]
            with pytest.raises(RuntimeError):
                await server.migrate()


@pytest.mark.aioquic_only("qh3 discards finished streams itself: unaccepted ones are unbounded")
async def test_unaccepted_peer_streams_are_bounded(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(30):
        async with connection_pair(server_config, client_config) as (client, server):
            opened = 0

            async def open_many() -> None:
                nonlocal opened
                for _ in range(300):
                    stream = await client.open_stream(unidirectional=True)
                    opened += 1
                    await stream.send_all(b"u")
                    await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_many)
                # Nobody accepts: the peer stays within the stream limit the server
                # advertised at first (128), however long it tries; the client's
                # open_stream() waits for more (nothing piles up in its core either).
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                assert len(server._incoming) <= 128
                assert opened == 128
                for _ in range(300):
                    remote = await server.accept_stream()
                    assert await remote.receive_some() == b"u"
                    assert await remote.receive_some() == b""
            assert opened == 300
