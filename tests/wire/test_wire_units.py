"""Unit tests of the wire layer's rules: layering, registry, limits, metadata, errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import zlib
from typing import Any

import pytest

import quicframe
from quicframe import errors
from quicframe.wire import (
    COPY_THRESHOLD,
    DEFAULT_MAX_FRAME_SIZE,
    EMPTY_METADATA,
    HARD_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MARKET_TICK_CODEC,
    ErrorCode,
    FixedLayoutCodec,
    Frame,
    FrameDecoder,
    FrameRegistry,
    FrameType,
    MarketTick,
    Metadata,
    MetaKey,
    MsgpackCodec,
    TlvEntry,
    TlvType,
    decode_frame,
    default_registry,
    encode_frame,
    encode_frame_into,
    price_from_wire,
    price_to_wire,
)


def test_wire_imports_neither_trio_nor_aioquic() -> None:
    """The sans-IO layers (wire, and pub/sub above it) must load without the I/O stack
    (checked in a fresh interpreter)."""
    code = (
        "import sys, quicframe.wire, quicframe.errors, quicframe.pubsub\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'aioquic'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_package_version() -> None:
    assert quicframe.__version__.count(".") >= 2


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass
class _Quote:
    instrument_id: int
    bid: int
    ask: int = 0


def test_registry_refuses_codes_outside_their_range() -> None:
    registry = FrameRegistry()
    for code in (0x00, 0x05, 0x0F):
        with pytest.raises(errors.RegistrationError, match="application frame types are 0x10-0xdf"):
            registry.register(code, _Quote)
    with pytest.raises(errors.RegistrationError, match="0xe0"):
        registry.register(0xE0, _Quote)  # experimental code as an application type
    with pytest.raises(errors.RegistrationError):
        registry.register(0x20, _Quote, kind="experimental")
    with pytest.raises(errors.RegistrationError):
        registry.register(0x100, _Quote)
    registry.register(0xE5, _Quote, kind="experimental")
    spec = registry.spec_for_type(0xE5)
    assert spec is not None
    assert spec.cls is _Quote


def test_registry_refuses_duplicates_with_a_clear_message() -> None:
    registry = FrameRegistry(default_registry)
    with pytest.raises(errors.RegistrationError, match="already registered to MarketTick"):
        registry.register(0x10, _Quote)
    registry.register(0x20, _Quote)

    @dataclasses.dataclass
    class Other:
        x: int

    with pytest.raises(errors.RegistrationError, match="already registered to _Quote"):
        registry.register(0x20, Other)
    with pytest.raises(errors.RegistrationError, match="already registered as a frame class"):
        registry.register(0x21, _Quote)


def test_registry_duplicate_fails_at_import_time(tmp_path: pytest.TempPathFactory) -> None:
    code = (
        "import dataclasses\n"
        "from quicframe.wire import default_registry\n"
        "@default_registry.frame(0x11)\n"
        "@dataclasses.dataclass\n"
        "class Clash:\n"
        "    x: int\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "RegistrationError" in result.stderr
    assert "0x11" in result.stderr
    assert "OrderAck" in result.stderr


def test_registry_fixed_codec_must_match_its_type() -> None:
    registry = FrameRegistry()
    with pytest.raises(errors.RegistrationError, match="built for frame type 0x10"):
        registry.register(0x30, MarketTick, MARKET_TICK_CODEC)


def test_registry_encode_decode_msgpack_frame() -> None:
    registry = FrameRegistry()
    registry.register(0x20, _Quote)
    data = registry.encode(_Quote(1, 2, 3), metadata=Metadata.build(request_id="r"))
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.type == 0x20
    assert frame.metadata.request_id == "r"
    assert registry.decode(frame) == _Quote(1, 2, 3)
    with pytest.raises(errors.RegistrationError):
        registry.encode(object())


def test_registry_unknown_type_is_a_remote_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(0x42, b"x"))
    frame = decoder.next_frame()
    assert frame is not None
    with pytest.raises(errors.RemoteProtocolError) as info:
        FrameRegistry().decode(frame)
    assert info.value.code == ErrorCode.UNKNOWN_FRAME_TYPE
    assert info.value.frame_type == 0x42


# ------------------------------------------------------------------------------ limits


def test_max_frame_size_bounds() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 1 << 20
    assert HARD_MAX_FRAME_SIZE == 16 << 20
    for bad in (0, 1023, HARD_MAX_FRAME_SIZE + 1):
        with pytest.raises(errors.LimitError):
            FrameDecoder(max_frame_size=bad)
    FrameDecoder(max_frame_size=HARD_MAX_FRAME_SIZE)


def test_oversized_header_rejected_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    header = bytes.fromhex("20 00 0001 0000 0000") + (4097).to_bytes(4, "big")
    decoder.feed(header)
    with pytest.raises(errors.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0  # nothing kept for the announced bytes


def test_frame_at_the_limit_is_accepted_and_one_more_byte_is_not() -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    meta = Metadata.build(request_id="x")
    body = bytes(4096 - len(meta.encode()))
    decoder.feed(encode_frame(0x20, body, metadata=meta))
    frame = decoder.next_frame()
    assert frame is not None
    assert len(frame.body) == len(body)
    with pytest.raises(errors.LocalProtocolError) as info:
        encode_frame(0x20, body + b"x", metadata=meta, max_frame_size=4096)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_limit_can_be_renegotiated() -> None:
    decoder = FrameDecoder()
    decoder.set_max_frame_size(2048)
    decoder.feed(encode_frame(0x20, bytes(2049)))
    with pytest.raises(errors.RemoteProtocolError):
        decoder.next_frame()


def test_decompression_bomb_is_refused() -> None:
    bomb = zlib.compress(bytes(8 << 20), 9)  # 8 MiB of zeros in a few KiB
    decoder = FrameDecoder(max_frame_size=64 * 1024)
    header = bytes([0x20, 0x01]) + (1).to_bytes(2, "big") + bytes(4) + len(bomb).to_bytes(4, "big")
    decoder.feed(header + bomb)
    with pytest.raises(errors.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_compressed_round_trip_and_truncated_zlib() -> None:
    body = b"market data " * 200
    data = encode_frame(0x20, body, compress=True)
    assert len(data) < len(body)
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.compressed
    assert frame.body == body
    truncated = bytearray(data[:-3])
    truncated[8:12] = (len(truncated) - HEADER_SIZE).to_bytes(4, "big")
    decoder = FrameDecoder()
    decoder.feed(bytes(truncated))
    with pytest.raises(errors.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == ErrorCode.DECOMPRESSION_FAILED


def test_stream_ending_inside_a_frame_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(FrameType.PING, bytes(8))[:-1])
    assert decoder.next_frame() is None
    with pytest.raises(errors.RemoteProtocolError) as info:
        decoder.feed_eof()
    assert info.value.code == ErrorCode.PROTOCOL_ERROR


def test_encoder_refuses_bad_header_fields() -> None:
    for kwargs in ({"frame_type": 0}, {"frame_type": 256}):
        with pytest.raises(errors.LocalProtocolError):
            encode_frame(kwargs["frame_type"], b"")
    with pytest.raises(errors.LocalProtocolError):
        encode_frame(0x20, b"", opcode=0x10000)


def test_encode_frame_into_a_preallocated_buffer() -> None:
    buffer = bytearray(64)
    end = encode_frame_into(buffer, 4, 0x20, b"abc", opcode=9)
    assert bytes(buffer[4:end]) == encode_frame(0x20, b"abc", opcode=9)
    with pytest.raises(ValueError, match="cannot hold"):
        encode_frame_into(bytearray(10), 0, 0x20, b"abc")


def test_large_bodies_are_zero_copy_views_small_ones_are_copies() -> None:
    tick = MarketTick(5, 1, 2, -3, 4, 6, 1, 2)
    big = MARKET_TICK_CODEC.encode(tick) + bytes(COPY_THRESHOLD)  # a longer, later layout
    received = encode_frame(0x10, big) + MARKET_TICK_CODEC.encode_frame(tick)
    decoder = FrameDecoder()
    decoder.feed(received)
    frame = decoder.next_frame()
    assert frame is not None
    assert isinstance(frame.body, memoryview)
    assert frame.body.obj is received  # a view of the very bytes fed: no copy
    assert MARKET_TICK_CODEC.decode(frame.body) == tick  # fields read from the view
    small = decoder.next_frame()
    assert small is not None
    assert type(small.body) is bytes
    assert len(small.body) == MARKET_TICK_CODEC.size


def test_fixed_layout_longer_body_is_accepted_shorter_is_not() -> None:
    tick = MarketTick(5, 1, 2, -3, 4, 6, 1, 2)
    body = MARKET_TICK_CODEC.encode(tick)
    assert MARKET_TICK_CODEC.decode(body + b"future fields") == tick
    with pytest.raises(errors.RemoteProtocolError) as info:
        MARKET_TICK_CODEC.decode(body[:-1])
    assert info.value.code == ErrorCode.MALFORMED_BODY
    # The decoder's fast path must not take a longer body for a plain tick.
    decoder = FrameDecoder()
    decoder.feed(encode_frame(0x10, body + b"xy") + MARKET_TICK_CODEC.encode_frame(tick))
    assert decoder.drain_values(MARKET_TICK_CODEC) == [tick, tick]


def test_fixed_layout_codec_checks() -> None:
    with pytest.raises(TypeError, match="big-endian"):
        FixedLayoutCodec(MarketTick, "<QQQqqIBBxx", frame_type=0x30)
    with pytest.raises(TypeError, match="fields"):
        FixedLayoutCodec(MarketTick, ">QQ", frame_type=0x30)
    with pytest.raises(errors.LocalProtocolError):
        MARKET_TICK_CODEC.encode_frame(MarketTick(-1, 0, 0, 0, 0, 0))  # seq is u64


def test_prices_are_exact_decimals() -> None:
    assert price_to_wire("101.25") == 101_250_000_000
    assert str(price_from_wire(-1_500_000_000)) == "-1.5"
    assert MarketTick(1, 0, 0, 1, 0, 0).price_decimal == price_from_wire(1)


# ---------------------------------------------------------------------------- metadata


def test_metadata_well_known_keys() -> None:
    digest = bytes(range(32))
    meta = Metadata.build(
        request_id="abc",
        deadline_budget_ns=5,
        sla_class=1,
        payload_sha256=digest,
        trace_context="t",
    )
    again = Metadata.decode_untrusted(meta.encode())
    assert again == meta
    assert (again.request_id, again.deadline_budget_ns, again.sla_class) == ("abc", 5, 1)
    assert (again.payload_sha256, again.trace_context) == (digest, "t")
    assert again.get(MetaKey.REQUEST_ID) == "abc"
    assert EMPTY_METADATA.encode() == b""
    assert Metadata.build(deadline_budget_ns=-10).deadline_budget_ns == 0


def test_metadata_unknown_entries_pass_through_untouched() -> None:
    unknown = [
        TlvEntry(0x0100, 200, b"\x00\xff"),
        TlvEntry(0x0006, 0, b"new"),
        TlvEntry(0x0100, 1, b"x"),
    ]
    meta = Metadata.build(request_id="r", extra=unknown)
    raw = meta.encode()
    again = Metadata.decode_untrusted(raw)
    assert again.encode() == raw
    assert list(again.entries[1:]) == unknown
    assert again.get_all(0x0100) == [b"\x00\xff", "x"]
    replaced = again.replace(request_id="s", sla_class=2)
    assert replaced.request_id == "s"
    assert replaced.sla_class == 2
    assert list(replaced.entries[1:4]) == unknown
    assert replaced.replace(request_id=None).request_id is None


def test_metadata_typed_values() -> None:
    for value in (True, False, 0, 2**64 - 1, -(2**63), 1.5, "s", b"b"):
        entry = TlvEntry.of(0x0200, value)
        again = Metadata.decode_untrusted(Metadata([entry]).encode())
        assert again.get(0x0200) == value
        assert type(again.get(0x0200)) is type(value)
    with pytest.raises(errors.LocalProtocolError):
        TlvEntry.of(0x0200, 2**64)
    short_uint = Metadata.decode_untrusted(bytes.fromhex("0200 02 0002 0102"))
    assert short_uint.get(0x0200) == 0x0102


@pytest.mark.parametrize(
    "raw",
    [
        "0000 00 0000",  # key 0
        "0001 00 0001 41",  # request id with type BYTES
        "0001 01 0000",  # empty request id
        "0001 01 0001 ff",  # not UTF-8
        "0001 01 0081 " + "41" * 129,  # request id of 129 bytes
        "0200 02 0003 010203",  # 3-byte integer
        "0200 04 0001 02",  # bool 2
        "0200 05 0004 00000000",  # 4-byte float
        "0003 02 0002 0100",  # SLA class 256
        "0001 01 0001 41 0001 01 0001 42",  # request id twice
        "0200 00 0005 4142",  # value runs past the end
    ],
)
def test_malformed_metadata(raw: str) -> None:
    with pytest.raises(errors.RemoteProtocolError) as info:
        Metadata.decode_untrusted(bytes.fromhex(raw))
    assert info.value.code == ErrorCode.MALFORMED_METADATA


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"request_id": "r-1"},
        {"request_id": "r-2", "deadline_budget_ns": 2_500_000, "sla_class": 1},
        {"payload_sha256": bytes(range(32)), "trace_context": "00-ab-cd-01"},
        {
            "request_id": "r-3",
            "deadline_budget_ns": 0,
            "sla_class": 255,
            "payload_sha256": bytes(32),
        },
    ],
)
def test_call_fields_read_what_the_properties_read(fields: dict[str, Any]) -> None:
    metadata = Metadata.decode_untrusted(Metadata.build(**fields).encode())
    assert metadata.call_fields() == (
        metadata.request_id,
        metadata.deadline_budget_ns,
        metadata.sla_class,
        metadata.payload_sha256,
    )
    assert metadata.call_fields() == (
        fields.get("request_id"),
        fields.get("deadline_budget_ns"),
        fields.get("sla_class"),
        fields.get("payload_sha256"),
    )


def test_metadata_local_misuse() -> None:
    with pytest.raises(errors.LocalProtocolError):
        Metadata.build(request_id="x" * 129)
    with pytest.raises(errors.LocalProtocolError):
        Metadata.build(payload_sha256=b"short")
    with pytest.raises(errors.LocalProtocolError):
        Metadata([TlvEntry(1, TlvType.STRING, b"a"), TlvEntry(1, TlvType.STRING, b"b")])
    with pytest.raises(errors.LocalProtocolError):
        Metadata([TlvEntry(0x300, 0, bytes(40_000)), TlvEntry(0x301, 0, bytes(40_000))])
    with pytest.raises(TypeError):
        EMPTY_METADATA.replace(nonsense=1)


# ------------------------------------------------------------------------------ codecs


@dataclasses.dataclass
class _Nested:
    name: str
    quote: _Quote | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


def test_msgpack_typed_nested_and_validation() -> None:
    codec = MsgpackCodec(_Nested)
    value = _Nested("n", _Quote(1, 2, 3), ["a"])
    assert codec.decode(codec.encode(value)) == value
    assert codec.decode(codec.encode(_Nested("m"))) == _Nested("m")
    plain = MsgpackCodec()
    with pytest.raises(errors.RemoteProtocolError) as info:
        codec.decode(plain.encode({"name": 5}))
    assert info.value.code == ErrorCode.MALFORMED_BODY
    with pytest.raises(errors.RemoteProtocolError):
        codec.decode(plain.encode([1, 2]))
    with pytest.raises(errors.RemoteProtocolError):
        codec.decode(plain.encode({"name": "x", "quote": {"bid": 1}}))
    with pytest.raises(errors.LocalProtocolError):
        codec.encode(_Quote(1, 2))  # type: ignore[arg-type]
    with pytest.raises(errors.LocalProtocolError):
        plain.encode(object())
    assert plain.encode({"after": "error"})  # the packer recovered
    with pytest.raises(TypeError):
        MsgpackCodec(int)


def test_msgpack_trailing_bytes_are_malformed() -> None:
    plain = MsgpackCodec()
    with pytest.raises(errors.RemoteProtocolError):
        plain.decode(plain.encode(1) + b"\x01")


# ------------------------------------------------------------------------------ errors


def test_every_error_code_has_a_unique_name_and_value() -> None:
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    assert errors.code_name(0x0204) == "NOT_FOUND"
    assert errors.transport_code_name(0x0A) == "PROTOCOL_VIOLATION"
    assert errors.transport_code_name(0x12A) == "CRYPTO_ERROR(0x12a)"


def test_remote_errors_map_codes_to_classes() -> None:
    exc = errors.RemoteError.from_wire(ErrorCode.NOT_FOUND, "no opcode", {"opcode": 9})
    assert type(exc) is errors.NotFound
    assert (exc.code, exc.code_name, exc.message, exc.details) == (
        ErrorCode.NOT_FOUND,
        "NOT_FOUND",
        "no opcode",
        {"opcode": 9},
    )
    assert isinstance(exc, errors.QuicframeError)
    assert "[NOT_FOUND] no opcode" in str(exc)
    assert type(errors.RemoteError.from_wire(ErrorCode.DEADLINE_EXCEEDED, "")) is (
        errors.DeadlineExceeded
    )
    assert type(errors.RemoteError.from_wire(0x0399, "")) is errors.RemoteError


def test_application_error_registry() -> None:
    insufficient = errors.register_error_code(0x1_0001, "INSUFFICIENT_FUNDS")
    assert issubclass(insufficient, errors.ApplicationError)
    assert errors.code_name(0x1_0001) == "INSUFFICIENT_FUNDS"
    assert type(errors.RemoteError.from_wire(0x1_0001, "")) is insufficient
    assert insufficient("x").code == 0x1_0001
    with pytest.raises(errors.RegistrationError, match="already registered"):
        errors.register_error_code(0x1_0001, "OTHER")
    with pytest.raises(errors.RegistrationError, match="outside"):
        errors.register_error_code(0x0204, "MINE")

    class Halted(errors.ApplicationError):
        pass

    assert errors.register_error_code(0x1_0002, "HALTED", Halted) is Halted
    assert Halted().code == 0x1_0002
    assert type(errors.RemoteError.from_wire(0x2_0000, "")) is errors.ApplicationError


def test_exceptions_carry_code_frame_type_and_operation() -> None:
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex("10 00 0002 0000 0000 00000000"))
    with pytest.raises(errors.RemoteProtocolError) as info:
        decoder.next_frame()
    exc = info.value
    assert (exc.code, exc.code_name, exc.frame_type, exc.operation) == (
        ErrorCode.UNSUPPORTED_FRAME_VERSION,
        "UNSUPPORTED_FRAME_VERSION",
        0x10,
        "decode",
    )
    assert "frame type 0x10" in str(exc)
    closed = errors.ConnectionClosed("bye", code=0x0A, is_transport=True, by_peer=True)
    assert closed.code_name == "PROTOCOL_VIOLATION"
    assert isinstance(errors.IdleTimeout(), errors.ConnectionClosed)
    assert errors.StreamReset(code=ErrorCode.CANCELLED, stream_id=4).code_name == "CANCELLED"
    assert errors.TransportError(code=0x3).code_name == "FLOW_CONTROL_ERROR"
    assert errors.HandshakeTimeout().code == ErrorCode.HANDSHAKE_TIMEOUT


@pytest.mark.parametrize("odd_at", [0, 1, 14, 15, 16, 17, 63, 64, 65, 79, 80, 81, 300, 1023])
@pytest.mark.parametrize(
    "oddity", ["ack", "unknown-flag", "compressed-flag", "metadata", "longer", "truncated"]
)
def test_drain_values_fast_path_stops_exactly_at_a_different_frame(
    odd_at: int, oddity: str
) -> None:
    """Long runs take the strided fast path; whatever breaks the run must be seen."""
    ticks = [MarketTick(i, i, i, i, i, i % 7) for i in range(1, 1101)]
    parts = [MARKET_TICK_CODEC.encode_frame(t) for t in ticks]
    odd = ticks[odd_at]
    if oddity == "ack":
        parts.insert(odd_at, encode_frame(FrameType.ORDER_ACK, bytes(72)))
    elif oddity == "unknown-flag":  # ignored on receipt: the same tick, off the fast path
        raw = bytearray(parts[odd_at])
        raw[1] = 0x80
        parts[odd_at] = bytes(raw)
    elif oddity == "compressed-flag":  # a 48-byte body that is not zlib data
        raw = bytearray(parts[odd_at])
        raw[1] = 0x01
        parts[odd_at] = bytes(raw)
    elif oddity == "metadata":
        parts[odd_at] = encode_frame(
            0x10, MARKET_TICK_CODEC.encode(odd), metadata=Metadata.build(request_id="m")
        )
    elif oddity == "longer":
        parts[odd_at] = encode_frame(0x10, MARKET_TICK_CODEC.encode(odd) + b"new")
    decoder = FrameDecoder()
    data = b"".join(parts)
    if oddity == "truncated":
        data = data[: odd_at * MARKET_TICK_CODEC.frame_size + 30]
    decoder.feed(data)
    if oddity == "compressed-flag":
        if odd_at:  # the valid ticks before the bad frame are handed out first
            assert decoder.drain_values(MARKET_TICK_CODEC) == ticks[:odd_at]
        with pytest.raises(errors.RemoteProtocolError) as info:
            decoder.drain_values(MARKET_TICK_CODEC)
        assert info.value.code == ErrorCode.DECOMPRESSION_FAILED
        return
    items = decoder.drain_values(MARKET_TICK_CODEC)
    if oddity == "truncated":
        assert items == ticks[:odd_at]
        assert decoder.buffered == 30
        return
    if oddity == "ack":
        odd_item = items[odd_at]
        assert isinstance(odd_item, Frame)
        assert odd_item.type == FrameType.ORDER_ACK
        del items[odd_at]
    assert items == ticks


@dataclasses.dataclass
class _WithKeywordOnly:
    a: int
    b: str = "x"
    c: int = dataclasses.field(default=3, kw_only=True)


def test_msgpack_typed_fast_path_keeps_schema_evolution() -> None:
    codec = MsgpackCodec(_WithKeywordOnly)
    value = _WithKeywordOnly(1, "y", c=5)
    assert codec.decode(codec.encode(value)) == value
    plain = MsgpackCodec()
    # As many keys as fields, but one is unknown: the general path must take it.
    assert codec.decode(plain.encode({"a": 1, "z": 2, "c": 4})) == _WithKeywordOnly(1, "x", c=4)
    # Exactly the fields, one of the wrong type: MALFORMED_BODY, not a crash.
    with pytest.raises(errors.RemoteProtocolError) as info:
        codec.decode(plain.encode({"a": "1", "b": "y", "c": 4}))
    assert info.value.code == ErrorCode.MALFORMED_BODY


def test_decode_frame_takes_exactly_one_frame() -> None:
    data = encode_frame(FrameType.PING, bytes(8))
    frame = decode_frame(data)
    assert (frame.type, bytes(frame.body)) == (FrameType.PING, bytes(8))
    for bad in (data[:-1], data + b"\x00", data[:5]):
        with pytest.raises(errors.RemoteProtocolError) as info:
            decode_frame(bad)
        assert info.value.code == ErrorCode.PROTOCOL_ERROR
    with pytest.raises(errors.RemoteProtocolError) as info:
        decode_frame(encode_frame(0x20, bytes(2000)), max_frame_size=1024)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
