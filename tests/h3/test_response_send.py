"""How a response reaches the stream: queued with its FIN in one step, or sent
in the ordinary way when the stream cannot take it without waiting."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import quicframe
from quicframe import ServerConfig
from quicframe.transport import Stream

from .conftest import Certificate, deadline, h3_client, open_gateway


def make_router() -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(1, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    return router


@deadline(10)
async def test_a_response_the_stream_cannot_take_at_once_is_still_sent_whole(
    server_config: ServerConfig, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Stream.send_nowait
    refused: list[int] = []

    def over_the_mark(self: Stream, data: Any, *, eof: bool = False) -> None:
        if eof:  # the gateway's one-step response: as if over the high-water mark
            refused.append(self.stream_id)
            raise trio.WouldBlock
        original(self, data, eof=eof)

    monkeypatch.setattr(Stream, "send_nowait", over_the_mark)
    async with (
        open_gateway(make_router(), server_config) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        for i in range(3):
            reply = await client.call("echo", {"n": i, "pad": "x" * 1000})
            assert reply.status == 200
            assert reply.msgpack() == {"n": i, "pad": "x" * 1000}
        missing = await client.call(0x0777, None)
        assert missing.status == 404
        assert (await client.request("GET", "/healthz")).body == b"ok"
    assert len(refused) >= 5
