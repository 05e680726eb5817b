"""The QUIC face that aioquic's ``H3Connection`` sees, backed by quicframe streams.

``H3Connection`` is sans-IO on top of a ``QuicConnection``: it turns QUIC events
into HTTP/3 events and writes through a handful of ``QuicConnection`` methods.  In
quicframe the transport owns the QUIC core, its events and every socket, so the
gateway does not hand ``H3Connection`` the real core.  It hands it a
:class:`StreamQuic`, which implements exactly the methods ``H3Connection`` calls
(``send_stream_data``, ``reset_stream``, ``get_next_available_stream_id``,
``close`` and a few attributes) on top of :class:`quicframe.transport.Stream`
objects, and the gateway feeds ``H3Connection`` with events it builds from what
those streams read.  So the transport's backpressure, consumption-driven receive
credit and stream accounting apply to HTTP/3 exactly as to native calls.

Writes never block ``H3Connection`` (it is synchronous): bytes for a request
stream wait in an outbox until the task serving that request takes them with
:meth:`StreamQuic.take` and writes them with backpressure; bytes for the
connection's own unidirectional streams (control, QPACK encoder and decoder),
which any request can cause, are queued at once when the stream has room and
otherwise kept in order for a writer task (:meth:`StreamQuic.run_writer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..errors import ConnectionClosed

if TYPE_CHECKING:
    from ..transport import Connection, Stream

__all__ = ["LiteralEncoder", "StreamQuic", "TERMINAL_ERRORS"]

# What a stream operation raises once its stream or connection is gone.
TERMINAL_ERRORS = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class LiteralEncoder:
    """A QPACK encoder that never inserts into the dynamic table.

    Stands in for ``H3Connection``'s ``pylsqpack.Encoder`` (which it wraps),
    whatever table capacity the peer allows: it announces a capacity of 0 (RFC
    9204 lets an encoder use less than the peer's maximum) and so encodes with
    the static table and literals only, and the peer's decoder has nothing to
    acknowledge.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def apply_settings(self, max_table_capacity: int, blocked_streams: int) -> bytes:
        data: bytes = self._inner.apply_settings(max_table_capacity=0, blocked_streams=0)
        return data

    def encode(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        result: tuple[bytes, bytes] = self._inner.encode(stream_id, headers)
        return result

    def feed_decoder(self, data: bytes) -> None:
        self._inner.feed_decoder(data)


@dataclass(slots=True)
class _Configuration:
    # The one configuration attribute H3Connection reads.
    is_client: bool


@dataclass(slots=True)
class _Outbox:
    stream: Stream | None
    data: bytearray = field(default_factory=bytearray)
    fin: bool = False


class StreamQuic:
    """What ``H3Connection`` needs of a ``QuicConnection``, over transport streams.

    Args:
        connection: the transport connection.
        local_uni_streams: unidirectional streams already opened by us, handed out
            in order by ``get_next_available_stream_id(is_unidirectional=True)``
            (``H3Connection`` opens three when it starts: control, QPACK encoder,
            QPACK decoder).

    Bidirectional streams are never opened here: a client opens its request
    stream on the transport and :meth:`attach` es it before sending headers on
    its ID; a server attaches each request stream the peer opened.
    """

    # H3Connection logs through this when set; quicframe has its own qlog.
    _quic_logger = None

    def __init__(self, connection: Connection, local_uni_streams: list[Stream]) -> None:
        self.configuration = _Configuration(is_client=connection.is_client)
        self._connection = connection
        self._spare_uni = list(local_uni_streams)
        self._outboxes: dict[int, _Outbox] = {}
        # Unidirectional streams of ours with bytes waiting for the writer task.
        self._backlog: dict[int, _Outbox] = {}
        self._writer_busy = False
        self._writer_lot = trio.lowlevel.ParkingLot()
        self.close_request: tuple[int, str] | None = None

    # -- what H3Connection calls --------------------------------------------------

    @property
    def _remote_max_datagram_frame_size(self) -> int | None:
        # H3Connection refuses a peer's H3_DATAGRAM setting when this is None.
        size = self._connection.max_datagram_payload()
        return size or None

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        if not is_unidirectional or not self._spare_uni:
            raise RuntimeError("streams are opened on the transport, then attached")
        stream = self._spare_uni.pop(0)
        self._outboxes[stream.stream_id] = _Outbox(stream)
        return stream.stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if not data and not end_stream:
            # H3Connection hands over its QPACK streams' output after every header
            # block, most often nothing: not worth a stream write.
            return
        box = self._outboxes.get(stream_id)
        if box is None:
            return  # the stream is gone (reset, or its task finished): drop
        stream = box.stream
        if stream is not None and stream_id & 2 and stream_id not in self._backlog:
            # One of our unidirectional streams: queue now if it has room.
            if not self._writer_busy:
                try:
                    stream.send_nowait(data)
                    return
                except trio.WouldBlock:
                    pass
                except TERMINAL_ERRORS:
                    return  # the connection is going away; its close says why
            self._backlog[stream_id] = box
            self._writer_lot.unpark_all()
        box.data += data
        box.fin = box.fin or end_stream

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        box = self._outboxes.pop(stream_id, None)
        if box is not None and box.stream is not None:
            box.stream.reset(error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        box = self._outboxes.get(stream_id)
        if box is not None and box.stream is not None:
            box.stream.stop_sending(error_code)

    def close(
        self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None:
        # Called from a synchronous H3Connection method: the gateway notices the
        # request after that call and closes the transport connection.
        if self.close_request is None:
            self.close_request = (error_code, reason_phrase)

    def send_datagram_frame(self, data: bytes) -> None:
        raise RuntimeError("the HTTP/3 gateway does not send datagrams")

    # -- what the gateway calls ---------------------------------------------------

    def attach(self, stream: Stream) -> None:
        """Route ``H3Connection``'s writes for ``stream`` into its outbox."""
        self._outboxes[stream.stream_id] = _Outbox(stream)

    def detach(self, stream_id: int) -> None:
        """Forget a request stream (later writes for it are dropped)."""
        self._outboxes.pop(stream_id, None)

    def is_attached(self, stream_id: int) -> bool:
        """False once the stream was detached or reset through ``reset_stream``."""
        return stream_id in self._outboxes

    def take(self, stream_id: int) -> tuple[bytes, bool]:
        """The bytes written for a request stream since the last call, and its FIN."""
        box = self._outboxes.get(stream_id)
        if box is None:
            return b"", False
        data, fin = bytes(box.data), box.fin
        box.data.clear()
        box.fin = False
        return data, fin

    async def run_writer(self) -> None:
        """Write what did not fit on our unidirectional streams, in order; runs until cancelled."""
        while True:
            while not self._backlog:
                await self._writer_lot.park()
            stream_id, box = next(iter(self._backlog.items()))
            data = bytes(box.data)
            box.data.clear()
            self._writer_busy = True
            try:
                assert box.stream is not None
                await box.stream.send_all(data)
            except TERMINAL_ERRORS:
                return
            finally:
                self._writer_busy = False
            if not box.data:
                del self._backlog[stream_id]
