"""One QUIC stream as a :class:`trio.abc.HalfCloseableStream`.

A :class:`Stream` owns the application side of a stream: the bytes written but not
yet handed to the core (coalesced per scheduling tick), the bytes received but not
yet read, and the parking lots its readers and writers wait in.  It never touches
the socket or the core's clock; the connection driver moves bytes between it and
the core and wakes it.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import trio

from ._errors import StreamResetByPeer

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Stream", "StreamStatistics"]

DEFAULT_RECEIVE_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    """A snapshot of one stream.

    Attributes:
        stream_id: the QUIC stream ID.
        bytes_sent: bytes accepted by ``send_all`` so far.
        bytes_received: bytes returned by ``receive_some`` so far.
        send_buffered: bytes written but not yet acknowledged by the peer (the
            figure ``send_all`` holds under the high-water mark).
        receive_buffered: bytes received and not yet read.
    """

    stream_id: int
    bytes_sent: int
    bytes_received: int
    send_buffered: int
    receive_buffered: int


# Sending priority of a stream, as in HTTP's Extensible Priorities (RFC 9218):
# 0 is the most urgent, 7 the least; new streams get 3.
DEFAULT_URGENCY = 3


@final
class Stream(trio.abc.HalfCloseableStream):
    """A bidirectional or unidirectional QUIC stream.

    Obtained from :meth:`Connection.open_stream` or :meth:`Connection.accept_stream`.
    On a unidirectional stream only one direction works; the other raises
    :class:`trio.ClosedResourceError`.
    """

    def __init__(
        self, connection: Connection, stream_id: int, *, readable: bool, writable: bool
    ) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._closed = False
        self._forgotten = False  # the connection was told the application is done
        self._arrived_early = False  # some data came as 0-RTT (server side)
        # Receive side.
        # Received chunks as the core delivered them, so reading the common case (a
        # whole chunk) copies nothing; _receive_size is their total length.
        self._receive_chunks: deque[bytes] = deque()
        self._receive_size = 0
        self._receive_eof = not readable
        self._receive_error: int | None = None  # the peer's RESET_STREAM code
        self._receive_closed = not readable  # stop_sending() or aclose()
        self._received_total = 0  # bytes handed to the application
        self._credit_base = 0  # consumption offset of the last credit grant
        self._receive_busy = False
        # Parking lots are made by the first task to wait (most streams of a
        # request/response exchange never need one): None is an empty lot.
        self._receive_lot: trio.lowlevel.ParkingLot | None = None
        self._reader_task: trio.lowlevel.Task | None = None  # the last to park reading
        # Send side.
        self._send_pending = bytearray()  # written, not yet given to the core
        self._send_fin_pending = False
        self._send_closed = not writable  # send_eof(), reset() or aclose()
        self._send_error: int | None = None  # the peer's STOP_SENDING code
        self._sent_total = 0
        self._send_busy = False
        self._send_lot: trio.lowlevel.ParkingLot | None = None
        self._urgency = DEFAULT_URGENCY
        # This stream's own high-water mark (None: the connection's).
        self._high_water: int | None = None
        # Called with the code when STOP_SENDING arrives (the session server uses it
        # to cancel a call without a watcher task per call).
        self._stop_callback: Callable[[int], object] | None = None

    @property
    def stream_id(self) -> int:
        """The QUIC stream ID."""
        return self._stream_id

    @property
    def connection(self) -> Connection:
        """The connection carrying this stream."""
        return self._connection

    @property
    def urgency(self) -> int:
        """Sending priority: 0 (most urgent) to 7 (least); 3 by default.

        When streams of several urgencies have data to send, the connection
        sends the more urgent ones' data first, as far as the congestion window
        allows, and the less urgent ones' with what room is left; streams of the
        same urgency share the room round-robin.  Data already sent is not
        recalled.
        """
        return self._urgency

    @urgency.setter
    def urgency(self, value: int) -> None:
        if not 0 <= value <= 7:
            raise ValueError(f"urgency must be between 0 and 7, not {value}")
        self._urgency = value
        self._connection._set_urgency(self, value)

    @property
    def send_high_water_mark(self) -> int:
        """Bytes (unsent plus unacknowledged) past which ``send_all`` waits.

        Defaults to the connection's ``stream_high_water_mark``.  A lower mark keeps
        less of this stream's data committed to the transport: a writer that picks
        what to send next (the newest price rather than an old one, say) decides
        later.  Setting None restores the default.
        """
        if self._high_water is not None:
            return self._high_water
        return self._connection._stream_high_water_mark

    @send_high_water_mark.setter
    def send_high_water_mark(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"the high-water mark must be at least 1, not {value}")
        self._high_water = value
        if self._send_lot:
            self._connection._wake()  # waiters re-check after the next flush

    # -- sending ------------------------------------------------------------------

    def _send_parking(self) -> trio.lowlevel.ParkingLot:
        lot = self._send_lot
        if lot is None:
            lot = self._send_lot = trio.lowlevel.ParkingLot()
        return lot

    def _receive_parking(self) -> trio.lowlevel.ParkingLot:
        lot = self._receive_lot
        if lot is None:
            lot = self._receive_lot = trio.lowlevel.ParkingLot()
        return lot

    def _send_buffered(self) -> int:
        return len(self._send_pending) + self._connection._core.send_buffered(self._stream_id)

    def _check_can_send(self) -> None:
        if self._closed or self._send_closed:
            raise trio.ClosedResourceError("the stream's send side is closed")
        if self._send_error is not None:
            raise self._stopped_exception(self._send_error)
        self._connection._raise_if_closed()

    async def _wait_send_room(self) -> bool:
        """Park until the send buffer is under the high-water mark; True if parked."""
        parked = False
        high_water = self.send_high_water_mark
        while self._send_buffered() > high_water:
            self._connection._send_waiters.add(self)
            await self._send_parking().park()
            parked = True
            self._check_can_send()
        return parked

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on the stream, waiting while the stream is over its high-water mark.

        Writes from several tasks in the same scheduling tick reach the core as one
        ``send_stream_data`` call.

        Raises:
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the send side was closed (``send_eof``,
                ``reset`` or ``aclose``).
            StreamResetByPeer: the peer sent STOP_SENDING.
            quicframe.errors.ConnectionClosed: the connection is closed.

        Cancellation:
            Either all of ``data`` was queued for sending or none of it was; a
            cancelled call sends nothing.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_busy = True
        try:
            self._check_can_send()
            parked = await self._wait_send_room()
            if not parked:
                await trio.lowlevel.checkpoint_if_cancelled()
                self._check_can_send()
            if data:
                self._queue(data, eof=False)
            if not parked:
                # Let the driver (and any other writer of this tick) run.
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._send_busy = False

    def send_nowait(self, data: bytes | bytearray | memoryview, *, eof: bool = False) -> None:
        """Queue ``data`` without waiting, unless the stream is over its high-water mark.

        The synchronous twin of :meth:`send_all`: a burst of small writes made
        without yielding (several frames of one message, say) reaches the core as a
        single ``send_stream_data`` call at the driver's next pass.  With
        ``eof=True`` the send side is then finished (FIN), as :meth:`send_eof`
        does but without its checkpoint: a request or reply and its FIN in one
        synchronous step, for a task whose next await is its checkpoint anyway.
        On ``trio.WouldBlock`` nothing was queued, FIN included.

        Raises:
            trio.WouldBlock: the stream holds more than its high-water mark.
            trio.ClosedResourceError: the send side is closed.
            StreamResetByPeer: the peer sent STOP_SENDING.
            quicframe.errors.ConnectionClosed: the connection is closed.
        """
        self._check_can_send()
        if self._send_buffered() > self.send_high_water_mark:
            raise trio.WouldBlock
        self._queue(data, eof=eof)

    def _queue(self, data: bytes | bytearray | memoryview, *, eof: bool) -> None:
        """Queue ``data`` (and the FIN) for the core; flushed at once when this is
        the answer of the batch's sole reader (see Connection._begin_answer)."""
        connection = self._connection
        answering = connection._begin_answer(self)
        try:
            if data:
                self._send_pending += data
                self._sent_total += len(data)
                connection._mark_dirty(self)
            if eof:
                self._finish_sending()
        finally:
            if answering:
                connection._finish_answer()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the stream is under its high-water mark.

        Raises:
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the send side is closed.

        Cancellation:
            Nothing happens on the wire.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_busy = True
        try:
            self._check_can_send()
            if not await self._wait_send_room():
                await trio.lowlevel.checkpoint()
        finally:
            self._send_busy = False

    async def send_eof(self) -> None:
        """Finish the send side gracefully (QUIC FIN); the peer reads EOF after the data.

        Calling it again is a no-op.

        Raises:
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the stream was closed with ``aclose``.

        Cancellation:
            The FIN is queued before the call's checkpoint; a cancelled call may
            still have sent it.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._finish_sending()
        await trio.lowlevel.checkpoint()

    def _finish_sending(self) -> None:
        if not self._send_closed and self._send_error is None:
            self._send_closed = True
            self._send_fin_pending = True
            self._connection._mark_dirty(self)
        self._send_closed = True
        if self._send_lot:
            self._send_lot.unpark_all()
        self._maybe_done()

    def _maybe_done(self) -> None:
        # Once neither direction can give the application anything more, the
        # connection lets the core discard the stream (see AioquicCore.release_stream).
        if self._forgotten:
            return
        send_over = self._send_closed or self._send_error is not None
        receive_over = (
            self._receive_closed
            or self._receive_error is not None
            or (self._receive_eof and not self._receive_size)
        )
        if send_over and receive_over:
            self._forgotten = True
            self._connection._forget_stream(self)

    def reset(self, code: int = 0) -> None:
        """Abort the send side with RESET_STREAM carrying application error ``code``.

        Unsent data is dropped and ``send_all`` raises :class:`trio.ClosedResourceError`
        from now on.  Does nothing if the send side already finished or was reset.
        """
        self._send_closed = True
        self._send_pending.clear()
        self._send_fin_pending = False
        if self._send_error is None:
            self._connection._reset_stream(self, code)
        if self._send_lot:
            self._send_lot.unpark_all()
        self._maybe_done()

    def stop_sending(self, code: int = 0) -> None:
        """Ask the peer to stop sending (STOP_SENDING with ``code``); drop unread data.

        ``receive_some`` raises :class:`trio.ClosedResourceError` from now on.
        """
        if self._receive_closed:
            return
        self._receive_closed = True
        self._receive_chunks.clear()
        self._receive_size = 0
        if not self._receive_eof and self._receive_error is None:
            self._connection._stop_stream(self, code)
        if self._receive_lot:
            self._receive_lot.unpark_all()
        self._maybe_done()

    async def wait_stopped(self) -> int:
        """Wait until the peer asks us to stop sending (STOP_SENDING); return its code.

        A server uses this to learn that a caller gave up while its request is
        being handled (the request was read to its FIN, so nothing else tells it).

        Raises:
            quicframe.errors.ConnectionClosed: the connection closed first.
            trio.ClosedResourceError: the connection was closed locally.

        Cancellation:
            Nothing happens on the wire.
        """
        while self._send_error is None:
            self._connection._raise_if_closed()
            await self._send_parking().park()
        await trio.lowlevel.checkpoint()
        return self._send_error

    # -- receiving ----------------------------------------------------------------

    @property
    def arrived_early(self) -> bool:
        """True on a server when some of this stream's data came as 0-RTT early data.

        Early data can be replayed by anyone who recorded it (RFC 9001 section
        9.2): an application should only act on such a stream if doing the same
        thing twice is harmless.
        """
        return self._arrived_early

    @property
    def receive_finished(self) -> bool:
        """True once the peer's FIN arrived and every byte before it was read.

        ``receive_some`` would then return ``b""`` at once: a reader that knows
        it has everything can skip that call (and the scheduling round it costs).
        """
        return self._receive_eof and not self._receive_size

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return up to ``max_bytes`` bytes (default 64 KiB), or ``b""`` at EOF.

        Reading is what grants the peer more flow-control credit: a reader that
        stops reading stops the sender once ``stream_receive_window`` bytes wait.

        Raises:
            trio.BusyResourceError: another task is receiving on this stream.
            trio.ClosedResourceError: the receive side was closed (``stop_sending``
                or ``aclose``).
            StreamResetByPeer: the peer reset its send side.
            quicframe.errors.ConnectionClosed: the connection closed first.

        Cancellation:
            No data is lost: bytes are only taken from the buffer by a call that
            returns them.
        """
        max_bytes = self._receive_size_asked(max_bytes)
        self._receive_busy = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while not self._readable_now():
                self._connection._raise_if_closed()
                self._reader_task = trio.lowlevel.current_task()
                await self._receive_parking().park()
                parked = True
            data = self._take_now(max_bytes)
            if not parked:
                # Shielded: the data is already taken and must reach the caller.
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receive_busy = False

    def receive_nowait(self, max_bytes: int | None = None) -> bytes:
        """Return buffered bytes without waiting: the synchronous twin of :meth:`receive_some`.

        A handler spawned for a stream whose data already arrived, or a reader
        that knows more is buffered, reads it without a scheduling round.

        Raises:
            trio.WouldBlock: nothing is buffered and the peer has not finished
                (:meth:`receive_some` would wait).
            and the errors of :meth:`receive_some`.
        """
        max_bytes = self._receive_size_asked(max_bytes)
        if not self._readable_now():
            self._connection._raise_if_closed()
            raise trio.WouldBlock
        return self._take_now(max_bytes)

    def _receive_size_asked(self, max_bytes: int | None) -> int:
        """``max_bytes`` checked (None: the default), and no other reader busy."""
        if max_bytes is None:
            size = DEFAULT_RECEIVE_SIZE
        else:
            size = operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receive_busy:
            raise trio.BusyResourceError("another task is receiving on this stream")
        return size

    def _readable_now(self) -> bool:
        """True if a read returns at once (data or EOF); raises if it would fail."""
        if self._closed or self._receive_closed:
            raise trio.ClosedResourceError("the stream's receive side is closed")
        if self._receive_error is not None:
            raise self._reset_exception(self._receive_error)
        return bool(self._receive_size) or self._receive_eof

    def _take_now(self, max_bytes: int) -> bytes:
        data = self._take(max_bytes) if self._receive_size else b""
        if data:
            self._received_total += len(data)
            self._connection._on_consumed(self)
        if not self._receive_size and self._receive_eof:
            self._maybe_done()
        return data

    def _take(self, max_bytes: int) -> bytes:
        chunks = self._receive_chunks
        first = chunks.popleft()
        if len(first) > max_bytes:
            chunks.appendleft(first[max_bytes:])
            first = first[:max_bytes]
        elif chunks and len(first) + len(chunks[0]) <= max_bytes:
            # Join small chunks so a reader asking for a lot gets a lot.
            parts = [first]
            room = max_bytes - len(first)
            while chunks and len(chunks[0]) <= room:
                part = chunks.popleft()
                parts.append(part)
                room -= len(part)
            first = b"".join(parts)
        self._receive_size -= len(first)
        return first

    # -- closing ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close both directions: FIN after queued data, and STOP_SENDING if unread.

        Raises:
            Nothing but trio.Cancelled; closing twice is fine.

        Cancellation:
            The stream is closed before the checkpoint, so a cancelled ``aclose``
            still closes it (the FIN and STOP_SENDING are queued).
        """
        if not self._closed:
            self._finish_sending()
            self.stop_sending(0)
            self._closed = True
            if not self._forgotten:
                self._forgotten = True
                self._connection._forget_stream(self)
            if self._send_lot:
                self._send_lot.unpark_all()
            if self._receive_lot:
                self._receive_lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> StreamStatistics:
        """A snapshot of the stream's counters and buffers."""
        return StreamStatistics(
            stream_id=self._stream_id,
            bytes_sent=self._sent_total,
            bytes_received=self._received_total,
            send_buffered=self._send_buffered(),
            receive_buffered=self._receive_size,
        )

    # -- called by the driver -----------------------------------------------------

    def _on_data(self, data: bytes, end_stream: bool) -> None:
        if data and not self._receive_closed and not self._closed:
            self._receive_chunks.append(data)
            self._receive_size += len(data)
        if end_stream:
            self._receive_eof = True
        if self._receive_lot:
            self._receive_lot.unpark_all()
        if end_stream and not self._receive_size:
            self._maybe_done()

    def _on_reset(self, code: int) -> None:
        if self._receive_eof:
            return
        self._receive_chunks.clear()
        self._receive_size = 0
        self._receive_error = code
        if self._receive_lot:
            self._receive_lot.unpark_all()
        self._maybe_done()

    def _on_stop_sending(self, code: int) -> None:
        self._send_pending.clear()
        self._send_fin_pending = False
        if self._send_error is None:
            self._send_error = code
        if self._send_lot:
            self._send_lot.unpark_all()
        if self._stop_callback is not None:
            self._stop_callback(code)
        self._maybe_done()

    # A fresh exception per raise, so repeated failures do not pile up tracebacks.
    def _reset_exception(self, code: int) -> StreamResetByPeer:
        return StreamResetByPeer(
            f"the peer reset stream {self._stream_id}", code=code, stream_id=self._stream_id
        )

    def _stopped_exception(self, code: int) -> StreamResetByPeer:
        return StreamResetByPeer(
            f"the peer asked to stop sending on stream {self._stream_id}",
            code=code,
            stream_id=self._stream_id,
            stop_sending=True,
        )

    def _on_connection_closed(self) -> None:
        if self._send_lot:
            self._send_lot.unpark_all()
        if self._receive_lot:
            self._receive_lot.unpark_all()

    def __repr__(self) -> str:
        return f"<quicframe.transport.Stream id={self._stream_id}>"
