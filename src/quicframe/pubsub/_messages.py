"""The bodies of the pub/sub control frames (``docs/PROTOCOL.md`` section 11).

Frame types 0x0A-0x0E; each body is a msgpack map from field name to value, so
unknown fields are ignored and missing optional fields take their defaults.
Fatal subscription errors travel in the existing ERROR frame (0x09).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..wire import FrameType, MsgpackCodec, encode_frame
from ..wire._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "GAP_CODEC",
    "MODE_DATAGRAM",
    "MODE_STREAM",
    "ON_GAP_ERROR",
    "ON_GAP_SNAPSHOT",
    "SNAPSHOT_CODEC",
    "SUBSCRIBED_CODEC",
    "SUBSCRIBE_CODEC",
    "UNSUBSCRIBE_CODEC",
    "Gap",
    "SnapshotMarker",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "decode_control",
    "encode_control",
]

MODE_STREAM: Final = "stream"
MODE_DATAGRAM: Final = "datagram"
ON_GAP_SNAPSHOT: Final = "snapshot"
ON_GAP_ERROR: Final = "error"
PHASE_BEGIN: Final = "begin"
PHASE_END: Final = "end"


def _bad(frame_type: int, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        why, code=ErrorCode.MALFORMED_BODY, frame_type=frame_type, operation="subscribe"
    )


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (0x0A), client to server: the first frame of a subscription stream.

    Attributes:
        topic: the topic name.
        from_seq: resume: send every frame from this sequence number on (replay from
            history, then live).  None: start now (with a snapshot if ``snapshot``).
        mode: ``"stream"`` (frames on this stream) or ``"datagram"`` (control frames
            and the snapshot on this stream, live frames in QUIC DATAGRAMs).
        policy: the slow-consumer policy wanted (``"conflate"``, ``"drop-oldest"``,
            ``"disconnect"``, ``"block"``), or None for the topic's default.
        snapshot: with ``from_seq`` None, start with the latest value per key.
        on_gap: when the history no longer holds ``from_seq``: ``"snapshot"`` (send
            GAP naming the range, then a snapshot, then live) or ``"error"`` (fail
            with ERROR SEQUENCE_GAP naming the range).
        channel: datagram mode: the number (1-65535, unique among this connection's
            datagram subscriptions) the server writes in the opcode field of every
            datagram of this subscription.
        queue_size: the queue capacity wanted (0: the topic's default; the server
            may lower it).
    """

    topic: str
    from_seq: int | None = None
    mode: str = MODE_STREAM
    policy: str | None = None
    snapshot: bool = True
    on_gap: str = ON_GAP_SNAPSHOT
    channel: int = 0
    queue_size: int = 0

    def check(self) -> None:
        """Reject field values outside their ranges (MALFORMED_BODY)."""
        t = FrameType.SUBSCRIBE
        if not self.topic:
            raise _bad(t, "SUBSCRIBE needs a topic")
        if self.from_seq is not None and self.from_seq < 1:
            raise _bad(t, f"from_seq must be >= 1, not {self.from_seq}")
        if self.mode not in (MODE_STREAM, MODE_DATAGRAM):
            raise _bad(t, f"unknown mode {self.mode!r}")
        if self.policy is not None and self.policy not in (
            "conflate",
            "drop-oldest",
            "disconnect",
            "block",
        ):
            raise _bad(t, f"unknown policy {self.policy!r}")
        if self.on_gap not in (ON_GAP_SNAPSHOT, ON_GAP_ERROR):
            raise _bad(t, f"unknown on_gap {self.on_gap!r}")
        if self.mode == MODE_DATAGRAM and not 1 <= self.channel <= 0xFFFF:
            raise _bad(t, f"a datagram subscription needs a channel 1-65535, not {self.channel}")
        if self.queue_size < 0:
            raise _bad(t, f"queue_size must be >= 0, not {self.queue_size}")


@dataclass(frozen=True, slots=True)
class Subscribed:
    """SUBSCRIBED (0x0B), server to client: the subscription is live.

    Attributes:
        topic: the topic name.
        frame_type: the frame type of the topic's data frames (e.g. 0x10).
        head: the topic's last sequence number when the subscription started: live
            frames are numbered above it; replayed and snapshot frames at or below.
        first_seq: the oldest sequence number the history held then.
        mode: the mode granted.
        policy: the policy granted.
        queue_size: the queue capacity granted.
        channel: the datagram channel (0 in stream mode).
    """

    topic: str
    frame_type: int
    head: int
    first_seq: int
    mode: str = MODE_STREAM
    policy: str = "conflate"
    queue_size: int = 0
    channel: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMarker:
    """SNAPSHOT (0x0C), server to client: brackets the snapshot's data frames.

    ``phase`` ``"begin"`` comes first, then ``count`` data frames (the latest value
    per key, in ascending sequence order), then ``phase`` ``"end"``.  ``seq`` is the
    sequence number the snapshot is consistent at: live frames that follow are
    numbered above it, and the numbers at or below it that the snapshot lacks were
    superseded (they are not gaps).
    """

    phase: str
    seq: int
    count: int


@dataclass(frozen=True, slots=True)
class Gap:
    """GAP (0x0D), server to client: ``first_missing..last_missing`` will never come.

    Sent when a resuming subscriber's range is no longer in the history and it asked
    to recover (``on_gap="snapshot"``): a snapshot follows.
    """

    first_missing: int
    last_missing: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (0x0E), client to server: end the subscription.

    The server stops queueing, drops what was queued and finishes its side of the
    stream (FIN).  Frames already in flight still arrive.
    """

    reason: str = ""


SUBSCRIBE_CODEC: Final = MsgpackCodec(Subscribe)
SUBSCRIBED_CODEC: Final = MsgpackCodec(Subscribed)
SNAPSHOT_CODEC: Final = MsgpackCodec(SnapshotMarker)
GAP_CODEC: Final = MsgpackCodec(Gap)
UNSUBSCRIBE_CODEC: Final = MsgpackCodec(Unsubscribe)

_CODECS: Final[dict[type[Any], tuple[int, MsgpackCodec[Any]]]] = {
    Subscribe: (FrameType.SUBSCRIBE, SUBSCRIBE_CODEC),
    Subscribed: (FrameType.SUBSCRIBED, SUBSCRIBED_CODEC),
    SnapshotMarker: (FrameType.SNAPSHOT, SNAPSHOT_CODEC),
    Gap: (FrameType.GAP, GAP_CODEC),
    Unsubscribe: (FrameType.UNSUBSCRIBE, UNSUBSCRIBE_CODEC),
}
_BY_TYPE: Final[dict[int, MsgpackCodec[Any]]] = {t: c for t, c in _CODECS.values()}

ControlBody = Subscribe | Subscribed | SnapshotMarker | Gap | Unsubscribe


def encode_control(body: ControlBody) -> bytes:
    """Encode a pub/sub control frame (type from the body's class)."""
    frame_type, codec = _CODECS[type(body)]
    return encode_frame(frame_type, codec.encode(body))


def decode_control(frame_type: int, body: bytes | memoryview) -> ControlBody:
    """Decode the body of a pub/sub control frame of ``frame_type``.

    Raises:
        RemoteProtocolError: MALFORMED_BODY, or UNEXPECTED_FRAME for a type that is
            not a pub/sub control frame.
    """
    codec = _BY_TYPE.get(frame_type)
    if codec is None:
        raise RemoteProtocolError(
            f"frame type 0x{frame_type:02x} is not a pub/sub control frame",
            code=ErrorCode.UNEXPECTED_FRAME,
            frame_type=frame_type,
            operation="subscribe",
        )
    try:
        value: ControlBody = codec.decode(body)
    except RemoteProtocolError as exc:
        exc.frame_type = frame_type
        raise
    if isinstance(value, Subscribe):
        value.check()
    elif isinstance(value, SnapshotMarker) and value.phase not in (PHASE_BEGIN, PHASE_END):
        raise _bad(frame_type, f"unknown snapshot phase {value.phase!r}")
    return value
