"""Server-side market data over trio: :class:`Topic` and the subscription stream driver.

A :class:`Topic` wraps the sans-IO :class:`quicframe.pubsub.TopicCore`: ``publish``
numbers, stamps, encodes once and queues a value for every subscriber, then wakes
the drivers of the subscriptions that were waiting for data.  Under the BLOCK
policy it waits, before publishing, until every full BLOCK queue has drained, so
nothing is ever dropped.

The session server hands each stream whose first byte is SUBSCRIBE to
:func:`serve_subscription`.  One driver per subscription then runs two tasks:

- the **writer** answers the subscription's recovery requests from the topic's log,
  and moves frames from the subscription's queue to its stream.  It hands the
  transport at most the stream's (small) high-water mark of bytes: while the
  stream is that full the frames stay in the queue, where the policy works on them
  (CONFLATE keeps only the latest per key, stale frames expire).  Frames of a whole
  batch go out in one write.  In DATAGRAM mode the live frames go out as QUIC
  DATAGRAMs instead.
- the **reader** takes the client's UNSUBSCRIBE (or its reset) and ends the
  subscription.

Priority between subscriptions is the transport's: each subscription stream gets
the QUIC urgency of its topic (order acknowledgements 1, ticks 6; RPC calls use
1-5), and the connection fills packets from the most urgent streams first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, runtime_checkable

import trio

from .errors import ConnectionClosed, ErrorCode, RemoteProtocolError
from .pubsub import (
    DEFAULT_HISTORY,
    DEFAULT_QUEUE_SIZE,
    MODE_DATAGRAM,
    MODE_STREAM,
    Backbone,
    Policy,
    ServerSubscription,
    SubscriptionStats,
    TopicCore,
    Urgency,
    read_subscribe,
)
from .pubsub._queue import DEFAULT_MAX_QUEUED_BYTES
from .pubsub._server import DEFAULT_MAX_QUEUE_SIZE
from .session import encode_error
from .transport import Connection, DatagramTooLarge, Stream
from .wire import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    default_registry,
)
from .wire._registry import FrameRegistry

if TYPE_CHECKING:
    from ._router import Router

__all__ = [
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_SEND_BUFFER",
    "Topic",
    "TopicStatistics",
    "stream_urgency",
]

logger = logging.getLogger("quicframe.pubsub")

T = TypeVar("T")

DEFAULT_SEND_BUFFER: Final = 64 * 1024
"""Bytes of one subscription a server lets the transport hold (unsent plus
unacknowledged) before it leaves frames in the subscription's queue: the default
for subscriptions whose policy may drop frames (CONFLATE, DROP_OLDEST,
DISCONNECT), so that the queue, not the transport, holds what may still be
conflated or dropped.  BLOCK subscriptions lose nothing, so they get the
connection's stream high-water mark (``stream_high_water_mark``, 256 KiB by
default): a deeper pipe keeps a reliable feed's link busy."""

DEFAULT_MAX_SUBSCRIPTIONS: Final = 1024
"""Subscriptions one connection may hold at once (``Router.max_subscriptions``)."""

# Frames taken from a queue per write: one send per batch.
_BATCH_FRAMES: Final = 256
_BATCH_DATAGRAMS: Final = 64
# Shortest wait for room in the congestion window before DATAGRAMs go out, seconds.
_MIN_DATAGRAM_WAIT: Final = 0.001


_STREAM_URGENCY: Final[dict[int, int]] = {Urgency.HIGH: 1, Urgency.NORMAL: 3, Urgency.LOW: 6}


def stream_urgency(urgency: int) -> int:
    """The QUIC stream urgency (0 most urgent .. 7) of a topic urgency (higher first):
    HIGH (order acknowledgements) 1, NORMAL 3, LOW (ticks) 6."""
    mapped = _STREAM_URGENCY.get(urgency)
    if mapped is not None:
        return mapped
    return 0 if urgency > Urgency.HIGH else 7


@runtime_checkable
class RemoteBackbone(Backbone, Protocol):
    """A backbone that numbers and stores frames elsewhere (``quicframe._nats``):
    the topic publishes through it, it feeds the topic (``TopicCore.ingest``), and it
    answers replay requests older than the topic's local history."""

    def bind(self, topic: Topic[Any], /) -> None: ...

    async def publish(self, topic: Topic[Any], values: Sequence[Any], /) -> int: ...

    def wants(self, topic: Topic[Any], sub: ServerSubscription, /) -> bool: ...

    async def answer(self, topic: Topic[Any], sub: ServerSubscription, /) -> None: ...

    def is_stale(self, topic: str, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class TopicStatistics:
    """A snapshot of one topic.

    Attributes:
        name: the topic's name.
        head: the last sequence number published (0 before the first).
        subscribers: subscriptions attached now.
        publisher_waits: times ``publish`` waited for BLOCK subscribers to drain.
        subscriptions: the queue counters of each attached subscription
            (queued, delivered, dropped, conflated, stale, high water).
        stale: True while the topic's remote backbone cannot vouch that the topic
            is current (an edge cut off from NATS, or catching up after it came
            back: ``JetStreamBackbone.statistics()`` says since when); always False
            for the in-memory backbone.
    """

    name: str
    head: int
    subscribers: int
    publisher_waits: int
    subscriptions: tuple[SubscriptionStats, ...]
    stale: bool = False


class Topic(Generic[T]):
    """A published stream of frames of one type, served to subscribers by a server.

    Add it to a :class:`~quicframe.Router` with ``router.add_topic(topic)``; clients
    subscribe with ``client.subscribe(name)``.  A topic may be served by several
    servers at once (they share its numbering, history and subscribers).

    Args:
        name: the name subscribers ask for (e.g. ``"md.ticks"``).
        frame: the frame class published: a registered frame class with a ``seq``
            field (``quicframe.MarketTick``, ``quicframe.OrderAck``, or your own).
        key: the key of a value (``lambda t: t.instrument_id``), or the name of
            the frame's field that is the key (``"instrument_id"``, read in C: the
            cheaper choice on a busy feed): CONFLATE and the snapshot keep the
            latest value per key.  Default: one key for all.
        history: frames kept for replay to subscribers that resume.
        backbone: where numbering, history and last values live (default: memory).
        policy: the default slow-consumer policy (``quicframe.pubsub.Policy`` or
            its string): CONFLATE for ``MarketTick``, BLOCK for other frames.
            A subscription may ask for another.
        queue_size: the default queue capacity per subscription (keys, for CONFLATE).
        urgency: ``quicframe.pubsub.Urgency``: HIGH frames are sent before NORMAL
            ones before LOW ones (default LOW for ``MarketTick``, HIGH for
            ``OrderAck``, NORMAL otherwise).
        stale_after: seconds after publishing past which a frame not yet handed to
            the transport is dropped as stale (None: never).
        send_buffer: bytes per subscription handed to the transport at most (unsent
            plus unacknowledged); the rest waits in the queue, under its policy.
            Default (None): :data:`DEFAULT_SEND_BUFFER` for subscriptions that may
            drop frames, the connection's ``stream_high_water_mark`` for BLOCK ones.
        max_queue_size: the largest queue a subscriber may ask for.
        max_queued_bytes: the encoded bytes one subscriber's queue may hold (default
            8 MiB; None: no bound in bytes).  Past it the subscription's policy acts
            as at its queue size: CONFLATE and DROP_OLDEST drop the oldest frames,
            DISCONNECT fails the subscription (SLOW_CONSUMER), BLOCK holds the
            publisher.
        clock: wall-clock time in ns since the epoch: the frames' ``send_time_ns``
            and the staleness clock.  Tests may pass trio's clock in ns.
        registry: the frame registry ``frame`` is registered in.
    """

    def __init__(
        self,
        name: str,
        frame: type[T],
        *,
        key: Callable[[T], Hashable] | str | None = None,
        history: int = DEFAULT_HISTORY,
        backbone: Backbone | None = None,
        policy: Policy | str | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        urgency: int | None = None,
        stale_after: float | None = None,
        send_buffer: int | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        clock: Callable[[], int] = time.time_ns,
        registry: FrameRegistry = default_registry,
    ) -> None:
        if send_buffer is not None and send_buffer < 1:
            raise ValueError(f"send_buffer must be at least 1, not {send_buffer}")
        if stale_after is not None and stale_after <= 0:
            raise ValueError(f"stale_after must be positive, not {stale_after}")
        self.core: TopicCore[T] = TopicCore(
            name,
            frame,
            key=key,
            history=history,
            backbone=backbone,
            policy=policy,
            queue_size=queue_size,
            max_queued_bytes=max_queued_bytes,
            urgency=urgency,
            stale_after_ns=None if stale_after is None else round(stale_after * 1e9),
            registry=registry,
        )
        self.send_buffer = send_buffer
        self.max_queue_size = max_queue_size
        self.clock = clock
        self._idle: set[_Driver] = set()
        self._publisher_lot = trio.lowlevel.ParkingLot()
        self._publisher_waits = 0
        # A backbone that numbers frames elsewhere (JetStream): publish through it.
        self._remote: RemoteBackbone | None = None
        if isinstance(backbone, RemoteBackbone):
            self._remote = backbone
            backbone.bind(self)

    # -- description -----------------------------------------------------------------

    def send_buffer_for(self, policy: Policy) -> int | None:
        """The send buffer of a subscription with ``policy`` (None: the connection's
        ``stream_high_water_mark``)."""
        if self.send_buffer is not None:
            return self.send_buffer
        return None if policy is Policy.BLOCK else DEFAULT_SEND_BUFFER

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def frame(self) -> type[T]:
        return self.core.frame

    @property
    def head(self) -> int:
        """The last sequence number published (0 before the first)."""
        return self.core.head

    @property
    def policy(self) -> Policy:
        """The default policy of subscriptions that do not choose one."""
        return self.core.policy

    @property
    def urgency(self) -> int:
        return self.core.urgency

    @property
    def subscribers(self) -> int:
        return self.core.subscribers

    def statistics(self) -> TopicStatistics:
        """A snapshot of the topic and of each subscription's queue."""
        core = self.core
        return TopicStatistics(
            name=core.name,
            head=core.head,
            subscribers=core.subscribers,
            publisher_waits=self._publisher_waits,
            subscriptions=tuple(q.stats() for q in core._queues),
            stale=self._remote is not None and self._remote.is_stale(core.name),
        )

    def __repr__(self) -> str:
        return f"<quicframe.Topic {self.name!r} head={self.head} subscribers={self.subscribers}>"

    # -- publishing ------------------------------------------------------------------

    async def publish(self, value: T) -> int:
        """Publish ``value`` to every subscriber; return its sequence number.

        The value's ``seq`` and ``send_time_ns`` fields are written for it (the
        value itself is not changed); it is encoded once and the same bytes go to
        every subscriber.  While a BLOCK subscriber's queue is full, waits for it
        to drain first, so nothing is lost.

        Raises:
            quicframe.errors.LocalProtocolError: the value cannot be encoded.

        Cancellation:
            A cancelled call published nothing, or published the value and lost
            only its final checkpoint: check :attr:`head` if it matters.
        """
        if self._remote is not None:  # numbered by the backbone: wait for its ack
            return await self._remote.publish(self, (value,))
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self.core
        if core._pressure and core.backpressure:
            await self._wait_drained()
        seq = core.publish(value, self.clock())
        if self._idle:
            self._wake_idle()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return seq

    def publish_nowait(self, value: T) -> int:
        """Publish without yielding (a tight feed loop publishes a burst, then yields).

        Raises:
            trio.WouldBlock: a BLOCK subscriber's queue is full (nothing was
                published; ``await publish`` waits instead).
            quicframe.errors.LocalProtocolError: the value cannot be encoded.
        """
        core = self.core
        if (core._pressure and core.backpressure) or self._remote is not None:
            raise trio.WouldBlock
        seq = core.publish(value, self.clock())
        if self._idle:
            self._wake_idle()
        return seq

    async def publish_many(self, values: Iterable[T]) -> int:
        """Publish several values in order with one checkpoint; return the last
        sequence number (:attr:`head` if ``values`` is empty).  Waits for BLOCK
        subscribers as :meth:`publish` does, between values.

        The values are published in batches (as many as every BLOCK subscriber has
        room for), each stamped with one reading of the clock.

        Cancellation:
            The values before the cancelled wait are published, the rest are not.
        """
        if self._remote is not None:
            return await self._remote.publish(self, list(values))
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self.core
        batch = values if isinstance(values, (list, tuple)) else list(values)
        publish_many = core.publish_many
        clock = self.clock
        seq = core.head
        done = 0
        while done < len(batch):
            if core._pressure and core.backpressure:
                if self._idle:
                    self._wake_idle()
                await self._wait_drained()
            # As many as every BLOCK queue has room for, stamped together.
            done += publish_many(batch, clock(), done)
            seq = core.head
        if self._idle:
            self._wake_idle()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return seq

    async def _wait_drained(self) -> None:
        self._publisher_waits += 1
        core = self.core
        while core.backpressure:
            await self._publisher_lot.park()

    def _wake_idle(self) -> None:
        idle = self._idle
        self._idle = set()
        for driver in idle:
            driver.lot.unpark_all()

    def _drained(self) -> None:
        """A BLOCK queue lost entries (sent, or detached): let waiting publishers on."""
        if self._publisher_lot and not self.core.backpressure:
            self._publisher_lot.unpark_all()


# -- the server side of subscription streams ------------------------------------------


class _ConnectionState:
    __slots__ = ("channels", "count")

    def __init__(self) -> None:
        self.count = 0
        self.channels: set[int] = set()


_states: weakref.WeakKeyDictionary[Connection, _ConnectionState] = weakref.WeakKeyDictionary()
_TERMINAL: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class _Driver:
    """One subscription stream on the server: a writer task and a reader task."""

    def __init__(
        self, topic: Topic[Any], sub: ServerSubscription, stream: Stream, connection: Connection
    ) -> None:
        self.topic = topic
        self.sub = sub
        self.stream = stream
        self.connection = connection
        self.lot = trio.lowlevel.ParkingLot()
        self.finished = False  # the writer ended the stream with FIN

    def wake(self) -> None:
        self.lot.unpark_all()

    async def run(self, leftover: bytes) -> None:
        stream = self.stream
        stream.urgency = stream_urgency(self.sub.queue.urgency)
        stream.send_high_water_mark = self.topic.send_buffer_for(self.sub.queue.policy)
        stream._stop_callback = self._stopped
        try:
            if leftover:
                self._receive(leftover)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                with contextlib.suppress(*_TERMINAL):  # the client stopped us, or the
                    await self._write()  # connection is gone
                nursery.cancel_scope.cancel()
        except RemoteProtocolError as exc:
            logger.debug("subscription stream %d: %s", stream.stream_id, exc)
            stream.reset(exc.code)
            stream.stop_sending(exc.code)
        except _TERMINAL:
            pass
        finally:
            stream._stop_callback = None
            self.sub.close()
            self.topic._idle.discard(self)
            self.topic._drained()
            if not self.finished:
                # Cut short (the server is stopping, or the stream broke): a reset,
                # not a FIN, so the client knows to subscribe again elsewhere.
                stream.reset(ErrorCode.GOING_AWAY)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _stopped(self, code: int) -> None:
        self.sub.close()
        self.wake()

    def _receive(self, data: bytes) -> None:
        self.sub.receive_data(data)
        if self.sub.finished:
            self.wake()

    async def _read(self) -> None:
        stream = self.stream
        try:
            while data := await stream.receive_some():
                self._receive(data)
            self.sub.receive_eof()
        except RemoteProtocolError as exc:
            stream.reset(exc.code)
            stream.stop_sending(exc.code)
            self.sub.close()
            self.wake()
        except _TERMINAL:
            # The client reset its side, or the connection is gone.
            self.sub.close()
            self.wake()

    async def _write(self) -> None:
        topic = self.topic
        sub = self.sub
        stream = self.stream
        clock = topic.clock
        blocking = sub.queue.policy is Policy.BLOCK
        datagram = sub.datagram
        connection = self.connection
        while True:
            # The room first: while the stream holds its mark, frames wait in the
            # queue.  With room, no checkpoint: this task yields when the queue is
            # empty (it parks below) or the stream full, so a publisher's batch is
            # taken in one step, and the queue's capacity bounds the steps between.
            if stream._send_buffered() > stream.send_high_water_mark:
                await stream.wait_send_all_might_not_block()
            while sub.request is not None:
                remote = topic._remote
                if remote is not None and remote.wants(topic, sub):
                    await remote.answer(topic, sub)  # older than the local history
                else:
                    sub.fulfil()
            chunks = sub.data_to_send(clock(), _BATCH_FRAMES)
            if chunks:
                if blocking:
                    topic._drained()
                stream.send_nowait(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                continue
            if datagram and sub.live and len(sub.queue):
                path = connection.statistics()
                if path.bytes_in_flight >= path.congestion_window:
                    # The path is full: the frames wait in the queue (conflating)
                    # rather than in the transport's, for a fraction of a round trip.
                    with trio.move_on_after(max(path.smoothed_rtt / 4, _MIN_DATAGRAM_WAIT)):
                        await self.lot.park()
                    continue
                datagrams = sub.datagrams_to_send(clock(), _BATCH_DATAGRAMS)
                if datagrams:
                    for data in datagrams:
                        try:
                            await connection.send_datagram(data)
                        except DatagramTooLarge:
                            sub.queue.dropped += 1
                    continue
            if sub.done:
                self.finished = True
                await stream.send_eof()
                return
            topic._idle.add(self)
            await self.lot.park()
            topic._idle.discard(self)


def _error(code: int, message: str, details: dict[str, Any] | None = None) -> bytes:
    return encode_error(0, code, message, details)


async def serve_subscription(
    router: Router,
    connection: Connection,
    stream: Stream,
    first: bytes,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> None:
    """Serve one subscription stream whose first bytes (``first``) were read.

    Reads SUBSCRIBE, finds the topic in ``router``, checks the connection's limits,
    then runs the subscription until it ends (UNSUBSCRIBE, an error, the client
    going away, or the connection closing).  Every way out leaves the stream closed.

    Raises:
        Nothing but trio.Cancelled.
    """
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    received = [first]
    try:
        decoder.feed(first)
        frame = decoder.next_frame()
        while frame is None:
            data = await stream.receive_some()
            if not data:
                decoder.feed_eof()
                raise RemoteProtocolError(
                    "the subscription stream ended before SUBSCRIBE",
                    code=ErrorCode.PROTOCOL_ERROR,
                )
            received.append(data)
            decoder.feed(data)
            frame = decoder.next_frame()
        request = read_subscribe(frame)
    except RemoteProtocolError as exc:
        stream.reset(exc.code)
        stream.stop_sending(exc.code)
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    except _TERMINAL:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    raw = b"".join(received)
    leftover = raw[len(raw) - decoder.buffered :] if decoder.buffered else b""

    state = _states.get(connection)
    if state is None:
        state = _states[connection] = _ConnectionState()
    topic = router.topic(request.topic)
    refusal: bytes | None = None
    if topic is None:
        refusal = _error(
            ErrorCode.UNKNOWN_TOPIC, f"no topic {request.topic!r}", {"topic": request.topic}
        )
    elif state.count >= router.max_subscriptions:
        refusal = _error(
            ErrorCode.SUBSCRIPTION_LIMIT,
            f"this connection already holds {state.count} subscriptions",
            {"limit": router.max_subscriptions},
        )
    elif request.mode == MODE_DATAGRAM and request.channel in state.channels:
        refusal = _error(
            ErrorCode.INVALID_ARGUMENT,
            f"datagram channel {request.channel} is already in use on this connection",
            {"channel": request.channel},
        )
    if refusal is not None or topic is None:
        try:
            stream.send_nowait(refusal or b"")
            await stream.send_eof()
        except _TERMINAL:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return

    if request.mode == MODE_DATAGRAM and connection.max_datagram_payload() == 0:
        # The client asked for DATAGRAMs the connection cannot carry: stream mode.
        request = dataclasses.replace(request, mode=MODE_STREAM, channel=0)
    try:
        sub = ServerSubscription(topic.core, request, max_queue_size=topic.max_queue_size)
    except RemoteProtocolError as exc:
        stream.reset(exc.code)
        stream.stop_sending(exc.code)
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    channel = sub.channel if sub.datagram else 0
    state.count += 1
    if channel:
        state.channels.add(channel)
    try:
        await _Driver(topic, sub, stream, connection).run(leftover)
    finally:
        state.count -= 1
        state.channels.discard(channel)
