"""The server side of one subscription, as a sans-IO state machine.

A subscription stream starts with SUBSCRIBE.  :class:`ServerSubscription` then:

1. **subscribes first**: attaches a queue to the topic at once, so every frame
   published from that instant on is captured (under the queue's policy);
2. **recovers**: asks for a snapshot (latest value per key) or for a replay of the
   history from the client's ``from_seq``, by exposing a :attr:`request` that the
   driver answers from the backbone (synchronously, or by awaiting a remote fetch);
3. **applies the later updates**: only then sends the queued live frames, skipping
   any whose sequence number the snapshot or replay already covered.

Between 1 and 3 nothing is missed and nothing is sent twice, however long step 2
takes.  Output is a list of ``bytes`` objects: the control frames, and the very
same encoded frames the topic published (shared with every other subscriber).

Datagram mode differs only in where live frames go: :meth:`datagrams_to_send`
gives them with the subscription's channel in the header's opcode field, and the
stream carries the control frames and the snapshot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from ..session import encode_error
from ..wire import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameType
from ..wire._errors import ErrorCode, RemoteError, RemoteProtocolError
from ..wire._frame import Frame
from ._backbone import Entry, Snapshot, TopicLog
from ._datagram import encode_datagram
from ._errors import HistoryGap
from ._messages import (
    MODE_DATAGRAM,
    ON_GAP_ERROR,
    PHASE_BEGIN,
    PHASE_END,
    Gap,
    SnapshotMarker,
    Subscribe,
    Subscribed,
    Unsubscribe,
    decode_control,
    encode_control,
)
from ._queue import Policy, SubscriberQueue
from ._topic import TopicCore

__all__ = [
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_REPLAY_CHUNK",
    "ReplayRequest",
    "ServerSubscription",
    "SnapshotRequest",
    "read_subscribe",
]


DEFAULT_REPLAY_CHUNK: Final = 1024
DEFAULT_MAX_QUEUE_SIZE: Final = 65_536


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The subscription needs history entries ``from_seq..to_seq`` (at most ``limit``
    per answer): answer with ``TopicLog.read(from_seq, limit)`` ->
    :meth:`ServerSubscription.replay_ready`, or a ``HistoryGap`` ->
    :meth:`ServerSubscription.history_gap`."""

    from_seq: int
    to_seq: int
    limit: int


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """The subscription needs the topic's snapshot: answer with
    ``TopicLog.snapshot()`` -> :meth:`ServerSubscription.snapshot_ready`."""


def read_subscribe(frame: Frame) -> Subscribe:
    """The SUBSCRIBE a subscription stream must start with.

    Raises:
        RemoteProtocolError: UNEXPECTED_FRAME for another frame type, MALFORMED_BODY.
    """
    if frame.type != FrameType.SUBSCRIBE:
        raise RemoteProtocolError(
            f"a subscription stream must start with SUBSCRIBE, not 0x{frame.type:02x}",
            code=ErrorCode.UNEXPECTED_FRAME,
            frame_type=frame.type,
            operation="subscribe",
        )
    body = decode_control(frame.type, frame.body)
    assert isinstance(body, Subscribe)
    return body


class ServerSubscription:
    """One subscription on the server: SUBSCRIBE in, frames out.

    Args:
        topic: the topic subscribed to (the router found it by ``request.topic``).
        request: the client's SUBSCRIBE.
        max_queue_size: the largest queue capacity a client may ask for.
        replay_chunk: history entries asked for per :class:`ReplayRequest`.

    Drive it like this (the trio layer does, with awaits where marked)::

        sub = ServerSubscription(topic, read_subscribe(first_frame))
        while not sub.done:
            if sub.request is not None:
                sub.fulfil(topic.log)          # or: await an async backbone, then feed
            chunks = sub.data_to_send(now_ns)
            if chunks: await stream.send_all(b"".join(chunks))
            else: await <queue activity or client bytes>   # sub.receive_data(...)
        # then finish the stream (FIN)
    """

    def __init__(
        self,
        topic: TopicCore[Any],
        request: Subscribe,
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        replay_chunk: int = DEFAULT_REPLAY_CHUNK,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        request.check()
        if request.topic != topic.name:
            raise ValueError(f"SUBSCRIBE names {request.topic!r}, not {topic.name!r}")
        self.topic = topic
        self.request_body = request
        self.datagram = request.mode == MODE_DATAGRAM
        self.channel = request.channel if self.datagram else 0
        policy = Policy(request.policy) if request.policy is not None else topic.policy
        if self.datagram and policy is not Policy.DROP_OLDEST:
            policy = Policy.CONFLATE  # datagrams lose frames anyway: latest value only
        capacity = min(request.queue_size or topic.queue_size, max_queue_size)
        self._replay_chunk = replay_chunk
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        # 1. Subscribe first: from here on every published frame is captured.
        self.queue: SubscriberQueue = topic.attach(policy=policy, capacity=capacity)
        head = topic.head
        self.head_at_start = head
        self._out: deque[bytes] = deque()
        self._out.append(
            encode_control(
                Subscribed(
                    topic=topic.name,
                    frame_type=topic.frame_type,
                    head=head,
                    first_seq=topic.log.first_seq,
                    mode=request.mode,
                    policy=str(policy),
                    queue_size=self.queue.capacity,
                    channel=self.channel,
                )
            )
        )
        # Live frames numbered at or below the watermark are covered by the
        # snapshot or the replay and are skipped.
        self._watermark = head
        # The lowest number the client still wants (it has everything below).
        self._wanted_from = 1 if request.from_seq is None else request.from_seq
        self.request: ReplayRequest | SnapshotRequest | None = None
        self.error: RemoteError | None = None
        self.finished = False
        self.gap: HistoryGap | None = None
        # 2. Recover.
        from_seq = request.from_seq
        if from_seq is None:
            if request.snapshot:
                self.request = SnapshotRequest()
        elif from_seq <= head:
            self.request = ReplayRequest(from_seq, head, replay_chunk)
        else:
            # Resuming from the head or beyond it (another server numbered further):
            # the live frames below from_seq are ones the client has.
            self._watermark = from_seq - 1

    # -- answering requests ----------------------------------------------------------

    def replay_ready(self, entries: list[Entry]) -> None:
        """Feed the answer to a :class:`ReplayRequest`."""
        request = self.request
        if not isinstance(request, ReplayRequest) or self.finished:
            return
        out = self._out
        last = request.from_seq - 1
        for entry in entries:
            if entry.seq > request.to_seq:
                break
            out.append(entry.data)
            last = entry.seq
        # Should the history run out before the next chunk, the snapshot that then
        # follows must not repeat what the client has by now.
        self._wanted_from = max(self._wanted_from, last + 1)
        if last >= request.to_seq or not entries:
            self.request = None
            self._watermark = max(self._watermark, request.to_seq)
        else:
            self.request = ReplayRequest(last + 1, request.to_seq, request.limit)

    def history_gap(self, gap: HistoryGap) -> None:
        """Feed a :class:`HistoryGap` raised while answering a :class:`ReplayRequest`."""
        if self.finished:
            return
        self.gap = gap
        if self.request_body.on_gap == ON_GAP_ERROR:
            self.request = None
            self._fail(gap)
            return
        self._out.append(
            encode_control(Gap(gap.first_missing, gap.last_missing, "not in the history"))
        )
        self.request = SnapshotRequest()

    def snapshot_ready(self, snapshot: Snapshot) -> None:
        """Feed the answer to a :class:`SnapshotRequest`."""
        if not isinstance(self.request, SnapshotRequest) or self.finished:
            return
        wanted = self._wanted_from
        entries = [e for e in snapshot.entries if e.seq >= wanted]
        out = self._out
        out.append(encode_control(SnapshotMarker(PHASE_BEGIN, snapshot.seq, len(entries))))
        out.extend(e.data for e in entries)
        out.append(encode_control(SnapshotMarker(PHASE_END, snapshot.seq, len(entries))))
        self._wanted_from = max(wanted, snapshot.seq + 1)
        if snapshot.seq < self._watermark:
            # An older snapshot than the live frames we hold start from: the frames
            # in between come from the history.
            self.request = ReplayRequest(snapshot.seq + 1, self._watermark, self._replay_chunk)
        else:
            self.request = None
            self._watermark = snapshot.seq

    def fulfil(self, log: TopicLog | None = None) -> None:
        """Answer the current :attr:`request` synchronously from ``log`` (default:
        the topic's own log).  One step: call again while :attr:`request` is set."""
        request = self.request
        log = self.topic.log if log is None else log
        if isinstance(request, SnapshotRequest):
            self.snapshot_ready(log.snapshot())
        elif isinstance(request, ReplayRequest):
            try:
                entries = log.read(request.from_seq, request.limit)
            except HistoryGap as gap:
                self.history_gap(gap)
            else:
                self.replay_ready(entries)

    # -- output ------------------------------------------------------------------------

    def data_to_send(self, now_ns: int, max_frames: int = 256) -> list[bytes]:
        """Frames to write on the subscription stream now, in order (possibly none).

        Control and recovery frames come first; live frames follow only once the
        recovery is complete (until then the queue keeps them, under its policy).
        """
        out = self._out
        if self.error is None and self.queue.error is not None and not self.finished:
            self._fail(self.queue.error)
        if out:
            if len(out) <= max_frames:
                chunks = list(out)
                out.clear()
                return chunks
            return [out.popleft() for _ in range(max_frames)]
        if self.request is not None or self.finished:
            return []
        if self.queue.gap is not None:
            return self._to_gap(now_ns, max_frames)
        if self.datagram:
            return []
        return self.queue.pop_data(now_ns, max_frames, self._watermark)

    def _to_gap(self, now_ns: int, max_frames: int) -> list[bytes]:
        """Live frames up to the gap a remote backbone reported (``queue.gap``), then
        the gap itself, as a replay gap is reported: GAP and a snapshot, or
        SEQUENCE_GAP with ``on_gap="error"``.  Datagram mode reports it at once."""
        queue = self.queue
        gap = queue.gap
        assert gap is not None
        first = gap.first_missing
        watermark = self._watermark
        entries = [] if self.datagram else queue.pop_many(now_ns, max_frames)
        if entries and entries[-1].seq < first:
            return [e.data for e in entries if e.seq > watermark]  # not reached yet
        if not entries and not self.datagram:
            return []
        queue.gap = None
        if gap.last_missing <= watermark:  # the client resumed beyond those numbers
            return [e.data for e in entries if e.seq > watermark]
        # Frames after the gap, popped here, are in the log: the snapshot covers them.
        self._out.extend(e.data for e in entries if watermark < e.seq < first)
        self._wanted_from = max(self._wanted_from, first)
        self.gap = gap
        if self.request_body.on_gap == ON_GAP_ERROR:
            self._fail(gap)
        else:
            self._out.append(
                encode_control(Gap(first, gap.last_missing, "lost before this server read it"))
            )
            self.request = SnapshotRequest()
        return self.data_to_send(now_ns, max_frames)

    def datagrams_to_send(self, now_ns: int, max_datagrams: int = 64) -> list[bytes]:
        """Datagram mode: live frames to send as QUIC DATAGRAMs, one frame each, with
        this subscription's channel in the opcode field."""
        if not self.datagram or self.request is not None or self.finished or self._out:
            return []
        watermark = self._watermark
        channel = self.channel
        return [
            encode_datagram(e.data, channel)
            for e in self.queue.pop_many(now_ns, max_datagrams)
            if e.seq > watermark
        ]

    @property
    def live(self) -> bool:
        """True once the recovery is complete and live frames flow."""
        return self.request is None and not self.finished

    @property
    def done(self) -> bool:
        """True when the subscription ended and its last frames were taken: finish
        the stream (FIN) now."""
        return self.finished and not self._out

    # -- input and ending ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes the client sent after SUBSCRIBE (UNSUBSCRIBE is the only frame
        allowed).

        Raises:
            RemoteProtocolError: UNEXPECTED_FRAME or a malformed frame (reset the
                stream with the code; :meth:`close` the subscription).
        """
        self._decoder.feed(data)
        while (frame := self._decoder.next_frame()) is not None:
            if frame.type != FrameType.UNSUBSCRIBE:
                raise RemoteProtocolError(
                    f"frame type 0x{frame.type:02x} is not allowed after SUBSCRIBE",
                    code=ErrorCode.UNEXPECTED_FRAME,
                    frame_type=frame.type,
                    operation="subscribe",
                )
            body = decode_control(frame.type, frame.body)
            assert isinstance(body, Unsubscribe)
            self.close()
            self._out.clear()  # nothing more: the client asked to stop

    def receive_eof(self) -> None:
        """The client finished its side: that is allowed and changes nothing.

        Raises:
            RemoteProtocolError: it ended inside a frame.
        """
        self._decoder.feed_eof()

    def close(self, error: RemoteError | None = None) -> None:
        """End the subscription: detach from the topic; with ``error``, an ERROR frame
        is the last thing sent (e.g. GOING_AWAY)."""
        if error is not None:
            self._fail(error)
            return
        if not self.finished:
            self.finished = True
            self.request = None
            self.topic.detach(self.queue)

    def _fail(self, error: RemoteError) -> None:
        if self.finished:
            return
        self.error = error
        self._out.append(encode_error(0, error.code, error.message, error.details))
        self.close()
