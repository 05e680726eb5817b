"""The sans-IO topic: sequence numbers, encode once, history, fan-out.

:class:`TopicCore` is what the trio-level ``quicframe.Topic`` will wrap: its
``publish`` is synchronous and never waits; it returns the sequence number, and
:attr:`TopicCore.backpressure` tells the async wrapper whether to wait for BLOCK
subscribers to drain before publishing again.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import operator
import struct
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, Generic, TypeVar

from ..wire import FixedLayoutCodec, MarketTick, OrderAck, default_registry
from ..wire._errors import ErrorCode, LocalProtocolError
from ..wire._frame import HEADER
from ..wire._registry import FrameRegistry
from ._backbone import (
    DEFAULT_HISTORY,
    Backbone,
    Entry,
    InMemoryBackbone,
    InMemoryLog,
    Record,
    TopicLog,
    entry_of,
)
from ._errors import HistoryGap
from ._queue import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_QUEUE_SIZE, Policy, SubscriberQueue

__all__ = ["TopicCore", "Urgency", "make_batch_stamper", "make_stamper"]

T = TypeVar("T")

# The frame header's layout: what fixed-layout codecs bind first in pack_frame.
_HEADER_FORMAT: Final[str] = HEADER.format
_HEADER_FIELDS: Final = len(HEADER.unpack(bytes(HEADER.size)))


class Urgency(enum.IntEnum):
    """Scheduling classes of subscription frames: higher is sent first."""

    LOW = 0  # latest-value data: ticks
    NORMAL = 1
    HIGH = 2  # data that must not wait behind ticks: order acknowledgements


Stamper = Callable[[Any, int, int], bytes]
BatchStamper = Callable[[Sequence[Any], int, int], list[bytes]]


def make_stamper(cls: type[Any], registry: FrameRegistry = default_registry) -> Stamper:
    """A function ``stamp(value, seq, now_ns) -> frame bytes`` for frame class ``cls``.

    The frame written carries ``seq`` in the value's ``seq`` field and ``now_ns`` in
    its ``send_time_ns`` field (when it has one); the value itself is not changed.
    For a fixed-layout frame this is one ``struct.pack`` call with the fields passed
    straight through: no intermediate value object is built.  Other frame classes
    (dataclasses with a msgpack codec, say) go through ``dataclasses.replace`` or
    ``_replace`` and the registry's encoder.

    Raises:
        TypeError: ``cls`` is not a registered frame class or has no ``seq`` field.
    """
    spec = registry.spec_for_class(cls)
    if spec is None:
        raise TypeError(f"{cls.__name__} is not a registered frame class")
    codec = spec.codec
    fields: tuple[str, ...] | None = getattr(cls, "_fields", None)
    if fields is None and dataclasses.is_dataclass(cls):
        fields = tuple(f.name for f in dataclasses.fields(cls))
    if fields is None or "seq" not in fields:
        raise TypeError(f"{cls.__name__} has no 'seq' field to carry the sequence number")
    stamped = {"seq": "seq"}
    if "send_time_ns" in fields:
        stamped["send_time_ns"] = "now_ns"
    if isinstance(codec, FixedLayoutCodec):
        # Generated once per frame class: the fields in layout order, two of them
        # replaced by the arguments.  Names are identifiers, indices are ints.
        args = ", ".join(stamped.get(name, f"value[{i}]") for i, name in enumerate(fields))
        source = f"def stamp(value, seq, now_ns):\n    return pack({args})\n"
        namespace: dict[str, Any] = {"pack": codec.pack_frame}
        exec(source, namespace)
        fast: Stamper = namespace["stamp"]
        return fast  # struct.error / TypeError for a bad field: see TopicCore.publish
    encode = registry.encode
    if dataclasses.is_dataclass(cls):

        def stamp_dataclass(value: Any, seq: int, now_ns: int) -> bytes:
            changes = {k: (seq if v == "seq" else now_ns) for k, v in stamped.items()}
            return encode(dataclasses.replace(value, **changes))

        return stamp_dataclass

    def stamp_tuple(value: Any, seq: int, now_ns: int) -> bytes:
        changes = {k: (seq if v == "seq" else now_ns) for k, v in stamped.items()}
        return encode(value._replace(**changes))

    return stamp_tuple


def make_batch_stamper(cls: type[Any], registry: FrameRegistry = default_registry) -> BatchStamper:
    """A function ``stamp_many(values, first_seq, now_ns) -> [frame bytes]``: the
    frames of ``values`` numbered ``first_seq``, ``first_seq + 1``... in order, all
    with send time ``now_ns``; each frame is what :func:`make_stamper`'s function
    writes for that value and number.

    For a fixed-layout frame the loop is one generated list comprehension (no call
    per value besides the pack itself); other frame classes call the single-value
    stamper per value.

    Raises:
        TypeError: as :func:`make_stamper`.
    """
    stamp = make_stamper(cls, registry)
    spec = registry.spec_for_class(cls)
    assert spec is not None  # make_stamper checked
    codec = spec.codec
    fields: tuple[str, ...] | None = getattr(cls, "_fields", None)
    if isinstance(codec, FixedLayoutCodec) and fields is not None:
        # NamedTuple fields unpacked into locals named f0, f1...; seq and send_time_ns
        # come from the loop's counter and the argument instead.
        names = [f"f{i}" for i in range(len(fields))]
        args = ", ".join(
            "seq" if name == "seq" else "now_ns" if name == "send_time_ns" else names[i]
            for i, name in enumerate(fields)
        )
        pack = codec.pack_frame
        namespace: dict[str, Any] = {"count": itertools.count}
        if isinstance(pack, functools.partial) and not pack.keywords:
            frame_struct = getattr(pack.func, "__self__", None)
            layout = getattr(frame_struct, "format", "")
            if (
                isinstance(frame_struct, struct.Struct)
                and layout.startswith(_HEADER_FORMAT)
                and len(pack.args) == _HEADER_FIELDS
            ):
                # The header is the same for every frame: packed once, it goes in
                # as one bytes field (one argument per frame rather than six).
                namespace["prefix"] = struct.pack(_HEADER_FORMAT, *pack.args)
                body = layout[len(_HEADER_FORMAT) :]
                pack = struct.Struct(f">{struct.calcsize(_HEADER_FORMAT)}s{body}").pack
                args = f"prefix, {args}"
            else:
                # The header fields bound in the partial become int literals in the
                # source: one call less per frame, and no IntEnum to convert.
                args = ", ".join([*(str(int(a)) for a in pack.args), args])
                pack = pack.func
        source = (
            "def stamp_many(values, first_seq, now_ns):\n"
            f"    return [pack({args}) for seq, ({', '.join(names)},)"
            " in zip(count(first_seq), values)]\n"
        )
        namespace["pack"] = pack
        exec(source, namespace)
        fast: BatchStamper = namespace["stamp_many"]
        return fast

    def stamp_many(values: Sequence[Any], first_seq: int, now_ns: int) -> list[bytes]:
        return [stamp(value, seq, now_ns) for seq, value in enumerate(values, first_seq)]

    return stamp_many


def _constant_key(value: object) -> None:
    return None


def _field_key(frame: type[Any], name: str) -> Callable[[Any], Hashable]:
    """The key function reading field ``name`` of a ``frame`` value, in C
    (``operator.attrgetter``): a fraction of a Python function's call per publish.

    Raises:
        ValueError: ``frame`` has no field ``name``.
    """
    fields: tuple[str, ...] | None = getattr(frame, "_fields", None)
    if fields is None and dataclasses.is_dataclass(frame):
        fields = tuple(f.name for f in dataclasses.fields(frame))
    if fields is None or name not in fields:
        raise ValueError(f"{frame.__name__} has no field {name!r} to key values by")
    getter: Callable[[Any], Hashable] = operator.attrgetter(name)
    return getter


class TopicCore(Generic[T]):
    """One topic, without I/O: numbering, encoding, history and fan-out.

    Args:
        name: the topic name subscribers ask for (e.g. ``"md.ticks"``).
        frame: the frame class published (a registered frame class with a ``seq``
            field, and ideally ``send_time_ns``: ``MarketTick``, ``OrderAck``...).
        key: the key of a value (e.g. ``lambda t: t.instrument_id``), or the name
            of the frame's field that is the key (``"instrument_id"``: read in C,
            the cheaper choice on a busy feed): conflation and the snapshot keep
            the latest value per key.  Without one, every value has the same key
            (the snapshot is the last value published).
        history: frames of history kept for replay (in-memory backbone).
        backbone: where the sequence, history and last values live (default: a new
            :class:`InMemoryBackbone`).
        policy: the default queue policy of subscriptions that do not choose one
            (default: CONFLATE for ``MarketTick``, BLOCK for anything else).
        queue_size: the default queue capacity.
        max_queued_bytes: the encoded bytes one subscriber's queue may hold (None:
            no bound in bytes); past it the queue's policy acts as at its capacity.
        urgency: the scheduling class of this topic's frames (default: LOW for
            ``MarketTick``, HIGH for ``OrderAck``, NORMAL otherwise).
        stale_after_ns: frames not sent within this time after publishing are
            dropped as stale (None: never stale).
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
        stale_after_ns: int | None = None,
        registry: FrameRegistry = default_registry,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        spec = registry.spec_for_class(frame)
        if spec is None:
            raise TypeError(f"{frame.__name__} is not a registered frame class")
        self.name = name
        self.frame = frame
        self.frame_type: int = spec.frame_type
        self.codec = spec.codec
        if max_queued_bytes is not None and max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be >= 1, not {max_queued_bytes}")
        self.max_queued_bytes = max_queued_bytes
        # Every frame of a fixed-layout codec has the same size: queues bound it as
        # a number of entries.
        self._frame_size: int | None = (
            spec.codec.frame_size if isinstance(spec.codec, FixedLayoutCodec) else None
        )
        self._stamp = make_stamper(frame, registry)
        self._stamp_many = make_batch_stamper(frame, registry)
        if isinstance(key, str):
            key = _field_key(frame, key)
        self._key: Callable[[T], Hashable] = key if key is not None else _constant_key
        self._keyed = key is not None
        if backbone is None:
            backbone = InMemoryBackbone(history)
        if isinstance(backbone, InMemoryBackbone):
            self.log: TopicLog = backbone.log(name, history)
        else:
            self.log = backbone.log(name)
        # Entries travel as plain tuples (Record, see there).  The in-memory log
        # takes them so, and batches in one call; another log gets Entry objects,
        # as its protocol promises.
        self._extend_batch: (
            Callable[[list[Record], list[Any], list[bytes], int, int], None] | None
        ) = None
        self._extend: Callable[[list[Entry]], None] | None = None
        if isinstance(self.log, InMemoryLog):
            self._append: Callable[[Record], None] = self.log.append
            self._extend_batch = self.log.extend_batch
        else:
            log_append = self.log.append

            def append_entry(record: Record) -> None:
                log_append(entry_of(record))

            self._append = append_entry
            self._extend = getattr(self.log, "extend", None)
        self._seq = self.log.head
        if policy is None:
            policy = Policy.CONFLATE if frame is MarketTick else Policy.BLOCK
        self.policy = Policy(policy)
        self.queue_size = queue_size
        if urgency is None:
            urgency = (
                Urgency.LOW
                if frame is MarketTick
                else Urgency.HIGH
                if frame is OrderAck
                else Urgency.NORMAL
            )
        self.urgency = int(urgency)
        self.stale_after_ns = stale_after_ns
        self._queues: list[SubscriberQueue] = []
        self._blocking: list[SubscriberQueue] = []
        # Set when some queue's put asked for attention (a BLOCK queue is full):
        # until then ``backpressure`` is known to be False without looking.
        self._pressure = False

    # -- publishing ----------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The last sequence number published (0 before the first)."""
        return self._seq

    def publish(self, value: T, now_ns: int) -> int:
        """Publish ``value``: number it, stamp ``now_ns`` as its send time, encode it
        once, append it to the history and put the same bytes in every subscriber's
        queue.  Returns the sequence number.

        ``now_ns`` is wall-clock time in nanoseconds since the epoch (the frame's
        ``send_time_ns``, from which the client measures latency); the staleness
        deadline is counted from it, so the sender's ``now_ns`` must use the same
        clock.

        Never waits: when it returns, check :attr:`backpressure` (BLOCK subscribers
        that are full) before publishing again.  A DISCONNECT subscriber that
        overflowed is failed (its queue's ``error`` is set) and detached here; its
        owner sends the error.

        Raises:
            LocalProtocolError: the value cannot be encoded (MALFORMED_BODY); nothing
                was numbered or sent.
        """
        seq = self._seq + 1
        try:
            data = self._stamp(value, seq, now_ns)
        except LocalProtocolError:
            raise
        except Exception as exc:
            raise LocalProtocolError(
                f"topic {self.name!r}: cannot encode {type(value).__name__}: {exc}",
                code=ErrorCode.MALFORMED_BODY,
                frame_type=self.frame_type,
                operation="publish",
            ) from None
        stale = self.stale_after_ns
        # One record per publish, shared by the history and every queue.
        entry: Record = (
            seq,
            self._key(value),
            data,
            self.urgency,
            now_ns + stale if stale is not None else 0,
        )
        self._append(entry)
        self._seq = seq
        for queue in self._queues:  # _prune rebinds the list: iterating stays safe
            if queue.put(entry):
                self._pressure = True
                self._prune()
        return seq

    def publish_many(self, values: Sequence[T], now_ns: int, start: int = 0) -> int:
        """Publish ``values[start:]``, or as many of them as every BLOCK queue has
        room for (at least one), in order, all stamped with ``now_ns``; return how
        many were published.

        The result is the same as :meth:`publish` called for each of those values in
        turn (same numbers, bytes, history, snapshot and queue contents), done per
        batch: the frames are stamped in one pass and handed to the history and to
        each queue as one list.  A BLOCK queue is never given more than the room it
        had (``capacity - len``), so the caller checks :attr:`backpressure` and waits
        between calls exactly as between single publishes.

        Raises:
            LocalProtocolError: a value cannot be encoded (MALFORMED_BODY): the
                values before it are published, it and the rest are not.
        """
        n = len(values) - start
        if n <= 0:
            return 0
        for queue in self._blocking:
            room = queue.room
            if room < n:
                n = room if room > 0 else 1
        if start or n < len(values):
            values = values[start : start + n]
        first = self._seq + 1
        stale = self.stale_after_ns
        deadline = now_ns + stale if stale is not None else 0
        urgency = self.urgency
        try:
            datas = self._stamp_many(values, first, now_ns)
            keys: list[Any] = list(map(self._key, values)) if self._keyed else [None] * n
            # Plain tuples straight from zip (Record): no call per entry.
            entries: list[Record] = list(
                zip(
                    range(first, first + n),
                    keys,
                    datas,
                    itertools.repeat(urgency, n),
                    itertools.repeat(deadline, n),
                    strict=True,
                )
            )
        except Exception:
            # Some value cannot be encoded (or keyed): one at a time, so that the ones
            # before it are published and the error is the one publish gives.
            for value in values:
                self.publish(value, now_ns)
            return n
        if self._extend_batch is not None:
            self._extend_batch(entries, keys, datas, urgency, deadline)
        elif self._extend is not None:
            self._extend(list(map(entry_of, entries)))
        else:
            append = self._append
            for entry in entries:
                append(entry)
        self._seq = first + n - 1
        for queue in self._queues:  # _prune rebinds the list: iterating stays safe
            if queue.put_many(entries):
                self._pressure = True
                self._prune()
        return n

    def ingest(self, seq: int, data: bytes, key: Hashable, now_ns: int) -> None:
        """Fan out a frame numbered elsewhere (a remote backbone's consumer, issue 10).

        ``data`` must already carry ``seq``; ``seq`` must be above :attr:`head`.
        """
        stale = self.stale_after_ns
        entry: Record = (seq, key, data, self.urgency, now_ns + stale if stale is not None else 0)
        self._append(entry)
        self._seq = seq
        for queue in self._queues:
            if queue.put(entry):
                self._pressure = True
                self._prune()

    def mark_gap(self, first_missing: int, last_missing: int) -> None:
        """Frames ``first_missing..last_missing`` were lost by a remote backbone before
        this process could read them (call it before ingesting the frame after them).

        Every subscription attached now reports it once its live frames reach that
        point: GAP and a snapshot, or SEQUENCE_GAP with ``on_gap="error"`` (see
        ``ServerSubscription``).  Two gaps not yet reached are reported as one.
        """
        for queue in self._queues:
            pending = queue.gap
            if pending is not None:
                first_missing = min(first_missing, pending.first_missing)
            queue.gap = HistoryGap(self.name, first_missing, last_missing, operation="subscribe")

    def _prune(self) -> None:
        self._queues = [q for q in self._queues if not q.closed]
        self._blocking = [q for q in self._blocking if not q.closed]

    @property
    def backpressure(self) -> bool:
        """True while some BLOCK subscriber's queue is full: the publisher should wait
        until :meth:`blocking_queues` have drained (nothing is dropped meanwhile)."""
        if not self._pressure:
            return False
        pressure = any(queue.full for queue in self._blocking)
        self._pressure = pressure
        return pressure

    def blocking_queues(self) -> list[SubscriberQueue]:
        """The BLOCK queues that are full now."""
        return [q for q in self._blocking if q.full]

    # -- subscribers ---------------------------------------------------------------------

    def attach(
        self,
        *,
        policy: Policy | str | None = None,
        capacity: int | None = None,
        urgency: int | None = None,
    ) -> SubscriberQueue:
        """Add a subscriber queue; every frame published from now on goes into it."""
        queue = SubscriberQueue(
            self.name,
            Policy(policy) if policy is not None else self.policy,
            capacity if capacity is not None else self.queue_size,
            urgency=self.urgency if urgency is None else urgency,
            max_bytes=self.max_queued_bytes,
            frame_size=self._frame_size,
        )
        self._queues.append(queue)
        if queue.policy is Policy.BLOCK:
            self._blocking.append(queue)
        return queue

    def detach(self, queue: SubscriberQueue) -> None:
        """Remove a subscriber queue (it is closed; what it held is dropped)."""
        queue.close()
        self._prune()

    @property
    def subscribers(self) -> int:
        return len(self._queues)
