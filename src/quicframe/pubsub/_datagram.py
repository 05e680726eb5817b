"""DATAGRAM mode: one sequence-tagged data frame per QUIC DATAGRAM.

A datagram carries exactly one data frame (e.g. MARKET_TICK), byte for byte the
frame the topic published except for the header's opcode field, which carries the
subscription's **channel** (chosen by the client in SUBSCRIBE, so it can route a
datagram that overtakes SUBSCRIBED).  The frame's own ``seq`` field tags it; the
client counts the numbers it never saw as gaps (see :class:`SequenceTracker`).
"""

from __future__ import annotations

import struct
from typing import Any, Final, TypeVar

from ..wire import DEFAULT_MAX_FRAME_SIZE, FixedLayoutCodec, decode_frame
from ..wire._errors import ErrorCode, RemoteProtocolError
from ..wire._frame import HEADER_SIZE
from ..wire._registry import FrameRegistry

__all__ = ["decode_datagram", "encode_datagram"]

T = TypeVar("T")

_OPCODE: Final = struct.Struct(">H")
_pack_opcode: Final = _OPCODE.pack
_unpack_opcode: Final = _OPCODE.unpack_from


def encode_datagram(frame: bytes, channel: int) -> bytes:
    """The DATAGRAM payload for an encoded frame: the same bytes with ``channel``
    (1-65535) in the opcode field."""
    return b"".join((frame[:4], _pack_opcode(channel), frame[6:]))


def decode_datagram(
    data: bytes,
    codec: FixedLayoutCodec[T] | None = None,
    *,
    registry: FrameRegistry | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> tuple[int, T | Any]:
    """Decode one DATAGRAM: ``(channel, value)``.

    With ``codec``, a plain frame of its type (no metadata, no flags, exact layout
    size) is decoded straight from the datagram.  Anything else is decoded as a
    whole frame and its body with ``registry`` (the codec's type only, when no
    registry is given).

    Raises:
        RemoteProtocolError: not exactly one valid frame, or a body its codec
            rejects (MALFORMED_BODY), or a type with no codec (UNKNOWN_FRAME_TYPE).
    """
    if codec is not None and len(data) == codec.frame_size:
        prefix = codec.fast_prefix
        if data.startswith(prefix[:4]) and data[6:HEADER_SIZE] == prefix[6:]:
            return _unpack_opcode(data, 4)[0], codec.decode(memoryview(data)[HEADER_SIZE:])
    frame = decode_frame(data, max_frame_size=max_frame_size)
    if codec is not None and frame.type == codec.frame_type:
        return frame.opcode, codec.decode(frame.body)
    if registry is None:
        raise RemoteProtocolError(
            f"datagram carries frame type 0x{frame.type:02x}, not the subscription's",
            code=ErrorCode.UNEXPECTED_FRAME,
            frame_type=frame.type,
            operation="datagram",
        )
    return frame.opcode, registry.decode(frame)
