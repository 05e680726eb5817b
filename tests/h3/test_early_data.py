"""HTTP/3 requests sent as 0-RTT early data: only idempotent operations run from them.

aioquic's client resumes with a ticket from a first connection and writes its
requests before the handshake completes, so they reach the server as 0-RTT
data.  A call to an operation not registered idempotent is answered 425 Too
Early (RFC 8470) without running, as a native call is refused UNAVAILABLE; the
client may send it again once the handshake is done.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import trio
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

import quicframe
from quicframe import ServerConfig
from quicframe.errors import ErrorCode
from quicframe.h3 import gateway_of

from .conftest import Certificate, H3Client, deadline, open_gateway

LOOKUP = 0x0001  # idempotent: may run from early data
ORDER = 0x0002  # not idempotent


def make_router(runs: list[tuple[str, Any]]) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(LOOKUP, idempotent=True, name="lookup")
    async def lookup(request: Any, ctx: quicframe.CallContext) -> Any:
        runs.append(("lookup", request))
        return request

    @router.rpc(ORDER, name="order")
    async def order(request: Any, ctx: quicframe.CallContext) -> Any:
        runs.append(("order", request))
        return request

    return router


@contextlib.asynccontextmanager
async def resuming_client(
    port: int, ca_file: Path, ticket: SessionTicket | None, tickets: list[SessionTicket]
) -> AsyncIterator[H3Client]:
    """aioquic's HTTP/3 client, resuming with ``ticket`` when given.

    Yields before the handshake completes: requests started at once go out as
    0-RTT data when the ticket allows it.  New tickets are appended to ``tickets``.
    """
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.load_verify_locations(cafile=str(ca_file))
    configuration.server_name = "localhost"
    configuration.session_ticket = ticket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    with sock:
        quic = QuicConnection(configuration=configuration, session_ticket_handler=tickets.append)
        client = H3Client(quic, sock, ("127.0.0.1", port))
        quic.connect(("127.0.0.1", port), now=trio.current_time())
        # The caller starts client.run once its early requests are out.
        try:
            yield client
        finally:
            quic.close()
            client.transmit()


def start_call(client: H3Client, op: int, value: Any) -> int:
    body = msgpack.packb(value, use_bin_type=True)
    return client.start("POST", f"/rpc/{op}", [("content-type", "application/msgpack")], body)


@deadline(10)
async def test_only_idempotent_calls_run_from_early_data(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    runs: list[tuple[str, Any]] = []
    tickets: list[SessionTicket] = []
    async with open_gateway(make_router(runs), server_config) as server:
        gateway = gateway_of(server)
        # A first connection, full handshake: collects a ticket.
        async with (
            resuming_client(server.port, certificate.path, None, tickets) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(client.run)
            await client.connected.wait()
            assert (await client.request("GET", "/healthz")).status == 200
            while not tickets:
                await client._progress.park()
            nursery.cancel_scope.cancel()
        assert runs == []

        # A second connection resumes and writes both calls before its handshake.
        async with resuming_client(server.port, certificate.path, tickets[-1], tickets) as client:
            early_order = start_call(client, ORDER, "buy 1")
            early_lookup = start_call(client, LOOKUP, "ESZ5")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                refused = await client.response(early_order)
                looked_up = await client.response(early_lookup)
                assert client.quic.tls.session_resumed
                assert client.quic.tls.early_data_accepted
                # The server saw the requests as early data (the first connection
                # may not be gone yet, and saw none).
                early = [c.early_data_received for c in gateway.connections]
                assert max(early) > 0

                assert looked_up.status == 200
                assert looked_up.msgpack() == "ESZ5"
                assert refused.status == 425
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.headers["x-quicframe-code"] == str(ErrorCode.UNAVAILABLE)
                problem = refused.json()
                assert problem["title"] == "Too Early"
                assert problem["code_name"] == "UNAVAILABLE"
                assert problem["details"] == {"early_data": True}
                # The refused call did not run; the idempotent one did.
                assert runs == [("lookup", "ESZ5")]

                # Sent again after the handshake, the same call runs.
                await client.connected.wait()
                again = await client.response(start_call(client, ORDER, "buy 1"))
                assert again.status == 200
                assert again.msgpack() == "buy 1"
                assert runs == [("lookup", "ESZ5"), ("order", "buy 1")]
                nursery.cancel_scope.cancel()

        metrics = (await _fetch_metrics(server.port, certificate.path)).decode()
        assert 'quicframe_http3_calls_total{opcode="0x0002",code="UNAVAILABLE",status="425"} 1' in (
            metrics
        )


async def _fetch_metrics(port: int, ca_file: Path) -> bytes:
    tickets: list[SessionTicket] = []
    async with (
        resuming_client(port, ca_file, None, tickets) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client.run)
        await client.connected.wait()
        response = await client.request("GET", "/metrics")
        nursery.cancel_scope.cancel()
    assert response.status == 200
    return response.body
