"""The pub/sub vectors of docs/PROTOCOL.md section 11.9, reproduced byte for byte.

``tests/wire/test_vectors.py`` reads every vector of the document; it leaves the
ones named ``pubsub-*`` to this file and checks that :data:`PUBSUB_VECTORS` covers
exactly those names, so every vector stays checked.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quicframe.errors import ErrorCode
from quicframe.pubsub import (
    ClientSubscription,
    Gap,
    HistoryGap,
    SnapshotMarker,
    Subscribe,
    Subscribed,
    Unsubscribe,
    decode_control,
    decode_datagram,
    encode_control,
    encode_datagram,
)
from quicframe.session import encode_error
from quicframe.wire import MARKET_TICK_CODEC, Frame, FrameType, decode_frame

from ..wire.test_vectors import TICK, VECTORS

SUBSCRIBE = Subscribe("md.ticks", from_seq=1001, policy="conflate")
SUBSCRIBED = Subscribed(
    "md.ticks", 0x10, head=1500, first_seq=1001, policy="conflate", queue_size=4096
)
SNAPSHOT_BEGIN = SnapshotMarker("begin", 1500, 2)
GAP = Gap(5, 20, "not in the history")
UNSUBSCRIBE = Unsubscribe()
GAP_DETAILS = {"topic": "md.ticks", "first_missing": 5, "last_missing": 20}


def _control_check(frame_type: int, value: object) -> Callable[[Frame], None]:
    def check(frame: Frame) -> None:
        assert (frame.type, frame.opcode) == (frame_type, 0)
        assert not frame.metadata
        assert decode_control(frame.type, frame.body) == value

    return check


def _check_error_gap(frame: Frame) -> None:
    from quicframe.session import error_from_frame

    error = HistoryGap.from_remote(error_from_frame(frame))
    assert isinstance(error, HistoryGap)
    assert (error.topic, error.first_missing, error.last_missing) == ("md.ticks", 5, 20)
    assert error.code == ErrorCode.SEQUENCE_GAP


def _check_datagram(frame: Frame) -> None:
    assert (frame.type, frame.opcode) == (FrameType.MARKET_TICK, 7)
    assert MARKET_TICK_CODEC.decode(frame.body) == TICK
    assert decode_datagram(VECTORS["pubsub-datagram-tick"], MARKET_TICK_CODEC) == (7, TICK)


# name -> (encoder, decoder check)
PUBSUB_VECTORS: dict[str, tuple[Callable[[], bytes], Callable[[Frame], None]]] = {
    "pubsub-subscribe": (
        lambda: encode_control(SUBSCRIBE),
        _control_check(FrameType.SUBSCRIBE, SUBSCRIBE),
    ),
    "pubsub-subscribed": (
        lambda: encode_control(SUBSCRIBED),
        _control_check(FrameType.SUBSCRIBED, SUBSCRIBED),
    ),
    "pubsub-snapshot-begin": (
        lambda: encode_control(SNAPSHOT_BEGIN),
        _control_check(FrameType.SNAPSHOT, SNAPSHOT_BEGIN),
    ),
    "pubsub-gap": (lambda: encode_control(GAP), _control_check(FrameType.GAP, GAP)),
    "pubsub-unsubscribe": (
        lambda: encode_control(UNSUBSCRIBE),
        _control_check(FrameType.UNSUBSCRIBE, UNSUBSCRIBE),
    ),
    "pubsub-error-gap": (
        lambda: encode_error(0, ErrorCode.SEQUENCE_GAP, "gone", GAP_DETAILS),
        _check_error_gap,
    ),
    "pubsub-datagram-tick": (
        lambda: encode_datagram(MARKET_TICK_CODEC.encode_frame(TICK), 7),
        _check_datagram,
    ),
}


def test_every_pubsub_vector_is_checked_here() -> None:
    assert {name for name in VECTORS if name.startswith("pubsub-")} == set(PUBSUB_VECTORS)


@pytest.mark.parametrize("name", sorted(PUBSUB_VECTORS))
def test_pubsub_vector_encodes_byte_for_byte(name: str) -> None:
    encode, _ = PUBSUB_VECTORS[name]
    assert encode().hex(" ") == VECTORS[name].hex(" ")


@pytest.mark.parametrize("name", sorted(PUBSUB_VECTORS))
def test_pubsub_vector_decodes(name: str) -> None:
    _, check = PUBSUB_VECTORS[name]
    check(decode_frame(VECTORS[name]))


def test_client_writes_the_subscribe_vector_and_reads_the_replies() -> None:
    client: ClientSubscription[object] = ClientSubscription(
        "md.ticks", from_seq=1001, policy="conflate"
    )
    assert client.subscribe_frame() == VECTORS["pubsub-subscribe"]
    assert client.receive_data(VECTORS["pubsub-subscribed"], 0) == []
    assert client.subscribed == SUBSCRIBED
    assert client.receive_data(VECTORS["pubsub-gap"], 0) == []
    assert client.gap_notices == [GAP]
    assert client.unsubscribe_frame() == VECTORS["pubsub-unsubscribe"]
    client.receive_data(VECTORS["pubsub-error-gap"], 0)
    assert isinstance(client.error, HistoryGap)
