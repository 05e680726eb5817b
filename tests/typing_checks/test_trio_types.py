"""What trio-typing's plugin used to provide, checked with trio's own inline types.

mypy checks this file (``nox -s typecheck``): ``assert_type`` fails type checking if
trio's annotations stop giving these types.  pytest runs it too, so the code is
live, not a dead example.  See README, "Typing and trio-typing".

The one gap: trio types ``Nursery.start`` as returning ``Any`` (trio-typing's plugin
inferred it from ``task_status``).  quicframe therefore annotates the variable that
receives ``await nursery.start(...)``; the ``assert_type(..., Any)`` below makes
mypy tell us when trio closes the gap, so we can drop the annotations.
"""

from __future__ import annotations

from typing import Any, assert_type

import trio
import trio.testing


async def _child(
    value: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started(value * 2)


async def test_nursery_start_and_channels_are_precisely_typed() -> None:
    send, receive = trio.open_memory_channel[bytes](1)
    assert_type(send, trio.MemorySendChannel[bytes])
    assert_type(receive, trio.MemoryReceiveChannel[bytes])
    async with trio.open_nursery() as nursery:
        raw = await nursery.start(_child, 21)
        assert_type(raw, Any)
        started: int = raw
        assert started == 42
        await send.send(b"x")
        got = await receive.receive()
        assert_type(got, bytes)
        assert got == b"x"
    with trio.move_on_after(1) as scope:
        assert_type(scope, trio.CancelScope)
        await trio.testing.wait_all_tasks_blocked()
