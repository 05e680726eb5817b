"""A call without a deadline enters its cancel scope lazily (quicframe._deferred).

The handler must not be able to tell: whatever it does before its first
checkpoint (open scopes or a nursery of its own, read or change
``ctx.cancel_scope``, read the effective deadline), the call's scope ends up
around it, and cancelling that scope cancels the handler.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import quicframe
import quicframe._deferred
from quicframe import ClientConfig, ServerConfig
from quicframe._deferred import (
    DEFERRAL_WORKS,
    DeferredCallContext,
    cancelled_caught,
    run_in_scope,
)
from quicframe.errors import ErrorCode
from quicframe.session import encode_request

from .conftest import deadline, raw_session, read_reply


def test_the_trio_internals_the_deferral_needs_are_there() -> None:
    # Without them every call enters its scope up front (correct, but slower):
    # a trio release that moves them should fail here, not pass quietly.
    assert DEFERRAL_WORKS


def run(handler: Callable[[Any], Awaitable[Any]], ctx: Any) -> Awaitable[Any]:
    """What run_in_scope calls: the test's handler, given the context."""
    return handler(ctx)


def make_context(scope: trio.CancelScope) -> DeferredCallContext:
    return DeferredCallContext(
        opcode=1, request_id="r", deadline=math.inf, cancel_scope=scope, route_name="h"
    )


async def run_in_task(
    handler: Callable[[DeferredCallContext], Awaitable[Any]],
) -> tuple[trio.CancelScope, DeferredCallContext, list[Any]]:
    """Run ``handler`` through run_in_scope in a task of its own; cancel the call's
    scope once every task is blocked; return the scope, the context and
    [what run_in_scope returned]."""
    scope = trio.CancelScope()
    ctx = make_context(scope)
    out: list[Any] = []

    async def call() -> None:
        out.append(await run_in_scope(ctx, run, handler, ctx))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    return scope, ctx, out


@deadline(10)
async def test_a_handler_that_returns_at_once_never_enters_the_scope() -> None:
    async def handler(ctx: DeferredCallContext) -> str:
        return "done"

    scope = trio.CancelScope()
    assert await run_in_scope(make_context(scope), run, handler, None) == "done"
    with scope:  # never entered, so it can still be
        pass
    # A context made without a scope never makes one for such a handler.
    lazy = DeferredCallContext(opcode=1, request_id="r", cancel_scope=None)
    assert await run_in_scope(lazy, run, handler, lazy) == "done"
    assert not cancelled_caught(lazy)
    assert DeferredCallContext.__mro__[1].cancel_scope.__get__(lazy) is None  # type: ignore[attr-defined]


@deadline(10)
async def test_the_scope_is_entered_at_the_first_checkpoint() -> None:
    seen: list[str] = []

    async def handler(ctx: DeferredCallContext) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen.append("cancelled")
            raise

    scope, ctx, out = await run_in_task(handler)
    assert seen == ["cancelled"]
    assert out == [None]
    assert scope.cancelled_caught
    assert cancelled_caught(ctx)


@pytest.mark.parametrize("depth", [1, 3])
@deadline(10)
async def test_scopes_opened_before_the_first_checkpoint_end_up_inside(depth: int) -> None:
    inner: list[trio.CancelScope] = []
    seen: list[str] = []

    async def handler(ctx: DeferredCallContext) -> None:
        async def nest(level: int) -> None:
            if level == 0:
                try:
                    await trio.sleep_forever()
                finally:
                    seen.append("cancelled")
            with trio.CancelScope(deadline=trio.current_time() + 3600) as own:
                inner.append(own)
                await nest(level - 1)
            seen.append("own scope swallowed it")  # must not happen

        await nest(depth)

    scope, ctx, out = await run_in_task(handler)
    assert seen == ["cancelled"]
    assert out == [None]
    assert scope.cancelled_caught
    assert cancelled_caught(ctx)
    assert [own.cancelled_caught for own in inner] == [False] * depth
    # The task's cancel status is back where it was: new scopes still work.
    with trio.move_on_after(0.01) as after:
        await trio.sleep_forever()
    assert after.cancelled_caught


@deadline(10)
async def test_a_nursery_opened_before_the_first_checkpoint_is_cancelled_with_the_call() -> None:
    children: list[str] = []

    async def child() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            children.append("cancelled")
            raise

    async def handler(ctx: DeferredCallContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            nursery.start_soon(child)

    scope, ctx, out = await run_in_task(handler)
    assert children == ["cancelled", "cancelled"]
    assert out == [None]
    assert scope.cancelled_caught
    assert cancelled_caught(ctx)


@deadline(10)
async def test_the_handlers_own_timeout_still_fires_inside_the_call(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(ctx: DeferredCallContext) -> str:
        with trio.move_on_after(1) as own:
            await trio.sleep_forever()
        assert own.cancelled_caught
        await trio.lowlevel.checkpoint()
        return "timed out by itself"

    scope = trio.CancelScope()
    ctx = make_context(scope)
    assert await run_in_scope(ctx, run, handler, ctx) == "timed out by itself"
    assert not scope.cancelled_caught


@deadline(10)
async def test_reading_the_scope_enters_it_so_its_deadline_is_effective() -> None:
    seen: dict[str, float] = {}

    async def handler(ctx: DeferredCallContext) -> None:
        with trio.CancelScope():  # opened before the scope is read: nested inside
            call_scope = ctx.cancel_scope
            assert call_scope is not None
            call_scope.deadline = trio.current_time() + 5  # inside the test deadline
            seen["effective"] = trio.current_effective_deadline()
            seen["set"] = call_scope.deadline
            await trio.sleep_forever()

    scope, ctx, out = await run_in_task(handler)
    assert seen["effective"] == seen["set"]
    assert out == [None]
    assert scope.cancelled_caught
    assert cancelled_caught(ctx)


@deadline(10)
async def test_errors_propagate_and_leave_the_task_clean() -> None:
    async def fails_at_once(ctx: DeferredCallContext) -> None:
        raise ValueError("at once")

    async def fails_later(ctx: DeferredCallContext) -> None:
        with trio.CancelScope():
            await trio.lowlevel.checkpoint()
            raise KeyError("later")

    async def fails_after_reading(ctx: DeferredCallContext) -> None:
        assert ctx.cancel_scope is not None
        raise LookupError("after reading")

    outside = trio.current_effective_deadline()
    for handler, error in [
        (fails_at_once, ValueError),
        (fails_later, KeyError),
        (fails_after_reading, LookupError),
    ]:
        scope = trio.CancelScope()
        ctx = make_context(scope)
        with pytest.raises(error):
            await run_in_scope(ctx, run, handler, ctx)
        assert not scope.cancelled_caught
        assert trio.current_effective_deadline() == outside
        with trio.move_on_after(0) as after:
            await trio.sleep_forever()
        assert after.cancelled_caught


# -- over the network: a REQUEST with no deadline budget, cancelled by the peer --


@pytest.mark.parametrize("deferral", [True, False], ids=["deferred", "up-front"])
@deadline(10)
async def test_a_peer_cancel_reaches_a_handler_that_opened_its_own_scopes_first(
    server_config: ServerConfig,
    client_config: ClientConfig,
    deferral: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Also with the fallback a trio without the internals would get.
    monkeypatch.setattr(quicframe._deferred, "DEFERRAL_WORKS", deferral)
    started = trio.Event()
    cancelled = trio.Event()
    router = quicframe.Router()

    @router.rpc(0x10)
    async def guarded(request: Any, ctx: quicframe.CallContext) -> Any:
        # A timeout and a nursery of its own before the first checkpoint.
        with trio.move_on_after(3600):
            async with trio.open_nursery():
                started.set()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    cancelled.set()
                    raise
        return "its own timeout fired"  # must not happen

    @router.rpc(0x11)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        raw_session(server.port, client_config) as connection,
    ):
        stream = await connection.open_stream()
        # No DEADLINE_BUDGET_NS: the server runs the handler with an infinite
        # deadline, the lazily entered scope.
        await stream.send_all(encode_request(0x10, b"\xc0", request_id="no-budget"))
        await stream.send_eof()
        await started.wait()
        stream.reset(ErrorCode.CANCELLED)
        stream.stop_sending(ErrorCode.CANCELLED)
        await cancelled.wait()
        with trio.fail_after(2):
            while server.statistics().calls_failed.get("CANCELLED") != 1:
                await trio.testing.wait_all_tasks_blocked()
        # The connection goes on.
        again = await connection.open_stream()
        await again.send_all(encode_request(0x11, b"\xa2hi", request_id="after"))
        await again.send_eof()
        reply = await read_reply(again)
        assert bytes(reply.body) == b"\xa2hi"
