"""BBR inside aioquic's own machinery: the registry, the recovery object, the pacer."""

from __future__ import annotations

import math

import pytest
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery, QuicPacketSpace

from quicframe import ClientConfig
from quicframe.congestion import BbrCongestionControl, BbrSettings, BbrState, register_bbr

from ._sim import MDS, make_packet


def new_recovery(algorithm: str = "bbr") -> tuple[QuicPacketRecovery, QuicPacketSpace]:
    recovery = QuicPacketRecovery(
        congestion_control_algorithm=algorithm,
        initial_rtt=0.1,
        max_datagram_size=MDS,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    space = QuicPacketSpace(is_application_data=True)
    recovery.spaces = [space]
    return recovery, space


def test_registered_under_bbr() -> None:
    controller = create_congestion_control("bbr", max_datagram_size=MDS)
    assert isinstance(controller, BbrCongestionControl)
    assert controller.settings == BbrSettings()
    assert controller.congestion_window == 10 * MDS


def test_variant_registered_with_other_settings() -> None:
    register_bbr("bbr-test-strict", BbrSettings(loss_threshold=0.02))
    controller = create_congestion_control("bbr-test-strict", max_datagram_size=MDS)
    assert isinstance(controller, BbrCongestionControl)
    assert controller.settings.loss_threshold == 0.02


def test_recovery_pacer_follows_bbr_through_acks_and_losses() -> None:
    recovery, space = new_recovery()
    cc = recovery._cc
    assert isinstance(cc, BbrCongestionControl)
    owned_at_creation = cc.owns_pacer
    assert not owned_at_creation  # the pacer does not exist yet when the controller is made

    # 20 packets, 1 ms apart; the first 16 are acknowledged 50 ms after sending,
    # packets 16..19 then follow, of which 16 is lost (acks of 17..19 reveal it).
    now = 0.0
    for number in range(20):
        now = number * 0.001
        recovery.on_packet_sent(packet=make_packet(number, now), space=space)
    assert cc.owns_pacer
    assert cc.bytes_in_flight == 20 * MDS
    for number in range(16):
        now = number * 0.001 + 0.05
        recovery.on_ack_received(
            ack_rangeset=RangeSet([range(number, number + 1)]), ack_delay=0.0, now=now, space=space
        )
    assert cc.min_rtt == pytest.approx(0.05)
    assert cc.btl_bw > 0
    pacer = recovery._pacer
    assert pacer.packet_time == pytest.approx(MDS / cc.pacing_rate, rel=1e-9)
    # aioquic's own formula would give MDS * srtt / cwnd
    aioquic_time = MDS * recovery._rtt_smoothed / cc.congestion_window
    assert pacer.packet_time != pytest.approx(aioquic_time, rel=0.05)

    rate_before = cc.pacing_rate
    window_before = cc.congestion_window
    now = 0.1
    recovery.on_ack_received(
        ack_rangeset=RangeSet([range(17, 20)]), ack_delay=0.0, now=now, space=space
    )
    assert 16 not in space.sent_packets  # declared lost by aioquic
    assert cc.lost == MDS
    assert cc.bytes_in_flight == 0
    # one loss is far below the threshold: the window did not shrink, and the
    # pacer (reset by recovery after the loss) still runs at BBR's rate
    assert cc.congestion_window >= window_before
    assert cc.pacing_rate >= rate_before
    assert pacer.packet_time == pytest.approx(MDS / cc.pacing_rate, rel=1e-9)


def test_pacer_needs_a_whole_packet_of_credit() -> None:
    cc = BbrCongestionControl(max_datagram_size=MDS)
    pacer = QuicPacketPacer(max_datagram_size=MDS)
    cc.bind_pacer(pacer)
    cc.pacing_rate = 120_000.0  # 10 ms per packet
    cc._apply_pacing()
    assert pacer.packet_time == pytest.approx(0.01)
    assert pacer.bucket_max == pytest.approx(0.02)  # two packets
    assert pacer.next_send_time(1.0) is None
    pacer.update_after_send(1.0)
    pacer.update_after_send(1.0)
    # an ACK arriving 1 ms later does not release a packet (aioquic's would)
    assert pacer.next_send_time(1.001) == pytest.approx(1.01)
    assert pacer.next_send_time(1.01) is None


def test_persistent_congestion_collapses_the_window() -> None:
    cc = BbrCongestionControl(max_datagram_size=MDS)
    cc.congestion_window = 100 * MDS
    cc.on_persistent_congestion()
    assert cc.congestion_window == 4 * MDS
    assert cc.loss_reactions == 1


def test_log_data_describes_the_model() -> None:
    cc = BbrCongestionControl(max_datagram_size=MDS)
    data = cc.get_log_data()
    assert data["bbr_state"] == BbrState.STARTUP.value
    assert data["cwnd"] == 10 * MDS
    assert data["min_rtt"] is None
    assert not math.isinf(cc.bdp())


def test_client_config_selects_bbr() -> None:
    config = ClientConfig(congestion_control="bbr", insecure=True)
    configuration = config.to_quic_configuration(server_name="localhost")
    assert configuration.congestion_control_algorithm == "bbr"
    connection = QuicConnection(configuration=configuration)
    cc = connection._loss._cc
    assert isinstance(cc, BbrCongestionControl)
    connection.connect(("127.0.0.1", 4433), now=0.0)
    assert connection.datagrams_to_send(now=0.0)  # the INITIAL went through BBR
    assert cc.owns_pacer
    assert cc.bytes_in_flight > 0
