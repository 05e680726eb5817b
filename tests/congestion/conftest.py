"""Fixtures for the BBR tests over real loopback UDP (pattern of tests/transport).

Rules: loopback only, port 0, a deadline on trio's clock for every network test.
Both configs select ``congestion_control="bbr"``.
"""

from __future__ import annotations

import pytest

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import write_self_signed_certificate
from tests.transport.conftest import CertFiles, ServerHandle, start_server

__all__ = ["CertFiles", "ServerHandle", "start_server"]


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed EC certificate for "localhost", 127.0.0.1 and ::1."""
    return CertFiles(*write_self_signed_certificate(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def server_config(cert_files: CertFiles) -> ServerConfig:
    return ServerConfig(
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        idle_timeout=10.0,
        congestion_control="bbr",
    )


@pytest.fixture
def client_config(cert_files: CertFiles) -> ClientConfig:
    return ClientConfig(
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
        congestion_control="bbr",
    )
