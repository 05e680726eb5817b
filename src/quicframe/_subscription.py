"""Client-side market data over trio: ``client.subscribe`` and :class:`Subscription`.

A subscription owns one task (in the nursery of ``client.subscribe``'s context
manager) that opens the subscription stream, writes SUBSCRIBE and feeds what
arrives to the sans-IO :class:`quicframe.pubsub.ClientSubscription`, which checks
sequence numbers and decodes the frames.  Decoded values wait in a bounded buffer
until the application takes them; while the buffer is full the task stops
reading, so QUIC flow control stops the server's sending and the server's queue
policy (conflate, drop, disconnect, block) takes over.

When the connection is lost and the client has a reconnect policy, the task waits
for the new connection and subscribes again from the last sequence number it
received: the server replays what was missed, and nothing is delivered twice.

DATAGRAM mode: live frames arrive as QUIC DATAGRAMs carrying the subscription's
channel.  Every datagram subscription on a connection registers with that
connection's demultiplexer; one of their tasks at a time reads the connection's
datagrams and hands each to the subscription of its channel.  When the server did
not announce DATAGRAM support, the subscription uses stream mode.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import trio

from ._util import unwrap_single_exception
from .errors import (
    ConnectionClosed,
    ConnectionLost,
    ErrorCode,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from .pubsub import MODE_DATAGRAM, MODE_STREAM, ON_GAP_SNAPSHOT, ClientSubscription, Subscribed
from .transport import Connection, Stream
from .wire import default_registry
from .wire._registry import FrameRegistry

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["DEFAULT_BUFFER", "Subscription", "SubscriptionStatistics", "subscribe"]

T = TypeVar("T")

DEFAULT_BUFFER: Final = 8192
"""Decoded values a subscription holds for the application before it stops reading."""

_TERMINAL: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)
# ERROR codes after which subscribing again elsewhere is the right move.
_RETRYABLE: Final = frozenset((ErrorCode.GOING_AWAY, ErrorCode.UNAVAILABLE))
_NO_OPCODE: Final = -1  # for Client._usable_link: not an idempotent call

# Bytes read from a subscription stream per step: about 270 ticks.  The values
# decoded from one read stay alive until the application takes them; reading
# 64 KiB at a time kept a thousand of them alive at every young collection,
# which then aged into the oldest generation and set off full collections
# (1-2 of 12-23 ms per 200,000 ticks).  In 16 KiB steps they die young: the
# collector's time per 200,000 ticks fell from 38-57 ms to 11-17 ms.
_READ_CHUNK: Final = 16 * 1024


class _Outcome(enum.Enum):
    ENDED = "ended"  # the server finished the stream
    LOST = "lost"  # the connection (or the server) went away: subscribe again
    FAILED = "failed"  # the subscription failed for good


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A snapshot of one subscription, client side.

    The server's counters of the same subscription (queued there, conflated,
    dropped, stale) are in ``topic.statistics()``; here they show as gaps.

    Attributes:
        topic: the topic name.
        mode: ``"stream"`` or ``"datagram"``: the mode in use.
        queued: values received and not yet taken by the application.
        delivered: values taken by the application.
        dropped: values this client dropped: DATAGRAM mode only, when the
            application fell more than the buffer behind (oldest first).
        received: frames accepted in sequence (duplicates excluded).
        duplicates: frames dropped as already received.
        gaps: jumps in the sequence numbers (ranges; policy drops, conflation,
            stale frames, lost datagrams, or a GAP from the server).
        missing: sequence numbers skipped in all.
        snapshots: snapshots received.
        resubscribes: times the subscription was established again after a loss.
        last_seq: the last sequence number received (None before the first).
        latency_p50_ns: median send-to-receive latency over a recent window.
        latency_p99_ns: 99th percentile of the same.
    """

    topic: str
    mode: str
    queued: int
    delivered: int
    dropped: int
    received: int
    duplicates: int
    gaps: int
    missing: int
    snapshots: int
    resubscribes: int
    last_seq: int | None
    latency_p50_ns: int | None
    latency_p99_ns: int | None


class _Demux:
    """The DATAGRAMs of one connection, handed to subscriptions by channel."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.handlers: dict[int, Callable[[bytes], None]] = {}
        self.pumping = False
        self.vacancy = trio.lowlevel.ParkingLot()

    async def serve(self, channel: int, handler: Callable[[bytes], None]) -> None:
        """Register ``handler`` for ``channel``, and read datagrams while nobody else does."""
        self.handlers[channel] = handler
        try:
            while True:
                if self.pumping:
                    await self.vacancy.park()
                    continue
                self.pumping = True
                try:
                    await self._pump()
                    return
                finally:
                    self.pumping = False
                    self.vacancy.unpark_all()
        finally:
            self.handlers.pop(channel, None)

    async def _pump(self) -> None:
        receive = self.connection.receive_datagram
        handlers = self.handlers
        try:
            while True:
                data = await receive()
                if len(data) >= 6:
                    handler = handlers.get(int.from_bytes(data[4:6], "big"))
                    if handler is not None:
                        handler(data)
        except _TERMINAL:
            return


_demuxes: weakref.WeakKeyDictionary[Connection, _Demux] = weakref.WeakKeyDictionary()
_channels: weakref.WeakKeyDictionary[Client, set[int]] = weakref.WeakKeyDictionary()
_channel_counter = itertools.count(1)


def _demux(connection: Connection) -> _Demux:
    demux = _demuxes.get(connection)
    if demux is None:
        demux = _demuxes[connection] = _Demux(connection)
    return demux


def _allocate_channel(client: Client) -> int:
    used = _channels.setdefault(client, set())
    if len(used) >= 0xFFFF:
        raise LocalProtocolError("every datagram channel (1-65535) is in use on this client")
    while True:
        channel = next(_channel_counter) % 0xFFFF + 1
        if channel not in used:
            used.add(channel)
            return channel


class Subscription(Generic[T]):
    """A live subscription to a topic, from ``client.subscribe``: iterate it.

    ``async for value in sub`` yields the topic's decoded frames (``MarketTick``...)
    in sequence order, never twice; it ends when the server finishes the
    subscription, and raises the error that ended it otherwise
    (:class:`quicframe.pubsub.HistoryGap`, :class:`quicframe.errors.SlowConsumer`,
    :class:`quicframe.errors.UnknownTopic`, :class:`quicframe.errors.ConnectionLost`...).
    :meth:`receive_many` takes every value waiting at once.

    Never constructed by users.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        *,
        from_seq: int | None,
        mode: str,
        policy: str | None,
        snapshot: bool,
        on_gap: str,
        queue_size: int,
        buffer: int,
        clock: Callable[[], int],
        registry: FrameRegistry,
    ) -> None:
        if mode not in (MODE_STREAM, MODE_DATAGRAM):
            raise ValueError(f"mode must be 'stream' or 'datagram', not {mode!r}")
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        self.topic = topic
        self._client = client
        self._wanted_mode = mode
        self._options: dict[str, Any] = {
            "policy": policy,
            "snapshot": snapshot,
            "on_gap": on_gap,
            "queue_size": queue_size,
            "registry": registry,
        }
        self._from_seq = from_seq
        self._buffer = buffer
        self._clock = clock
        self._channel = 0
        self._core: ClientSubscription[T] | None = None
        self._values: deque[T] = deque()
        self._value_lot = trio.lowlevel.ParkingLot()  # the application waits here
        self._room_lot = trio.lowlevel.ParkingLot()  # the reader waits here for room
        self._failure: BaseException | None = None
        self._ended = False
        self._started = False
        self._task_status: trio.TaskStatus[Subscription[T]] | None = None
        self._delivered = 0
        self._dropped = 0
        self._resubscribes = 0
        # Fail a bad argument here, not later inside the task.
        ClientSubscription(
            topic,
            from_seq=from_seq,
            mode=MODE_STREAM,
            policy=policy,
            snapshot=snapshot,
            on_gap=on_gap,
            queue_size=queue_size,
            registry=registry,
        )

    # -- what the application sees --------------------------------------------------

    @property
    def mode(self) -> str:
        """The mode in use: ``"datagram"`` only when both ends support DATAGRAMs."""
        core = self._core
        return MODE_DATAGRAM if core is not None and core.datagram else MODE_STREAM

    @property
    def subscribed(self) -> Subscribed | None:
        """What the server granted in its last SUBSCRIBED (head, policy, queue size...)."""
        return None if self._core is None else self._core.subscribed

    @property
    def last_seq(self) -> int | None:
        """The last sequence number received: a later subscription resumes after it."""
        return None if self._core is None else self._core.tracker.last_seq

    def stats(self) -> SubscriptionStatistics:
        """A snapshot of the subscription's counters and latency percentiles."""
        core = self._core
        tracker = None if core is None else core.tracker
        latency = None if core is None else core.latency
        return SubscriptionStatistics(
            topic=self.topic,
            mode=self.mode,
            queued=len(self._values),
            delivered=self._delivered,
            dropped=self._dropped + (0 if core is None else core.datagrams_buffered_lost),
            received=0 if tracker is None else tracker.delivered,
            duplicates=0 if tracker is None else tracker.duplicates,
            gaps=0 if tracker is None else tracker.gap_count,
            missing=0 if tracker is None else tracker.missing,
            snapshots=0 if core is None else core.snapshots,
            resubscribes=self._resubscribes,
            last_seq=None if tracker is None else tracker.last_seq,
            latency_p50_ns=None if latency is None else latency.p50,
            latency_p99_ns=None if latency is None else latency.p99,
        )

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        values = self._values
        if values:
            value = values.popleft()
            self._taken(1)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value
        await self._wait_values()
        value = values.popleft()
        self._taken(1)
        return value

    async def receive_many(self, max_values: int | None = None) -> list[T]:
        """Wait for values and return every one waiting (at most ``max_values``).

        One checkpoint per batch rather than per value: the fast way to drain a
        busy feed.

        Raises:
            trio.EndOfChannel: the subscription ended (the server finished it).
            As iteration does otherwise.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        values = self._values
        parked = False
        if not values:
            try:
                await self._wait_values()
            except StopAsyncIteration:
                raise trio.EndOfChannel(f"the subscription to {self.topic!r} ended") from None
            parked = True
        if max_values is None or max_values >= len(values):
            out = list(values)
            values.clear()
        else:
            out = [values.popleft() for _ in range(max_values)]
        self._taken(len(out))
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return out

    async def _wait_values(self) -> None:
        while not self._values:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                raise StopAsyncIteration
            await self._value_lot.park()

    def _taken(self, n: int) -> None:
        self._delivered += n
        if self._room_lot and len(self._values) < self._buffer:
            self._room_lot.unpark_all()

    # -- the task -----------------------------------------------------------------

    def _push(self, values: list[T]) -> None:
        self._values.extend(values)
        if self._value_lot:
            self._value_lot.unpark_all()

    def _on_datagram(self, data: bytes) -> None:
        core = self._core
        if core is None:
            return
        try:
            values = core.receive_datagram(data, self._clock())
        except RemoteProtocolError:
            self._dropped += 1
            return
        if values:
            self._push(values)
            excess = len(self._values) - self._buffer
            if excess > 0:  # latest-value delivery: the oldest go
                for _ in range(excess):
                    self._values.popleft()
                self._dropped += excess

    def _finish(self, failure: BaseException | None) -> None:
        self._failure = failure
        self._ended = True
        self._value_lot.unpark_all()

    def _prepare(self, connection: Connection) -> ClientSubscription[T]:
        """The sans-IO end for a (new) stream on ``connection``, resuming where we are."""
        datagram = self._wanted_mode == MODE_DATAGRAM and connection.max_datagram_payload() > 0
        core = self._core
        if core is not None and core.datagram == datagram:
            core.reset()
            return core
        if datagram and not self._channel:
            self._channel = _allocate_channel(self._client)
        last = None if core is None else core.tracker.last_seq
        new: ClientSubscription[T] = ClientSubscription(
            self.topic,
            from_seq=self._from_seq if last is None else last + 1,
            mode=MODE_DATAGRAM if datagram else MODE_STREAM,
            channel=self._channel,
            **self._options,
        )
        if core is not None:
            # Same subscription, other mode: keep what it has seen.
            new.tracker = core.tracker
            new.latency = core.latency
            new.snapshots = core.snapshots
            new.gap_notices = core.gap_notices
        self._core = new
        return new

    async def _run(self, *, task_status: trio.TaskStatus[Subscription[T]]) -> None:
        self._task_status = task_status
        client = self._client
        try:
            while True:
                link = await client._usable_link(_NO_OPCODE)
                connection = link.connection
                core = self._prepare(connection)
                try:
                    stream = await connection.open_stream()
                except ConnectionClosed as exc:
                    outcome: tuple[_Outcome, BaseException | None] = (_Outcome.LOST, exc)
                else:
                    # What stands when the client moves us off a link that got GOAWAY.
                    outcome = (_Outcome.LOST, None)
                    try:
                        async with trio.open_nursery() as nursery:
                            if core.datagram:
                                nursery.start_soon(
                                    _demux(connection).serve, core.channel, self._on_datagram
                                )
                            nursery.start_soon(
                                client._leave_after_goaway, link, nursery.cancel_scope
                            )
                            outcome = await self._follow(stream, core)
                            nursery.cancel_scope.cancel()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._close_stream(stream, core)
                kind, error = outcome
                if kind is _Outcome.ENDED:
                    self._end(None)
                    return
                if kind is _Outcome.LOST and client._policy is not None and not client._closed:
                    link.retire()
                    self._resubscribes += 1
                    continue
                if kind is _Outcome.LOST and not isinstance(error, RemoteError):
                    error = ConnectionLost(
                        f"the subscription to {self.topic!r} lost its connection: {error}",
                        code=ErrorCode.CONNECTION_LOST,
                        operation=f"subscribe {self.topic!r}",
                    )
                self._end(error)
                return
        except (ConnectionClosed, trio.ClosedResourceError) as exc:
            # No connection to subscribe on (the client gave up or is closing).
            if not self._started:
                raise
            self._end(exc)
        finally:
            if self._channel:
                _channels.get(client, set()).discard(self._channel)

    def _end(self, failure: BaseException | None) -> None:
        if not self._started:
            if failure is not None:
                raise failure
            self._start()
        self._finish(failure)

    def _start(self) -> None:
        self._started = True
        assert self._task_status is not None
        self._task_status.started(self)

    async def _follow(
        self, stream: Stream, core: ClientSubscription[T]
    ) -> tuple[_Outcome, BaseException | None]:
        """Subscribe on ``stream`` and deliver until it ends; say how it ended."""
        clock = self._clock
        try:
            await stream.send_all(core.subscribe_frame())
            while True:
                data = await stream.receive_some(_READ_CHUNK)
                if not data:
                    core.receive_eof()
                    if core.error is None:
                        return _Outcome.ENDED, None
                    break
                values = core.receive_data(data, clock())
                if values:
                    self._push(values)
                if core.error is not None:
                    break
                if not self._started and core.subscribed is not None:
                    self._start()
                if not core.datagram:
                    while len(self._values) >= self._buffer:
                        await self._room_lot.park()
        except RemoteProtocolError as exc:
            stream.reset(exc.code)
            stream.stop_sending(exc.code)
            return _Outcome.FAILED, exc
        except _TERMINAL as exc:
            return _Outcome.LOST, exc
        error = core.error
        assert error is not None
        if error.code in _RETRYABLE:
            return _Outcome.LOST, error
        return _Outcome.FAILED, error

    async def _close_stream(self, stream: Stream, core: ClientSubscription[T]) -> None:
        if not core.finished:
            with contextlib.suppress(trio.WouldBlock, *_TERMINAL):
                stream.send_nowait(core.unsubscribe_frame())
        await stream.aclose()


@contextlib.asynccontextmanager
async def subscribe(
    client: Client,
    topic: str,
    *,
    from_seq: int | None = None,
    mode: str = MODE_STREAM,
    policy: str | None = None,
    snapshot: bool = True,
    on_gap: str = ON_GAP_SNAPSHOT,
    queue_size: int = 0,
    buffer: int = DEFAULT_BUFFER,
    clock: Callable[[], int] = time.time_ns,
    registry: FrameRegistry = default_registry,
) -> AsyncIterator[Subscription[Any]]:
    """The implementation of :meth:`quicframe.Client.subscribe` (see there)."""
    sub: Subscription[Any] = Subscription(
        client,
        topic,
        from_seq=from_seq,
        mode=mode,
        policy=None if policy is None else str(policy),
        snapshot=snapshot,
        on_gap=on_gap,
        queue_size=queue_size,
        buffer=buffer,
        clock=clock,
        registry=registry,
    )
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            await nursery.start(sub._run)
            try:
                yield sub
            finally:
                nursery.cancel_scope.cancel()
