"""How quicframe calls map onto HTTP: statuses, problem bodies, headers, media types.

Pure functions with no I/O: the gateway calls them, the tests pin them down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ..errors import APPLICATION_MIN, ErrorCode, code_name
from ..wire import SlaClass

__all__ = [
    "EVENT_STREAM",
    "JSON",
    "MSGPACK",
    "RECORDS",
    "MalformedBody",
    "PROBLEM_JSON",
    "BadHeader",
    "RequestHeaders",
    "choose_response_type",
    "choose_stream_type",
    "decode_body",
    "encode_body",
    "http_status",
    "parse_opcode",
    "parse_request_headers",
    "problem_body",
]

MSGPACK: Final = "application/msgpack"
JSON: Final = "application/json"
PROBLEM_JSON: Final = "application/problem+json"
EVENT_STREAM: Final = "text/event-stream"
RECORDS: Final = "application/vnd.quicframe.records+msgpack"
"""``GET /topics/{topic}``: u32 length-prefixed msgpack records (docs/http3.md)."""

# Spellings of the msgpack media type seen in the wild; we answer with MSGPACK.
_MSGPACK_ALIASES: Final = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

# quicframe code -> HTTP status.  The call-status range follows the issue's
# contract (and gRPC's HTTP mapping where the contract is silent).
_STATUS: Final[dict[int, int]] = {
    ErrorCode.NO_ERROR: 200,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.INTEGRITY_MISMATCH: 400,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.OUT_OF_RANGE: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_TOPIC: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    # A subscription resuming from a sequence number the history no longer holds
    # (with on_gap=error): that part of the topic is gone.
    ErrorCode.SEQUENCE_GAP: 410,
    ErrorCode.ABORTED: 409,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.SUBSCRIPTION_LIMIT: 429,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNKNOWN: 500,
    ErrorCode.DATA_LOSS: 500,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.GOING_AWAY: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}

_TITLES: Final[dict[int, str]] = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    425: "Too Early",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def http_status(code: int) -> int:
    """The HTTP status for a quicframe error code.

    Protocol-range codes (malformed input) are 400; application codes and codes
    nobody mapped are 500.
    """
    status = _STATUS.get(code)
    if status is not None:
        return status
    if 0x0001 <= code <= 0x00FF:
        return 400
    if code >= APPLICATION_MIN:
        return 500
    return 500


def status_title(status: int) -> str:
    return _TITLES.get(status, "Error")


def problem_body(
    status: int,
    code: int,
    detail: str,
    *,
    request_id: str | None,
    instance: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """An RFC 9457 problem document carrying the quicframe error code.

    ``type`` names the quicframe code (``urn:quicframe:error:NOT_FOUND``);
    ``code`` and ``code_name`` are extension members with the numeric code and
    its name, ``request_id`` the call's id and ``details`` the handler's details.
    """
    name = code_name(code)
    problem: dict[str, Any] = {
        "type": f"urn:quicframe:error:{name}",
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "code": code,
        "code_name": name,
    }
    if instance is not None:
        problem["instance"] = instance
    if request_id is not None:
        problem["request_id"] = request_id
    if details:
        problem["details"] = _jsonable(dict(details))
    return json.dumps(problem, separators=(",", ":")).encode()


# -- request headers ---------------------------------------------------------------


class BadHeader(ValueError):
    """A request header that cannot be honoured (the request is answered 400)."""


_SLA_NAMES: Final = {member.name.lower(): int(member) for member in SlaClass}
_MAX_REQUEST_ID: Final = 128


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The headers of one request the gateway acts on.

    Attributes:
        method: ``:method``.
        path: ``:path`` without its query string.
        query: the query string of ``:path`` (after ``?``), or "".
        content_type: the media type of the body (parameters dropped), or None.
        accept: the raw Accept header, or None.
        request_id: ``x-request-id``, or None.
        sla_class: ``x-sla-level`` as a ``SlaClass`` value, or None.
        payload_sha256: the digest ``x-payload-sha256`` announces, or None.
        deadline_ms: ``x-deadline-ms``, or None.
        authorization: the Authorization header, or None.
        traceparent: the W3C ``traceparent`` header, or None.
    """

    method: str
    path: str
    query: str = ""
    content_type: str | None = None
    accept: str | None = None
    request_id: str | None = None
    sla_class: int | None = None
    payload_sha256: bytes | None = None
    deadline_ms: float | None = None
    authorization: str | None = None
    traceparent: str | None = None


def parse_request_headers(headers: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
    """Pick out and check the headers the gateway uses.

    Raises:
        BadHeader: a header the gateway relies on is malformed.
    """
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name.lower(), value)
    try:
        # Every value must be UTF-8; one decode checks them all (an ASCII
        # separator keeps a piece's bad ending from pairing with the next one).
        b"\n".join(found.values()).decode("utf-8")
    except UnicodeDecodeError:
        raise BadHeader("header values must be UTF-8") from None
    # Each header's text (decoded, stripped), or None when absent.  Spelled out
    # rather than through a helper: this runs once per request.
    get = found.get
    raw = get(b":path")
    path, _, query = (raw.decode().strip() if raw is not None else "").partition("?")
    raw = get(b":method")
    method = raw.decode().strip() if raw is not None else ""
    raw = get(b"content-type")
    content_type: str | None = None
    if raw is not None:
        content_type = raw.decode().split(";", 1)[0].strip().lower() or None
    raw = get(b"x-request-id")
    request_id: str | None = None
    if raw is not None:
        request_id = raw.decode().strip()
        if not 1 <= len(request_id.encode()) <= _MAX_REQUEST_ID:
            raise BadHeader(f"x-request-id must be 1 to {_MAX_REQUEST_ID} bytes")
    raw = get(b"accept")
    accept = raw.decode().strip() if raw is not None else None
    raw = get(b"x-sla-level")
    sla_class = _parse_sla(raw.decode().strip()) if raw is not None else None
    raw = get(b"x-payload-sha256")
    digest = _parse_digest(raw.decode().strip()) if raw is not None else None
    raw = get(b"x-deadline-ms")
    deadline_ms = _parse_deadline(raw.decode().strip()) if raw is not None else None
    raw = get(b"authorization")
    authorization = raw.decode().strip() if raw is not None else None
    raw = get(b"traceparent")
    traceparent = raw.decode().strip() if raw is not None else None
    return RequestHeaders(
        method,
        path,
        query,
        content_type,
        accept,
        request_id,
        sla_class,
        digest,
        deadline_ms,
        authorization,
        traceparent,
    )


def _parse_sla(value: str | None) -> int | None:
    if value is None:
        return None
    named = _SLA_NAMES.get(value.lower())
    if named is not None:
        return named
    if value.isdigit() and int(value) <= 0xFF:
        return int(value)
    raise BadHeader(f"x-sla-level must be gold, silver, bronze or 0-255, not {value!r}")


def _parse_digest(value: str | None) -> bytes | None:
    if value is None:
        return None
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise BadHeader("x-payload-sha256 must be a SHA-256 digest in hex or base64")
    return digest


def _parse_deadline(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        deadline = float(value)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline) or deadline < 0:
        raise BadHeader(f"x-deadline-ms must be a number of milliseconds >= 0, not {value!r}")
    return deadline


def digest_matches(body: bytes, digest: bytes | None) -> bool:
    """False when ``digest`` is given and the body does not hash to it."""
    return digest is None or hashlib.sha256(body).digest() == digest


# -- opcodes --------------------------------------------------------------------------


def parse_opcode(text: str) -> int | None:
    """An opcode from a path segment in decimal or ``0x`` hex; None otherwise
    (the gateway then looks the segment up as a route name)."""
    try:
        if text[:2].lower() == "0x":
            opcode = int(text[2:], 16)
        elif text.isdigit():
            opcode = int(text)
        else:
            return None
    except ValueError:
        return None
    return opcode if 0 <= opcode <= 0xFFFF else None


# -- bodies ----------------------------------------------------------------------------


def normalise_media_type(content_type: str | None) -> str | None:
    """MSGPACK or JSON for the types the gateway reads, None for no body type,
    the type itself otherwise (which the gateway refuses)."""
    if content_type is None:
        return None
    if content_type in _MSGPACK_ALIASES:
        return MSGPACK
    if content_type == JSON or content_type.endswith("+json"):
        return JSON
    return content_type


def _accept_entries(accept: str) -> Iterator[tuple[str, float]]:
    """Each media range of an Accept header, lower-cased, with its q-value (1.0
    when absent, 0.0 when unreadable)."""
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        yield media.strip().lower(), q


def choose_response_type(accept: str | None, request_type: str | None) -> str | None:
    """MSGPACK or JSON as the Accept header prefers, or None when it allows neither.

    With no Accept header (or only wildcards) the response takes the request's
    type, msgpack for a request without a body.
    """
    default = request_type if request_type in (MSGPACK, JSON) else MSGPACK
    if accept is None or not accept.strip():
        return default
    best: str | None = None
    best_q = 0.0
    for media, q in _accept_entries(accept):
        if media in ("*/*", "application/*"):
            candidate: str | None = default
        else:
            candidate = normalise_media_type(media)
            if candidate not in (MSGPACK, JSON):
                candidate = None
        # Earlier entries win ties, as a wildcard loses to a named type.
        if candidate is not None and q > best_q:
            best, best_q = candidate, q
    return best


def choose_stream_type(accept: str | None) -> str | None:
    """RECORDS or EVENT_STREAM for a subscription, as Accept prefers; None when
    it allows neither.

    Length-prefixed msgpack records are the default (no Accept, wildcards,
    ``application/msgpack`` or RECORDS itself); ``text/event-stream`` wins when
    Accept names it with at least the q-value of the alternatives.
    """
    if accept is None or not accept.strip():
        return RECORDS
    best: str | None = None
    best_q = 0.0
    for media, q in _accept_entries(accept):
        if media in (EVENT_STREAM, "text/*"):
            candidate: str | None = EVENT_STREAM
        elif media in ("*/*", "application/*", RECORDS) or media in _MSGPACK_ALIASES:
            candidate = RECORDS
        else:
            candidate = None
        if candidate is None or q <= 0:
            continue
        # The named event stream beats a wildcard of the same q; otherwise the
        # earlier entry wins a tie.
        if q > best_q or (q == best_q and candidate == EVENT_STREAM):
            best, best_q = candidate, q
    return best


def decode_body(body: bytes, media_type: str | None) -> bytes:
    """The request body as msgpack bytes, ready for the route's codec.

    JSON is parsed and re-packed, so a dataclass request validates exactly as a
    native one does.  An empty body without a type is msgpack nil.

    Raises:
        MalformedBody: the body is not valid JSON, or holds what msgpack cannot
            carry (integers beyond 64 bits, nesting deeper than the parsers go).
            Nothing else escapes, whatever the bytes.
    """
    if media_type == JSON:
        try:
            value = json.loads(body) if body else None
            packed: bytes = msgpack.packb(value, use_bin_type=True)
        except (ValueError, OverflowError, RecursionError, TypeError) as exc:
            # ValueError: not JSON (UnicodeDecodeError and JSONDecodeError are
            # ValueErrors), an integer with too many digits, or msgpack's own
            # nesting limit.  OverflowError: an integer outside msgpack's range.
            # RecursionError: nesting deeper than the JSON parser's stack.
            raise MalformedBody(_describe(exc)) from None
        return packed
    if media_type is None and not body:
        return b"\xc0"
    return body


class MalformedBody(ValueError):
    """A request body that cannot be read (the gateway answers 400 MALFORMED_BODY)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "the JSON nests too deeply"
    if isinstance(exc, OverflowError):
        return "a JSON integer is outside the 64-bit range msgpack carries"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "the JSON is not UTF-8"
    text = str(exc)
    return f"invalid JSON: {text[:200]}" if text else "invalid JSON"


def encode_body(msgpack_body: bytes, media_type: str) -> bytes:
    """The response body in ``media_type`` from the route codec's msgpack bytes."""
    if media_type == MSGPACK:
        return msgpack_body
    value = msgpack.unpackb(msgpack_body, raw=False, strict_map_key=False)
    return json.dumps(_jsonable(value), separators=(",", ":")).encode()


def _jsonable(value: Any) -> Any:
    """msgpack values as JSON can carry them: bytes become base64 text, keys text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else str(_jsonable(key)): _jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
