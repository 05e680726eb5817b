"""A call's cancel scope, entered only once something could observe it.

Entering and leaving a ``trio.CancelScope`` costs 3 to 5 us, about a sixth of
what the server spends on a small call.  A scope has no observable effect on
code that never reaches a checkpoint, though: cancellation is only delivered
at one, and the only other way to see a scope is to read the effective
deadline (or the scope itself).  So a call whose deadline is infinite (the
caller sent no budget) starts its handler outside the scope, and
:func:`run_in_scope` enters it at the first moment it can matter:

* when the handler (or a middleware) first reads ``ctx.cancel_scope``
  (:class:`DeferredCallContext`), so that what it does with the scope (a new
  deadline, ``cancel()``) and what it then reads (``current_effective_deadline``)
  behave as in a scope entered from the start;
* when the handler first yields to trio: before trio sees the yield, so the
  wait is one the scope can cancel.

A handler that returns without a checkpoint (an echo, a lookup in memory)
never pays for the scope.  One that opened a cancel scope or a nursery of its
own before its first checkpoint has those inside the call's scope once it is
entered: :func:`_enter_around` links the call's scope between the task's
scope and the handler's, as though it had been entered first.  That uses
trio internals (the task's cancel status and the status tree); when they are
not as expected, :data:`DEFERRAL_WORKS` is False and every call enters its
scope up front, as before.
"""

from __future__ import annotations

import math
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Final

import trio

from ._router import CallContext

__all__ = ["DEFERRAL_WORKS", "DeferredCallContext", "cancelled_caught", "run_in_scope"]


def _internals_present() -> bool:
    try:
        from trio._core._run import CancelScope, CancelStatus, Task
    except ImportError:  # pragma: no cover - a trio that moved its internals
        return False
    parent = getattr(CancelStatus, "parent", None)
    return (
        isinstance(parent, property)
        and parent.fset is not None
        and callable(getattr(Task, "_activate_cancel_status", None))
        and "_cancel_status" in getattr(Task, "__slots__", ())
        and "_cancel_status" in getattr(CancelScope, "__slots__", ())
    )


DEFERRAL_WORKS: Final = _internals_present()

_SCOPE_SLOT: Final = CallContext.__dict__["cancel_scope"]  # the dataclass's slot


def _enter_around(scope: trio.CancelScope, task: Any, base: Any) -> None:
    """Enter ``scope`` in ``task`` as if it had been entered when the task's
    cancel status was ``base``: around every scope entered since."""
    current = task._cancel_status
    scope.__enter__()
    if current is base:
        return
    ours = scope._cancel_status
    assert ours is not None
    outer = current
    while (parent := outer.parent) is not base:
        if parent is None:  # pragma: no cover - base is not an ancestor: misuse
            raise RuntimeError("the call's cancel scope lost its place")
        outer = parent
    ours.parent = base
    outer.parent = ours
    task._activate_cancel_status(current)


class DeferredCallContext(CallContext):
    """The server's :class:`CallContext`: its ``cancel_scope`` is made when first
    needed (with the context's ``deadline``) and, for a call without a deadline,
    entered when first read while :func:`run_in_scope` runs the handler's first
    step."""

    # Set by run_in_scope (not by __init__: the dataclass's own __init__ is
    # three times cheaper than a wrapper around it).
    __slots__ = ("_base", "_entered", "_task")
    _base: Any  # the task's cancel status when the handler started
    _entered: bool
    _task: Any  # the task running the call, until the scope is entered

    @property
    def cancel_scope(self) -> trio.CancelScope:
        try:
            task = self._task
        except AttributeError:  # not (yet) run by run_in_scope
            return self._scope()
        if task is not None:
            return self._enter()
        return self._scope()

    @cancel_scope.setter
    def cancel_scope(self, scope: trio.CancelScope | None) -> None:
        _SCOPE_SLOT.__set__(self, scope)

    def _scope(self) -> trio.CancelScope:
        scope: trio.CancelScope | None = _SCOPE_SLOT.__get__(self)
        if scope is None:
            scope = trio.CancelScope(deadline=self.deadline)
            _SCOPE_SLOT.__set__(self, scope)
        return scope

    def _enter(self) -> trio.CancelScope:
        scope = self._scope()
        task = self._task
        if task is not None and trio.lowlevel.current_task() is task:
            self._task = None
            _enter_around(scope, task, self._base)
            self._entered = True
        return scope


def cancelled_caught(ctx: CallContext) -> bool:
    """``ctx.cancel_scope.cancelled_caught``, without making the scope."""
    scope: trio.CancelScope | None = _SCOPE_SLOT.__get__(ctx)
    return scope is not None and scope.cancelled_caught


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], message: Any) -> Generator[Any, Any, Any]:
    """Go on running ``coro``, which yielded ``message`` to trio (and was not
    resumed since): a ``yield from`` that starts with a yield already made."""
    while True:
        try:
            value = yield message
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # trio throws Cancelled (or another error) in
            try:
                message = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                message = coro.send(value)
            except StopIteration as done:
                return done.value


async def run_in_scope(
    ctx: DeferredCallContext, call: Callable[[Any, Any], Awaitable[Any]], first: Any, second: Any
) -> Any:
    """``with ctx.cancel_scope: return await call(first, second)`` (a handler, or
    the middleware pipeline): a ``trio.Cancelled`` of that scope is caught
    (:func:`cancelled_caught` tells) and None returned; any other exception
    propagates.  A call with a deadline enters its scope first; one without
    enters it no earlier than needed.
    """
    if ctx.deadline != math.inf or not DEFERRAL_WORKS:
        with ctx._scope():
            return await call(first, second)
        return None  # the scope caught its Cancelled
    task = trio.lowlevel.current_task()
    ctx._task = task
    ctx._base = task._cancel_status
    ctx._entered = False
    try:
        coro = call(first, second)
        if not isinstance(coro, types.CoroutineType):
            ctx._enter()
            result = await coro
        else:
            try:
                message = coro.send(None)
            except StopIteration as done:
                result = done.value
            else:
                ctx._enter()  # before trio sees the yield
                result = await _resume(coro, message)
    except BaseException as exc:
        ctx._task = None
        if ctx._entered:
            ctx._entered = False
            if ctx._scope().__exit__(type(exc), exc, exc.__traceback__):
                return None
        raise
    ctx._task = None
    if ctx._entered:
        ctx._entered = False
        ctx._scope().__exit__(None, None, None)
    return result
