"""The client side of a subscription, sans-IO: sequence tracking, latency, and the
subscription stream's state machine.

:class:`SequenceTracker` is the rule that keeps what the application sees strictly
increasing: a frame numbered at or below the last one delivered is dropped (a
duplicate, or a datagram that came late), and a jump forward is recorded as a gap
(a range of numbers).  :class:`LatencyStats` keeps send-to-receive latencies in a
fixed window.  :class:`ClientSubscription` ties them to the protocol: it writes
SUBSCRIBE (resuming from the last delivered number after a reconnect), and turns
the bytes of the subscription stream, and the datagrams of its channel, into
decoded values.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final, Generic, TypeVar

from ..session import error_from_frame
from ..wire import (
    DEFAULT_MAX_FRAME_SIZE,
    FixedLayoutCodec,
    Frame,
    FrameDecoder,
    FrameType,
    default_registry,
)
from ..wire._errors import ErrorCode, LocalProtocolError, RemoteError, RemoteProtocolError
from ..wire._registry import FrameRegistry
from ._datagram import decode_datagram
from ._errors import HistoryGap
from ._messages import (
    MODE_DATAGRAM,
    MODE_STREAM,
    ON_GAP_SNAPSHOT,
    PHASE_BEGIN,
    Gap,
    SnapshotMarker,
    Subscribe,
    Subscribed,
    Unsubscribe,
    decode_control,
    encode_control,
)

__all__ = ["ClientSubscription", "LatencyStats", "SequenceTracker"]

T = TypeVar("T")

DEFAULT_LATENCY_WINDOW: Final = 8192
SAMPLES_PER_RUN: Final = 64
DEFAULT_GAPS_KEPT: Final = 64
DEFAULT_DATAGRAM_BUFFER: Final = 4096

_sub: Final = operator.sub
_first: Final[Callable[[Any], int]] = operator.itemgetter(0)
_CONTROL_TYPES: Final = frozenset(
    (FrameType.SUBSCRIBED, FrameType.SNAPSHOT, FrameType.GAP, FrameType.ERROR)
)


class SequenceTracker:
    """Detects gaps and duplicates in a sequence of frame numbers.

    Args:
        last_seq: the last number already delivered (None: the first number accepted
            sets the baseline without counting a gap).
        gaps_kept: how many recent gap ranges :attr:`gaps` keeps (counts are exact).

    Attributes:
        last_seq: the last number delivered; resume from ``last_seq + 1``.
        delivered: numbers accepted.
        duplicates: numbers dropped because they were at or below ``last_seq``.
        gap_count: gaps seen (ranges).
        missing: numbers skipped in all (the sum of the gap lengths).
        gaps: the most recent gap ranges ``(first_missing, last_missing)``.
    """

    __slots__ = ("delivered", "duplicates", "gap_count", "gaps", "last_seq", "missing")

    def __init__(self, last_seq: int | None = None, *, gaps_kept: int = DEFAULT_GAPS_KEPT) -> None:
        self.last_seq = last_seq
        self.delivered = 0
        self.duplicates = 0
        self.gap_count = 0
        self.missing = 0
        self.gaps: deque[tuple[int, int]] = deque(maxlen=gaps_kept)

    @property
    def next_seq(self) -> int | None:
        """The number expected next (None before the baseline is known)."""
        return None if self.last_seq is None else self.last_seq + 1

    def note_gap(self, first_missing: int, last_missing: int) -> None:
        """Record a gap the peer announced: those numbers will not be replayed.

        ``last_seq`` does not move: the snapshot that follows a GAP may still carry
        the latest value of a key that was last updated inside the range.
        """
        if last_missing < first_missing:
            return
        self.gap_count += 1
        self.missing += last_missing - first_missing + 1
        self.gaps.append((first_missing, last_missing))

    def accept(self, seq: int) -> bool:
        """True to deliver the frame numbered ``seq``; False to drop it (duplicate).

        A number beyond ``last_seq + 1`` is delivered and the skipped range recorded.
        """
        last = self.last_seq
        if last is not None:
            if seq <= last:
                self.duplicates += 1
                return False
            if seq != last + 1:
                self.gap_count += 1
                self.missing += seq - last - 1
                self.gaps.append((last + 1, seq - 1))
        self.last_seq = seq
        self.delivered += 1
        return True

    def accept_quiet(self, seq: int) -> bool:
        """As :meth:`accept`, but a jump is not a gap (snapshot frames: the numbers
        in between were superseded)."""
        last = self.last_seq
        if last is not None and seq <= last:
            self.duplicates += 1
            return False
        self.last_seq = seq
        self.delivered += 1
        return True

    def skip_to(self, seq: int) -> None:
        """Everything up to ``seq`` is accounted for (a snapshot consistent at ``seq``
        ended): the next number expected is ``seq + 1``, and no gap is counted."""
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq

    def accept_run(self, values: list[T], seq_of: Callable[[T], int] = _first) -> list[T]:
        """Filter a run of decoded values in order; ``seq_of(value)`` is the number
        (default: ``value[0]``, the ``seq`` field of the shipped market frames).

        The common case, a run that continues exactly where the last one ended, is
        checked with C-level comparisons and returns ``values`` itself.
        """
        n = len(values)
        if not n:
            return values
        last = self.last_seq
        if last is not None and seq_of(values[0]) == last + 1:
            end = last + n
            if seq_of(values[-1]) == end and (
                n < 3 or list(map(seq_of, values)) == list(range(last + 1, end + 1))
            ):
                self.last_seq = end
                self.delivered += n
                return values
        accept = self.accept
        return [v for v in values if accept(seq_of(v))]


class LatencyStats:
    """Send-to-receive latencies (``receive_ns - send_time_ns``) over a fixed window.

    Memory is bounded by ``window`` samples; :meth:`percentile` sorts a copy of the
    window, so call it for reports, not per frame.  ``count`` is the number of
    samples recorded (long runs of frames are sampled, see :meth:`record_values`).
    """

    __slots__ = ("_samples", "count")

    def __init__(self, window: int = DEFAULT_LATENCY_WINDOW) -> None:
        self._samples: deque[int] = deque(maxlen=window)
        self.count = 0

    def record(self, latency_ns: int) -> None:
        self._samples.append(latency_ns)
        self.count += 1

    def record_run(self, receive_ns: int, send_times: Iterable[int], n: int) -> None:
        """Record ``n`` frames received at ``receive_ns`` with these send times."""
        self._samples.extend(map(_sub, repeat(receive_ns, n), send_times))
        self.count += n

    def record_values(
        self, receive_ns: int, values: list[Any], send_time_of: Callable[[Any], int]
    ) -> None:
        """Record a run of values received together at ``receive_ns``.

        A long run is sampled evenly, at most :data:`SAMPLES_PER_RUN` values: the
        frames of one chunk share their receive time, and the percentiles do not
        need every one of them (this keeps the cost per frame small).
        """
        n = len(values)
        if n > SAMPLES_PER_RUN:
            values = values[:: n // SAMPLES_PER_RUN + 1]
            n = len(values)
        self._samples.extend(map(_sub, repeat(receive_ns, n), map(send_time_of, values)))
        self.count += n

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, p: float) -> int | None:
        """The ``p``-th percentile (0-100, nearest rank) of the window, or None if empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[rank]

    @property
    def p50(self) -> int | None:
        return self.percentile(50)

    @property
    def p99(self) -> int | None:
        return self.percentile(99)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """What a subscription has seen so far."""

    delivered: int
    duplicates: int
    gap_count: int
    missing: int
    snapshots: int
    latency_p50_ns: int | None
    latency_p99_ns: int | None


class ClientSubscription(Generic[T]):
    """The client side of one subscription (stream or datagram mode).

    Args:
        topic: the topic name.
        from_seq: resume from this number (None: start now).
        mode: ``"stream"`` or ``"datagram"``.
        policy: slow-consumer policy to ask for (None: the topic's default).
        snapshot: when starting now, begin with the latest value per key.
        on_gap: what the server does when the history lacks ``from_seq``:
            ``"snapshot"`` (GAP, then a snapshot) or ``"error"``
            (:class:`HistoryGap` in :attr:`error`).
        channel: datagram mode: this subscription's channel (1-65535).
        queue_size: queue capacity to ask for (0: the topic's default).
        registry: where the topic's frame type is looked up.

    Use: send :meth:`subscribe_frame` on a new stream; feed what the stream brings
    to :meth:`receive_data` and DATAGRAMs of :attr:`channel` to
    :meth:`receive_datagram`; both return the values to hand to the application.
    Check :attr:`error` after each call (an ERROR frame ended the subscription).
    After a reconnect, call :meth:`reset` and send :meth:`subscribe_frame` again: it
    resumes from the last number delivered.
    """

    def __init__(
        self,
        topic: str,
        *,
        from_seq: int | None = None,
        mode: str = MODE_STREAM,
        policy: str | None = None,
        snapshot: bool = True,
        on_gap: str = ON_GAP_SNAPSHOT,
        channel: int = 0,
        queue_size: int = 0,
        registry: FrameRegistry = default_registry,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        latency_window: int = DEFAULT_LATENCY_WINDOW,
        datagram_buffer: int = DEFAULT_DATAGRAM_BUFFER,
    ) -> None:
        self._request = Subscribe(
            topic=topic,
            from_seq=from_seq,
            mode=mode,
            policy=policy,
            snapshot=snapshot,
            on_gap=on_gap,
            channel=channel if mode == MODE_DATAGRAM else 0,
            queue_size=queue_size,
        )
        try:
            self._request.check()
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.message, code=exc.code) from None
        self.topic = topic
        self.channel = self._request.channel
        self.datagram = mode == MODE_DATAGRAM
        self._registry = registry
        self._max_frame_size = max_frame_size
        self.tracker = SequenceTracker(None if from_seq is None else from_seq - 1)
        self.latency = LatencyStats(latency_window)
        self.snapshots = 0
        self.gap_notices: list[Gap] = []
        self._datagram_buffer: deque[Any] = deque(maxlen=datagram_buffer)
        self.datagrams_buffered_lost = 0
        self.reset()

    def reset(self) -> None:
        """Forget the current stream (the connection was lost); keep the numbering."""
        self._decoder = FrameDecoder(max_frame_size=self._max_frame_size)
        self.subscribed: Subscribed | None = None
        self.error: RemoteError | None = None
        self.finished = False
        self._in_snapshot = False
        self._live = False
        self._hot = False  # live, stream mode, fixed layout: receive_data's fast path
        self._codec: Any = None
        self._fixed: FixedLayoutCodec[Any] | None = None
        self._seq_of: Callable[[Any], int] = _first
        self._send_time_of: Callable[[Any], int] | None = None
        self._datagram_buffer.clear()

    # -- sending ---------------------------------------------------------------------

    def subscribe_frame(self) -> bytes:
        """SUBSCRIBE, resuming from the last number delivered if there is one."""
        request = self._request
        next_seq = self.tracker.next_seq
        if next_seq is not None and next_seq >= 1:
            request = Subscribe(
                topic=request.topic,
                from_seq=next_seq,
                mode=request.mode,
                policy=request.policy,
                snapshot=request.snapshot,
                on_gap=request.on_gap,
                channel=request.channel,
                queue_size=request.queue_size,
            )
        return encode_control(request)

    def unsubscribe_frame(self, reason: str = "") -> bytes:
        return encode_control(Unsubscribe(reason))

    # -- receiving -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True once recovery (snapshot or replay) is over and live frames flow."""
        return self._live

    def receive_data(self, data: bytes, receive_ns: int) -> list[T]:
        """Feed bytes from the subscription stream; return the values to deliver.

        Raises:
            RemoteProtocolError: the server broke the protocol (reset the stream).
        """
        decoder = self._decoder
        decoder.feed(data)
        if self._hot:
            # Live, stream mode, fixed-layout frames: the common case is a run of data
            # frames continuing exactly where the last one ended, checked with
            # C-level passes and handed out as the decoder's own list.
            items: list[Any] = decoder.drain_values(self._fixed)  # type: ignore[arg-type]
            n = len(items)
            if not n:
                return items
            tracker = self.tracker
            last = tracker.last_seq
            seq_of = self._seq_of
            if (
                last is not None
                and seq_of(items[0]) == last + 1
                and seq_of(items[-1]) == last + n
                and (n < 3 or list(map(seq_of, items)) == list(range(last + 1, last + n + 1)))
                and Frame not in map(type, items)
            ):
                tracker.last_seq = last + n
                tracker.delivered += n
                if self._send_time_of is not None:
                    self.latency.record_values(receive_ns, items, self._send_time_of)
                return items
            out: list[T] = []
            self._items(items, out, receive_ns)
            return out
        out = []
        if self._codec is None:
            # Until SUBSCRIBED names the frame type, take frames one at a time.
            while not self._has_codec() and (frame := decoder.next_frame()) is not None:
                self._control(frame, out, receive_ns)
            if not self._has_codec():
                return out
        fixed = self._fixed
        if fixed is None:
            while (frame := decoder.next_frame()) is not None:
                if frame.type == self.subscribed.frame_type:  # type: ignore[union-attr]
                    self._data([self._codec.decode(frame.body)], out, receive_ns)
                else:
                    self._control(frame, out, receive_ns)
            return out
        self._items(decoder.drain_values(fixed), out, receive_ns)
        return out

    def _items(self, items: list[Any], out: list[T], receive_ns: int) -> None:
        """The general path: data values and control frames, mixed."""
        run: list[Any] = []
        for item in items:
            if type(item) is Frame:
                if run:
                    self._data(run, out, receive_ns)
                    run = []
                self._control(item, out, receive_ns)
            else:
                run.append(item)
        if run:
            self._data(run, out, receive_ns)

    def receive_eof(self) -> None:
        """The server finished the stream.

        Raises:
            RemoteProtocolError: it ended inside a frame.
        """
        self._decoder.feed_eof()
        self.finished = True

    def receive_datagram(self, data: bytes, receive_ns: int) -> list[T]:
        """Feed one DATAGRAM of this subscription's channel; return the values to
        deliver (datagrams that arrive before the snapshot ended are held back).

        Raises:
            RemoteProtocolError: the datagram is not one valid frame.
        """
        if self._fixed is not None:
            _, value = decode_datagram(data, self._fixed, max_frame_size=self._max_frame_size)
        else:
            _, value = decode_datagram(
                data, registry=self._registry, max_frame_size=self._max_frame_size
            )
        if not self._live:
            buffer = self._datagram_buffer
            if len(buffer) == buffer.maxlen:
                self.datagrams_buffered_lost += 1
            buffer.append(value)
            return []
        out: list[T] = []
        self._data([value], out, receive_ns)
        return out

    # -- internals -------------------------------------------------------------------

    def _has_codec(self) -> bool:
        return self._codec is not None

    def _data(self, values: list[Any], out: list[T], receive_ns: int) -> None:
        seq_of = self._seq_of
        if self._in_snapshot:
            accept = self.tracker.accept_quiet
            values = [v for v in values if accept(seq_of(v))]
        else:
            values = self.tracker.accept_run(values, seq_of)
        if self._send_time_of is not None and values:
            self.latency.record_values(receive_ns, values, self._send_time_of)
        out.extend(values)
        if (
            not self._live
            and not self._in_snapshot
            and self.subscribed is not None
            and (self.tracker.last_seq or 0) >= self.subscribed.head
        ):
            # Datagram mode: the replay on the stream reached the head.
            self._go_live(out, receive_ns)

    def _set_live(self, live: bool) -> None:
        self._live = live
        self._hot = live and not self.datagram and self._fixed is not None and self.error is None

    def _go_live(self, out: list[T], receive_ns: int) -> None:
        self._set_live(True)
        if self._datagram_buffer:
            seq_of = self._seq_of
            held = sorted(self._datagram_buffer, key=seq_of)
            self._datagram_buffer.clear()
            last = self.tracker.last_seq
            if last is not None:
                held = [v for v in held if seq_of(v) > last]
            self._data(held, out, receive_ns)

    def _control(self, frame: Frame, out: list[T], receive_ns: int) -> None:
        frame_type = frame.type
        if frame_type == FrameType.ERROR:
            error = HistoryGap.from_remote(error_from_frame(frame))
            error.operation = f"subscribe {self.topic!r}"
            self.error = error
            self._set_live(False)
            return
        if frame_type not in _CONTROL_TYPES:
            raise RemoteProtocolError(
                f"frame type 0x{frame_type:02x} is not expected on a subscription stream",
                code=ErrorCode.UNEXPECTED_FRAME,
                frame_type=frame_type,
                operation="subscribe",
            )
        body = decode_control(frame_type, frame.body)
        if isinstance(body, Subscribed):
            self._on_subscribed(body, out, receive_ns)
            return
        if self.subscribed is None:
            raise RemoteProtocolError(
                f"frame type 0x{frame_type:02x} before SUBSCRIBED",
                code=ErrorCode.UNEXPECTED_FRAME,
                frame_type=frame_type,
                operation="subscribe",
            )
        if isinstance(body, SnapshotMarker):
            if body.phase == PHASE_BEGIN:
                self._in_snapshot = True
                self._set_live(False)
            else:
                self._in_snapshot = False
                self.snapshots += 1
                self.tracker.skip_to(body.seq)
                if not self.datagram or body.seq >= self.subscribed.head:
                    self._go_live(out, receive_ns)
                # else: datagrams wait until the replay after the snapshot reaches head
        elif isinstance(body, Gap):
            self.gap_notices.append(body)
            self.tracker.note_gap(body.first_missing, body.last_missing)
            self._set_live(False)  # a snapshot follows

    def _on_subscribed(self, body: Subscribed, out: list[T], receive_ns: int) -> None:
        spec = self._registry.spec_for_type(body.frame_type)
        if spec is None:
            raise RemoteProtocolError(
                f"topic {body.topic!r} carries frame type 0x{body.frame_type:02x}, "
                "which is not registered here",
                code=ErrorCode.UNKNOWN_FRAME_TYPE,
                frame_type=body.frame_type,
                operation="subscribe",
            )
        self.subscribed = body
        self._codec = spec.codec
        self._fixed = spec.codec if isinstance(spec.codec, FixedLayoutCodec) else None
        cls = spec.cls
        fields: tuple[str, ...] = getattr(cls, "_fields", None) or tuple(
            getattr(cls, "__dataclass_fields__", {})
        )
        if "seq" not in fields:
            raise RemoteProtocolError(
                f"frame type 0x{body.frame_type:02x} has no seq field",
                code=ErrorCode.UNKNOWN_FRAME_TYPE,
                frame_type=body.frame_type,
                operation="subscribe",
            )
        tuple_like = getattr(cls, "_fields", None) is not None
        self._seq_of = (
            operator.itemgetter(fields.index("seq")) if tuple_like else operator.attrgetter("seq")
        )
        if "send_time_ns" in fields:
            self._send_time_of = (
                operator.itemgetter(fields.index("send_time_ns"))
                if tuple_like
                else operator.attrgetter("send_time_ns")
            )
        request = self._request
        resuming = self.tracker.last_seq is not None
        if not resuming:
            if request.snapshot:
                return  # SNAPSHOT begin follows
            self.tracker.skip_to(body.head)
        elif self.datagram and (self.tracker.last_seq or 0) < body.head:
            return  # the replay comes on the stream; live datagrams wait for its end
        self._go_live(out, receive_ns)

    def stats(self) -> ClientStats:
        t = self.tracker
        return ClientStats(
            delivered=t.delivered,
            duplicates=t.duplicates,
            gap_count=t.gap_count,
            missing=t.missing,
            snapshots=self.snapshots,
            latency_p50_ns=self.latency.p50,
            latency_p99_ns=self.latency.p99,
        )
