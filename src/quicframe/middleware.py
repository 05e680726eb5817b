"""Built-in server middleware: logging, authentication, concurrency limits, deadline caps.

Each function here returns a middleware for :meth:`quicframe.Router.use` (or the
``middleware=`` argument of :class:`quicframe.Router`): an
``async def middleware(ctx, request, call_next)`` that runs around the handler.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from ._router import CallContext, CallNext, Middleware
from .errors import (
    DeadlineExceeded,
    ErrorCode,
    PermissionDenied,
    QuicframeError,
    ResourceExhausted,
    Unauthenticated,
    code_name,
)
from .session import sla_urgency

__all__ = ["cap_deadline", "limit_concurrency", "log_calls", "require_principal"]


def log_calls(logger: logging.Logger | None = None, *, level: int = logging.INFO) -> Middleware:
    """Log one structured record per call: request id, opcode, status and latency.

    The record's message names them all, and its ``extra`` attributes
    ``request_id``, ``opcode``, ``status``, ``latency_ms`` and ``principal`` carry
    them for structured handlers.

    Args:
        logger: where to log (default ``logging.getLogger("quicframe.calls")``).
        level: the level of records for calls that succeeded; failures log at
            WARNING (or ERROR for INTERNAL).
    """
    log = logger if logger is not None else logging.getLogger("quicframe.calls")

    async def middleware(ctx: CallContext, request: Any, call_next: CallNext) -> Any:
        start = trio.current_time()
        status = "OK"
        try:
            return await call_next(ctx, request)
        except QuicframeError as exc:
            status = exc.code_name
            raise
        except trio.Cancelled:
            expired = ctx.deadline != math.inf and trio.current_time() >= ctx.deadline
            status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        except Exception:
            status = code_name(ErrorCode.INTERNAL)
            raise
        finally:
            record_level = level
            if status == "INTERNAL":
                record_level = logging.ERROR
            elif status != "OK":
                record_level = max(level, logging.WARNING)
            if log.isEnabledFor(record_level):  # else skip building the record's fields
                latency_ms = (trio.current_time() - start) * 1000
                _log_call(log, record_level, ctx, status, latency_ms)

    return middleware


def _log_call(
    log: logging.Logger, record_level: int, ctx: CallContext, status: str, latency_ms: float
) -> None:
    log.log(
        record_level,
        "call %s opcode=0x%04x status=%s latency_ms=%.3f",
        ctx.request_id,
        ctx.opcode,
        status,
        latency_ms,
        extra={
            "request_id": ctx.request_id,
            "opcode": ctx.opcode,
            "status": status,
            "latency_ms": latency_ms,
            "principal": ctx.principal,
        },
    )


def require_principal(
    check: Callable[[CallContext], bool] | None = None, *, opcodes: Iterable[int] | None = None
) -> Middleware:
    """Refuse calls without an authenticated principal (UNAUTHENTICATED), and calls
    that ``check(ctx)`` refuses (PERMISSION_DENIED).

    Args:
        check: an authorisation predicate run once a principal is known.
        opcodes: only guard these operations (default: all).
    """
    guarded = None if opcodes is None else frozenset(opcodes)

    async def middleware(ctx: CallContext, request: Any, call_next: CallNext) -> Any:
        if guarded is None or ctx.opcode in guarded:
            if ctx.principal is None:
                raise Unauthenticated("this operation needs an authenticated client")
            if check is not None and not check(ctx):
                raise PermissionDenied(f"{ctx.principal} may not call opcode 0x{ctx.opcode:04x}")
        return await call_next(ctx, request)

    return middleware


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class _PriorityLimiter:
    """A capacity limiter whose queue is served most urgent first.

    Waiters are ordered by stream urgency (``quicframe.session.sla_urgency`` of
    the call's SLA class: GOLD before SILVER and unclassified calls, those
    before BRONZE), first come first served within an urgency.  A released
    token goes straight to the waiter it wakes, so a newcomer cannot overtake.
    """

    __slots__ = ("_borrowed", "_order", "_queue", "total_tokens")

    def __init__(self, total_tokens: int) -> None:
        self.total_tokens = total_tokens
        self._borrowed = 0
        self._queue: list[tuple[int, int, _Waiter]] = []  # a heap
        self._order = itertools.count()

    def acquire_nowait(self) -> None:
        if self._borrowed >= self.total_tokens or self._queue:
            raise trio.WouldBlock
        self._borrowed += 1

    async def acquire(self, urgency: int) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.acquire_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter()
        heapq.heappush(self._queue, (urgency, next(self._order), waiter))
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # handed over as we were cancelled: pass it on
            else:
                self._queue = [item for item in self._queue if item[2] is not waiter]
                heapq.heapify(self._queue)
            raise

    def release(self) -> None:
        if self._queue:
            _, _, waiter = heapq.heappop(self._queue)
            waiter.granted = True  # the token changes hands: _borrowed stays
            waiter.event.set()
        else:
            self._borrowed -= 1


def limit_concurrency(
    limits: Mapping[int, int], *, default: int | None = None, wait: bool = False
) -> Middleware:
    """Run at most ``limits[opcode]`` calls of each operation at once (per server).

    With ``wait=True``, calls over the limit queue, and the queue is served by
    SLA class: GOLD calls are admitted before SILVER and unclassified ones, and
    those before BRONZE; calls of one class are admitted in arrival order.

    Args:
        limits: opcode -> calls allowed at once.
        default: the limit of the other operations (None: unlimited).
        wait: queue calls over the limit (bounded by their deadlines) instead of
            refusing them at once with RESOURCE_EXHAUSTED.
    """
    limiters = {opcode: _PriorityLimiter(n) for opcode, n in limits.items()}
    shared_default: dict[int, _PriorityLimiter] = {}

    def limiter_for(opcode: int) -> _PriorityLimiter | None:
        limiter = limiters.get(opcode)
        if limiter is None and default is not None:
            limiter = shared_default.get(opcode)
            if limiter is None:
                limiter = shared_default[opcode] = _PriorityLimiter(default)
        return limiter

    async def middleware(ctx: CallContext, request: Any, call_next: CallNext) -> Any:
        limiter = limiter_for(ctx.opcode)
        if limiter is None:
            return await call_next(ctx, request)
        if not wait:
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                raise ResourceExhausted(
                    f"opcode 0x{ctx.opcode:04x} is at its limit of "
                    f"{limiter.total_tokens} concurrent calls",
                    details={"limit": limiter.total_tokens},
                ) from None
        else:
            await limiter.acquire(sla_urgency(ctx.sla_class))
        try:
            return await call_next(ctx, request)
        finally:
            limiter.release()

    return middleware


def cap_deadline(seconds: float | Mapping[int, float]) -> Middleware:
    """Shorten every call's deadline to at most ``seconds`` from its arrival.

    A call that runs past the cap is cancelled and answered DEADLINE_EXCEEDED,
    exactly as if the caller had sent that budget.

    Args:
        seconds: one cap for all operations, or opcode -> cap (others uncapped).
    """

    async def middleware(ctx: CallContext, request: Any, call_next: CallNext) -> Any:
        cap = seconds if not isinstance(seconds, Mapping) else seconds.get(ctx.opcode)
        if cap is not None:
            deadline = ctx.received_at + cap
            if deadline < ctx.deadline:
                ctx.deadline = deadline
                if ctx.cancel_scope is None:
                    raise DeadlineExceeded("no cancel scope to cap")  # pragma: no cover
                ctx.cancel_scope.deadline = deadline
        return await call_next(ctx, request)

    return middleware
