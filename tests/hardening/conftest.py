"""Fixtures and helpers for the abuse tests (see docs/security.md for the list).

Every test runs on the in-memory fake network under ``autojump_clock``
(deterministic, virtual time), has a deadline on trio's clock, and checks that a
well-behaved client is served while the abuse goes on, not only that the abuser
is stopped.  Replayed 0-RTT is covered here by ``test_replay.py`` (a resuming
client's recorded datagrams re-sent from another address) and, for a ticket used
twice, by
``tests/transport/test_resumption.py::test_resumption_early_data_and_replay``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed
from quicframe.testing import FakeNetwork, write_self_signed_certificate
from quicframe.transport import Connection, Listener, Stream, connect, serve

SERVER_HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.2"  # the well-behaved client


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed_certificate(tmp_path_factory.mktemp("hardening-certificate"))


@pytest.fixture
def server_config(certificate: tuple[Path, Path]) -> ServerConfig:
    cert, key = certificate
    return ServerConfig(certificate=cert, private_key=key, idle_timeout=10.0)


@pytest.fixture
def client_config(certificate: tuple[Path, Path]) -> ClientConfig:
    cert, _ = certificate
    return ClientConfig(
        ca_file=cert, server_name="localhost", idle_timeout=10.0, handshake_timeout=5.0
    )


async def echo_stream(stream: Stream) -> None:
    try:
        async with stream:
            async for chunk in stream:
                await stream.send_all(chunk)
            await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        pass


@dataclass
class Served:
    """What the fake-network server saw."""

    listener: Listener
    handled: list[Connection] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fake_server(
    network: FakeNetwork,
    config: ServerConfig,
    handler: Callable[[Connection], Awaitable[None]] | None = None,
) -> AsyncIterator[Served]:
    """A transport server on the fake network (default handler: echo every stream)."""
    handled: list[Connection] = []

    async def recording(connection: Connection) -> None:
        handled.append(connection)
        if handler is None:
            await connection.serve_streams(echo_stream)
        else:
            await handler(connection)

    async with trio.open_nursery() as nursery:
        listener: Listener = await nursery.start(
            functools.partial(
                serve,
                SERVER_HOST,
                0,
                config,
                recording,
                socket_factory=network.socket_factory,
            )
        )
        yield Served(listener, handled)
        nursery.cancel_scope.cancel()


def fake_connect(
    network: FakeNetwork, port: int, config: ClientConfig, local_host: str = CLIENT_HOST
) -> contextlib.AbstractAsyncContextManager[Connection]:
    """A transport connection from ``local_host`` to the fake-network server."""
    return connect(
        SERVER_HOST, port, config, local_host=local_host, socket_factory=network.socket_factory
    )


async def echo_once(connection: Connection, payload: bytes) -> bytes:
    """Send ``payload`` on a new stream and read the echo to its end."""
    stream = await connection.open_stream()
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        received = bytearray()
        async for chunk in stream:
            received += chunk
    return bytes(received)


async def well_behaved_client(
    network: FakeNetwork, port: int, config: ClientConfig, rounds: int = 3
) -> None:
    """Connect from CLIENT_HOST and check ``rounds`` echoes: the server is still serving."""
    async with fake_connect(network, port, config) as connection:
        for index in range(rounds):
            payload = b"still served %d" % index
            assert await echo_once(connection, payload) == payload


def first_initial(server_port: int, now: float) -> bytes:
    """The first INITIAL datagram of a fresh aioquic client (1,200 bytes or more)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["quicframe/1"], server_name="localhost"
    )
    client = QuicConnection(configuration=configuration)
    client.connect((SERVER_HOST, server_port), now)
    datagrams = client.datagrams_to_send(now)
    assert datagrams
    assert len(datagrams[0][0]) >= 1200
    return datagrams[0][0]
