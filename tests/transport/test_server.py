"""serve() and connect() behaviour: limits, handlers, shutdown, options, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed, ErrorCode, HandshakeTimeout
from quicframe.transport import Connection, connect

from .conftest import echo_handler, start_server
from .test_streams import connection_pair, stream_pair


async def test_connect_raises_body_exception_bare(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            with pytest.raises(KeyError, match="mine"):
                async with connect("127.0.0.1", handle.listener.port, client_config):
                    raise KeyError("mine")
            handle.cancel_scope.cancel()


async def test_connections_per_address_limit(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.max_connections_per_address = 1
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config)
            port = handle.listener.port
            async with connect("127.0.0.1", port, client_config) as first:
                assert await first.ping() > 0
                assert handle.listener.connection_count == 1
                client_config.handshake_timeout = 0.3
                with pytest.raises(HandshakeTimeout):
                    async with connect("127.0.0.1", port, client_config):
                        pass  # pragma: no cover
            handle.cancel_scope.cancel()


async def test_handler_error_closes_only_its_connection(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        if await stream.receive_some() == b"boom":
            raise RuntimeError("handler bug")
        await stream.send_all(b"fine")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            port = handle.listener.port
            async with connect("127.0.0.1", port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"boom")
                with pytest.raises(ConnectionClosed) as info:
                    await conn.accept_stream()
                assert info.value.by_peer
                assert info.value.code == ErrorCode.INTERNAL
            async with connect("127.0.0.1", port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"hello")
                assert await stream.receive_some() == b"fine"
            handle.cancel_scope.cancel()


async def test_server_shutdown_closes_connections_with_going_away(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                await conn.ping()
                handle.cancel_scope.cancel()
                with pytest.raises(ConnectionClosed) as info:
                    await conn.accept_stream()
                assert info.value.by_peer
                assert info.value.code == ErrorCode.GOING_AWAY


async def test_the_peers_close_is_reported_without_waiting_for_the_draining_period(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """A reader learns of the peer's CONNECTION_CLOSE as soon as it arrives, while the
    core still drains (three probe timeouts), and after the data sent before it."""

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        await stream.receive_some()
        await stream.send_all(b"last words")
        await connection.aclose(ErrorCode.GOING_AWAY, "bye", graceful=True)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"hello")
                assert await stream.receive_some() == b"last words"
                with pytest.raises(ConnectionClosed) as info:
                    await stream.receive_some()
                assert info.value.by_peer
                assert info.value.code == ErrorCode.GOING_AWAY
                assert info.value.reason == "bye"
                assert conn._core.is_draining()  # reported before the core terminated
            handle.cancel_scope.cancel()


@pytest.mark.aioquic_only("qh3 cannot select a congestion controller")
async def test_cubic_qlog_and_keylog(
    server_config: ServerConfig, client_config: ClientConfig, tmp_path: Path
) -> None:
    qlog_dir = tmp_path / "qlog"
    qlog_dir.mkdir()
    keylog = tmp_path / "keys.log"
    client_config.congestion_control = "cubic"
    client_config.qlog_dir = qlog_dir
    client_config.secrets_log_file = keylog
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"x" * 10_000)
                await stream.send_eof()
                received = 0
                while chunk := await stream.receive_some():
                    received += len(chunk)
                assert received == 10_000
            handle.cancel_scope.cancel()
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keylog.read_text()
    # aioquic writes the qlog trace when the connection ends; ours was cancelled
    # out of its closing period, so only check the logger did not get in the way.
    assert qlog_dir.is_dir()


async def test_stream_statistics_and_connection_buffered_bytes(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            await local.send_all(b"abc")
            await client.ping()  # the data is delivered before the PING is acknowledged
            assert remote.statistics().receive_buffered == 3
            assert server.statistics().bytes_buffered >= 3
            assert server.statistics().streams_open == 1
            assert await remote.receive_some() == b"abc"
            assert remote.statistics().bytes_received == 4  # with the marker byte
            assert local.statistics().bytes_sent == 4


async def test_small_writes_of_one_tick_coalesce(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            streams = [await client.open_stream() for _ in range(4)]
            calls: list[tuple[int, int]] = []
            quic = client._quic
            original = quic.send_stream_data

            def counting(stream_id: int, data: bytes, end_stream: bool = False) -> None:
                calls.append((stream_id, len(data)))
                original(stream_id, data, end_stream)

            quic.send_stream_data = counting  # type: ignore[method-assign]

            go = trio.Event()

            async def writer(index: int) -> None:
                await go.wait()
                streams[index % 4].send_nowait(b"y" * 5)
                if index == 0:
                    # A burst of synchronous writes from one task.
                    for _ in range(10):
                        streams[0].send_nowait(b"z" * 5)

            # 40 writers, 10 per stream, all woken in the same scheduling tick: the
            # driver, woken by the first write, runs after all of them.
            async with trio.open_nursery() as nursery:
                for index in range(40):
                    nursery.start_soon(writer, index)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
            await client.ping()
            quic.send_stream_data = original  # type: ignore[method-assign]
            expected = {s.stream_id: 50 for s in streams}
            expected[streams[0].stream_id] = 100
            assert sorted(calls) == sorted(expected.items())
            for _ in streams:
                remote = await server.accept_stream()
                received = 0
                for _ in range(100):
                    received += len(await remote.receive_some())
                    if received == expected[remote.stream_id]:
                        break
                assert received == expected[remote.stream_id]


async def test_writes_to_many_streams_in_one_tick_leave_in_slices(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # With many streams written in one scheduling tick, the writer that adds a
    # stream past the eager-flush threshold sends the queued ones itself, so the
    # peer can start on them while the rest are still being written.
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            streams = [await client.open_stream() for _ in range(40)]
            sent_before = client.statistics().packets_sent
            sent_at: list[int] = []
            for index, stream in enumerate(streams):  # no checkpoint in this loop
                stream.send_nowait(b"%02d" % index)
                sent_at.append(client.statistics().packets_sent - sent_before)
            # Nothing left before the 17th stream; the 17th and 33rd flushed the others.
            assert sent_at[:16] == [0] * 16
            assert 0 < sent_at[16] == sent_at[31] < sent_at[32]
            for stream in streams:
                await stream.send_eof()
            received: dict[int, bytes] = {}
            for _ in streams:
                remote = await server.accept_stream()
                data = b""
                while chunk := await remote.receive_some():
                    data += chunk
                received[remote.stream_id] = data
            assert received == {s.stream_id: b"%02d" % i for i, s in enumerate(streams)}


async def test_listener_dials_from_its_own_socket(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            echo = await start_server(nursery, server_config, echo_handler)
            dialler = await start_server(nursery, server_config)
            async with dialler.listener.connect(
                "127.0.0.1", echo.listener.port, client_config
            ) as conn:
                # The echo server sees the dialling listener's own port.
                assert conn.local_address[1] == dialler.listener.port
                stream = await conn.open_stream()
                await stream.send_all(b"peer to peer")
                await stream.send_eof()
                assert await stream.receive_some() == b"peer to peer"
                with pytest.raises(RuntimeError):
                    await conn.migrate()
            echo.cancel_scope.cancel()
            dialler.cancel_scope.cancel()
