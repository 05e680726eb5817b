"""The QUIC cores: selecting one, what each refuses, and a client on one core
talking to a server on the other (both ways).

The rest of the transport and session suites runs on every installed core through
the ``core`` fixture; the tests here mix cores on purpose.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, CoreNotInstalled, ServerConfig, UnsupportedByCore
from quicframe.errors import ConnectionClosed, IdleTimeout
from quicframe.transport import Connection, SessionTicketStore, Stream, connect

from .conftest import CertFiles, Handler, ServerHandle, echo_handler, start_server

MIXED = [("aioquic", "qh3"), ("qh3", "aioquic")]  # (client core, server core)


def configs(
    cert_files: CertFiles, client_core: str, server_core: str
) -> tuple[ClientConfig, ServerConfig]:
    client = ClientConfig(
        core=client_core,
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
    )
    server = ServerConfig(
        core=server_core,
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        idle_timeout=10.0,
    )
    return client, server


@contextlib.asynccontextmanager
async def served(
    client_config: ClientConfig, server_config: ServerConfig, handler: Handler | None = None
) -> AsyncIterator[tuple[ServerHandle, Connection]]:
    """A server (see ``start_server``) and a client connected to it; the server
    stops once the client has closed."""
    async with trio.open_nursery() as nursery:
        handle = await start_server(nursery, server_config, handler)
        async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
            yield handle, conn
        handle.cancel_scope.cancel()


async def read_to_fin(stream: Stream) -> bytes:
    """Read ``stream`` up to the peer's FIN."""
    received = bytearray()
    while chunk := await stream.receive_some():
        received += chunk
    return bytes(received)


# -- selection and refusals ------------------------------------------------------------


def test_default_core_is_aioquic() -> None:
    assert ClientConfig().core == "aioquic"
    assert ServerConfig(certificate="x").core == "aioquic"
    assert ClientConfig().congestion_control is None


def test_unknown_core_is_refused() -> None:
    with pytest.raises(ValueError, match="core must be one of"):
        ClientConfig(core="quiche")


def test_missing_qh3_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_qh3(name: str, *args: object) -> object:
        return None if name == "qh3" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_qh3)
    with pytest.raises(CoreNotInstalled, match=r"quicframe\[qh3\]") as info:
        ClientConfig(core="qh3")
    assert isinstance(info.value, ImportError)


@pytest.mark.parametrize("name", ["reno", "cubic", "bbr"])
def test_qh3_refuses_congestion_control(name: str) -> None:
    with pytest.raises(UnsupportedByCore, match="congestion_control") as info:
        ClientConfig(core="qh3", congestion_control=name)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedByCore):
        ServerConfig(core="qh3", certificate="x", congestion_control=name)


async def test_qh3_checks_settings_changed_after_construction(
    cert_files: CertFiles,
) -> None:
    client, _ = configs(cert_files, "qh3", "aioquic")
    client.congestion_control = "cubic"
    with trio.fail_after(5), pytest.raises(UnsupportedByCore):
        async with connect("127.0.0.1", 9, client):
            pass  # pragma: no cover - refused before any packet


def test_importing_quicframe_does_not_load_qh3() -> None:
    code = (
        "import sys, quicframe\n"
        "quicframe.ClientConfig(core='qh3'); quicframe.ServerConfig(certificate='x', core='qh3')\n"
        "assert not {'qh3', 'trio', 'aioquic'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a client on one core, a server on the other -------------------------------------------


@pytest.mark.parametrize(("client_core", "server_core"), MIXED)
async def test_cross_core_streams_datagrams_and_close(
    cert_files: CertFiles, client_core: str, server_core: str
) -> None:
    client_config, server_config = configs(cert_files, client_core, server_core)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, echo_handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as conn:
                assert conn.alpn_protocol == "quicframe/1"
                # Many streams at once, some big: flow control and MAX_STREAMS both ways.
                results: dict[int, bytes] = {}

                async def one(i: int) -> None:
                    stream = await conn.open_stream()
                    payload = bytes([i % 256]) * (300_000 if i % 50 == 0 else 100)
                    await stream.send_all(payload)
                    await stream.send_eof()
                    results[i] = await read_to_fin(stream)
                    await stream.aclose()

                async with trio.open_nursery() as streams:
                    for i in range(250):
                        streams.start_soon(one, i)
                assert all(
                    results[i] == bytes([i % 256]) * (300_000 if i % 50 == 0 else 100)
                    for i in range(250)
                )
                # Datagrams both ways.
                server_conn = handle.connections[0]
                assert 1000 < conn.max_datagram_payload() < 1200
                await conn.send_datagram(b"ping")
                assert await server_conn.receive_datagram() == b"ping"
                await server_conn.send_datagram(b"pong")
                assert await conn.receive_datagram() == b"pong"
                assert await conn.ping() > 0
                stats = conn.statistics()
                assert stats.packets_sent > 0
                assert stats.smoothed_rtt > 0
            # The client closed with NO_ERROR: the server sees the peer's close.
            with pytest.raises(ConnectionClosed) as info:
                await server_conn.accept_stream()
            assert info.value.by_peer
            handle.cancel_scope.cancel()


@pytest.mark.parametrize(("client_core", "server_core"), MIXED)
async def test_cross_core_resumption_and_early_data(
    cert_files: CertFiles, client_core: str, server_core: str
) -> None:
    client_config, server_config = configs(cert_files, client_core, server_core)
    client_config.session_tickets = SessionTicketStore()
    early_bytes: list[int] = []

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        request = await read_to_fin(stream)
        early_bytes.append(connection.early_data_received)
        await stream.send_all(request)
        await stream.send_eof()
        await connection.accept_stream()  # until the client closes

    async def request(body: bytes) -> tuple[bool, bool]:
        async with connect(
            "127.0.0.1", handle.listener.port, client_config, early_data=True
        ) as conn:
            stream = await conn.open_stream()
            await stream.send_all(body)
            await stream.send_eof()
            assert await read_to_fin(stream) == body
            await conn.ping()  # collects the ticket that follows the handshake
            return conn.session_resumed, conn.early_data_accepted

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            assert await request(b"first") == (False, False)
            assert await request(b"second") == (True, True)
            assert early_bytes == [0, len(b"second")]
            handle.cancel_scope.cancel()


@pytest.mark.parametrize(("client_core", "server_core"), MIXED)
async def test_cross_core_migration(
    cert_files: CertFiles, client_core: str, server_core: str
) -> None:
    client_config, server_config = configs(cert_files, client_core, server_core)
    with trio.fail_after(15):
        async with served(client_config, server_config, echo_handler) as (handle, conn):
            stream = await conn.open_stream()
            await stream.send_all(b"before")
            assert await stream.receive_some() == b"before"
            old_port = conn.local_address[1]
            await conn.migrate()
            assert conn.local_address[1] != old_port
            await stream.send_all(b"after")
            assert await stream.receive_some() == b"after"
            assert handle.connections[0].remote_address[1] == conn.local_address[1]


@pytest.mark.parametrize(("client_core", "server_core"), MIXED)
async def test_cross_core_idle_timeout(
    autojump_clock: trio.testing.MockClock,
    cert_files: CertFiles,
    client_core: str,
    server_core: str,
) -> None:
    client_config, server_config = configs(cert_files, client_core, server_core)
    client_config.idle_timeout = server_config.idle_timeout = 1.0
    with trio.fail_after(30):
        async with served(client_config, server_config) as (_, conn):
            with pytest.raises(IdleTimeout):
                await conn.accept_stream()


async def test_qh3_server_loads_a_combined_pem_and_cryptography_objects(
    cert_files: CertFiles, tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    combined = tmp_path / "both.pem"
    combined.write_bytes(cert_files.certificate.read_bytes() + cert_files.private_key.read_bytes())
    loaded = ServerConfig(
        core="qh3",
        certificate=x509.load_pem_x509_certificate(cert_files.certificate.read_bytes()),
        private_key=serialization.load_pem_private_key(cert_files.private_key.read_bytes(), None),
    )
    for server_config in (ServerConfig(core="qh3", certificate=combined), loaded):
        client_config, _ = configs(cert_files, "qh3", "qh3")
        with trio.fail_after(10):
            async with served(client_config, server_config, echo_handler) as (_, conn):
                assert conn.handshake_complete


async def test_rejected_early_data_keeps_a_fin_sent_on_its_own(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # 0-RTT data the server refuses (a replayed ticket) is resent after the
    # handshake, FIN included, even when the FIN left in a flush of its own.
    # (qh3 2.1 by itself loses such a FIN; the qh3 core works around it.)
    store = SessionTicketStore()
    client_config.session_tickets = store

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        request = await read_to_fin(stream)
        await stream.send_all(b"re:" + request)
        await stream.send_eof()
        await connection.accept_stream()  # until the client closes

    async def request(body: bytes) -> Connection:
        async with connect(
            "127.0.0.1", handle.listener.port, client_config, early_data=True
        ) as conn:
            stream = await conn.open_stream()
            await stream.send_all(body)
            await trio.testing.wait_all_tasks_blocked()  # the data is flushed alone
            await stream.send_eof()
            assert await read_to_fin(stream) == b"re:" + body
            await conn.ping()  # collects the server's ticket
            return conn

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            await request(b"first")
            ticket = store.pop("localhost")
            assert ticket is not None
            store.add(ticket)
            assert (await request(b"second")).early_data_accepted
            store.add(copy.copy(ticket))  # replayed: the server refuses its 0-RTT
            replayed = await request(b"third")
            assert not replayed.session_resumed
            handle.cancel_scope.cancel()
