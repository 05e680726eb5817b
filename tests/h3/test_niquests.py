"""A second, independent HTTP/3 client: niquests (urllib3-future over qh3).

niquests runs synchronously in a worker thread; the gateway runs in trio.  The
client is told up front that localhost:port speaks HTTP/3 and may use nothing
else, so every request below is HTTP/3 or fails.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgpack
import niquests
import trio
from niquests.structures import QuicSharedCache

import quicframe
from quicframe import ServerConfig

from .conftest import Certificate, deadline, open_gateway

ECHO = 0x0001
SLEEP = 0x0002


def make_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return {"value": request, "request_id": ctx.request_id, "sla": ctx.sla_class}

    @router.rpc(SLEEP)
    async def sleep(request: Any, ctx: quicframe.CallContext) -> Any:
        await trio.sleep_forever()

    return router


def http3_session(port: int) -> niquests.Session:
    """A niquests session told that localhost:port speaks HTTP/3, and that may use
    nothing else."""
    session = niquests.Session(
        disable_http1=True,
        disable_http2=True,
        disable_ipv6=True,
        revocation_configuration=None,
        retries=0,
    )
    layer = session.quic_cache_layer
    assert isinstance(layer, QuicSharedCache)
    layer.add_domain("localhost", port)
    return session


def run_client(port: int, ca_file: Path) -> dict[str, Any]:
    """The calls, made by niquests; returns what the test checks."""
    base = f"https://localhost:{port}"
    seen: dict[str, Any] = {}
    with http3_session(port) as session:
        options: dict[str, Any] = {"verify": str(ca_file), "timeout": 5}
        response = session.post(
            f"{base}/rpc/echo",
            json=[1, 2],
            headers={"x-request-id": "nq-1", "x-sla-level": "gold"},
            **options,
        )
        seen["json"] = (response.http_version, response.status_code, response.json())
        seen["json_request_id"] = response.headers.get("x-request-id")
        body = msgpack.packb("packed")
        response = session.post(
            f"{base}/rpc/0x0001",
            data=body,
            headers={
                "content-type": "application/msgpack",
                "x-payload-sha256": hashlib.sha256(body).hexdigest(),
            },
            **options,
        )
        seen["msgpack"] = (response.status_code, msgpack.unpackb(response.content))
        response = session.post(
            f"{base}/rpc/echo",
            data=b"\x01" + body[1:],
            headers={
                "content-type": "application/msgpack",
                "x-payload-sha256": hashlib.sha256(body).hexdigest(),
            },
            **options,
        )
        seen["tampered"] = (response.status_code, response.json()["code_name"])
        response = session.post(
            f"{base}/rpc/{SLEEP}", json=None, headers={"x-deadline-ms": "20"}, **options
        )
        seen["deadline"] = (response.status_code, response.json()["code_name"])
        response = session.post(f"{base}/rpc/0x0999", json=None, **options)
        seen["unknown"] = (
            response.status_code,
            response.headers.get("content-type"),
            response.json()["code_name"],
        )
        response = session.get(f"{base}/healthz", **options)
        seen["healthz"] = (response.status_code, response.content)
        response = session.get(f"{base}/metrics", **options)
        seen["metrics"] = (response.status_code, response.text)
    return seen


@deadline(20)
async def test_niquests_over_http3(server_config: ServerConfig, certificate: Certificate) -> None:
    async with open_gateway(make_router(), server_config) as server:
        seen = await trio.to_thread.run_sync(
            run_client, server.port, certificate.path, abandon_on_cancel=True
        )
    version, status, value = seen["json"]
    assert version == 30  # HTTP/3
    assert status == 200
    assert value == {"value": [1, 2], "request_id": "nq-1", "sla": 2}
    assert seen["json_request_id"] == "nq-1"
    assert seen["msgpack"][0] == 200
    assert seen["msgpack"][1]["value"] == "packed"
    assert seen["tampered"] == (400, "INTEGRITY_MISMATCH")
    assert seen["deadline"] == (504, "DEADLINE_EXCEEDED")
    assert seen["unknown"] == (404, "application/problem+json", "NOT_FOUND")
    assert seen["healthz"] == (200, b"ok")
    assert seen["metrics"][0] == 200
    assert (
        'quicframe_http3_calls_total{opcode="0x0001",code="OK",status="200"} 2'
        in (seen["metrics"][1])
    )


def read_subscriptions(port: int, ca_file: Path) -> dict[str, Any]:
    """GET /topics/... twice (records, then SSE) with niquests, streaming the body."""
    from .test_topics import split_events, split_records

    base = f"https://localhost:{port}"
    seen: dict[str, Any] = {}
    with http3_session(port) as session:
        options: dict[str, Any] = {"verify": str(ca_file), "timeout": 5, "stream": True}
        for name, accept in (("records", "*/*"), ("sse", "text/event-stream")):
            response = session.get(
                f"{base}/topics/md.ticks?from_seq=2", headers={"accept": accept}, **options
            )
            buffer = bytearray()
            items: list[dict[str, Any]] = []
            for chunk in response.iter_content(chunk_size=None):
                buffer += chunk
                items.extend(split_events(buffer) if name == "sse" else split_records(buffer))
                if len(items) == 4:  # subscribed, then seq 2, 3, 4
                    break
            response.close()
            seen[name] = (response.http_version, response.status_code, items)
    return seen


@deadline(20)
async def test_niquests_subscribes_over_http3(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    router = make_router()
    topic = router.add_topic(quicframe.Topic("md.ticks", quicframe.MarketTick))
    for i in range(4):
        await topic.publish(quicframe.MarketTick(0, i, 0, 100 + i, 1, 7))
    async with open_gateway(router, server_config) as server:
        seen = await trio.to_thread.run_sync(
            read_subscriptions, server.port, certificate.path, abandon_on_cancel=True
        )
    version, status, records = seen["records"]
    assert (version, status) == (30, 200)
    assert records[0]["event"] == "subscribed"
    assert [(r["seq"], r["value"]["price"]) for r in records[1:]] == [(2, 101), (3, 102), (4, 103)]
    version, status, events = seen["sse"]
    assert (version, status) == (30, 200)
    assert events[0]["event"] == "subscribed"
    assert [e["id"] for e in events[1:]] == ["2", "3", "4"]
    assert [e["data"]["value"]["price"] for e in events[1:]] == [101, 102, 103]
