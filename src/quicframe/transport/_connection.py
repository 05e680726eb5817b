"""The connection driver: one trio task that runs one sans-IO QUIC core.

The driver task is the only code that feeds the core datagrams, fires its timer and
asks it for datagrams to send.  It sleeps until one of three things happens: the
endpoint delivered datagrams, the application queued work (stream data, a ping, a
close...), or the core's timer (or the keepalive) is due.  Then, in one pass, it
feeds every datagram that arrived, fires the timer, hands the core all the stream
writes of the tick (one ``send_stream_data`` per stream), drains the core's events,
and flushes the core's datagrams once.

Re-arming the timer never cancels anything in flight: the deadline applies to the
*wait* only (``trio.move_on_at`` around ``ParkingLot.park``), never to a send.

Three things keep the per-request path short.  When fed data wakes a parked
reader (or a handler is spawned for a new stream), the driver waits a few
scheduling rounds for the reply and flushes the moment it is written, instead of
flushing an empty pass first and the reply in a second one.  A write that queued
its FIN is flushed without the extra round given to writers that may add more.
And a pending acknowledgement that has waited half of aioquic's 1 ms ACK delay
is moved forward to ride with the stream data of the next flush (aioquic
otherwise sends it as a separate ACK-only packet once the delay has passed); a
younger one waits, so most replies carry no ACK frame for the peer to process.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVarTuple, final

import trio

from ..errors import (
    ConnectionClosed,
    ErrorCode,
    HandshakeError,
    IdleTimeout,
    TransportErrorCode,
    code_name,
    transport_code_name,
)
from ._core import (
    EVENT_CID_ISSUED,
    EVENT_CID_RETIRED,
    EVENT_DATAGRAM,
    EVENT_HANDSHAKE_COMPLETED,
    EVENT_PING_ACKNOWLEDGED,
    EVENT_PROTOCOL_NEGOTIATED,
    EVENT_STOP_SENDING,
    EVENT_STREAM_DATA,
    EVENT_STREAM_RESET,
    EVENT_TERMINATED,
    Core,
    NetworkAddress,
    now,
)
from ._errors import DatagramTooLarge
from ._stream import DEFAULT_URGENCY, Stream

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["Connection", "ConnectionStatistics"]

logger = logging.getLogger("quicframe.transport")

_Ts = TypeVarTuple("_Ts")

# Bytes a short-header packet and a DATAGRAM frame header cost at most: flags (1),
# destination connection ID (up to 20), packet number (up to 4), AEAD tag (16), frame
# type (1) and a 2-byte length.  What is left of a UDP payload carries user bytes.
_DATAGRAM_OVERHEAD = 1 + 20 + 4 + 16 + 1 + 2

# Scheduling rounds the driver gives readers it just handed data to, to answer
# before it parks again (see Connection._run): a stream-per-request caller needs
# three (read EOF, open the next stream, write), a long-lived stream one.
_ANSWER_ROUNDS = 3

# How long the driver stays parked after handing a batch to a lone reader, at
# most, should no answer come (see _after_feed): aioquic's ACK delay.
_ANSWER_WAIT = 0.001

# Streams with writes queued for the core past which the writer that adds one
# more flushes the others itself, without waiting for the driver's pass: with
# many writers in one scheduling tick, the first replies leave (and the peer
# starts on them) while the rest are still being written.
_EAGER_FLUSH_STREAMS = 16

# Extra datagrams_to_send calls per flush while the core's pacing delay has
# already passed (see Connection._datagrams_to_send).
_PACING_CATCH_UP = 16


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection.

    Attributes:
        smoothed_rtt: smoothed round-trip time, seconds (0 before the first sample).
        min_rtt: minimum round-trip time seen, seconds.
        latest_rtt: the last round-trip sample, seconds.
        congestion_window: the congestion window, bytes.
        bytes_in_flight: bytes sent and not yet acknowledged or declared lost.
        packets_sent: packets sent so far.
        packets_lost: packets declared lost so far.
        streams_open: streams the application holds open.
        bytes_buffered: bytes waiting in streams: unacknowledged sends plus unread
            receives.
        datagrams_received: DATAGRAM frames received.
        datagrams_dropped: DATAGRAM frames dropped because the receive queue was full.
        early_data_received: server side, stream bytes received before the
            handshake completed, i.e. 0-RTT data (see
            :attr:`Connection.early_data_received`); 0 on the client.
    """

    smoothed_rtt: float
    min_rtt: float
    latest_rtt: float
    congestion_window: int
    bytes_in_flight: int
    packets_sent: int
    packets_lost: int
    streams_open: int
    bytes_buffered: int
    datagrams_received: int
    datagrams_dropped: int
    early_data_received: int


def _is_client_initiated(stream_id: int) -> bool:
    return stream_id & 1 == 0


def _is_unidirectional(stream_id: int) -> bool:
    return stream_id & 2 == 2


@final
class Connection:
    """One QUIC connection: streams, datagrams, pings and closing.

    Obtained from :func:`quicframe.transport.connect` or given to the handler of
    :func:`quicframe.transport.serve`; never constructed by users.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        core: Core,
        *,
        is_client: bool,
        peer_address: NetworkAddress,
        stream_high_water_mark: int,
        stream_receive_window: int,
        keepalive_interval: float | None,
        datagram_queue_size: int,
        max_early_data: int | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._core = core
        self._quic = core.quic
        self._event_kinds = core.event_kinds
        self._is_client = is_client
        self._peer_address = peer_address
        self._stream_high_water_mark = stream_high_water_mark
        self._stream_receive_window = stream_receive_window
        self._keepalive_interval = keepalive_interval

        # Driver state.
        self._wake_pending = False
        self._driver_lot = trio.lowlevel.ParkingLot()
        # Readers handed data (parked readers, and handlers spawned for new
        # streams) since the last batch was fed.  Several: the receive loop wakes
        # the driver "for an answer" (_prewoken), and it waits a few rounds for the
        # answers before flushing.  One: _sole_answerer, the task parked reading
        # or the new stream, whose reply is flushed from its own task (see
        # _begin_answer).
        self._answerers = 0
        self._prewoken = False
        self._sole_answerer: Stream | trio.lowlevel.Task | None = None
        self._answering = False  # the sole answerer is queueing its reply
        self._timer_at: float | None = None
        self._timer_handled_at = -math.inf  # when handle_timer() last ran
        self._flushing = False  # the driver is between _step() and the end of its send
        # The parked driver's wait (None while it runs): its deadline is when the
        # driver wakes by itself, moved when a flush from another task changes
        # the core's timer.
        self._wait_scope: trio.CancelScope | None = None
        self._unsent: list[tuple[bytes, NetworkAddress]] = []  # refused by an eager flush
        self._last_activity = now()
        self._running = False
        self._host_cids: set[bytes] = set()

        # Streams.
        self._streams: dict[int, Stream] = {}
        self._dirty: dict[int, Stream] = {}  # streams with writes for the core
        # Stream ID -> urgency, for streams whose urgency is not the default (kept
        # until the core discards the stream, so data still queued keeps its rank).
        self._urgency: dict[int, int] = {}
        self._send_waiters: set[Stream] = set()
        self._incoming: deque[Stream] = deque()
        # open_stream() calls waiting for the peer's MAX_STREAMS: bidirectional,
        # unidirectional (indexed by the unidirectional flag).
        self._stream_credit_lots = (trio.lowlevel.ParkingLot(), trio.lowlevel.ParkingLot())
        # Handler spawners of running serve_streams() calls (the newest takes new
        # streams); with none, new streams wait in _incoming for accept_stream().
        self._stream_spawners: list[Callable[[Stream], None]] = []
        self._accept_lot = trio.lowlevel.ParkingLot()
        # Next peer-initiated stream IDs not yet seen, bidirectional and unidirectional:
        # lower IDs were opened (RFC 9000 section 2.1), even if the core has forgotten them.
        peer_bit = 1 if is_client else 0
        self._next_peer_stream = {False: 0 | peer_bit, True: 2 | peer_bit}

        # Datagrams.
        self._datagram_queue_size = datagram_queue_size
        self._datagrams: deque[bytes] = deque()
        self._datagram_lot = trio.lowlevel.ParkingLot()
        self._datagrams_received = 0
        self._datagrams_dropped = 0

        # Pings: uid -> [sent_at, rtt or None]; one lot for all waiters.
        self._next_ping_uid = 0
        self._pings: dict[int, list[float | None]] = {}
        self._ping_lot = trio.lowlevel.ParkingLot()

        # Lifecycle.
        self._handshake_done = trio.Event()
        self._alpn_protocol: str | None = None
        self._session_resumed = False
        self._early_data_accepted = False
        # Server side: stream bytes that arrived before HandshakeCompleted (0-RTT).
        self._counting_early_data = not is_client
        self._early_data_received = 0
        # Server side: more 0-RTT stream bytes than this close the connection.
        self._max_early_data = max_early_data if max_early_data is not None else math.inf
        self._early_data_refused = False
        # Set on a server when the first stream data arrives as 0-RTT: the
        # connection is handed to the handler then, without waiting for the
        # client's Finished (the reply leaves as 0.5-RTT data).
        self._early_data_arrived = trio.Event()
        self._close_requested = False  # the application called aclose()
        self._close_issued = False  # the core was told to close
        self._drain_lot = trio.lowlevel.ParkingLot()  # graceful aclose() waits here
        self._close_flushed = trio.Event()
        self._peer_closed = False
        # (class, kwargs) of the ConnectionClosed every operation raises once closed;
        # a fresh exception is built per raise so tracebacks do not pile up.
        self._closed_info: tuple[type[ConnectionClosed], dict[str, Any]] | None = None
        self._terminated = trio.Event()
        self._closing = trio.Event()  # the core started closing (either side)

    # -- properties -----------------------------------------------------------------

    @property
    def is_client(self) -> bool:
        """True on the side that dialled."""
        return self._is_client

    @property
    def remote_address(self) -> NetworkAddress:
        """The peer's socket address (it follows the peer when it migrates)."""
        address = self._core.peer_address()
        return address if address is not None else self._peer_address

    @property
    def local_address(self) -> NetworkAddress:
        """The local socket address."""
        return self._endpoint.local_address

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol negotiated in the handshake."""
        return self._alpn_protocol

    @property
    def session_resumed(self) -> bool:
        """True when the handshake resumed a TLS session from a ticket."""
        return self._session_resumed

    @property
    def early_data_accepted(self) -> bool:
        """True when the server accepted 0-RTT data (known once the handshake is done)."""
        return self._early_data_accepted

    @property
    def early_data_received(self) -> int:
        """Server side: stream bytes the client sent as 0-RTT data (0 on the client).

        Counts the stream data that arrived before the handshake completed.
        ``early_data_accepted`` only says that the server agreed to take 0-RTT
        data (a resuming client offers it whether or not it sends any); this says
        how much actually came.  Under loss, a 1-RTT packet that overtakes the
        client's lost handshake completion would be counted too.
        """
        return self._early_data_received

    @property
    def handshake_complete(self) -> bool:
        """True once the handshake completed."""
        return self._handshake_done.is_set()

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, or None while it is open."""
        if self._closed_info is None:
            return None
        return self._closed_exception()

    # -- streams --------------------------------------------------------------------

    async def open_stream(
        self, unidirectional: bool = False, *, urgency: int = DEFAULT_URGENCY
    ) -> Stream:
        """Open a new stream; the peer learns of it with the first data sent.

        Args:
            unidirectional: open a send-only stream.
            urgency: the stream's sending priority, 0 (most urgent) to 7 (see
                :attr:`Stream.urgency`).

        Waits while the peer's stream limit (MAX_STREAMS) allows no more streams of
        this kind, until the peer raises it as earlier streams finish: thousands
        of streams opened at once queue here, not inside the core.

        Returns:
            The new :class:`Stream`.

        Raises:
            quicframe.errors.ConnectionClosed: the connection is closed.
            trio.ClosedResourceError: ``aclose`` was called on this connection.

        Cancellation:
            A cancelled call opens no stream.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_closed()
        if self._core.streams_allowed(unidirectional) <= 0:
            lot = self._stream_credit_lots[unidirectional]
            while self._core.streams_allowed(unidirectional) <= 0:
                await lot.park()
                self._raise_if_closed()
        stream = self.open_stream_nowait(unidirectional, urgency=urgency)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    def open_stream_nowait(
        self, unidirectional: bool = False, *, urgency: int = DEFAULT_URGENCY
    ) -> Stream:
        """Open a new stream without waiting: the synchronous twin of :meth:`open_stream`.

        For a task about to write and then wait for the reply (its next await is a
        checkpoint anyway), this saves :meth:`open_stream`'s scheduling round.

        Raises:
            trio.WouldBlock: the peer's stream limit allows no more streams of this
                kind now (:meth:`open_stream` would wait).
            quicframe.errors.ConnectionClosed: the connection is closed.
            trio.ClosedResourceError: ``aclose`` was called on this connection.
        """
        self._raise_if_closed()
        if self._core.streams_allowed(unidirectional) <= 0:
            raise trio.WouldBlock
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)
        # An empty write makes the core create its stream state now, so the stream
        # can be reset or stopped before anything was sent.
        self._quic.send_stream_data(stream_id, b"")
        self._core.gate_stream_credit(stream_id)
        stream = Stream(self, stream_id, readable=not unidirectional, writable=True)
        if urgency != DEFAULT_URGENCY:
            stream.urgency = urgency
        self._streams[stream_id] = stream
        return stream

    async def accept_stream(self) -> Stream:
        """Wait for the next stream the peer opens.

        Raises:
            quicframe.errors.ConnectionClosed: the connection closed.

        Cancellation:
            No stream is lost: a stream is only taken by a call that returns it.
        """
        while not self._incoming:
            self._raise_if_closed()
            await self._accept_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_closed()
        return self._incoming.popleft()

    async def serve_streams(
        self, handler: Callable[[Stream, *_Ts], Awaitable[object]], *args: *_Ts
    ) -> None:
        """Run ``handler(stream, *args)`` in a task of its own for every stream the peer opens.

        Returns when the connection closes; the handlers still running are then
        cancelled.  A handler's exception propagates (and cancels the others):
        catch what you expect inside the handler.

        Raises:
            Whatever a handler raised.

        Cancellation:
            Cancels the running handlers; streams are left as the handlers left
            them (close them in ``finally`` blocks).
        """
        async with trio.open_nursery() as nursery:

            def spawn(stream: Stream) -> None:
                nursery.start_soon(handler, stream, *args)

            # While this runs, a new peer stream gets its handler task straight from
            # the event that announced it: no accept_stream() round trip through
            # the scheduler before the handler's first step.
            self._stream_spawners.append(spawn)
            try:
                while self._closed_info is None:
                    while self._incoming:
                        spawn(self._incoming.popleft())
                    await self._accept_lot.park()
            finally:
                self._stream_spawners.remove(spawn)
            nursery.cancel_scope.cancel()

    # -- datagrams ------------------------------------------------------------------

    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM payload :meth:`send_datagram` accepts now (0: none)."""
        peer_max = self._core.peer_max_datagram_frame_size()
        if not peer_max:
            return 0
        frame_room = peer_max - 1 - (1 if peer_max - 2 < 64 else 2 if peer_max < 16384 else 4)
        packet_room = self._core.max_datagram_size() - _DATAGRAM_OVERHEAD
        return max(0, min(frame_room, packet_room))

    async def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one unreliable DATAGRAM frame (RFC 9221).

        Raises:
            DatagramTooLarge: ``data`` is larger than :meth:`max_datagram_payload`
                (which is 0 when the peer does not accept DATAGRAM frames).
            quicframe.errors.ConnectionClosed: the connection is closed.

        Cancellation:
            A cancelled call sends nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_closed()
        limit = self.max_datagram_payload()
        if len(data) > limit:
            raise DatagramTooLarge(
                f"datagram of {len(data)} bytes exceeds the limit of {limit} bytes",
                max_size=limit,
            )
        self._quic.send_datagram_frame(bytes(data))
        self._wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_datagram(self) -> bytes:
        """Wait for the next DATAGRAM frame.

        The queue holds ``datagram_queue_size`` frames; when full, the oldest is
        dropped (see ``statistics().datagrams_dropped``).

        Raises:
            quicframe.errors.ConnectionClosed: the connection closed.

        Cancellation:
            No datagram is lost to a cancelled call.
        """
        while not self._datagrams:
            self._raise_if_closed()
            await self._datagram_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._datagrams.popleft()

    # -- liveness -------------------------------------------------------------------

    async def ping(self) -> float:
        """Send a PING and wait for its acknowledgement.

        Returns:
            The measured round-trip time in seconds (it includes the peer's ACK delay).

        Raises:
            quicframe.errors.ConnectionClosed: the connection closed first.

        Cancellation:
            The PING may already be on the wire; its acknowledgement is ignored.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_closed()
        uid = self._next_ping_uid
        self._next_ping_uid += 1
        slot: list[float | None] = [now(), None]
        self._pings[uid] = slot
        self._quic.send_ping(uid)
        self._wake()
        try:
            while (rtt := slot[1]) is None:
                self._raise_if_closed()
                await self._ping_lot.park()
        finally:
            self._pings.pop(uid, None)
        return rtt

    async def aclose(
        self,
        error_code: int = ErrorCode.NO_ERROR,
        reason: str = "",
        *,
        graceful: bool | None = None,
    ) -> None:
        """Close the connection with an application ``error_code`` and ``reason``.

        With ``NO_ERROR`` (the default) the close is graceful: it first waits until
        the peer acknowledged every byte already written on every stream, then
        sends CONNECTION_CLOSE.  Any other code closes at once, unless
        ``graceful=True`` (for protocols whose "no error" code is not 0, such as
        HTTP/3's H3_NO_ERROR); ``graceful=False`` closes at once.  Returns once the
        CONNECTION_CLOSE was handed to the socket; the core answers stray packets
        for three probe timeouts afterwards.  New operations raise
        :class:`trio.ClosedResourceError` from the moment ``aclose`` is called.
        Closing twice, or after the peer closed, is fine.

        Raises:
            Nothing but trio.Cancelled.

        Cancellation:
            A cancelled ``aclose`` stops waiting for acknowledgements and sends
            CONNECTION_CLOSE at once; the connection is closed either way.
        """
        if self._closed_info is None and not self._close_requested:
            self._close_requested = True
            self._set_closed(
                ConnectionClosed,
                message="the connection was closed locally",
                code=error_code,
                reason=reason,
                by_peer=False,
                is_transport=False,
            )
            try:
                if graceful if graceful is not None else error_code == ErrorCode.NO_ERROR:
                    while self._running and not self._closing.is_set() and self._unacked():
                        await self._drain_lot.park()
            finally:
                self._issue_close(error_code, reason)
        if self._close_issued and self._running and not self._close_flushed.is_set():
            await self._close_flushed.wait()
        else:
            await trio.lowlevel.checkpoint()

    def _unacked(self) -> bool:
        return bool(self._dirty) or self._core.unacknowledged_stream_bytes() > 0

    def _issue_close(self, error_code: int, reason: str) -> None:
        if not self._close_issued:
            self._close_issued = True
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._wake()

    async def migrate(self) -> None:
        """Move this client connection to a new local UDP port and connection ID.

        Streams carry on: the server validates the new path (RFC 9000 section 9)
        and follows it.  The old socket is closed.

        Raises:
            RuntimeError: this is a server-side connection, or its endpoint is
                shared (only connections made by ``connect`` can migrate).
            quicframe.errors.ConnectionClosed: the connection is closed.
            OSError: no new socket could be bound.

        Cancellation:
            The move happens before the checkpoint: a cancelled call may have
            migrated.
        """
        self._raise_if_closed()
        if not self._is_client or not self._endpoint.can_rebind:
            raise RuntimeError("only a connection made by connect() can migrate")
        self._endpoint.rebind()
        # A fresh connection ID, so an observer cannot link the two paths; without
        # a spare ID from the peer this is a no-op and the move looks like a NAT
        # rebinding, which the server follows just the same.
        self._quic.change_connection_id()
        self._wake()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the connection's counters."""
        core = self._core.statistics()
        buffered = sum(s._send_buffered() + s._receive_size for s in self._streams.values())
        return ConnectionStatistics(
            smoothed_rtt=core.smoothed_rtt,
            min_rtt=core.min_rtt,
            latest_rtt=core.latest_rtt,
            congestion_window=core.congestion_window,
            bytes_in_flight=core.bytes_in_flight,
            packets_sent=core.packets_sent,
            packets_lost=core.packets_lost,
            streams_open=len(self._streams),
            bytes_buffered=buffered,
            datagrams_received=self._datagrams_received,
            datagrams_dropped=self._datagrams_dropped,
            early_data_received=self._early_data_received,
        )

    def __repr__(self) -> str:
        side = "client" if self._is_client else "server"
        return f"<quicframe.transport.Connection {side} peer={self._peer_address!r}>"

    # -- closed state ---------------------------------------------------------------

    def _set_closed(self, cls: type[ConnectionClosed], **kwargs: Any) -> None:
        if self._closed_info is None:
            self._closed_info = (cls, kwargs)

    def _closed_exception(self) -> ConnectionClosed:
        assert self._closed_info is not None
        cls, kwargs = self._closed_info
        kwargs = dict(kwargs)
        return cls(kwargs.pop("message"), **kwargs)

    def _raise_if_closed(self) -> None:
        if self._closed_info is not None:
            if self._close_requested and not self._peer_closed:
                raise trio.ClosedResourceError("the connection was closed locally")
            raise self._closed_exception()

    # -- called by streams (synchronous; they only queue work for the driver) --------

    def _wake(self) -> None:
        if not self._wake_pending and not self._answering:
            self._wake_pending = True
            self._driver_lot.unpark_all()

    def _mark_dirty(self, stream: Stream) -> None:
        stream_id = stream._stream_id
        if len(self._dirty) >= _EAGER_FLUSH_STREAMS and stream_id not in self._dirty:
            self._flush_eagerly()  # hands the queued writes over: a fresh _dirty
        self._dirty[stream_id] = stream
        self._wake()

    def _flush_eagerly(self) -> None:
        """Flush the queued writes from the writer's task (see _EAGER_FLUSH_STREAMS)."""
        if self._flushing or not self._running or self._close_issued or self._unsent:
            return
        self._step()
        datagrams = self._datagrams_to_send()
        self._unsent = self._endpoint.try_send(datagrams)
        if self._after_flush() or self._unsent:
            # The driver must exit, or send what the socket refused.
            self._wake()
        elif self._wait_scope is not None:
            deadline = self._next_deadline()
            if deadline != self._wait_scope.deadline:  # setting it is not free
                self._wait_scope.deadline = deadline

    def _begin_answer(self, stream: Stream) -> bool:
        """True if ``stream``'s write is the answer of the batch's sole reader.

        When the last batch of datagrams handed data to one reader only (the
        usual case of a request-response exchange: the server's handler of a new
        request, or the caller waiting for its reply), the driver was left
        parked (see _after_feed): that reader's next write (a reply, or the
        caller's next request) is flushed from its own task by _finish_answer,
        without the driver's turn and the scheduling round before it.
        """
        answerer = self._sole_answerer
        if answerer is None or (
            answerer is not stream and answerer is not trio.lowlevel.current_task()
        ):
            return False
        self._sole_answerer = None
        self._answering = True  # its writes do not wake the driver
        return True

    def _finish_answer(self) -> None:
        self._answering = False
        self._flush_eagerly()
        if self._dirty:
            self._wake()  # no flush now (the driver is mid-send, say): the driver's turn

    def _reset_stream(self, stream: Stream, code: int) -> None:
        if self._closed_info is None:
            self._dirty.pop(stream._stream_id, None)
            self._quic.reset_stream(stream._stream_id, code)
            self._wake()

    def _stop_stream(self, stream: Stream, code: int) -> None:
        if self._closed_info is None and self._core.stream_exists(stream._stream_id):
            self._quic.stop_stream(stream._stream_id, code)
            self._wake()

    def _on_consumed(self, stream: Stream) -> None:
        # Credit follows consumption: once the reader has taken a quarter of the
        # window since the last grant, let the peer send up to consumed + window.
        consumed = stream._received_total
        if consumed - stream._credit_base >= self._stream_receive_window // 4:
            stream._credit_base = consumed
            self._core.grant_stream_credit(
                stream._stream_id, consumed + self._stream_receive_window
            )
            self._wake()

    def _forget_stream(self, stream: Stream) -> None:
        """The application is done with the stream (closed, or both directions over)."""
        self._streams.pop(stream._stream_id, None)
        self._send_waiters.discard(stream)
        # The core discards it (and, for a peer's stream, lets the peer open a new
        # one) at its next flush.  A wake-up just for that would cost a flush of
        # its own, and could split a writer's data from the FIN it queues next,
        # so the driver is only woken when the peer is running out of streams.
        if self._core.release_stream(stream._stream_id):
            self._wake()

    # -- called by the endpoint -----------------------------------------------------

    def _feed(self, data: bytes, address: NetworkAddress, t: float) -> None:
        """Feed one datagram to the core (the endpoint calls _after_feed per batch)."""
        self._quic.receive_datagram(data, address, t)

    def _after_feed(self, t: float) -> None:
        """A batch was fed: drain its events and wake the driver to flush once.

        Events are drained right away, in the receive loop's turn, so the tasks
        they wake run in the next scheduling round.  When exactly one of them is
        a reader that got data (or a handler spawned for a new stream), the
        driver stays parked and that reader's next write flushes from its own
        task (see _begin_answer).  When several are, the driver is woken "for an
        answer": it gives the readers a few rounds to write their replies and
        flushes the moment one did.  Either way the reply, the ACK of this batch
        and anything else the core owes the peer leave in one flush.
        """
        self._last_activity = t
        peer_closed_now = not self._peer_closed and self._core.is_draining()
        if peer_closed_now:
            self._peer_closed = True
        self._handle_events()
        if peer_closed_now:
            self._report_peer_close()
        for unidirectional, lot in enumerate(self._stream_credit_lots):
            if lot:
                lot.unpark(count=self._core.streams_allowed(bool(unidirectional)))
        answerers, self._answerers = self._answerers, 0
        if answerers != 1:
            self._sole_answerer = None
        if (
            self._sole_answerer is not None
            and self._wait_scope is not None
            and not self._wake_pending
            and not peer_closed_now
            and self._handshake_done.is_set()
        ):
            # One reader got data (a request, or the reply a caller waits for) and
            # the driver is parked: leave it parked.  The reader's answer flushes
            # from its own task (_begin_answer) with everything the core owes the
            # peer; should no answer come, the driver wakes after _ANSWER_WAIT
            # (the ACK delay) and flushes then.  A constant rather than the
            # core's timer: asking the core costs microseconds on the answer's
            # path, nothing the batch armed is due much sooner, and the answer's
            # flush re-arms the driver from the core's timer.
            deadline = t + _ANSWER_WAIT
            if deadline < self._wait_scope.deadline:
                self._wait_scope.deadline = deadline
        elif answerers:
            self._sole_answerer = None
            self._prewoken = True
            self._driver_lot.unpark_all()
        else:
            self._wake()

    # -- the driver task ------------------------------------------------------------

    async def _run(self) -> None:
        """Drive the core until it terminates.  Runs in the endpoint's nursery."""
        self._running = True
        try:
            while True:
                if not self._wake_pending and not self._prewoken:
                    deadline = self._next_deadline()
                    if deadline > now():
                        # The deadline bounds the wait only: nothing is in flight.
                        with trio.move_on_at(deadline) as self._wait_scope:
                            await self._driver_lot.park()
                        self._wait_scope = None
                    # else the timer is already due: no wait (a cancelled wait
                    # would cost far more than the checkpoint below).
                if self._prewoken:
                    # Readers were handed data: give them a few rounds to answer
                    # and flush the moment one has written (or after those rounds).
                    self._prewoken = False
                    for _ in range(_ANSWER_ROUNDS):
                        await trio.lowlevel.checkpoint()
                        if self._dirty:
                            break
                elif not self._only_finished_writes():
                    # Let the tasks woken with us (writers of this tick) run first,
                    # so what they write leaves in this flush, not the next; unless
                    # every stream written to queued its FIN: nothing more can join.
                    await trio.lowlevel.checkpoint()
                self._wake_pending = False
                self._flushing = True
                try:
                    if self._unsent:
                        unsent, self._unsent = self._unsent, []
                        await self._endpoint.send_datagrams(unsent)
                    self._step()
                    await self._endpoint.send_datagrams(self._datagrams_to_send())
                finally:
                    self._flushing = False
                if self._after_flush():
                    return
        finally:
            self._running = False
            if (
                not self._close_issued
                and not self._core.is_closing_or_closed()
                and (self._is_client or self._handshake_done.is_set())
            ):
                # Cancelled (the endpoint is shutting down): tell the peer, without
                # waiting, rather than leave it to its idle timeout.  Not a server
                # whose handshake never completed: the peer's address is unproven,
                # and the close would go beyond the 3x anti-amplification budget
                # (aioquic does not count close packets against it).
                self._close_issued = True
                self._quic.close(error_code=ErrorCode.GOING_AWAY, reason_phrase="shutting down")
                self._endpoint.send_now(self._quic.datagrams_to_send(now()))
            if self._closed_info is None:
                # The driver was cancelled (the endpoint is shutting down).
                self._set_closed(
                    ConnectionClosed,
                    message="the endpoint shut down",
                    code=ErrorCode.GOING_AWAY,
                    reason="endpoint shut down",
                    by_peer=False,
                    is_transport=False,
                )
            self._close_flushed.set()
            self._closing.set()
            self._terminated.set()
            self._wake_everyone()
            self._endpoint._connection_finished(self)

    def _datagrams_to_send(self) -> list[tuple[bytes, NetworkAddress]]:
        """The core's datagrams for one flush.

        A paced core releases a short burst per call and asks to be called again
        a packet time later, a moment usually past by the time the burst is
        built: ask again right away (a bounded number of times) instead of
        paying a timer wake-up per burst.
        """
        build = self._quic.datagrams_to_send if not self._urgency else self._build_by_urgency
        datagrams = build(now())
        for _ in range(_PACING_CATCH_UP):
            t = now()
            if not self._core.pacing_due(t):
                break
            more = build(t)
            if not more:
                break
            datagrams += more
        return datagrams

    def _build_by_urgency(self, t: float) -> list[tuple[bytes, NetworkAddress]]:
        datagrams = self._core.datagrams_by_urgency(t, self._urgency, DEFAULT_URGENCY)
        return datagrams if datagrams is not None else self._quic.datagrams_to_send(t)

    def _set_urgency(self, stream: Stream, urgency: int) -> None:
        if urgency == DEFAULT_URGENCY:
            self._urgency.pop(stream._stream_id, None)
        else:
            self._urgency[stream._stream_id] = urgency

    def _only_finished_writes(self) -> bool:
        """True if streams were written to and every one of them queued its FIN."""
        dirty = self._dirty
        return bool(dirty) and all(stream._send_fin_pending for stream in dirty.values())

    def _after_flush(self) -> bool:
        """Bookkeeping after a flush; True once the connection terminated."""
        if self._close_issued:
            self._close_flushed.set()
        self._timer_at = self._core_timer()
        self._handle_events()
        if not self._closing.is_set() and self._core.is_closing_or_closed():
            self._closing.set()
        if self._terminated.is_set():
            return True
        self._wake_send_waiters()
        if self._close_requested:
            self._drain_lot.unpark_all()
        return False

    def _core_timer(self) -> float | None:
        timer = self._quic.get_timer()
        if timer is not None and timer <= self._timer_handled_at:
            # aioquic can re-arm its loss timer at the very instant it just handled
            # (loss_time = sent + delay, then ``sent <= now - delay`` rounds false).
            # Under a clock that does not move by itself (trio's autojump MockClock)
            # the driver would then spin at that instant forever: step past it.
            timer = self._timer_handled_at + 1e-6
        return timer

    def _next_deadline(self) -> float:
        deadline = self._timer_at if self._timer_at is not None else math.inf
        if (
            self._keepalive_interval is not None
            and self._handshake_done.is_set()
            and self._closed_info is None
        ):
            deadline = min(deadline, self._last_activity + self._keepalive_interval)
        return deadline

    def _step(self) -> None:
        quic = self._quic
        t = now()
        if self._timer_at is not None and t >= self._timer_at:
            self._timer_at = None
            self._timer_handled_at = t
            quic.handle_timer(t)
        if (
            self._keepalive_interval is not None
            and self._handshake_done.is_set()
            and self._closed_info is None
            and t >= self._last_activity + self._keepalive_interval
        ):
            self._last_activity = t
            quic.send_ping(-1)
        # Events first: a STOP_SENDING that just arrived must cancel this tick's writes.
        self._handle_events()
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            queued = 0
            for stream_id, stream in dirty.items():
                pending = stream._send_pending
                fin = stream._send_fin_pending
                if pending or fin:
                    stream._send_fin_pending = False
                    queued += len(pending)
                    # The core refuses when it already reset or discarded the
                    # stream's send side (a STOP_SENDING raced with this write).
                    with contextlib.suppress(RuntimeError, ValueError):
                        quic.send_stream_data(stream_id, bytes(pending), fin)
                    pending.clear()
            self._core.note_queued(queued)
            # Data leaves in this flush: a pending ACK old enough (or any, with
            # several streams' data) rides along.
            self._core.acknowledge_with_next_packet(t, len(dirty))

    def _handle_events(self) -> None:
        quic = self._quic
        kinds = self._event_kinds
        # Events are typed Any: each core has its own (same-named, same-shaped) classes.
        event: Any
        while (event := quic.next_event()) is not None:
            kind = kinds.get(type(event))
            if kind == EVENT_STREAM_DATA:
                if self._counting_early_data:
                    self._early_data_received += len(event.data)
                    if (
                        self._early_data_received > self._max_early_data
                        and self._early_data_accepted  # else 1-RTT data overtaking
                    ):
                        # Dropped; the connection closes once the handshake is
                        # complete (before it, QUIC would hide the error code).
                        self._early_data_refused = True
                        continue
                    if not self._early_data_arrived.is_set():
                        self._early_data_arrived.set()
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    stream = self._new_peer_stream(event.stream_id)
                if stream is not None:
                    if self._counting_early_data and event.data:
                        stream._arrived_early = True
                    if stream._receive_lot:
                        self._answerers += 1
                        self._sole_answerer = stream._reader_task
                    stream._on_data(event.data, event.end_stream)
            elif kind == EVENT_STREAM_RESET:
                stream = self._streams.get(event.stream_id) or self._new_peer_stream(
                    event.stream_id
                )
                if stream is not None:
                    stream._on_reset(event.error_code)
            elif kind == EVENT_STOP_SENDING:
                stream = self._streams.get(event.stream_id) or self._new_peer_stream(
                    event.stream_id
                )
                if stream is not None:
                    self._dirty.pop(event.stream_id, None)
                    stream._on_stop_sending(event.error_code)
            elif kind == EVENT_DATAGRAM:
                self._datagrams_received += 1
                if len(self._datagrams) >= self._datagram_queue_size:
                    self._datagrams.popleft()
                    self._datagrams_dropped += 1
                self._datagrams.append(event.data)
                self._datagram_lot.unpark_all()
            elif kind == EVENT_PING_ACKNOWLEDGED:
                slot = self._pings.get(event.uid)
                if slot is not None and slot[0] is not None:
                    slot[1] = now() - slot[0]
                    self._ping_lot.unpark_all()
            elif kind == EVENT_HANDSHAKE_COMPLETED:
                self._alpn_protocol = event.alpn_protocol
                self._session_resumed = event.session_resumed
                self._early_data_accepted = event.early_data_accepted
                self._counting_early_data = False
                if self._early_data_refused:
                    self._refuse_early_data()
                self._handshake_done.set()
                self._endpoint._handshake_finished(self)
            elif kind == EVENT_PROTOCOL_NEGOTIATED:
                # A server learns this (and whether the session resumed) from the
                # ClientHello, before 0-RTT data can reach a handler.
                self._alpn_protocol = event.alpn_protocol
                if not self._is_client:
                    self._session_resumed, self._early_data_accepted = self._core.resumption_state()
            elif kind == EVENT_CID_ISSUED:
                self._endpoint._add_cid(self, event.connection_id)
            elif kind == EVENT_CID_RETIRED:
                self._endpoint._remove_cid(self, event.connection_id)
            elif kind == EVENT_TERMINATED:
                self._on_terminated(event)

    def _refuse_early_data(self) -> None:
        """Close: the client sent more 0-RTT data than the server accepts."""
        if self._closed_info is None and not self._close_requested:
            reason = f"more than {self._max_early_data} bytes of 0-RTT data"
            self._close_requested = True
            self._set_closed(
                ConnectionClosed,
                message="the connection was closed locally: " + reason,
                code=ErrorCode.LIMIT_EXCEEDED,
                reason=reason,
                by_peer=False,
                is_transport=False,
            )
            self._issue_close(ErrorCode.LIMIT_EXCEEDED, reason)

    def _new_peer_stream(self, stream_id: int) -> Stream | None:
        """Wrap a stream the peer opened (and every lower one of its kind), in order."""
        if _is_client_initiated(stream_id) == self._is_client:
            return None  # ours, and already closed by the application
        unidirectional = _is_unidirectional(stream_id)
        next_id = self._next_peer_stream[unidirectional]
        if stream_id < next_id:
            return None  # seen before and closed by the application
        stream = None
        queued = False
        for new_id in range(next_id, stream_id + 4, 4):
            self._core.gate_stream_credit(new_id)
            stream = Stream(self, new_id, readable=True, writable=not unidirectional)
            self._streams[new_id] = stream
            if self._stream_spawners and self._closed_info is None:
                self._stream_spawners[-1](stream)
                self._answerers += 1
                self._sole_answerer = stream
            else:
                self._incoming.append(stream)
                queued = True
        self._next_peer_stream[unidirectional] = stream_id + 4
        if queued:
            self._accept_lot.unpark_all()
        return stream

    def _report_peer_close(self) -> None:
        """The peer's CONNECTION_CLOSE arrived: fail every waiter now.

        The core keeps the connection in the draining state for three probe
        timeouts before it terminates (RFC 9000 section 10.2.2), during which
        nothing can be sent or received on it, so there is nothing to wait for:
        readers get the data that arrived before the close, then the peer's error,
        at once (a client failing over to another server gains that period).
        """
        code, is_transport, reason = self._core.close_reason()
        self._set_closed(
            ConnectionClosed,
            message="the peer closed the connection",
            code=code,
            reason=reason,
            by_peer=True,
            is_transport=is_transport,
        )
        self._wake_everyone()

    def _on_terminated(self, event: Any) -> None:
        # A close by the peer was reported when it arrived (_report_peer_close).
        if self._peer_closed:
            pass
        elif self._core.is_idle_termination(event):
            self._set_closed(
                IdleTimeout,
                message="the connection was idle for too long",
                code=TransportErrorCode.NO_ERROR,
                reason="idle timeout",
                by_peer=False,
                is_transport=True,
            )
        else:
            self._set_closed(
                ConnectionClosed,
                message="the connection was closed",
                code=event.error_code,
                reason=event.reason_phrase,
                by_peer=False,
                is_transport=event.frame_type is not None,
            )
        self._terminated.set()
        self._wake_everyone()

    def _wake_send_waiters(self) -> None:
        if not self._send_waiters:
            return
        for stream in list(self._send_waiters):
            if (
                stream._send_error is not None
                or stream._send_buffered() <= stream.send_high_water_mark
            ):
                self._send_waiters.discard(stream)
                if stream._send_lot:
                    stream._send_lot.unpark_all()

    def _wake_everyone(self) -> None:
        for stream in self._streams.values():
            stream._on_connection_closed()
        self._send_waiters.clear()
        for lot in self._stream_credit_lots:
            lot.unpark_all()
        self._accept_lot.unpark_all()
        self._datagram_lot.unpark_all()
        self._ping_lot.unpark_all()
        self._drain_lot.unpark_all()

    async def _wait_handshake_quietly(self, *, or_early_data: bool = False) -> None:
        with contextlib.suppress(HandshakeError):
            await self._wait_handshake(or_early_data=or_early_data)

    async def _wait_handshake(self, *, or_early_data: bool = False) -> None:
        """Wait for the handshake; raise HandshakeError if the connection dies first.

        With ``or_early_data`` (a server), 0-RTT stream data arriving ends the
        wait as well.
        """
        async with trio.open_nursery() as nursery:

            async def watch(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch, self._closing)
            if or_early_data:
                nursery.start_soon(watch, self._early_data_arrived)
            await self._handshake_done.wait()
            nursery.cancel_scope.cancel()
        if or_early_data and self._early_data_arrived.is_set() and not self._closing.is_set():
            return
        if not self._handshake_done.is_set():
            code, is_transport, reason = self._core.close_reason()
            name = transport_code_name(code) if is_transport else code_name(code)
            raise HandshakeError(
                f"the handshake failed: {name} {reason}".rstrip(),
                code=ErrorCode.HANDSHAKE_FAILED,
            )
