"""Header blocks the gateway remembers.

A header block that needs no QPACK dynamic table decodes to the same fields
whoever sends it, so the gateway works out what one says once and reuses that
for every request that repeats it.  These tests check that repeats are served
exactly as a first sight would be, and that different blocks never share.
"""

from __future__ import annotations

from typing import Any

import quicframe
from quicframe import ServerConfig
from quicframe.h3 import gateway_of

from .conftest import Certificate, deadline, h3_client, open_gateway

ECHO = 0x0001


def make_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return {"value": request, "request_id": ctx.request_id, "sla": ctx.sla_class}

    return router


@deadline(10)
async def test_repeated_blocks_are_served_as_on_first_sight(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        blocks = gateway_of(server)._blocks
        for _ in range(3):
            reply = await client.call("echo", 7, [("x-request-id", "same")])
            assert reply.status == 200
            assert reply.headers["x-request-id"] == "same"
            assert reply.msgpack() == {"value": 7, "request_id": "same", "sla": None}
        remembered = len(blocks)
        assert remembered >= 1
        # Each distinct block has its own fields: nothing leaks between them.
        for i in range(5):
            reply = await client.call(
                "echo", 7, [("x-request-id", f"id-{i}"), ("x-sla-level", "gold")]
            )
            assert reply.status == 200
            assert reply.headers["x-request-id"] == f"id-{i}"
            assert reply.msgpack()["request_id"] == f"id-{i}"
            assert reply.msgpack()["sla"] == 2  # SlaClass.GOLD
        assert len(blocks) == remembered + 5
        # A block whose fields do not parse is answered 400 every time it comes.
        for _ in range(3):
            bad = await client.call("echo", 7, [("x-deadline-ms", "soon")])
            assert bad.status == 400
            assert bad.json()["code_name"] == "INVALID_ARGUMENT"
            assert "x-deadline-ms" in bad.json()["detail"]
        # Repeats of the first block are still answered from it.
        reply = await client.call("echo", 7, [("x-request-id", "same")])
        assert reply.msgpack() == {"value": 7, "request_id": "same", "sla": None}


@deadline(10)
async def test_the_remembered_blocks_are_bounded(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    from quicframe.h3 import _gateway

    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        blocks = gateway_of(server)._blocks
        for i in range(_gateway._BLOCKS_KEPT + 10):
            reply = await client.call("echo", 1, [("x-request-id", f"r{i}")])
            assert reply.status == 200
            assert reply.msgpack()["request_id"] == f"r{i}"
            assert len(blocks) <= _gateway._BLOCKS_KEPT
        # A block too long to keep is served and not remembered.
        before = len(blocks)
        long_id = "x" * 128
        reply = await client.call("echo", 1, [("x-request-id", long_id), ("x-pad", "p" * 600)])
        assert reply.status == 200
        assert reply.msgpack()["request_id"] == long_id
        assert len(blocks) == before
