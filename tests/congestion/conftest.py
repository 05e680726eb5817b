"""Fixtures for the BBR tests over real loopback UDP (pattern of tests/transport).

Rules: loopback only, port 0, a deadline on trio's clock for every network test.
Both configs select ``congestion_control="bbr"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import write_self_signed_certificate
from quicframe.transport import Connection, Listener, serve


@dataclass(frozen=True)
class CertFiles:
    certificate: Path
    private_key: Path


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed EC certificate for "localhost", 127.0.0.1 and ::1."""
    return CertFiles(*write_self_signed_certificate(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def server_config(cert_files: CertFiles) -> ServerConfig:
    return ServerConfig(
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        idle_timeout=10.0,
        congestion_control="bbr",
    )


@pytest.fixture
def client_config(cert_files: CertFiles) -> ClientConfig:
    return ClientConfig(
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
        congestion_control="bbr",
    )


Handler = Callable[[Connection], Awaitable[object]]


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
