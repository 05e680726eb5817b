"""A deterministic, clock-free bottleneck model that drives a congestion controller.

The sender side behaves like aioquic's connection and recovery: it sends while the
window has room for a full packet and the (real aioquic) pacer allows, reports
every acknowledged packet to ``on_packet_acked`` and ``on_rtt_measurement``, then
calls ``pacer.update_rate(cwnd, srtt)``, and reports losses to ``on_packets_lost``
(3 packets of reordering threshold, or a timer) followed by ``update_rate`` again.

The path: one bottleneck of ``rate`` bytes per second with a drop-tail queue, a
fixed one-way delay in each direction, random loss on the data direction from a
seeded ``random.Random``, and one ACK per packet.  Time only moves from event to
event, so a run is a pure function of its parameters.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from aioquic.quic.congestion.base import QuicCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.tls import Epoch

MDS = 1200

_ACK = 0
_LOSS = 1


def make_packet(packet_number: int, sent_time: float, size: int = MDS) -> QuicSentPacket:
    """A 1-RTT, ack-eliciting, in-flight packet as aioquic's builder records it."""
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=packet_number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=sent_time,
        sent_bytes=size,
    )


@dataclass
class Path:
    rate: float  # bottleneck rate, bytes per second
    one_way_delay: float  # seconds, each direction
    queue_bytes: int | None = None  # drop-tail limit (None: unlimited)
    loss: float = 0.0  # random loss on the data direction
    seed: int = 1

    @property
    def base_rtt(self) -> float:
        """The RTT of one full packet through an empty queue."""
        return 2 * self.one_way_delay + MDS / self.rate

    @property
    def bdp(self) -> float:
        return self.rate * self.base_rtt


class App:
    """What the application offers: ``bulk`` (always data), else one packet every
    ``interval`` seconds from ``sparse_from`` on, bulk before that."""

    def __init__(self, *, sparse_from: float = math.inf, interval: float = 0.0) -> None:
        self.sparse_from = sparse_from
        self.interval = interval
        self._next_release = sparse_from

    def has_data(self, now: float) -> bool:
        return now < self.sparse_from or now >= self._next_release

    def consume(self, now: float) -> None:
        if now >= self.sparse_from:
            self._next_release += self.interval

    def next_time(self, now: float) -> float:
        return now if self.has_data(now) else self._next_release


@dataclass
class Simulation:
    controller: QuicCongestionControl
    path: Path
    app: App = field(default_factory=App)
    bind_pacer: bool = True
    start: float = 0.0  # the clock's value at the start (trio's clock starts anywhere)

    def __post_init__(self) -> None:
        self.now = self.start
        self.pacer = QuicPacketPacer(max_datagram_size=MDS)
        bind = getattr(self.controller, "bind_pacer", None)
        if self.bind_pacer and bind is not None:
            bind(self.pacer)
        self._rng = random.Random(self.path.seed)
        self._events: list[tuple[float, int, int, QuicSentPacket]] = []
        self._seq = 0
        self._link_free = self.start
        self._packet_number = 0
        self._dropped: dict[int, QuicSentPacket] = {}
        self.srtt: float | None = None
        self.sent_packets = 0
        self.dropped_packets = 0
        self.delivered_bytes = 0  # bytes acknowledged to the sender
        self.rtt_samples: list[tuple[float, float]] = []
        self.states: list[tuple[float, str]] = []
        self.gains: list[tuple[float, float]] = []
        self.observers: list[Callable[[Simulation], None]] = []

    # -- the sender ---------------------------------------------------------------

    def _send_ready(self) -> float:
        """Send what window, pacer and application allow; return when to try again."""
        cc = self.controller
        for _ in range(100_000):
            if cc.congestion_window - cc.bytes_in_flight < MDS:
                return math.inf  # window-limited: the next ACK reopens it
            if not self.app.has_data(self.now):
                return self.app.next_time(self.now)
            # aioquic annotates the result as float, but it is None when allowed
            at = cast("float | None", self.pacer.next_send_time(self.now))
            if at is not None:
                return float(at)
            self._send_one()
            self.pacer.update_after_send(self.now)
        raise AssertionError("sender loop did not stop")

    def _send_one(self) -> None:
        packet = make_packet(self._packet_number, self.now)
        self._packet_number += 1
        self.sent_packets += 1
        self.app.consume(self.now)
        self.controller.on_packet_sent(packet=packet)
        path = self.path
        start = max(self.now, self._link_free)
        backlog = (start - self.now) * path.rate
        dropped = self._rng.random() < path.loss
        if not dropped and path.queue_bytes is not None:
            dropped = backlog + MDS > path.queue_bytes + MDS  # the packet being sent is free
        if dropped:
            self.dropped_packets += 1
            self._dropped[packet.packet_number] = packet
            would_be = start + MDS / path.rate + 2 * path.one_way_delay
            self._push(would_be + path.base_rtt / 8, _LOSS, packet)
        else:
            self._link_free = start + MDS / path.rate
            self._push(self._link_free + 2 * path.one_way_delay, _ACK, packet)

    def _push(self, at: float, kind: int, packet: QuicSentPacket) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, packet))

    # -- the recovery side ----------------------------------------------------------

    def _on_ack(self, packet: QuicSentPacket) -> None:
        cc = self.controller
        assert packet.sent_time is not None
        rtt = self.now - packet.sent_time
        cc.on_packet_acked(now=self.now, packet=packet)
        self.delivered_bytes += packet.sent_bytes
        self.srtt = rtt if self.srtt is None else 7 / 8 * self.srtt + rtt / 8
        self.rtt_samples.append((self.now, rtt))
        cc.on_rtt_measurement(now=self.now, rtt=rtt)
        self.pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=self.srtt)
        threshold = packet.packet_number - 3
        lost = [p for n, p in self._dropped.items() if n <= threshold]
        self._report_lost(lost)

    def _report_lost(self, packets: list[QuicSentPacket]) -> None:
        packets = [p for p in packets if self._dropped.pop(p.packet_number, None) is not None]
        if not packets:
            return
        cc = self.controller
        cc.on_packets_lost(now=self.now, packets=packets)
        self.pacer.update_rate(
            congestion_window=cc.congestion_window, smoothed_rtt=self.srtt or self.path.base_rtt
        )

    def _observe(self) -> None:
        state = getattr(self.controller, "state", None)
        if state is not None and (not self.states or self.states[-1][1] != state.value):
            self.states.append((self.now, state.value))
        gain = getattr(self.controller, "pacing_gain", None)
        if gain is not None and (not self.gains or self.gains[-1][1] != gain):
            self.gains.append((self.now, gain))
        for observer in self.observers:
            observer(self)

    def run(self, until: float) -> None:
        """Advance to time ``until`` (bounded: raises if the model stops progressing)."""
        for _ in range(5_000_000):
            next_send = self._send_ready()
            self._observe()
            next_event = self._events[0][0] if self._events else math.inf
            at = min(next_send, next_event, until)
            if at >= until:
                self.now = until
                return
            self.now = max(self.now, at)
            while self._events and self._events[0][0] <= self.now:
                _, _, kind, packet = heapq.heappop(self._events)
                if kind == _ACK:
                    self._on_ack(packet)
                else:
                    self._report_lost([packet])
                self._observe()
        raise AssertionError("simulation did not reach its end time")

    def goodput(self, since: float, delivered_at_since: int) -> float:
        return (self.delivered_bytes - delivered_at_since) / (self.now - since)
