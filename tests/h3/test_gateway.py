"""The HTTP/3 gateway driven by aioquic's own HTTP/3 client: endpoints, headers, statuses."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.errors import (
    ErrorCode,
    NotFound,
    RemoteError,
    Unauthorized,
    UnknownTopic,
    remote_error_class,
)
from quicframe.h3 import TopicRequest, gateway_of
from quicframe.middleware import limit_concurrency, log_calls, require_principal
from quicframe.session import Hello, sla_urgency
from quicframe.transport import Connection

from .conftest import Certificate, H3Client, Response, deadline, h3_client, open_gateway

ECHO = 0x0001
QUOTE = 0x0101
PROBE = 0x0002
BLOCK = 0x0003
RAISE = 0x0004
CRASH = 0x0005
ADMIN = 0x0006
LIMITED = 0x0007


@dataclass
class QuoteRequest:
    symbol: str
    size: int = 1


@dataclass
class QuoteReply:
    symbol: str
    price: int


@dataclass
class Probe:
    """What handlers saw, and events tests wait on."""

    contexts: list[quicframe.CallContext] = field(default_factory=list)
    started: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)
    cancelled: trio.Event = field(default_factory=trio.Event)
    calls: int = 0


def make_router(probe: Probe) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.calls += 1
        return request

    @router.rpc(QUOTE, request=QuoteRequest, response=QuoteReply, name="quote")
    async def quote(request: QuoteRequest, ctx: quicframe.CallContext) -> QuoteReply:
        return QuoteReply(symbol=request.symbol, price=100 * request.size)

    @router.rpc(PROBE)
    async def probe_ctx(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.contexts.append(ctx)
        return {"request_id": ctx.request_id, "sla": ctx.sla_class, "budget": ctx.budget_ns}

    @router.rpc(BLOCK)
    async def block(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.contexts.append(ctx)
        probe.started.set()
        try:
            await probe.release.wait()
        except trio.Cancelled:
            probe.cancelled.set()
            raise
        return "released"

    @router.rpc(RAISE)
    async def raise_code(request: Any, ctx: quicframe.CallContext) -> Any:
        code = int(request["code"])
        raise remote_error_class(code)("as asked", code=code, details={"asked": code})

    @router.rpc(CRASH)
    async def crash(request: Any, ctx: quicframe.CallContext) -> Any:
        raise RuntimeError("handler bug")

    @router.rpc(ADMIN)
    async def admin(request: Any, ctx: quicframe.CallContext) -> Any:
        return ctx.principal

    @router.rpc(LIMITED)
    async def limited(request: Any, ctx: quicframe.CallContext) -> Any:
        probe.started.set()
        await probe.release.wait()
        return "done"

    return router


@contextlib.asynccontextmanager
async def gateway(
    server_config: ServerConfig,
    probe: Probe,
    router: quicframe.Router | None = None,
    **options: Any,
) -> AsyncIterator[quicframe.Server]:
    async with open_gateway(router or make_router(probe), server_config, **options) as server:
        yield server


@contextlib.asynccontextmanager
async def gateway_client(
    server_config: ServerConfig,
    certificate: Certificate,
    probe: Probe,
    router: quicframe.Router | None = None,
    **options: Any,
) -> AsyncIterator[H3Client]:
    """An HTTP/3 client connected to a gateway (see :func:`gateway`)."""
    async with (
        gateway(server_config, probe, router, **options) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        yield client


async def start_blocked(
    client: H3Client, probe: Probe, opcode: int, headers: list[tuple[str, str]] | None = None
) -> int:
    """Start a msgpack nil call to ``opcode`` (BLOCK or LIMITED) and wait until its
    handler runs; return the request's stream ID (see ``client.response``)."""
    stream_id = client.start(
        "POST",
        f"/rpc/{opcode}",
        [("content-type", "application/msgpack"), *(headers or [])],
        msgpack.packb(None),
    )
    await probe.started.wait()
    return stream_id


def problem(response: Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = json.loads(response.body)
    assert document["status"] == response.status
    assert response.headers["x-quicframe-code"] == str(document["code"])
    return document


@pytest.fixture
def probe() -> Probe:
    return Probe()


# -- calls -------------------------------------------------------------------------


@deadline(10)
async def test_post_rpc_by_decimal_hex_and_name(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        for op in ("1", "0x0001", "0x1", "echo"):
            response = await client.call(op, {"n": [1, 2]})
            assert response.status == 200
            assert response.headers["content-type"] == "application/msgpack"
            assert response.msgpack() == {"n": [1, 2]}
        assert probe.calls == 4


@deadline(10)
async def test_json_and_msgpack_by_content_type_and_accept(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        # JSON in, JSON out (the response follows the request without Accept).
        response = await client.request(
            "POST",
            "/rpc/quote",
            [("content-type", "application/json")],
            json.dumps({"symbol": "ESZ5", "size": 3}).encode(),
        )
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"symbol": "ESZ5", "price": 300}
        # msgpack in, JSON out because Accept asks for it.
        response = await client.call(QUOTE, {"symbol": "NQ"}, [("accept", "application/json")])
        assert response.json() == {"symbol": "NQ", "price": 100}
        # JSON in, msgpack out by Accept (q-values honoured).
        response = await client.request(
            "POST",
            "/rpc/257",
            [
                ("content-type", "application/json"),
                ("accept", "application/json;q=0.2, application/msgpack"),
            ],
            b'{"symbol": "CL"}',
        )
        assert response.headers["content-type"] == "application/msgpack"
        assert response.msgpack() == {"symbol": "CL", "price": 100}
        # bytes travel as msgpack bin, and as base64 text in JSON.
        response = await client.call(ECHO, b"\x00\x01", [("accept", "application/json")])
        assert response.json() == base64.b64encode(b"\x00\x01").decode()
        # A POST without a body calls the handler with None.
        response = await client.request("POST", "/rpc/echo")
        assert response.status == 200
        assert response.msgpack() is None


@deadline(10)
async def test_bad_requests(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        unknown = problem(await client.call(0x0777, 1))
        assert unknown["status"] == 404
        assert unknown["code_name"] == "NOT_FOUND"
        assert unknown["type"] == "urn:quicframe:error:NOT_FOUND"
        assert problem(await client.call("no-such-name", 1))["status"] == 404
        bad_json = await client.request(
            "POST", "/rpc/echo", [("content-type", "application/json")], b"{oops"
        )
        assert problem(bad_json)["status"] == 400
        assert problem(bad_json)["code"] == ErrorCode.MALFORMED_BODY
        # JSON msgpack cannot carry, or nested past the parser: the same typed 400.
        for body in (b"[" * 100_000, b'{"n": 123456789012345678901234567890}', b"\xff"):
            odd_json = await client.request(
                "POST", "/rpc/echo", [("content-type", "application/json")], body
            )
            assert problem(odd_json)["status"] == 400
            assert problem(odd_json)["code"] == ErrorCode.MALFORMED_BODY
        missing_field = await client.call(QUOTE, {"size": 2})
        assert problem(missing_field)["status"] == 400
        bad_type = await client.request(
            "POST", "/rpc/echo", [("content-type", "text/plain")], b"hello"
        )
        assert bad_type.status == 415
        no_type = await client.request("POST", "/rpc/echo", body=b"hello")
        assert no_type.status == 415
        unacceptable = await client.call(ECHO, 1, [("accept", "text/html")])
        assert unacceptable.status == 406
        wrong_method = await client.request("GET", "/rpc/echo")
        assert wrong_method.status == 405
        assert wrong_method.headers["allow"] == "POST"
        assert (await client.request("POST", "/healthz")).status == 405
        assert problem(await client.request("GET", "/nowhere"))["status"] == 404
        for name, value in [("x-sla-level", "platinum"), ("x-deadline-ms", "soon")]:
            response = await client.call(ECHO, 1, [(name, value)])
            assert problem(response)["status"] == 400
            assert problem(response)["code_name"] == "INVALID_ARGUMENT"
        assert probe.calls == 0


@deadline(10)
async def test_body_larger_than_the_frame_limit_is_413(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe, max_frame_size=4096) as client:
        response = await client.call(ECHO, b"x" * 10_000)
        assert problem(response)["status"] == 413
        assert (await client.call(ECHO, b"small")).msgpack() == b"small"


# -- headers -----------------------------------------------------------------------


@deadline(10)
async def test_request_id_is_echoed_generated_and_seen_by_ctx_and_logs(
    server_config: ServerConfig,
    certificate: Certificate,
    probe: Probe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = make_router(probe)
    router.use(log_calls())
    caplog.set_level(logging.INFO, logger="quicframe.calls")
    async with gateway_client(server_config, certificate, probe, router) as client:
        given = await client.call(PROBE, None, [("x-request-id", "req-42")])
        assert given.headers["x-request-id"] == "req-42"
        assert given.msgpack()["request_id"] == "req-42"
        generated = await client.call(PROBE, None)
        request_id = generated.headers["x-request-id"]
        assert request_id
        assert request_id != "req-42"
        assert generated.msgpack()["request_id"] == request_id
        assert [ctx.request_id for ctx in probe.contexts] == ["req-42", request_id]
        # Errors carry it too, in the header and in the problem document.
        failed = await client.call(0x0777, None, [("x-request-id", "req-43")])
        assert failed.headers["x-request-id"] == "req-43"
        assert problem(failed)["request_id"] == "req-43"
    logged = [getattr(record, "request_id", None) for record in caplog.records]
    assert "req-42" in logged
    assert request_id in logged


@deadline(10)
async def test_sla_level_maps_to_the_native_classes(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        for level, expected in [("gold", 2), ("SILVER", 1), ("bronze", 0), ("9", 9)]:
            response = await client.call(PROBE, None, [("x-sla-level", level)])
            assert response.msgpack()["sla"] == expected
            assert probe.contexts[-1].sla_class == expected
            assert probe.contexts[-1].metadata.sla_class == expected
        response = await client.call(PROBE, None)
        assert response.msgpack()["sla"] is None


@deadline(10)
async def test_payload_digest_is_checked_before_the_handler(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    body = msgpack.packb({"order": 7})
    digest = hashlib.sha256(body).digest()
    headers = [("content-type", "application/msgpack")]
    async with gateway_client(server_config, certificate, probe) as client:
        for encoded in (digest.hex(), base64.b64encode(digest).decode()):
            response = await client.request(
                "POST", "/rpc/echo", [*headers, ("x-payload-sha256", encoded)], body
            )
            assert response.status == 200
            # The response carries the digest of its own body.
            assert response.headers["x-payload-sha256"] == hashlib.sha256(response.body).hexdigest()
        assert probe.calls == 2
        tampered = body[:-1] + b"\x08"
        response = await client.request(
            "POST", "/rpc/echo", [*headers, ("x-payload-sha256", digest.hex())], tampered
        )
        assert problem(response)["status"] == 400
        assert problem(response)["code_name"] == "INTEGRITY_MISMATCH"
        assert probe.calls == 2  # the handler never ran
        plain = await client.request("POST", "/rpc/echo", headers, body)
        assert "x-payload-sha256" not in plain.headers


@deadline(10)
async def test_deadline_header_becomes_the_handlers_cancel_scope(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        response = await client.call(BLOCK, None, [("x-deadline-ms", "50")])
        assert probe.cancelled.is_set()
        assert problem(response)["status"] == 504
        assert problem(response)["code_name"] == "DEADLINE_EXCEEDED"
        ctx = probe.contexts[-1]
        assert ctx.budget_ns == 50_000_000
        assert ctx.deadline == pytest.approx(ctx.received_at + 0.05)
        assert ctx.cancel_scope is not None
        assert ctx.cancel_scope.deadline == ctx.deadline
        # Without the header there is no deadline.
        await client.call(PROBE, None)
        assert probe.contexts[-1].deadline == math.inf


# -- statuses ----------------------------------------------------------------------


@deadline(10)
async def test_handler_errors_map_to_statuses_with_problem_bodies(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    expected = {
        ErrorCode.INVALID_ARGUMENT: 400,
        ErrorCode.INTEGRITY_MISMATCH: 400,
        ErrorCode.UNAUTHENTICATED: 401,
        ErrorCode.PERMISSION_DENIED: 403,
        ErrorCode.NOT_FOUND: 404,
        ErrorCode.RESOURCE_EXHAUSTED: 429,
        ErrorCode.CANCELLED: 499,
        ErrorCode.INTERNAL: 500,
        ErrorCode.UNAVAILABLE: 503,
        ErrorCode.DEADLINE_EXCEEDED: 504,
    }
    async with gateway_client(server_config, certificate, probe) as client:
        for code, status in expected.items():
            document = problem(await client.call(RAISE, {"code": int(code)}))
            assert (document["status"], document["code"]) == (status, code)
            assert document["detail"] == "as asked"
            assert document["details"] == {"asked": int(code)}
        crashed = problem(await client.call(CRASH, None))
        assert (crashed["status"], crashed["code_name"]) == (500, "INTERNAL")
        assert "handler bug" not in crashed["detail"]  # no internals leak


async def by_token(hello: Hello, connection: Connection) -> str | None:
    token = hello.credentials.get("token")
    if token == "stolen":
        raise Unauthorized("this token is revoked")
    return None if token is None else str(token)


@deadline(10)
async def test_authentication_is_401_and_authorisation_403(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    router = make_router(probe)
    router.use(require_principal(lambda ctx: ctx.principal == "root", opcodes=[ADMIN]))
    async with gateway_client(
        server_config, certificate, probe, router, authenticator=by_token
    ) as client:
        anonymous = await client.call(ADMIN, None)
        assert problem(anonymous)["status"] == 401
        assert problem(anonymous)["code_name"] == "UNAUTHENTICATED"
        revoked = await client.call(ADMIN, None, [("authorization", "Bearer stolen")])
        assert problem(revoked)["status"] == 401
        assert problem(revoked)["code_name"] == "UNAUTHORIZED"
        assert revoked.headers["www-authenticate"] == "Bearer"
        bob = await client.call(ADMIN, None, [("authorization", "Bearer bob")])
        assert problem(bob)["status"] == 403
        root = await client.call(ADMIN, None, [("authorization", "Bearer root")])
        assert root.status == 200
        assert root.msgpack() == "root"
        # Operations without a guard work anonymously.
        assert (await client.call(ECHO, 1)).status == 200


@deadline(10)
async def test_limits_are_429(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    router = make_router(probe)
    router.use(limit_concurrency({LIMITED: 1}))
    async with gateway_client(server_config, certificate, probe, router) as client:
        first = await start_blocked(client, probe, LIMITED)
        second = await client.call(LIMITED, None)
        assert problem(second)["status"] == 429
        assert problem(second)["code_name"] == "RESOURCE_EXHAUSTED"
        probe.release.set()
        assert (await client.response(first)).status == 200


@deadline(10)
async def test_max_concurrent_calls_per_connection_rejects_the_request(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    # Beyond the limit a request is refused unread: H3_REQUEST_REJECTED (0x10b);
    # more in tests/h3/test_limits.py.
    async with gateway_client(server_config, certificate, probe, max_concurrent_calls=1) as client:
        blocked = await start_blocked(client, probe, BLOCK)
        with pytest.raises(ConnectionResetError, match="code 267"):
            await client.call(ECHO, 1)
        probe.release.set()
        assert (await client.response(blocked)).msgpack() == "released"


@deadline(10)
async def test_client_cancel_cancels_exactly_that_handler(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        blocked = await start_blocked(client, probe, BLOCK)
        client.cancel(blocked)
        await probe.cancelled.wait()
        assert (await client.call(ECHO, "still here")).msgpack() == "still here"
        metrics = (await client.request("GET", "/metrics")).body.decode()
        assert 'quicframe_http3_calls_total{opcode="0x0003",code="CANCELLED",status="499"} 1' in (
            metrics
        )


@deadline(10)
async def test_draining_server_answers_503(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with (
        gateway(server_config, probe, shutdown_grace_period=5.0) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        blocked = await start_blocked(client, probe, BLOCK)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert server.closing
            refused = await client.call(ECHO, 1)
            assert problem(refused)["status"] == 503
            assert problem(refused)["code_name"] == "UNAVAILABLE"
            health = await client.request("GET", "/healthz")
            assert health.status == 503
            # The call in flight still finishes within the grace period.
            probe.release.set()
            assert (await client.response(blocked)).msgpack() == "released"
        assert probe.calls == 0


# -- operations --------------------------------------------------------------------


@deadline(10)
async def test_healthz_metrics_and_topics(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with gateway_client(server_config, certificate, probe) as client:
        health = await client.request("GET", "/healthz")
        assert (health.status, health.body) == (200, b"ok")
        await client.call(ECHO, 1)
        await client.call(ECHO, 2)
        await client.call(0x0777, 3)
        metrics = await client.request("GET", "/metrics")
        assert metrics.status == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        lines = metrics.body.decode().splitlines()
        assert 'quicframe_http3_calls_total{opcode="0x0001",code="OK",status="200"} 2' in lines
        assert (
            'quicframe_http3_calls_total{opcode="unknown",code="NOT_FOUND",status="404"} 1' in lines
        )
        assert 'quicframe_http3_call_duration_seconds_bucket{opcode="0x0001",le="+Inf"} 2' in lines
        assert 'quicframe_http3_call_duration_seconds_count{opcode="0x0001"} 2' in lines
        assert "# TYPE quicframe_http3_call_duration_seconds histogram" in lines
        assert 'quicframe_connections{alpn="h3"} 1' in lines
        assert 'quicframe_subscriptions{protocol="h3"} 0' in lines
        assert 'quicframe_subscriptions{protocol="native"} 0' in lines
        assert 'quicframe_subscription_drops_total{protocol="h3",reason="conflated"} 0' in lines
        assert 'quicframe_reconnects_total{protocol="h3"} 0' in lines
        # Every sample line is "name{labels} value" with a numeric value.
        for line in lines:
            if line and not line.startswith("#"):
                float(line.rsplit(" ", 1)[1])
        topics = await client.request("GET", "/topics/md.ticks")
        assert problem(topics)["status"] == 501


@deadline(10)
async def test_native_and_http3_clients_share_one_port(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    client_config = ClientConfig(ca_file=certificate.path, server_name="localhost")
    async with (
        gateway(server_config, probe) as server,
        h3_client(server.port, certificate.path) as h3,
        quicframe.connect("127.0.0.1", server.port, client_config) as native,
    ):
        assert native.connection.alpn_protocol == "quicframe/1"
        for i in range(5):
            assert await native.call(ECHO, i) == i
            assert (await h3.call(ECHO, i)).msgpack() == i
        assert await native.call(QUOTE, QuoteRequest("ES"), response=QuoteReply) == QuoteReply(
            "ES", 100
        )
        lines = (await h3.request("GET", "/metrics")).body.decode().splitlines()
        assert 'quicframe_connections{alpn="h3"} 1' in lines
        assert 'quicframe_connections{alpn="quicframe/1"} 1' in lines
        assert 'quicframe_native_calls_total{code="NO_ERROR"} 6' in lines
        assert probe.calls == 10


@deadline(10)
async def test_native_handler_errors_keep_their_classes_next_to_http3(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    client_config = ClientConfig(ca_file=certificate.path, server_name="localhost")
    async with (
        gateway(server_config, probe) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as native,
    ):
        with pytest.raises(NotFound):
            await native.call(RAISE, {"code": int(ErrorCode.NOT_FOUND)})
        with pytest.raises(RemoteError):
            await native.call(CRASH, None)


def test_importing_quicframe_does_not_load_the_gateway() -> None:
    code = (
        "import sys, quicframe\n"
        "quicframe.serve, quicframe.Router\n"
        "wanted = ('quicframe.h3', 'aioquic.h3.connection', 'pylsqpack')\n"
        "print(sorted(m for m in sys.modules if m.startswith(wanted)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@deadline(10)
async def test_topics_extension_point_streams_one_long_response(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    frames = [msgpack.packb({"seq": seq}) for seq in range(3)]

    async def subscription(request: TopicRequest) -> None:
        if request.topic != "md.ticks":
            raise UnknownTopic(f"no topic {request.topic}")
        if request.accept == "text/event-stream":
            await request.start("text/event-stream")
            for frame in frames:
                await request.send(
                    b"data: " + json.dumps(msgpack.unpackb(frame)).encode() + b"\n\n"
                )
            return
        await request.start("application/msgpack")
        for frame in frames:
            await request.send(len(frame).to_bytes(4, "big") + frame)

    async with (
        gateway(server_config, probe) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        gateway_of(server).subscription_handler = subscription
        response = await client.request("GET", "/topics/md.ticks", [("x-request-id", "sub-1")])
        assert response.status == 200
        assert response.headers["x-request-id"] == "sub-1"
        assert response.body == b"".join(len(f).to_bytes(4, "big") + f for f in frames)
        sse = await client.request("GET", "/topics/md.ticks", [("accept", "text/event-stream")])
        assert sse.headers["content-type"] == "text/event-stream"
        assert sse.body.decode().split("\n\n")[:3] == [f'data: {{"seq": {i}}}' for i in range(3)]
        missing = await client.request("GET", "/topics/nope")
        assert problem(missing)["status"] == 404
        assert problem(missing)["code_name"] == "UNKNOWN_TOPIC"


async def test_gateway_of_a_server_without_http3(server_config: ServerConfig) -> None:
    with trio.fail_after(10):
        async with quicframe.open_server(
            quicframe.Router(), "127.0.0.1", 0, server_config
        ) as server:
            with pytest.raises(LookupError):
                gateway_of(server)


@deadline(10)
async def test_sla_level_sets_the_response_urgency_like_native_calls(
    server_config: ServerConfig, certificate: Certificate, probe: Probe
) -> None:
    async with (
        gateway(server_config, probe) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        blocked = await start_blocked(client, probe, BLOCK, [("x-sla-level", "gold")])
        (connection,) = gateway_of(server).connections
        # The transport stream carrying this request, on the server side.
        stream = connection._streams[blocked]
        assert stream.urgency == sla_urgency(quicframe.SlaClass.GOLD) == 1
        probe.release.set()
        assert (await client.response(blocked)).status == 200
