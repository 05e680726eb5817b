"""The resource limits of issue 8 that are configurable (docs/security.md, "Limits").

One test per limit, on the fake network under ``autojump_clock``: each checks the
documented error for the peer that goes beyond the limit, and that another
connection to the same server is served meanwhile.  The QUIC-level limits run on
every installed core (the ``core`` fixture); the session-level ones do not depend
on the core.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import trio
import trio.testing
from aioquic.quic.packet import QuicErrorCode

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed, ErrorCode, HandshakeTimeout
from quicframe.session import encode_request
from quicframe.testing import FakeNetwork
from quicframe.transport import Connection, SessionTicketStore, Stream, connect
from quicframe.transport._core import as_aioquic
from quicframe.wire import FrameType

from ..session.conftest import raw_call, read_to_end
from .conftest import (
    SERVER_HOST,
    echo_once,
    fake_connect,
    fake_server,
    first_initial,
    well_behaved_client,
)
from .test_session_abuse import (
    ECHO,
    PLAIN,
    Calls,
    assert_served,
    expect_reset,
    raw_session,
    session_server,
)

_REQUEST = encode_request(ECHO, PLAIN.encode("x"), request_id="r")


@pytest.fixture
def cored_server_config(certificate: tuple[Path, Path], core: str) -> ServerConfig:
    cert, key = certificate
    return ServerConfig(core=core, certificate=cert, private_key=key, idle_timeout=10.0)


@pytest.fixture
def cored_client_config(certificate: tuple[Path, Path], core: str) -> ClientConfig:
    cert, _ = certificate
    return ClientConfig(
        core=core, ca_file=cert, server_name="localhost", idle_timeout=10.0, handshake_timeout=5.0
    )


async def _hold_stream(connection: Connection) -> Stream:
    """Open a stream and send a byte without FIN: the server's echo keeps it open."""
    stream = await connection.open_stream()
    await stream.send_all(b"h")
    assert await stream.receive_some() == b"h"
    return stream


# -- QUIC stream limits ------------------------------------------------------------


async def test_stream_limits_are_announced_and_enforced(
    autojump_clock: trio.testing.MockClock,
    cored_server_config: ServerConfig,
    cored_client_config: ClientConfig,
    client_config: ClientConfig,
) -> None:
    # The server lets a peer have 4 bidirectional and 2 unidirectional streams
    # open at once, the client lets the server have 3 unidirectional ones; each
    # side learns the other's limits from the handshake.  A quicframe peer with
    # four streams open may open no fifth (open_stream waits for MAX_STREAMS);
    # one that opens a fifth anyway is closed with STREAM_LIMIT_ERROR, and only
    # it.
    cored_server_config.max_bidi_streams = 4
    cored_server_config.max_uni_streams = 2
    cored_client_config.max_uni_streams = 3
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=30) as network,
            fake_server(network, cored_server_config) as served,
        ):
            port = served.listener.port
            async with fake_connect(network, port, cored_client_config) as polite:
                assert polite._core.streams_allowed(False) == 4
                assert polite._core.streams_allowed(True) == 2
                assert await echo_once(polite, b"polite") == b"polite"
                (server_side,) = served.handled
                assert server_side._core.streams_allowed(True) == 3

            # A hostile client (aioquic, told to ignore the server's limit).
            async with fake_connect(network, port, client_config, "127.0.0.3") as hostile:
                held = [await _hold_stream(hostile) for _ in range(4)]
                assert hostile._core.streams_allowed(False) == 0
                # Served while the hostile client holds every stream it may.
                await well_behaved_client(network, port, cored_client_config)
                as_aioquic(hostile._core)._quic_connection._remote_max_streams_bidi = 100
                extra = await hostile.open_stream()
                await extra.send_all(b"one too many")
                with pytest.raises(ConnectionClosed) as info:
                    await read_to_end(held[0])
                assert info.value.by_peer
                assert info.value.is_transport
                assert info.value.code == QuicErrorCode.STREAM_LIMIT_ERROR
            await well_behaved_client(network, port, cored_client_config)


def test_stream_limits_are_validated() -> None:
    for value in (0, -1, 1 << 61):
        with pytest.raises(ValueError, match="max_bidi_streams"):
            ClientConfig(max_bidi_streams=value)
        with pytest.raises(ValueError, match="max_uni_streams"):
            ClientConfig(max_uni_streams=value)


# -- 0-RTT data size ---------------------------------------------------------------


async def _resume_and_send(
    network: FakeNetwork, port: int, config: ClientConfig, payload: bytes
) -> bytes:
    """Resume with 0-RTT, send ``payload`` as early data on one stream, read the echo."""
    async with fake_connect_early(network, port, config) as connection:
        assert not connection.handshake_complete  # what follows is 0-RTT data
        stream = await connection.open_stream()
        await stream.send_all(payload)
        await stream.send_eof()
        return await read_to_end(stream)


def fake_connect_early(
    network: FakeNetwork, port: int, config: ClientConfig
) -> contextlib.AbstractAsyncContextManager[Connection]:
    return connect(
        SERVER_HOST,
        port,
        config,
        local_host="127.0.0.2",
        early_data=True,
        socket_factory=network.socket_factory,
    )


async def test_early_data_beyond_the_cap_closes_that_connection(
    autojump_clock: trio.testing.MockClock,
    cored_server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # The server accepts at most 2,000 bytes of 0-RTT data per connection.  A
    # resumed client sending 1,000 early bytes is served; one sending 6,000 is
    # closed with LIMIT_EXCEEDED as soon as its handshake completes (the bytes
    # beyond the cap are dropped meanwhile).  Another client is served after.
    # The server runs on every core, the clients on aioquic.
    server_config = cored_server_config
    server_config.max_early_data = 2_000
    store = SessionTicketStore()
    client_config.session_tickets = store
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=31) as network,
            fake_server(network, server_config) as served,
        ):
            port = served.listener.port
            async with fake_connect(network, port, client_config) as first:
                assert await echo_once(first, b"ticket") == b"ticket"
                await first.ping()  # the ticket follows the handshake
            assert len(store) >= 1

            small = b"s" * 1_000
            assert await _resume_and_send(network, port, client_config, small) == small
            assert served.handled[-1].early_data_received == len(small)

            with pytest.raises(ConnectionClosed) as info:
                await _resume_and_send(network, port, client_config, b"b" * 6_000)
            assert info.value.by_peer
            assert info.value.code == ErrorCode.LIMIT_EXCEEDED
            assert "0-RTT" in info.value.reason
            refused = served.handled[-1]
            assert refused.early_data_received > 2_000
            closed = refused.closed
            assert closed is not None
            assert closed.code == ErrorCode.LIMIT_EXCEEDED
            assert not closed.by_peer

            async with fake_connect(network, port, client_config, "127.0.0.3") as other:
                assert await echo_once(other, b"other") == b"other"


# -- calls in flight per connection, from the first byte ------------------------------


async def test_calls_in_flight_count_from_the_first_byte(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # max_concurrent_calls=3: three call streams whose requests are still being
    # read use up the connection's allowance, so a fourth call is reset with
    # RESOURCE_EXHAUSTED before anything of it is read.  Another connection has
    # its own allowance; finishing a stalled request frees a place.
    calls = Calls()
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=32) as network,
            session_server(
                network, server_config, calls, max_concurrent_calls=3, request_read_timeout=60
            ) as server,
            raw_session(network, server.port, client_config) as hostile,
        ):
            stalled = []
            for _ in range(3):
                stream = await hostile.open_stream()
                await stream.send_all(_REQUEST[:5])
                stalled.append(stream)
            await hostile.ping()
            await trio.testing.wait_all_tasks_blocked()
            refused = await hostile.open_stream()
            await refused.send_all(_REQUEST)
            await refused.send_eof()
            await expect_reset(refused, ErrorCode.RESOURCE_EXHAUSTED)
            assert calls.count == 0
            assert server.statistics().calls_failed == {"RESOURCE_EXHAUSTED": 1}

            # Another connection has an allowance of its own.  (The client API
            # turns the reset into ResourceExhausted: tests/session/test_calls.py.)
            await assert_served(network, server.port, client_config)
            assert calls.count == 1

            # A stalled request completes: it runs, and its place is free again.
            await stalled[0].send_all(_REQUEST[5:])
            await stalled[0].send_eof()
            reply = await read_to_end(stalled[0])
            assert reply
            assert (await raw_call(hostile, _REQUEST)).type == FrameType.RESPONSE
            assert calls.count == 3
            assert hostile.closed is None
            for stream in stalled[1:]:
                stream.reset(ErrorCode.CANCELLED)


# -- the request read timeout ------------------------------------------------------------


async def test_a_request_that_never_arrives_is_cut_off_at_the_read_timeout(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # request_read_timeout=2: a call stream that sends its first bytes and then
    # nothing, and one that trickles a byte every 0.5 s, are both reset with
    # LIMIT_EXCEEDED 2 s after they started; neither runs a handler nor keeps a
    # place among the calls in flight, and the connection itself is not harmed.
    calls = Calls()
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=34) as network,
            session_server(network, server_config, calls, request_read_timeout=2.0) as server,
            raw_session(network, server.port, client_config) as hostile,
        ):
            started = trio.current_time()
            silent = await hostile.open_stream()
            await silent.send_all(_REQUEST[:5])
            trickled = await hostile.open_stream()

            async def trickle() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    for index in range(len(_REQUEST) - 1):
                        await trickled.send_all(_REQUEST[index : index + 1])
                        await trio.sleep(0.5)  # the trickle's pace, not a wait

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                await assert_served(network, server.port, client_config)
                await expect_reset(silent, ErrorCode.LIMIT_EXCEEDED)
                assert 1.99 <= trio.current_time() - started < 3.0
                await expect_reset(trickled, ErrorCode.LIMIT_EXCEEDED)
                nursery.cancel_scope.cancel()
            assert calls.count == 1
            (session,) = [
                s
                for s in server._sessions
                if s.connection.remote_address[1] == hostile.local_address[1]
            ]
            assert session._calls_open == 0
            assert server.statistics().calls_failed == {"LIMIT_EXCEEDED": 2}
            # The same connection goes on making calls.
            assert (await raw_call(hostile, _REQUEST)).type == FrameType.RESPONSE
            assert hostile.closed is None


# -- handshakes in progress per source address -----------------------------------------


async def test_handshakes_in_progress_per_address(
    autojump_clock: trio.testing.MockClock,
    cored_server_config: ServerConfig,
    cored_client_config: ClientConfig,
) -> None:
    # One source address sends INITIALs and never another byte: with
    # max_handshakes_per_address=2 it holds two handshake slots, its further
    # INITIALs are dropped (a real client from there times out), while a client
    # from another address connects at once.  Once the stalled handshakes time
    # out (min(idle_timeout, 30 s) = 5 s), the address may connect again.
    cored_server_config.max_handshakes_per_address = 2
    cored_server_config.idle_timeout = 5.0
    cored_client_config.handshake_timeout = 1.0
    crowded = "127.0.4.1"
    with trio.fail_after(60), contextlib.ExitStack() as stack:
        async with (
            FakeNetwork(seed=35) as network,
            fake_server(network, cored_server_config) as served,
        ):
            port = served.listener.port
            started = trio.current_time()
            for _ in range(4):
                sock = stack.enter_context(network.socket())
                sock.bind((crowded, 0))
                sock.sendto(first_initial(port, trio.current_time()), (SERVER_HOST, port))
            await trio.testing.wait_all_tasks_blocked()
            assert served.listener.connection_count == 2
            assert served.listener.statistics().datagrams_dropped >= 2

            with pytest.raises(HandshakeTimeout):
                async with fake_connect(network, port, cored_client_config, crowded):
                    pytest.fail("admitted beyond the per-address limit")  # pragma: no cover
            await well_behaved_client(network, port, cored_client_config)

            # The stalled handshakes time out and free the address's slots: a
            # patient client from there is admitted then, not sooner.
            patient = dataclasses.replace(cored_client_config, handshake_timeout=15.0)
            async with fake_connect(network, port, patient, crowded) as late:
                assert trio.current_time() - started >= 5.0
                assert await echo_once(late, b"late") == b"late"
                assert served.listener.connection_count == 1


async def test_the_other_limits_are_validated(server_config: ServerConfig) -> None:
    cert, key = server_config.certificate, server_config.private_key
    with pytest.raises(ValueError, match="max_handshakes_per_address"):
        ServerConfig(certificate=cert, private_key=key, max_handshakes_per_address=0)
    with pytest.raises(ValueError, match="max_early_data"):
        ServerConfig(certificate=cert, private_key=key, max_early_data=-1)
    with pytest.raises(ValueError, match="request_read_timeout"):
        await quicframe.serve(
            quicframe.Router(), SERVER_HOST, 0, server_config, request_read_timeout=0
        )
