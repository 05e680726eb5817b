"""The impairment model both test networks share: one direction of one path.

Sans-IO and clock-free: :meth:`Link.admit` is told the time and the packet size and
answers when the packet (and any duplicate) arrives, or that it is lost.  The fake
network and the chaos proxy only schedule what it answers.  Each direction owns its
own ``random.Random``, and every packet draws the same number of values from it
whatever happens to the packet, so one seed gives one outcome per packet index.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass, fields
from typing import Final

__all__ = ["Link", "LinkPolicy", "LinkStatistics", "check_loopback"]

_DRAWS_PER_PACKET: Final = 5


def check_loopback(host: str) -> None:
    """Refuse any address outside 127.0.0.0/8 and ::1: test tools stay on this host."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{host!r} is not a numeric IP address") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address; test networks use loopback only")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkPolicy:
    """How one direction of a path mistreats packets.

    Probabilities are drawn per packet from the direction's seeded
    ``random.Random``.  Times are seconds on trio's clock.

    Attributes:
        loss: probability that a packet is dropped.
        duplicate: probability that a packet is delivered twice (the copy gets its
            own jitter; it costs no bandwidth, as if duplicated past the bottleneck).
        reorder: probability that a packet is held back by ``reorder_delay``, so
            the packets sent after it overtake it.
        reorder_delay: how long a reordered packet is held back.
        delay: one-way latency added to every packet.
        jitter: extra latency drawn uniformly from ``[0, jitter)`` (jitter alone
            also reorders packets sent close together).
        blackholes: ``(start, end)`` windows of trio time during which every packet
            is dropped.
        bandwidth: bytes per second the direction carries (None: unlimited).
            Packets wait in a FIFO queue served by a token bucket.
        burst: token bucket depth in bytes: how much may leave back to back after
            the link was idle.
        queue_bytes: most bytes waiting for bandwidth; a packet that would exceed
            it is dropped (drop-tail).
        queue_delay: longest a packet may wait for bandwidth; a packet that would
            wait longer is dropped (drop-tail).  None: no limit besides
            ``queue_bytes``.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.01
    delay: float = 0.0
    jitter: float = 0.0
    blackholes: tuple[tuple[float, float], ...] = ()
    bandwidth: float | None = None
    burst: int = 16 * 1024
    queue_bytes: int = 256 * 1024
    queue_delay: float | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, got {value!r}")
        for name in ("reorder_delay", "delay", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError("bandwidth must be positive or None")
        if self.burst < 0 or self.queue_bytes < 0:
            raise ValueError("burst and queue_bytes must not be negative")
        if self.queue_delay is not None and self.queue_delay < 0:
            raise ValueError("queue_delay must not be negative or None")
        for start, end in self.blackholes:
            if end < start:
                raise ValueError(f"blackhole window ends before it starts: {(start, end)}")


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """Counters of one direction (or a sum of directions), in packets unless named.

    Attributes:
        packets: packets offered to the link.
        forwarded: packets delivered (duplicates included).
        bytes_forwarded: bytes delivered (duplicates included).
        dropped_loss: packets dropped by the ``loss`` probability.
        dropped_blackhole: packets dropped inside a blackhole window.
        dropped_queue: packets dropped because a queue was full (the bandwidth
            queue, the fake socket's receive queue, or the in-flight bound).
        dropped_unroutable: packets with no socket at their destination (a closed
            socket, or a NAT mapping that was rebound).
        duplicated: extra copies made.
        reordered: packets held back so that later ones overtake them.
    """

    packets: int = 0
    forwarded: int = 0
    bytes_forwarded: int = 0
    dropped_loss: int = 0
    dropped_blackhole: int = 0
    dropped_queue: int = 0
    dropped_unroutable: int = 0
    duplicated: int = 0
    reordered: int = 0

    def __add__(self, other: LinkStatistics) -> LinkStatistics:
        return LinkStatistics(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(LinkStatistics))
        )

    @property
    def dropped(self) -> int:
        """Packets dropped for any reason."""
        return (
            self.dropped_loss
            + self.dropped_blackhole
            + self.dropped_queue
            + self.dropped_unroutable
        )


class Link:
    """One direction's random state, bandwidth queue and counters.  Internal."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.packets = 0
        self.forwarded = 0
        self.bytes_forwarded = 0
        self.dropped_loss = 0
        self.dropped_blackhole = 0
        self.dropped_queue = 0
        self.dropped_unroutable = 0
        self.duplicated = 0
        self.reordered = 0
        # Token bucket and FIFO queue of the bandwidth cap.
        self._tokens = 0.0
        self._tokens_at = -float("inf")
        self._last_departure = -float("inf")
        self._queued: deque[tuple[float, int]] = deque()  # (departure, size)
        self._queued_bytes = 0

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            packets=self.packets,
            forwarded=self.forwarded,
            bytes_forwarded=self.bytes_forwarded,
            dropped_loss=self.dropped_loss,
            dropped_blackhole=self.dropped_blackhole,
            dropped_queue=self.dropped_queue,
            dropped_unroutable=self.dropped_unroutable,
            duplicated=self.duplicated,
            reordered=self.reordered,
        )

    def delivered(self, size: int) -> None:
        self.forwarded += 1
        self.bytes_forwarded += size

    def admit(
        self, policy: LinkPolicy, now: float, size: int, *, blackholed: bool = False
    ) -> list[float]:
        """Arrival times of a packet sent at ``now`` (empty when it is dropped)."""
        self.packets += 1
        rng = self._rng
        u_loss, u_duplicate, u_reorder, u_jitter, u_copy_jitter = (
            rng.random() for _ in range(_DRAWS_PER_PACKET)
        )
        if blackholed or any(start <= now < end for start, end in policy.blackholes):
            self.dropped_blackhole += 1
            return []
        if u_loss < policy.loss:
            self.dropped_loss += 1
            return []
        departure = now
        if policy.bandwidth is not None:
            shaped = self._shape(policy, now, size)
            if shaped is None:
                self.dropped_queue += 1
                return []
            departure = shaped
        arrival = departure + policy.delay + u_jitter * policy.jitter
        if u_reorder < policy.reorder:
            self.reordered += 1
            arrival += policy.reorder_delay
        arrivals = [arrival]
        if u_duplicate < policy.duplicate:
            self.duplicated += 1
            arrivals.append(departure + policy.delay + u_copy_jitter * policy.jitter)
        return arrivals

    def _shape(self, policy: LinkPolicy, now: float, size: int) -> float | None:
        """The departure time under the bandwidth cap, or None when the queue is full."""
        assert policy.bandwidth is not None
        rate = policy.bandwidth
        queued = self._queued
        while queued and queued[0][0] <= now:
            self._queued_bytes -= queued.popleft()[1]
        # FIFO: a packet starts no earlier than the one before it left.
        start = max(now, self._last_departure)
        tokens = min(float(policy.burst), self._tokens + (start - self._tokens_at) * rate)
        if tokens >= size:
            departure, tokens = start, tokens - size
        else:
            departure, tokens = start + (size - tokens) / rate, 0.0
        if departure > now:
            if self._queued_bytes + size > policy.queue_bytes:
                return None
            if policy.queue_delay is not None and departure - now > policy.queue_delay:
                return None
            queued.append((departure, size))
            self._queued_bytes += size
        self._tokens, self._tokens_at, self._last_departure = tokens, departure, departure
        return departure
