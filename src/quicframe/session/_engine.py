"""The sans-IO session engine: the control stream state machine and call framing.

Nothing here does I/O or reads a clock: bytes go in, events and bytes come out
(the h11 shape), and times are passed in by the caller.  The trio layer
(``quicframe._client`` and ``quicframe._server``) moves the bytes over QUIC
streams; tests drive this module directly, with no event loop.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..wire import (
    DEFAULT_MAX_FRAME_SIZE,
    EMPTY_METADATA,
    WIRE_VERSION,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    Metadata,
    MetaKey,
    SlaClass,
    TlvEntry,
    TlvType,
    encode_frame,
)
from ..wire._errors import LocalProtocolError, RemoteError, RemoteProtocolError
from ..wire._metadata import MAX_REQUEST_ID_SIZE
from ._messages import (
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
)

__all__ = [
    "ControlChannel",
    "ControlEvent",
    "GoAwayReceived",
    "HelloReceived",
    "OneFrameReader",
    "PingReceived",
    "PongReceived",
    "RejectReceived",
    "WelcomeReceived",
    "choose_version",
    "encode_error",
    "encode_request",
    "encode_response",
    "error_from_frame",
    "digest_matches",
    "payload_matches",
    "request_frame_untrusted",
    "reply_frame_untrusted",
    "sla_urgency",
]

PING_SIZE: Final = 8

# The QUIC stream urgency (0 most urgent .. 7 least, 3 the transport's default) of
# a call's stream in each direction, by SLA class.  SILVER, and calls without a
# class, keep the default; GOLD goes ahead of them and BRONZE after.
SLA_URGENCY: Final = {SlaClass.GOLD: 1, SlaClass.SILVER: 3, SlaClass.BRONZE: 5}
DEFAULT_CALL_URGENCY: Final = 3


def sla_urgency(sla_class: int | None) -> int:
    """The stream urgency for a call of ``sla_class`` (a ``SlaClass`` value, or None).

    GOLD 1, SILVER 3, BRONZE 5; no class 3 (the transport's default).  An unknown
    class above GOLD is scheduled as GOLD, the nearest lower known class
    (``docs/PROTOCOL.md`` section 5.2).
    """
    if sla_class is None or sla_class == SlaClass.SILVER:
        return DEFAULT_CALL_URGENCY
    if sla_class >= SlaClass.GOLD:
        return SLA_URGENCY[SlaClass.GOLD]
    return SLA_URGENCY[SlaClass.BRONZE]


# ------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """Base class of what the control stream reports."""


@dataclass(frozen=True, slots=True)
class HelloReceived(ControlEvent):
    hello: Hello


@dataclass(frozen=True, slots=True)
class WelcomeReceived(ControlEvent):
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class RejectReceived(ControlEvent):
    reject: Reject


@dataclass(frozen=True, slots=True)
class GoAwayReceived(ControlEvent):
    goaway: GoAway


@dataclass(frozen=True, slots=True)
class PingReceived(ControlEvent):
    """The peer pinged; the PONG is already queued in ``data_to_send()``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived(ControlEvent):
    payload: bytes


def _unexpected(frame_type: int, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        why, code=ErrorCode.UNEXPECTED_FRAME, frame_type=frame_type, operation="control"
    )


class ControlChannel:
    """One side of the control stream (stream 0).

    The client sends HELLO and then waits for WELCOME or REJECT; the server waits
    for HELLO and answers.  Once WELCOME has been exchanged both sides may send
    PING (answered automatically with PONG) and the server may send GOAWAY.  Any
    other frame, or a frame out of order, is UNEXPECTED_FRAME: a protocol error
    that closes the connection.

    Args:
        client: True on the side that dialled.
        max_frame_size: the largest frame accepted on the control stream.
    """

    def __init__(self, *, client: bool, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._client = client
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._outbox = bytearray()
        # client: "start" -> "hello-sent" -> "established" | "rejected"
        # server: "start" -> "hello-received" -> "established" | "rejected"
        self.state = "start"
        self.goaway: GoAway | None = None

    # -- sending --------------------------------------------------------------

    def _queue(self, frame_type: int, body: bytes) -> bytes:
        data = encode_frame(frame_type, body)
        self._outbox += data
        return data

    def _require(self, state: str, what: str) -> None:
        if self.state != state:
            raise LocalProtocolError(
                f"cannot send {what} in state {self.state!r}", code=ErrorCode.UNEXPECTED_FRAME
            )

    def send_hello(self, hello: Hello) -> None:
        """Queue HELLO (client, first frame)."""
        if not self._client:
            raise LocalProtocolError("only a client sends HELLO", code=ErrorCode.UNEXPECTED_FRAME)
        self._require("start", "HELLO")
        self._queue(FrameType.HELLO, HELLO_CODEC.encode(hello))
        self.state = "hello-sent"

    def send_welcome(self, welcome: Welcome) -> None:
        """Queue WELCOME (server, after HELLO)."""
        self._require("hello-received", "WELCOME")
        self._queue(FrameType.WELCOME, WELCOME_CODEC.encode(welcome))
        self.state = "established"

    def send_reject(self, reject: Reject) -> None:
        """Queue REJECT (server, after HELLO); the connection is to be closed next."""
        self._require("hello-received", "REJECT")
        self._queue(FrameType.REJECT, REJECT_CODEC.encode(reject))
        self.state = "rejected"

    def send_goaway(self, goaway: GoAway) -> None:
        """Queue GOAWAY (server, once established)."""
        if self._client:
            raise LocalProtocolError("only a server sends GOAWAY", code=ErrorCode.UNEXPECTED_FRAME)
        self._require("established", "GOAWAY")
        self._queue(FrameType.GOAWAY, GOAWAY_CODEC.encode(goaway))
        self.goaway = goaway

    def send_ping(self, payload: bytes) -> None:
        """Queue PING with 8 opaque bytes (once established)."""
        if len(payload) != PING_SIZE:
            raise LocalProtocolError("a PING carries 8 bytes", code=ErrorCode.MALFORMED_BODY)
        self._require("established", "PING")
        self._queue(FrameType.PING, payload)

    def data_to_send(self) -> bytes:
        """Take the bytes queued for the control stream."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ControlEvent]:
        """Feed bytes read from the control stream; return the events they complete.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is to
                be closed with the error's code).
        """
        self._decoder.feed(data)
        events: list[ControlEvent] = []
        while (frame := self._decoder.next_frame()) is not None:
            events.append(self._handle(frame))
        return events

    def receive_eof(self) -> None:
        """The peer finished the control stream.

        Raises:
            RemoteProtocolError: it ended inside a frame.
        """
        self._decoder.feed_eof()

    def _handle(self, frame: Frame) -> ControlEvent:
        frame_type = frame.type
        body = bytes(frame.body)
        if frame_type == FrameType.HELLO and not self._client and self.state == "start":
            self.state = "hello-received"
            return HelloReceived(_decode(HELLO_CODEC, body, frame_type))
        if frame_type == FrameType.WELCOME and self._client and self.state == "hello-sent":
            self.state = "established"
            return WelcomeReceived(_decode(WELCOME_CODEC, body, frame_type))
        if frame_type == FrameType.REJECT and self._client and self.state == "hello-sent":
            self.state = "rejected"
            return RejectReceived(_decode(REJECT_CODEC, body, frame_type))
        if self.state != "established":
            raise _unexpected(frame_type, f"frame type 0x{frame_type:02x} before the handshake")
        if frame_type == FrameType.PING:
            if len(body) != PING_SIZE:
                raise RemoteProtocolError(
                    "a PING carries 8 bytes",
                    code=ErrorCode.MALFORMED_BODY,
                    frame_type=frame_type,
                    operation="control",
                )
            self._queue(FrameType.PONG, body)
            return PingReceived(body)
        if frame_type == FrameType.PONG:
            return PongReceived(body)
        if frame_type == FrameType.GOAWAY and self._client:
            goaway = _decode(GOAWAY_CODEC, body, frame_type)
            self.goaway = goaway
            return GoAwayReceived(goaway)
        raise _unexpected(frame_type, f"frame type 0x{frame_type:02x} on the control stream")


def _decode(codec: Any, body: bytes, frame_type: int) -> Any:
    try:
        return codec.decode(body)
    except RemoteProtocolError as exc:
        exc.frame_type = frame_type
        raise


def choose_version(offered: Iterable[int], supported: Iterable[int]) -> int | None:
    """The highest version both sides speak, or None."""
    common = set(offered) & set(supported)
    return max(common) if common else None


# -------------------------------------------------------------------------- calls


class OneFrameReader:
    """Collects a call stream that carries exactly one frame, up to its FIN.

    Bounded: a header announcing more than ``max_frame_size`` fails at once
    (FRAME_TOO_LARGE), before its bytes are buffered.
    """

    __slots__ = ("_decoder", "_frame")

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._frame: Frame | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes read from the stream.

        Raises:
            RemoteProtocolError: the bytes cannot start or complete a frame, or
                bytes follow the frame (PROTOCOL_ERROR).
        """
        if self._frame is not None:
            raise RemoteProtocolError(
                "a call stream carries exactly one frame", code=ErrorCode.PROTOCOL_ERROR
            )
        self._decoder.feed(data)
        frame = self._decoder.next_frame()
        if frame is not None:
            self._frame = frame
            if self._decoder.buffered:
                raise RemoteProtocolError(
                    "a call stream carries exactly one frame", code=ErrorCode.PROTOCOL_ERROR
                )

    def feed_eof(self) -> Frame:
        """The stream ended; return its frame.

        Raises:
            RemoteProtocolError: the stream ended inside or before its frame.
        """
        self._decoder.feed_eof()
        if self._frame is None:
            raise RemoteProtocolError(
                "the call stream ended without a frame", code=ErrorCode.PROTOCOL_ERROR
            )
        return self._frame


# The call frames' fast path: a REQUEST or RESPONSE with well-known metadata only
# is packed here in one pass (header, TLV entries, body), without the Metadata
# object and the checks that a general frame needs.  The bytes are exactly
# those of ``encode_frame(..., metadata=Metadata.build(...))``; any value the
# fast path does not take for granted goes the general way, which raises the
# usual errors.
_HEADER: Final = struct.Struct(">BBHHHI")
_ENTRY: Final = struct.Struct(">HBH")
_U64_ENTRY: Final = struct.Struct(">HBHQ")
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF
_REQUEST: Final = int(FrameType.REQUEST)
_RESPONSE: Final = int(FrameType.RESPONSE)
_REQUEST_ID: Final = int(MetaKey.REQUEST_ID)
_DEADLINE_BUDGET_NS: Final = int(MetaKey.DEADLINE_BUDGET_NS)
_SLA_CLASS: Final = int(MetaKey.SLA_CLASS)
_PAYLOAD_SHA256: Final = int(MetaKey.PAYLOAD_SHA256)
_STRING: Final = int(TlvType.STRING)
_UINT: Final = int(TlvType.UINT)
_BYTES: Final = int(TlvType.BYTES)
_DIGEST_ENTRY: Final = _ENTRY.pack(_PAYLOAD_SHA256, _BYTES, 32)


def _pack_call_frame(
    frame_type: int, opcode: int, meta: list[bytes], body: bytes, max_frame_size: int
) -> bytes | None:
    """Header + ``meta`` + body, or None when a field is out of range."""
    meta_bytes = b"".join(meta)
    meta_len = len(meta_bytes)
    body_len = len(body)
    if meta_len + body_len > max_frame_size or type(body) is not bytes:
        return None
    try:
        header = _HEADER.pack(frame_type, 0, WIRE_VERSION, opcode, meta_len, body_len)
    except struct.error:
        return None
    return header + meta_bytes + body


def _request_id_entry(request_id: str) -> list[bytes] | None:
    raw = request_id.encode("utf-8")
    size = len(raw)
    if not 1 <= size <= MAX_REQUEST_ID_SIZE:
        return None
    return [_ENTRY.pack(_REQUEST_ID, _STRING, size), raw]


def encode_request(
    opcode: int,
    body: bytes,
    *,
    request_id: str,
    deadline_budget_ns: int | None = None,
    sla_class: int | None = None,
    integrity: bool = False,
    trace_context: str | None = None,
    extra: Iterable[TlvEntry] = (),
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """Encode a REQUEST frame with the call's metadata.

    Raises:
        LocalProtocolError: a field is out of range or the frame is too large.
    """
    if trace_context is None and not extra and type(request_id) is str:
        meta = _request_id_entry(request_id)
        if meta is not None and (sla_class is None or 0 <= sla_class <= 0xFF):
            if deadline_budget_ns is not None:
                budget = min(max(0, deadline_budget_ns), _U64_MAX)
                meta.append(_U64_ENTRY.pack(_DEADLINE_BUDGET_NS, _UINT, 8, budget))
            if sla_class is not None:
                meta.append(_U64_ENTRY.pack(_SLA_CLASS, _UINT, 8, sla_class))
            if integrity:
                meta.append(_DIGEST_ENTRY)
                meta.append(hashlib.sha256(body).digest())
            frame = _pack_call_frame(_REQUEST, opcode, meta, body, max_frame_size)
            if frame is not None:
                return frame
    metadata = Metadata.build(
        request_id=request_id,
        deadline_budget_ns=deadline_budget_ns,
        sla_class=sla_class,
        payload_sha256=hashlib.sha256(body).digest() if integrity else None,
        trace_context=trace_context,
        extra=extra,
    )
    return encode_frame(
        FrameType.REQUEST, body, opcode=opcode, metadata=metadata, max_frame_size=max_frame_size
    )


def request_frame_untrusted(frame: Frame) -> Frame:
    """Check that a call stream's frame is a REQUEST.

    Raises:
        RemoteProtocolError: UNEXPECTED_FRAME.
    """
    if frame.type != FrameType.REQUEST:
        raise _unexpected(
            frame.type, f"a call stream must start with REQUEST, not 0x{frame.type:02x}"
        )
    return frame


def payload_matches(frame: Frame) -> bool:
    """False when the frame carries a PAYLOAD_SHA256 that its body does not match."""
    return digest_matches(frame.body, frame.metadata.payload_sha256)


def digest_matches(body: bytes | memoryview, digest: bytes | None) -> bool:
    """False when ``digest`` (a PAYLOAD_SHA256 value, None for none) does not
    match ``body``."""
    return digest is None or hashlib.sha256(body).digest() == digest


def _reply_metadata(request_id: str | None, body: bytes | None) -> Metadata:
    if request_id is None and body is None:
        return EMPTY_METADATA
    return Metadata.build(
        request_id=request_id,
        payload_sha256=None if body is None else hashlib.sha256(body).digest(),
    )


def encode_response(
    opcode: int,
    body: bytes,
    *,
    request_id: str | None,
    integrity: bool = False,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """Encode a RESPONSE frame that echoes the request id (and digests the body).

    Raises:
        LocalProtocolError: the frame is too large.
    """
    if type(request_id) is str:
        meta = _request_id_entry(request_id)
        if meta is not None:
            if integrity:
                meta.append(_DIGEST_ENTRY)
                meta.append(hashlib.sha256(body).digest())
            frame = _pack_call_frame(_RESPONSE, opcode, meta, body, max_frame_size)
            if frame is not None:
                return frame
    metadata = _reply_metadata(request_id, body if integrity else None)
    return encode_frame(
        FrameType.RESPONSE, body, opcode=opcode, metadata=metadata, max_frame_size=max_frame_size
    )


def encode_error(
    opcode: int,
    code: int,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    request_id: str | None = None,
) -> bytes:
    """Encode an ERROR frame.  Details that msgpack cannot encode are dropped, and a
    code that does not fit the wire's u32 is sent as UNKNOWN."""
    code = int(code)
    if not 0 <= code <= 0xFFFF_FFFF:
        code = ErrorCode.UNKNOWN
    body_value = ErrorBody(code=code, message=message, details=dict(details or {}))
    try:
        body = ERROR_CODEC.encode(body_value)
    except LocalProtocolError:
        body = ERROR_CODEC.encode(ErrorBody(code=int(code), message=message))
    return encode_frame(
        FrameType.ERROR, body, opcode=opcode, metadata=_reply_metadata(request_id, None)
    )


def reply_frame_untrusted(frame: Frame, opcode: int) -> Frame:
    """Check that a reply is a RESPONSE or ERROR for ``opcode``.

    Raises:
        RemoteProtocolError: UNEXPECTED_FRAME, or PROTOCOL_ERROR for the wrong opcode.
    """
    if frame.type not in (FrameType.RESPONSE, FrameType.ERROR):
        raise _unexpected(
            frame.type, f"a call reply must be RESPONSE or ERROR, not 0x{frame.type:02x}"
        )
    if frame.opcode != opcode:
        raise RemoteProtocolError(
            f"reply for opcode 0x{frame.opcode:04x} to a call of 0x{opcode:04x}",
            code=ErrorCode.PROTOCOL_ERROR,
            frame_type=frame.type,
        )
    return frame


def error_from_frame(frame: Frame) -> RemoteError:
    """The exception an ERROR frame stands for.

    Raises:
        RemoteProtocolError: the body is not a valid ERROR body (MALFORMED_BODY).
    """
    body: ErrorBody = _decode(ERROR_CODEC, bytes(frame.body), frame.type)
    error = RemoteError.from_wire(body.code, body.message, body.details)
    error.operation = f"opcode 0x{frame.opcode:04x}"
    return error
