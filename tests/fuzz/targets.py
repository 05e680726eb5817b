"""Fuzz targets: every parser that reads bytes from a peer, one function each.

Each target takes one ``bytes`` input and feeds it to a parser the way the SDK does
when the bytes come off the network.  The only exception a target lets through on
purpose is :class:`~quicframe.errors.RemoteProtocolError` with a protocol-range code,
which it swallows after checking it; anything else (another exception type, a
failed consistency assertion) is a bug the fuzzer reports.

The first byte of an input is a *control byte*: it picks how the rest is chunked
(as QUIC would deliver it) or which codec reads it, so the same input replays the
same way with atheris (``tests/fuzz/run.py``) and in the pytest corpus replay
(``tests/fuzz/test_corpus.py``).  Nothing here imports atheris.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, Final

from quicframe.errors import ErrorCode, RemoteError, RemoteProtocolError
from quicframe.h3 import _mapping as h3_mapping
from quicframe.pubsub._datagram import decode_datagram
from quicframe.pubsub._messages import decode_control
from quicframe.session import (
    ERROR_CODEC,
    GOAWAY_CODEC,
    HELLO_CODEC,
    REJECT_CODEC,
    SUPPORTED_VERSIONS,
    WELCOME_CODEC,
    ControlChannel,
    ErrorBody,
    GoAway,
    GoAwayReceived,
    Hello,
    HelloReceived,
    OneFrameReader,
    PingReceived,
    Reject,
    RejectReceived,
    Welcome,
    WelcomeReceived,
    choose_version,
    error_from_frame,
    payload_matches,
    reply_frame_untrusted,
    request_frame_untrusted,
    sla_urgency,
)
from quicframe.wire import (
    MARKET_TICK_CODEC,
    ORDER_ACK_CODEC,
    FixedLayoutCodec,
    Frame,
    FrameDecoder,
    FrameType,
    Metadata,
    MsgpackCodec,
    check_max_frame_size,
    decode_frame,
    default_registry,
)

Target = Callable[[bytes], None]

# The error codes a parser may raise: the protocol range (docs/PROTOCOL.md section 9).
_PROTOCOL_CODES: Final = range(0x0001, 0x0100)

# The largest value an error code may take where quicframe carries one (u32).
_MAX_CODE: Final = 0xFFFF_FFFF


def check_error(exc: RemoteProtocolError) -> None:
    """A parser's error must carry a protocol code and render without failing."""
    assert exc.code in _PROTOCOL_CODES, f"unexpected code 0x{exc.code:x} in {exc!r}"
    assert str(exc)


def _chunks(data: bytes, control: int) -> Iterator[bytes]:
    """Cut ``data`` as a stream might deliver it: whole (control 0), or in pieces
    of 1-31 bytes (control bits 0-4), with every other cut one byte (bit 5)."""
    size = control & 0x1F
    if not size:
        yield data
        return
    pos = 0
    alternate = bool(control & 0x20)
    toggle = False
    while pos < len(data):
        step = 1 if alternate and toggle else size
        toggle = not toggle
        yield data[pos : pos + step]
        pos += step


def _split(data: bytes) -> tuple[int, bytes]:
    if not data:
        return 0, b""
    return data[0], data[1:]


def _limit(control: int) -> int:
    # Bit 7 picks the smallest allowed limit, so FRAME_TOO_LARGE is easy to reach.
    return 1024 if control & 0x80 else 1 << 20


def _touch_metadata(metadata: Metadata) -> None:
    """Read every accessor an application or the session layer may use."""
    _ = metadata.request_id, metadata.deadline_budget_ns, metadata.trace_context
    sla = metadata.sla_class
    assert sla is None or 0 <= sla <= 0xFF
    assert 0 <= sla_urgency(sla) <= 7
    digest = metadata.payload_sha256
    assert digest is None or len(digest) == 32
    for entry in metadata.entries:
        entry.decoded()
    # What came off the wire goes back on it byte for byte (forwarding).
    again = Metadata.decode_untrusted(metadata.encode())
    assert again.entries == metadata.entries


def _touch_frame(frame: Frame) -> None:
    assert 0 < frame.type <= 0xFF
    _touch_metadata(frame.metadata)
    assert isinstance(frame.body, bytes | memoryview)


# --------------------------------------------------------------------------- wire


def frame_decoder(data: bytes) -> None:
    """FrameDecoder fed in chunks, every frame's body decoded with the registry."""
    control, payload = _split(data)
    decoder = FrameDecoder(max_frame_size=_limit(control))
    try:
        for chunk in _chunks(payload, control):
            decoder.feed(chunk)
            for frame in decoder:
                _touch_frame(frame)
                if default_registry.spec_for_type(frame.type) is not None:
                    try:
                        default_registry.decode(frame)
                    except RemoteProtocolError as exc:
                        check_error(exc)
        assert decoder.buffered <= len(payload)
        decoder.feed_eof()
    except RemoteProtocolError as exc:
        check_error(exc)
        failure = exc
    else:
        return
    # A failed decoder stays failed with the same error and holds nothing.
    assert _raised(decoder.next_frame) is failure
    assert decoder.buffered == 0


def _raised(call: Callable[[], object]) -> RemoteProtocolError | None:
    try:
        call()
    except RemoteProtocolError as exc:
        return exc
    return None


def _drain(codec: FixedLayoutCodec[Any], payload: bytes, control: int) -> list[Any]:
    """Everything drain_values returns, then the error it ends with (or None)."""
    decoder = FrameDecoder(max_frame_size=_limit(control))
    out: list[Any] = []
    try:
        for chunk in _chunks(payload, control):
            decoder.feed(chunk)
            out.extend(decoder.drain_values(codec))
        # Values decoded before a bad frame come first; the error is raised next.
        assert not decoder.drain_values(codec)
    except RemoteProtocolError as exc:
        check_error(exc)
        out.append(("error", exc.code))
    return out


def _slow(codec: FixedLayoutCodec[Any], payload: bytes, control: int) -> list[Any]:
    """The same, one frame at a time (the reference for the fast paths)."""
    decoder = FrameDecoder(max_frame_size=_limit(control))
    out: list[Any] = []
    try:
        for chunk in _chunks(payload, control):
            decoder.feed(chunk)
            for frame in decoder:
                if frame.type == codec.frame_type:
                    out.append(codec.decode(frame.body))
                else:
                    out.append(frame)
    except RemoteProtocolError as exc:
        check_error(exc)
        out.append(("error", exc.code))
    return out


def _comparable(items: list[Any]) -> list[Any]:
    return [
        (item.type, item.flags, item.opcode, item.metadata.encode(), bytes(item.body))
        if isinstance(item, Frame)
        else item
        for item in items
    ]


def drain_values(data: bytes) -> None:
    """drain_values (the run-matching fast paths) must agree with next_frame."""
    control, payload = _split(data)
    codec: FixedLayoutCodec[Any] = ORDER_ACK_CODEC if control & 0x40 else MARKET_TICK_CODEC
    fast = _drain(codec, payload, control)
    slow = _slow(codec, payload, control)
    assert _comparable(fast) == _comparable(slow), "drain_values disagrees with next_frame"


def single_frame(data: bytes) -> None:
    """decode_frame: a DATAGRAM, or a call stream read to its FIN."""
    control, payload = _split(data)
    try:
        frame = decode_frame(payload, max_frame_size=_limit(control))
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    _touch_frame(frame)


def metadata(data: bytes) -> None:
    """Metadata.decode_untrusted of a whole metadata area."""
    try:
        parsed = Metadata.decode_untrusted(data)
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    assert parsed.encode() == data
    _touch_metadata(parsed)


def fixed_layout(data: bytes) -> None:
    """MarketTick and OrderAck bodies, read in place from a memoryview and from bytes."""
    control, body = _split(data)
    codec: FixedLayoutCodec[Any] = ORDER_ACK_CODEC if control & 1 else MARKET_TICK_CODEC
    try:
        value = codec.decode(memoryview(body))
    except RemoteProtocolError as exc:
        check_error(exc)
        assert len(body) < codec.size
        return
    assert value == codec.decode(body)
    # The fields re-encode to the first ``size`` bytes, reserved bytes as zero.
    assert codec.decode(codec.encode(value)) == value


# ------------------------------------------------------------------------ msgpack


@dataclasses.dataclass(frozen=True, slots=True)
class _Leg:
    instrument_id: int
    ratio: float = 1.0
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Order:
    """An application message with the shapes the schema code handles."""

    client_order_id: int
    symbol: str
    price: float
    quantity: int = 0
    payload: bytes = b""
    legs: list[_Leg] = dataclasses.field(default_factory=list)
    by_venue: dict[str, _Leg] = dataclasses.field(default_factory=dict)
    parent: _Leg | None = None
    flags: list[int] = dataclasses.field(default_factory=list)
    extra: Any = None


_MSGPACK_CODECS: Final[tuple[MsgpackCodec[Any], ...]] = (
    MsgpackCodec(_Order),
    MsgpackCodec(_Leg),
    MsgpackCodec(),
    HELLO_CODEC,
    WELCOME_CODEC,
    REJECT_CODEC,
    GOAWAY_CODEC,
    ERROR_CODEC,
)


def msgpack_body(data: bytes) -> None:
    """msgpack bodies into typed dataclass messages (and untyped values)."""
    control, body = _split(data)
    codec = _MSGPACK_CODECS[control % len(_MSGPACK_CODECS)]
    try:
        value = codec.decode(body)
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    if codec.type is not None:
        assert isinstance(value, codec.type)
        _check_session_message(value)
        # A value that decoded re-encodes (what a forwarding peer does).
        codec.encode(value)


def _check_session_message(value: object) -> None:
    """What the session layer relies on once a control body decoded."""
    if isinstance(value, Hello):
        choose_version(value.versions, SUPPORTED_VERSIONS)
        _ = f"{value.versions}"
    elif isinstance(value, Reject | GoAway):
        assert 0 <= value.code <= _MAX_CODE  # it becomes a QUIC close code
    elif isinstance(value, ErrorBody):
        error = RemoteError.from_wire(value.code, value.message, value.details)
        assert str(error)


# ----------------------------------------------------------------------- session


def control_server(data: bytes) -> None:
    """The server's side of the control stream: HELLO, then PINGs."""
    control, payload = _split(data)
    channel = ControlChannel(client=False, max_frame_size=_limit(control))
    try:
        for chunk in _chunks(payload, control):
            for event in channel.receive_data(chunk):
                if isinstance(event, HelloReceived):
                    hello = event.hello
                    _check_session_message(hello)
                    with contextlib.suppress(ValueError):  # the server uses the default
                        check_max_frame_size(hello.max_frame_size)
                    if control & 0x40:
                        channel.send_reject(Reject(ErrorCode.UNAUTHORIZED, "no"))
                    else:
                        channel.send_welcome(Welcome(version=1))
                elif isinstance(event, PingReceived):
                    assert len(event.payload) == 8
                channel.data_to_send()
        channel.receive_eof()
    except RemoteProtocolError as exc:
        check_error(exc)


def control_client(data: bytes) -> None:
    """The client's side of the control stream: WELCOME or REJECT, then GOAWAY, PONGs."""
    control, payload = _split(data)
    channel = ControlChannel(client=True, max_frame_size=_limit(control))
    channel.send_hello(Hello(versions=list(SUPPORTED_VERSIONS)))
    channel.data_to_send()
    try:
        for chunk in _chunks(payload, control):
            for event in channel.receive_data(chunk):
                if isinstance(event, WelcomeReceived):
                    welcome = event.welcome
                    with contextlib.suppress(ValueError):  # the client uses the default
                        check_max_frame_size(welcome.max_frame_size)
                    assert welcome.heartbeat_interval_ms >= 0
                    assert math.isfinite(welcome.heartbeat_interval_ms / 1000)
                elif isinstance(event, RejectReceived):
                    _check_session_message(event.reject)
                elif isinstance(event, GoAwayReceived):
                    _check_session_message(event.goaway)
                channel.data_to_send()
        channel.receive_eof()
    except RemoteProtocolError as exc:
        check_error(exc)


def call_stream(data: bytes) -> None:
    """A call stream read to its FIN: REQUEST on the server, RESPONSE/ERROR on the client."""
    control, payload = _split(data)
    reader = OneFrameReader(max_frame_size=_limit(control))
    try:
        for chunk in _chunks(payload, control):
            reader.feed(chunk)
        frame = reader.feed_eof()
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    _touch_frame(frame)
    try:
        request_frame_untrusted(frame)
        payload_matches(frame)
    except RemoteProtocolError as exc:
        check_error(exc)
    try:
        reply = reply_frame_untrusted(frame, frame.opcode)
        if reply.type == FrameType.ERROR:
            error = error_from_frame(reply)
            assert 0 <= error.code <= _MAX_CODE
            assert str(error)
    except RemoteProtocolError as exc:
        check_error(exc)


# ------------------------------------------------------------------------ pub/sub


def pubsub_control(data: bytes) -> None:
    """The bodies of SUBSCRIBE, SUBSCRIBED, SNAPSHOT, GAP and UNSUBSCRIBE."""
    control, body = _split(data)
    frame_type = FrameType.SUBSCRIBE + control % 5
    try:
        decode_control(frame_type, body)
    except RemoteProtocolError as exc:
        check_error(exc)


def pubsub_datagram(data: bytes) -> None:
    """One DATAGRAM of a subscription (the fixed-layout fast path, then the registry)."""
    control, payload = _split(data)
    codec: FixedLayoutCodec[Any] = ORDER_ACK_CODEC if control & 1 else MARKET_TICK_CODEC
    try:
        channel, _ = decode_datagram(
            payload, codec, registry=default_registry if control & 2 else None
        )
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    assert 0 <= channel <= 0xFFFF


# ------------------------------------------------------------------------- HTTP/3


def h3_request(data: bytes) -> None:
    """The HTTP/3 gateway's reading of a request: headers, Accept, opcode, body.

    The input is ``name=value`` lines, an empty line, then the body.  The gateway
    answers 400 for BadHeader and MalformedBody (both ValueErrors); nothing else
    may escape.
    """
    control, payload = _split(data)
    head, _, body = payload.partition(b"\n\n")
    pairs = [line.partition(b"=")[::2] for line in head.split(b"\n")[:64]]
    try:
        headers = h3_mapping.parse_request_headers(pairs)
    except h3_mapping.BadHeader:
        return
    assert headers.sla_class is None or 0 <= headers.sla_class <= 0xFF
    assert headers.payload_sha256 is None or len(headers.payload_sha256) == 32
    assert headers.deadline_ms is None or math.isfinite(headers.deadline_ms)
    media = h3_mapping.normalise_media_type(headers.content_type)
    h3_mapping.choose_response_type(headers.accept, media)
    h3_mapping.choose_stream_type(headers.accept)
    opcode = h3_mapping.parse_opcode(headers.path.rsplit("/", 1)[-1])
    assert opcode is None or 0 <= opcode <= 0xFFFF
    h3_mapping.digest_matches(body, headers.payload_sha256)
    try:
        packed = h3_mapping.decode_body(body, h3_mapping.JSON if control & 1 else media)
    except h3_mapping.MalformedBody:
        return
    # What decoded goes to the route's codec, and back out as JSON or msgpack.
    try:
        MsgpackCodec().decode(packed)
    except RemoteProtocolError as exc:
        check_error(exc)
        return
    if control & 1:
        h3_mapping.encode_body(packed, h3_mapping.JSON)


TARGETS: Final[dict[str, Target]] = {
    "frame_decoder": frame_decoder,
    "drain_values": drain_values,
    "single_frame": single_frame,
    "metadata": metadata,
    "fixed_layout": fixed_layout,
    "msgpack_body": msgpack_body,
    "control_server": control_server,
    "control_client": control_client,
    "call_stream": call_stream,
    "pubsub_control": pubsub_control,
    "pubsub_datagram": pubsub_datagram,
    "h3_request": h3_request,
}
"""Every target by name: the corpus directory ``tests/fuzz/corpus/<name>/`` seeds it."""
