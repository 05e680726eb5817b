"""Fixtures for the end-to-end pub/sub tests: a certificate, configs, a server and clients.

The end-to-end tests run a real session server and clients over loopback UDP, or
over a ``FakeNetwork`` under ``autojump_clock`` where time matters; every test has a
``trio.fail_after`` deadline and never sleeps to wait for something.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

import quicframe
from quicframe import ClientConfig, ServerConfig
from quicframe.testing import write_self_signed_certificate


@dataclass(frozen=True)
class Certificate:
    path: Path
    key_path: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate(*write_self_signed_certificate(tmp_path_factory.mktemp("pubsub-certs")))


@pytest.fixture
def server_config(certificate: Certificate, core: str) -> ServerConfig:
    return ServerConfig(
        core=core,
        certificate=certificate.path,
        private_key=certificate.key_path,
        idle_timeout=10.0,
    )


@pytest.fixture
def client_config(certificate: Certificate, core: str) -> ClientConfig:
    return ClientConfig(
        core=core,
        ca_file=certificate.path,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
    )


@contextlib.asynccontextmanager
async def serving(
    router: quicframe.Router, config: ServerConfig, **options: Any
) -> AsyncIterator[quicframe.Server]:
    """A session server on 127.0.0.1, stopped at once when the block ends."""
    async with trio.open_nursery() as nursery:
        server: quicframe.Server = await nursery.start(_serve, router, config, options)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def _serve(
    router: quicframe.Router,
    config: ServerConfig,
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[quicframe.Server],
) -> None:
    await quicframe.serve(router, "127.0.0.1", 0, config, task_status=task_status, **options)
