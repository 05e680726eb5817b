"""Replayed 0-RTT: an on-path attacker re-sends a resuming client's first flight.

The genuine client resumes its TLS session and sends two calls as 0-RTT data:
one to an opcode the server registered as idempotent, one to an opcode the
client wrongly treats as idempotent.  A tap on the client's socket records the
datagrams, and once the genuine connection is over, an attacker on another
loopback host sends the INITIAL and 0-RTT ones to the server again, byte for
byte.  The single-use ticket store refuses the replayed ticket, so the server
cannot decrypt the early data and runs nothing for it; a bystander client is
served before, during and after the replay.
"""

from __future__ import annotations

import dataclasses
from socket import socket as StdlibSocket
from typing import Any, cast

import trio
import trio.testing

import quicframe
from quicframe import ClientConfig, ReconnectPolicy, ServerConfig
from quicframe.errors import Unavailable
from quicframe.testing import FakeNetwork, FakeSocket
from quicframe.transport import Connection, ServerTicketStore, SessionTicketStore

from .conftest import CLIENT_HOST, SERVER_HOST

ECHO = 0x0001  # the bystander's opcode, not counted
IDEMPOTENT = 0x0002  # registered idempotent: may run from 0-RTT data
OTHER = 0x0003  # not idempotent on the server
GENUINE_HOST = "127.0.0.3"
ATTACKER_HOST = "127.0.0.4"
FAST = ReconnectPolicy(max_retries=3, initial_backoff=0.02, max_backoff=0.1, jitter=0.0)

_INITIAL, _ZERO_RTT = 0, 1  # QUIC version 1 long header packet types


@dataclasses.dataclass
class Runs:
    idempotent: int = 0
    other: int = 0


def make_router(runs: Runs) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    @router.rpc(IDEMPOTENT, idempotent=True)
    async def idempotent(request: Any, ctx: quicframe.CallContext) -> Any:
        runs.idempotent += 1
        return "idempotent"

    @router.rpc(OTHER)
    async def other(request: Any, ctx: quicframe.CallContext) -> Any:
        runs.other += 1
        return "other"

    return router


class RecordingTicketStore:
    """A server ticket store that notes whether each presented ticket was taken."""

    def __init__(self) -> None:
        self.store = ServerTicketStore()
        self.found: list[bool] = []

    def add(self, ticket: Any) -> None:
        self.store.add(ticket)

    def pop(self, label: bytes) -> Any | None:
        ticket = self.store.pop(label)
        self.found.append(ticket is not None)
        return ticket

    def __len__(self) -> int:
        return len(self.store)


class _Tap:
    """A fake socket that keeps a copy of every datagram it sends."""

    def __init__(self, sock: FakeSocket, sent: list[bytes]) -> None:
        self._sock = sock
        self._sent = sent
        self.family = sock.family
        self.type = sock.type
        self.proto = sock.proto

    def sendto(self, data: bytes | bytearray | memoryview, *args: Any) -> int:
        self._sent.append(bytes(data))
        return self._sock.sendto(data, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Host:
    """Socket factories that bind on one loopback host, optionally tapped."""

    def __init__(self, network: FakeNetwork, host: str, *, tap: bool = False) -> None:
        self.network = network
        self.host = host
        self.tap = tap
        self.sent: list[list[bytes]] = []  # per socket, in the order they were opened

    def socket_factory(
        self, family: int, address: Any, receive_buffer: int = 0, send_buffer: int = 0
    ) -> StdlibSocket:
        sock = self.network.socket_factory(family, (self.host, 0), receive_buffer, send_buffer)
        if not self.tap:
            return sock
        sent: list[bytes] = []
        self.sent.append(sent)
        return cast("StdlibSocket", _Tap(cast("FakeSocket", sock), sent))


def first_flight(datagrams: list[bytes]) -> list[bytes]:
    """The datagrams that start with an INITIAL or a 0-RTT packet."""
    return [d for d in datagrams if d[0] & 0x80 and (d[0] & 0x30) >> 4 in (_INITIAL, _ZERO_RTT)]


def server_connections(server: quicframe.Server, host: str) -> list[Connection]:
    """The server's QUIC connections from ``host``, handshaking or not."""
    assert server._listener is not None
    endpoint = server._listener._endpoint
    return [c for c in endpoint._connections if c.remote_address[0] == host]


async def call_all(client: quicframe.Client, opcodes: list[int]) -> dict[int, Any]:
    """One call per opcode, all at once; the reply or the exception of each."""
    results: dict[int, Any] = {}

    async def call(opcode: int) -> None:
        try:
            results[opcode] = await client.call(opcode, None)
        except quicframe.errors.QuicframeError as exc:
            results[opcode] = exc

    async with trio.open_nursery() as nursery:
        for opcode in opcodes:
            nursery.start_soon(call, opcode)
    return results


async def test_replayed_0rtt_datagrams_run_nothing_and_others_are_served(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    runs = Runs()
    tickets = RecordingTicketStore()
    server_config = dataclasses.replace(
        server_config, session_tickets=cast("ServerTicketStore", tickets)
    )
    genuine_config = dataclasses.replace(
        client_config, session_tickets=SessionTicketStore(), reconnect=FAST
    )
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=30) as network,
            quicframe.open_server(
                make_router(runs),
                SERVER_HOST,
                0,
                server_config,
                socket_factory=network.socket_factory,
            ) as server,
            quicframe.connect(
                SERVER_HOST,
                server.port,
                client_config,
                socket_factory=Host(network, CLIENT_HOST).socket_factory,
            ) as bystander,
        ):
            assert await bystander.call(ECHO, "before") == "before"

            # -- the genuine client: a full handshake, then a resumed one with 0-RTT.
            genuine = Host(network, GENUINE_HOST, tap=True)
            async with quicframe.connect(
                SERVER_HOST,
                server.port,
                genuine_config,
                idempotent=[IDEMPOTENT, OTHER],  # OTHER wrongly, on the client side
                early_data=True,
                socket_factory=genuine.socket_factory,
            ) as client:
                assert await client.call(ECHO, "ticket") == "ticket"  # and a ticket arrives
                assert len(genuine_config.session_tickets or ()) >= 1
                for session in list(server._sessions):
                    if session.connection.remote_address[0] == GENUINE_HOST:
                        await session.send_goaway(5.0)
                await client._current.unusable.wait()
                # Both calls wait for the resumed connection and go out as 0-RTT.
                results = await call_all(client, [IDEMPOTENT, OTHER])
                assert client.connection.session_resumed
                assert client.connection.early_data_accepted
                assert client.statistics().early_calls == 2
                (resumed,) = [
                    c for c in server_connections(server, GENUINE_HOST) if c.session_resumed
                ]
                assert resumed.early_data_received > 0
            assert results[IDEMPOTENT] == "idempotent"
            error = results[OTHER]
            assert isinstance(error, Unavailable)
            assert error.details == {"early_data": True}
            assert runs == Runs(idempotent=1, other=0)
            assert tickets.found == [True]  # the resumption took its ticket
            # The genuine connection is over and forgotten by the server.
            await resumed._terminated.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert server_connections(server, GENUINE_HOST) == []

            # -- the attacker re-sends the resumed connection's first flight.
            _first_socket, resumed_socket = genuine.sent
            replay = first_flight(resumed_socket)
            assert replay
            assert any((d[0] & 0x30) >> 4 == _ZERO_RTT for d in replay)
            attacker = network.socket()
            attacker.bind((ATTACKER_HOST, 0))
            with attacker:
                for datagram in replay:
                    attacker.sendto(datagram, (SERVER_HOST, server.port))
                await trio.testing.wait_all_tasks_blocked()
                assert attacker.queued > 0  # the server answered (with a full handshake)
                (replayed,) = server_connections(server, ATTACKER_HOST)
                assert await bystander.call(ECHO, "during") == "during"
                # No handler ran for the replay: the ticket was refused, so no
                # resumption, no 0-RTT keys and no early data.
                assert runs == Runs(idempotent=1, other=0)
                assert tickets.found == [True, False]
                assert not replayed.session_resumed
                assert not replayed.handshake_complete
                assert replayed.early_data_received == 0
                # The attacker cannot finish the handshake: the server gives up on it.
                await replayed._terminated.wait()
            assert server_connections(server, ATTACKER_HOST) == []
            assert await bystander.call(ECHO, "after") == "after"
            assert runs == Runs(idempotent=1, other=0)
            assert bystander.connection.closed is None
