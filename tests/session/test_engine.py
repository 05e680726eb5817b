"""The sans-IO engine on its own: no event loop, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quicframe.errors import (
    ErrorCode,
    InternalError,
    LocalProtocolError,
    NotFound,
    RemoteProtocolError,
)
from quicframe.session import (
    ControlChannel,
    GoAway,
    GoAwayReceived,
    Hello,
    HelloReceived,
    OneFrameReader,
    PingReceived,
    PongReceived,
    Reject,
    RejectReceived,
    Welcome,
    WelcomeReceived,
    choose_version,
    encode_error,
    encode_request,
    encode_response,
    error_from_frame,
    payload_matches,
    reply_frame_untrusted,
    request_frame_untrusted,
)
from quicframe.wire import FrameType, MsgpackCodec, decode_frame, encode_frame

PLAIN: MsgpackCodec[object] = MsgpackCodec()


def test_session_engine_imports_neither_trio_nor_aioquic() -> None:
    code = (
        "import sys, quicframe, quicframe.session\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'aioquic'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def established_pair() -> tuple[ControlChannel, ControlChannel]:
    client = ControlChannel(client=True)
    server = ControlChannel(client=False)
    client.send_hello(Hello(versions=[1], client_name="c", credentials={"token": "t"}))
    events = server.receive_data(client.data_to_send())
    assert events == [
        HelloReceived(Hello(versions=[1], client_name="c", credentials={"token": "t"}))
    ]
    server.send_welcome(Welcome(version=1, principal="p"))
    (welcome,) = client.receive_data(server.data_to_send())
    assert isinstance(welcome, WelcomeReceived)
    assert welcome.welcome.principal == "p"
    assert client.state == server.state == "established"
    return client, server


def test_handshake_ping_pong_and_goaway() -> None:
    client, server = established_pair()
    client.send_ping(b"12345678")
    assert server.receive_data(client.data_to_send()) == [PingReceived(b"12345678")]
    # The PONG was queued by the channel itself.
    assert client.receive_data(server.data_to_send()) == [PongReceived(b"12345678")]
    server.send_goaway(GoAway(reason="bye", grace_period_ms=10))
    (event,) = client.receive_data(server.data_to_send())
    assert isinstance(event, GoAwayReceived)
    assert client.goaway == GoAway(reason="bye", grace_period_ms=10)


def test_reject_and_byte_by_byte_feeding() -> None:
    client = ControlChannel(client=True)
    server = ControlChannel(client=False)
    client.send_hello(Hello(versions=[9]))
    for byte in client.data_to_send():
        events = server.receive_data(bytes([byte]))
    assert isinstance(events[0], HelloReceived)
    server.send_reject(Reject(ErrorCode.VERSION_MISMATCH, "no", [1]))
    (event,) = client.receive_data(server.data_to_send())
    assert isinstance(event, RejectReceived)
    assert event.reject.versions == [1]
    assert client.state == "rejected"


def test_out_of_order_frames_are_protocol_errors() -> None:
    server = ControlChannel(client=False)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(encode_frame(FrameType.PING, bytes(8)))
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME
    client, server = established_pair()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(encode_frame(FrameType.HELLO, PLAIN.encode({"versions": [1]})))
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(encode_frame(FrameType.GOAWAY, PLAIN.encode({})))
    assert info.value.code == ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(encode_frame(FrameType.PING, b"short"))
    assert info.value.code == ErrorCode.MALFORMED_BODY


def test_malformed_hello_body() -> None:
    server = ControlChannel(client=False)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(encode_frame(FrameType.HELLO, PLAIN.encode({"client_name": "x"})))
    assert info.value.code == ErrorCode.MALFORMED_BODY
    assert info.value.frame_type == FrameType.HELLO


def test_local_misuse() -> None:
    client = ControlChannel(client=True)
    with pytest.raises(LocalProtocolError):
        client.send_ping(bytes(8))  # not established
    with pytest.raises(LocalProtocolError):
        client.send_goaway(GoAway())
    server = ControlChannel(client=False)
    with pytest.raises(LocalProtocolError):
        server.send_hello(Hello(versions=[1]))
    with pytest.raises(LocalProtocolError):
        server.send_welcome(Welcome(version=1))  # no HELLO yet


def test_choose_version() -> None:
    assert choose_version([1, 2, 3], [2, 3, 4]) == 3
    assert choose_version([1], [2]) is None


def test_one_frame_reader() -> None:
    frame = encode_request(0x10, PLAIN.encode("x"), request_id="r")
    reader = OneFrameReader()
    for byte in frame:
        reader.feed(bytes([byte]))
    assert reader.feed_eof().metadata.request_id == "r"
    with pytest.raises(RemoteProtocolError) as info:
        OneFrameReader().feed(frame + b"\x05")
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    truncated = OneFrameReader()
    truncated.feed(frame[:-1])
    with pytest.raises(RemoteProtocolError):
        truncated.feed_eof()
    with pytest.raises(RemoteProtocolError) as info:
        OneFrameReader().feed_eof()
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    with pytest.raises(RemoteProtocolError) as info:
        OneFrameReader(max_frame_size=1024).feed(encode_frame(FrameType.REQUEST, bytes(2000)))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_request_metadata_and_integrity() -> None:
    body = PLAIN.encode({"a": 1})
    frame = decode_frame(
        encode_request(
            0x0101,
            body,
            request_id="req",
            deadline_budget_ns=5,
            sla_class=2,
            integrity=True,
            trace_context="tp",
        )
    )
    request_frame_untrusted(frame)
    meta = frame.metadata
    assert (meta.request_id, meta.deadline_budget_ns, meta.sla_class) == ("req", 5, 2)
    assert meta.trace_context == "tp"
    assert payload_matches(frame)
    assert not payload_matches(frame._replace(body=PLAIN.encode({"a": 2})))
    with pytest.raises(RemoteProtocolError):
        request_frame_untrusted(decode_frame(encode_frame(FrameType.PING, bytes(8))))


def test_replies() -> None:
    response = decode_frame(encode_response(7, b"\xc0", request_id="r", integrity=True))
    assert reply_frame_untrusted(response, 7) is response
    assert response.metadata.request_id == "r"
    assert payload_matches(response)
    with pytest.raises(RemoteProtocolError):
        reply_frame_untrusted(response, 8)
    error = decode_frame(encode_error(7, ErrorCode.NOT_FOUND, "gone", {"k": 1}, request_id="r"))
    exc = error_from_frame(reply_frame_untrusted(error, 7))
    assert isinstance(exc, NotFound)
    assert (exc.message, exc.details) == ("gone", {"k": 1})
    # Details msgpack cannot carry are dropped rather than failing the reply.
    odd = decode_frame(encode_error(7, ErrorCode.INTERNAL, "x", {"k": object()}))
    exc = error_from_frame(odd)
    assert isinstance(exc, InternalError)
    assert exc.details == {}
    with pytest.raises(RemoteProtocolError) as info:
        error_from_frame(decode_frame(encode_frame(FrameType.ERROR, b"\x01", opcode=7)))
    assert info.value.code == ErrorCode.MALFORMED_BODY
