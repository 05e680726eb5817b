"""Transport-specific exception types, built on :mod:`quicframe.errors`."""

from __future__ import annotations

import trio

from ..errors import LimitError, StreamReset

__all__ = ["DatagramTooLarge", "StreamResetByPeer"]


class StreamResetByPeer(StreamReset, trio.BrokenResourceError):
    """The peer reset the stream or asked us to stop sending on it.

    It is both a :class:`quicframe.errors.StreamReset` (carrying the peer's
    application ``code``, the ``stream_id`` and ``stop_sending``) and a
    :class:`trio.BrokenResourceError`, so generic trio stream code treats it like any
    other broken stream.
    """


class DatagramTooLarge(LimitError):
    """A DATAGRAM frame payload is larger than the peer accepts (RFC 9221).

    Attributes:
        max_size: the largest payload that can be sent now (0 when the peer does
            not accept DATAGRAM frames at all).
    """

    def __init__(self, message: str, *, max_size: int) -> None:
        super().__init__(message)
        self.max_size = max_size
