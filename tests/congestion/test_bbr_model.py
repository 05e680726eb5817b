"""BBR's state machine and estimators, driven through the simulated bottleneck.

Every run is deterministic (seeded loss, event-driven time), so the numbers below
are exact properties of the controller, asserted with tolerances that a broken
estimator or transition would exceed.
"""

from __future__ import annotations

import itertools
import math

import pytest
from aioquic.quic.congestion.reno import RenoCongestionControl

from quicframe.congestion import (
    DRAIN_PACING_GAIN,
    PROBE_BW_PACING_GAINS,
    STARTUP_GAIN,
    BbrCongestionControl,
    BbrSettings,
    BbrState,
)

from ._sim import MDS, App, Path, Simulation

RATE = 600_000.0  # bytes per second (4.8 Mbit/s)
ONE_WAY = 0.02


def bbr(**settings: float | int | None) -> BbrCongestionControl:
    merged: dict[str, float | int | None] = {"seed": 1}
    merged.update(settings)
    return BbrCongestionControl(
        max_datagram_size=MDS,
        settings=BbrSettings(**merged),  # type: ignore[arg-type]
    )


def first_time(sim: Simulation, state: BbrState) -> float:
    return next(t for t, s in sim.states if s == state.value)


def test_startup_drain_probe_bw_on_full_pipe() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    gains: list[tuple[str, float]] = []
    sim.observers.append(lambda s: gains.append((cc.state.value, cc.pacing_gain)))
    sim.run(2.0)

    assert [s for _, s in sim.states] == ["startup", "drain", "probe_bw"]
    # 10 packets grow to the 21-packet BDP in about 2 rounds, then 3 rounds without
    # 25% growth declare the pipe full: about 5 round trips of ~0.05-0.1 s.
    t_drain = first_time(sim, BbrState.DRAIN)
    assert 0.2 < t_drain < 0.7
    assert cc.filled_pipe
    # DRAIN empties the STARTUP queue within a few round trips.
    t_probe_bw = first_time(sim, BbrState.PROBE_BW)
    assert 0.0 < t_probe_bw - t_drain < 4 * 0.126
    # the gains of each state
    assert all(g == pytest.approx(2 / math.log(2)) for s, g in gains if s == "startup")
    assert all(g == pytest.approx(math.log(2) / 2) for s, g in gains if s == "drain")
    assert pytest.approx(2.8854, abs=1e-4) == STARTUP_GAIN
    assert pytest.approx(0.3466, abs=1e-4) == DRAIN_PACING_GAIN
    assert {g for s, g in gains if s == "probe_bw"} <= set(PROBE_BW_PACING_GAINS)


def test_clock_that_does_not_start_at_zero() -> None:
    # trio's clock starts at an arbitrary offset: the first RTT sample is not an
    # expired min-RTT, so the connection starts in STARTUP, not in PROBE_RTT
    # (where no bandwidth growth would wrongly declare the pipe full).
    start = 12_345.0
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path, start=start)
    sim.run(start + 2.0)
    assert [s for _, s in sim.states] == ["startup", "drain", "probe_bw"]
    assert 0.2 < first_time(sim, BbrState.DRAIN) - start < 0.7
    assert cc.btl_bw == pytest.approx(path.rate, rel=0.02)


def test_startup_continues_while_bandwidth_grows() -> None:
    # A large BDP (about 830 packets) takes many doublings: STARTUP must still be
    # running after 3 round trips, since every round grew the estimate by > 25%.
    path = Path(rate=10_000_000.0, one_way_delay=0.05)
    cc = bbr()
    sim = Simulation(cc, path)
    sim.run(0.35)
    assert cc.state is BbrState.STARTUP
    assert cc.round_count >= 3
    assert cc.btl_bw < 0.8 * path.rate


@pytest.mark.parametrize("rate", [RATE, 2_400_000.0])
def test_bandwidth_estimate_converges_to_delivery_rate(rate: float) -> None:
    path = Path(rate=rate, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    sim.run(3.0)
    assert cc.btl_bw == pytest.approx(rate, rel=0.02)
    # and it is a delivery rate: what the receiver got after startup matches
    delivered = sim.delivered_bytes
    sim.run(5.0)
    assert (sim.delivered_bytes - delivered) / 2.0 == pytest.approx(rate, rel=0.05)


def test_min_rtt_estimate_is_the_path_minimum() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    sim.run(3.0)
    assert cc.min_rtt == pytest.approx(path.base_rtt, abs=1e-4)  # 42 ms
    # the samples themselves were often higher (queueing): the filter keeps the min
    assert max(rtt for _, rtt in sim.rtt_samples) > 1.5 * path.base_rtt


def test_window_and_pacing_rate_in_probe_bw() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    seen: dict[float, list[tuple[float, float]]] = {}

    def record(s: Simulation) -> None:
        if cc.state is BbrState.PROBE_BW:
            seen.setdefault(cc.pacing_gain, []).append((cc.pacing_rate, cc.btl_bw))

    sim.observers.append(record)
    sim.run(4.0)
    assert cc.state is BbrState.PROBE_BW
    bdp = path.rate * path.base_rtt  # 25,200 bytes
    expected = 2 * bdp + 3 * MDS
    if cc.pacing_gain > 1.0:
        expected += 2 * MDS
    assert cc.congestion_window == pytest.approx(expected, rel=0.02)
    # each phase paces at gain x btl_bw
    assert set(seen) == set(PROBE_BW_PACING_GAINS)
    for gain, samples in seen.items():
        for rate, bw in samples:
            assert rate == pytest.approx(gain * bw, rel=1e-9)
    # and the aioquic pacer runs at BBR's rate, not at aioquic's cwnd / srtt
    assert sim.srtt is not None
    sim.pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=sim.srtt)
    assert sim.pacer.packet_time == pytest.approx(MDS / cc.pacing_rate, rel=1e-9)
    assert sim.pacer.packet_time != pytest.approx(MDS * sim.srtt / cc.congestion_window, rel=0.1)


def test_probe_bw_gain_cycle() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    phases: list[tuple[float, int]] = []

    def record(s: Simulation) -> None:
        if cc.state is BbrState.PROBE_BW and (not phases or phases[-1][1] != cc.cycle_index):
            phases.append((s.now, cc.cycle_index))

    sim.observers.append(record)
    sim.run(4.0)
    indexes = [i for _, i in phases]
    assert indexes[0] != 1  # never start in the 0.75 phase
    for a, b in itertools.pairwise(indexes):
        assert b == (a + 1) % 8
    starts = [t for t, i in phases if i == 0]
    assert len(starts) >= 3
    for start, next_start in itertools.pairwise(starts):
        # eight phases of at least one min RTT each, not much more
        assert 8 * cc.min_rtt <= next_start - start <= 8 * cc.min_rtt * 1.6


def test_probe_rtt_after_min_rtt_expiry_and_back() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    in_probe_rtt: list[tuple[float, int, int]] = []
    cwnd_before: list[int] = []

    def record(s: Simulation) -> None:
        if cc.state is BbrState.PROBE_RTT:
            in_probe_rtt.append((s.now, cc.congestion_window, cc.bytes_in_flight))
        elif not in_probe_rtt:
            cwnd_before[:] = [cc.congestion_window]

    sim.observers.append(record)
    stamp_before = 0.0
    sim.run(9.0)
    stamp_before = cc.min_rtt_stamp
    assert cc.state is BbrState.PROBE_BW
    sim.run(12.0)

    t_in = in_probe_rtt[0][0]
    assert [s for _, s in sim.states][-2:] == ["probe_rtt", "probe_bw"]
    t_out = sim.states[-1][0]
    assert stamp_before + 10.0 <= t_in <= stamp_before + 10.5
    # the window is 4 packets throughout
    assert all(cwnd == 4 * MDS for _, cwnd, _ in in_probe_rtt)
    # ... and held for at least 200 ms once the flight drained to 4 packets
    drained = next(t for t, _, inflight in in_probe_rtt if inflight <= 4 * MDS)
    assert t_out - drained >= 0.2
    assert t_out - t_in <= 0.2 + 4 * path.base_rtt
    assert cc.min_rtt_stamp >= t_out - 0.01
    assert cc.congestion_window >= 0.9 * cwnd_before[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_loss_under_threshold_keeps_window(seed: int) -> None:
    clean = bbr()
    Simulation(clean, Path(rate=RATE, one_way_delay=ONE_WAY)).run(6.0)

    cc = bbr()
    path = Path(rate=RATE, one_way_delay=ONE_WAY, loss=0.03, seed=seed)
    sim = Simulation(cc, path)
    windows: list[int] = []
    sim.observers.append(
        lambda s: windows.append(cc.congestion_window) if cc.state is BbrState.PROBE_BW else None
    )
    sim.run(6.0)
    assert sim.dropped_packets > 80  # the trace really is lossy (3% of ~3000)
    assert cc.loss_reactions == 0
    assert cc.inflight_ceiling is None
    assert cc.btl_bw == pytest.approx(path.rate, rel=0.03)
    # the window never dropped below the loss-free PROBE_BW window
    assert min(windows) >= 0.95 * (2 * path.bdp + 3 * MDS)
    assert cc.congestion_window == pytest.approx(clean.congestion_window, rel=0.05)
    # goodput: close to the link rate minus the loss
    assert sim.delivered_bytes / 6.0 >= 0.9 * path.rate * (1 - path.loss)

    # reno on the same trace halves its window at each loss
    reno = RenoCongestionControl(max_datagram_size=MDS)
    reno_sim = Simulation(reno, Path(rate=RATE, one_way_delay=ONE_WAY, loss=0.03, seed=seed))
    reno_sim.run(6.0)
    assert reno_sim.delivered_bytes < 0.75 * sim.delivered_bytes


def test_loss_above_threshold_cuts_the_window() -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    sim.run(3.0)
    assert cc.state is BbrState.PROBE_BW
    assert cc.loss_reactions == 0
    cwnd_before = cc.congestion_window
    max_inflight = 0
    cut: list[tuple[float, int]] = []

    def record(s: Simulation) -> None:
        nonlocal max_inflight
        if cc.loss_reactions == 0:
            max_inflight = max(max_inflight, cc.bytes_in_flight)
        elif not cut:
            cut.append((s.now, cc.congestion_window))

    sim.observers.append(record)
    path.loss = 0.4  # the path turns congested: 40% of each round is lost
    sim.run(3.5)
    assert cut, "40% loss per round must be taken as congestion"
    t_cut, cwnd_cut = cut[0]
    assert t_cut - 3.0 < 4 * path.base_rtt  # within a few rounds
    assert cwnd_cut <= 0.7 * max_inflight + MDS
    assert cwnd_cut < 0.75 * cwnd_before
    assert cc.inflight_ceiling is not None
    assert cc.congestion_window <= cc.inflight_ceiling


def test_heavy_loss_ends_startup() -> None:
    clean = bbr()
    clean_sim = Simulation(clean, Path(rate=RATE, one_way_delay=ONE_WAY))
    clean_sim.run(1.0)
    lossy = bbr()
    sim = Simulation(lossy, Path(rate=RATE, one_way_delay=ONE_WAY, loss=0.4))
    sim.run(1.0)
    assert lossy.loss_reactions >= 1
    assert first_time(sim, BbrState.DRAIN) < 0.5 * first_time(clean_sim, BbrState.DRAIN)


def test_loss_threshold_is_a_setting() -> None:
    # A BBRv2-like 2% threshold reads 3% random loss as congestion.
    path = Path(rate=RATE, one_way_delay=ONE_WAY, loss=0.03)
    strict = bbr(loss_threshold=0.02)
    sim = Simulation(strict, path)
    sim.run(6.0)
    assert strict.loss_reactions >= 3
    assert strict.inflight_ceiling is not None
    assert strict.inflight_ceiling < path.bdp


@pytest.mark.parametrize(
    "interval",
    [
        pytest.param(0.06, id="idle-between-packets"),
        pytest.param(0.02, id="gaps-with-packets-in-flight"),
    ],
)
def test_app_limited_samples_do_not_lower_bandwidth(interval: float) -> None:
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path, app=App(sparse_from=2.0, interval=interval))
    sim.run(2.0)
    assert cc.btl_bw == pytest.approx(path.rate, rel=0.02)
    rounds = cc.round_count
    sim.run(5.0)
    # far more rounds than the 10-round filter window went by, all app-limited at
    # one packet per interval (20-60 KB/s)
    assert cc.round_count - rounds > 30
    assert cc.btl_bw == pytest.approx(path.rate, rel=0.02)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="loss_threshold"):
        BbrSettings(loss_threshold=0.0)
    with pytest.raises(ValueError, match="loss_beta"):
        BbrSettings(loss_beta=1.5)
    with pytest.raises(ValueError, match="full_bw_growth"):
        BbrSettings(full_bw_growth=1.0)


def test_drain_phase_empties_the_queue_of_a_high_estimate() -> None:
    # Feed the filter a sample 4% above the link every round (as jittery ACK
    # timing does): cruising at that estimate builds a queue, and each 0.75 phase
    # must drain it back to about one BDP before the cycle goes on.  (With BBRv1's
    # one-min_rtt drain, the median RTT climbs to 2.2x the base RTT here.)
    path = Path(rate=RATE, one_way_delay=ONE_WAY)
    cc = bbr()
    sim = Simulation(cc, path)
    sim.run(2.0)
    assert cc.state is BbrState.PROBE_BW

    def inflate(s: Simulation) -> None:
        cc._bw_filter.update(cc.round_count, 1.04 * path.rate)

    sim.observers.append(inflate)
    drain_ends: list[tuple[float, int]] = []  # (time, least flight of the phase)
    least = [0]
    previous = [cc.cycle_index]

    def record(s: Simulation) -> None:
        if cc.cycle_index == 1:
            least[0] = cc.bytes_in_flight if previous[0] != 1 else min(least[0], cc.bytes_in_flight)
        elif previous[0] == 1:
            drain_ends.append((s.now, least[0]))
        previous[0] = cc.cycle_index

    sim.observers.append(record)
    sim.run(8.0)
    assert cc.btl_bw == pytest.approx(1.04 * path.rate)
    assert len(drain_ends) >= 10
    bdp = path.rate * path.base_rtt
    for _, inflight in drain_ends:
        assert inflight <= 1.04 * bdp + 5 * MDS
    # the queue does not build up across cycles: late RTTs are like early ones
    late = [rtt for t, rtt in sim.rtt_samples if t > 6.0]
    assert sorted(late)[len(late) // 2] < 1.45 * path.base_rtt
