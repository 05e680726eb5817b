"""The gateway's two ways of reading a request.

A request that arrives whole (one HEADERS frame needing no QPACK dynamic table,
DATA, FIN) is taken without aioquic's per-stream ``H3Connection`` machinery;
everything else goes through ``H3Connection`` as before.  These tests check both
ways serve what they should, and that the fast way refuses nothing and accepts
nothing that ``H3Connection`` would have judged differently.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from aioquic.h3.connection import (
    ErrorCode as H3ErrorCode,
    H3Stream,
    encode_frame,
    validate_request_headers,
)
from hypothesis import given, settings, strategies as st

import quicframe
from quicframe import ServerConfig
from quicframe.h3 import gateway_of
from quicframe.h3._gateway import _GatewayH3Connection, _plainly_valid

from .conftest import Certificate, H3Client, _Pending, deadline, h3_client, open_gateway

ECHO = 0x0001
BODY = msgpack.packb({"symbol": "ESZ5", "size": 3})


def make_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    return router


def request_headers(client: H3Client, length: int | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", f"localhost:{client._server[1]}".encode()),
        (b":path", b"/rpc/echo"),
        (b"content-type", b"application/msgpack"),
    ]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


@deadline(10)
async def test_whole_requests_bypass_h3connections_stream_machinery(
    server_config: ServerConfig, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common case must not pay for H3Connection's per-stream state: neither
    # feeding it the request nor writing the response through it.
    fed: list[int] = []
    original = _GatewayH3Connection.handle_event

    def counting(self: _GatewayH3Connection, event: Any) -> Any:
        if getattr(event, "stream_id", 2) % 4 == 0:  # a request stream
            fed.append(event.stream_id)
        return original(self, event)

    monkeypatch.setattr(_GatewayH3Connection, "handle_event", counting)
    monkeypatch.setattr(_GatewayH3Connection, "send_headers", None)  # must not be called
    monkeypatch.setattr(_GatewayH3Connection, "send_data", None)
    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        for i in range(20):
            reply = await client.call("echo", {"n": i})
            assert reply.status == 200
            assert reply.msgpack() == {"n": i}
        assert (await client.request("GET", "/healthz")).body == b"ok"
        missing = await client.call(0x0777, None)
        assert missing.status == 404
        assert missing.json()["code_name"] == "NOT_FOUND"
        assert fed == []
        # Nothing is left behind for those streams either.
        (session,) = gateway_of(server)._sessions
        assert session._requests == {}
        assert session._quic is not None
        assert all(stream_id % 4 != 0 for stream_id in session._quic._outboxes)


@deadline(10)
async def test_a_request_in_pieces_goes_through_h3connection(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        # The headers first; the body only once the server has read them.  No
        # content-length here: nothing but the reading tells where the body is.
        stream_id = client.quic.get_next_available_stream_id()
        client._pending[stream_id] = _Pending()
        client.h3.send_headers(stream_id, request_headers(client, None))
        client.transmit()
        await trio.testing.wait_all_tasks_blocked()
        client.h3.send_data(stream_id, BODY, end_stream=True)
        client.transmit()
        reply = await client.response(stream_id)
        assert reply.status == 200
        assert reply.msgpack() == msgpack.unpackb(BODY)

        # A reserved frame type between HEADERS and DATA (RFC 9114 section 7.2.8):
        # ignored, as H3Connection does (again without content-length).
        stream_id = client.quic.get_next_available_stream_id()
        client._pending[stream_id] = _Pending()
        client.h3.send_headers(stream_id, request_headers(client, None))
        client.quic.send_stream_data(stream_id, encode_frame(0x21 + 0x1F * 3, b"grease"))
        client.h3.send_data(stream_id, BODY, end_stream=True)
        client.transmit()
        reply = await client.response(stream_id)
        assert reply.status == 200
        assert reply.msgpack() == msgpack.unpackb(BODY)


MALFORMED = {
    "content-length does not match": lambda h: [*h[:5], (b"content-length", b"7")],
    "upper-case name": lambda h: [*h, (b"X-Trace", b"1")],
    "value with a leading space": lambda h: [*h, (b"x-trace", b" 1")],
    "no :authority": lambda h: [h[0], h[1], h[3], *h[4:]],
    "pseudo-header after a regular one": lambda h: [*h[:2], *h[3:], h[2]],
    "unknown pseudo-header": lambda h: [*h[:4], (b":status", b"200"), *h[4:]],
    "connection-specific header": lambda h: [*h, (b"connection", b"close")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@deadline(10)
async def test_malformed_requests_close_the_connection_as_h3connection_does(
    server_config: ServerConfig, certificate: Certificate, case: str
) -> None:
    # RFC 9114 section 4.1.2: a malformed request is a stream error; aioquic
    # closes the connection with H3_MESSAGE_ERROR, and so must the fast way.
    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        stream_id = client.quic.get_next_available_stream_id()
        client._pending[stream_id] = _Pending()
        headers = MALFORMED[case](request_headers(client, len(BODY)))
        client.h3.send_headers(stream_id, headers)
        client.h3.send_data(stream_id, BODY, end_stream=True)
        client.transmit()
        with pytest.raises(ConnectionError):
            await client.response(stream_id)
        assert client.terminated is not None
        assert client.terminated.error_code == H3ErrorCode.H3_MESSAGE_ERROR


# Header fields built mostly from pieces near the rules' edges.
_NAMES = st.sampled_from(
    [
        b":method",
        b":scheme",
        b":authority",
        b":path",
        b":protocol",
        b":status",
        b"content-length",
        b"content-type",
        b"te",
        b"connection",
        b"x-trace",
        b"X-Trace",
        b"x:y",
        b"x y",
        b"",
    ]
) | st.binary(max_size=6)
_VALUES = st.sampled_from(
    [b"", b"POST", b"https", b"http", b"localhost", b"/rpc/echo", b"3", b"007", b"-1", b"trailers"]
) | st.binary(max_size=6)


@given(
    extra=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    position=st.integers(min_value=0, max_value=4),
    drop=st.sets(st.integers(min_value=0, max_value=3), max_size=2),
    body_length=st.integers(min_value=0, max_value=8),
)
@settings(max_examples=2000, deadline=None)
def test_the_fast_check_accepts_only_what_aioquic_accepts(
    extra: list[tuple[bytes, bytes]], position: int, drop: set[int], body_length: int
) -> None:
    # An ordinary request, some pseudo-headers dropped, odd fields put anywhere.
    base = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/rpc/echo"),
    ]
    headers = [field for i, field in enumerate(base) if i not in drop]
    headers[position:position] = extra
    if not _plainly_valid(headers, body_length):
        return  # H3Connection decides
    stream = H3Stream(0)
    validate_request_headers(headers, stream)  # raises if aioquic would refuse
    expected = stream.expected_content_length
    assert expected is None or expected == body_length


def test_the_fast_check_accepts_an_ordinary_request() -> None:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"localhost:4433"),
        (b":path", b"/rpc/echo"),
        (b"content-type", b"application/msgpack"),
        (b"content-length", b"66"),
    ]
    assert _plainly_valid(headers, 66)
    assert not _plainly_valid(headers, 65)
