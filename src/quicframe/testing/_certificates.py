"""Throwaway certificates for tests, examples and development servers."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed_certificate(
    directory: Path | str, hostname: str = "localhost", *, days: int = 30
) -> tuple[Path, Path]:
    """Write a self-signed EC P-256 certificate and its key as PEM files.

    The certificate names ``hostname``, 127.0.0.1 and ::1, and is its own trust
    anchor, so a client on either core can verify it with
    ``ClientConfig(ca_file=certificate)``.  For tests and
    development only.

    Returns:
        ``(certificate_path, private_key_path)``, ``cert.pem`` and ``key.pem`` in
        ``directory``.
    """
    directory = Path(directory)
    certificate_pem, key_pem = self_signed_certificate(hostname, days=days)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def self_signed_certificate(hostname: str = "localhost", *, days: int = 30) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key as PEM bytes, never written to disk.

    The same certificate as :func:`write_self_signed_certificate` makes: pass the
    certificate to ``ServerConfig(certificate=..., private_key=...)`` and to
    ``ClientConfig(ca_data=...)``.
    """
    if days < 2:
        raise ValueError("days must be at least 2 (the certificate starts a day back)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        # No BasicConstraints: marked as a CA, the certificate would be refused as a
        # server's own by strict verifiers (qh3's: "CA used as end entity"); without
        # it, both cores' verifiers take it as its own trust anchor.
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem
