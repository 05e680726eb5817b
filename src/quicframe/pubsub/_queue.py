"""Per-subscriber bounded queues and their slow-consumer policies (sans-IO).

Each subscription owns one :class:`SubscriberQueue`.  The topic puts the *same*
entry (and so the same encoded bytes) into every queue; the connection's sender
pops entries when the transport can take more.  Queues hold entries as plain
tuples (:data:`~quicframe.pubsub.Record`), which the garbage collector stops
tracking, and hand out :class:`~quicframe.pubsub.Entry` objects (:meth:`pop`,
:meth:`pop_many`) or just the frames (:meth:`pop_data`, the sender's path).  What
happens when a subscriber does not keep up is the queue's :class:`Policy`.

Memory is bounded in every policy: CONFLATE holds at most one entry per key and
at most ``capacity`` keys; DROP_OLDEST and DISCONNECT at most ``capacity``
entries; BLOCK at most ``block_limit`` (the publisher is expected to wait once
:attr:`SubscriberQueue.full` is set; a queue pushed past the hard limit anyway is
failed as a slow consumer rather than allowed to grow).
"""

from __future__ import annotations

import enum
import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from itertools import repeat, starmap
from typing import Final

from ..wire._errors import SlowConsumer
from ._backbone import Entry, Record, entry_of
from ._errors import HistoryGap, slow_consumer

__all__ = [
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "Policy",
    "SubscriberQueue",
    "SubscriptionStats",
]

_deadline_of: Final = operator.itemgetter(4)
_data_of: Final = operator.itemgetter(2)

DEFAULT_QUEUE_SIZE: Final = 4096
"""Default queue capacity (entries, or keys for CONFLATE)."""

DEFAULT_MAX_QUEUED_BYTES: Final = 8 * 1024 * 1024
"""Default bound on the encoded bytes one subscriber's queue holds."""


class Policy(enum.StrEnum):
    """What a subscriber's queue does when the subscriber falls behind.

    The values are the strings used on the wire (SUBSCRIBE's ``policy`` field).
    """

    CONFLATE = "conflate"
    """Keep only the latest entry per key (default for ticks).  Entries leave in
    sequence order: an update moves its key to the back of the queue."""

    DROP_OLDEST = "drop-oldest"
    """Keep the newest ``capacity`` entries; the oldest are dropped."""

    DISCONNECT = "disconnect"
    """Fail this subscription (SLOW_CONSUMER) when the queue overflows; other
    subscriptions are unaffected."""

    BLOCK = "block"
    """Nothing is lost: the queue reports :attr:`SubscriberQueue.full` and the
    publisher is expected to wait (backpressure) until it drains."""


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """A snapshot of one subscription's queue counters.

    ``enqueued == queued + delivered + dropped + conflated + stale`` at all times
    (``enqueued`` is derived, so the publish path counts nothing in the common case).

    Attributes:
        queued: entries waiting now.
        delivered: entries handed to the sender.
        dropped: entries discarded by DROP_OLDEST, or by CONFLATE's key cap, or
            discarded when the subscription failed or closed.
        conflated: entries replaced by a newer entry for the same key (CONFLATE).
        stale: entries whose staleness deadline passed before they were sent.
        high_water: the largest number of entries queued at once.
        queued_bytes: encoded bytes queued now (counted only when the queue bounds
            bytes for frames of varying size; 0 otherwise).
    """

    queued: int
    delivered: int
    dropped: int
    conflated: int
    stale: int
    high_water: int
    queued_bytes: int = 0

    @property
    def enqueued(self) -> int:
        return self.queued + self.delivered + self.dropped + self.conflated + self.stale


class SubscriberQueue:
    """The bounded queue of one subscription.

    Args:
        topic: the topic name (for errors).
        policy: what to do when the subscriber falls behind.
        capacity: entries (CONFLATE: keys) held before the policy acts.
        urgency: scheduling class of this subscription's frames (higher first); the
            connection's sender serves more urgent queues first.
        block_limit: BLOCK only: the hard limit past which the queue fails as a slow
            consumer even so (default ``2 * capacity``).
        max_bytes: the encoded bytes the queue holds before its policy acts, as it
            does at ``capacity`` entries (None: no bound in bytes).  BLOCK's hard
            limit is twice this.
        frame_size: the size of every frame put in the queue when all have the same
            (fixed-layout frames): the bound in bytes is then a bound in entries,
            ``max_bytes // frame_size``, and nothing is counted per entry.

    With ``max_bytes`` and frames of varying size, the queue counts the bytes it
    holds (:attr:`queued_bytes`): CONFLATE and DROP_OLDEST drop the oldest entries
    until the bytes fit again (the newest entry always stays), DISCONNECT fails,
    BLOCK reports :attr:`full`.

    ``put`` returns True when the caller must act: a BLOCK queue became
    :attr:`full` (apply backpressure), or a DISCONNECT queue failed (see
    :attr:`error`).
    """

    __slots__ = (
        "_bytes",
        "_entries",
        "_latest",
        "block_limit",
        "capacity",
        "closed",
        "conflated",
        "delivered",
        "dropped",
        "error",
        "gap",
        "high_water",
        "max_bytes",
        "policy",
        "put",
        "put_many",
        "stale",
        "topic",
        "urgency",
    )

    def __init__(
        self,
        topic: str,
        policy: Policy = Policy.CONFLATE,
        capacity: int = DEFAULT_QUEUE_SIZE,
        *,
        urgency: int = 0,
        block_limit: int | None = None,
        max_bytes: int | None = None,
        frame_size: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, not {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, not {max_bytes}")
        self.topic = topic
        self.policy = Policy(policy)
        if max_bytes is not None and frame_size:
            # Frames of one size: the bound in bytes is a bound in entries.
            capacity = max(1, min(capacity, max_bytes // frame_size))
            max_bytes = None
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._bytes = 0  # counted only with max_bytes (frames of varying size)
        self.urgency = urgency
        self.block_limit = 2 * capacity if block_limit is None else max(block_limit, capacity)
        self._entries: deque[Record] = deque()
        self._latest: OrderedDict[Hashable, Record] = OrderedDict()
        self.delivered = 0
        self.dropped = 0
        self.conflated = 0
        self.stale = 0
        self.high_water = 0
        self.closed = False
        self.error: SlowConsumer | None = None
        # Frames a remote backbone lost before this edge could read them, reported
        # by the subscription once its live frames reach them (TopicCore.mark_gap).
        self.gap: HistoryGap | None = None
        puts: dict[Policy, Callable[[Record], bool]] = {
            Policy.CONFLATE: self._put_conflate,
            Policy.DROP_OLDEST: self._put_drop_oldest,
            Policy.DISCONNECT: self._put_disconnect,
            Policy.BLOCK: self._put_block,
        }
        put_manys: dict[Policy, Callable[[Sequence[Record]], bool]] = {
            Policy.CONFLATE: self._put_many_each,
            Policy.DROP_OLDEST: self._put_many_drop_oldest,
            Policy.DISCONNECT: self._put_many_each,
            Policy.BLOCK: self._put_many_block,
        }
        if max_bytes is not None:
            puts = {
                Policy.CONFLATE: self._put_conflate_counted,
                Policy.DROP_OLDEST: self._put_drop_oldest_counted,
                Policy.DISCONNECT: self._put_disconnect_counted,
                Policy.BLOCK: self._put_block_counted,
            }
            put_manys = dict.fromkeys(Policy, self._put_many_each)
        self.put: Callable[[Record], bool] = puts[self.policy]
        # ``put_many(entries)`` is ``put`` for each entry in turn, returning True if
        # any of them did (the publish path of a batch: one call per subscriber).
        self.put_many: Callable[[Sequence[Record]], bool] = put_manys[self.policy]

    # -- putting (the publish path: one call per subscriber per publish) -------------

    def _put_conflate(self, entry: Record) -> bool:
        latest = self._latest
        if latest.pop(entry[1], None) is not None:
            self.conflated += 1
            latest[entry[1]] = entry
            return False
        latest[entry[1]] = entry
        depth = len(latest)
        if depth > self.high_water:
            if depth > self.capacity:  # more keys than the cap: the oldest key goes
                latest.popitem(last=False)
                self.dropped += 1
                return False
            self.high_water = depth
        return False

    def _put_drop_oldest(self, entry: Record) -> bool:
        entries = self._entries
        entries.append(entry)
        depth = len(entries)
        if depth > self.high_water:
            if depth > self.capacity:
                entries.popleft()
                self.dropped += 1
                return False
            self.high_water = depth
        return False

    def _put_disconnect(self, entry: Record) -> bool:
        entries = self._entries
        if len(entries) >= self.capacity:
            self.fail(slow_consumer(self.topic, len(entries) + 1, self.capacity))
            self.dropped += 1  # the entry that did not fit
            return True
        entries.append(entry)
        if len(entries) > self.high_water:
            self.high_water = len(entries)
        return False

    def _put_block(self, entry: Record) -> bool:
        entries = self._entries
        entries.append(entry)
        depth = len(entries)
        if depth > self.high_water:
            self.high_water = depth
        if depth < self.capacity:
            return False
        if depth > self.block_limit:
            self.fail(slow_consumer(self.topic, depth, self.block_limit))
        return True

    # The same, counting bytes (max_bytes with frames of varying size).

    def _put_conflate_counted(self, entry: Record) -> bool:
        latest = self._latest
        old = latest.pop(entry[1], None)
        if old is not None:
            self.conflated += 1
            self._bytes -= len(old[2])
        latest[entry[1]] = entry
        self._bytes += len(entry[2])
        self._trim_counted(len(latest))
        return False

    def _put_drop_oldest_counted(self, entry: Record) -> bool:
        self._entries.append(entry)
        self._bytes += len(entry[2])
        self._trim_counted(len(self._entries))
        return False

    def _trim_counted(self, depth: int) -> None:
        """Drop the oldest entries while over either bound (the newest stays)."""
        assert self.max_bytes is not None
        conflate = self.policy is Policy.CONFLATE
        while depth > 1 and (depth > self.capacity or self._bytes > self.max_bytes):
            oldest = self._latest.popitem(last=False)[1] if conflate else self._entries.popleft()
            self._bytes -= len(oldest[2])
            self.dropped += 1
            depth -= 1
        if depth > self.high_water:
            self.high_water = depth

    def _put_disconnect_counted(self, entry: Record) -> bool:
        assert self.max_bytes is not None
        entries = self._entries
        size = len(entry[2])
        if len(entries) >= self.capacity or self._bytes + size > self.max_bytes:
            self.fail(
                slow_consumer(self.topic, self._bytes + size, self.max_bytes, unit="bytes")
                if len(entries) < self.capacity
                else slow_consumer(self.topic, len(entries) + 1, self.capacity)
            )
            self.dropped += 1
            return True
        entries.append(entry)
        self._bytes += size
        if len(entries) > self.high_water:
            self.high_water = len(entries)
        return False

    def _put_block_counted(self, entry: Record) -> bool:
        assert self.max_bytes is not None
        entries = self._entries
        entries.append(entry)
        self._bytes += len(entry[2])
        depth = len(entries)
        if depth > self.high_water:
            self.high_water = depth
        if depth < self.capacity and self._bytes < self.max_bytes:
            return False
        if depth > self.block_limit:
            self.fail(slow_consumer(self.topic, depth, self.block_limit))
        elif self._bytes > 2 * self.max_bytes:
            self.fail(slow_consumer(self.topic, self._bytes, 2 * self.max_bytes, unit="bytes"))
        return True

    def _put_closed(self, entry: Record) -> bool:
        return False

    def _put_many_closed(self, entries: Sequence[Record]) -> bool:
        return False

    def _put_many_each(self, entries: Sequence[Record]) -> bool:
        acted = False
        for entry in entries:
            if self.put(entry):  # self.put: a failed queue rebinds it
                acted = True
                if self.closed:
                    break  # failed: the rest would be refused anyway
        return acted

    def _put_many_drop_oldest(self, entries: Sequence[Record]) -> bool:
        queued = self._entries
        queued.extend(entries)
        depth = len(queued)
        capacity = self.capacity
        if depth > capacity:
            # As many drops as single puts would make: each put past the capacity
            # drops one from the front.
            excess = depth - capacity
            if excess >= depth - len(entries):  # every older entry goes, and more
                queued.clear()
                queued.extend(entries[-capacity:])
            else:
                popleft = queued.popleft
                for _ in range(excess):
                    popleft()
            self.dropped += excess
            depth = capacity
        if depth > self.high_water:
            self.high_water = depth
        return False

    def _put_many_block(self, entries: Sequence[Record]) -> bool:
        n = len(entries)
        queued = self._entries
        if len(queued) + n > self.block_limit:
            # Past the hard limit (a publisher that ignored backpressure): exactly
            # where single puts would fail.
            return self._put_many_each(entries)
        queued.extend(entries)
        depth = len(queued)
        if depth > self.high_water:
            self.high_water = depth
        return depth >= self.capacity

    # -- state -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._latest) if self.policy is Policy.CONFLATE else len(self._entries)

    @property
    def queued_bytes(self) -> int:
        """Encoded bytes queued now: counted with ``max_bytes`` and frames of varying
        size, and 0 otherwise (the bound is then in entries)."""
        return self._bytes

    @property
    def full(self) -> bool:
        """True while a BLOCK queue holds ``capacity`` entries or more, or its
        ``max_bytes`` (publishers should wait); always False for the other policies,
        which never block."""
        if self.policy is not Policy.BLOCK:
            return False
        if self.max_bytes is not None and self._bytes >= self.max_bytes:
            return True
        return len(self._entries) >= self.capacity

    @property
    def room(self) -> int:
        """Entries a BLOCK queue takes before it is :attr:`full` (0 or less when full;
        at most 1 while it counts bytes, whose room is not a number of entries)."""
        if self.max_bytes is not None:
            return 1 if not self.full else 0
        return self.capacity - len(self._entries)

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            queued=len(self),
            delivered=self.delivered,
            dropped=self.dropped,
            conflated=self.conflated,
            stale=self.stale,
            high_water=self.high_water,
            queued_bytes=self._bytes,
        )

    def fail(self, error: SlowConsumer) -> None:
        """Fail the subscription: keep ``error``, drop what is queued, accept nothing more."""
        if self.error is None:
            self.error = error
        self.close()

    def close(self) -> None:
        """Stop accepting entries; what was queued is dropped (and counted)."""
        self.dropped += len(self)
        self._entries.clear()
        self._latest.clear()
        self._bytes = 0
        self.closed = True
        self.put = self._put_closed
        self.put_many = self._put_many_closed

    # -- taking (the sender's side) ------------------------------------------------------

    def pop(self, now_ns: int) -> Entry | None:
        """The next entry to send, or None.  Stale entries are dropped on the way."""
        taken = self._take(now_ns, 1)
        while not taken and len(self):  # the first was stale: the next, then
            taken = self._take(now_ns, 1)
        return entry_of(taken[0]) if taken else None

    def pop_many(self, now_ns: int, max_items: int) -> list[Entry]:
        """Up to ``max_items`` entries to send, in order; stale ones are dropped."""
        return list(map(entry_of, self._take(now_ns, max_items)))

    def pop_data(self, now_ns: int, max_items: int, after_seq: int = 0) -> list[bytes]:
        """The frames of :meth:`pop_many`'s entries, less those numbered ``after_seq``
        or below (already sent, by a replay say): the sender's path, which needs
        nothing else of an entry."""
        taken = self._take(now_ns, max_items)
        if taken and taken[0][0] <= after_seq:
            return [record[2] for record in taken if record[0] > after_seq]
        return list(map(_data_of, taken))

    def _take(self, now_ns: int, max_items: int) -> list[Record]:
        """Up to ``max_items`` records, in order; stale ones are dropped."""
        out: list[Record] = []
        if self.max_bytes is not None:
            return self._pop_many_counted(now_ns, max_items)
        if self.policy is Policy.CONFLATE:
            latest = self._latest
            while latest and len(out) < max_items:
                entry = latest.popitem(last=False)[1]
                if entry[4] and entry[4] < now_ns:
                    self.stale += 1
                else:
                    out.append(entry)
        else:
            entries = self._entries
            n = min(max_items, len(entries))
            if n == len(entries):
                out = list(entries)
                entries.clear()
            else:
                # popleft called n times from C (no Python frame per entry).
                out = list(starmap(entries.popleft, repeat((), n)))
            # Staleness: a second pass only when some entry has a deadline.
            if any(map(_deadline_of, out)):
                fresh = [e for e in out if not e[4] or e[4] >= now_ns]
                self.stale += len(out) - len(fresh)
                out = fresh
        self.delivered += len(out)
        return out

    def _pop_many_counted(self, now_ns: int, max_items: int) -> list[Record]:
        """_take while counting bytes: everything taken leaves the count."""
        out: list[Record] = []
        while not out and len(self):
            if self.policy is Policy.CONFLATE:
                latest = self._latest
                n = min(max_items, len(latest))
                taken = [latest.popitem(last=False)[1] for _ in range(n)]
            else:
                entries = self._entries
                taken = list(starmap(entries.popleft, repeat((), min(max_items, len(entries)))))
            self._bytes -= sum(map(len, map(_data_of, taken)))
            out = [e for e in taken if not e[4] or e[4] >= now_ns]
            self.stale += len(taken) - len(out)
        self.delivered += len(out)
        return out
