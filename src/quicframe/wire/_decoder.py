"""The incremental frame decoder: bytes in any chunking in, frames out.

Feed it what a stream delivers (``feed``), then take frames (``next_frame``) until
it returns ``None``.  It never holds more than one partial frame (at most
``max_frame_size`` plus the 12-byte header) beyond the chunk it was last fed, and
it checks a header's lengths against the limit before it waits for, or keeps, the
bytes the header announces.  Bodies of complete frames are zero-copy ``memoryview``
slices of the bytes received (small ones are copied, see ``COPY_THRESHOLD``), and
runs of fixed-layout frames are decoded straight from the received bytes.

Anything malformed raises :class:`RemoteProtocolError` with the code to close the
stream with; the decoder then stays failed and raises the same error again.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

from ._errors import ErrorCode, RemoteProtocolError
from ._frame import (
    DEFAULT_MAX_FRAME_SIZE,
    FLAG_COMPRESSED,
    HEADER,
    HEADER_SIZE,
    WIRE_VERSION,
    Frame,
    check_max_frame_size,
)
from ._metadata import EMPTY_METADATA, Metadata
from .codecs import FixedLayoutCodec

T = TypeVar("T")

_unpack_header: Final = HEADER.unpack_from
_tuple_new: Final[Callable[[type[Any], tuple[Any, ...]], Any]] = tuple.__new__


_SHORT_RUN: Final = 15

COPY_THRESHOLD: Final = 512
"""Bodies up to this size are handed out as ``bytes`` copies, larger ones as zero-copy
``memoryview`` slices.  Copying a small body costs less than making a view of it,
and a small body kept by the application then does not pin the whole received chunk
in memory."""


def _run_end(buf: bytes, pos: int, count: int, size: int, prefix: tuple[bytes, ...]) -> int:
    """Where the run of frames starting at ``pos`` whose headers all equal ``prefix``
    ends, looking at most ``count`` frames ahead.

    A window of frames is first accepted or not as a whole by comparing its three
    columns of header words (4 bytes each: one strided copy and one comparison per
    column).  In a window that is not accepted, each column of header bytes is
    checked with a strided slice and an ``lstrip`` to find where the run ends.
    Both are C loops, instead of one ``startswith`` per frame.  A frame counts only
    if its header and every header before it matched, so frames are known to be
    exactly ``size`` apart.  Windows grow geometrically: the work is proportional
    to the run, not to the buffer.
    """
    words = size % 4 == 0
    step = size // 4
    word_columns = [b"".join(prefix[k : k + 4]) for k in range(0, HEADER_SIZE, 4)]
    window = 64
    while count > 0:
        n = min(window, count)
        end = pos + n * size
        if words:
            grid = memoryview(buf)[pos:end].cast("I")
            if all(grid[j::step].tobytes() == column * n for j, column in enumerate(word_columns)):
                pos = end
                count -= n
                window *= 4
                continue
        run = n
        for k, byte in enumerate(prefix):
            matched = n - len(buf[pos + k : end : size].lstrip(byte))
            if matched < run:
                run = matched
        return pos + run * size
    return pos


def _header_error(frame_type: int, version: int, total: int, limit: int) -> RemoteProtocolError:
    if frame_type == 0:
        message, code = "frame type 0x00 is not valid", ErrorCode.MALFORMED_HEADER
    elif total - HEADER_SIZE > limit:
        message = f"frame announces {total - HEADER_SIZE} bytes, the limit is {limit}"
        code = ErrorCode.FRAME_TOO_LARGE
    else:
        message = f"frame format version {version} is not supported"
        code = ErrorCode.UNSUPPORTED_FRAME_VERSION
    return RemoteProtocolError(message, code=code, frame_type=frame_type, operation="decode")


def _inflate(body: memoryview | bytes, limit: int, frame_type: int) -> bytes:
    """Decompress a COMPRESSED body, never producing more than ``limit`` bytes."""
    inflater = zlib.decompressobj()
    try:
        # Ask for one byte more than allowed: getting it proves a bomb, and memory
        # never exceeds the limit.
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        message = f"compressed body is not valid zlib data: {exc}"
        code = ErrorCode.DECOMPRESSION_FAILED
    else:
        if len(out) <= limit and inflater.eof and not inflater.unused_data:
            return out
        if len(out) > limit:
            message = f"compressed body inflates beyond the {limit}-byte limit"
            code = ErrorCode.FRAME_TOO_LARGE
        else:
            message = "compressed body is truncated or has trailing bytes"
            code = ErrorCode.DECOMPRESSION_FAILED
    raise RemoteProtocolError(message, code=code, frame_type=frame_type, operation="decode")


def _frame_from(
    buf: bytes,
    pos: int,
    end: int,
    frame_type: int,
    flags: int,
    version: int,
    opcode: int,
    meta_len: int,
    body_len: int,
    limit: int,
) -> Frame:
    """Build the Frame whose validated header starts at ``pos`` and which ends at ``end``."""
    if meta_len:
        start = pos + HEADER_SIZE
        try:
            metadata = Metadata.decode_untrusted(buf[start : start + meta_len])
        except RemoteProtocolError as exc:
            exc.frame_type = frame_type
            raise
    else:
        metadata = EMPTY_METADATA
    body: memoryview | bytes
    if body_len > COPY_THRESHOLD:
        body = memoryview(buf)[end - body_len : end]
    else:
        body = buf[end - body_len : end]
    if flags & FLAG_COMPRESSED:
        body = _inflate(body, limit - meta_len, frame_type)
    # tuple.__new__ skips the Python-level __new__ that NamedTuple generates.
    frame: Frame = _tuple_new(Frame, (frame_type, flags, version, opcode, metadata, body))
    return frame


def decode_frame(
    data: bytes | bytearray | memoryview, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> Frame:
    """Decode exactly one complete frame: a DATAGRAM, or a call stream read to its FIN.

    ``max_frame_size`` is the caller's negotiated limit.

    Raises:
        RemoteProtocolError: as :meth:`FrameDecoder.next_frame`, and PROTOCOL_ERROR
            when ``data`` is not exactly one frame (truncated, or with bytes after it).
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size < HEADER_SIZE:
        raise RemoteProtocolError(
            f"{size} bytes cannot hold a frame header",
            code=ErrorCode.PROTOCOL_ERROR,
            operation="decode",
        )
    frame_type, flags, version, opcode, meta_len, body_len = _unpack_header(data, 0)
    total = HEADER_SIZE + meta_len + body_len
    if frame_type == 0 or version != WIRE_VERSION or total - HEADER_SIZE > max_frame_size:
        raise _header_error(frame_type, version, total, max_frame_size)
    if total != size:
        raise RemoteProtocolError(
            f"{size} bytes do not hold exactly one frame of {total} bytes",
            code=ErrorCode.PROTOCOL_ERROR,
            frame_type=frame_type,
            operation="decode",
        )
    if not meta_len and not flags & FLAG_COMPRESSED and body_len <= COPY_THRESHOLD:
        # The common small frame: no helper call, no view.
        frame: Frame = _tuple_new(
            Frame, (frame_type, flags, version, opcode, EMPTY_METADATA, data[HEADER_SIZE:])
        )
        return frame
    return _frame_from(
        data,
        0,
        total,
        frame_type,
        flags,
        version,
        opcode,
        meta_len,
        body_len,
        max_frame_size,
    )


class FrameDecoder:
    """Incremental, bounded decoder of one byte stream of frames (sans-IO).

    Args:
        max_frame_size: the largest ``meta_len + body_len`` accepted (the
            connection's negotiated limit; 1 KiB..16 MiB).  A compressed body is
            also limited to this size once decompressed.
        supported_versions: frame format versions accepted in headers.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_error",
        "_max_frame_size",
        "_need",
        "_pending",
        "_pos",
        "_versions",
    )

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        supported_versions: Iterable[int] = (WIRE_VERSION,),
    ) -> None:
        self._max_frame_size = check_max_frame_size(max_frame_size)
        self._versions = frozenset(supported_versions)
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._pending = 0
        self._need = HEADER_SIZE
        self._error: RemoteProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    def set_max_frame_size(self, max_frame_size: int) -> None:
        """Change the limit (after the handshake negotiated one); applies to the next header."""
        self._max_frame_size = check_max_frame_size(max_frame_size)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos + self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes.  A ``bytes`` object is kept without copying.

        After a protocol error the bytes are dropped (the next call to
        :meth:`next_frame` raises the error again).
        """
        chunk = data if type(data) is bytes else bytes(data)
        if not chunk or self._error is not None:
            return  # a failed decoder keeps nothing: its stream is being closed
        if self._pos == len(self._buf) and not self._pending:
            self._buf = chunk
            self._pos = 0
        else:
            self._chunks.append(chunk)
            self._pending += len(chunk)

    def feed_eof(self) -> None:
        """The stream ended.

        Raises:
            RemoteProtocolError: PROTOCOL_ERROR if it ended inside a frame.
        """
        if self._error is not None:
            raise self._error
        if self.buffered:
            raise self._fail(
                f"stream ended inside a frame ({self.buffered} bytes left over)",
                ErrorCode.PROTOCOL_ERROR,
            )

    def _fail(self, message: str, code: int) -> RemoteProtocolError:
        return self._poison(RemoteProtocolError(message, code=code, operation="decode"))

    def _poison(self, error: RemoteProtocolError) -> RemoteProtocolError:
        """Fail for good: keep ``error`` to raise again, drop everything buffered."""
        self._error = error
        # Drop what we hold: nothing more will be parsed.
        self._chunks = []
        self._pending = 0
        self._buf = b""
        self._pos = 0
        return self._error

    def _fill(self, n: int) -> bool:
        """Make ``n`` contiguous bytes available at ``_pos`` if they have arrived."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        if have + self._pending < n:
            return False
        parts = self._chunks
        if have:
            parts.insert(0, self._buf[self._pos :])
        self._buf = b"".join(parts)
        self._pos = 0
        self._chunks = []
        self._pending = 0
        return True

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes are fed.

        Raises:
            RemoteProtocolError: MALFORMED_HEADER, UNSUPPORTED_FRAME_VERSION,
                FRAME_TOO_LARGE, MALFORMED_METADATA or DECOMPRESSION_FAILED.
        """
        if self._error is not None:
            raise self._error
        # The common case (a whole frame already in _buf) makes no method calls
        # before the Frame is built: this runs once per RPC and per stream chunk.
        buf = self._buf
        pos = self._pos
        have = len(buf) - pos
        if have < HEADER_SIZE:
            if not self._fill(HEADER_SIZE):
                return None
            buf = self._buf
            pos = 0
            have = len(buf)
        frame_type, flags, version, opcode, meta_len, body_len = _unpack_header(buf, pos)
        total = HEADER_SIZE + meta_len + body_len
        try:
            if (
                frame_type == 0
                or version not in self._versions
                or total - HEADER_SIZE > self._max_frame_size
            ):
                raise _header_error(frame_type, version, total, self._max_frame_size)
            if have < total:
                if not self._fill(total):
                    return None
                pos = 0
            end = pos + total
            self._pos = end
            return _frame_from(
                self._buf,
                pos,
                end,
                frame_type,
                flags,
                version,
                opcode,
                meta_len,
                body_len,
                self._max_frame_size,
            )
        except RemoteProtocolError as exc:
            raise self._poison(exc) from None

    def __iter__(self) -> Iterator[Frame]:
        """Yield the complete frames available now."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def drain_values(self, codec: FixedLayoutCodec[T]) -> list[T | Frame]:
        """Decode every complete frame available now, with ``codec`` for its type.

        Frames of ``codec.frame_type`` come back as values, frames of other types as
        :class:`Frame` for the caller to dispatch.  Runs of plain frames of the
        codec's type (no metadata, no flags, exact layout size) take a fast path:
        the run is found by matching each 12-byte header against the one such a
        frame must have, then decoded in one C-level pass straight from the
        received bytes (``struct.iter_unpack`` over a ``memoryview``).

        Raises:
            RemoteProtocolError: as :meth:`next_frame`, or MALFORMED_BODY from the
                codec.  Values decoded before a bad frame are returned first; the
                error is raised by the next call.
        """
        if self._error is not None:
            raise self._error
        out: list[Any] = []
        prefix = codec.fast_prefix
        size = codec.frame_size
        frame_type = codec.frame_type
        while True:
            buf = self._buf
            start = pos = self._pos
            stop = len(buf) - size
            # Short runs (mixed streams): match header by header.
            if WIRE_VERSION not in self._versions:
                stop = -1  # the fast header carries WIRE_VERSION: no fast path
            limit = min(stop, start + _SHORT_RUN * size)
            while pos <= limit and buf.startswith(prefix, pos):
                pos += size
            if pos > limit and pos <= stop:
                # A long run: check the rest of it a column of header bytes at a time.
                pos = _run_end(buf, pos, (len(buf) - pos) // size, size, codec.fast_prefix_bytes)
            if pos != start:
                # codec.make is a partial of tuple.__new__: no Python frame per value.
                # (map(tuple.__new__, repeat(cls), ...) looks cheaper but crashed
                # CPython 3.11.7 in the garbage collector.)
                values = codec.iter_unpack_frames(memoryview(buf)[start:pos])
                out.extend(map(codec.make, values))
                self._pos = pos
            try:
                frame = self.next_frame()
                if frame is None:
                    return out
                out.append(codec.decode(frame.body) if frame.type == frame_type else frame)
            except RemoteProtocolError as exc:
                # Hand out what was valid before the bad frame; the next call raises.
                self._error = exc
                if out:
                    return out
                raise


__all__ = ["FrameDecoder", "decode_frame"]
