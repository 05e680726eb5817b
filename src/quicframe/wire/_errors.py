"""The error model of the whole SDK: numeric codes and one exception hierarchy.

Every exception quicframe raises on purpose derives from :class:`QuicframeError` and
carries a numeric ``code`` with its ``code_name``, and the frame type and the
operation where they are known.  The codes are part of the wire contract
(``docs/PROTOCOL.md``, section "Error codes"): they travel in ERROR frames, in QUIC
RESET_STREAM / STOP_SENDING frames and in QUIC CONNECTION_CLOSE frames of type 0x1d.

This module is sans-IO: it imports nothing but the standard library.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final


class ErrorCode(enum.IntEnum):
    """quicframe's own application error codes (the QUIC application error space).

    Ranges: 0x0000 no error; 0x0001-0x00FF protocol; 0x0100-0x01FF session and
    handshake; 0x0200-0x02FF call status; 0x0300-0x03FF market data.  Codes from
    ``APPLICATION_MIN`` up to ``APPLICATION_MAX`` belong to applications and are
    registered with :func:`register_error_code`.
    """

    NO_ERROR = 0x0000

    # Protocol violations: the peer (or we) broke the wire contract.
    PROTOCOL_ERROR = 0x0001
    FRAME_TOO_LARGE = 0x0002
    MALFORMED_HEADER = 0x0003
    MALFORMED_METADATA = 0x0004
    MALFORMED_BODY = 0x0005
    UNKNOWN_FRAME_TYPE = 0x0006
    DECOMPRESSION_FAILED = 0x0007
    UNEXPECTED_FRAME = 0x0008
    UNSUPPORTED_FRAME_VERSION = 0x0009
    LIMIT_EXCEEDED = 0x000A

    # Session: handshake, authentication, lifecycle.
    HANDSHAKE_FAILED = 0x0100
    VERSION_MISMATCH = 0x0101
    UNAUTHORIZED = 0x0102
    INSECURE = 0x0103
    HANDSHAKE_TIMEOUT = 0x0104
    GOING_AWAY = 0x0105
    CONNECTION_LOST = 0x0106

    # Call status: the outcome of one RPC.
    CANCELLED = 0x0200
    UNKNOWN = 0x0201
    INVALID_ARGUMENT = 0x0202
    DEADLINE_EXCEEDED = 0x0203
    NOT_FOUND = 0x0204
    ALREADY_EXISTS = 0x0205
    PERMISSION_DENIED = 0x0206
    RESOURCE_EXHAUSTED = 0x0207
    FAILED_PRECONDITION = 0x0208
    ABORTED = 0x0209
    OUT_OF_RANGE = 0x020A
    UNIMPLEMENTED = 0x020B
    INTERNAL = 0x020C
    UNAVAILABLE = 0x020D
    DATA_LOSS = 0x020E
    UNAUTHENTICATED = 0x020F
    INTEGRITY_MISMATCH = 0x0210

    # Market data.
    SLOW_CONSUMER = 0x0300
    SEQUENCE_GAP = 0x0301
    UNKNOWN_TOPIC = 0x0302
    SUBSCRIPTION_LIMIT = 0x0303


APPLICATION_MIN: Final = 0x1_0000
APPLICATION_MAX: Final = 0xFFFF_FFFF


class TransportErrorCode(enum.IntEnum):
    """QUIC transport error codes, RFC 9000 section 20.1.

    ``CRYPTO_ERROR`` is the first of a range: 0x0100-0x01FF carry a TLS alert in
    their low byte (see :func:`transport_code_name`).
    """

    NO_ERROR = 0x00
    INTERNAL_ERROR = 0x01
    CONNECTION_REFUSED = 0x02
    FLOW_CONTROL_ERROR = 0x03
    STREAM_LIMIT_ERROR = 0x04
    STREAM_STATE_ERROR = 0x05
    FINAL_SIZE_ERROR = 0x06
    FRAME_ENCODING_ERROR = 0x07
    TRANSPORT_PARAMETER_ERROR = 0x08
    CONNECTION_ID_LIMIT_ERROR = 0x09
    PROTOCOL_VIOLATION = 0x0A
    INVALID_TOKEN = 0x0B
    APPLICATION_ERROR = 0x0C
    CRYPTO_BUFFER_EXCEEDED = 0x0D
    KEY_UPDATE_ERROR = 0x0E
    AEAD_LIMIT_REACHED = 0x0F
    NO_VIABLE_PATH = 0x10
    CRYPTO_ERROR = 0x0100


def transport_code_name(code: int) -> str:
    """Name a QUIC transport error code, e.g. ``CRYPTO_ERROR(0x12a)`` for a TLS alert."""
    if 0x0100 <= code <= 0x01FF:
        return f"CRYPTO_ERROR(0x{code:x})"
    try:
        return TransportErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_TRANSPORT_ERROR(0x{code:x})"


# --------------------------------------------------------------------------------------
# Application error code registry
# --------------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_app_codes: dict[int, tuple[str, type[RemoteError]]] = {}


def register_error_code(
    code: int, name: str, exception: type[RemoteError] | None = None
) -> type[RemoteError]:
    """Register an application error code (``APPLICATION_MIN``..``APPLICATION_MAX``).

    Returns the exception class raised on a client that receives the code: the
    given subclass of :class:`ApplicationError`, or a new one named after ``name``.

    Raises:
        RegistrationError: the code is outside the application range, is already
            registered, or the name is not an identifier.
    """
    if not APPLICATION_MIN <= code <= APPLICATION_MAX:
        raise RegistrationError(
            f"application error code 0x{code:x} is outside "
            f"0x{APPLICATION_MIN:x}..0x{APPLICATION_MAX:x}; codes below are quicframe's own"
        )
    if not name.isidentifier():
        raise RegistrationError(f"error code name {name!r} must be an identifier")
    with _registry_lock:
        if code in _app_codes:
            raise RegistrationError(
                f"application error code 0x{code:x} is already registered as "
                f"{_app_codes[code][0]!r}"
            )
        if exception is None:
            exception = type(
                "".join(part.capitalize() for part in name.split("_")) or name,
                (ApplicationError,),
                {"default_code": code, "__module__": "quicframe.errors"},
            )
        elif not issubclass(exception, ApplicationError):
            raise RegistrationError(f"{exception.__name__} must subclass ApplicationError")
        else:
            exception.default_code = code
        _app_codes[code] = (name, exception)
    return exception


def code_name(code: int) -> str:
    """The name of a quicframe or registered application error code."""
    try:
        return ErrorCode(code).name
    except ValueError:
        pass
    entry = _app_codes.get(code)
    if entry is not None:
        return entry[0]
    return f"UNKNOWN_CODE(0x{code:x})"


def remote_error_class(code: int) -> type[RemoteError]:
    """The :class:`RemoteError` subclass a peer-reported ``code`` maps to."""
    cls = _STATUS_CLASSES.get(code)
    if cls is not None:
        return cls
    entry = _app_codes.get(code)
    if entry is not None:
        return entry[1]
    if APPLICATION_MIN <= code <= APPLICATION_MAX:
        return ApplicationError
    return RemoteError


# --------------------------------------------------------------------------------------
# The hierarchy
# --------------------------------------------------------------------------------------


class QuicframeError(Exception):
    """The root of every error quicframe raises on purpose.

    Attributes:
        code: the numeric error code (an :class:`ErrorCode`, a transport code for
            :class:`TransportError`, or a registered application code).
        code_name: the code's name.
        frame_type: the frame type involved, when known.
        operation: what was being done (``"decode"``, ``"call"``, an opcode...), when known.
    """

    default_code: ClassVar[int] = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        frame_type: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: int = self.default_code if code is None else code
        self.frame_type = frame_type
        self.operation = operation

    @property
    def code_name(self) -> str:
        return code_name(self.code)

    def __str__(self) -> str:
        where = []
        if self.frame_type is not None:
            where.append(f"frame type 0x{self.frame_type:02x}")
        if self.operation is not None:
            where.append(self.operation)
        suffix = f" ({', '.join(where)})" if where else ""
        return f"[{self.code_name}] {self.message}{suffix}"


class RegistrationError(QuicframeError, ValueError):
    """A frame type, codec or error code was registered wrongly (raised at import time)."""

    default_code = ErrorCode.INTERNAL


class LimitError(QuicframeError, ValueError):
    """A configured limit was asked for outside what the protocol allows."""

    default_code = ErrorCode.LIMIT_EXCEEDED


class ProtocolError(QuicframeError):
    """The wire contract was broken.  See the Local/Remote subclasses."""

    default_code = ErrorCode.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (an API misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    The stream (or connection) that carried them is closed with :attr:`code`.
    """


class TransportError(QuicframeError):
    """A QUIC transport error (RFC 9000 section 20), by code and name."""

    default_code = TransportErrorCode.INTERNAL_ERROR

    @property
    def code_name(self) -> str:
        return transport_code_name(self.code)


class ConnectionClosed(QuicframeError):
    """The connection is closed; every further use raises this.

    Attributes:
        reason: the reason phrase sent with the close, if any.
        by_peer: True when the peer closed the connection, False when we did.
        is_transport: True when ``code`` is a QUIC transport code rather than an
            application (quicframe) code.
    """

    default_code = ErrorCode.NO_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        reason: str = "",
        by_peer: bool = False,
        is_transport: bool = False,
        frame_type: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message, code=code, frame_type=frame_type, operation=operation)
        self.reason = reason
        self.by_peer = by_peer
        self.is_transport = is_transport

    @property
    def code_name(self) -> str:
        if self.is_transport:
            return transport_code_name(self.code)
        return code_name(self.code)


class IdleTimeout(ConnectionClosed):
    """The connection was closed because it was idle for longer than the idle timeout."""


class ConnectionLost(ConnectionClosed):
    """The connection died under a call or subscription that was in flight."""

    default_code = ErrorCode.CONNECTION_LOST


class StreamReset(QuicframeError):
    """The peer reset the stream (RESET_STREAM) or asked us to stop sending
    (STOP_SENDING); :attr:`code` is the peer's application error code."""

    default_code = ErrorCode.CANCELLED

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        stream_id: int | None = None,
        stop_sending: bool = False,
        frame_type: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message, code=code, frame_type=frame_type, operation=operation)
        self.stream_id = stream_id
        self.stop_sending = stop_sending


class HandshakeError(QuicframeError):
    """The QUIC or quicframe handshake failed."""

    default_code = ErrorCode.HANDSHAKE_FAILED


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete in time."""

    default_code = ErrorCode.HANDSHAKE_TIMEOUT


class VersionMismatch(HandshakeError):
    """Client and server share no protocol version."""

    default_code = ErrorCode.VERSION_MISMATCH


class Unauthorized(HandshakeError):
    """The server's authenticator refused the client's credentials."""

    default_code = ErrorCode.UNAUTHORIZED


class InsecureRejected(HandshakeError):
    """The server refused a connection it considers insecure."""

    default_code = ErrorCode.INSECURE


class RemoteError(QuicframeError):
    """An error the peer reported for a call: code, message and details.

    Raise a subclass from a handler to send that code; the client raises the same
    class.  ``details`` is any msgpack-serialisable mapping.
    """

    default_code: ClassVar[int] = ErrorCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        details: Mapping[str, Any] | None = None,
        frame_type: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message, code=code, frame_type=frame_type, operation=operation)
        self.details: dict[str, Any] = dict(details or {})

    @classmethod
    def from_wire(
        cls, code: int, message: str, details: Mapping[str, Any] | None = None
    ) -> RemoteError:
        """Build the exception class that ``code`` maps to."""
        return remote_error_class(code)(message, code=code, details=details)


class CancelledError(RemoteError):
    """The call was cancelled (by the caller, or the server was told to stop)."""

    default_code = ErrorCode.CANCELLED


class InvalidArgument(RemoteError):
    default_code = ErrorCode.INVALID_ARGUMENT


class DeadlineExceeded(RemoteError):
    """The server ran out of the deadline budget the call carried."""

    default_code = ErrorCode.DEADLINE_EXCEEDED


class NotFound(RemoteError):
    default_code = ErrorCode.NOT_FOUND


class AlreadyExists(RemoteError):
    default_code = ErrorCode.ALREADY_EXISTS


class PermissionDenied(RemoteError):
    default_code = ErrorCode.PERMISSION_DENIED


class ResourceExhausted(RemoteError):
    default_code = ErrorCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RemoteError):
    default_code = ErrorCode.FAILED_PRECONDITION


class Aborted(RemoteError):
    default_code = ErrorCode.ABORTED


class OutOfRange(RemoteError):
    default_code = ErrorCode.OUT_OF_RANGE


class Unimplemented(RemoteError):
    default_code = ErrorCode.UNIMPLEMENTED


class InternalError(RemoteError):
    default_code = ErrorCode.INTERNAL


class Unavailable(RemoteError):
    default_code = ErrorCode.UNAVAILABLE


class DataLoss(RemoteError):
    default_code = ErrorCode.DATA_LOSS


class Unauthenticated(RemoteError):
    default_code = ErrorCode.UNAUTHENTICATED


class IntegrityError(RemoteError):
    """The payload's SHA-256 digest did not match the one in its metadata."""

    default_code = ErrorCode.INTEGRITY_MISMATCH


class SlowConsumer(RemoteError):
    """A subscriber fell too far behind and was disconnected by its policy."""

    default_code = ErrorCode.SLOW_CONSUMER


class SequenceGap(RemoteError):
    """Frames in a sequence range are gone and cannot be replayed."""

    default_code = ErrorCode.SEQUENCE_GAP


class UnknownTopic(RemoteError):
    default_code = ErrorCode.UNKNOWN_TOPIC


class ApplicationError(RemoteError):
    """Base of the exceptions for codes registered with :func:`register_error_code`."""

    default_code: ClassVar[int] = APPLICATION_MIN


_STATUS_CLASSES: Final[dict[int, type[RemoteError]]] = {
    cls.default_code: cls
    for cls in (
        CancelledError,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        InternalError,
        Unavailable,
        DataLoss,
        Unauthenticated,
        IntegrityError,
        SlowConsumer,
        SequenceGap,
        UnknownTopic,
    )
}
_STATUS_CLASSES[ErrorCode.UNKNOWN] = RemoteError
