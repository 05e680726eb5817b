"""Fixtures shared by every test package: the QUIC core the transport runs on.

The transport and session suites take their configs from fixtures that depend on
``core``, so each of their tests runs once per core, ``aioquic`` and ``qh3``
(the ``test`` extra installs both; without qh3 its half fails, it is not
skipped).  ``pytest --core aioquic`` (or ``qh3``) runs one core only.  Tests of a feature
only the aioquic core has are marked ``@pytest.mark.aioquic_only``: they run on
aioquic only (and are deselected by ``--core qh3``), never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import write_self_signed_certificate

# Both cores, always: the test extra installs qh3, and a suite that quietly ran on
# one core when qh3 is missing would prove less than it says (it fails instead).
CORES = ["aioquic", "qh3"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--core",
        action="append",
        choices=["aioquic", "qh3"],
        help="run the transport and session tests on this QUIC core only (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "aioquic_only(reason): the test needs a feature only the aioquic core has"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "core" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("core") or CORES
        if metafunc.definition.get_closest_marker("aioquic_only") is not None:
            # Not generated for the other cores at all (rather than skipped there):
            # the feature does not exist on them (docs/transport.md, "Cores").
            chosen = [name for name in chosen if name == "aioquic"]
            if not chosen:
                return  # deselected in pytest_collection_modifyitems
        metafunc.parametrize("core", chosen, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("core")
    if not chosen or "aioquic" in chosen:
        return
    keep = [item for item in items if item.get_closest_marker("aioquic_only") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@dataclass(frozen=True)
class CertFiles:
    certificate: Path
    private_key: Path


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed EC certificate for "localhost", 127.0.0.1 and ::1."""
    return CertFiles(*write_self_signed_certificate(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def server_config(cert_files: CertFiles, core: str) -> ServerConfig:
    """The server side of the loopback tests, on the core under test."""
    return ServerConfig(
        core=core,
        certificate=cert_files.certificate,
        private_key=cert_files.private_key,
        idle_timeout=10.0,
    )


@pytest.fixture
def client_config(cert_files: CertFiles, core: str) -> ClientConfig:
    """A client that trusts ``cert_files``, on the core under test."""
    return ClientConfig(
        core=core,
        ca_file=cert_files.certificate,
        server_name="localhost",
        idle_timeout=10.0,
        handshake_timeout=5.0,
    )
