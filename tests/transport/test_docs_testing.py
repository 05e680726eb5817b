"""The examples of docs/testing.md, run as tests.

Every ``python`` block of the guide must appear, character for character, in this
file (``test_the_guide_shows_this_file``), so the guide cannot drift from code that
runs.  The fixtures below shadow the package's conftest fixtures of the same name
on purpose: the guide shows a user's own, minimal versions.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import (
    ChaosProxy,
    FakeNetwork,
    LinkPolicy,
    LinkStatistics,
    write_self_signed_certificate,
)
from quicframe.transport import Connection, Listener, Stream, connect, serve

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_the_guide_shows_this_file() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    source = Path(__file__).read_text(encoding="utf-8")
    blocks = [part.split("```", 1)[0] for part in guide.split("```python\n")[1:]]
    assert len(blocks) >= 6
    for block in blocks:
        assert block.strip() in source, f"docs/testing.md shows code this file lacks:\n{block}"


# -- the guide's examples, in its order ----------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway certificate for "localhost", 127.0.0.1 and ::1, and its key."""
    return write_self_signed_certificate(tmp_path_factory.mktemp("certificate"))


@pytest.fixture
def server_config(certificate: tuple[Path, Path]) -> ServerConfig:
    cert, key = certificate
    return ServerConfig(certificate=cert, private_key=key)


@pytest.fixture
def client_config(certificate: tuple[Path, Path]) -> ClientConfig:
    cert, _ = certificate
    return ClientConfig(ca_file=cert, server_name="localhost")


async def echo(connection: Connection) -> None:
    """The server under test: echo every stream back."""

    async def echo_stream(stream: Stream) -> None:
        async with stream:
            async for chunk in stream:
                await stream.send_all(chunk)
            await stream.send_eof()

    await connection.serve_streams(echo_stream)


async def exchange(connection: Connection, payload: bytes) -> bytes:
    """Send ``payload`` on a new stream while reading the echo back."""
    stream = await connection.open_stream()
    received = bytearray()

    async def send() -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        async for chunk in stream:
            received += chunk
    await stream.aclose()
    return bytes(received)


async def test_echo_over_a_lossy_fake_network(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    policy = LinkPolicy(loss=0.05, reorder=0.05, delay=0.02, jitter=0.005)
    payload = bytes(range(256)) * 1024  # 256 KiB
    # Trio's clock: under autojump_clock this deadline costs no wall-clock time.
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=1, policy=policy) as network,
            trio.open_nursery() as nursery,
        ):
            listener: Listener = await nursery.start(
                functools.partial(
                    serve,
                    "127.0.0.1",
                    0,
                    server_config,
                    echo,
                    socket_factory=network.socket_factory,
                )
            )
            async with connect(
                "127.0.0.1",
                listener.port,
                client_config,
                local_host="127.0.0.2",
                socket_factory=network.socket_factory,
            ) as connection:
                assert await exchange(connection, payload) == payload
            nursery.cancel_scope.cancel()
    statistics: LinkStatistics = network.statistics()
    assert statistics.dropped_loss > 0
    assert statistics.reordered > 0


async def test_blackhole_and_nat_rebinding(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=2) as network,
            trio.open_nursery() as nursery,
        ):
            # Only the client's uplink is slow and lossy; the rest keeps the default.
            network.set_policy(
                LinkPolicy(loss=0.1, delay=0.05), source="127.0.0.2", destination="127.0.0.1"
            )
            listener: Listener = await nursery.start(
                functools.partial(
                    serve,
                    "127.0.0.1",
                    0,
                    server_config,
                    echo,
                    socket_factory=network.socket_factory,
                )
            )
            async with connect(
                "127.0.0.1",
                listener.port,
                client_config,
                local_host="127.0.0.2",
                socket_factory=network.socket_factory,
            ) as connection:
                # Cut the path both ways for two seconds; the connection rides it out.
                network.blackhole(2.0)
                assert await exchange(connection, b"through the blackhole") == (
                    b"through the blackhole"
                )
                # A NAT forgets the client's mapping: the server follows the new port.
                network.rebind(connection.local_address)
                assert await exchange(connection, b"from a new port") == b"from a new port"
            nursery.cancel_scope.cancel()
    uplink = network.statistics(source="127.0.0.2", destination="127.0.0.1")
    downlink = network.statistics(source="127.0.0.1", destination="127.0.0.2")
    assert uplink.dropped_loss > 0
    assert uplink.dropped_blackhole > 0
    assert downlink.dropped_loss == 0
    assert (uplink + downlink).dropped == network.statistics().dropped


async def test_echo_through_a_chaos_proxy(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # Real sockets and the real clock: no autojump_clock with the proxy.
    payload = b"x" * 500_000
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listener: Listener = await nursery.start(serve, "127.0.0.1", 0, server_config, echo)
            async with ChaosProxy(
                ("127.0.0.1", listener.port),
                to_server=LinkPolicy(loss=0.02, duplicate=0.01),
                to_client=LinkPolicy(delay=0.005, bandwidth=5_000_000, queue_bytes=128 * 1024),
                seed=3,
            ) as proxy:
                async with connect("127.0.0.1", proxy.port, client_config) as connection:
                    assert await exchange(connection, payload) == payload
                statistics = proxy.statistics()
            nursery.cancel_scope.cancel()
    assert statistics.clients == 1
    assert statistics.to_server.dropped_loss > 0
    assert statistics.to_client.bytes_forwarded > len(payload)


async def test_fake_sockets_on_their_own(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with FakeNetwork(policy=LinkPolicy(delay=0.1)) as network:
            with network.socket() as a, network.socket() as b:
                a.bind(("127.0.0.1", 0))
                b.bind(("127.0.0.1", 0))
                sent_at = trio.current_time()
                a.sendto(b"ping", b.getsockname())
                await trio.lowlevel.wait_readable(b)
                data, source = b.recvfrom(2048)
                assert data == b"ping"
                assert source == a.getsockname()
                assert trio.current_time() - sent_at >= 0.1  # the link's delay, in trio time
