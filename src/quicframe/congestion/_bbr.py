"""BBR congestion control (the BBRv1 model, with a loss-rate threshold) for aioquic.

The controller plugs into aioquic's ``QuicCongestionControl`` hooks.  Those hooks
only say *which* packet was sent, acknowledged, lost or forgotten, and when; BBR
needs more (how much had been delivered when each packet left, whether the sender
was short of data), so the controller keeps its own per-packet record, keyed by the
identity of the ``QuicSentPacket`` object aioquic hands it (the record holds the
packet, so the identity cannot be reused while the record lives).

Pacing: aioquic's recovery sets its pacer to ``cwnd / srtt`` after every ACK and
every loss.  Once bound to that pacer (automatically when aioquic's recovery creates
the controller, or explicitly with :meth:`BbrCongestionControl.bind_pacer`), the
controller replaces the pacer's ``update_rate`` on that one instance, so every call
aioquic makes installs BBR's rate, ``pacing_gain * btl_bw``, instead; the controller
also pushes its rate into the pacer itself whenever the rate changes.  See
docs/congestion.md for the consequences.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery

__all__ = [
    "DRAIN_PACING_GAIN",
    "PROBE_BW_CWND_GAIN",
    "PROBE_BW_PACING_GAINS",
    "STARTUP_GAIN",
    "BbrCongestionControl",
    "BbrSettings",
    "BbrState",
    "register_bbr",
]

_logger = logging.getLogger(__name__)

STARTUP_GAIN: Final = 2 / math.log(2)
"""Pacing and window gain in STARTUP (about 2.885): doubles the sending rate per round."""

DRAIN_PACING_GAIN: Final = math.log(2) / 2
"""Pacing gain in DRAIN (about 0.347): empties the queue STARTUP built in one round."""

PROBE_BW_PACING_GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
"""The PROBE_BW cycle: probe up, drain what the probe queued, then cruise."""

PROBE_BW_CWND_GAIN: Final = 2.0
"""Window gain outside STARTUP/DRAIN: room for delayed and aggregated ACKs."""

_PROBE_RTT_CWND_PACKETS: Final = 4
_MIN_CWND_PACKETS: Final = 4
_QUANTUM_PACKETS: Final = 3  # window allowance for ACK spacing and pacer bursts
_PROBE_UP_EXTRA_PACKETS: Final = 2  # extra allowance while pacing above the estimate
_MAX_DRAIN_RTTS: Final = 4  # longest PROBE_BW 0.75 phase, in min_rtt
_CEILING_GROWTH: Final = 1.25  # how a loss-imposed ceiling is raised per clean cycle
_MICROSECOND: Final = 1e-6
_MAX_BURST_TIME: Final = 0.004  # seconds of sending the pacer may release at once


class BbrState(Enum):
    """The four BBR states."""

    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


@dataclass(frozen=True, kw_only=True)
class BbrSettings:
    """Tunables of :class:`BbrCongestionControl`; the defaults are BBRv1's.

    Attributes:
        loss_threshold: fraction of a round's packets (lost / (lost + acknowledged))
            above which the loss is taken as congestion.  Below it, loss changes
            neither the window nor the pacing rate.  0.2 tolerates heavy random loss;
            BBRv2/v3 use 0.02 (register a variant with :func:`register_bbr` for that).
        loss_min_packets: a loss window needs at least this many lost packets to
            count as congested, so one loss in a tiny window is not a 25% loss rate.
        loss_window_packets: the loss rate is measured over whole rounds, merged
            until they hold at least this many packets (lost plus acknowledged), so
            a small window's rate is not read from a handful of packets.
        loss_beta: on congestion, the window is capped at this fraction of the most
            data in flight during the congested round.
        bw_window_rounds: the max-bandwidth filter covers this many round trips.
        min_rtt_window: seconds a min-RTT sample stays valid before PROBE_RTT.
        probe_rtt_duration: seconds PROBE_RTT holds the window at 4 packets.
        full_bw_growth: STARTUP continues while the bandwidth grows by this factor
            per round ...
        full_bw_rounds: ... and ends after this many rounds without such growth.
        initial_window_packets: the window before any estimate exists.
        seed: seeds the choice of the first PROBE_BW phase (None: unpredictable).
    """

    loss_threshold: float = 0.2
    loss_min_packets: int = 3
    loss_window_packets: int = 40
    loss_beta: float = 0.7
    bw_window_rounds: int = 10
    min_rtt_window: float = 10.0
    probe_rtt_duration: float = 0.2
    full_bw_growth: float = 1.25
    full_bw_rounds: int = 3
    initial_window_packets: int = 10
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.loss_threshold <= 1.0:
            raise ValueError("loss_threshold must be in (0, 1]")
        if self.loss_min_packets < 1 or self.loss_window_packets < 1:
            raise ValueError("loss_min_packets and loss_window_packets must be at least 1")
        if not 0.0 < self.loss_beta < 1.0:
            raise ValueError("loss_beta must be in (0, 1)")
        if self.bw_window_rounds < 1:
            raise ValueError("bw_window_rounds must be at least 1")
        if self.min_rtt_window <= 0 or self.probe_rtt_duration <= 0:
            raise ValueError("min_rtt_window and probe_rtt_duration must be positive")
        if self.full_bw_growth <= 1.0 or self.full_bw_rounds < 1:
            raise ValueError("full_bw_growth must exceed 1 and full_bw_rounds be >= 1")
        if self.initial_window_packets < _MIN_CWND_PACKETS:
            raise ValueError(f"initial_window_packets must be at least {_MIN_CWND_PACKETS}")


class _MaxFilter:
    """Exact maximum of the samples taken over the last ``window`` rounds.

    A monotonic deque: entries have increasing rounds and strictly decreasing
    values, at most one per round, so it never holds more than ``window + 1``.
    """

    __slots__ = ("_entries", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._entries: deque[tuple[int, float]] = deque()

    def update(self, round_count: int, value: float) -> None:
        entries = self._entries
        while entries and entries[-1][1] <= value:
            entries.pop()
        if not entries or entries[-1][0] != round_count:
            entries.append((round_count, value))
        self.expire(round_count)

    def expire(self, round_count: int) -> None:
        entries = self._entries
        while entries and entries[0][0] <= round_count - self._window:
            entries.popleft()

    @property
    def value(self) -> float:
        return self._entries[0][1] if self._entries else 0.0


class _SentRecord:
    """What the controller remembers about one packet in flight."""

    __slots__ = (
        "app_limited",
        "delivered",
        "delivered_time",
        "first_sent_time",
        "packet",
        "sent_time",
        "size",
    )

    def __init__(
        self,
        packet: QuicSentPacket,
        sent_time: float,
        delivered: int,
        delivered_time: float,
        first_sent_time: float,
        app_limited: bool,
    ) -> None:
        self.packet = packet
        self.sent_time = sent_time
        self.size = packet.sent_bytes
        self.delivered = delivered
        self.delivered_time = delivered_time
        self.first_sent_time = first_sent_time
        self.app_limited = app_limited


class BbrCongestionControl(QuicCongestionControl):
    """BBR for aioquic: paces at ``pacing_gain * btl_bw``, caps the window at
    ``cwnd_gain * btl_bw * min_rtt`` and ignores loss below ``loss_threshold``."""

    def __init__(self, *, max_datagram_size: int, settings: BbrSettings | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.settings = settings if settings is not None else BbrSettings()
        self._mds = max_datagram_size
        self._min_cwnd = _MIN_CWND_PACKETS * max_datagram_size
        self._initial_cwnd = self.settings.initial_window_packets * max_datagram_size
        self.congestion_window = self._initial_cwnd
        self._rng = random.Random(self.settings.seed)

        # per-packet records
        self._records: dict[int, _SentRecord] = {}

        # delivery-rate sampling (connection side of the sampler)
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0  # delivered count that ends the app-limited bubble
        self._sent_any = False
        self._last_sent_time = 0.0
        self._room_after_last_send = False
        self.lost = 0

        # rounds
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_start = False

        # estimators
        self._bw_filter = _MaxFilter(self.settings.bw_window_rounds)
        self.min_rtt = math.inf
        self.min_rtt_stamp = 0.0
        self._min_rtt_expired = False

        # state machine
        self.state = BbrState.STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.cycle_index = 0
        self._cycle_stamp = 0.0
        self._phase_lost = False
        self._prior_cwnd = 0
        self._probe_rtt_done_stamp: float | None = None
        self._probe_rtt_round_done = False

        # loss accounting per round
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_acked = 0
        self._round_max_inflight = 0
        self._round_reacted = False
        self.inflight_ceiling: int | None = None
        self._cycle_clean = True
        self.loss_reactions = 0

        # pacing
        self.pacing_rate = 0.0  # bytes per second; 0 until the first RTT sample
        self._pacer: QuicPacketPacer | None = None
        self._recovery_ref: weakref.ref[QuicPacketRecovery] | None = None
        self._srtt_hint = 0.0

    # -- estimates ------------------------------------------------------------------

    @property
    def btl_bw(self) -> float:
        """The bottleneck bandwidth estimate, bytes per second (0 before any sample)."""
        return self._bw_filter.value

    def bdp(self, gain: float = 1.0) -> int:
        """``gain`` times the estimated bandwidth-delay product, in bytes."""
        bw = self._bw_filter.value
        if bw <= 0.0 or math.isinf(self.min_rtt):
            return int(gain * self._initial_cwnd)
        return int(gain * bw * self.min_rtt)

    def target_window(self, gain: float) -> int:
        """The window BBR aims for with ``gain``: BDP plus allowance for bursts."""
        target = self.bdp(gain) + _QUANTUM_PACKETS * self._mds
        if self.state is BbrState.PROBE_BW and self.pacing_gain > 1.0:
            target += _PROBE_UP_EXTRA_PACKETS * self._mds
        return target

    # -- aioquic hooks --------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        if self._pacer is None and self._recovery_ref is not None:
            self._bind_from_recovery()
        sent_time = packet.sent_time if packet.sent_time is not None else self._last_sent_time
        size = packet.sent_bytes
        app_limited = False
        if self.bytes_in_flight == 0:
            # Nothing in flight: the delivery clock restarts with this packet, and a
            # sender that let the pipe empty had nothing to send.
            self._first_sent_time = sent_time
            self._delivered_time = sent_time
            app_limited = self._sent_any
        elif (
            self._room_after_last_send and sent_time - self._last_sent_time > self._idle_allowance()
        ):
            # Window and pacer allowed another packet long ago, yet none was sent.
            app_limited = True
        if app_limited:
            self._app_limited_until = max(self.delivered + self.bytes_in_flight + size, 1)
        self._records[id(packet)] = _SentRecord(
            packet,
            sent_time,
            self.delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until != 0,
        )
        self.bytes_in_flight += size
        if self.bytes_in_flight > self._round_max_inflight:
            self._round_max_inflight = self.bytes_in_flight
        self._sent_any = True
        self._last_sent_time = sent_time
        self._room_after_last_send = self.congestion_window - self.bytes_in_flight >= self._mds

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        record = self._records.pop(id(packet), None)
        if record is None:  # not sent through this controller: only keep the count
            self.bytes_in_flight = max(0, self.bytes_in_flight - packet.sent_bytes)
            return
        prior_inflight = self.bytes_in_flight
        self.bytes_in_flight = max(0, prior_inflight - record.size)
        self.delivered += record.size
        self._delivered_time = now
        self._round_acked += record.size
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0

        self._update_min_rtt(now, now - record.sent_time)
        self._update_round(record)
        self._update_bandwidth(now, record)
        self._update_state(now, prior_inflight, record.app_limited)
        self._update_pacing_rate()
        self._update_window(record.size)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            record = self._records.pop(id(packet), None)
            size = record.size if record is not None else packet.sent_bytes
            self.bytes_in_flight = max(0, self.bytes_in_flight - size)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        prior_inflight = self.bytes_in_flight
        for packet in packets:
            record = self._records.pop(id(packet), None)
            size = record.size if record is not None else packet.sent_bytes
            self.bytes_in_flight = max(0, self.bytes_in_flight - size)
            self.lost += size
            self._round_lost += size
            self._round_lost_packets += 1
        self._phase_lost = True
        # Early verdict: even if everything still in flight arrives, this round's
        # loss rate is already above the threshold.
        total = self._round_lost + self._round_acked + self.bytes_in_flight
        if self._round_is_congested(total):
            self._react_to_congestion(max(prior_inflight, self._round_max_inflight))

    def on_persistent_congestion(self) -> None:
        # Every packet over several PTOs was lost: a blackout, not random loss.
        self._save_cwnd()
        self.congestion_window = self._min_cwnd
        self.loss_reactions += 1
        self._apply_pacing()

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        # aioquic's sample is ``now - sent_time`` of the largest packet just
        # acknowledged, which on_packet_acked has already fed to the min-RTT filter.
        pass

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(
            {
                "bbr_state": self.state.value,
                "btl_bw": int(self.btl_bw),
                "min_rtt": None if math.isinf(self.min_rtt) else self.min_rtt,
                "pacing_rate": int(self.pacing_rate),
            }
        )
        return data

    # -- pacing ---------------------------------------------------------------------

    def bind_pacer(self, pacer: QuicPacketPacer) -> None:
        """Make ``pacer`` follow BBR's pacing rate from now on.

        The pacer instance (not its class) becomes a :class:`_BbrPacer`: recovery's
        ``update_rate(cwnd, srtt)`` calls install BBR's rate instead of
        ``cwnd / srtt``, and the token bucket only lets a packet go once a whole
        packet's worth of time has accrued.
        """
        self._pacer = pacer
        self._recovery_ref = None
        pacer.__class__ = _BbrPacer
        assert isinstance(pacer, _BbrPacer)
        pacer.qf_controller = self
        self._apply_pacing()

    @property
    def owns_pacer(self) -> bool:
        """True once an aioquic pacer follows this controller's rate."""
        return self._pacer is not None

    def _bind_from_recovery(self) -> None:
        assert self._recovery_ref is not None
        recovery = self._recovery_ref()
        pacer = getattr(recovery, "_pacer", None)
        if isinstance(pacer, QuicPacketPacer):
            self.bind_pacer(pacer)
        else:
            self._recovery_ref = None
            _logger.warning("BBR could not find aioquic's pacer; pacing stays cwnd/srtt")

    def _pacer_update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        self._srtt_hint = smoothed_rtt
        self._apply_pacing()

    def _apply_pacing(self) -> None:
        pacer = self._pacer
        if pacer is None:
            return
        rate = self.pacing_rate
        if rate <= 0.0:
            if self._srtt_hint <= 0.0:
                return  # no RTT known yet: aioquic does not pace either
            rate = STARTUP_GAIN * self.congestion_window / self._srtt_hint
        packet_time = max(_MICROSECOND, min(self._mds / rate, 1.0))
        pacer.packet_time = packet_time
        # Burst allowance: up to 4 ms of sending (a quarter of the window at most),
        # so a late timer wakeup can catch up; never less than two packets.
        pacer.bucket_max = max(
            2 * packet_time, min(_MAX_BURST_TIME, self.congestion_window / 4 / rate)
        )
        if pacer.bucket_time > pacer.bucket_max:
            pacer.bucket_time = pacer.bucket_max

    def _update_pacing_rate(self) -> None:
        bw = self._bw_filter.value
        if bw <= 0.0:
            if self.pacing_rate <= 0.0 and not math.isinf(self.min_rtt):
                self.pacing_rate = STARTUP_GAIN * self.congestion_window / max(self.min_rtt, 1e-4)
                self._apply_pacing()
            return
        rate = self.pacing_gain * bw
        if self.pacing_rate <= 0.0 and not math.isinf(self.min_rtt):
            # the first rate: as fast as the initial window allows
            rate = max(rate, STARTUP_GAIN * self.congestion_window / max(self.min_rtt, 1e-4))
        if (self.filled_pipe or rate > self.pacing_rate) and rate != self.pacing_rate:
            self.pacing_rate = rate
            self._apply_pacing()

    def _idle_allowance(self) -> float:
        """How long a sender with room may stay silent before it counts as app-limited."""
        slack = 0.002 if math.isinf(self.min_rtt) else max(0.002, self.min_rtt / 4)
        if self.pacing_rate > 0.0:
            slack += 2 * self._mds / self.pacing_rate
        return slack

    # -- estimators -----------------------------------------------------------------

    def _update_min_rtt(self, now: float, rtt: float) -> None:
        rtt = max(rtt, _MICROSECOND)
        # (no sample yet is not an expired one: clocks need not start at zero)
        expired = (
            not math.isinf(self.min_rtt) and now > self.min_rtt_stamp + self.settings.min_rtt_window
        )
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self.min_rtt_stamp = now
        self._min_rtt_expired = expired

    def _update_round(self, record: _SentRecord) -> None:
        self._round_start = False
        if record.delivered >= self._next_round_delivered:
            self._next_round_delivered = self.delivered
            self.round_count += 1
            self._round_start = True
            self._close_loss_window()

    def _close_loss_window(self) -> None:
        """At a round boundary, judge the loss window if it is big enough."""
        accounted = (self._round_lost + self._round_acked) // self._mds
        if accounted < self.settings.loss_window_packets and not self._round_reacted:
            return  # too few packets for a loss rate: keep accumulating rounds
        if self._round_is_congested(self._round_lost + self._round_acked):
            self._react_to_congestion(self._round_max_inflight)
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_acked = 0
        self._round_max_inflight = self.bytes_in_flight
        self._round_reacted = False

    def _update_bandwidth(self, now: float, record: _SentRecord) -> None:
        send_elapsed = record.sent_time - record.first_sent_time
        ack_elapsed = now - record.delivered_time
        self._first_sent_time = record.sent_time
        interval = max(send_elapsed, ack_elapsed)
        if interval <= 0.0 or interval < self.min_rtt:
            return  # too short to be trusted (ACK compression)
        rate = (self.delivered - record.delivered) / interval
        if not record.app_limited or rate >= self._bw_filter.value:
            # An app-limited sample below the estimate says nothing about the path.
            self._bw_filter.update(self.round_count, rate)

    # -- congestion (loss above the threshold) ------------------------------------

    def _round_is_congested(self, total: int) -> bool:
        return (
            not self._round_reacted
            and self._round_lost_packets >= self.settings.loss_min_packets
            and total > 0
            and self._round_lost > self.settings.loss_threshold * total
        )

    def _react_to_congestion(self, inflight: int) -> None:
        self._round_reacted = True
        self._cycle_clean = False
        self.loss_reactions += 1
        ceiling = max(self._min_cwnd, int(self.settings.loss_beta * inflight))
        if self.inflight_ceiling is not None:
            ceiling = min(ceiling, self.inflight_ceiling)
        self.inflight_ceiling = ceiling
        self.congestion_window = max(self._min_cwnd, min(self.congestion_window, ceiling))
        if not self.filled_pipe:
            self.filled_pipe = True  # loss this heavy means the pipe is full
            if self.state is BbrState.STARTUP:
                self._enter_drain()
        self._apply_pacing()

    # -- state machine ----------------------------------------------------------------

    def _update_state(self, now: float, prior_inflight: int, app_limited: bool) -> None:
        if (
            self._round_start
            and self.state is BbrState.STARTUP
            and not self.filled_pipe
            and not app_limited
        ):
            bw = self._bw_filter.value
            if bw >= self._full_bw * self.settings.full_bw_growth:
                self._full_bw = bw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= self.settings.full_bw_rounds:
                    self.filled_pipe = True
        if self.state is BbrState.STARTUP and self.filled_pipe:
            self._enter_drain()
        if self.state is BbrState.DRAIN and self.bytes_in_flight <= self.target_window(1.0):
            self._enter_probe_bw(now)
        if self.state is BbrState.PROBE_BW:
            self._update_cycle_phase(now, prior_inflight)
        self._update_probe_rtt(now)

    def _enter_drain(self) -> None:
        self.state = BbrState.DRAIN
        self.pacing_gain = DRAIN_PACING_GAIN
        self.cwnd_gain = STARTUP_GAIN

    def _enter_probe_bw(self, now: float) -> None:
        self.state = BbrState.PROBE_BW
        self.cwnd_gain = PROBE_BW_CWND_GAIN
        # any phase but the 0.75 one, which only drains what a 1.25 phase queued
        self.cycle_index = self._rng.choice((0, 2, 3, 4, 5, 6, 7))
        self._start_phase(now)

    def _start_phase(self, now: float) -> None:
        self.pacing_gain = PROBE_BW_PACING_GAINS[self.cycle_index]
        self._cycle_stamp = now
        self._phase_lost = False
        if self.cycle_index == 0:
            # A probe starts: a whole cycle without congestion raises a loss ceiling.
            if self._cycle_clean and self.inflight_ceiling is not None:
                raised = int(self.inflight_ceiling * _CEILING_GROWTH)
                if raised >= self.target_window(self.cwnd_gain):
                    self.inflight_ceiling = None
                else:
                    self.inflight_ceiling = raised
            self._cycle_clean = True

    def _update_cycle_phase(self, now: float, prior_inflight: int) -> None:
        full_length = now - self._cycle_stamp > self.min_rtt
        gain = self.pacing_gain
        if gain > 1.0:
            # ... unless the window (a loss ceiling) keeps the inflight below target
            reachable = min(self.target_window(gain), self.congestion_window - self._mds)
            advance = full_length and (self._phase_lost or prior_inflight >= reachable)
        elif gain < 1.0:
            # Drain until the flight is down to one BDP, not just for one min_rtt:
            # a slightly high estimate (noisy samples through a max filter) would
            # otherwise leave a queue that grows from cycle to cycle.  Bounded, so
            # ACK aggregation that keeps the flight above a BDP cannot stall the cycle.
            drained = prior_inflight <= self.target_window(1.0)
            overdue = now - self._cycle_stamp > _MAX_DRAIN_RTTS * self.min_rtt
            advance = drained or overdue
        else:
            advance = full_length
        if advance:
            self.cycle_index = (self.cycle_index + 1) % len(PROBE_BW_PACING_GAINS)
            self._start_phase(now)

    def _save_cwnd(self) -> None:
        if self.state is BbrState.PROBE_RTT:
            self._prior_cwnd = max(self._prior_cwnd, self.congestion_window)
        else:
            self._prior_cwnd = self.congestion_window

    def _update_probe_rtt(self, now: float) -> None:
        if self._min_rtt_expired and self.state is not BbrState.PROBE_RTT:
            self._save_cwnd()
            self.state = BbrState.PROBE_RTT
            self.pacing_gain = 1.0
            self.cwnd_gain = 1.0
            self._probe_rtt_done_stamp = None
        self._min_rtt_expired = False
        if self.state is not BbrState.PROBE_RTT:
            return
        if self._probe_rtt_done_stamp is None:
            if self.bytes_in_flight <= _PROBE_RTT_CWND_PACKETS * self._mds:
                self._probe_rtt_done_stamp = now + self.settings.probe_rtt_duration
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.delivered
            return
        if self._round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done_stamp:
            self.min_rtt_stamp = now
            self.congestion_window = max(self.congestion_window, self._prior_cwnd)
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self.state = BbrState.STARTUP
                self.pacing_gain = STARTUP_GAIN
                self.cwnd_gain = STARTUP_GAIN

    def _update_window(self, acked: int) -> None:
        if self.state is BbrState.PROBE_RTT:
            self.congestion_window = min(
                self.congestion_window, _PROBE_RTT_CWND_PACKETS * self._mds
            )
            return
        target = self.target_window(self.cwnd_gain)
        if self.inflight_ceiling is not None:
            target = min(target, self.inflight_ceiling)
        cwnd = self.congestion_window
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self.delivered < self._initial_cwnd:
            cwnd += acked
        self.congestion_window = max(cwnd, self._min_cwnd)


class _BbrPacer(QuicPacketPacer):
    """aioquic's pacer, with its rate owned by a :class:`BbrCongestionControl`.

    Instances are only made by switching an existing pacer's class in
    :meth:`BbrCongestionControl.bind_pacer`.  aioquic's own bucket lets a packet go
    as soon as *any* time has accrued, so every incoming ACK releases a packet and
    a pacing rate below the ACK rate (DRAIN, the 0.75 phase) would never take
    effect; here a packet needs a full ``packet_time`` of credit.
    """

    qf_controller: BbrCongestionControl

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        self.qf_controller._pacer_update_rate(congestion_window, smoothed_rtt)

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]
        packet_time = self.packet_time
        if packet_time is None:
            return None
        self.update_bucket(now=now)
        if self.bucket_time >= packet_time * 0.999:  # float slack
            return None
        return now + packet_time - self.bucket_time

    def update_after_send(self, now: float) -> None:
        packet_time = self.packet_time
        if packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(0.0, self.bucket_time - packet_time)


def _calling_recovery() -> QuicPacketRecovery | None:
    """The aioquic recovery object whose constructor is creating a controller.

    aioquic's factory call passes only ``max_datagram_size``; the recovery object is
    found on the call stack (``QuicPacketRecovery.__init__`` -> ``create_congestion_
    control`` -> factory), a few frames up at most.
    """
    frame = sys._getframe(1)
    for _ in range(8):
        if frame.f_code.co_name == "__init__":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, QuicPacketRecovery):
                return candidate
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None


class _BbrFactory:
    """The factory aioquic's registry calls: ``factory(max_datagram_size=...)``."""

    def __init__(self, settings: BbrSettings) -> None:
        self.settings = settings

    def __call__(self, *, max_datagram_size: int) -> BbrCongestionControl:
        controller = BbrCongestionControl(
            max_datagram_size=max_datagram_size, settings=self.settings
        )
        recovery = _calling_recovery()
        if recovery is not None:
            # The pacer is created right after the controller: bind at first send.
            controller._recovery_ref = weakref.ref(recovery)
        else:
            _logger.debug("BBR created outside aioquic's recovery: call bind_pacer()")
        return controller


def register_bbr(name: str = "bbr", settings: BbrSettings | None = None) -> None:
    """Register BBR with aioquic under ``name`` (selectable as ``congestion_control``).

    Register variants with other settings under other names, e.g.
    ``register_bbr("bbr-strict", BbrSettings(loss_threshold=0.02))``.
    """
    register_congestion_control(
        name, _BbrFactory(settings if settings is not None else BbrSettings())
    )
