"""Fixtures for the transport tests: a throwaway certificate and a loopback server.

Rules for these tests: loopback only (127.0.0.1 and ::1), port 0, a deadline on
trio's clock for every network test, and no sleeping to wait for something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio

from quicframe import ServerConfig
from quicframe.errors import ConnectionClosed
from quicframe.transport import Connection, Listener, Stream, serve

from ..conftest import CertFiles as CertFiles  # the fixtures live in tests/conftest.py

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
