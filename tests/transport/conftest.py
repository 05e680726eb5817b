"""Fixtures for the transport tests: a throwaway certificate and a loopback server.

Rules for these tests: loopback only (127.0.0.1 and ::1), port 0, a deadline on
trio's clock for every network test, and no sleeping to wait for something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed
from quicframe.testing import write_self_signed_certificate
from quicframe.transport import Connection, Listener, Stream, serve


@dataclass(frozen=True)
class CertFiles:
    certificate: Path
    private_key: Path


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed EC certificate for "localhost", 127.0.0.1 and ::1."""
    return CertFiles(*write_self_signed_certificate(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def server_config(cert_files: CertFiles, core: str) -> ServerConfig:
    return ServerConfig(
        core=core,
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        idle_timeout=10.0,
    )


@pytest.fixture
def client_config(cert_files: CertFiles, core: str) -> ClientConfig:
    return ClientConfig(
        core=core,
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
    )


Handler = Callable[[Connection], Awaitable[object]]


async def echo_stream(stream: Stream) -> None:
    """Echo one stream until its peer's EOF, then send EOF back."""
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        pass  # the client went away first: nothing left to echo
    finally:
        await stream.aclose()


async def echo_handler(connection: Connection) -> None:
    """Echo every stream the client opens, until the connection closes."""
    await connection.serve_streams(echo_stream)


@dataclass
class ServerHandle:
    listener: Listener
    connections: list[Connection]
    cancel_scope: trio.CancelScope


async def start_server(
    nursery: trio.Nursery,
    config: ServerConfig,
    handler: Handler | None = None,
    host: str = "127.0.0.1",
) -> ServerHandle:
    """Start ``serve`` in ``nursery``; the handle records every connection served."""
    connections: list[Connection] = []

    async def recording_handler(connection: Connection) -> None:
        connections.append(connection)
        if handler is not None:
            await handler(connection)
        else:
            await trio.sleep_forever()

    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[Listener]) -> None:
        with scope:
            await serve(host, 0, config, recording_handler, task_status=task_status)

    listener = await nursery.start(run)
    return ServerHandle(listener, connections, scope)


@pytest.fixture
async def echo_server(
    nursery: trio.Nursery, server_config: ServerConfig
) -> AsyncIterator[ServerHandle]:
    handle = await start_server(nursery, server_config, echo_handler)
    yield handle
    handle.cancel_scope.cancel()
