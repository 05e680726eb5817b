"""Calls: deadlines, cancellation, request ids, integrity, errors, and many at once."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    ErrorCode,
    IntegrityError,
    InternalError,
    InvalidArgument,
    NotFound,
    RemoteProtocolError,
    register_error_code,
)
from quicframe.middleware import cap_deadline
from quicframe.session import encode_request, error_from_frame
from quicframe.wire import FrameType, Metadata, MsgpackCodec, encode_frame

from .conftest import deadline, raw_call, raw_session, read_to_end

ECHO, SLEEP, CRASH, INVALID, CONTEXT, BLOCK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
UNSENDABLE = 0x07
PLAIN: MsgpackCodec[Any] = MsgpackCodec()

QuotaExceeded = register_error_code(0x1_0042, "QUOTA_EXCEEDED")


@dataclass
class Probe:
    """What the handlers saw, for the tests to assert on."""

    contexts: list[quicframe.CallContext] = field(default_factory=list)
    ran: int = 0
    started: trio.Event = field(default_factory=trio.Event)
    cancelled: trio.Event = field(default_factory=trio.Event)
    cancelled_at: float | None = None


def make_router(probe: Probe) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.ran += 1
        return request

    @router.rpc(SLEEP)
    async def sleep_forever(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.contexts.append(ctx)
        probe.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            probe.cancelled_at = trio.current_time()
            probe.cancelled.set()
            raise

    @router.rpc(CRASH)
    async def crash(request: Any, ctx: quicframe.CallContext) -> Any:
        raise ZeroDivisionError("handler bug")

    @router.rpc(INVALID)
    async def invalid(request: Any, ctx: quicframe.CallContext) -> Any:
        if request == "quota":
            raise QuotaExceeded("over quota", details={"used": 11})
        raise InvalidArgument("bad input", details={"field": "x"})

    @router.rpc(CONTEXT)
    async def context(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.contexts.append(ctx)
        now = trio.current_time()
        remaining = None if ctx.deadline == float("inf") else ctx.deadline - now
        return {
            "request_id": ctx.request_id,
            "sla_class": ctx.sla_class,
            "budget_ns": ctx.budget_ns,
            "remaining": remaining,
            "trace": ctx.trace_context,
        }

    @router.rpc(UNSENDABLE)
    async def unsendable(request: Any, ctx: quicframe.CallContext) -> Any:
        return object()  # msgpack cannot encode it

    return router


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(probe: Probe, server_config: ServerConfig) -> AsyncIterator[quicframe.Server]:
    router = make_router(probe)
    router.use(cap_deadline({BLOCK: 0.1}))

    @router.rpc(BLOCK)
    async def block(request: Any, ctx: quicframe.CallContext) -> Any:
        return await make_router(probe).route(SLEEP).handler(request, ctx)  # type: ignore[union-attr]

    async with quicframe.open_server(router, "127.0.0.1", 0, server_config) as running:
        yield running


@pytest.fixture
async def client(
    server: quicframe.Server, client_config: ClientConfig
) -> AsyncIterator[quicframe.Client]:
    async with quicframe.connect("127.0.0.1", server.port, client_config) as connected:
        yield connected


@deadline(10)
async def test_budget_propagates(client: quicframe.Client) -> None:
    with trio.fail_after(2.0):
        sent_remaining = trio.current_effective_deadline() - trio.current_time()
        seen = await client.call(CONTEXT, None)
    # The server's remaining time is the client's, less the one-way trip.
    assert seen["budget_ns"] is not None
    assert abs(seen["budget_ns"] / 1e9 - sent_remaining) < 0.005
    assert 0 < sent_remaining - seen["remaining"] < 0.005
    # Without a deadline nothing is sent and the server has none (the shield hides
    # the test's own deadline).
    with trio.CancelScope(shield=True):
        seen = await client.call(CONTEXT, None)
    assert seen["budget_ns"] is None
    assert seen["remaining"] is None


@deadline(10)
async def test_handler_cancelled_at_the_deadline(client: quicframe.Client, probe: Probe) -> None:
    # The server caps BLOCK at 100 ms: its scope expires, the handler sees
    # Cancelled, and the client gets DEADLINE_EXCEEDED.
    start = trio.current_time()
    with trio.fail_after(5), pytest.raises(DeadlineExceeded) as info:
        await client.call(BLOCK, None)
    elapsed = trio.current_time() - start
    assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert probe.cancelled.is_set()
    assert 0.09 < elapsed < 0.5
    ctx = probe.contexts[-1]
    assert probe.cancelled_at is not None
    assert abs(probe.cancelled_at - ctx.deadline) < 0.05


@deadline(10)
async def test_client_deadline_reaches_the_handler(client: quicframe.Client, probe: Probe) -> None:
    # The caller's own deadline fires first on the caller's side (TooSlowError);
    # the handler is cancelled at about the same time by its budget or the reset.
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
        await client.call(SLEEP, None)
    with trio.fail_after(1):
        await probe.cancelled.wait()
    ctx = probe.contexts[-1]
    assert ctx.budget_ns is not None
    assert 0.15e9 < ctx.budget_ns <= 0.2e9


@deadline(10)
async def test_client_cancel_reaches_the_server_handler(
    client: quicframe.Client, probe: Probe, server: quicframe.Server
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.call, SLEEP, None)
        await probe.started.wait()
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    with trio.fail_after(1):
        await probe.cancelled.wait()
    assert probe.cancelled_at is not None
    rtt = await client.ping()
    # Within about one round trip (plus scheduling slack on a loaded box).
    assert probe.cancelled_at - cancelled_at < max(0.05, 5 * rtt)
    # The cancel came from the reset, long before the budget (the test's deadline) ran out.
    assert probe.cancelled_at < probe.contexts[-1].deadline - 1
    stats = client.statistics()
    assert stats.calls_failed.get("CANCELLED") == 1
    assert stats.calls_in_flight == 0
    # The connection carries on.
    assert await client.call(ECHO, "after") == "after"
    with trio.fail_after(1):
        while server.statistics().calls_failed.get("CANCELLED") != 1:
            await trio.testing.wait_all_tasks_blocked()


@deadline(10)
async def test_request_id_sla_and_trace(client: quicframe.Client) -> None:
    seen = await client.call(
        CONTEXT,
        None,
        request_id="req-42",
        sla_class=quicframe.SlaClass.GOLD,
        trace_context="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert seen["request_id"] == "req-42"
    assert seen["sla_class"] == quicframe.SlaClass.GOLD
    assert seen["trace"].startswith("00-0af7")
    generated = {(await client.call(CONTEXT, None))["request_id"] for _ in range(5)}
    assert len(generated) == 5  # a fresh id per call


@deadline(10)
async def test_request_id_is_echoed_and_generated_by_the_server(
    server: quicframe.Server, client_config: ClientConfig
) -> None:
    async with raw_session(server.port, client_config) as connection:
        reply = await raw_call(
            connection,
            encode_request(ECHO, PLAIN.encode(1), request_id="raw-1"),
        )
        assert reply.type == FrameType.RESPONSE
        assert reply.metadata.request_id == "raw-1"
        # A REQUEST without a request id gets one from the server, echoed back.
        bare = encode_frame(FrameType.REQUEST, PLAIN.encode(2), opcode=CONTEXT)
        reply = await raw_call(connection, bare)
        generated = PLAIN.decode(reply.body)["request_id"]
        assert generated
        assert reply.metadata.request_id == generated


@deadline(10)
async def test_integrity(
    server: quicframe.Server, client: quicframe.Client, client_config: ClientConfig, probe: Probe
) -> None:
    # A good digest passes both ways.
    assert await client.call(ECHO, b"x" * 100, integrity=True) == b"x" * 100
    ran = probe.ran
    async with raw_session(server.port, client_config) as connection:
        body = PLAIN.encode("payload")
        digest = hashlib.sha256(b"other").digest()
        metadata = Metadata.build(request_id="tampered", payload_sha256=digest)
        reply = await raw_call(
            connection, encode_frame(FrameType.REQUEST, body, opcode=ECHO, metadata=metadata)
        )
    assert reply.type == FrameType.ERROR
    error = error_from_frame(reply)
    assert isinstance(error, IntegrityError)
    assert error.code == ErrorCode.INTEGRITY_MISMATCH
    assert reply.metadata.request_id == "tampered"
    assert probe.ran == ran  # rejected before the handler ran


@deadline(10)
async def test_unknown_opcode(client: quicframe.Client) -> None:
    with pytest.raises(NotFound) as info:
        await client.call(0x0999, None)
    assert info.value.code == ErrorCode.NOT_FOUND
    assert "0x0999" in info.value.message


@deadline(10)
async def test_handler_crash_is_internal_and_harmless(
    client: quicframe.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="quicframe.server"),
        pytest.raises(InternalError) as info,
    ):
        await client.call(CRASH, None, request_id="crash-1")
    assert "ZeroDivisionError" in info.value.message
    records = [r for r in caplog.records if "crash-1" in r.getMessage()]
    assert records
    assert getattr(records[0], "request_id", None) == "crash-1"
    # The connection and the server carry on.
    assert await client.call(ECHO, "still here") == "still here"


@deadline(10)
async def test_a_result_that_cannot_be_encoded_is_an_internal_error(
    client: quicframe.Client,
) -> None:
    # The handler returned, but its result cannot become a RESPONSE: the caller
    # gets INTERNAL saying so, and the connection carries on.
    with pytest.raises(InternalError) as info:
        await client.call(UNSENDABLE, None)
    assert "the response cannot be sent" in info.value.message
    assert await client.call(ECHO, "still here") == "still here"


@deadline(10)
async def test_remote_errors_keep_code_message_and_details(client: quicframe.Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.call(INVALID, None)
    assert info.value.message == "bad input"
    assert info.value.details == {"field": "x"}
    with pytest.raises(QuotaExceeded) as app:
        await client.call(INVALID, "quota")
    assert app.value.code == 0x1_0042
    assert app.value.details == {"used": 11}


@deadline(10)
async def test_malformed_frame_fails_only_its_stream(
    server: quicframe.Server, client_config: ClientConfig
) -> None:
    async with raw_session(server.port, client_config) as connection:
        stream = await connection.open_stream()
        await stream.send_all(b"\x00" * 12)  # frame type 0: MALFORMED_HEADER
        await stream.send_eof()
        with pytest.raises(trio.BrokenResourceError) as info:
            await read_to_end(stream)
        assert getattr(info.value, "code", None) == ErrorCode.MALFORMED_HEADER
        await stream.aclose()
        # A PING where a REQUEST belongs: UNEXPECTED_FRAME, again for that stream only.
        stream = await connection.open_stream()
        await stream.send_all(encode_frame(FrameType.PING, bytes(8)))
        await stream.send_eof()
        with pytest.raises(trio.BrokenResourceError) as info:
            await read_to_end(stream)
        assert getattr(info.value, "code", None) == ErrorCode.UNEXPECTED_FRAME
        await stream.aclose()
        reply = await raw_call(connection, encode_request(ECHO, PLAIN.encode("ok"), request_id="r"))
        assert PLAIN.decode(reply.body) == "ok"


@deadline(10)
async def test_typed_body_that_does_not_decode(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    @dataclass
    class Need:
        x: int

    router = quicframe.Router()

    @router.rpc(0x0A, request=Need)
    async def need(request: Need, ctx: quicframe.CallContext) -> int:
        return request.x

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        assert await client.call(0x0A, Need(3)) == 3
        with pytest.raises(RemoteProtocolError) as info:
            await client.call(0x0A, {"y": 1})
        assert info.value.code == ErrorCode.MALFORMED_BODY
        assert await client.call(0x0A, {"x": 4}) == 4


@deadline(10)
async def test_calls_after_the_connection_closed(client: quicframe.Client) -> None:
    await client.connection.aclose()
    with pytest.raises((ConnectionClosed, trio.ClosedResourceError)):
        await client.call(ECHO, 1)


CONCURRENT_CALLS = 10_000


@pytest.mark.slow
@deadline(60)
async def test_ten_thousand_concurrent_calls(client: quicframe.Client) -> None:
    replies: dict[int, Any] = {}
    request_ids: dict[int, str] = {}

    async def one(i: int) -> None:
        request_ids[i] = f"c-{i}"
        replies[i] = await client.call(ECHO, {"i": i, "pad": "x" * (i % 17)}, request_id=f"c-{i}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT_CALLS):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - start
    assert len(replies) == CONCURRENT_CALLS
    for i, reply in replies.items():
        assert reply == {"i": i, "pad": "x" * (i % 17)}
    stats = client.statistics()
    assert stats.calls_completed >= CONCURRENT_CALLS
    assert stats.calls_in_flight == 0
    print(f"{CONCURRENT_CALLS} concurrent calls in {elapsed:.2f} s")


@deadline(10)
async def test_max_concurrent_calls_per_connection(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    release = trio.Event()
    running = 0
    both = trio.Event()
    router = quicframe.Router()

    @router.rpc(BLOCK)
    async def block(request: Any, ctx: quicframe.CallContext) -> Any:
        nonlocal running
        running += 1
        if running == 2:
            both.set()
        await release.wait()
        return "ok"

    async with (
        quicframe.open_server(
            router, "127.0.0.1", 0, server_config, max_concurrent_calls=2
        ) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
        trio.open_nursery() as nursery,
    ):
        assert client.welcome.max_concurrent_calls == 2
        nursery.start_soon(client.call, BLOCK, None)
        nursery.start_soon(client.call, BLOCK, None)
        await both.wait()
        with pytest.raises(quicframe.errors.ResourceExhausted):
            await client.call(BLOCK, None)
        release.set()


@deadline(10)
async def test_finished_calls_leave_no_streams_behind(
    client: quicframe.Client, server: quicframe.Server
) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(client.call, ECHO, i)
    with pytest.raises(NotFound):
        await client.call(0x0999, None)
    with pytest.raises(InternalError):
        await client.call(CRASH, None)
    (session,) = server._sessions
    await client.ping()  # let the server finish its side of the last calls
    # Only the control stream is left on either side.
    assert client.connection.statistics().streams_open == 1
    assert session.connection.statistics().streams_open == 1
