"""Abuse of the session layer (``quicframe.serve``), on the fake network.

A hostile peer here completes the QUIC handshake and then breaks the session
protocol: malformed or oversized frames on call streams, call streams it never
finishes, a HELLO trickled in too slowly, calls sent in spite of a REJECT.  Each
test checks the abuser gets the documented typed error, that no handler runs on
its behalf, and that a well-behaved client is served meanwhile.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed, ErrorCode, Unauthorized
from quicframe.session import (
    ControlChannel,
    Hello,
    RejectReceived,
    encode_request,
)
from quicframe.testing import FakeNetwork
from quicframe.transport import Connection, Stream, connect as transport_connect
from quicframe.wire import FrameType, MsgpackCodec, encode_frame
from quicframe.wire._frame import HEADER

from ..session.conftest import hello_by_hand, raw_call, read_to_end
from .conftest import SERVER_HOST

ECHO = 0x0001
TYPED = 0x0002
PLAIN: MsgpackCodec[Any] = MsgpackCodec()


@dataclass
class Order:
    symbol: str
    quantity: int


class Calls:
    """Counts the handler runs."""

    def __init__(self) -> None:
        self.count = 0


def make_router(calls: Calls) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        calls.count += 1
        return request

    @router.rpc(TYPED, request=Order)
    async def typed(request: Order, ctx: quicframe.CallContext) -> Any:
        calls.count += 1
        return request.quantity

    return router


@contextlib.asynccontextmanager
async def session_server(
    network: FakeNetwork, config: ServerConfig, calls: Calls, **options: Any
) -> AsyncIterator[quicframe.Server]:
    async with quicframe.open_server(
        make_router(calls),
        SERVER_HOST,
        0,
        config,
        socket_factory=network.socket_factory,
        **options,
    ) as server:
        yield server


async def assert_served(
    network: FakeNetwork, port: int, config: ClientConfig, **options: Any
) -> None:
    """A well-behaved client connects and makes a call."""
    async with quicframe.connect(
        SERVER_HOST, port, config, socket_factory=network.socket_factory, **options
    ) as client:
        assert await client.call(ECHO, "served") == "served"


def raw_connect(
    network: FakeNetwork, port: int, config: ClientConfig
) -> contextlib.AbstractAsyncContextManager[Connection]:
    """A bare QUIC connection to the session server, for speaking the protocol by hand."""
    return transport_connect(SERVER_HOST, port, config, socket_factory=network.socket_factory)


@contextlib.asynccontextmanager
async def raw_session(
    network: FakeNetwork, port: int, config: ClientConfig, hello: Hello | None = None
) -> AsyncIterator[Connection]:
    """A QUIC connection that did HELLO/WELCOME by hand, to send raw frames on."""
    async with raw_connect(network, port, config) as connection:
        await hello_by_hand(connection, hello)
        yield connection


async def expect_reset(stream: Stream, code: int) -> None:
    """The server resets the call stream with ``code`` (RESET_STREAM and STOP_SENDING)."""
    with pytest.raises(trio.BrokenResourceError) as info:
        await read_to_end(stream)
    assert getattr(info.value, "code", None) == code
    await stream.aclose()


def _header(frame_type: int, meta_len: int, body_len: int, version: int = 1) -> bytes:
    return HEADER.pack(frame_type, 0, version, ECHO, meta_len, body_len)


_REQUEST = encode_request(ECHO, PLAIN.encode("x"), request_id="r")
_BOMB = zlib.compress(bytes(4 << 20), 9)  # 4 MiB of zeros in a few KiB

# (what the peer sends, whether it finishes the stream, the code it must get back)
MALFORMED = {
    "announces-2-MiB": (_header(FrameType.REQUEST, 0, 2 << 20), False, ErrorCode.FRAME_TOO_LARGE),
    "type-zero": (bytes(12), True, ErrorCode.MALFORMED_HEADER),
    "version-2": (
        _header(FrameType.REQUEST, 0, 0, version=2),
        True,
        ErrorCode.UNSUPPORTED_FRAME_VERSION,
    ),
    "metadata-truncated": (
        _header(FrameType.REQUEST, 3, 0) + b"\x00\x01\x01",
        True,
        ErrorCode.MALFORMED_METADATA,
    ),
    "metadata-bad-utf8": (
        _header(FrameType.REQUEST, 7, 0) + b"\x00\x01\x01\x00\x02\xff\xfe",
        True,
        ErrorCode.MALFORMED_METADATA,
    ),
    "zlib-garbage": (
        HEADER.pack(FrameType.REQUEST, 1, 1, ECHO, 0, 4) + b"\xde\xad\xbe\xef",
        True,
        ErrorCode.DECOMPRESSION_FAILED,
    ),
    "zlib-bomb": (
        HEADER.pack(FrameType.REQUEST, 1, 1, ECHO, 0, len(_BOMB)) + _BOMB,
        True,
        ErrorCode.FRAME_TOO_LARGE,
    ),
    "truncated-then-fin": (_REQUEST[:-1], True, ErrorCode.PROTOCOL_ERROR),
    "two-frames": (_REQUEST + _REQUEST, True, ErrorCode.PROTOCOL_ERROR),
    "ping-on-a-call-stream": (
        encode_frame(FrameType.PING, bytes(8)),
        True,
        ErrorCode.UNEXPECTED_FRAME,
    ),
    "untyped-body-for-a-typed-route": (
        encode_request(TYPED, msgpack.packb([1, 2]), request_id="t"),
        True,
        ErrorCode.MALFORMED_BODY,
    ),
    "body-not-msgpack": (
        encode_request(ECHO, b"\xc1", request_id="m"),
        True,
        ErrorCode.MALFORMED_BODY,
    ),
}


async def test_oversized_and_malformed_frames_fail_only_their_stream(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    calls = Calls()
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=20) as network,
            session_server(network, server_config, calls) as server,
            raw_session(network, server.port, client_config) as hostile,
        ):
            for name, (data, finish, code) in MALFORMED.items():
                stream = await hostile.open_stream()
                await stream.send_all(data)
                if finish:
                    await stream.send_eof()
                try:
                    await expect_reset(stream, code)
                except AssertionError as exc:
                    raise AssertionError(f"{name}: {exc}") from None
                # The same connection still makes calls...
                reply = await raw_call(
                    hostile, encode_request(ECHO, PLAIN.encode(name), request_id=name)
                )
                assert reply.type == FrameType.RESPONSE
                assert PLAIN.decode(reply.body) == name
            # ...and so does everybody else.
            await assert_served(network, server.port, client_config)
            assert hostile.closed is None
            # Only the valid calls ran a handler.
            assert calls.count == len(MALFORMED) + 1
            failed = server.statistics().calls_failed
            assert failed.get("MALFORMED_BODY") == 2


async def test_call_streams_that_never_finish_hold_no_handler_and_little_memory(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # A peer opens call streams, sends the first bytes of a REQUEST and never
    # another.  No handler runs, the server holds only the bytes received, and the
    # peer's own valid calls and other clients carry on.  (QUIC's stream limit, 128
    # bidirectional streams at once in aioquic, caps how many it can hold open.)
    calls = Calls()
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=20) as network,
            session_server(network, server_config, calls) as server,
            raw_session(network, server.port, client_config) as hostile,
        ):
            stalled = []
            for _ in range(40):
                stream = await hostile.open_stream()
                await stream.send_all(_REQUEST[:5])
                stalled.append(stream)
            await hostile.ping()
            # A call behind them is answered: the stalled streams block nothing.
            assert (await raw_call(hostile, _REQUEST)).type == FrameType.RESPONSE
            await assert_served(network, server.port, client_config)
            assert server.statistics().calls_in_flight == 0
            assert calls.count == 2
            (session,) = [
                s
                for s in server._sessions
                if s.connection.remote_address[1] == hostile.local_address[1]
            ]
            statistics = session.connection.statistics()
            assert statistics.streams_open >= 40
            assert statistics.bytes_buffered <= 40 * 5 + 1024
            # 160 more: QUIC's stream limit keeps the server's count at 128 at most
            # (the peer's own open_stream() waits for a MAX_STREAMS that never comes).
            async with trio.open_nursery() as nursery:

                async def open_more() -> None:
                    for _ in range(160):
                        stream = await hostile.open_stream()
                        await stream.send_all(_REQUEST[:5])
                        stalled.append(stream)

                nursery.start_soon(open_more)
                await hostile.ping()
                await trio.testing.wait_all_tasks_blocked()
                assert session.connection.statistics().streams_open <= 128
                assert len(stalled) < 40 + 160
                await assert_served(network, server.port, client_config)
                assert hostile.closed is None
                assert calls.count == 3
                nursery.cancel_scope.cancel()
            for stream in stalled:
                stream.reset(ErrorCode.CANCELLED)


async def test_a_slow_loris_hello_is_cut_off_at_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # The QUIC handshake completes, then HELLO arrives a byte every 50 ms: the
    # session handshake timeout bounds the whole exchange, however steady the
    # trickle, while other clients are served.
    calls = Calls()
    hello = encode_frame(FrameType.HELLO, msgpack.packb({"versions": [1]}))
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=21) as network,
            session_server(network, server_config, calls, handshake_timeout=0.5) as server,
        ):
            async with raw_connect(network, server.port, client_config) as loris:
                control = await loris.open_stream()

                async def trickle() -> None:
                    for index in range(len(hello)):
                        await control.send_all(hello[index : index + 1])
                        if index == 2:
                            await assert_served(network, server.port, client_config)
                        await trio.sleep(0.05)  # the trickle's pace, not a wait for an event
                    pytest.fail("the server let the trickle finish")  # pragma: no cover

                with pytest.raises(ConnectionClosed) as info:
                    await trickle()
                assert info.value.code == ErrorCode.HANDSHAKE_TIMEOUT
                assert info.value.by_peer
            await assert_served(network, server.port, client_config)
            assert calls.count == 2


async def test_an_authenticator_rejection_closes_before_any_handler_runs(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # The hostile client sends HELLO with bad credentials and, without waiting for
    # the answer, a call.  The server answers REJECT, closes the connection with
    # UNAUTHORIZED and never reads the call.
    calls = Calls()
    authenticated: list[str] = []

    async def authenticator(hello: Hello, connection: Connection) -> str | None:
        if hello.credentials.get("token") != "secret":
            raise Unauthorized("bad token")
        authenticated.append(hello.client_name)
        return hello.client_name

    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=22) as network,
            session_server(network, server_config, calls, authenticator=authenticator) as server,
        ):
            async with raw_connect(network, server.port, client_config) as hostile:
                control = await hostile.open_stream()
                channel = ControlChannel(client=True)
                channel.send_hello(Hello(versions=[1], credentials={"token": "wrong"}))
                await control.send_all(channel.data_to_send())
                call = await hostile.open_stream()
                await call.send_all(_REQUEST)
                await call.send_eof()
                events = []

                async def read_answer() -> None:
                    while data := await control.receive_some():
                        events.extend(channel.receive_data(data))
                    await call.receive_some()  # until the connection closes under it

                with pytest.raises(ConnectionClosed) as info:
                    await read_answer()
                assert info.value.code == ErrorCode.UNAUTHORIZED
                (reject,) = [e.reject for e in events if isinstance(e, RejectReceived)]
                assert reject.code == ErrorCode.UNAUTHORIZED
            # The ordinary client API raises Unauthorized, and no handler ran for either.
            with pytest.raises(Unauthorized):
                async with quicframe.connect(
                    SERVER_HOST,
                    server.port,
                    client_config,
                    credentials={"token": "nope"},
                    socket_factory=network.socket_factory,
                ):
                    pytest.fail("the session must not open")  # pragma: no cover
            assert calls.count == 0
            await assert_served(
                network, server.port, client_config, credentials={"token": "secret"}
            )
            assert calls.count == 1
            assert server.statistics().handshakes_rejected == 2


async def test_a_hello_with_unusable_versions_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # A fuzzer finding: versions holding a list made the server's version choice
    # raise TypeError.  Now the HELLO is MALFORMED_BODY and closes that connection.
    calls = Calls()
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=23) as network,
            session_server(network, server_config, calls) as server,
        ):
            async with raw_connect(network, server.port, client_config) as hostile:
                control = await hostile.open_stream()
                body = msgpack.packb({"versions": [[1], 1]})
                await control.send_all(encode_frame(FrameType.HELLO, body))
                with pytest.raises(ConnectionClosed) as info:
                    await read_to_end(control)
                assert info.value.code == ErrorCode.MALFORMED_BODY
            await assert_served(network, server.port, client_config)
