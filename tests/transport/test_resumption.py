"""Session resumption and 0-RTT: tickets stored, early data accepted and observed by
the server, replays refused.

``early_data_accepted`` alone proves little: a resuming client offers 0-RTT
whenever its ticket allows it, and the server accepts the offer even if no early
byte follows.  So the server side also reports ``early_data_received``, the stream
bytes that arrived before its handshake completed, and these tests check it is
the request itself with ``early_data=True`` and nothing without.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import FakeNetwork, LinkPolicy
from quicframe.transport import (
    Connection,
    Listener,
    SessionTicketStore,
    SocketFactory,
    connect,
    serve,
)

from .conftest import start_server


class Seen(NamedTuple):
    """What the server saw on one connection."""

    resumed: bool
    accepted: bool
    early_bytes: int
    request: bytes


def recording_handler(seen: list[Seen]) -> Callable[[Connection], Awaitable[None]]:
    """A server handler answering one request per connection and recording what it saw."""

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        request = bytearray()
        while chunk := await stream.receive_some():
            request += chunk
        early = connection.early_data_received
        assert connection.statistics().early_data_received == early
        seen.append(
            Seen(connection.session_resumed, connection.early_data_accepted, early, bytes(request))
        )
        await stream.send_all(b"re:" + request)
        await stream.send_eof()
        await connection.accept_stream()  # until the client closes

    return handler


async def request(
    port: int,
    body: bytes,
    config: ClientConfig,
    *,
    early_data: bool,
    socket_factory: SocketFactory | None = None,
) -> Connection:
    """One request on a fresh connection; returns the (closed) client connection."""
    async with connect(
        "127.0.0.1",
        port,
        config,
        early_data=early_data,
        # On the fake network the client gets a host of its own.
        local_host="127.0.0.2" if socket_factory is not None else None,
        socket_factory=socket_factory,
    ) as conn:
        stream = await conn.open_stream()
        await stream.send_all(body)
        await stream.send_eof()
        reply = bytearray()
        while chunk := await stream.receive_some():
            reply += chunk
        assert reply == b"re:" + body
        # The server's ticket follows the handshake; a round trip collects it.
        await conn.ping()
        return conn


async def test_resumption_early_data_and_replay(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    store = SessionTicketStore()
    client_config.session_tickets = store
    seen: list[Seen] = []

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, recording_handler(seen))
            port = handle.listener.port

            first = await request(port, b"one", client_config, early_data=True)  # no ticket yet
            assert not first.session_resumed
            assert first.early_data_received == 0  # client side: always 0
            assert len(store) >= 1
            ticket = store.pop("localhost")
            assert ticket is not None
            store.add(ticket)

            second = await request(port, b"two", client_config, early_data=True)
            assert second.session_resumed
            assert second.early_data_accepted

            # Replaying the ticket the second connection used: the server refuses it
            # (single use) and a full handshake follows, without 0-RTT.
            store.add(copy.copy(ticket))
            third = await request(port, b"three", client_config, early_data=True)
            assert not third.session_resumed
            assert not third.early_data_accepted

            # A resumed session without early_data=True: the client still offers
            # 0-RTT (and the server accepts the offer), but waits for the handshake
            # before writing, so no byte arrives early.
            fourth = await request(port, b"four", client_config, early_data=False)
            assert fourth.session_resumed

            assert seen == [
                (False, False, 0, b"one"),
                (True, True, len(b"two"), b"two"),
                (False, False, 0, b"three"),
                (True, True, 0, b"four"),
            ]
            handle.cancel_scope.cancel()


async def test_early_data_on_the_fake_network(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # The same on the in-memory network, with latency, under virtual time.
    client_config.session_tickets = SessionTicketStore()
    seen: list[Seen] = []
    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=3, policy=LinkPolicy(delay=0.05)) as net,
            trio.open_nursery() as nursery,
        ):
            listener: Listener = await nursery.start(
                functools.partial(
                    serve,
                    "127.0.0.1",
                    0,
                    server_config,
                    recording_handler(seen),
                    socket_factory=net.socket_factory,
                )
            )
            port = listener.port
            factory = net.socket_factory
            await request(port, b"a", client_config, early_data=True, socket_factory=factory)

            early = await request(
                port, b"b" * 500, client_config, early_data=True, socket_factory=factory
            )
            assert early.session_resumed
            assert early.early_data_accepted

            late = await request(
                port, b"c", client_config, early_data=False, socket_factory=factory
            )
            assert late.session_resumed
            nursery.cancel_scope.cancel()
    assert seen == [
        (False, False, 0, b"a"),
        (True, True, 500, b"b" * 500),
        (True, True, 0, b"c"),
    ]


async def test_early_request_is_answered_within_one_round_trip(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    # 50 ms each way on the fake network, in virtual time: one round trip is 0.1 s.
    # A server that waited for the client's Finished before handing the
    # connection to its handler would answer a 0-RTT request one round trip
    # later than one that serves it at once (as 0.5-RTT data).
    client_config.session_tickets = SessionTicketStore()
    during_handshake: list[bool] = []

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        request = bytearray()
        while chunk := await stream.receive_some():
            request += chunk
        during_handshake.append(not connection.handshake_complete)
        await stream.send_all(b"re:" + request)
        await stream.send_eof()
        await connection.accept_stream()  # until the client closes

    async def timed_request(port: int, factory: SocketFactory, *, early_data: bool) -> float:
        start = trio.current_time()
        async with connect(
            "127.0.0.1",
            port,
            client_config,
            early_data=early_data,
            local_host="127.0.0.2",
            socket_factory=factory,
        ) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"quote?")
            await stream.send_eof()
            reply = bytearray()
            while chunk := await stream.receive_some():
                reply += chunk
            elapsed = trio.current_time() - start
            assert reply == b"re:quote?"
            await conn.ping()  # collect the server's ticket for the next connection
        return elapsed

    with trio.fail_after(60):
        async with (
            FakeNetwork(seed=5, policy=LinkPolicy(delay=0.05)) as net,
            trio.open_nursery() as nursery,
        ):
            listener: Listener = await nursery.start(
                functools.partial(
                    serve, "127.0.0.1", 0, server_config, handler, socket_factory=net.socket_factory
                )
            )
            factory = net.socket_factory
            full = await timed_request(listener.port, factory, early_data=False)
            early = await timed_request(listener.port, factory, early_data=True)
            nursery.cancel_scope.cancel()
    assert during_handshake == [False, True]
    assert 0.199 < full < 0.25  # the handshake's round trip, then the request's
    assert 0.099 < early < 0.15  # the request rode with the handshake
