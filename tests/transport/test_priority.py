"""Stream urgency: more urgent streams' data is sent first."""

from __future__ import annotations

import pytest
import trio

from quicframe import ClientConfig, ServerConfig
from quicframe.transport._core import AioquicCore, core_events

from .test_streams import connection_pair

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 4433)


class Clock:
    """Time for the cores: a millisecond further at every reading."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


now = Clock()


def core_pair(
    client_config: ClientConfig, server_config: ServerConfig
) -> tuple[AioquicCore, AioquicCore]:
    """Two cores wired in memory, past the handshake."""
    client = AioquicCore.client(client_config.to_quic_configuration(server_name="localhost"))
    client.quic.connect(SERVER, now())
    first = client.quic.datagrams_to_send(now())
    server = AioquicCore.server(
        server_config.to_quic_configuration(),
        client._quic_connection.original_destination_connection_id,
    )
    for data, _ in first:
        server.quic.receive_datagram(data, CLIENT, now())
    for _ in range(10):
        moved = False
        for source, target, address in ((server, client, SERVER), (client, server, CLIENT)):
            for data, _ in source.quic.datagrams_to_send(now()):
                target.quic.receive_datagram(data, address, now())
                moved = True
        if not moved:
            break
    for core in (client, server):
        while core.quic.next_event() is not None:
            pass
    assert client._quic_connection._handshake_complete
    return client, server


def arrival_order(client: AioquicCore, server: AioquicCore, urgency: dict[int, int]) -> list[int]:
    """Stream IDs of the data the server receives, in order."""
    order = []
    for _ in range(20):  # as the driver does while the pacer holds packets back
        datagrams = client.datagrams_by_urgency(now(), urgency, 3)
        if datagrams is None:
            datagrams = client.quic.datagrams_to_send(now())
        for data, _ in datagrams:
            server.quic.receive_datagram(data, CLIENT, now())
            while (event := server.quic.next_event()) is not None:
                if isinstance(event, core_events.StreamDataReceived) and event.data:
                    order.append(event.stream_id)
    return order


@pytest.mark.parametrize("prioritised", [True, False])
def test_urgent_stream_data_leaves_first(
    client_config: ClientConfig, server_config: ServerConfig, prioritised: bool
) -> None:
    client, server = core_pair(client_config, server_config)
    bulk = client.quic.get_next_available_stream_id()
    client.quic.send_stream_data(bulk, b"b" * 6000)
    urgent = client.quic.get_next_available_stream_id()
    client.quic.send_stream_data(urgent, b"u" * 3000, True)
    order = arrival_order(client, server, {urgent: 0} if prioritised else {})
    assert sorted(set(order)) == sorted({bulk, urgent})
    first_bulk = order.index(bulk)
    if prioritised:
        # Every piece of the urgent stream arrives before any of the bulk one.
        assert order[:first_bulk] == [urgent] * first_bulk
        assert urgent not in order[first_bulk:]
    else:
        # aioquic alone serves the streams round-robin: the bulk one, first in
        # its queue, goes first.
        assert first_bulk == 0


def test_urgency_is_kept_only_while_the_core_holds_the_stream(
    client_config: ClientConfig, server_config: ServerConfig
) -> None:
    client, _server = core_pair(client_config, server_config)
    urgency = {999: 0}  # a stream the core does not know
    assert client.datagrams_by_urgency(now(), urgency, 3) is None
    assert urgency == {}


async def test_stream_urgency_api(server_config: ServerConfig, client_config: ClientConfig) -> None:
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            bulk = await client.open_stream()
            urgent = await client.open_stream(urgency=0)
            assert (bulk.urgency, urgent.urgency) == (3, 0)
            with pytest.raises(ValueError, match="between 0 and 7"):
                urgent.urgency = 8
            bulk.urgency = 7
            await bulk.send_all(b"x" * 50_000)
            await urgent.send_all(b"now")
            await bulk.send_eof()
            await urgent.send_eof()
            received: dict[int, int] = {}
            for _ in range(2):
                remote = await server.accept_stream()
                total = 0
                while chunk := await remote.receive_some():
                    total += len(chunk)
                received[remote.stream_id] = total
            assert received == {bulk.stream_id: 50_000, urgent.stream_id: 3}
