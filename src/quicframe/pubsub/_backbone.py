"""Backbones: where a topic's sequence numbers, history and last values live.

A topic does not own its log; it asks a **backbone** for one per topic name
(:meth:`Backbone.log`).  The log (:class:`TopicLog`) is the topic's single source
of truth for

- the **sequence**: the last sequence number assigned (``head``), the first one is 1;
- the bounded **history**: the frames of the last N sequence numbers, for replay to
  a subscriber that resumes from its last sequence number;
- the **snapshot**: the latest frame per key, each with its own sequence number,
  for a subscriber that starts (or recovers from a gap) without history.

Why the interface is synchronous, and how an asynchronous backbone fits
-----------------------------------------------------------------------
Everything a topic does on the publish path (assign the next number, append,
fan out) has to happen in one step, with no await in between, or two publishers
could interleave and the numbering would no longer match the order of the bytes
in the subscribers' queues.  So :class:`TopicLog` is synchronous and local: the
in-memory backbone is the whole story on one server, and a remote backbone (NATS
JetStream, issue 10) keeps one of these as its **local cache**:

- Sequence numbers come from JetStream (its stream sequence *is* the topic
  sequence).  The edge's consumer task receives ``(seq, frame)`` in order and
  hands them to the topic core's ingest path (``TopicCore.ingest``), which appends
  to the local log with that ``seq`` and fans out.  ``append`` accepts any ``seq``
  above the head for that reason: a jump restarts the local history at the new
  number (the hole is then reported as a gap if anyone asks for it).
- Replay and snapshot requests never call a backbone directly from the sans-IO
  state machines.  A subscription *asks* (``ReplayRequest`` / ``SnapshotRequest``,
  see :mod:`quicframe.pubsub._server`) and the driver answers, by calling this
  synchronous interface (the in-memory case) or by awaiting a remote fetch for a
  range older than the cache (``await jetstream.fetch(from_seq)``) and feeding the
  result back.  An async adapter is therefore a thin wrapper: it implements the
  same four read-side operations as coroutines and the driver awaits them.

A read raises :class:`~quicframe.pubsub.HistoryGap` naming exactly the range that
is gone, so "nothing missed" is never silently broken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, NamedTuple, Protocol

from ._errors import HistoryGap

__all__ = [
    "DEFAULT_HISTORY",
    "Backbone",
    "Entry",
    "InMemoryBackbone",
    "InMemoryLog",
    "Record",
    "Snapshot",
    "TopicLog",
]

DEFAULT_HISTORY: Final = 100_000
"""Frames of history an in-memory topic log keeps by default."""


class Entry(NamedTuple):
    """One published frame: what the history keeps and what every queue holds.

    One entry is built per publish and shared by the history and by every
    subscriber queue, like the encoded ``data`` it carries.  Inside the topic
    core, the queues and the in-memory log it travels as a :data:`Record` (the
    same fields in a plain tuple); what they hand out is an ``Entry``.

    Attributes:
        seq: the topic sequence number (also inside ``data``).
        key: the topic's key of the value (e.g. the instrument id); conflation and
            the snapshot keep the latest entry per key.
        data: the whole encoded frame (header and body), shared, never copied.
        urgency: scheduling class, higher is more urgent (order acks above ticks).
        deadline_ns: the time after which the frame is stale and is dropped instead of
            sent (0: never stale).  Same clock as the ``now_ns`` given to the queues.
    """

    seq: int
    key: Hashable
    data: bytes
    urgency: int = 0
    deadline_ns: int = 0


Record = tuple[int, Hashable, bytes, int, int]
"""An :class:`Entry`'s fields in a plain tuple: how the topic core, the queues and
the in-memory log hold entries.  CPython's garbage collector stops tracking a
plain tuple of ints and bytes the first time it looks at it, but tracks an
``Entry`` (a tuple subclass) for life: thousands of queued entries then kept
surviving young collections into the oldest generation, and triggered full
collections that walked them all.  An ``Entry`` is a ``Record`` too."""

_tuple_new: Final[Callable[[type[Any], Record], Any]] = tuple.__new__
entry_of: Final[Callable[[Record], Entry]] = functools.partial(_tuple_new, Entry)
"""The :class:`Entry` of a record, with C calls only (a partial of ``tuple.__new__``;
not ``map(tuple.__new__, repeat(Entry), ...)``, which crashed CPython 3.11.7: see
``FrameDecoder.drain_values``)."""


class Snapshot(NamedTuple):
    """The latest entry per key, as of sequence number ``seq``.

    ``entries`` are in ascending ``seq`` order and every ``entry.seq <= seq``; updates
    numbered above ``seq`` are not reflected.
    """

    seq: int
    entries: list[Entry]


class TopicLog(Protocol):
    """One topic's sequence, bounded history and last value per key (synchronous)."""

    @property
    def head(self) -> int:
        """The last sequence number appended (0 before the first)."""
        ...

    @property
    def first_seq(self) -> int:
        """The oldest sequence number the history still holds (``head + 1`` when empty)."""
        ...

    def append(self, entry: Entry, /) -> None:
        """Record a published entry; ``entry.seq`` must be above :attr:`head`.

        ``head + 1`` is the normal case; a larger number (possible only when the
        numbers come from elsewhere, e.g. JetStream) restarts the history there.

        Raises:
            ValueError: ``entry.seq <= head``.
        """
        ...

    def read(self, from_seq: int, limit: int, /) -> list[Entry]:
        """Up to ``limit`` entries from ``from_seq`` on, in order (empty past the head).

        Raises:
            HistoryGap: ``from_seq`` is older than :attr:`first_seq`; the error names
                the missing range ``from_seq..first_seq - 1``.
        """
        ...

    def snapshot(self) -> Snapshot:
        """The latest entry per key, consistent as of :attr:`head`."""
        ...


class Backbone(Protocol):
    """Supplies the log of each topic (see the module docstring for remote backbones)."""

    def log(self, topic: str, /) -> TopicLog:
        """The log of ``topic``, created on first use."""
        ...


class InMemoryLog:
    """A :class:`TopicLog` in process memory: a ring of the last ``history`` frames
    and a dict of the latest entry per key.

    Appending is O(1) with no allocation besides the ring slots and the dict entry;
    reading a range is O(length).  The snapshot holds one entry per distinct key
    ever published (for market data: one per instrument).

    The ring is kept by column (keys, frames, urgencies, deadlines: four lists of
    ``history`` slots) rather than as ``Entry`` tuples: the frames are bytes and
    the other columns are usually ints, none of which the garbage collector
    tracks, whereas a hundred thousand ``Entry`` tuples made every full
    collection walk them (tens of milliseconds each, several per second of a
    busy feed).  :meth:`read` builds the entries it returns.
    """

    __slots__ = (
        "_base",
        "_capacity",
        "_data",
        "_deadlines",
        "_head",
        "_keys",
        "_latest",
        "_urgencies",
        "topic",
    )

    def __init__(self, topic: str, history: int = DEFAULT_HISTORY) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, not {history}")
        self.topic = topic
        self._capacity = history
        # The ring, one list per Entry field but seq (a slot's number follows from
        # its position): equal lengths, at most ``history``.
        self._keys: list[Hashable] = []
        self._data: list[bytes] = []
        self._urgencies: list[int] = []
        self._deadlines: list[int] = []
        self._head = 0
        # Sequence number stored at ring index 0 before the ring wrapped: positions
        # are (seq - base) % capacity.
        self._base = 1
        self._latest: dict[Hashable, Record] = {}

    @property
    def head(self) -> int:
        return self._head

    @property
    def first_seq(self) -> int:
        return self._head - len(self._data) + 1

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._data)

    def _columns(self) -> tuple[list[Any], ...]:
        return (self._keys, self._data, self._urgencies, self._deadlines)

    def append(self, entry: Record, /) -> None:
        seq = entry[0]  # index access: this runs once per publish
        if seq != self._head + 1:
            if seq <= self._head:
                raise ValueError(
                    f"topic {self.topic!r}: sequence number {seq} is not above the head "
                    f"{self._head}"
                )
            # The numbers jumped (they come from elsewhere): history restarts here.
            for column in self._columns():
                column.clear()
            self._base = seq
        self._head = seq
        self._latest[entry[1]] = entry
        data = self._data
        if len(data) < self._capacity:
            self._keys.append(entry[1])
            data.append(entry[2])
            self._urgencies.append(entry[3])
            self._deadlines.append(entry[4])
        elif data:
            slot = (seq - self._base) % self._capacity
            self._keys[slot] = entry[1]
            data[slot] = entry[2]
            self._urgencies[slot] = entry[3]
            self._deadlines[slot] = entry[4]

    def extend(self, entries: Sequence[Record], /) -> None:
        """:meth:`append` each entry in turn, in fewer steps: the numbers must run on
        from the head without a hole (``head + 1``, ``head + 2``...).

        Raises:
            ValueError: the numbers do not run on from the head (nothing recorded).
        """
        n = len(entries)
        if not n:
            return
        first = entries[0][0]
        last = entries[-1][0]
        if first != self._head + 1 or last != first + n - 1:
            if n == 1 or first <= self._head:
                # One entry, or a bad first number: append says what is wrong.
                for entry in entries:
                    self.append(entry)
                return
            raise ValueError(
                f"topic {self.topic!r}: entries {first}..{last} are not numbered in a run"
            )
        _, keys, datas, urgencies, deadlines = zip(*entries, strict=True)
        self._latest.update(zip(keys, entries, strict=True))
        self._put_run(first, (keys, datas, urgencies, deadlines))

    def extend_batch(
        self,
        entries: Sequence[Record],
        keys: list[Hashable],
        datas: list[bytes],
        urgency: int,
        deadline_ns: int,
        /,
    ) -> None:
        """:meth:`extend` for a publish batch whose columns the caller already has:
        ``keys[i]`` and ``datas[i]`` are ``entries[i]``'s, and every entry has
        ``urgency`` and ``deadline_ns`` (no pass over the entries to split them)."""
        n = len(entries)
        if not n:
            return
        first = entries[0][0]
        if first != self._head + 1 or entries[-1][0] != first + n - 1:
            self.extend(entries)  # the checks and errors of extend
            return
        self._latest.update(zip(keys, entries, strict=True))
        self._put_run(first, (keys, datas, [urgency] * n, [deadline_ns] * n))

    def _put_run(self, first: int, values: tuple[Sequence[Any], ...]) -> None:
        """Record frames ``first..first + n - 1`` (``first`` is ``head + 1``) given
        by column, in the order of :meth:`_columns`."""
        n = len(values[0])
        self._head = first + n - 1
        columns = self._columns()
        capacity = self._capacity
        room = capacity - len(self._data)
        if n <= room:
            for column, new in zip(columns, values, strict=True):
                column.extend(new)
            return
        if room > 0:
            for column, new in zip(columns, values, strict=True):
                column.extend(new[:room])
            values = tuple(new[room:] for new in values)
            first += room
            n -= room
        if not self._data:  # capacity 0: no history
            return
        if n > capacity:  # only the last ``capacity`` survive
            values = tuple(new[-capacity:] for new in values)
            first += n - capacity
            n = capacity
        start = (first - self._base) % capacity
        stop = start + n
        for column, new in zip(columns, values, strict=True):
            if stop <= capacity:
                column[start:stop] = new
            else:
                split = capacity - start
                column[start:] = new[:split]
                column[: stop - capacity] = new[split:]

    def read(self, from_seq: int, limit: int, /) -> list[Entry]:
        first = self.first_seq
        if from_seq < first:
            raise HistoryGap(self.topic, from_seq, first - 1, operation="replay")
        last = min(self._head, from_seq + limit - 1)
        if last < from_seq:
            return []
        size = len(self._data)
        start = (from_seq - self._base) % self._capacity
        stop = start + (last - from_seq + 1)
        if stop <= size:
            keys, datas, urgencies, deadlines = (c[start:stop] for c in self._columns())
        else:
            keys, datas, urgencies, deadlines = (
                c[start:] + c[: stop - size] for c in self._columns()
            )
        return list(map(Entry, range(from_seq, last + 1), keys, datas, urgencies, deadlines))

    def snapshot(self) -> Snapshot:
        records = sorted(self._latest.values(), key=_seq_of)
        return Snapshot(self._head, list(map(entry_of, records)))


def _seq_of(entry: Record) -> int:
    return entry[0]


class InMemoryBackbone:
    """The default backbone: one :class:`InMemoryLog` per topic, in this process.

    Args:
        history: frames of history each topic keeps (a topic may ask for its own
            size through :meth:`log`'s ``history`` argument).
    """

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        self.history = history
        self._logs: dict[str, InMemoryLog] = {}

    def log(self, topic: str, /, history: int | None = None) -> InMemoryLog:
        log = self._logs.get(topic)
        if log is None:
            log = InMemoryLog(topic, self.history if history is None else history)
            self._logs[topic] = log
        return log

    def topics(self) -> list[str]:
        return sorted(self._logs)
