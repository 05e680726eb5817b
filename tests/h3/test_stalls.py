"""A stalled HTTP/3 request holds up nothing but itself.

Three kinds of stall: a handler that blocks, a client that does not read one
response (its stream's flow control stops the server), and a client that stops
reading its socket altogether.  In each case other requests on the same
connection, and other connections on the same socket, keep flowing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import trio
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.h3._quic import StreamQuic
from quicframe.transport import Connection, Stream, connect as transport_connect

from .conftest import Certificate, H3Client, deadline, h3_client, open_gateway

ECHO = 0x0001
BLOCK = 0x0002
BIG = 0x0003
BIG_SIZE = 4 * 1024 * 1024
WINDOW = 256 * 1024


@dataclass
class Gate:
    started: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)


def make_router(gate: Gate) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    @router.rpc(BLOCK)
    async def block(request: Any, ctx: quicframe.CallContext) -> Any:
        gate.started.set()
        await gate.release.wait()
        return "released"

    @router.rpc(BIG)
    async def big(request: Any, ctx: quicframe.CallContext) -> Any:
        return bytes(BIG_SIZE)

    return router


@contextlib.asynccontextmanager
async def gateway(server_config: ServerConfig, gate: Gate) -> AsyncIterator[quicframe.Server]:
    async with open_gateway(make_router(gate), server_config) as server:
        yield server


@contextlib.asynccontextmanager
async def two_clients(
    server_config: ServerConfig, certificate: Certificate, gate: Gate
) -> AsyncIterator[tuple[H3Client, H3Client]]:
    """Two HTTP/3 clients, each on a connection of its own, to one gateway."""
    async with (
        gateway(server_config, gate) as server,
        h3_client(server.port, certificate.path) as first,
        h3_client(server.port, certificate.path) as second,
    ):
        yield first, second


MSGPACK_NONE = msgpack.packb(None)
HEADERS = [("content-type", "application/msgpack")]


@deadline(10)
async def test_a_blocked_handler_holds_up_nothing_else(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    gate = Gate()
    async with two_clients(server_config, certificate, gate) as (first, second):
        blocked = first.start("POST", f"/rpc/{BLOCK}", HEADERS, MSGPACK_NONE)
        await gate.started.wait()
        for i in range(20):
            assert (await first.call(ECHO, i)).msgpack() == i
            assert (await second.call(ECHO, i)).msgpack() == i
        assert (await first.request("GET", "/healthz")).status == 200
        assert not gate.release.is_set()
        gate.release.set()
        assert (await first.response(blocked)).msgpack() == "released"


# -- a client that does not read one response -------------------------------------


class StreamH3Client:
    """aioquic's HTTP/3 client logic over quicframe's transport streams.

    The transport grants a stream's receive credit only as the application
    reads, so not reading one response stream really stops the server's sender
    on that stream (aioquic's own QuicConnection grants credit on arrival).
    """

    def __init__(self, connection: Connection, uni: list[Stream]) -> None:
        self.connection = connection
        self.quic = StreamQuic(connection, uni)
        self.h3 = H3Connection(cast(QuicConnection, self.quic))
        self.events: dict[int, list[H3Event]] = {}
        self.arrived = trio.lowlevel.ParkingLot()

    def feed(self, stream_id: int, data: bytes, end: bool) -> None:
        event = StreamDataReceived(data=data, end_stream=end, stream_id=stream_id)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived | DataReceived):
                self.events.setdefault(h3_event.stream_id, []).append(h3_event)
        self.arrived.unpark_all()

    async def read_server_streams(self) -> None:
        async def read(stream: Stream) -> None:
            while data := await stream.receive_some():
                self.feed(stream.stream_id, data, False)

        await self.connection.serve_streams(read)

    async def send(self, opcode: int, value: Any) -> Stream:
        stream = await self.connection.open_stream()
        self.quic.attach(stream)
        body = msgpack.packb(value)
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", f"/rpc/{opcode}".encode()),
            (b"content-type", b"application/msgpack"),
        ]
        self.h3.send_headers(stream.stream_id, headers)
        self.h3.send_data(stream.stream_id, body, end_stream=True)
        data, fin = self.quic.take(stream.stream_id)
        assert fin
        await stream.send_all(data)
        await stream.send_eof()
        return stream

    async def receive(self, stream: Stream) -> tuple[int, bytes]:
        """Read a response to its end: (status, body)."""
        while data := await stream.receive_some():
            self.feed(stream.stream_id, data, False)
        self.feed(stream.stream_id, b"", True)
        # A header block may wait for QPACK instructions on the encoder stream.
        while not any(
            getattr(event, "stream_ended", False) for event in self.events.get(stream.stream_id, [])
        ):
            await self.arrived.park()
        status = 0
        body = bytearray()
        for event in self.events.pop(stream.stream_id):
            if isinstance(event, HeadersReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived):
                body += event.data
        return status, bytes(body)

    async def call(self, opcode: int, value: Any) -> Any:
        status, body = await self.receive(await self.send(opcode, value))
        assert status == 200
        return msgpack.unpackb(body)


@deadline(15)
async def test_an_unread_response_holds_up_nothing_else(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    config = ClientConfig(
        alpn_protocols=["h3"],
        ca_file=certificate.path,
        server_name="localhost",
        stream_receive_window=WINDOW,
    )
    gate = Gate()
    async with (
        gateway(server_config, gate) as server,
        transport_connect("127.0.0.1", server.port, config) as connection,
        h3_client(server.port, certificate.path) as other,
        trio.open_nursery() as nursery,
    ):
        assert connection.alpn_protocol == "h3"
        uni = [await connection.open_stream(unidirectional=True) for _ in range(3)]
        client = StreamH3Client(connection, uni)
        nursery.start_soon(client.read_server_streams)
        big = await client.send(BIG, None)
        # The big response is not read: its stream stops at one receive window
        # while calls on the same connection and on another one go on.
        for i in range(20):
            assert await client.call(ECHO, i) == i
            assert (await other.call(ECHO, i)).msgpack() == i
        assert big.statistics().receive_buffered <= WINDOW < BIG_SIZE
        # Reading it now gets all of it.
        status, body = await client.receive(big)
        assert status == 200
        assert msgpack.unpackb(body) == bytes(BIG_SIZE)
        nursery.cancel_scope.cancel()


@deadline(15)
async def test_a_client_that_stops_reading_holds_up_nothing_else(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    async with two_clients(server_config, certificate, Gate()) as (stalled, other):
        big = stalled.start("POST", f"/rpc/{BIG}", HEADERS, MSGPACK_NONE)
        stalled.paused = True  # neither reads nor sends anything from now on
        for i in range(20):
            assert (await other.call(ECHO, i)).msgpack() == i
        assert (await other.request("GET", "/healthz")).status == 200
        stalled.paused = False
        stalled.transmit()
        response = await stalled.response(big)
        assert response.status == 200
        assert response.msgpack() == bytes(BIG_SIZE)
