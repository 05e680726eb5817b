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
- asyncio -> trio (consumed messages): the asyncio task takes a slot of an
  ``asyncio.Semaphore(window)`` per message before handing it to trio with
  ``TrioToken.run_sync_soon`` into a trio memory channel of the same capacity; the
  trio consumer gives the slot back when it takes the message.  So at most
  ``window`` messages sit in the bridge: when the trio side stops (a BLOCK
  subscriber is full, the edge is busy) the asyncio side stops reading its
  subscription, and JetStream's flow control of the ordered consumer stops the
  server.

The cost: two thread hops per publish batch and one ``run_sync_soon`` per consumed
message, and a second event loop per backbone.  See ``docs/scale-out.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .pubsub import DEFAULT_HISTORY, Entry, HistoryGap, InMemoryLog, ReplayRequest
from .wire import decode_frame
from .wire._errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ._topic import Topic
    from .pubsub import ServerSubscription

__all__ = ["DEFAULT_IN_FLIGHT", "DEFAULT_WINDOW", "JetStreamBackbone"]

logger = logging.getLogger("quicframe.nats")

R = TypeVar("R")

DEFAULT_IN_FLIGHT: Final = 256
"""Frames one backbone may have published to JetStream and not yet had acknowledged."""

DEFAULT_WINDOW: Final = 1024
"""Consumed messages one topic may have in the asyncio -> trio bridge."""

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

    def to_trio(self, fn: Callable[[_Item], None], item: _Item) -> None:
        """From the asyncio thread: run ``fn(item)`` in trio, soon."""
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn, item)

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
    """The asyncio half of one topic's ordered consumer."""

    def __init__(self, task: asyncio.Task[None], slots: asyncio.Semaphore) -> None:
        self.task = task
        self.slots = slots


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
        connect_options: more keyword arguments for ``nats.connect``.

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
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if in_flight < 1 or window < 1:
            raise ValueError("in_flight and window must be at least 1")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.history = history
        self.subject_prefix = subject_prefix
        self.stream_prefix = stream_prefix
        self.create_streams = create_streams
        self.in_flight = in_flight
        self.window = window
        self.fetch_timeout = fetch_timeout
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
        try:
            self._nc = await bridge.call(nats.connect(self.servers, **self.connect_options))
            self._js = self._nc.jetstream()
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
            with trio.CancelScope(shield=True):
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await bridge.call(self._nc.close())
                await bridge.stop()
            self._bridge = self._nc = self._js = None

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
        send, receive = trio.open_memory_channel[_Item](self.window)

        def push(item: _Item) -> None:  # in trio, from the asyncio thread
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                send.send_nowait(item)

        caught_up, consumer = await bridge.call(self._subscribe(topic.name, core.head, push))
        started = core.head >= caught_up
        if started:
            task_status.started()
        try:
            async with receive:
                async for seq, payload in receive:
                    bridge.loop.call_soon_threadsafe(consumer.slots.release)
                    if seq > core.head:
                        if core._pressure and core.backpressure:
                            await topic._wait_drained()
                        self._ingest(topic, seq, payload)
                    if not started and seq >= caught_up:
                        started = True
                        task_status.started()
        finally:
            send.close()
            bridge.loop.call_soon_threadsafe(consumer.task.cancel)

    async def _subscribe(
        self, topic: str, head: int, push: Callable[[_Item], None]
    ) -> tuple[int, _Consumer]:
        """On the asyncio loop: start the ordered consumer of ``topic`` after ``head``
        (or ``history`` frames before the end); return the stream's last sequence now."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        bridge, js = self._running()
        info = await self._ensure_stream(topic)
        last: int = info.state.last_seq
        start = head + 1 if head else max(info.state.first_seq, last - self.history + 1, 1)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await js.subscribe(
            self.subject(topic), stream=self.stream(topic), ordered_consumer=True, config=config
        )
        slots = asyncio.Semaphore(self.window)

        async def pump() -> None:
            try:
                while True:
                    msg = await sub.next_msg(timeout=None)
                    await slots.acquire()
                    bridge.to_trio(push, (msg.metadata.sequence.stream, msg.data))
            except Exception as exc:  # the connection closed for good
                logger.warning("topic %r: the JetStream consumer stopped: %r", topic, exc)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        return last, _Consumer(asyncio.create_task(pump()), slots)

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
            items = await bridge.call(self._fetch(topic.name, from_seq, last))
        except HistoryGap as gap:
            sub.history_gap(gap)
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
