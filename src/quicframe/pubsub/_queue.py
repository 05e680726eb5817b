"""Per-subscriber bounded queues and their slow-consumer policies (sans-IO).

Each subscription owns one :class:`SubscriberQueue`.  The topic puts the *same*
:class:`~quicframe.pubsub.Entry` (and so the same encoded bytes) into every queue;
the connection's sender pops entries when the transport can take more.  What
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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from ..wire._errors import SlowConsumer
from ._backbone import Entry
from ._errors import slow_consumer

__all__ = ["DEFAULT_QUEUE_SIZE", "Policy", "SubscriberQueue", "SubscriptionStats"]

_deadline_of: Final = operator.itemgetter(4)

DEFAULT_QUEUE_SIZE: Final = 4096
"""Default queue capacity (entries, or keys for CONFLATE)."""


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
    """

    queued: int
    delivered: int
    dropped: int
    conflated: int
    stale: int
    high_water: int

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

    ``put`` returns True when the caller must act: a BLOCK queue became
    :attr:`full` (apply backpressure), or a DISCONNECT queue failed (see
    :attr:`error`).
    """

    __slots__ = (
        "_entries",
        "_latest",
        "block_limit",
        "capacity",
        "closed",
        "conflated",
        "delivered",
        "dropped",
        "error",
        "high_water",
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
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, not {capacity}")
        self.topic = topic
        self.policy = Policy(policy)
        self.capacity = capacity
        self.urgency = urgency
        self.block_limit = 2 * capacity if block_limit is None else max(block_limit, capacity)
        self._entries: deque[Entry] = deque()
        self._latest: OrderedDict[Hashable, Entry] = OrderedDict()
        self.delivered = 0
        self.dropped = 0
        self.conflated = 0
        self.stale = 0
        self.high_water = 0
        self.closed = False
        self.error: SlowConsumer | None = None
        puts: dict[Policy, Callable[[Entry], bool]] = {
            Policy.CONFLATE: self._put_conflate,
            Policy.DROP_OLDEST: self._put_drop_oldest,
            Policy.DISCONNECT: self._put_disconnect,
            Policy.BLOCK: self._put_block,
        }
        self.put: Callable[[Entry], bool] = puts[self.policy]
        put_manys: dict[Policy, Callable[[list[Entry]], bool]] = {
            Policy.CONFLATE: self._put_many_each,
            Policy.DROP_OLDEST: self._put_many_drop_oldest,
            Policy.DISCONNECT: self._put_many_each,
            Policy.BLOCK: self._put_many_block,
        }
        # ``put_many(entries)`` is ``put`` for each entry in turn, returning True if
        # any of them did (the publish path of a batch: one call per subscriber).
        self.put_many: Callable[[list[Entry]], bool] = put_manys[self.policy]

    # -- putting (the publish path: one call per subscriber per publish) -------------

    def _put_conflate(self, entry: Entry) -> bool:
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

    def _put_drop_oldest(self, entry: Entry) -> bool:
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

    def _put_disconnect(self, entry: Entry) -> bool:
        entries = self._entries
        if len(entries) >= self.capacity:
            self.fail(slow_consumer(self.topic, len(entries) + 1, self.capacity))
            self.dropped += 1  # the entry that did not fit
            return True
        entries.append(entry)
        if len(entries) > self.high_water:
            self.high_water = len(entries)
        return False

    def _put_block(self, entry: Entry) -> bool:
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

    def _put_closed(self, entry: Entry) -> bool:
        return False

    def _put_many_closed(self, entries: list[Entry]) -> bool:
        return False

    def _put_many_each(self, entries: list[Entry]) -> bool:
        acted = False
        for entry in entries:
            if self.put(entry):  # self.put: a failed queue rebinds it
                acted = True
                if self.closed:
                    break  # failed: the rest would be refused anyway
        return acted

    def _put_many_drop_oldest(self, entries: list[Entry]) -> bool:
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

    def _put_many_block(self, entries: list[Entry]) -> bool:
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
    def full(self) -> bool:
        """True while a BLOCK queue holds ``capacity`` entries or more (publishers
        should wait); always False for the other policies, which never block."""
        return self.policy is Policy.BLOCK and len(self._entries) >= self.capacity

    @property
    def room(self) -> int:
        """Entries a BLOCK queue takes before it is :attr:`full` (0 or less when full)."""
        return self.capacity - len(self._entries)

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            queued=len(self),
            delivered=self.delivered,
            dropped=self.dropped,
            conflated=self.conflated,
            stale=self.stale,
            high_water=self.high_water,
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
        self.closed = True
        self.put = self._put_closed
        self.put_many = self._put_many_closed

    # -- taking (the sender's side) ------------------------------------------------------

    def pop(self, now_ns: int) -> Entry | None:
        """The next entry to send, or None.  Stale entries are dropped on the way."""
        if self.policy is Policy.CONFLATE:
            latest = self._latest
            while latest:
                entry = latest.popitem(last=False)[1]
                if entry[4] and entry[4] < now_ns:
                    self.stale += 1
                    continue
                self.delivered += 1
                return entry
            return None
        entries = self._entries
        while entries:
            entry = entries.popleft()
            if entry[4] and entry[4] < now_ns:
                self.stale += 1
                continue
            self.delivered += 1
            return entry
        return None

    def pop_many(self, now_ns: int, max_items: int) -> list[Entry]:
        """Up to ``max_items`` entries to send, in order; stale ones are dropped."""
        out: list[Entry] = []
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
                popleft = entries.popleft
                out = [popleft() for _ in range(n)]
            # Staleness: a second pass only when some entry has a deadline.
            if any(map(_deadline_of, out)):
                fresh = [e for e in out if not e[4] or e[4] >= now_ns]
                self.stale += len(out) - len(fresh)
                out = fresh
        self.delivered += len(out)
        return out
