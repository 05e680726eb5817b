"""Abuse of the transport, on the fake network under autojump_clock.

Each test runs the abuse next to a well-behaved client and checks that client is
served, besides checking that the abuser is contained.  Where a test needs time
to pass (a handshake timeout, the server's retransmissions) it observes a window
of *virtual* time: it asserts what did not happen in it, it does not wait for an
event with a sleep.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import trio
import trio.testing
from aioquic._buffer import Buffer  # the C buffer; aioquic.buffer re-exports it
from aioquic.quic.packet import pull_quic_header

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import HandshakeError
from quicframe.testing import FakeNetwork, FakeSocket
from quicframe.transport import Connection, Stream

from .conftest import (
    SERVER_HOST,
    Served,
    echo_once,
    fake_connect,
    fake_server,
    first_initial,
    well_behaved_client,
)


def _is_version_negotiation(reply: bytes) -> bool:
    return len(reply) >= 5 and bool(reply[0] & 0x80) and reply[1:5] == bytes(4)


async def test_garbage_and_truncated_datagrams_from_many_sources(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # tests/transport/test_connection.py checks the same on real loopback from one
    # socket; here the garbage comes from 32 addresses, and includes real INITIALs
    # cut short or damaged.
    rng = random.Random(8)
    with trio.fail_after(60), contextlib.ExitStack() as stack:
        async with (
            FakeNetwork(seed=8) as network,
            fake_server(network, server_config) as served,
        ):
            port = served.listener.port
            async with fake_connect(network, port, client_config) as established:
                assert await echo_once(established, b"before") == b"before"
                initial = first_initial(port, trio.current_time())
                # The INITIAL packet itself; zero padding follows it in the datagram.
                packet_length = pull_quic_header(Buffer(data=initial), 8).packet_length
                sources = []
                for index in range(32):
                    sock = stack.enter_context(network.socket())
                    sock.bind((f"127.0.1.{index + 1}", 0))
                    sources.append(sock)
                    damaged = bytearray(initial)
                    for _ in range(4):
                        damaged[rng.randrange(40, packet_length)] ^= 1 << rng.randrange(8)
                    datagrams = [
                        b"",
                        rng.randbytes(1),
                        rng.randbytes(20),
                        rng.randbytes(1200),
                        rng.randbytes(1500),
                        initial[: rng.randrange(1, 40)],  # a truncated long header
                        initial[: rng.randrange(40, 1200)],  # an INITIAL below 1,200 bytes
                        bytes(damaged),  # decrypts to nothing: no state may stay behind
                        b"\x40" + rng.randbytes(60),  # a short header, unknown CID
                    ]
                    for datagram in datagrams:
                        sock.sendto(datagram, (SERVER_HOST, port))
                # The established connection carries on; the garbage left no state.
                assert await echo_once(established, b"after") == b"after"
                assert served.listener.connection_count == 1
                # A new client is served too.
                await well_behaved_client(network, port, client_config)
                assert established.closed is None
            statistics = served.listener.statistics()
            # Only the two real clients reached the handler.
            assert len(served.handled) == 2
            assert statistics.datagrams_dropped >= 32 * 6
            # Garbage is never answered, except by Version Negotiation.
            replies = 0
            for sock in sources:
                while sock.queued:
                    reply, _ = sock.recvfrom(65536)
                    assert _is_version_negotiation(reply)
                    replies += 1
            assert replies < 32 * 3


async def test_slow_loris_handshakes_are_bounded_by_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # Four peers send their first INITIAL and never another byte: they hold every
    # handshake slot (max_handshakes=4) until the server's handshake timeout,
    # min(idle_timeout, 30 s) = 5 s.  An established client is served throughout,
    # and a new client gets in once the slots free up, within its own timeout.
    server_config.max_handshakes = 4
    server_config.idle_timeout = 5.0
    client_config.keepalive_interval = 1.0
    client_config.handshake_timeout = 15.0
    with trio.fail_after(60), contextlib.ExitStack() as stack:
        async with (
            FakeNetwork(seed=9) as network,
            fake_server(network, server_config) as served,
        ):
            port = served.listener.port
            async with fake_connect(network, port, client_config) as established:
                # A round trip first, so that the server's side of the handshake is
                # complete too and the four slots are free.
                assert await echo_once(established, b"first") == b"first"
                started = trio.current_time()
                for index in range(4):
                    sock = stack.enter_context(network.socket())
                    sock.bind((f"127.0.2.{index + 1}", 0))
                    sock.sendto(first_initial(port, trio.current_time()), (SERVER_HOST, port))
                # Served meanwhile: the handshaking peers cost an established client nothing.
                for index in range(5):
                    assert await echo_once(established, b"%d" % index) == b"%d" % index
                assert served.listener.connection_count == 5
                # A newcomer is held off while every slot is taken, then admitted.
                async with fake_connect(network, port, client_config, "127.0.0.3") as newcomer:
                    waited = trio.current_time() - started
                    assert await echo_once(newcomer, b"late but served") == b"late but served"
                    # The stalled handshakes are gone: only the two real clients remain.
                    assert served.listener.connection_count == 2
                assert waited >= 5.0  # the handshake timeout freed the slots, nothing sooner
                assert await echo_once(established, b"still here") == b"still here"
            assert len(served.handled) == 2


_VICTIMS = [f"127.0.3.{index + 1}" for index in range(48)]


async def _flood(
    network: FakeNetwork, served: Served, client_config: ClientConfig, retry: bool
) -> list[FakeSocket]:
    """48 INITIALs carrying the source addresses of 48 victims, who never answer,
    with a real client connecting right behind them."""
    port = served.listener.port
    sockets = []
    for victim in _VICTIMS:
        sock = network.socket()
        sock.bind((victim, 0))
        sock.sendto(first_initial(port, trio.current_time()), (SERVER_HOST, port))
        sockets.append(sock)
    async with fake_connect(network, port, client_config) as connection:
        assert await echo_once(connection, b"served") == b"served"
        # With Retry the flood created no state; without, each INITIAL holds a
        # handshake until the handshake timeout.
        expected = 1 if retry else 1 + len(_VICTIMS)
        assert served.listener.connection_count == expected
    return sockets


def _amplification(network: FakeNetwork) -> list[tuple[int, int]]:
    """(bytes received from, bytes sent to) each victim."""
    out = []
    for victim in _VICTIMS:
        received = network.statistics(source=victim, destination=SERVER_HOST).bytes_forwarded
        sent = network.statistics(source=SERVER_HOST, destination=victim).bytes_forwarded
        out.append((received, sent))
    return out


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
async def test_spoofed_initial_flood_stays_within_the_amplification_limit(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
    retry: bool,
) -> None:
    # The server may send an unvalidated address at most three times what it
    # received from it (RFC 9000 section 8.1); with Retry it sends one small Retry
    # packet per INITIAL and keeps no state.  Real clients are served throughout.
    server_config.retry = retry
    server_config.idle_timeout = 5.0  # the server's handshake timeout
    with trio.fail_after(60), contextlib.ExitStack() as sockets:
        async with (
            FakeNetwork(seed=10) as network,
            fake_server(network, server_config) as served,
        ):
            for sock in await _flood(network, served, client_config, retry):
                sockets.enter_context(sock)
            # Observe most of the handshake window (virtual time): the server's
            # retransmissions (PTO) to the victims must stay within the limit too.
            await trio.sleep(server_config.idle_timeout - 0.5)
            for received, sent in _amplification(network):
                assert received >= 1200
                assert 0 < sent <= 3 * received
            # Past the handshake timeout the flood has left nothing behind.
            await trio.sleep(1.0)
            assert served.listener.connection_count == 0
            await well_behaved_client(network, served.listener.port, client_config)
            statistics = served.listener.statistics()
            assert len(served.handled) == 2
        if retry:
            assert statistics.retries_sent == len(_VICTIMS) + 2  # and the two real clients
            for received, sent in _amplification(network):
                assert sent <= 3 * received
            for victim in _VICTIMS:
                assert network.statistics(source=SERVER_HOST, destination=victim).packets == 1


async def test_dropping_a_spoofed_handshake_stays_within_the_amplification_limit(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # The same flood without Retry, checked over the whole handshake window: when
    # the handshake timeout drops a connection, the close it sends must fit too.
    server_config.idle_timeout = 5.0
    with trio.fail_after(60), contextlib.ExitStack() as sockets:
        async with (
            FakeNetwork(seed=10) as network,
            fake_server(network, server_config) as served,
        ):
            for sock in await _flood(network, served, client_config, retry=False):
                sockets.enter_context(sock)
            await trio.sleep(server_config.idle_timeout + 1.0)
            assert served.listener.connection_count == 0
        for received, sent in _amplification(network):
            assert sent <= 3 * received


async def test_a_peer_that_never_reads_is_held_by_flow_control(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # A stream whose request is "flood" is answered with an endless stream; the
    # client never reads it.  The client's receive window (1 MiB) and the server's
    # send high-water mark (256 KiB) must stop the server's writer: it cannot get
    # more than the two ahead, and its buffered bytes stay near the high-water
    # mark.  Other streams of the same connection and other clients carry on.
    chunk = b"z" * 16384
    written = 0

    async def handler(connection: Connection) -> None:
        async def one(stream: Stream) -> None:
            nonlocal written
            request = await stream.receive_some()
            if request == b"flood":
                while True:
                    await stream.send_all(chunk)
                    written += len(chunk)
            async with stream:
                await stream.send_all(request)
                async for data in stream:
                    await stream.send_all(data)
                await stream.send_eof()

        await connection.serve_streams(one)

    window = client_config.stream_receive_window
    high_water = server_config.stream_high_water_mark
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=11) as network,
            fake_server(network, server_config, handler) as served,
        ):
            port = served.listener.port
            async with fake_connect(network, port, client_config, "127.0.0.4") as sink:
                stuck = await sink.open_stream()
                await stuck.send_all(b"flood")
                # Observe 3 s of virtual time in which nobody reads the flood.
                await trio.sleep(3)
                stalled_at = written
                buffered = served.handled[0].statistics().bytes_buffered
                # The same connection's other streams still flow (per-stream credit)...
                assert await echo_once(sink, b"other stream") == b"other stream"
                # ...and another client is served.
                await well_behaved_client(network, port, client_config)
                await trio.sleep(3)
                assert written == stalled_at  # no progress without reads
                assert sink.closed is None  # held by flow control, not closed
                # Reading releases the writer.
                received = 0
                while received <= window:
                    received += len(await stuck.receive_some())
                await trio.sleep(1)
                assert written > stalled_at
                stuck.reset()
            assert window < stalled_at <= window + high_water + 2 * len(chunk)
            assert buffered <= high_water + len(chunk)


async def test_tls_failures_give_clear_errors_and_leave_the_server_serving(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    untrusted = ClientConfig(server_name="localhost", handshake_timeout=5.0)  # no ca_file
    wrong_name = ClientConfig(
        ca_file=client_config.ca_file, server_name="wrong.example", handshake_timeout=5.0
    )
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=13) as network,
            fake_server(network, server_config) as served,
        ):
            port = served.listener.port
            messages = []
            for index, config in enumerate((untrusted, wrong_name)):
                with pytest.raises(HandshakeError) as info:
                    async with fake_connect(network, port, config, f"127.0.0.{10 + index}"):
                        pytest.fail("the handshake must fail")  # pragma: no cover
                messages.append(str(info.value))
            assert "certificate" in messages[0]
            assert "wrong.example" in messages[1]
            assert all("CRYPTO_ERROR" in message for message in messages)
            await well_behaved_client(network, port, client_config)
            assert len(served.handled) == 1  # the failed handshakes never reached it
