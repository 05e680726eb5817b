"""A bounded schedule of future deliveries, and the helpers both tools' tasks share."""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import trio

from .._util import unwrap_single_exception

__all__ = ["BackgroundService", "Timeline"]

T = TypeVar("T")


class Timeline(Generic[T]):
    """Items due at given trio times; ``wait_due`` sleeps until the earliest is due.

    Bounded: :meth:`push` refuses an item once ``limit`` items are waiting, so a
    sender that outruns the delivery task cannot grow memory without bound.
    """

    def __init__(self, limit: int) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._sequence = 0  # ties keep the order of pushes
        self._limit = limit
        self._sleeper: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at: float, item: T) -> bool:
        """Schedule ``item`` for time ``at``; False when the timeline is full."""
        if len(self._heap) >= self._limit:
            return False
        heapq.heappush(self._heap, (at, self._sequence, item))
        self._sequence += 1
        sleeper = self._sleeper
        if sleeper is not None and at < sleeper.deadline:
            sleeper.deadline = at  # re-arm the sleeping delivery task earlier
        return True

    def pop_due(self, now: float) -> list[T]:
        """Remove and return, in time order, every item due at or before ``now``."""
        heap = self._heap
        due: list[T] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def clear(self) -> None:
        self._heap.clear()

    async def wait_due(self) -> None:
        """Sleep until the earliest item is due (forever while there is none).

        Cancellation:
            Nothing is lost: items stay scheduled.
        """
        while True:
            deadline = self._heap[0][0] if self._heap else math.inf
            if deadline <= trio.current_time():
                await trio.lowlevel.checkpoint()
                return
            # Sleeping until a delivery time is the point here (a delay the tool
            # imposes on purpose); an earlier push moves the deadline forward.
            with trio.CancelScope(deadline=deadline) as sleeper:
                self._sleeper = sleeper
                try:
                    await trio.sleep_forever()
                finally:
                    self._sleeper = None


class BackgroundService:
    """``async with service:`` runs ``service.run`` in a hidden nursery until the block ends.

    Subclasses define ``async def run(self, *, task_status)``, which must call
    ``task_status.started(...)`` once ready and run until cancelled.
    """

    _context: contextlib.AbstractAsyncContextManager[Any]

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[Self]:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                await nursery.start(self.run)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        self._context = self._open()
        entered: Self = await self._context.__aenter__()
        return entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._context.__aexit__(exc_type, exc, tb)
