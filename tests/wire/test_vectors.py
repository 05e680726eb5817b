"""Every hex test vector in docs/PROTOCOL.md, reproduced byte for byte.

The vectors are read from the document itself, so the document and the code cannot
drift apart: a vector added to the document without a check here fails
``test_every_vector_is_checked``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from quicframe.wire import (
    MARKET_TICK_CODEC,
    ORDER_ACK_CODEC,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    MarketTick,
    Metadata,
    MsgpackCodec,
    OrderAck,
    OrderStatus,
    Side,
    SlaClass,
    TickKind,
    TlvEntry,
    default_registry,
    encode_frame,
)
from quicframe.wire._errors import RemoteProtocolError

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_VECTOR = re.compile(r"<!-- vector: ([a-z0-9-]+) -->\s*```hex\n(.*?)```", re.DOTALL)


def _vectors() -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name, text in _VECTOR.findall(PROTOCOL.read_text(encoding="utf-8")):
        assert name not in found, f"vector {name} appears twice"
        found[name] = bytes.fromhex("".join(text.split()))
    return found


VECTORS = _vectors()
PLAIN = MsgpackCodec()
T0 = 1_700_000_000_000_000_000

TICK = MarketTick(
    seq=1,
    event_time_ns=T0,
    send_time_ns=T0 + 1_000,
    price=101_250_000_000,
    quantity=500,
    instrument_id=42,
    side=Side.BUY,
    kind=TickKind.TRADE,
)
ACK = OrderAck(
    seq=7,
    order_id=123_456_789,
    client_order_id=42,
    event_time_ns=T0,
    send_time_ns=T0 + 2_000,
    price=-1_500_000_000,
    quantity=1_000,
    filled_quantity=250,
    instrument_id=42,
    side=Side.SELL,
    status=OrderStatus.PARTIALLY_FILLED,
)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# Vectors that encode deterministically: what our encoder must produce.
ENCODERS: dict[str, Callable[[], bytes]] = {
    "ping": lambda: encode_frame(FrameType.PING, bytes(range(8))),
    "request-with-metadata": lambda: encode_frame(
        FrameType.REQUEST,
        PLAIN.encode({"user_id": 7, "token": "t"}),
        opcode=0x0101,
        metadata=Metadata.build(
            request_id="req-1", deadline_budget_ns=250_000_000, sla_class=SlaClass.GOLD
        ),
    ),
    "response-unknown-key": lambda: encode_frame(
        FrameType.RESPONSE,
        PLAIN.encode({"ok": True}),
        opcode=0x0101,
        metadata=Metadata.build(trace_context=TRACE, extra=[TlvEntry(0x1234, 9, b"abc")]),
    ),
    "market-tick": lambda: default_registry.encode(TICK),
    "order-ack": lambda: default_registry.encode(ACK),
    "error-not-found": lambda: encode_frame(
        FrameType.ERROR,
        PLAIN.encode({"code": 0x0204, "message": "unknown opcode 0x0999", "details": {}}),
        opcode=0x0999,
    ),
}


def _decode_one(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None
    assert decoder.next_frame() is None
    decoder.feed_eof()
    return frame


def _check_request(frame: Frame) -> None:
    assert (frame.type, frame.opcode) == (FrameType.REQUEST, 0x0101)
    assert frame.metadata.request_id == "req-1"
    assert frame.metadata.deadline_budget_ns == 250_000_000
    assert frame.metadata.sla_class == SlaClass.GOLD
    assert PLAIN.decode(frame.body) == {"user_id": 7, "token": "t"}


def _check_response(frame: Frame) -> None:
    assert (frame.type, frame.opcode) == (FrameType.RESPONSE, 0x0101)
    assert frame.metadata.trace_context == TRACE
    assert frame.metadata.entries[-1] == TlvEntry(0x1234, 9, b"abc")
    assert PLAIN.decode(frame.body) == {"ok": True}


def _check_compressed(frame: Frame) -> None:
    assert frame.type == 0x20
    assert frame.compressed
    assert frame.body == b"A" * 64


def _check_reserved_flag(frame: Frame) -> None:
    assert frame.type == FrameType.PING
    assert bytes(frame.body) == b""


def _check_ping(frame: Frame) -> None:
    assert frame.type == FrameType.PING
    assert bytes(frame.body) == bytes(range(8))


def _check_tick(frame: Frame) -> None:
    assert default_registry.decode(frame) == TICK


def _check_ack(frame: Frame) -> None:
    assert default_registry.decode(frame) == ACK


def _check_error(frame: Frame) -> None:
    assert (frame.type, frame.opcode) == (FrameType.ERROR, 0x0999)
    assert PLAIN.decode(frame.body) == {
        "code": ErrorCode.NOT_FOUND,
        "message": "unknown opcode 0x0999",
        "details": {},
    }


# What decoding each valid vector must give.
DECODERS: dict[str, Callable[[Frame], None]] = {
    "ping": _check_ping,
    "request-with-metadata": _check_request,
    "response-unknown-key": _check_response,
    "market-tick": _check_tick,
    "order-ack": _check_ack,
    "error-not-found": _check_error,
    "compressed": _check_compressed,
    "reserved-flag-ignored": _check_reserved_flag,
}

INVALID: dict[str, ErrorCode] = {
    "invalid-type-zero": ErrorCode.MALFORMED_HEADER,
    "invalid-version": ErrorCode.UNSUPPORTED_FRAME_VERSION,
    "invalid-too-large": ErrorCode.FRAME_TOO_LARGE,
    "invalid-metadata-truncated": ErrorCode.MALFORMED_METADATA,
    "invalid-metadata-digest-length": ErrorCode.MALFORMED_METADATA,
    "invalid-zlib": ErrorCode.DECOMPRESSION_FAILED,
}


def test_every_vector_is_checked() -> None:
    # The session vectors (section 7) are checked in tests/session/test_protocol_vectors.py,
    # the pub/sub vectors (section 11) in tests/pubsub/test_protocol_vectors.py.
    from ..pubsub.test_protocol_vectors import PUBSUB_VECTORS
    from ..session.test_protocol_vectors import SESSION_VECTORS

    session = {name for name in VECTORS if name.startswith("session-")}
    assert session == set(SESSION_VECTORS)
    pubsub = {name for name in VECTORS if name.startswith("pubsub-")}
    assert pubsub == set(PUBSUB_VECTORS)
    assert len(VECTORS) - len(session) - len(pubsub) >= 14
    assert set(VECTORS) - session - pubsub == set(DECODERS) | set(INVALID)
    assert set(ENCODERS) <= set(DECODERS)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoding_reproduces_vector(name: str) -> None:
    assert ENCODERS[name]().hex(" ") == VECTORS[name].hex(" ")


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoding_vector(name: str) -> None:
    DECODERS[name](_decode_one(VECTORS[name]))


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_vector_byte_by_byte(name: str) -> None:
    """The same vector fed one byte at a time decodes to the same frame."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for byte in VECTORS[name]:
        decoder.feed(bytes([byte]))
        frames.extend(decoder)
    assert len(frames) == 1
    whole = _decode_one(VECTORS[name])
    assert frames[0]._replace(body=bytes(frames[0].body)) == whole._replace(body=bytes(whole.body))


def test_fixed_layout_fast_path_matches_vectors() -> None:
    decoder = FrameDecoder()
    decoder.feed(VECTORS["market-tick"] + VECTORS["order-ack"] + VECTORS["market-tick"])
    items = decoder.drain_values(MARKET_TICK_CODEC)
    assert items[0] == TICK
    assert items[2] == TICK
    assert isinstance(items[1], Frame)
    assert ORDER_ACK_CODEC.decode(items[1].body) == ACK


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_vector_is_rejected_with_its_code(name: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(VECTORS[name])
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == INVALID[name]
    # The decoder stays failed: the stream is to be closed with that code.
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
