"""The gateway's pure mapping: statuses, problem documents, headers, media types."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import msgpack
import pytest

from quicframe.errors import APPLICATION_MIN, ErrorCode
from quicframe.h3._mapping import (
    JSON,
    MSGPACK,
    BadHeader,
    MalformedBody,
    choose_response_type,
    decode_body,
    encode_body,
    http_status,
    parse_opcode,
    parse_request_headers,
    problem_body,
)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.NO_ERROR, 200),
        (ErrorCode.INVALID_ARGUMENT, 400),
        (ErrorCode.INTEGRITY_MISMATCH, 400),
        (ErrorCode.MALFORMED_BODY, 400),
        (ErrorCode.UNAUTHENTICATED, 401),
        (ErrorCode.UNAUTHORIZED, 401),
        (ErrorCode.PERMISSION_DENIED, 403),
        (ErrorCode.NOT_FOUND, 404),
        (ErrorCode.UNKNOWN_TOPIC, 404),
        (ErrorCode.SEQUENCE_GAP, 410),
        (ErrorCode.SUBSCRIPTION_LIMIT, 429),
        (ErrorCode.RESOURCE_EXHAUSTED, 429),
        (ErrorCode.CANCELLED, 499),
        (ErrorCode.UNAVAILABLE, 503),
        (ErrorCode.DEADLINE_EXCEEDED, 504),
        (ErrorCode.INTERNAL, 500),
        (ErrorCode.UNIMPLEMENTED, 501),
        (APPLICATION_MIN + 5, 500),
    ],
)
def test_status_of_each_code(code: int, status: int) -> None:
    assert http_status(code) == status


def test_problem_document_is_rfc9457_with_the_quicframe_code() -> None:
    details: dict[Any, Any] = {"raw": b"\x01\x02", 3: "x"}
    body = problem_body(
        404,
        ErrorCode.NOT_FOUND,
        "unknown opcode 0x0042",
        request_id="r-1",
        instance="/rpc/0x0042",
        details=details,
    )
    problem = json.loads(body)
    assert problem == {
        "type": "urn:quicframe:error:NOT_FOUND",
        "title": "Not Found",
        "status": 404,
        "detail": "unknown opcode 0x0042",
        "code": int(ErrorCode.NOT_FOUND),
        "code_name": "NOT_FOUND",
        "instance": "/rpc/0x0042",
        "request_id": "r-1",
        "details": {"raw": base64.b64encode(b"\x01\x02").decode(), "3": "x"},
    }


def test_opcodes_in_decimal_and_hex() -> None:
    assert parse_opcode("257") == 257
    assert parse_opcode("0x0101") == 257
    assert parse_opcode("0X101") == 257
    assert parse_opcode("65536") is None
    assert parse_opcode("0xzz") is None
    assert parse_opcode("echo") is None  # looked up as a name by the gateway


def test_request_headers() -> None:
    digest = hashlib.sha256(b"x").digest()
    headers = parse_request_headers(
        [
            (b":method", b"POST"),
            (b":path", b"/rpc/1?trace=1"),
            (b"content-type", b"application/json; charset=utf-8"),
            (b"x-request-id", b"abc"),
            (b"x-sla-level", b"Gold"),
            (b"x-payload-sha256", digest.hex().encode()),
            (b"x-deadline-ms", b"250.5"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ]
    )
    assert headers.path == "/rpc/1"
    assert headers.content_type == "application/json"
    assert headers.request_id == "abc"
    assert headers.sla_class == 2
    assert headers.payload_sha256 == digest
    assert headers.deadline_ms == 250.5
    b64 = parse_request_headers([(b"x-payload-sha256", base64.b64encode(digest))])
    assert b64.payload_sha256 == digest
    assert parse_request_headers([(b"x-sla-level", b"bronze")]).sla_class == 0
    assert parse_request_headers([(b"x-sla-level", b"7")]).sla_class == 7


@pytest.mark.parametrize(
    "header",
    [
        (b"x-sla-level", b"platinum"),
        (b"x-sla-level", b"300"),
        (b"x-deadline-ms", b"soon"),
        (b"x-deadline-ms", b"-1"),
        (b"x-deadline-ms", b"inf"),
        (b"x-payload-sha256", b"abcd"),
        (b"x-request-id", b"x" * 129),
    ],
)
def test_bad_headers(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(BadHeader):
        parse_request_headers([header])


def test_response_type_follows_accept() -> None:
    assert choose_response_type(None, JSON) == JSON
    assert choose_response_type(None, None) == MSGPACK
    assert choose_response_type("*/*", JSON) == JSON
    assert choose_response_type("application/json", MSGPACK) == JSON
    assert choose_response_type("application/x-msgpack", JSON) == MSGPACK
    assert choose_response_type("application/json;q=0.5, application/msgpack", JSON) == MSGPACK
    assert choose_response_type("text/html", JSON) is None


def test_bodies_round_trip_between_json_and_msgpack() -> None:
    assert msgpack.unpackb(decode_body(b'{"a": [1, 2]}', JSON)) == {"a": [1, 2]}
    assert decode_body(b"", None) == b"\xc0"  # no body: nil
    packed = msgpack.packb({"a": b"\x00"}, use_bin_type=True)
    assert decode_body(packed, MSGPACK) == packed
    assert encode_body(packed, MSGPACK) == packed
    assert json.loads(encode_body(packed, JSON)) == {"a": "AA=="}
    with pytest.raises(ValueError, match="Expecting"):
        decode_body(b"{not json", JSON)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 100_000, "nests too deeply"),
        (b"[" * 1000 + b"]" * 1000, "nests too deeply"),  # valid JSON, past the packer
        (b'{"quantity": 123456789012345678901234567890}', "64-bit"),
        (b"-18446744073709551617", "64-bit"),
        (b"1" * 5000, "invalid JSON"),  # more digits than int() takes
        (b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_every_malformed_json_body_is_a_malformed_body_error(body: bytes, why: str) -> None:
    with pytest.raises(MalformedBody, match=why):
        decode_body(body, JSON)
