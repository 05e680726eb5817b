"""ClientConfig / ServerConfig: defaults, validation, and the aioquic translation."""

from __future__ import annotations

import io
import ssl
import subprocess
import sys

import pytest

from quicframe import ClientConfig, ServerConfig

from .conftest import CertFiles


def test_importing_quicframe_loads_neither_trio_nor_aioquic() -> None:
    code = (
        "import sys, quicframe, quicframe.wire\n"
        "quicframe.ClientConfig(); quicframe.ServerConfig(certificate='x')\n"
        "assert 'trio' not in sys.modules and 'aioquic' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_client_defaults_verify_certificates() -> None:
    config = ClientConfig()
    assert config.alpn_protocols == ["quicframe/1"]
    assert not config.insecure
    quic = config.to_quic_configuration(server_name="example.com")
    assert quic.is_client
    assert quic.verify_mode == ssl.CERT_REQUIRED
    assert quic.server_name == "example.com"
    assert quic.alpn_protocols == ["quicframe/1"]
    assert quic.max_datagram_frame_size == 65536


def test_client_insecure_and_options(cert_files: CertFiles) -> None:
    keylog = io.StringIO()
    config = ClientConfig(
        insecure=True,
        alpn_protocols=["a", "b"],
        congestion_control="cubic",
        idle_timeout=5.0,
        stream_receive_window=128 * 1024,
        secrets_log_file=keylog,
        server_name="override",
    )
    quic = config.to_quic_configuration(server_name="ignored")
    assert quic.verify_mode == ssl.CERT_NONE
    assert quic.alpn_protocols == ["a", "b"]
    assert quic.congestion_control_algorithm == "cubic"
    assert quic.idle_timeout == 5.0
    assert quic.max_stream_data == 128 * 1024
    assert quic.secrets_log_file is keylog
    assert quic.server_name == "override"
    with_ca = ClientConfig(ca_file=cert_files.certificate).to_quic_configuration()
    assert with_ca.cafile == str(cert_files.certificate)


def test_server_loads_certificate_from_paths_and_memory(cert_files: CertFiles) -> None:
    from_paths = ServerConfig(
        certificate=cert_files.certificate, private_key=cert_files.private_key
    ).to_quic_configuration()
    assert from_paths.certificate is not None
    assert from_paths.private_key is not None
    assert not from_paths.is_client
    from_bytes = ServerConfig(
        certificate=cert_files.certificate.read_bytes(),
        private_key=cert_files.private_key.read_bytes(),
    ).to_quic_configuration()
    assert from_bytes.certificate == from_paths.certificate
    from_objects = ServerConfig(
        certificate=from_paths.certificate, private_key=from_paths.private_key
    ).to_quic_configuration()
    assert from_objects.certificate == from_paths.certificate


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpn_protocols": []},
        {"idle_timeout": 0},
        {"keepalive_interval": 0},
        {"stream_high_water_mark": 0},
        {"stream_receive_window": 10},
        {"datagram_queue_size": 0},
        {"max_datagram_size": 1000},
        {"handshake_timeout": 0},
    ],
)
def test_client_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        ClientConfig(**kwargs)  # type: ignore[arg-type]


def test_server_config_needs_certificate() -> None:
    with pytest.raises(ValueError, match="certificate"):
        ServerConfig()
    with pytest.raises(ValueError, match="max_connections"):
        ServerConfig(certificate="x", max_connections=0)
