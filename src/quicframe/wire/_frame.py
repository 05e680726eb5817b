"""The frame header, the frame-type code space, and frame encoding.

A frame is a fixed 12-byte big-endian header, then ``meta_len`` bytes of TLV
metadata, then ``body_len`` bytes of body::

    type u8 | flags u8 | version u16 | opcode u16 | meta_len u16 | body_len u32

The layout, the limits and the test vectors are specified in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final, NamedTuple

from ._errors import ErrorCode, LimitError, LocalProtocolError
from ._metadata import EMPTY_METADATA, MAX_METADATA_SIZE, Metadata

HEADER: Final = struct.Struct(">BBHHHI")
HEADER_SIZE: Final = HEADER.size  # 12
_pack_header: Final = HEADER.pack

WIRE_VERSION: Final = 1
"""The frame format version written in every header."""

DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20  # 1 MiB
HARD_MAX_FRAME_SIZE: Final = 16 << 20  # 16 MiB
"""A frame's size is ``meta_len + body_len`` (the 12-byte header is not counted).
The limit is negotiated per connection, never above the hard cap.  For a compressed
frame the limit applies to the body both before and after decompression."""

FLAG_COMPRESSED: Final = 0x01
KNOWN_FLAGS: Final = FLAG_COMPRESSED

CONTROL_RANGE: Final = range(0x00, 0x10)
APPLICATION_RANGE: Final = range(0x10, 0xE0)
EXPERIMENTAL_RANGE: Final = range(0xE0, 0x100)


class FrameType(enum.IntEnum):
    """Frame types quicframe itself defines.

    0x00-0x0F are protocol control frames (0x00 is never valid).  0x10 and 0x11
    are the market-data frames quicframe ships in the default registry; the rest
    of 0x10-0xDF belongs to applications, and 0xE0-0xFF to experiments.
    """

    HELLO = 0x01
    WELCOME = 0x02
    REJECT = 0x03
    GOAWAY = 0x04
    PING = 0x05
    PONG = 0x06
    REQUEST = 0x07
    RESPONSE = 0x08
    ERROR = 0x09
    # 0x0A-0x0F: market-data (pub/sub) control frames, see quicframe.pubsub.
    SUBSCRIBE = 0x0A
    SUBSCRIBED = 0x0B
    SNAPSHOT = 0x0C
    GAP = 0x0D
    UNSUBSCRIBE = 0x0E
    # 0x0F: reserved for a later market-data control frame.
    MARKET_TICK = 0x10
    ORDER_ACK = 0x11


class Frame(NamedTuple):
    """One decoded frame.

    ``body`` is a zero-copy ``memoryview`` into the received bytes when it is larger
    than ``COPY_THRESHOLD`` (512 bytes), and ``bytes`` otherwise or when it was
    decompressed; either stays valid for as long as you hold it.
    """

    type: int
    flags: int
    version: int
    opcode: int
    metadata: Metadata
    body: memoryview | bytes

    @property
    def compressed(self) -> bool:
        """True when the body arrived compressed (it is already decompressed here)."""
        return bool(self.flags & FLAG_COMPRESSED)


def check_max_frame_size(max_frame_size: int) -> int:
    """Validate a frame-size limit (1 KiB..16 MiB); return it."""
    if not 1024 <= max_frame_size <= HARD_MAX_FRAME_SIZE:
        raise LimitError(
            f"max_frame_size must be 1024..{HARD_MAX_FRAME_SIZE} bytes, not {max_frame_size}"
        )
    return max_frame_size


def _check_fields(frame_type: int, opcode: int, flags: int) -> None:
    if not 0 < frame_type <= 0xFF:  # a misuse: say which field is wrong
        raise LocalProtocolError(
            f"frame type {frame_type} is not 0x01..0xff", code=ErrorCode.MALFORMED_HEADER
        )
    if not 0 <= opcode <= 0xFFFF:
        raise LocalProtocolError(
            f"opcode {opcode} is not a u16", code=ErrorCode.MALFORMED_HEADER, frame_type=frame_type
        )
    if flags & ~KNOWN_FLAGS & 0xFF or not 0 <= flags <= 0xFF:
        raise LocalProtocolError(
            f"flags 0x{flags:x} set bits this version does not define",
            code=ErrorCode.MALFORMED_HEADER,
            frame_type=frame_type,
        )


def encode_frame(
    frame_type: int,
    body: bytes | bytearray | memoryview = b"",
    *,
    opcode: int = 0,
    metadata: Metadata = EMPTY_METADATA,
    compress: bool = False,
    max_frame_size: int = HARD_MAX_FRAME_SIZE,
) -> bytes:
    """Encode one frame.

    With ``compress=True`` the body is zlib-compressed and the COMPRESSED flag set.

    Raises:
        LocalProtocolError: a field is out of range (MALFORMED_HEADER) or the frame
            exceeds ``max_frame_size`` (FRAME_TOO_LARGE).
    """
    flags = 0
    # Identity first: Metadata.__bool__ is a Python-level call.
    meta = b"" if metadata is EMPTY_METADATA else metadata.encode()
    if compress:
        # The receiver limits the inflated body, so the limit applies before compressing.
        if len(meta) + len(body) > max_frame_size:
            raise LocalProtocolError(
                f"frame of {len(meta) + len(body)} bytes (uncompressed) exceeds the "
                f"{max_frame_size}-byte limit",
                code=ErrorCode.FRAME_TOO_LARGE,
                frame_type=frame_type,
            )
        body = zlib.compress(body, 1)
        flags = FLAG_COMPRESSED
    meta_len = len(meta)
    body_len = len(body)
    if meta_len + body_len > max_frame_size:
        raise LocalProtocolError(
            f"frame of {meta_len + body_len} bytes exceeds the {max_frame_size}-byte limit",
            code=ErrorCode.FRAME_TOO_LARGE,
            frame_type=frame_type,
        )
    try:
        if not frame_type:
            raise struct.error("frame type 0 is reserved")
        # struct checks the ranges of type (u8) and opcode (u16) for us.
        header = _pack_header(frame_type, flags, WIRE_VERSION, opcode, meta_len, body_len)
    except struct.error as exc:
        _check_fields(frame_type, opcode, flags)
        raise LocalProtocolError(
            f"cannot encode the header: {exc}",
            code=ErrorCode.MALFORMED_HEADER,
            frame_type=frame_type,
        ) from None
    if meta_len:
        return b"".join((header, meta, body))
    return header + body


def encode_frame_into(
    buffer: bytearray | memoryview,
    offset: int,
    frame_type: int,
    body: bytes | bytearray | memoryview = b"",
    *,
    opcode: int = 0,
    metadata: Metadata = EMPTY_METADATA,
    max_frame_size: int = HARD_MAX_FRAME_SIZE,
) -> int:
    """Write one (uncompressed) frame into ``buffer`` at ``offset``; return the end offset.

    Raises:
        LocalProtocolError: as :func:`encode_frame`.
        ValueError: the buffer is too small.
    """
    # Identity first: Metadata.__bool__ is a Python-level call.
    meta = b"" if metadata is EMPTY_METADATA else metadata.encode()
    _check_fields(frame_type, opcode, 0)
    meta_len = len(meta)
    body_len = len(body)
    if meta_len + body_len > max_frame_size:
        raise LocalProtocolError(
            f"frame of {meta_len + body_len} bytes exceeds the {max_frame_size}-byte limit",
            code=ErrorCode.FRAME_TOO_LARGE,
            frame_type=frame_type,
        )
    end = offset + HEADER_SIZE + meta_len + body_len
    if end > len(buffer):
        raise ValueError(f"buffer of {len(buffer)} bytes cannot hold a frame ending at {end}")
    HEADER.pack_into(buffer, offset, frame_type, 0, WIRE_VERSION, opcode, meta_len, body_len)
    pos = offset + HEADER_SIZE
    buffer[pos : pos + meta_len] = meta
    pos += meta_len
    buffer[pos:end] = body
    return end


__all__ = [
    "APPLICATION_RANGE",
    "CONTROL_RANGE",
    "DEFAULT_MAX_FRAME_SIZE",
    "EXPERIMENTAL_RANGE",
    "FLAG_COMPRESSED",
    "HARD_MAX_FRAME_SIZE",
    "HEADER",
    "HEADER_SIZE",
    "MAX_METADATA_SIZE",
    "WIRE_VERSION",
    "Frame",
    "FrameType",
    "check_max_frame_size",
    "encode_frame",
    "encode_frame_into",
]
