"""When a pending acknowledgement rides with stream data (aioquic core, sans-IO).

Two cores are wired in memory with a hand-driven clock, so the test sees exactly
which packets carry an ACK frame: no sockets, no event loop.
"""

from __future__ import annotations

from pathlib import Path

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import write_self_signed_certificate
from quicframe.transport._core import AioquicCore

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 40001)


def _pair(tmp_path: Path) -> tuple[AioquicCore, AioquicCore, float]:
    certificate, key = write_self_signed_certificate(tmp_path)
    client_config = ClientConfig(ca_file=certificate, server_name="localhost")
    server_config = ServerConfig(certificate=certificate, private_key=key)
    client = AioquicCore.client(
        AioquicCore.client_configuration(client_config, server_name="localhost", secrets_log=None)
    )
    t = 1000.0
    client.quic.connect(SERVER, t)
    first = client.quic.datagrams_to_send(t)
    server = AioquicCore.server(
        AioquicCore.server_configuration(server_config, secrets_log=None),
        original_destination_cid=client._quic_connection.original_destination_connection_id,
    )
    pending = [(server, data) for data, _ in first]
    # Exchange until both sides are quiet, then let every delayed ACK go.
    for _ in range(20):
        t += 0.0001
        for target, data in pending:
            target.quic.receive_datagram(data, CLIENT if target is server else SERVER, t)
        pending = [(server, d) for d, _ in client.quic.datagrams_to_send(t)]
        pending += [(client, d) for d, _ in server.quic.datagrams_to_send(t)]
        if not pending:
            t += 0.01
            for core in (client, server):
                core.quic.handle_timer(t)
            pending = [(server, d) for d, _ in client.quic.datagrams_to_send(t)]
            pending += [(client, d) for d, _ in server.quic.datagrams_to_send(t)]
            if not pending:
                break
    assert client._quic_connection._handshake_complete
    while client.quic.next_event() is not None or server.quic.next_event() is not None:
        pass
    return client, server, t


def _exchange(
    client: AioquicCore, server: AioquicCore, t: float, reply_after: float, streams: int = 1
) -> bool:
    """``streams`` requests, their replies in one flush; True if it acknowledged them."""
    stream_ids = []
    for _ in range(streams):
        stream_id = client.quic.get_next_available_stream_id()
        client.quic.send_stream_data(stream_id, b"E" + bytes(64), True)
        stream_ids.append(stream_id)
    client.acknowledge_with_next_packet(t, streams)
    for data, _ in client.quic.datagrams_to_send(t):
        server.quic.receive_datagram(data, CLIENT, t)
    while server.quic.next_event() is not None:
        pass
    t += reply_after
    for stream_id in stream_ids:
        server.quic.send_stream_data(stream_id, bytes(64), True)
    # What the driver does before building: one flush, len(stream_ids) streams.
    server.acknowledge_with_next_packet(t, streams)
    replies = server.quic.datagrams_to_send(t)
    assert len(replies) == 1
    in_flight = client.statistics().bytes_in_flight
    for data, _ in replies:
        client.quic.receive_datagram(data, SERVER, t)
    while client.quic.next_event() is not None:
        pass
    return client.statistics().bytes_in_flight < in_flight


def test_a_young_ack_waits_and_an_old_one_rides_with_the_reply(tmp_path: Path) -> None:
    client, server, t = _pair(tmp_path)
    # A reply built 100 us after its request (under half of aioquic's 1 ms ACK
    # delay) carries no ACK: the client has nothing to process on the critical
    # path, as with aioquic's own asyncio layer.
    assert not _exchange(client, server, t, reply_after=0.0001)
    # The ACK still owed is older than half the delay 0.6 ms later: the next
    # reply takes it along (no ACK-only packet once the delay has passed).
    assert _exchange(client, server, t + 0.0002, reply_after=0.0006)
    # Once the delay has passed, aioquic writes the ACK by itself.
    assert _exchange(client, server, t + 0.01, reply_after=0.0011)
    # Replies of several streams in one flush take even a young ACK along.
    assert _exchange(client, server, t + 0.02, reply_after=0.0001, streams=3)
    assert not _exchange(client, server, t + 0.03, reply_after=0.0001)
