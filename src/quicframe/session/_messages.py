"""The bodies of the session control frames: HELLO, WELCOME, REJECT, GOAWAY and ERROR.

Each body is a msgpack map from field name to value (``docs/PROTOCOL.md`` section
7), modelled here as a frozen dataclass with a reusable :class:`MsgpackCodec`.
Fields a receiver does not know are ignored and missing optional fields take their
defaults, so either side may add fields in a later version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ..wire import DEFAULT_MAX_FRAME_SIZE, MsgpackCodec

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_MAX_CONCURRENT_CALLS",
    "ERROR_CODEC",
    "GOAWAY_CODEC",
    "HELLO_CODEC",
    "PROTOCOL_VERSION",
    "REJECT_CODEC",
    "SUPPORTED_VERSIONS",
    "WELCOME_CODEC",
    "ErrorBody",
    "GoAway",
    "Hello",
    "Reject",
    "Welcome",
]

PROTOCOL_VERSION: Final = 1
"""The session protocol version this implementation speaks best."""

SUPPORTED_VERSIONS: Final = (PROTOCOL_VERSION,)
"""Every session protocol version this implementation can speak."""

DEFAULT_MAX_CONCURRENT_CALLS: Final = 10_000
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 5_000

_MAX_CODE: Final = 0xFFFF_FFFF  # error codes are u32 where a frame carries them


def _check_uint(message: str, name: str, value: int, maximum: int | None = None) -> None:
    """Reject a negative (or too large) integer field.

    Raised from ``__post_init__``, the ``ValueError`` becomes MALFORMED_BODY when
    the message came off the wire (the codec turns it into a protocol error).
    """
    if value < 0 or (maximum is not None and value > maximum):
        bound = "" if maximum is None else f"..{maximum}"
        raise ValueError(f"{message}.{name} must be 0{bound}, not {value}")


def _check_versions(message: str, versions: list[int]) -> None:
    for version in versions:
        # A msgpack array may hold anything: only unsigned integers are versions.
        if type(version) is not int or version < 0:
            raise ValueError(f"{message}.versions holds {version!r}, not an unsigned integer")


@dataclass(frozen=True, slots=True)
class Hello:
    """The client's opening frame on the control stream.

    Attributes:
        versions: session protocol versions the client speaks, most preferred first.
        client_name: free-form name of the client software (for logs).
        client_version: its version string.
        credentials: what the server's authenticator checks (e.g. ``{"token": ...}``).
        max_frame_size: the largest frame the client accepts.
        max_concurrent_calls: calls the client would like to run at once (0: no wish).
        heartbeat_interval_ms: heartbeat period the client would like (0: no wish).
        insecure: the client skipped server certificate verification.
    """

    versions: list[int]
    client_name: str = ""
    client_version: str = ""
    credentials: dict[str, Any] = field(default_factory=dict)
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_concurrent_calls: int = 0
    heartbeat_interval_ms: int = 0
    insecure: bool = False

    def __post_init__(self) -> None:
        _check_versions("Hello", self.versions)
        _check_uint("Hello", "max_frame_size", self.max_frame_size)
        _check_uint("Hello", "max_concurrent_calls", self.max_concurrent_calls)
        _check_uint("Hello", "heartbeat_interval_ms", self.heartbeat_interval_ms)


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's acceptance of a HELLO.

    Attributes:
        version: the session protocol version chosen (one the client offered).
        max_frame_size: the largest frame the server accepts.
        max_concurrent_calls: calls the server runs at once on this connection.
        heartbeat_interval_ms: how often the client should send PING on the control
            stream (0: no heartbeat).
        server_name: free-form name of the server software (for logs).
        principal: the identity the authenticator established, if any.
    """

    version: int
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    server_name: str = ""
    principal: str | None = None

    def __post_init__(self) -> None:
        _check_uint("Welcome", "version", self.version)
        _check_uint("Welcome", "max_frame_size", self.max_frame_size)
        _check_uint("Welcome", "max_concurrent_calls", self.max_concurrent_calls)
        _check_uint("Welcome", "heartbeat_interval_ms", self.heartbeat_interval_ms)


@dataclass(frozen=True, slots=True)
class Reject:
    """The server's refusal of a HELLO; the connection is then closed with ``code``.

    Attributes:
        code: an :class:`~quicframe.errors.ErrorCode` of the session range
            (VERSION_MISMATCH, UNAUTHORIZED, INSECURE, HANDSHAKE_FAILED).
        reason: a human-readable explanation.
        versions: for VERSION_MISMATCH, the versions the server speaks.
    """

    code: int
    reason: str = ""
    versions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The client closes the connection with this code: it must fit.
        _check_uint("Reject", "code", self.code, _MAX_CODE)
        _check_versions("Reject", self.versions)


@dataclass(frozen=True, slots=True)
class GoAway:
    """The server stops taking calls on this connection (graceful shutdown).

    Attributes:
        code: why (GOING_AWAY, or NO_ERROR).
        reason: a human-readable explanation.
        grace_period_ms: how long calls in flight may still run.
    """

    code: int = 0x0105
    reason: str = ""
    grace_period_ms: int = 0

    def __post_init__(self) -> None:
        _check_uint("GoAway", "code", self.code, _MAX_CODE)
        _check_uint("GoAway", "grace_period_ms", self.grace_period_ms)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The body of an ERROR frame: the outcome of a failed call.

    Attributes:
        code: an error code (call status range, or a registered application code).
        message: a human-readable message.
        details: any msgpack map with more structure.
    """

    code: int
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_uint("ErrorBody", "code", self.code, _MAX_CODE)


HELLO_CODEC: Final = MsgpackCodec(Hello)
WELCOME_CODEC: Final = MsgpackCodec(Welcome)
REJECT_CODEC: Final = MsgpackCodec(Reject)
GOAWAY_CODEC: Final = MsgpackCodec(GoAway)
ERROR_CODEC: Final = MsgpackCodec(ErrorBody)
