"""NATS JetStream as a topic backbone: one numbering for many edge servers.

``pip install 'quicframe[nats]'``, then::

    backbone = JetStreamBackbone("nats://127.0.0.1:4222", history=100_000)
    ticks = quicframe.Topic("md.ticks", quicframe.MarketTick, key=..., backbone=backbone)
    router.add_topic(ticks)
    async with backbone.running():      # connect, start consuming, catch up
        await quicframe.serve(router, ...)

Each topic is one JetStream stream (``QF_<topic>``, subject ``qf.<topic>``; both
configurable).  The stream sequence **is** the topic sequence number:

- ``Topic.publish`` / ``publish_many`` encode the value once (with ``seq`` 0 and the
  publisher's ``send_time_ns``) and publish the bytes to JetStream, waiting for the
  acknowledgements; at most ``in_flight`` frames of one backbone are unacknowledged
  at any time.  They return the stream sequence JetStream gave the (last) frame.
  ``publish_nowait`` raises ``trio.WouldBlock`` (a remote publish always waits).
- Every edge runs an **ordered consumer** per topic, from ``history`` frames before
  the stream's end.  For each message it writes the stream sequence into the frame
  (re-encoding it with the publisher's ``send_time_ns``, so every edge produces the
  very same bytes for the same number) and hands it to ``TopicCore.ingest``, which
  appends it to the local history (a cache) and fans it out under the usual
  policies.
- A subscriber resuming from a number older than the cache gets that part replayed
  from JetStream (an ordered consumer from that start sequence), then the rest from
  the cache; a range JetStream no longer holds is the usual gap (GAP or
  SEQUENCE_GAP).

Bridging asyncio and trio
-------------------------
nats-py is an asyncio library.  The backbone runs it on an asyncio event loop in a
thread of its own (one per backbone) rather than through trio-asyncio: the two
loops stay independent, nats-py runs on the loop it was written for, and the only
shared state is what crosses the bridge:

- trio -> asyncio: ``asyncio.run_coroutine_threadsafe``; the trio task waits on a
  ``trio.Event`` set through the trio token when the future completes, and a
  cancelled trio task cancels the asyncio task.
- asyncio -> trio (consumed messages): nats-py's message callback takes a slot of
  an ``asyncio.Semaphore(window)`` per message; the messages taken in one turn of
  the asyncio loop go to trio as one list (``TrioToken.run_sync_soon`` into a
  trio memory channel), and the trio consumer gives their slots back, in one
  ``call_soon_threadsafe``, when it takes the list.  So at most
  ``window`` messages sit in the bridge: when the trio side stops (a BLOCK
  subscriber is full, the edge is busy) the asyncio side stops reading its
  subscription, and JetStream's flow control of the ordered consumer stops the
  server.

The cost: two thread hops per publish batch and two per batch of consumed
messages, and a second event loop per backbone.  Batching matters more than the
hops' own cost suggests: each hop is a wake-up write, a system call that lets the
other thread take the GIL, and one per message made every system call of the
edge (its UDP sends too) wait for the GIL.  See ``docs/scale-out.md``.

Losing NATS
-----------
An edge cut off from NATS keeps serving what it holds: its QUIC subscribers keep
their connections and new subscribers are answered from the cache.  Meanwhile:

- every topic of the backbone is **stale** (``statistics()``: ``stale`` and
  ``stale_since``; ``Topic.statistics().stale`` too) from the moment the
  connection drops until its consumer has caught up with the stream's end as of the
  reconnection;
- nats-py reconnects with a **bounded exponential backoff**: at once, then after
  ``reconnect_min`` seconds, doubling after each failed attempt up to
  ``reconnect_max``, for ever (``max_reconnect_attempts`` -1; ``connect_options``
  may say otherwise, and a connection nats-py gives up on leaves the topics stale);
- once reconnected, each topic's ordered consumer is started again after the last
  sequence this edge took in, so subscribers see a contiguous sequence with no
  duplicates (``reconnects`` counts the reconnections);
- a range JetStream no longer holds by then (retention, ``max_msgs``, a purge) is a
  **gap**: every subscriber attached gets, once its live frames reach it, GAP and a
  snapshot, or SEQUENCE_GAP (``HistoryGap`` on the client) with ``on_gap="error"``;
  ``statistics()`` counts the gaps and the numbers missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .pubsub import DEFAULT_HISTORY, Entry, HistoryGap, InMemoryLog, ReplayRequest
from .wire import decode_frame
from .wire._errors import ErrorCode, LocalProtocolError, Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ._topic import Topic
    from .pubsub import ServerSubscription

__all__ = [
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_RECONNECT_MAX",
    "DEFAULT_RECONNECT_MIN",
    "DEFAULT_WINDOW",
    "BackboneStatistics",
    "BackboneTopicStatistics",
    "JetStreamBackbone",
]

logger = logging.getLogger("quicframe.nats")

R = TypeVar("R")

DEFAULT_IN_FLIGHT: Final = 256
"""Frames one backbone may have published to JetStream and not yet had acknowledged."""

DEFAULT_WINDOW: Final = 1024
"""Consumed messages one topic may have in the asyncio -> trio bridge."""

DEFAULT_RECONNECT_MIN: Final = 0.25
"""Seconds before the second attempt to reconnect to NATS (the first is at once)."""

DEFAULT_RECONNECT_MAX: Final = 5.0
"""Seconds between attempts to reconnect to NATS, at most (the backoff doubles up to it)."""

_Item = tuple[int, bytes]

# Seconds the asyncio tasks get to finish once cancelled, when a backbone stops.
_STOP_TIMEOUT: Final = 5.0


class _Bridge:
    """An asyncio event loop in a thread of its own, and the ways across to trio."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="quicframe-nats", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def call(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on the asyncio loop and wait for its result (or exception)."""
        done = trio.Event()
        token = self.token

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        """From the asyncio thread: run ``fn(*args)`` in trio, soon."""
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn, *args)

    async def stop(self) -> None:
        """Cancel what still runs on the loop, then stop the loop and its thread."""
        with contextlib.suppress(Exception):
            await self.call(_cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self.thread.join)
        self.loop.close()


async def _cancel_the_rest() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)


class _Consumer:
    """The asyncio half of one topic's ordered consumer (touched on the asyncio loop
    only, but for ``start``, read once by trio when the consumer starts, and
    :meth:`release`, which trio calls through ``call_soon_threadsafe``).

    nats-py calls :meth:`on_message` for each message, one at a time.  Each takes a
    bridge slot; the messages taken in one turn of the asyncio loop cross to trio
    together, as one list (one thread hop per batch, not per message: each hop is a
    wake-up write, and with two threads sharing the GIL every such system call can
    cost far more than the write itself).
    """

    def __init__(
        self, topic: str, push: Callable[[list[_Item]], None], window: int, bridge: _Bridge
    ) -> None:
        self.topic = topic
        self.push = push
        self.slots = asyncio.Semaphore(window)
        self.sub: Any = None  # the nats-py subscription, while there is one
        self.start = 0  # the first stream sequence asked for
        self.last = 0  # the last stream sequence handed to trio
        self._bridge = bridge
        self._batch: list[_Item] = []

    async def on_message(self, msg: Any) -> None:
        await self.slots.acquire()
        seq: int = msg.metadata.sequence.stream
        self.last = seq
        if not self._batch:
            self._bridge.loop.call_soon(self._flush)
        self._batch.append((seq, msg.data))

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._bridge.to_trio(self.push, batch)

    def release(self, n: int) -> None:
        for _ in range(n):
            self.slots.release()

    async def stop(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class _TopicState:
    """The trio half's view of one topic's consumer (touched in trio only)."""

    __slots__ = ("expected", "gaps", "missing", "stale_since", "target")

    def __init__(self) -> None:
        self.expected = 0  # the stream sequence that should come next (0: not started)
        self.stale_since: float | None = None
        self.target: int | None = None  # stale until ``expected > target``
        self.gaps = 0
        self.missing = 0


@dataclass(frozen=True, slots=True)
class BackboneTopicStatistics:
    """One topic as this edge's consumer sees it.

    Attributes:
        name: the topic's name.
        head: the last stream sequence taken in (the topic's head).
        stale: True while the edge is cut off from NATS, or catching up after it.
        stale_since: when it became stale (``time.time()`` seconds), or None.
        gaps: ranges JetStream no longer held when this edge came to read them.
        missing: stream sequences in those ranges, in all.
    """

    name: str
    head: int
    stale: bool
    stale_since: float | None
    gaps: int
    missing: int


@dataclass(frozen=True, slots=True)
class BackboneStatistics:
    """A snapshot of one :class:`JetStreamBackbone`.

    Attributes:
        connected: the NATS connection is up.
        stale: some topic is stale (or the connection is down).
        stale_since: the earliest ``stale_since`` of the topics, or None.
        reconnects: times the connection was lost and made again.
        topics: each topic's consumer.
    """

    connected: bool
    stale: bool
    stale_since: float | None
    reconnects: int
    topics: tuple[BackboneTopicStatistics, ...]


def _stream_name(prefix: str, topic: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "_", topic)


class JetStreamBackbone:
    """Topics numbered and stored by NATS JetStream; this process is one edge.

    Args:
        servers: the NATS server URL(s).
        history: frames each topic keeps locally (the cache; older frames are
            fetched from JetStream on request).  ``Topic(history=...)`` is not used.
        subject_prefix: a topic's subject is this prefix and the topic's name.
        stream_prefix: a topic's stream is this prefix and the topic's name (with
            characters other than letters, digits, ``_`` and ``-`` made ``_``).
        create_streams: create a topic's stream when it does not exist.
        in_flight: frames published and not yet acknowledged, at most.
        window: consumed messages of one topic in the bridge, at most.
        fetch_timeout: seconds to wait for each message of a replay from JetStream.
        reconnect_min: seconds before the second attempt to reconnect after losing
            NATS (the first is at once); each failed attempt doubles the wait...
        reconnect_max: ...up to this many seconds.
        connect_options: more keyword arguments for ``nats.connect`` (its
            ``disconnected_cb``, ``reconnected_cb``, ``closed_cb`` and ``error_cb``
            are called too).

    Use it as the ``backbone`` of one or more ``Topic`` objects, then run it with
    ``async with backbone.running():`` around the server.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        history: int = DEFAULT_HISTORY,
        subject_prefix: str = "qf.",
        stream_prefix: str = "QF_",
        create_streams: bool = True,
        in_flight: int = DEFAULT_IN_FLIGHT,
        window: int = DEFAULT_WINDOW,
        fetch_timeout: float = 5.0,
        reconnect_min: float = DEFAULT_RECONNECT_MIN,
        reconnect_max: float = DEFAULT_RECONNECT_MAX,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if in_flight < 1 or window < 1:
            raise ValueError("in_flight and window must be at least 1")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("reconnect_min must be positive and at most reconnect_max")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.history = history
        self.subject_prefix = subject_prefix
        self.stream_prefix = stream_prefix
        self.create_streams = create_streams
        self.in_flight = in_flight
        self.window = window
        self.fetch_timeout = fetch_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_options = dict(connect_options or {})
        self._logs: dict[str, InMemoryLog] = {}
        self._topics: dict[str, Topic[Any]] = {}
        self._bridge: _Bridge | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._nursery: trio.Nursery | None = None
        self._unacked = trio.Semaphore(in_flight)
        self._arrivals: dict[str, trio.lowlevel.ParkingLot] = {}
        self._window_lock = trio.Lock()
        # The outage state: trio's copy, and the asyncio side's consumers.
        self._states: dict[str, _TopicState] = {}
        self._connected = False
        self._reconnects = 0
        self._state_lot = trio.lowlevel.ParkingLot()
        self._consumers: dict[str, _Consumer] = {}  # asyncio loop only
        self._resuming: asyncio.Task[None] | None = None  # asyncio loop only
        self._failed_attempts = 0  # asyncio loop only
        self._stopping: set[asyncio.Task[None]] = set()  # asyncio loop only
        self._closing = False

    # -- the Backbone protocol, and binding topics -----------------------------------

    def log(self, topic: str, /) -> InMemoryLog:
        """The local cache of ``topic`` (a bounded in-memory log)."""
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = InMemoryLog(topic, self.history)
        return log

    def subject(self, topic: str) -> str:
        return self.subject_prefix + topic

    def stream(self, topic: str) -> str:
        return _stream_name(self.stream_prefix, topic)

    def bind(self, topic: Topic[Any], /) -> None:
        """Called by ``Topic``: consume its stream while the backbone runs."""
        if topic.name in self._topics:
            raise ValueError(f"this backbone already has a topic {topic.name!r}")
        self._topics[topic.name] = topic
        self._arrivals[topic.name] = trio.lowlevel.ParkingLot()
        self._states[topic.name] = _TopicState()
        if self._nursery is not None:
            self._nursery.start_soon(self._consume, topic)

    # -- running ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[JetStreamBackbone]:
        """Connect, create the streams, consume every bound topic, and wait until each
        has caught up with its stream's end as of now; stop it all on exit."""
        if self._bridge is not None:
            raise RuntimeError("the backbone is already running")
        import nats  # the optional dependency: imported only here

        bridge = self._bridge = _Bridge()
        self._closing = False
        try:
            self._nc = await bridge.call(nats.connect(self.servers, **self._options()))
            self._js = self._nc.jetstream()
            self._connected = True
            async with trio.open_nursery() as nursery:
                for topic in self._topics.values():
                    await nursery.start(self._consume, topic)
                self._nursery = nursery
                try:
                    yield self
                finally:
                    self._nursery = None
                    nursery.cancel_scope.cancel()
        finally:
            self._closing = True
            with trio.CancelScope(shield=True):
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await bridge.call(self._nc.close())
                await bridge.stop()
            self._bridge = self._nc = self._js = None
            self._connected = False
            self._consumers.clear()
            self._resuming = None
            for state in self._states.values():
                state.stale_since = state.target = None
                state.expected = 0

    # -- losing NATS and coming back -------------------------------------------------

    def statistics(self) -> BackboneStatistics:
        """The connection's state and each topic's: stale or not, since when, gaps."""
        topics = tuple(
            BackboneTopicStatistics(
                name=name,
                head=topic.head,
                stale=self._states[name].stale_since is not None,
                stale_since=self._states[name].stale_since,
                gaps=self._states[name].gaps,
                missing=self._states[name].missing,
            )
            for name, topic in self._topics.items()
        )
        since = [t.stale_since for t in topics if t.stale_since is not None]
        return BackboneStatistics(
            connected=self._connected,
            stale=bool(since) or (self._bridge is not None and not self._connected),
            stale_since=min(since, default=None),
            reconnects=self._reconnects,
            topics=topics,
        )

    def is_stale(self, topic: str, /) -> bool:
        """True while ``topic`` is stale here (see :meth:`statistics`)."""
        state = self._states.get(topic)
        return state is not None and state.stale_since is not None

    async def wait_stale(self, stale: bool = True) -> None:
        """Wait until ``statistics().stale`` is ``stale`` (for health checks, tests)."""
        while self.statistics().stale is not stale:
            await self._state_lot.park()
        await trio.lowlevel.checkpoint()

    def _options(self) -> dict[str, Any]:
        """``nats.connect``'s keyword arguments: ours, the user's, callbacks chained."""
        options = dict(self.connect_options)
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", self.reconnect_min)
        theirs: dict[str, Callable[..., Awaitable[None]] | None] = {
            name: options.pop(name, None)
            for name in ("disconnected_cb", "reconnected_cb", "closed_cb", "error_cb")
        }

        def chain(name: str, ours: Callable[..., Awaitable[None]]) -> None:
            user = theirs[name]

            async def callback(*args: Any) -> None:
                await ours(*args)
                if user is not None:
                    await user(*args)

            options[name] = callback

        chain("disconnected_cb", self._disconnected)
        chain("reconnected_cb", self._reconnected)
        chain("closed_cb", self._closed)
        chain("error_cb", self._error)
        return options

    # On the asyncio loop: nats-py's callbacks.

    async def _disconnected(self) -> None:
        if self._closing or self._bridge is None:
            return
        self._failed_attempts = 0
        if self._nc is not None:
            self._nc.options["reconnect_time_wait"] = self.reconnect_min
        logger.warning("lost the NATS connection: topics are stale until it is back")
        self._bridge.to_trio(self._on_disconnected, time.time())

    async def _error(self, exc: Exception) -> None:
        nc = self._nc
        if nc is not None and nc.is_reconnecting:
            # A failed attempt: wait twice as long before the next, up to the cap.
            self._failed_attempts += 1
            wait = self.reconnect_min * 2 ** min(self._failed_attempts - 1, 30)
            nc.options["reconnect_time_wait"] = min(wait, self.reconnect_max)
        logger.debug("NATS: %r", exc)

    async def _reconnected(self) -> None:
        if self._closing or self._bridge is None:
            return
        logger.warning("NATS connection back: catching up")
        self._bridge.to_trio(self._on_reconnected)
        if self._resuming is not None:
            self._resuming.cancel()
        self._resuming = asyncio.create_task(self._resume_all())

    async def _closed(self) -> None:
        if self._closing or self._bridge is None:
            return
        logger.error("the NATS connection closed for good: topics stay stale")
        self._bridge.to_trio(self._on_disconnected, time.time())

    async def _resume_all(self) -> None:
        """Start every topic's consumer again after the last sequence taken in."""
        for consumer in list(self._consumers.values()):
            await self._resume(consumer)

    async def _resume(self, consumer: _Consumer) -> None:
        bridge, _ = self._running()
        await consumer.stop()
        wait = self.reconnect_min
        while True:
            try:
                start = consumer.last + 1 if consumer.last else consumer.start
                last, sub = await self._open(consumer.topic, start, consumer.on_message)
                break
            except Exception as exc:  # JetStream may still be starting up
                logger.warning("topic %r: cannot resume yet: %r", consumer.topic, exc)
                await asyncio.sleep(wait)
                wait = min(2 * wait, self.reconnect_max)
        if self._consumers.get(consumer.topic) is not consumer:  # stopped meanwhile
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return
        consumer.sub = sub
        bridge.to_trio(self._on_resumed, consumer.topic, last)

    # In trio: the state as the statistics show it.

    def _on_disconnected(self, now: float) -> None:
        self._connected = False
        for state in self._states.values():
            if state.stale_since is None:
                state.stale_since = now
            state.target = None
        self._state_lot.unpark_all()

    def _on_reconnected(self) -> None:
        self._connected = True
        self._reconnects += 1
        self._state_lot.unpark_all()

    def _on_resumed(self, topic: str, last: int) -> None:
        state = self._states[topic]
        if state.stale_since is None:
            return
        state.target = last
        if state.expected > last:
            self._fresh(state)

    def _fresh(self, state: _TopicState) -> None:
        if not self._connected:
            return
        state.stale_since = state.target = None
        self._state_lot.unpark_all()

    def _running(self) -> tuple[_Bridge, JetStreamContext]:
        if self._bridge is None or self._js is None:
            raise RuntimeError("the JetStream backbone is not running (backbone.running())")
        return self._bridge, self._js

    async def _ensure_stream(self, topic: str) -> Any:
        """On the asyncio loop: the stream's info, creating the stream if allowed."""
        import nats.js.errors

        _, js = self._running()
        try:
            return await js.stream_info(self.stream(topic))
        except nats.js.errors.NotFoundError:
            if not self.create_streams:
                raise
        await js.add_stream(name=self.stream(topic), subjects=[self.subject(topic)])
        return await js.stream_info(self.stream(topic))

    # -- consuming: JetStream -> the topic ----------------------------------------------

    async def _consume(
        self, topic: Topic[Any], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        bridge, _ = self._running()
        core = topic.core
        # Batches of at least one message each, and at most ``window`` messages in
        # all: ``window`` batches always fit.
        send, receive = trio.open_memory_channel[list[_Item]](self.window)

        def push(batch: list[_Item]) -> None:  # in trio, from the asyncio thread
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
            ):
                send.send_nowait(batch)

        caught_up, consumer = await bridge.call(self._subscribe(topic.name, core.head, push))
        state = self._states[topic.name]
        state.expected = consumer.start
        started = core.head >= caught_up
        if started:
            task_status.started()
        try:
            async with receive:
                async for batch in receive:
                    bridge.loop.call_soon_threadsafe(consumer.release, len(batch))
                    for seq, payload in batch:
                        if seq > core.head:  # else: this edge has it already
                            if core._pressure and core.backpressure:
                                await topic._wait_drained()
                            if seq > state.expected:
                                self._gap(topic, state, state.expected, seq - 1)
                            self._ingest(topic, seq, payload)
                        if seq >= state.expected:
                            state.expected = seq + 1
                            target = state.target
                            if target is not None and seq >= target:
                                self._fresh(state)
                        if not started and seq >= caught_up:
                            started = True
                            task_status.started()
        finally:
            send.close()
            bridge.loop.call_soon_threadsafe(self._stop_consumer, topic.name)

    async def _subscribe(
        self, topic: str, head: int, push: Callable[[list[_Item]], None]
    ) -> tuple[int, _Consumer]:
        """On the asyncio loop: start the ordered consumer of ``topic`` after ``head``
        (or ``history`` frames before the end); return the stream's last sequence now."""
        info = await self._ensure_stream(topic)
        last: int = info.state.last_seq
        bridge, _ = self._running()
        consumer = _Consumer(topic, push, self.window, bridge)
        consumer.start = head + 1 if head else max(info.state.first_seq, last - self.history + 1, 1)
        _, consumer.sub = await self._open(topic, consumer.start, consumer.on_message)
        self._consumers[topic] = consumer
        return last, consumer

    async def _open(
        self, topic: str, start: int, on_message: Callable[[Any], Awaitable[None]]
    ) -> tuple[int, Any]:
        """On the asyncio loop: an ordered consumer of ``topic`` from ``start`` that calls
        ``on_message`` for each message, and the stream's last sequence just before
        it was made."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        _, js = self._running()
        info = await self._ensure_stream(topic)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await js.subscribe(
            self.subject(topic),
            stream=self.stream(topic),
            ordered_consumer=True,
            config=config,
            cb=on_message,
        )
        return int(info.state.last_seq), sub

    def _stop_consumer(self, topic: str) -> None:
        """On the asyncio loop: stop ``topic``'s consumer for good."""
        consumer = self._consumers.pop(topic, None)
        if consumer is not None:
            task = asyncio.create_task(consumer.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _entry(self, topic: Topic[Any], seq: int, payload: bytes) -> Entry | None:
        """The frame of stream message ``seq``, numbered, as every edge encodes it."""
        core = topic.core
        try:
            frame = decode_frame(payload)
            if frame.type != core.frame_type:
                raise ValueError(f"frame type 0x{frame.type:02x}, not 0x{core.frame_type:02x}")
            value = core.codec.decode(frame.body)
            data = core._stamp(value, seq, getattr(value, "send_time_ns", 0))
        except Exception as exc:
            logger.warning("topic %r: message %d is not a valid frame: %s", topic.name, seq, exc)
            return None
        return Entry(seq, core._key(value), data, core.urgency)

    def _gap(self, topic: Topic[Any], state: _TopicState, first: int, last: int) -> None:
        """Stream messages ``first..last`` were gone before this edge could read them."""
        state.gaps += 1
        state.missing += last - first + 1
        logger.warning(
            "topic %r: JetStream no longer holds %d..%d: reported to subscribers as a gap",
            topic.name,
            first,
            last,
        )
        topic.core.mark_gap(first, last)

    def _ingest(self, topic: Topic[Any], seq: int, payload: bytes) -> None:
        entry = self._entry(topic, seq, payload)
        if entry is None:
            return
        topic.core.ingest(seq, entry.data, entry.key, topic.clock())
        if topic._idle:
            topic._wake_idle()
        arrivals = self._arrivals[topic.name]
        if arrivals:
            arrivals.unpark_all()

    async def wait_for(self, topic: Topic[Any], seq: int) -> None:
        """Wait until this edge has taken in ``topic``'s frame ``seq`` (or a later one).

        ``Topic.publish`` returns once JetStream acknowledged the frame; this waits
        for it to come back through this process's consumer.
        """
        arrivals = self._arrivals[topic.name]
        while topic.head < seq:
            await arrivals.park()
        await trio.lowlevel.checkpoint()

    # -- publishing: the topic -> JetStream ---------------------------------------------

    async def publish(self, topic: Topic[Any], values: Sequence[Any], /) -> int:
        """Encode ``values`` and publish them to ``topic``'s stream in order, waiting for
        the acknowledgements; return the stream sequence of the last (``topic.head``
        when ``values`` is empty).

        Cancellation:
            The chunks acknowledged before the cancellation are published; the one in
            flight may or may not be (JetStream may have stored some of its frames).
        """
        bridge, _ = self._running()
        core = topic.core
        frames: list[bytes] = []
        for value in values:
            try:
                frames.append(core._stamp(value, 0, topic.clock()))
            except LocalProtocolError:
                raise
            except Exception as exc:
                raise LocalProtocolError(
                    f"topic {topic.name!r}: cannot encode {type(value).__name__}: {exc}",
                    code=ErrorCode.MALFORMED_BODY,
                    frame_type=core.frame_type,
                    operation="publish",
                ) from None
        seq = core.head
        step = self.in_flight
        for i in range(0, len(frames), step):
            chunk = frames[i : i + step]
            taken = 0
            try:
                async with self._window_lock:  # all or nothing: no two half-taken windows
                    for _ in chunk:
                        await self._unacked.acquire()
                        taken += 1
                seq = await bridge.call(self._publish(topic.name, chunk))
            finally:
                for _ in range(taken):
                    self._unacked.release()
        return seq

    async def _publish(self, topic: str, frames: list[bytes]) -> int:
        """On the asyncio loop: publish in order, wait for every acknowledgement."""
        _, js = self._running()
        subject = self.subject(topic)
        if len(frames) == 1:
            return (await js.publish(subject, frames[0])).seq
        futures = [await js.publish_async(subject, frame) for frame in frames]
        acks = await asyncio.gather(*futures)
        return int(acks[-1].seq)

    # -- replay older than the cache ------------------------------------------------------

    def wants(self, topic: Topic[Any], sub: ServerSubscription, /) -> bool:
        """True when ``sub``'s request is a replay older than ``topic``'s cache."""
        request = sub.request
        return isinstance(request, ReplayRequest) and request.from_seq < topic.core.log.first_seq

    async def answer(self, topic: Topic[Any], sub: ServerSubscription, /) -> None:
        """Answer ``sub``'s replay request (see :meth:`wants`) from JetStream, up to the
        cache; the rest is answered from the cache as usual."""
        request = sub.request
        if not isinstance(request, ReplayRequest):
            return
        bridge, _ = self._running()
        from_seq = request.from_seq
        last = min(request.to_seq, topic.core.log.first_seq - 1, from_seq + request.limit - 1)
        try:
            if not self._connected:
                raise ConnectionError("not connected to NATS")
            items = await bridge.call(self._fetch(topic.name, from_seq, last))
        except HistoryGap as gap:
            sub.history_gap(gap)
            return
        except Exception as exc:  # NATS is out of reach: this subscriber only fails
            sub.close(
                Unavailable(
                    f"topic {topic.name!r}: frames {from_seq}..{last} are older than this "
                    f"server's cache and JetStream cannot be reached now ({exc})",
                    details={"topic": topic.name, "from_seq": from_seq},
                    operation="replay",
                )
            )
            return
        entries = [e for e in (self._entry(topic, s, p) for s, p in items) if e is not None]
        if not entries:
            sub.history_gap(HistoryGap(topic.name, from_seq, last, operation="replay"))
            return
        sub.replay_ready(entries)

    async def _fetch(self, topic: str, from_seq: int, last: int) -> list[_Item]:
        """On the asyncio loop: stream messages ``from_seq..last``.

        Raises:
            HistoryGap: the stream no longer holds ``from_seq``.
        """
        from nats.js.api import ConsumerConfig, DeliverPolicy

        _, js = self._running()
        info = await js.stream_info(self.stream(topic))
        first: int = info.state.first_seq
        if from_seq < first:
            raise HistoryGap(topic, from_seq, min(first - 1, last), operation="replay")
        last = min(last, info.state.last_seq)
        items: list[_Item] = []
        if last < from_seq:
            return items
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
        )
        sub = await js.subscribe(
            self.subject(topic), stream=self.stream(topic), ordered_consumer=True, config=config
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=self.fetch_timeout)
                seq = msg.metadata.sequence.stream
                if seq > last:
                    break
                items.append((seq, msg.data))
                if seq == last:
                    break
        finally:
            await sub.unsubscribe()
        return items
