"""Hypothesis strategies for the wire-layer property tests.

Everything here builds *valid* wire material (frames, TLV metadata, fixed-layout
values, msgpack values) plus the means to chop it into chunks or damage it; the
properties themselves live in ``test_properties.py``.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeAlias

from hypothesis import strategies as st

from quicframe.wire import (
    EMPTY_METADATA,
    FLAG_COMPRESSED,
    MARKET_TICK_CODEC,
    WIRE_VERSION,
    Frame,
    FrameType,
    MarketTick,
    Metadata,
    OrderAck,
    TlvEntry,
    TlvType,
    encode_frame,
)

# --------------------------------------------------------------------------------------
# Integers of the struct layouts
# --------------------------------------------------------------------------------------

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)

market_ticks: st.SearchStrategy[MarketTick] = st.builds(
    MarketTick,
    seq=U64,
    event_time_ns=U64,
    send_time_ns=U64,
    price=I64,
    quantity=I64,
    instrument_id=U32,
    side=U8,
    kind=U8,
)

order_acks: st.SearchStrategy[OrderAck] = st.builds(
    OrderAck,
    seq=U64,
    order_id=U64,
    client_order_id=U64,
    event_time_ns=U64,
    send_time_ns=U64,
    price=I64,
    quantity=I64,
    filled_quantity=I64,
    instrument_id=U32,
    side=U8,
    status=U8,
)

# --------------------------------------------------------------------------------------
# TLV metadata
# --------------------------------------------------------------------------------------

#: Type codes: the assigned ones often, any byte sometimes.
tlv_type_codes: st.SearchStrategy[int] = st.one_of(
    st.sampled_from(TlvType).map(int), st.integers(0, 0xFF)
)

#: Keys a receiver does not interpret: application keys and future quicframe keys.
unknown_keys: st.SearchStrategy[int] = st.one_of(
    st.integers(0x0100, 0xFFFF), st.integers(0x0006, 0x00FF)
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


def tlv_values(type_code: int) -> st.SearchStrategy[bytes]:
    """Value bytes that are a valid encoding for ``type_code``."""
    if type_code == TlvType.STRING:
        return st.text(max_size=24).map(_utf8)
    if type_code in (TlvType.UINT, TlvType.INT):
        return st.sampled_from((1, 2, 4, 8)).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if type_code == TlvType.BOOL:
        return st.sampled_from((b"\x00", b"\x01"))
    if type_code == TlvType.FLOAT:
        return st.binary(min_size=8, max_size=8)
    return st.binary(max_size=48)  # BYTES and unassigned codes: anything goes


@st.composite
def unknown_tlv_entries(draw: st.DrawFn) -> TlvEntry:
    key = draw(unknown_keys)
    type_code = draw(tlv_type_codes)
    return TlvEntry(key, type_code, draw(tlv_values(type_code)))


@st.composite
def metadata(draw: st.DrawFn, *, max_extra: int = 6) -> Metadata:
    """Well-known values (each optional, built with ``Metadata.build``) plus unknown
    entries, sometimes shuffled so well-known keys are not first."""
    built = Metadata.build(
        # 32 code points are at most 128 UTF-8 bytes, the request id limit.
        request_id=draw(st.none() | st.text(min_size=1, max_size=32)),
        deadline_budget_ns=draw(st.none() | st.integers(-(1 << 20), (1 << 64) - 1)),
        sla_class=draw(st.none() | U8),
        payload_sha256=draw(st.none() | st.binary(min_size=32, max_size=32)),
        trace_context=draw(st.none() | st.text(max_size=64)),
        extra=draw(st.lists(unknown_tlv_entries(), max_size=max_extra)),
    )
    if draw(st.booleans()):
        return Metadata(draw(st.permutations(built.entries)))
    return built


maybe_metadata: st.SearchStrategy[Metadata] = st.one_of(st.just(EMPTY_METADATA), metadata())

# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------

FrameKey: TypeAlias = tuple[int, int, int, int, Metadata, bytes]


def frame_key(frame: Frame) -> FrameKey:
    """Everything observable about a decoded frame, as a comparable value."""
    return (
        frame.type,
        frame.flags,
        frame.version,
        frame.opcode,
        frame.metadata,
        bytes(frame.body),
    )


class FrameParts(NamedTuple):
    """The content of one frame; ``body`` is the body before compression and
    ``flags`` the header byte, unknown bits included."""

    type: int
    flags: int
    opcode: int
    metadata: Metadata
    body: bytes

    def encode(self) -> bytes:
        wire = encode_frame(
            self.type,
            self.body,
            opcode=self.opcode,
            metadata=self.metadata,
            compress=bool(self.flags & FLAG_COMPRESSED),
        )
        if self.flags & ~FLAG_COMPRESSED:
            # encode_frame refuses unknown flag bits; a receiver must ignore them.
            wire = wire[:1] + bytes((self.flags,)) + wire[2:]
        return wire

    def key(self) -> FrameKey:
        return (self.type, self.flags, WIRE_VERSION, self.opcode, self.metadata, self.body)


def encode_stream(parts: Sequence[FrameParts]) -> tuple[bytes, list[int]]:
    """The wire bytes of ``parts`` and the offset where each frame starts."""
    starts: list[int] = []
    pos = 0
    encoded: list[bytes] = []
    for part in parts:
        wire = part.encode()
        starts.append(pos)
        pos += len(wire)
        encoded.append(wire)
    return b"".join(encoded), starts


def _repeat(piece: bytes, count: int) -> bytes:
    return piece * count


#: Bodies: random bytes, or a repeated pattern that compresses well.
bodies: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=256),
    st.builds(_repeat, st.binary(min_size=1, max_size=8), st.integers(0, 200)),
)

#: Header flag bytes: mostly plain or compressed, sometimes with unknown bits.
wire_flags: st.SearchStrategy[int] = st.one_of(st.sampled_from((0, FLAG_COMPRESSED)), U8)

#: Every frame type quicframe defines, and any other legal code.
frame_types: st.SearchStrategy[int] = st.one_of(
    st.sampled_from(FrameType).map(int), st.integers(0x01, 0xFF)
)

#: Frame types other than MARKET_TICK (so a MarketTick codec leaves them alone).
non_tick_types: st.SearchStrategy[int] = st.one_of(
    st.sampled_from([t for t in FrameType if t != FrameType.MARKET_TICK]).map(int),
    st.integers(0x01, 0x0F),
    st.integers(0x11, 0xFF),
)


@st.composite
def frame_parts(
    draw: st.DrawFn,
    *,
    types: st.SearchStrategy[int] = frame_types,
    flags: st.SearchStrategy[int] = wire_flags,
) -> FrameParts:
    return FrameParts(draw(types), draw(flags), draw(U16), draw(maybe_metadata), draw(bodies))


@st.composite
def tick_frame_parts(draw: st.DrawFn) -> FrameParts:
    """A MarketTick frame: usually the plain shape the decoder's fast path takes,
    sometimes with an opcode, metadata, compression or a longer body (whose tail a
    receiver ignores)."""
    body = MARKET_TICK_CODEC.encode(draw(market_ticks))
    if draw(st.booleans()):
        return FrameParts(FrameType.MARKET_TICK, 0, 0, EMPTY_METADATA, body)
    tail = draw(st.binary(max_size=16))
    return FrameParts(
        FrameType.MARKET_TICK, draw(wire_flags), draw(U16), draw(maybe_metadata), body + tail
    )


@st.composite
def plain_tick_runs(draw: st.DrawFn, *, max_run: int = 80) -> list[FrameParts]:
    """A run of consecutive plain MarketTick frames, long enough at times for the
    decoder's long-run fast path (a few distinct ticks, cycled, keep it cheap)."""
    bodies = [
        MARKET_TICK_CODEC.encode(t) for t in draw(st.lists(market_ticks, min_size=1, max_size=3))
    ]
    count = draw(st.integers(1, max_run))
    return [
        FrameParts(FrameType.MARKET_TICK, 0, 0, EMPTY_METADATA, bodies[i % len(bodies)])
        for i in range(count)
    ]


def _flatten(groups: list[list[FrameParts]]) -> list[FrameParts]:
    return [part for group in groups for part in group]


def _single(part: FrameParts) -> list[FrameParts]:
    return [part]


#: A list of frames of every kind.
frame_streams: st.SearchStrategy[list[FrameParts]] = st.lists(
    st.one_of(frame_parts(), tick_frame_parts()), max_size=8
)

#: Frames for ``drain_values(MARKET_TICK_CODEC)``: ticks (single, or in runs) and
#: frames of other types.
tick_streams: st.SearchStrategy[list[FrameParts]] = st.lists(
    st.one_of(
        tick_frame_parts().map(_single),
        plain_tick_runs(),
        frame_parts(types=non_tick_types).map(_single),
    ),
    max_size=6,
).map(_flatten)

# --------------------------------------------------------------------------------------
# Chunking and damage
# --------------------------------------------------------------------------------------

Chunk: TypeAlias = bytes | bytearray | memoryview

_BUFFER_KINDS: tuple[Callable[[bytes], Chunk], ...] = (bytes, bytearray, memoryview)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[Chunk]:
    """``data`` split into consecutive chunks (of bytes, bytearray or memoryview)
    that concatenate back to ``data``."""
    n = len(data)
    if n == 0:
        return []
    if n > 1 and draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 24))))
    else:
        size = draw(st.integers(1, 32))
        cuts = list(range(size, n, size))
    bounds = [0, *cuts, n]
    kind = draw(st.sampled_from(_BUFFER_KINDS))
    return [kind(data[a:b]) for a, b in itertools.pairwise(bounds)]


class _Field(NamedTuple):
    offset: int
    fmt: str
    interesting: tuple[int, ...]


_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFF_FFFF

#: Header fields, by offset, with values worth trying there.
_HEADER_FIELDS: tuple[_Field, ...] = (
    _Field(0, ">B", (0x00, 0x01, 0x10, 0x11, 0xFF)),  # type
    _Field(1, ">B", (0x00, 0x01, 0x02, 0xFE, 0xFF)),  # flags
    _Field(2, ">H", (0, 1, 2, _MAX_U16)),  # version
    _Field(4, ">H", (0, 1, _MAX_U16)),  # opcode
    _Field(6, ">H", (0, 1, 4, 5, 47, 48, 4084, 4096, _MAX_U16)),  # meta_len
    _Field(8, ">I", (0, 1, 47, 48, 4083, 4084, 4085, 4096, 1 << 20, _MAX_U32)),  # body_len
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, frame_starts: Sequence[int]) -> bytes:
    """``data`` after one to four random edits: bit flips, inserted, deleted or
    overwritten bytes, and rewritten header fields (lengths included)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "overwrite", "header")))
        n = len(buf)
        if op == "insert" or n == 0:
            pos = draw(st.integers(0, n))
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "flip":
            buf[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 0xFF))
        elif op == "delete":
            pos = draw(st.integers(0, n - 1))
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif op == "overwrite":
            pos = draw(st.integers(0, n - 1))
            patch = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(patch)] = patch
        else:
            start = draw(st.sampled_from(frame_starts)) if frame_starts else 0
            field = draw(st.sampled_from(_HEADER_FIELDS))
            limit = (1 << (8 * struct.calcsize(field.fmt))) - 1
            value = draw(st.one_of(st.sampled_from(field.interesting), st.integers(0, limit)))
            if start + field.offset + struct.calcsize(field.fmt) <= n:
                struct.pack_into(field.fmt, buf, start + field.offset, value)
    return bytes(buf)


@st.composite
def damaged_streams(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid stream with some edits."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=512))
    wire, starts = encode_stream(draw(st.one_of(frame_streams, tick_streams)))
    return draw(mutated(wire, starts))


# --------------------------------------------------------------------------------------
# msgpack values
# --------------------------------------------------------------------------------------

MsgValue: TypeAlias = (
    bool | int | float | str | bytes | list["MsgValue"] | dict[str, "MsgValue"] | None
)

MSGPACK_INT_MIN = -(1 << 63)
MSGPACK_INT_MAX = (1 << 64) - 1

msgpack_scalars: st.SearchStrategy[MsgValue] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX),
    st.floats(),
    st.text(max_size=16),
    st.binary(max_size=16),
)

msgpack_values: st.SearchStrategy[MsgValue] = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=16,
)
