"""Wire-layer benchmark: quicframe's encode/decode cost next to a pure-Python floor.

Usage::

    python bench/wire_bench.py [--quick] [--rounds N] [--json]

What is measured
----------------
Every metric is a pair of loops doing the same job on the same bytes or values:

* ``quicframe``: the public API of ``quicframe.wire`` as an application uses it.
* ``floor``: the least pure Python can do for that job, with no framing logic
  and no validation.  For fixed-layout frames (MarketTick, OrderAck) it is one
  precompiled ``struct.Struct`` spanning the 12-byte header and the body, used
  as ``Struct.pack(*header_fields, *value)`` to encode and as a bare
  ``unpack_from(buf, off)`` loop over every frame offset to decode.  The decode
  floor keeps the rows it unpacks, as any decoder that returns values must
  (``*.decode``, the target); ``*.decode.vs-discard`` also shows the loop that
  throws each row away, which is cheaper only because every row reuses the
  memory of the one before.  For msgpack requests the floor is a bare
  ``msgpack.packb(d)`` / ``msgpack.unpackb(b)`` of the same dict.

Metric families:

* ``tick.*`` / ``ack.*``: MarketTick (60-byte frame) and OrderAck (84-byte
  frame).  ``encode`` is ``codec.encode_frame(value)``; ``encode.generic`` is
  ``encode_frame(type, codec.encode(value))``.  ``decode`` feeds a 1 MiB buffer
  of whole frames (distinct ``seq``) to a fresh ``FrameDecoder`` and calls
  ``drain_values(codec)``; ``decode.generic`` does ``list(decoder)`` and
  ``codec.decode(frame.body)`` on the same buffer; ``decode.single`` feeds one
  frame at a time to a reused decoder (``next_frame()`` + ``codec.decode``).
* ``req.plain.*``: ``{user_id, token, metadata}`` as a plain dict through
  ``MsgpackCodec()``.  ``req.typed.*``: the same fields as a slotted dataclass
  through ``MsgpackCodec(LoginRequest)``.  ``encode`` builds a whole REQUEST
  frame (``encode_frame(FrameType.REQUEST, codec.encode(v), opcode=0x0101)``);
  ``decode`` feeds that frame to a reused ``FrameDecoder``, takes
  ``next_frame()`` and runs ``codec.decode(frame.body)``.  ``codec`` is
  ``codec.decode(codec.encode(v))`` against ``unpackb(packb(d))``: what
  quicframe's msgpack codec adds to msgpack (the target).  ``roundtrip`` is a
  whole REQUEST frame out and back (``encode_frame``, then ``decode_frame`` and
  the codec).  ``req.framing-floor`` is the same round trip hand-inlined with no
  quicframe function at all: the least any frame with a 12-byte header, checked
  and turned into a Frame, can cost over bare msgpack for this 60-byte message,
  so no frame-level ratio can fall below it.  ``req.meta.*`` (informational)
  adds ``Metadata.build(request_id=..., deadline_budget_ns=...)`` to the plain
  variant, built per message or once (``encode.prebuilt``).

How it is timed
---------------
Each loop is calibrated to take about 40 ms per sample (10 ms with
``--quick``), timed with ``time.perf_counter_ns`` with the garbage collector
disabled for the duration of the sample.  The 1 MiB decodes drop each pass's
list of values inside the sample, so every pass pays for allocating and freeing
its values alike, however many passes a sample holds.  Before timing, the heap
is warmed (see ``warm_heap``): a 1 MiB decode allocates about 5 MB of values,
and when nothing else pins those arenas pymalloc returns them to the OS on every
free and page-faults them back in on the next pass, adding roughly half again
to the decode time.  A long-running receiver decoding stream-sized chunks does
not pay that, so the benchmark measures the warm steady state.

Samples are taken in rounds (7, or 3 with ``--quick``); within a round every
metric takes one floor sample and one quicframe sample back to back, alternating
which goes first, so machine noise hits both sides alike.  Reported values are
the median over rounds.

How to read the ratios
----------------------
``ratio`` is ``median(quicframe) / median(floor)`` in time per frame or message:
1.00 means quicframe costs nothing over the floor, 1.50 means it takes 50 %
longer.  It can be below 1 when quicframe does less than the floor (for example
``MsgpackCodec`` reuses one ``Packer`` where ``msgpack.packb`` builds one per
call).  ``range`` is the spread of the per-round ratios of paired samples: a
wide range means the machine was noisy and the median deserves less trust.
Targets (PASS/FAIL) apply to the ratio of medians; a FAIL is a measurement, not
an error, and the exit status stays 0.  Before timing, every loop's output is
checked against the original values; a mismatch exits with status 1.

The last target is absolute: the per-message encode of a request (the slower of
the plain and typed variants) against the Go design's ~18,000 ns to serialize a
message, which quicframe should beat by an order of magnitude (<= 1,800 ns).

With ``--json`` the output is JSON Lines: first an ``environment`` object, then
one object per metric with ``name``, ``value``, ``unit``, ``floor``, ``ratio``,
``target`` and ``pass`` (plus a few extra keys, such as throughput figures).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack

import quicframe
from quicframe.wire import (
    HEADER_SIZE,
    MARKET_TICK_CODEC,
    ORDER_ACK_CODEC,
    WIRE_VERSION,
    FixedLayoutCodec,
    Frame,
    FrameDecoder,
    FrameType,
    MarketTick,
    Metadata,
    MsgpackCodec,
    OrderAck,
    decode_frame,
    encode_frame,
)
from quicframe.wire.market import MARKET_TICK_LAYOUT, ORDER_ACK_LAYOUT

MIB: Final = 1 << 20
REQUEST_OPCODE: Final = 0x0101
HEADER_FORMAT: Final = ">BBHHHI"
VALUES_PER_LOOP: Final = 1000  # distinct values cycled through by per-frame loops
DEADLINE_BUDGET_NS: Final = 250_000_000
GO_ENCODE_NS: Final = 18_000  # "the Go design's ~18 us to serialize a message"
GO_TARGET_NS: Final = GO_ENCODE_NS / 10  # an order of magnitude under it
TICK_DECODE_TARGET: Final = 1.5
MSGPACK_ROUNDTRIP_TARGET: Final = 1.3

Runner = Callable[[int], object]
"""Runs the job ``loops`` times and returns the last result (for the check)."""


@dataclass(slots=True)
class LoginRequest:
    user_id: int
    token: str
    metadata: dict[str, str]


class CorrectnessError(Exception):
    """A loop produced something other than the original values."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CorrectnessError(what)


# --------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------


def make_ticks(n: int) -> list[MarketTick]:
    base = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
    return [
        MarketTick(
            seq=i + 1,
            event_time_ns=base + i * 1_250,
            send_time_ns=base + i * 1_250 + 40_000,
            price=187_250_000_000 + (i * 7919 % 20_000) * 10_000_000,
            quantity=100 + i % 900,
            instrument_id=1000 + i % 64,
            side=1 + i % 2,
            kind=1 + (i // 2) % 2,
        )
        for i in range(n)
    ]


def make_acks(n: int) -> list[OrderAck]:
    base = 1_767_225_600_000_000_000
    return [
        OrderAck(
            seq=i + 1,
            order_id=9_000_000_000 + i,
            client_order_id=42_000_000 + 3 * i,
            event_time_ns=base + i * 2_000,
            send_time_ns=base + i * 2_000 + 55_000,
            price=187_250_000_000 + (i * 104_729 % 5_000) * 10_000_000,
            quantity=100 * (1 + i % 50),
            filled_quantity=(100 * (1 + i % 50)) * (i % 3) // 2,
            instrument_id=1000 + i % 64,
            side=1 + i % 2,
            status=i % 8,
        )
        for i in range(n)
    ]


REQUEST_DICT: Final[dict[str, Any]] = {
    "user_id": 7,
    "token": "tok_3f9a1c7e5b2d4086a1e9c3b7d5f2a8e4",  # 36 chars
    "metadata": {"client": "quicframe-bench", "region": "eu-west-1", "lang": "en-GB"},
}
REQUEST_ID: Final = "req-7f3e2a91-0001"


# --------------------------------------------------------------------------------------
# Fixed-layout loops
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FixedKind:
    """Everything the fixed-layout loops need for one frame type."""

    name: str
    codec: FixedLayoutCodec[Any]
    frame_struct: struct.Struct  # header + body in one struct: the floor
    header: tuple[int, ...]
    values: list[Any]  # VALUES_PER_LOOP distinct values for per-frame loops
    frames: list[bytes]  # the same values, one frame each
    buffer: bytes  # as many whole frames as fit in 1 MiB
    buffer_values: list[Any]


def make_fixed_kind(
    name: str, codec: FixedLayoutCodec[Any], layout: str, make: Callable[[int], list[Any]]
) -> FixedKind:
    _check(struct.calcsize(HEADER_FORMAT) == HEADER_SIZE, "header format size")
    frame_struct = struct.Struct(HEADER_FORMAT + layout[1:])
    _check(frame_struct.size == codec.frame_size, f"{name}: frame struct size mismatch")
    header = (int(codec.frame_type), 0, WIRE_VERSION, 0, 0, codec.size)
    count = MIB // frame_struct.size
    buffer_values = make(count)
    buffer = b"".join(frame_struct.pack(*header, *v) for v in buffer_values)
    values = buffer_values[:VALUES_PER_LOOP]
    frames = [frame_struct.pack(*header, *v) for v in values]
    return FixedKind(name, codec, frame_struct, header, values, frames, buffer, buffer_values)


def encode_qf(kind: FixedKind) -> Runner:
    encode = kind.codec.encode_frame
    values = kind.values

    def run(loops: int) -> object:
        out = b""
        for _ in range(loops):
            for v in values:
                out = encode(v)
        return out

    return run


def encode_generic_qf(kind: FixedKind) -> Runner:
    encode_body = kind.codec.encode
    frame_type = kind.codec.frame_type
    values = kind.values

    def run(loops: int) -> object:
        out = b""
        for _ in range(loops):
            for v in values:
                out = encode_frame(frame_type, encode_body(v))
        return out

    return run


def encode_floor(kind: FixedKind) -> Runner:
    pack = kind.frame_struct.pack
    header = kind.header
    values = kind.values

    def run(loops: int) -> object:
        out = b""
        for _ in range(loops):
            for v in values:
                out = pack(*header, *v)
        return out

    return run


def drain_qf(kind: FixedKind) -> Runner:
    codec = kind.codec
    buffer = kind.buffer

    def run(loops: int) -> object:
        last: object = None
        for _ in range(loops):
            decoder = FrameDecoder()
            decoder.feed(buffer)
            values = decoder.drain_values(codec)
            last = values[-1]
            del values  # free inside the sample, as a consumer would
        return last

    return run


def generic_qf(kind: FixedKind) -> Runner:
    decode = kind.codec.decode
    buffer = kind.buffer

    def run(loops: int) -> object:
        last: object = None
        for _ in range(loops):
            decoder = FrameDecoder()
            decoder.feed(buffer)
            values = [decode(frame.body) for frame in list(decoder)]
            last = values[-1]
            del values
        return last

    return run


def bulk_floor(kind: FixedKind) -> Runner:
    """The bare loop, keeping what it decodes (as any decoder must): the target's floor."""
    unpack_from = kind.frame_struct.unpack_from
    size = kind.frame_struct.size
    buffer = kind.buffer
    n = len(buffer)

    def run(loops: int) -> object:
        out: tuple[Any, ...] = ()
        for _ in range(loops):
            rows = [unpack_from(buffer, off) for off in range(0, n, size)]
            out = rows[-1]
            del rows  # free inside the sample, as drain_qf does
        return out

    return run


def bulk_discard_floor(kind: FixedKind) -> Runner:
    """The bare loop throwing each row away: cheaper than any decoder that returns values,
    because every row reuses the memory of the one before.  Informational."""
    unpack_from = kind.frame_struct.unpack_from
    size = kind.frame_struct.size
    buffer = kind.buffer
    n = len(buffer)

    def run(loops: int) -> object:
        out: tuple[Any, ...] = ()
        for _ in range(loops):
            for off in range(0, n, size):
                out = unpack_from(buffer, off)
        return out

    return run


def single_qf(kind: FixedKind) -> Runner:
    decoder = FrameDecoder()
    feed = decoder.feed
    next_frame = cast("Callable[[], Frame]", decoder.next_frame)
    decode = kind.codec.decode
    frames = kind.frames

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            for data in frames:
                feed(data)
                out = decode(next_frame().body)
        return out

    return run


def single_floor(kind: FixedKind) -> Runner:
    unpack = kind.frame_struct.unpack
    frames = kind.frames

    def run(loops: int) -> object:
        out: tuple[Any, ...] = ()
        for _ in range(loops):
            for data in frames:
                out = unpack(data)
        return out

    return run


def warm_heap(kind: FixedKind, passes: int = 3, keep_every: int = 256) -> list[Any]:
    """Decode the 1 MiB buffer ``passes`` times over, hold the values of all passes at
    once, then let go of all but one value in ``keep_every``; return those.

    The few values kept pin every arena the passes used, so pymalloc keeps them
    mapped and later decodes reuse their free pools.  Without this, each pass of a
    1 MiB decode frees whole arenas back to the OS and re-faults them on the next
    one (about 1,000 first-touch page faults per pass here), which measures the
    artifact of decoding 1 MiB in one call rather than the decoder, and which comes
    and goes with whatever else happens to be alive on the heap.
    """
    held = []
    for _ in range(passes):
        decoder = FrameDecoder()
        decoder.feed(kind.buffer)
        held.append(decoder.drain_values(kind.codec))
    return [value for values in held for value in values[::keep_every]]


def verify_fixed(kind: FixedKind) -> None:
    """Check every path on every frame, beyond the last-result check of the loops."""
    name = kind.name
    codec = kind.codec
    size = kind.frame_struct.size
    count = len(kind.buffer_values)
    _check(count == MIB // size, f"{name}: buffer holds {count} frames")
    _check(len(kind.buffer) == count * size <= MIB, f"{name}: buffer size")
    _check(
        len({v.seq for v in kind.buffer_values}) == count, f"{name}: seq values are not distinct"
    )
    encoded = b"".join(codec.encode_frame(v) for v in kind.buffer_values)
    _check(encoded == kind.buffer, f"{name}: codec.encode_frame differs from the floor's bytes")
    generic = b"".join(encode_frame(codec.frame_type, codec.encode(v)) for v in kind.values)
    _check(generic == b"".join(kind.frames), f"{name}: encode_frame(codec.encode) differs")

    decoder = FrameDecoder()
    decoder.feed(kind.buffer)
    drained = decoder.drain_values(codec)
    _check(drained == kind.buffer_values, f"{name}: drain_values lost or changed values")
    _check(all(type(v) is codec.cls for v in drained), f"{name}: drain_values types")
    _check(decoder.buffered == 0, f"{name}: decoder kept bytes after drain_values")

    decoder = FrameDecoder()
    decoder.feed(kind.buffer)
    frames = list(decoder)
    _check(len(frames) == count, f"{name}: list(decoder) gave {len(frames)} frames")
    _check(
        all(f.type == codec.frame_type and not f.metadata and f.flags == 0 for f in frames),
        f"{name}: frame headers",
    )
    _check(
        [codec.decode(f.body) for f in frames] == kind.buffer_values,
        f"{name}: generic decode changed values",
    )

    unpack_from = kind.frame_struct.unpack_from
    width = len(kind.header)
    for i, off in enumerate(range(0, len(kind.buffer), size)):
        row = unpack_from(kind.buffer, off)
        _check(row[:width] == kind.header, f"{name}: floor header at frame {i}")
        _check(row[width:] == tuple(kind.buffer_values[i]), f"{name}: floor body at frame {i}")


# --------------------------------------------------------------------------------------
# msgpack request loops
# --------------------------------------------------------------------------------------


def request_encode_qf(
    codec: MsgpackCodec[Any], value: object, metadata: Metadata | None = None
) -> Runner:
    encode = codec.encode
    request = FrameType.REQUEST

    if metadata is None:

        def run(loops: int) -> object:
            out = b""
            for _ in range(loops):
                out = encode_frame(request, encode(value), opcode=REQUEST_OPCODE)
            return out

    else:
        meta = metadata

        def run(loops: int) -> object:
            out = b""
            for _ in range(loops):
                out = encode_frame(request, encode(value), opcode=REQUEST_OPCODE, metadata=meta)
            return out

    return run


def request_encode_build_meta_qf(codec: MsgpackCodec[Any], value: object) -> Runner:
    encode = codec.encode
    request = FrameType.REQUEST
    build = Metadata.build

    def run(loops: int) -> object:
        out = b""
        for _ in range(loops):
            meta = build(request_id=REQUEST_ID, deadline_budget_ns=DEADLINE_BUDGET_NS)
            out = encode_frame(request, encode(value), opcode=REQUEST_OPCODE, metadata=meta)
        return out

    return run


def request_decode_qf(codec: MsgpackCodec[Any], frame: bytes) -> Runner:
    decoder = FrameDecoder()
    feed = decoder.feed
    next_frame = cast("Callable[[], Frame]", decoder.next_frame)
    decode = codec.decode

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            feed(frame)
            out = decode(next_frame().body)
        return out

    return run


def request_roundtrip_qf(codec: MsgpackCodec[Any], value: object) -> Runner:
    """A whole REQUEST frame out and back: encode_frame, then decode_frame (the API for
    a call stream read to its FIN, or a DATAGRAM) and the body codec."""
    encode = codec.encode
    decode = codec.decode
    request = FrameType.REQUEST

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            out = decode(
                decode_frame(encode_frame(request, encode(value), opcode=REQUEST_OPCODE)).body
            )
        return out

    return run


def codec_roundtrip_qf(codec: MsgpackCodec[Any], value: object) -> Runner:
    """The body codec alone: what quicframe adds to msgpack itself."""
    encode = codec.encode
    decode = codec.decode

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            out = decode(encode(value))
        return out

    return run


def framing_floor(value: dict[str, Any]) -> Runner:
    """The least any frame with a 12-byte header can cost on top of msgpack: a reused
    Packer, the header packed and checked by hand, a Frame tuple, unpackb of the body,
    all inlined with no function of quicframe's called.  Informational: it shows how
    far a frame-level ratio can fall at all."""
    packer = msgpack.Packer()
    pack = packer.pack
    unpackb = msgpack.unpackb
    header = struct.Struct(HEADER_FORMAT)
    pack_header = header.pack
    unpack_header = header.unpack_from
    new = tuple.__new__
    empty = Metadata()
    versions = frozenset((WIRE_VERSION,))

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            body = pack(value)
            data = pack_header(FrameType.REQUEST, 0, WIRE_VERSION, REQUEST_OPCODE, 0, len(body))
            data += body
            t, flags, version, opcode, meta_len, body_len = unpack_header(data, 0)
            if t == 0 or version not in versions or HEADER_SIZE + meta_len + body_len != len(data):
                raise CorrectnessError("framing floor: bad header")
            frame = new(Frame, (t, flags, version, opcode, empty, data[HEADER_SIZE:]))
            out = unpackb(frame[5])
        return out

    return run


def packb_floor(value: dict[str, Any]) -> Runner:
    packb = msgpack.packb

    def run(loops: int) -> object:
        out = b""
        for _ in range(loops):
            out = packb(value)
        return out

    return run


def unpackb_floor(data: bytes) -> Runner:
    unpackb = msgpack.unpackb

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            out = unpackb(data)
        return out

    return run


def roundtrip_floor(value: dict[str, Any]) -> Runner:
    packb = msgpack.packb
    unpackb = msgpack.unpackb

    def run(loops: int) -> object:
        out: object = None
        for _ in range(loops):
            out = unpackb(packb(value))
        return out

    return run


def verify_request(
    name: str, codec: MsgpackCodec[Any], value: object, frame: bytes, with_metadata: bool
) -> None:
    body = codec.encode(value)
    _check(body == msgpack.packb(REQUEST_DICT), f"{name}: body differs from msgpack.packb")
    decoder = FrameDecoder()
    decoder.feed(frame)
    got = decoder.next_frame()
    _check(got is not None, f"{name}: no frame decoded")
    assert got is not None
    _check(got.type == FrameType.REQUEST, f"{name}: frame type {got.type}")
    _check(got.opcode == REQUEST_OPCODE, f"{name}: opcode {got.opcode}")
    _check(bytes(got.body) == body, f"{name}: frame body")
    decoded = codec.decode(got.body)
    _check(type(decoded) is type(value) and decoded == value, f"{name}: decoded {decoded!r}")
    _check(decoder.next_frame() is None and decoder.buffered == 0, f"{name}: leftover bytes")
    _check(bool(got.metadata) == with_metadata, f"{name}: metadata {got.metadata!r}")
    if with_metadata:
        _check(got.metadata.request_id == REQUEST_ID, f"{name}: request_id")
        _check(got.metadata.deadline_budget_ns == DEADLINE_BUDGET_NS, f"{name}: deadline")


# --------------------------------------------------------------------------------------
# Cases, timing and the report
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Case:
    name: str
    unit: str
    quicframe: Runner
    floor: Runner
    qf_units: int  # frames or messages per loop of each side
    floor_units: int
    expect_qf: object  # what one loop must return
    expect_floor: object
    target: float | None = None  # maximum ratio, when this metric has a target
    buffer_bytes: int = 0  # for throughput figures of the 1 MiB decodes
    qf_loops: int = 1
    floor_loops: int = 1
    qf_samples: list[float] = field(default_factory=list)  # ns per unit
    floor_samples: list[float] = field(default_factory=list)

    @property
    def qf_ns(self) -> float:
        return statistics.median(self.qf_samples)

    @property
    def floor_ns(self) -> float:
        return statistics.median(self.floor_samples)

    @property
    def ratio(self) -> float:
        return self.qf_ns / self.floor_ns

    @property
    def round_ratios(self) -> list[float]:
        return [q / f for q, f in zip(self.qf_samples, self.floor_samples, strict=True)]

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


def build_cases() -> tuple[list[Case], list[Any]]:
    """The metrics, verified; and the heap ballast to keep alive while timing."""
    ticks = make_fixed_kind("tick", MARKET_TICK_CODEC, MARKET_TICK_LAYOUT, make_ticks)
    acks = make_fixed_kind("ack", ORDER_ACK_CODEC, ORDER_ACK_LAYOUT, make_acks)
    cases: list[Case] = []
    ballast: list[Any] = []
    for kind in (ticks, acks):
        verify_fixed(kind)
        ballast += warm_heap(kind)
        n = len(kind.values)
        count = len(kind.buffer_values)
        last_row = (*kind.header, *kind.buffer_values[-1])
        last_frame = kind.frames[-1]
        cases += [
            Case(
                f"{kind.name}.encode",
                "ns/frame",
                encode_qf(kind),
                encode_floor(kind),
                n,
                n,
                last_frame,
                last_frame,
            ),
            Case(
                f"{kind.name}.encode.generic",
                "ns/frame",
                encode_generic_qf(kind),
                encode_floor(kind),
                n,
                n,
                last_frame,
                last_frame,
            ),
            Case(
                f"{kind.name}.decode",
                f"ns/{kind.name}",
                drain_qf(kind),
                bulk_floor(kind),
                count,
                count,
                kind.buffer_values[-1],
                last_row,
                target=TICK_DECODE_TARGET if kind.name == "tick" else None,
                buffer_bytes=len(kind.buffer),
            ),
            Case(
                f"{kind.name}.decode.vs-discard",
                f"ns/{kind.name}",
                drain_qf(kind),
                bulk_discard_floor(kind),
                count,
                count,
                kind.buffer_values[-1],
                last_row,
                buffer_bytes=len(kind.buffer),
            ),
            Case(
                f"{kind.name}.decode.generic",
                f"ns/{kind.name}",
                generic_qf(kind),
                bulk_floor(kind),
                count,
                count,
                kind.buffer_values[-1],
                last_row,
                buffer_bytes=len(kind.buffer),
            ),
            Case(
                f"{kind.name}.decode.single",
                f"ns/{kind.name}",
                single_qf(kind),
                single_floor(kind),
                n,
                n,
                kind.values[-1],
                (*kind.header, *kind.values[-1]),
            ),
        ]

    plain_codec: MsgpackCodec[dict[str, Any]] = MsgpackCodec()
    typed_codec = MsgpackCodec(LoginRequest)
    typed_value = LoginRequest(**REQUEST_DICT)
    body = cast("bytes", msgpack.packb(REQUEST_DICT))
    meta = Metadata.build(request_id=REQUEST_ID, deadline_budget_ns=DEADLINE_BUDGET_NS)
    variants: list[tuple[str, MsgpackCodec[Any], object, Metadata | None]] = [
        ("plain", plain_codec, REQUEST_DICT, None),
        ("typed", typed_codec, typed_value, None),
        ("meta", plain_codec, REQUEST_DICT, meta),
    ]
    for variant, codec, value, metadata in variants:
        name = f"req.{variant}"
        frame = request_encode_qf(codec, value, metadata)(1)
        assert isinstance(frame, bytes)
        verify_request(name, codec, value, frame, metadata is not None)
        if metadata is None:
            cases.append(
                Case(
                    f"{name}.encode",
                    "ns/msg",
                    request_encode_qf(codec, value),
                    packb_floor(REQUEST_DICT),
                    1,
                    1,
                    frame,
                    body,
                )
            )
        else:
            cases += [
                Case(
                    f"{name}.encode",
                    "ns/msg",
                    request_encode_build_meta_qf(codec, value),
                    packb_floor(REQUEST_DICT),
                    1,
                    1,
                    frame,
                    body,
                ),
                Case(
                    f"{name}.encode.prebuilt",
                    "ns/msg",
                    request_encode_qf(codec, value, metadata),
                    packb_floor(REQUEST_DICT),
                    1,
                    1,
                    frame,
                    body,
                ),
            ]
        cases.append(
            Case(
                f"{name}.decode",
                "ns/msg",
                request_decode_qf(codec, frame),
                unpackb_floor(body),
                1,
                1,
                value,
                REQUEST_DICT,
            )
        )
        if metadata is None:
            cases.append(
                Case(
                    f"{name}.codec",
                    "ns/msg",
                    codec_roundtrip_qf(codec, value),
                    roundtrip_floor(REQUEST_DICT),
                    1,
                    1,
                    value,
                    REQUEST_DICT,
                    target=MSGPACK_ROUNDTRIP_TARGET,
                )
            )
            cases.append(
                Case(
                    f"{name}.roundtrip",
                    "ns/msg",
                    request_roundtrip_qf(codec, value),
                    roundtrip_floor(REQUEST_DICT),
                    1,
                    1,
                    value,
                    REQUEST_DICT,
                )
            )
    cases.append(
        Case(
            "req.framing-floor",
            "ns/msg",
            framing_floor(REQUEST_DICT),
            roundtrip_floor(REQUEST_DICT),
            1,
            1,
            REQUEST_DICT,
            REQUEST_DICT,
        )
    )
    return cases, ballast


def time_ns(run: Runner, loops: int) -> int:
    """Run ``loops`` loops with the collector off; return the elapsed nanoseconds."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run(loops)
        return time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(run: Runner, sample_ns: int) -> int:
    """The number of loops that takes about ``sample_ns``."""
    loops = 1
    while True:
        elapsed = max(time_ns(run, loops), 1)
        if elapsed >= sample_ns // 4:
            return max(1, round(loops * sample_ns / elapsed))
        loops = max(loops * 2, min(loops * 100, int(loops * sample_ns / 2 / elapsed)))


def check_case(case: Case) -> None:
    got = case.quicframe(1)
    _check(got == case.expect_qf, f"{case.name}: quicframe loop returned {_short(got)}")
    got = case.floor(1)
    _check(got == case.expect_floor, f"{case.name}: floor loop returned {_short(got)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def measure(cases: Sequence[Case], rounds: int, sample_ns: int, progress: bool) -> None:
    for case in cases:
        case.qf_loops = calibrate(case.quicframe, sample_ns)
        case.floor_loops = calibrate(case.floor, sample_ns)
    gc.collect()
    for r in range(rounds):
        if progress:
            print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for case in cases:
            if r % 2:  # alternate which side goes first
                qf = time_ns(case.quicframe, case.qf_loops)
                fl = time_ns(case.floor, case.floor_loops)
            else:
                fl = time_ns(case.floor, case.floor_loops)
                qf = time_ns(case.quicframe, case.qf_loops)
            case.qf_samples.append(qf / (case.qf_loops * case.qf_units))
            case.floor_samples.append(fl / (case.floor_loops * case.floor_units))


def _source_revision() -> str:
    """The git commit of the quicframe being measured, if it runs from a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(quicframe.__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {head}{', src/ has uncommitted changes' if dirty else ''})"


def environment() -> dict[str, str]:
    packer_module = msgpack.Packer.__module__
    return {
        "python": f"{platform.python_implementation()} {sys.version.replace(chr(10), ' ')}",
        "quicframe": quicframe.__version__ + _source_revision(),
        "msgpack": (
            importlib.metadata.version("msgpack")
            + (" (C extension)" if "_cmsgpack" in packer_module else f" ({packer_module})")
        ),
        "platform": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
    }


def _fmt_ns(ns: float) -> str:
    return f"{ns:,.1f}" if ns < 1000 else f"{ns:,.0f}"


def _rate_fields(case: Case) -> dict[str, float]:
    if not case.buffer_bytes:
        return {}
    units = case.qf_units
    qf_s = case.qf_ns * units / 1e9
    fl_s = case.floor_ns * units / 1e9
    return {
        "per_s": units / qf_s,
        "mb_per_s": case.buffer_bytes / qf_s / 1e6,
        "floor_per_s": units / fl_s,
        "floor_mb_per_s": case.buffer_bytes / fl_s / 1e6,
    }


def go_reference(cases: Sequence[Case]) -> tuple[Case, Case]:
    """The per-message encode compared to the Go figure: the slower of the plain and
    typed request encodes; and, for information, the one that also builds metadata."""
    by_name = {c.name: c for c in cases}
    judged = max(by_name["req.plain.encode"], by_name["req.typed.encode"], key=lambda c: c.qf_ns)
    return judged, by_name["req.meta.encode"]


def report_json(cases: Sequence[Case], env: dict[str, str]) -> None:
    print(json.dumps({"name": "environment", **env}))
    for case in cases:
        ratios = case.round_ratios
        record: dict[str, Any] = {
            "name": case.name,
            "value": round(case.qf_ns, 2),
            "unit": case.unit,
            "floor": round(case.floor_ns, 2),
            "ratio": round(case.ratio, 4),
            "target": None if case.target is None else f"ratio <= {case.target}",
            "pass": case.passed,
            "ratio_min": round(min(ratios), 4),
            "ratio_max": round(max(ratios), 4),
            "samples": len(ratios),
        }
        record.update({k: round(v, 1) for k, v in _rate_fields(case).items()})
        print(json.dumps(record))
    ref, meta = go_reference(cases)
    print(
        json.dumps(
            {
                "name": "go_reference.encode",
                "value": round(ref.qf_ns, 2),
                "unit": "ns/msg",
                "floor": None,
                "ratio": None,
                "target": f"value <= {GO_TARGET_NS:.0f} ns",
                "pass": ref.qf_ns <= GO_TARGET_NS,
                "measured_as": ref.name,
                "reference_ns": GO_ENCODE_NS,
                "times_under_reference": round(GO_ENCODE_NS / ref.qf_ns, 1),
                "with_metadata_build_ns": round(meta.qf_ns, 2),
            }
        )
    )


def report_text(cases: Sequence[Case]) -> None:
    print(
        f"{'metric':<26}{'unit':>10}{'quicframe':>12}{'floor':>10}{'ratio':>8}{'range':>14}  target"
    )
    for case in cases:
        ratios = case.round_ratios
        target = "" if case.target is None else f"<= {case.target}x"
        print(
            f"{case.name:<26}{case.unit:>10}{_fmt_ns(case.qf_ns):>12}{_fmt_ns(case.floor_ns):>10}"
            f"{case.ratio:>8.2f}{f'{min(ratios):.2f}-{max(ratios):.2f}':>14}  {target}"
        )

    print()
    for case in cases:
        rates = _rate_fields(case)
        if rates:
            what = case.unit.removeprefix("ns/")
            print(
                f"{case.name} (1 MiB, {case.qf_units} frames): "
                f"{rates['per_s'] / 1e6:.2f} M {what}s/s, {rates['mb_per_s']:.0f} MB/s, "
                f"{_fmt_ns(case.qf_ns)} ns/{what}; floor {rates['floor_per_s'] / 1e6:.2f} M/s, "
                f"{rates['floor_mb_per_s']:.0f} MB/s, {_fmt_ns(case.floor_ns)} ns"
            )

    print()
    print("targets:")
    by_name = {c.name: c for c in cases}
    labels = {
        "tick.decode": "tick decode, 1 MiB via drain_values, vs bare struct loop",
        "req.plain.codec": "msgpack request encode+decode (plain codec) vs packb+unpackb",
        "req.typed.codec": "msgpack request encode+decode (typed codec) vs packb+unpackb",
    }
    for name, label in labels.items():
        case = by_name[name]
        verdict = "PASS" if case.passed else "FAIL"
        print(f"  {verdict}  {label}: {case.ratio:.2f}x (target <= {case.target}x)")
    for name in ("req.plain.roundtrip", "req.typed.roundtrip"):
        case = by_name[name]
        print(
            f"  info  {name} (whole REQUEST frame, encode_frame + decode_frame + codec): "
            f"{case.ratio:.2f}x; no framing can go below req.framing-floor = "
            f"{by_name['req.framing-floor'].ratio:.2f}x"
        )
    ref, meta = go_reference(cases)
    verdict = "PASS" if ref.qf_ns <= GO_TARGET_NS else "FAIL"
    print(
        f"  {verdict}  per-message encode ({ref.name}, the slower of plain/typed): "
        f"{_fmt_ns(ref.qf_ns)} ns vs the Go design's {GO_ENCODE_NS:,} ns = "
        f"{GO_ENCODE_NS / ref.qf_ns:.1f}x under (target <= {GO_TARGET_NS:,.0f} ns)"
    )
    print(
        f"  info  with a fresh Metadata.build per message ({meta.name}): "
        f"{_fmt_ns(meta.qf_ns)} ns = {GO_ENCODE_NS / meta.qf_ns:.1f}x under 18,000 ns"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds of ~10 ms samples")
    parser.add_argument("--rounds", type=int, help="rounds of samples (default 7, --quick 3)")
    parser.add_argument("--json", action="store_true", help="JSON Lines output")
    args = parser.parse_args(argv)
    rounds: int = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    sample_ns = (10 if args.quick else 40) * 1_000_000

    env = environment()
    if not args.json:
        print("quicframe wire benchmark")
        for key, value in env.items():
            print(f"  {key:<10}{value}")
        print(
            f"  {'method':<10}{rounds} rounds of interleaved floor/quicframe samples of "
            f"~{sample_ns // 1_000_000} ms, gc off, warm heap; medians; ratio = quicframe / floor"
        )
        print(flush=True)

    try:
        cases, ballast = build_cases()
        for case in cases:
            check_case(case)
    except CorrectnessError as exc:
        print(f"CORRECTNESS FAILURE: {exc}", file=sys.stderr)
        return 1

    started = time.perf_counter()
    measure(cases, rounds, sample_ns, progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - started
    del ballast
    if args.json:
        report_json(cases, env)
    else:
        report_text(cases)
        print(f"\nmeasured in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
