"""Fixtures for the HTTP/3 gateway tests: aioquic's own HTTP/3 client, driven from trio.

The client is aioquic's ``QuicConnection`` and ``H3Connection`` (code quicframe did
not write) on a loopback UDP socket; this module only moves its datagrams and
timer, on trio's clock.  Every test has a deadline and never sleeps to wait.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from aioquic.h3.connection import ErrorCode as H3ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset

import quicframe
from quicframe import ServerConfig

from ..conftest import CertFiles
from ..session.conftest import deadline

__all__ = ["H3Client", "Response", "deadline", "h3_client", "open_gateway"]


@dataclass(frozen=True)
class Certificate:
    path: Path
    key_path: Path


@pytest.fixture(scope="session")
def certificate(cert_files: CertFiles) -> Certificate:
    """The session's certificate (tests/conftest.py), under the names these tests use."""
    return Certificate(cert_files.certificate, cert_files.private_key)


@pytest.fixture
def server_config(certificate: Certificate) -> ServerConfig:
    return ServerConfig(
        certificate=certificate.path, private_key=certificate.key_path, idle_timeout=10.0
    )


@contextlib.asynccontextmanager
async def open_gateway(
    router: quicframe.Router, server_config: ServerConfig, **options: Any
) -> AsyncIterator[quicframe.Server]:
    """A server with HTTP/3 on 127.0.0.1 (a free port); one second to drain at close."""
    options.setdefault("shutdown_grace_period", 1.0)
    async with quicframe.open_server(
        router, "127.0.0.1", 0, server_config, http3=True, **options
    ) as server:
        yield server


@dataclass
class Response:
    """One HTTP/3 response as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def msgpack(self) -> Any:
        return msgpack.unpackb(self.body)


@dataclass
class _Pending:
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    done: trio.Event = field(default_factory=trio.Event)


class H3Client:
    """aioquic's HTTP/3 client over a loopback UDP socket, its I/O done by trio."""

    def __init__(self, quic: QuicConnection, sock: socket.socket, server: tuple[str, int]) -> None:
        self.quic = quic
        self.h3 = H3Connection(quic)
        self._sock = sock
        self._trio_sock = trio.socket.from_stdlib_socket(sock)
        self._server = server
        self._pending: dict[int, _Pending] = {}
        self.connected = trio.Event()
        self.terminated: ConnectionTerminated | None = None
        self.paused = False  # True: behave like a process that stopped reading its socket
        self._progress = trio.lowlevel.ParkingLot()  # unparked whenever events arrive

    def transmit(self) -> None:
        if self.paused:
            return
        for data, address in self.quic.datagrams_to_send(now=trio.current_time()):
            with contextlib.suppress(BlockingIOError):
                self._sock.sendto(data, address)

    async def run(self) -> None:
        while True:
            self.transmit()
            timer = self.quic.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer) as scope:
                data, address = await self._trio_sock.recvfrom(65536)
            now = trio.current_time()
            if self.paused:
                continue
            if scope.cancelled_caught:
                self.quic.handle_timer(now)
            else:
                self.quic.receive_datagram(data, address, now)
            self._handle_events()

    def _handle_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
                for pending in self._pending.values():
                    pending.done.set()
            elif isinstance(event, StreamReset):
                reset = self._pending.get(event.stream_id)
                if reset is not None:
                    reset.reset = event.error_code
                    reset.done.set()
            for h3_event in self.h3.handle_event(event):
                if not isinstance(h3_event, HeadersReceived | DataReceived):
                    continue
                waiting = self._pending.get(h3_event.stream_id)
                if waiting is None:
                    continue
                if isinstance(h3_event, HeadersReceived):
                    waiting.headers = h3_event.headers
                else:
                    waiting.body += h3_event.data
                if h3_event.stream_ended:
                    waiting.done.set()
        self._progress.unpark_all()

    def start(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> int:
        """Send a request; return its stream ID (see :meth:`response`)."""
        stream_id = self.quic.get_next_available_stream_id()
        self._pending[stream_id] = _Pending()
        all_headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", f"localhost:{self._server[1]}".encode()),
            (b":path", path.encode()),
            *((name.encode(), value.encode()) for name, value in headers),
        ]
        if body is not None:
            all_headers.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(stream_id, all_headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return stream_id

    async def response(self, stream_id: int) -> Response:
        pending = self._pending[stream_id]
        await pending.done.wait()
        del self._pending[stream_id]
        if pending.reset is not None:
            raise ConnectionResetError(f"stream {stream_id} reset with code {pending.reset}")
        if pending.headers is None:
            raise ConnectionError(f"no response on stream {stream_id}: {self.terminated}")
        headers = {name.decode(): value.decode() for name, value in pending.headers}
        return Response(int(headers.pop(":status")), headers, bytes(pending.body))

    async def read_body(self, stream_id: int, offset: int) -> bytes:
        """The body of a response in progress from ``offset`` on, once there is some:
        for long-lived responses (subscriptions).  ``b""`` when it ended there.

        Raises:
            ConnectionResetError: the server reset the stream.
        """
        pending = self._pending[stream_id]
        while len(pending.body) <= offset and not pending.done.is_set():
            await self._progress.park()
        if pending.reset is not None:
            raise ConnectionResetError(f"stream {stream_id} reset with code {pending.reset}")
        return bytes(pending.body[offset:])

    async def response_headers(self, stream_id: int) -> dict[str, str]:
        """The headers of a response in progress (``:status`` included), once they came."""
        pending = self._pending[stream_id]
        while pending.headers is None:
            if pending.done.is_set():
                raise ConnectionError(f"no response on stream {stream_id}: {pending.reset}")
            await self._progress.park()
        return {name.decode(): value.decode() for name, value in pending.headers}

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Response:
        return await self.response(self.start(method, path, headers, body))

    async def call(
        self, op: str | int, value: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """POST /rpc/{op} with a msgpack body."""
        body = msgpack.packb(value, use_bin_type=True)
        all_headers = [("content-type", "application/msgpack"), *headers]
        return await self.request("POST", f"/rpc/{op}", all_headers, body)

    def cancel(self, stream_id: int) -> None:
        """Abandon a request: RESET_STREAM and STOP_SENDING, as a browser does."""
        self.quic.reset_stream(stream_id, H3ErrorCode.H3_REQUEST_CANCELLED)
        self.quic.stop_stream(stream_id, H3ErrorCode.H3_REQUEST_CANCELLED)
        self._pending.pop(stream_id, None)
        self.transmit()


@contextlib.asynccontextmanager
async def h3_client(port: int, ca_file: Path) -> AsyncIterator[H3Client]:
    """An HTTP/3 connection to 127.0.0.1:port made by aioquic's client."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    configuration.load_verify_locations(cafile=str(ca_file))
    configuration.server_name = "localhost"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    with sock:
        quic = QuicConnection(configuration=configuration)
        client = H3Client(quic, sock, ("127.0.0.1", port))
        quic.connect(("127.0.0.1", port), now=trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await client.connected.wait()
            try:
                yield client
            finally:
                client.paused = False
                quic.close()
                client.transmit()
                nursery.cancel_scope.cancel()
