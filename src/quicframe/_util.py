"""Small helpers shared by the trio client and server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .transport import Stream

__all__ = ["send_with_fin", "unwrap_single_exception"]


async def send_with_fin(stream: Stream, data: bytes) -> None:
    """Write ``data`` and FIN so that both reach the core in one step.

    ``send_all`` yields after queueing, which can let the driver flush the data
    before the FIN is queued, costing the peer a second packet (and a call a
    second wait).  ``send_nowait`` queues without yielding; it only refuses when
    the stream is already over its high-water mark.
    """
    try:
        stream.send_nowait(data)
    except trio.WouldBlock:
        await stream.send_all(data)
    await stream.send_eof()


@contextlib.contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Re-raise a group holding exactly one exception (at any depth) as that exception.

    Public context managers run hidden nurseries; their users expect the one error
    that happened, not an ExceptionGroup.  Groups with several leaves stay groups.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        stack: list[BaseException] = [group]
        while stack:
            item = stack.pop()
            if isinstance(item, BaseExceptionGroup):
                stack.extend(item.exceptions)
            else:
                leaves.append(item)
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        links = (leaf.__cause__, leaf.__context__, leaf.__suppress_context__)
        try:
            raise leaf
        finally:
            # Raising again chains the group as context; put the original links back.
            leaf.__cause__, leaf.__context__, leaf.__suppress_context__ = links
            del leaf, leaves, stack, group
