"""Small helpers shared by the trio client and server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from .session import OneFrameReader
from .wire import decode_frame

if TYPE_CHECKING:
    from .transport import Connection, Stream
    from .wire import Frame

__all__ = [
    "open_stream_now_or_later",
    "read_one_frame",
    "receive_now_or_later",
    "send_with_fin",
    "unwrap_single_exception",
]


async def read_one_frame(stream: Stream, max_frame_size: int, first: bytes | None = None) -> Frame:
    """Read a call stream to its FIN and return its one frame (``first``: the
    stream's first bytes, when the caller already read them).

    Stops as soon as the FIN is known to have arrived with the data read, rather
    than asking ``receive_some`` for the empty read that reports it: that call
    would cost a scheduling round per call.  A frame that arrives in one piece
    with its FIN (the common case) is decoded in one step.

    Raises:
        RemoteProtocolError: the stream does not hold exactly one valid frame no
            larger than ``max_frame_size`` (codes as :class:`OneFrameReader`).
        And whatever ``receive_some`` raises.
    """
    data = await stream.receive_some() if first is None else first
    if data and stream.receive_finished:
        return decode_frame(data, max_frame_size=max_frame_size)
    reader = OneFrameReader(max_frame_size=max_frame_size)
    while data:
        reader.feed(data)
        if stream.receive_finished:
            break
        data = await stream.receive_some()
    return reader.feed_eof()


async def receive_now_or_later(stream: Stream) -> bytes:
    """``receive_some``, without its scheduling round when data is already there.

    A handler spawned for a new stream starts with the stream's first data
    buffered: taking it synchronously lets the handler answer in its first step.
    """
    try:
        return stream.receive_nowait()
    except trio.WouldBlock:
        return await stream.receive_some()


async def open_stream_now_or_later(connection: Connection, *, urgency: int) -> Stream:
    """``open_stream``, without its scheduling round when the peer allows a stream.

    For a caller about to write a request and wait for the reply: that wait is
    its checkpoint.
    """
    try:
        return connection.open_stream_nowait(urgency=urgency)
    except trio.WouldBlock:
        return await connection.open_stream(urgency=urgency)


async def send_with_fin(stream: Stream, data: bytes) -> None:
    """Write ``data`` and FIN so that both reach the core in one step.

    When the stream is under its high-water mark (always, for a request or a
    reply on a fresh stream), both are queued synchronously, with no scheduling
    round: the caller's next await (the read of the reply, or the end of its
    task) is its checkpoint, and a round in between would only delay it.  Over
    the mark, it waits for room like ``send_all`` and then sends the FIN.
    """
    try:
        stream.send_nowait(data, eof=True)
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
