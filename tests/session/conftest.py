"""Fixtures for the session tests: a throwaway certificate, configs, and helpers.

Every test runs over real loopback UDP (127.0.0.1, port 0), has a deadline on
trio's clock (``@deadline``), and never sleeps to wait for something.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio

from quicframe import ClientConfig
from quicframe.session import (
    SUPPORTED_VERSIONS,
    ControlChannel,
    Hello,
    OneFrameReader,
    WelcomeReceived,
)
from quicframe.transport import Connection, Stream, connect as transport_connect
from quicframe.wire import Frame

P = ParamSpec("P")
R = TypeVar("R")


def deadline(seconds: float) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Fail the decorated async test if it runs longer than ``seconds`` (trio's clock)."""

    def decorate(test: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(test)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
            with trio.fail_after(seconds):
                return await test(*args, **kwargs)

        return bounded

    return decorate


@contextlib.asynccontextmanager
async def raw_session(
    port: int, config: ClientConfig, hello: Hello | None = None
) -> AsyncIterator[Connection]:
    """A QUIC connection that went through HELLO/WELCOME by hand, for sending raw frames."""
    async with transport_connect("127.0.0.1", port, config) as connection:
        await hello_by_hand(connection, hello)
        yield connection


async def hello_by_hand(connection: Connection, hello: Hello | None = None) -> Stream:
    """Open the control stream and exchange HELLO/WELCOME on it; return the stream."""
    control = await connection.open_stream()
    channel = ControlChannel(client=True)
    channel.send_hello(hello or Hello(versions=list(SUPPORTED_VERSIONS)))
    await control.send_all(channel.data_to_send())
    welcomed = False
    while not welcomed:
        data = await control.receive_some()
        assert data, "the server ended the control stream"
        welcomed = any(isinstance(e, WelcomeReceived) for e in channel.receive_data(data))
    return control


async def read_reply(stream: Stream) -> Frame:
    """Read one frame, the whole stream up to its FIN."""
    reader = OneFrameReader()
    while data := await stream.receive_some():
        reader.feed(data)
    return reader.feed_eof()


async def raw_call(connection: Connection, frame: bytes) -> Frame:
    """Send one raw frame and FIN on a new stream; return the reply frame."""
    stream = await connection.open_stream()
    await stream.send_all(frame)
    await stream.send_eof()
    reply = await read_reply(stream)
    await stream.aclose()
    return reply


async def read_to_end(stream: Stream) -> bytes:
    """Read a stream to its FIN."""
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


def plain(value: Any) -> Any:
    """Identity, typed as Any: for asserting on untyped call results."""
    return value
