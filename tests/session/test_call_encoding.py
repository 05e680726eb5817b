"""The call frames' one-pass encoder gives the same bytes as the general one.

``encode_request`` and ``encode_response`` pack the common frames (well-known
metadata only) directly; these tests compare every combination with
``encode_frame(..., metadata=Metadata.build(...))`` and check that the values the
fast path does not handle still fail the general way.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from quicframe.errors import ErrorCode, LocalProtocolError
from quicframe.session import encode_request, encode_response
from quicframe.wire import (
    FrameType,
    Metadata,
    MsgpackCodec,
    SlaClass,
    TlvEntry,
    decode_frame,
    encode_frame,
)

BODY = MsgpackCodec().encode({"user_id": 7, "blob": bytes(range(64))})


def _general_request(opcode: int, body: bytes, **fields: object) -> bytes:
    integrity = fields.pop("integrity", False)
    metadata = Metadata.build(
        payload_sha256=hashlib.sha256(body).digest() if integrity else None,
        **fields,  # type: ignore[arg-type]
    )
    return encode_frame(FrameType.REQUEST, body, opcode=opcode, metadata=metadata)


@pytest.mark.parametrize(
    ("budget", "sla", "integrity"),
    list(
        itertools.product(
            [None, 0, 1, 250_000_000, -5, 1 << 70],
            [None, 0, SlaClass.GOLD, 255],
            [False, True],
        )
    ),
)
def test_request_bytes_match_the_general_encoder(
    budget: int | None, sla: int | None, integrity: bool
) -> None:
    fast = encode_request(
        0x0101,
        BODY,
        request_id="c0ffee-42",
        deadline_budget_ns=budget,
        sla_class=sla,
        integrity=integrity,
    )
    general = _general_request(
        0x0101,
        BODY,
        request_id="c0ffee-42",
        deadline_budget_ns=budget,
        sla_class=sla,
        integrity=integrity,
    )
    assert fast == general
    frame = decode_frame(fast)
    assert frame.metadata.request_id == "c0ffee-42"
    assert bytes(frame.body) == BODY


@pytest.mark.parametrize("request_id", ["r", "é-ünïcode", "x" * 128])
@pytest.mark.parametrize("integrity", [False, True])
def test_response_bytes_match_the_general_encoder(request_id: str, integrity: bool) -> None:
    fast = encode_response(0xFFFF, BODY, request_id=request_id, integrity=integrity)
    metadata = Metadata.build(
        request_id=request_id,
        payload_sha256=hashlib.sha256(BODY).digest() if integrity else None,
    )
    assert fast == encode_frame(FrameType.RESPONSE, BODY, opcode=0xFFFF, metadata=metadata)


def test_request_with_trace_context_and_extra_entries() -> None:
    extra = [TlvEntry(0x8001, 0, b"app")]
    fast = encode_request(
        7, BODY, request_id="r-1", trace_context="00-abc-def-01", extra=extra, integrity=True
    )
    assert fast == _general_request(
        7, BODY, request_id="r-1", trace_context="00-abc-def-01", extra=extra, integrity=True
    )


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"request_id": ""}, ErrorCode.MALFORMED_METADATA),
        ({"request_id": "x" * 129}, ErrorCode.MALFORMED_METADATA),
        ({"request_id": "r", "sla_class": 256}, ErrorCode.MALFORMED_METADATA),
        ({"request_id": "r", "sla_class": -1}, ErrorCode.MALFORMED_METADATA),
        ({"request_id": "r", "max_frame_size": 16}, ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_request_out_of_range_fails_as_before(kwargs: dict[str, object], code: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_request(1, BODY, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code


@pytest.mark.parametrize("opcode", [-1, 0x10000])
def test_request_opcode_out_of_range(opcode: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_request(opcode, BODY, request_id="r")
    assert info.value.code == ErrorCode.MALFORMED_HEADER


def test_response_too_large_and_without_request_id() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_response(1, BODY, request_id="r", max_frame_size=16)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert encode_response(1, BODY, request_id=None) == encode_frame(
        FrameType.RESPONSE, BODY, opcode=1
    )
