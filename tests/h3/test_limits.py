"""The gateway's limits on request streams, as for native calls.

A request counts against ``max_concurrent_calls`` from its stream's first byte
until it is answered: one beyond the limit is reset with H3_REQUEST_REJECTED
before anything of it is read (RFC 9114 section 4.1.1: rejected, not processed,
so the client may send it again).  A request not complete within
``request_read_timeout`` is reset with H3_REQUEST_CANCELLED and never runs.
Each test also checks that other requests on the same connection, and other
connections, go on being served.  Driven by aioquic's own HTTP/3 client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pylsqpack
import pytest
import trio
import trio.testing
from aioquic.h3.connection import ErrorCode as H3ErrorCode, FrameType, encode_frame

import quicframe
from quicframe import MarketTick, ServerConfig
from quicframe.h3 import gateway_of
from quicframe.h3._gateway import _H3Session

from .conftest import Certificate, H3Client, _Pending, deadline, h3_client, open_gateway

ECHO = 0x0001
TICKS = "md.ticks"
BODY = msgpack.packb({"n": 1})
REJECTED = H3ErrorCode.H3_REQUEST_REJECTED
CANCELLED = H3ErrorCode.H3_REQUEST_CANCELLED


@dataclass
class Calls:
    count: int = 0
    seen: list[Any] = field(default_factory=list)


def make_router(calls: Calls) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        calls.count += 1
        calls.seen.append(request)
        return request

    router.add_topic(quicframe.Topic(TICKS, MarketTick, key=lambda t: t.instrument_id))
    return router


@contextlib.asynccontextmanager
async def gateway(
    server_config: ServerConfig, calls: Calls, **options: Any
) -> AsyncIterator[quicframe.Server]:
    async with open_gateway(make_router(calls), server_config, **options) as server:
        yield server


def call_headers(client: H3Client, length: int | None = None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", f"localhost:{client._server[1]}".encode()),
        (b":path", b"/rpc/echo"),
        (b"content-type", b"application/msgpack"),
    ]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


def open_stalled(client: H3Client) -> tuple[int, _Pending]:
    """A call whose headers are sent but whose body never ends (no FIN)."""
    stream_id = client.quic.get_next_available_stream_id()
    pending = client._pending[stream_id] = _Pending()
    client.h3.send_headers(stream_id, call_headers(client), end_stream=False)
    client.transmit()
    return stream_id, pending


def session_of(server: quicframe.Server, client: H3Client) -> _H3Session:
    port = client._sock.getsockname()[1]
    (session,) = [s for s in gateway_of(server)._sessions if s.connection.remote_address[1] == port]
    return session


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let the server run until ``condition`` holds (the test's deadline bounds it)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked()


async def expect_reset(client: H3Client, stream_id: int, code: int) -> None:
    with pytest.raises(ConnectionResetError, match=f"reset with code {int(code)}$"):
        await client.response(stream_id)


# -- calls in flight per connection, from the first byte ------------------------------


@deadline(10)
async def test_requests_count_from_the_first_byte(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    # max_concurrent_calls=2: two requests whose bodies are still being read use
    # up the connection's allowance, so a third is rejected before anything of
    # it is read.  Another connection has its own allowance; finishing a
    # stalled request frees a place on this one.
    calls = Calls()
    async with (
        gateway(server_config, calls, max_concurrent_calls=2, request_read_timeout=60) as server,
        h3_client(server.port, certificate.path) as client,
        h3_client(server.port, certificate.path) as other,
    ):
        session = session_of(server, client)
        stalled = [open_stalled(client)[0] for _ in range(2)]
        await wait_until(lambda: session._requests_open == 2)

        await expect_reset(client, client.start("POST", "/rpc/echo", [], BODY), REJECTED)
        # /healthz and /metrics count as well: they are requests.
        await expect_reset(client, client.start("GET", "/healthz"), REJECTED)
        assert calls.count == 0
        assert gateway_of(server).metrics.refused == {"RESOURCE_EXHAUSTED": 2}

        # Another connection has an allowance of its own.
        reply = await other.call(ECHO, "other")
        assert (reply.status, reply.msgpack()) == (200, "other")

        # A stalled request completes: it runs, and its place is free again.
        client.h3.send_data(stalled[0], BODY, end_stream=True)
        client.transmit()
        assert (await client.response(stalled[0])).msgpack() == {"n": 1}
        assert (await client.call(ECHO, 2)).msgpack() == 2
        assert calls.seen == ["other", {"n": 1}, 2]
        client.cancel(stalled[1])
        await wait_until(lambda: session._requests_open == 0)
        assert client.terminated is None
        metrics = (await client.request("GET", "/metrics")).body.decode()
        assert 'quicframe_http3_requests_refused_total{code="RESOURCE_EXHAUSTED"} 2' in metrics


@deadline(10)
async def test_a_subscription_holds_no_place_among_the_calls(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    # A GET /topics/... stream is counted until its headers say it is a
    # subscription (as a native SUBSCRIBE stream is not a call): with
    # max_concurrent_calls=1, calls still run beside two subscriptions.
    calls = Calls()
    async with (
        gateway(server_config, calls, max_concurrent_calls=1) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        subscriptions = []
        for _ in range(2):
            stream_id = client.start("GET", f"/topics/{TICKS}")
            assert (await client.response_headers(stream_id))[":status"] == "200"
            subscriptions.append(stream_id)
        assert (await client.call(ECHO, 1)).msgpack() == 1
        session = session_of(server, client)
        assert session._requests_open == 0
        # While one call is still being read, the next one is rejected.
        open_stalled(client)
        await wait_until(lambda: session._requests_open == 1)
        await expect_reset(client, client.start("POST", "/rpc/echo", [], BODY), REJECTED)
        for stream_id in subscriptions:
            client.cancel(stream_id)


# -- the request read timeout ------------------------------------------------------------


@deadline(10)
async def test_a_request_that_never_completes_is_cut_off_at_the_read_timeout(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    certificate: Certificate,
) -> None:
    # request_read_timeout=2: a call whose body never ends, and one whose header
    # block trickles in a byte every 0.5 s, are both reset with
    # H3_REQUEST_CANCELLED 2 s after their first byte; neither runs, neither
    # keeps a place among the calls in flight, and whole requests on the same
    # connection and on another one are served meanwhile.
    calls = Calls()
    async with (
        gateway(server_config, calls, max_concurrent_calls=3, request_read_timeout=2.0) as server,
        h3_client(server.port, certificate.path) as client,
        h3_client(server.port, certificate.path) as other,
    ):
        session = session_of(server, client)
        started = trio.current_time()
        silent, _ = open_stalled(client)

        trickled = client.quic.get_next_available_stream_id()
        trickle_state = client._pending[trickled] = _Pending()
        _, block = pylsqpack.Encoder().encode(trickled, call_headers(client, len(BODY)))
        data = encode_frame(FrameType.HEADERS, block) + encode_frame(FrameType.DATA, BODY)

        client.quic.send_stream_data(trickled, data[:1])  # the stream exists from here
        client.transmit()

        async def trickle() -> None:
            for index in range(1, len(data) - 1):
                await trio.sleep(0.5)  # the trickle's pace, not a wait
                if trickle_state.done.is_set():
                    return
                try:
                    client.quic.send_stream_data(trickled, data[index : index + 1])
                except RuntimeError:
                    return  # aioquic: the server's STOP_SENDING came first
                client.transmit()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            for i in range(3):
                assert (await client.call(ECHO, i)).msgpack() == i
                assert (await other.call(ECHO, -i)).msgpack() == -i
            await expect_reset(client, silent, CANCELLED)
            assert 1.99 <= trio.current_time() - started < 3.0
            await expect_reset(client, trickled, CANCELLED)
        assert calls.seen == [0, 0, 1, -1, 2, -2]
        await wait_until(lambda: session._requests_open == 0)
        assert session._requests == {}
        assert gateway_of(server).metrics.refused == {"LIMIT_EXCEEDED": 2}
        # The same connection goes on serving, with its whole allowance.
        stalled = [open_stalled(client)[0] for _ in range(3)]
        await wait_until(lambda: session._requests_open == 3)
        for stream_id in stalled:
            client.h3.send_data(stream_id, BODY, end_stream=True)
        client.transmit()
        for stream_id in stalled:
            assert (await client.response(stream_id)).msgpack() == {"n": 1}
        assert client.terminated is None
        assert other.terminated is None


@deadline(10)
async def test_whole_requests_are_read_without_a_timeout_scope(
    server_config: ServerConfig, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common case, a request that came in whole (FIN included), cannot wait
    # while it is read, so it pays for no cancel scope; one that comes in pieces
    # is read under the timeout.
    calls = Calls()
    scopes: list[float] = []
    original = trio.move_on_after

    def counting(seconds: float, **kwargs: Any) -> trio.CancelScope:
        scopes.append(seconds)
        return original(seconds, **kwargs)

    async with (
        gateway(server_config, calls, request_read_timeout=7.5) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        monkeypatch.setattr(trio, "move_on_after", counting)
        for i in range(5):
            assert (await client.call(ECHO, i)).msgpack() == i
        assert scopes == []
        stream_id, _ = open_stalled(client)
        session = session_of(server, client)
        await wait_until(lambda: session._requests_open == 1)
        client.h3.send_data(stream_id, BODY, end_stream=True)
        client.transmit()
        assert (await client.response(stream_id)).msgpack() == {"n": 1}
        assert scopes == [7.5]
        monkeypatch.undo()
