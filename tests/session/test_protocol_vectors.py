"""The session vectors of docs/PROTOCOL.md section 7.6, reproduced byte for byte.

``tests/wire/test_vectors.py`` reads every vector of the document; it leaves the
ones named ``session-*`` to this file and checks that :data:`SESSION_VECTORS`
covers exactly those names, so every vector stays checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from quicframe.errors import DeadlineExceeded, ErrorCode
from quicframe.session import (
    GOAWAY_CODEC,
    HELLO_CODEC,
    REJECT_CODEC,
    WELCOME_CODEC,
    ControlChannel,
    GoAway,
    GoAwayReceived,
    Hello,
    HelloReceived,
    Reject,
    RejectReceived,
    Welcome,
    WelcomeReceived,
    encode_error,
    error_from_frame,
)
from quicframe.wire import Frame, FrameType, decode_frame, encode_frame

from ..wire.test_vectors import VECTORS

HELLO = Hello(versions=[1], client_name="demo", client_version="1.0", credentials={"token": "t"})
WELCOME = Welcome(version=1, max_concurrent_calls=100, server_name="qf", principal="user:7")
REJECT = Reject(code=ErrorCode.VERSION_MISMATCH, reason="no common version", versions=[1])
GOAWAY = GoAway(code=ErrorCode.GOING_AWAY, reason="bye", grace_period_ms=5000)


def _check_error(frame: Frame) -> None:
    assert (frame.type, frame.opcode) == (FrameType.ERROR, 0x0101)
    assert frame.metadata.request_id == "req-1"
    error = error_from_frame(frame)
    assert isinstance(error, DeadlineExceeded)
    assert (error.message, error.details) == ("deadline", {"budget_ms": 250})


def _body_check(frame_type: int, codec: Any, value: Any) -> Callable[[Frame], None]:
    def check(frame: Frame) -> None:
        assert frame.type == frame_type
        assert frame.opcode == 0
        assert not frame.metadata
        assert codec.decode(frame.body) == value

    return check


# name -> (encoder, decoder check)
SESSION_VECTORS: dict[str, tuple[Callable[[], bytes], Callable[[Frame], None]]] = {
    "session-hello": (
        lambda: encode_frame(FrameType.HELLO, HELLO_CODEC.encode(HELLO)),
        _body_check(FrameType.HELLO, HELLO_CODEC, HELLO),
    ),
    "session-welcome": (
        lambda: encode_frame(FrameType.WELCOME, WELCOME_CODEC.encode(WELCOME)),
        _body_check(FrameType.WELCOME, WELCOME_CODEC, WELCOME),
    ),
    "session-reject": (
        lambda: encode_frame(FrameType.REJECT, REJECT_CODEC.encode(REJECT)),
        _body_check(FrameType.REJECT, REJECT_CODEC, REJECT),
    ),
    "session-goaway": (
        lambda: encode_frame(FrameType.GOAWAY, GOAWAY_CODEC.encode(GOAWAY)),
        _body_check(FrameType.GOAWAY, GOAWAY_CODEC, GOAWAY),
    ),
    "session-error": (
        lambda: encode_error(
            0x0101,
            ErrorCode.DEADLINE_EXCEEDED,
            "deadline",
            {"budget_ms": 250},
            request_id="req-1",
        ),
        _check_error,
    ),
}


def test_every_session_vector_is_checked_here() -> None:
    assert {name for name in VECTORS if name.startswith("session-")} == set(SESSION_VECTORS)


@pytest.mark.parametrize("name", sorted(SESSION_VECTORS))
def test_session_vector_encodes_byte_for_byte(name: str) -> None:
    encode, _ = SESSION_VECTORS[name]
    assert encode().hex(" ") == VECTORS[name].hex(" ")


@pytest.mark.parametrize("name", sorted(SESSION_VECTORS))
def test_session_vector_decodes(name: str) -> None:
    _, check = SESSION_VECTORS[name]
    check(decode_frame(VECTORS[name]))


def test_control_channels_produce_and_accept_the_vectors() -> None:
    client = ControlChannel(client=True)
    client.send_hello(HELLO)
    assert client.data_to_send() == VECTORS["session-hello"]
    server = ControlChannel(client=False)
    assert server.receive_data(VECTORS["session-hello"]) == [HelloReceived(HELLO)]
    server.send_welcome(WELCOME)
    assert server.data_to_send() == VECTORS["session-welcome"]
    assert client.receive_data(VECTORS["session-welcome"]) == [WelcomeReceived(WELCOME)]
    assert client.receive_data(VECTORS["session-goaway"]) == [GoAwayReceived(GOAWAY)]
    rejected = ControlChannel(client=True)
    rejected.send_hello(HELLO)
    assert rejected.receive_data(VECTORS["session-reject"]) == [RejectReceived(REJECT)]
