"""The starting inputs of every fuzz target: valid wire material to mutate from.

``python tests/fuzz/run.py --seed`` writes them into ``tests/fuzz/corpus/<target>/``
(named by content hash, so writing twice adds nothing).  Each input is a control
byte (see ``targets.py``) followed by bytes a peer could send: the hex vectors of
``docs/PROTOCOL.md`` and messages encoded by quicframe itself.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Final

from quicframe.pubsub._datagram import encode_datagram
from quicframe.pubsub._messages import (
    Gap,
    SnapshotMarker,
    Subscribe,
    Subscribed,
    Unsubscribe,
    encode_control,
)
from quicframe.session import (
    ERROR_CODEC,
    GOAWAY_CODEC,
    HELLO_CODEC,
    REJECT_CODEC,
    WELCOME_CODEC,
    ErrorBody,
    GoAway,
    Hello,
    Reject,
    Welcome,
    encode_error,
    encode_request,
    encode_response,
)
from quicframe.wire import (
    MARKET_TICK_CODEC,
    ORDER_ACK_CODEC,
    FrameType,
    MarketTick,
    Metadata,
    MsgpackCodec,
    OrderAck,
    TlvEntry,
    encode_frame,
)

from .targets import TARGETS, _Leg, _Order

ROOT: Final = Path(__file__).resolve().parents[2]
CORPUS: Final = Path(__file__).resolve().parent / "corpus"

_VECTOR = re.compile(r"<!-- vector: ([a-z0-9-]+) -->\s*```hex\n(.*?)```", re.DOTALL)


def protocol_vectors() -> list[bytes]:
    """Every hex vector of docs/PROTOCOL.md (valid and invalid frames)."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    return [bytes.fromhex(body) for _, body in _VECTOR.findall(text)]


def _tick(seq: int) -> MarketTick:
    return MarketTick(seq, 1_700_000_000_000_000_000, 1_700_000_000_000_001_000, 101, 5, 42, 1, 1)


def _ack(seq: int) -> OrderAck:
    return OrderAck(seq, 7, 8, 1, 2, -1_500_000_000, 1000, 250, 42, 2, 2)


def _metadata_areas() -> list[bytes]:
    return [
        Metadata.build(request_id="r-1").encode(),
        Metadata.build(
            request_id="r-2",
            deadline_budget_ns=250_000_000,
            sla_class=2,
            payload_sha256=bytes(32),
            trace_context="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            extra=[
                TlvEntry.of(0x0100, "text"),
                TlvEntry.of(0x0101, -5),
                TlvEntry.of(0x0102, 1.5),
                TlvEntry.of(0x0103, True),
                TlvEntry(0x0104, 9, b"opaque"),
            ],
        ).encode(),
    ]


def _control_frames() -> list[bytes]:
    hello = Hello(versions=[1], client_name="fuzz", credentials={"token": "t"})
    return [
        encode_frame(FrameType.HELLO, HELLO_CODEC.encode(hello)),
        encode_frame(FrameType.WELCOME, WELCOME_CODEC.encode(Welcome(version=1, principal="p"))),
        encode_frame(FrameType.REJECT, REJECT_CODEC.encode(Reject(0x0101, "no", [1]))),
        encode_frame(FrameType.GOAWAY, GOAWAY_CODEC.encode(GoAway(reason="bye"))),
        encode_frame(FrameType.PING, b"12345678"),
        encode_frame(FrameType.PONG, b"12345678"),
    ]


def _call_frames() -> list[bytes]:
    body = MsgpackCodec().encode({"user_id": 7})
    return [
        encode_request(0x0101, body, request_id="r-1", deadline_budget_ns=10**9, sla_class=1),
        encode_request(0x0102, body, request_id="r-2", integrity=True, trace_context="t"),
        encode_response(0x0101, body, request_id="r-1", integrity=True),
        encode_error(0x0101, 0x0204, "not found", {"opcode": 0x0101}, request_id="r-1"),
        encode_frame(FrameType.REQUEST, body * 100, opcode=3, compress=True),
    ]


def _bodies() -> dict[int, list[bytes]]:
    """msgpack bodies by the control byte that selects their codec in targets.py."""
    order = _Order(
        client_order_id=1,
        symbol="ABC",
        price=1.25,
        quantity=3,
        payload=b"\x00\x01",
        legs=[_Leg(1, 0.5, ("a", "b"))],
        by_venue={"x": _Leg(2)},
        parent=_Leg(3),
        flags=[1, 2],
        extra={"k": [1, "v"]},
    )
    return {
        0: [MsgpackCodec(_Order).encode(order)],
        1: [MsgpackCodec(_Leg).encode(_Leg(5, 2.0, ("t",)))],
        2: [MsgpackCodec().encode([1, {"a": b"b"}, None, 1.5, True])],
        3: [HELLO_CODEC.encode(Hello(versions=[1, 2], credentials={"token": "t"}))],
        4: [WELCOME_CODEC.encode(Welcome(version=1))],
        5: [REJECT_CODEC.encode(Reject(0x0102, "denied"))],
        6: [GOAWAY_CODEC.encode(GoAway())],
        7: [ERROR_CODEC.encode(ErrorBody(0x0204, "m", {"d": 1}))],
    }


def seeds() -> dict[str, list[bytes]]:
    """The seed inputs of every target, control byte included."""
    vectors = protocol_vectors()
    ticks = b"".join(MARKET_TICK_CODEC.encode_frame(_tick(i)) for i in range(1, 40))
    acks = b"".join(ORDER_ACK_CODEC.encode_frame(_ack(i)) for i in range(1, 20))
    mixed = ticks[:480] + vectors[0] + acks[:144] + ticks[480:]
    control = _control_frames()
    calls = _call_frames()
    stream = b"".join(vectors[:6])
    out: dict[str, list[bytes]] = {
        "frame_decoder": [
            *(bytes([c]) + stream for c in (0, 1, 7, 0x23)),
            *(b"\x00" + v for v in vectors),
            b"\x05" + mixed,
        ],
        "drain_values": [b"\x00" + ticks, b"\x07" + mixed, b"\x40" + acks, b"\x2c" + mixed],
        "single_frame": [b"\x00" + v for v in (*vectors, *calls)],
        "metadata": _metadata_areas(),
        "fixed_layout": [
            b"\x00" + MARKET_TICK_CODEC.encode(_tick(1)),
            b"\x01" + ORDER_ACK_CODEC.encode(_ack(1)),
        ],
        "msgpack_body": [bytes([c]) + b for c, bodies in _bodies().items() for b in bodies],
        "control_server": [
            b"\x00" + control[0] + control[4],
            b"\x03" + control[0] + control[4],
            b"\x40" + control[0],
        ],
        "control_client": [
            b"\x00" + control[1] + control[3] + control[5],
            b"\x02" + control[2],
            b"\x00" + control[1] + control[4],
        ],
        "call_stream": [*(b"\x00" + c for c in calls), b"\x03" + calls[1]],
        "pubsub_control": [
            b"\x00" + _body(encode_control(Subscribe("md.ticks", from_seq=5, policy="conflate"))),
            b"\x00"
            + _body(
                encode_control(Subscribe("md.ticks", mode="datagram", channel=3, queue_size=8))
            ),
            b"\x01" + _body(encode_control(Subscribed("md.ticks", 0x10, 10, 1))),
            b"\x02" + _body(encode_control(SnapshotMarker("begin", 10, 2))),
            b"\x03" + _body(encode_control(Gap(5, 20, "gone"))),
            b"\x04" + _body(encode_control(Unsubscribe("done"))),
        ],
        "h3_request": [
            b"\x00:method=POST\n:path=/rpc/0x0101?x=1\ncontent-type=application/json\n"
            b"accept=application/msgpack;q=0.5, application/json\nx-request-id=r-1\n"
            b"x-sla-level=gold\nx-deadline-ms=250\n"
            b"x-payload-sha256=" + b"ab" * 32 + b"\n\n" + b'{"user_id": 7, "tags": ["a", 1.5]}',
            b"\x00:method=POST\n:path=/rpc/login\ncontent-type=application/msgpack\n\n\x81\xa1a\x01",
            b'\x01:method=GET\n:path=/healthz\naccept=*/*\n\n[1, {"b": null}]',
        ],
        "pubsub_datagram": [
            b"\x00" + encode_datagram(MARKET_TICK_CODEC.encode_frame(_tick(1)), 7),
            b"\x03" + encode_datagram(ORDER_ACK_CODEC.encode_frame(_ack(1)), 9),
        ],
    }
    assert set(out) == set(TARGETS)
    return out


def _body(frame: bytes) -> bytes:
    return frame[12:]


def write_seeds(corpus: Path = CORPUS) -> int:
    """Write every seed into its target's corpus directory; return how many were new."""
    written = 0
    for target, inputs in seeds().items():
        directory = corpus / target
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path = directory / hashlib.sha1(data).hexdigest()
            if not path.exists():
                path.write_bytes(data)
                written += 1
    return written
