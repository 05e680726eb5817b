"""Client and server configuration shared by the transport and the session layers.

The dataclasses here are plain values: building one imports neither trio nor aioquic,
so ``import quicframe`` stays light.  :meth:`ClientConfig.to_quic_configuration` and
:meth:`ServerConfig.to_quic_configuration` import aioquic lazily and translate the
settings into an aioquic ``QuicConfiguration``; the transport calls them once per
connection (client) or once per listener (server) when ``core="aioquic"`` (the
default).  With ``core="qh3"`` the transport's qh3 core translates the same fields
into qh3's configuration instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO

from ._policy import ReconnectPolicy  # a plain value: imports neither trio nor aioquic
from .wire._errors import QuicframeError  # sans-IO: light as well

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from .transport._tickets import ServerTicketStore, SessionTicketStore

__all__ = [
    "CORES",
    "DEFAULT_ALPN",
    "ClientConfig",
    "CoreNotInstalled",
    "ServerConfig",
    "UnsupportedByCore",
]

CORES: Final = ("aioquic", "qh3")
"""The QUIC cores ``ClientConfig.core`` / ``ServerConfig.core`` can name."""


class UnsupportedByCore(QuicframeError, ValueError):
    """The configuration asks for something the selected QUIC core cannot do.

    For example ``congestion_control`` with ``core="qh3"``: qh3 runs its own
    controller and has no registry of controllers to choose from.
    """


class CoreNotInstalled(QuicframeError, ImportError):
    """The selected QUIC core is not installed (``pip install 'quicframe[qh3]'``)."""


DEFAULT_ALPN: Final = "quicframe/1"

# Path-like or in-memory PEM: what the certificate options accept besides the
# already-parsed ``cryptography`` objects.
PathOrPem = str | os.PathLike[str] | bytes

_MIB: Final = 1024 * 1024
_MAX_STREAMS: Final = 1 << 60  # RFC 9000 section 4.6: the largest stream count


def _default_alpn() -> list[str]:
    return [DEFAULT_ALPN]


@dataclass(kw_only=True)
class _CommonConfig:
    """Settings both sides share.  See the subclasses for the full description."""

    alpn_protocols: list[str] = field(default_factory=_default_alpn)
    idle_timeout: float = 30.0
    keepalive_interval: float | None = None
    max_datagram_frame_size: int | None = 65536
    max_datagram_size: int = 1200
    core: str = "aioquic"
    congestion_control: str | None = None
    qlog_dir: str | os.PathLike[str] | None = None
    secrets_log_file: str | os.PathLike[str] | TextIO | None = None
    stream_high_water_mark: int = 256 * 1024
    stream_receive_window: int = 1 * _MIB
    connection_receive_window: int = 4 * _MIB
    datagram_queue_size: int = 1024
    socket_receive_buffer: int = 4 * _MIB
    socket_send_buffer: int = 4 * _MIB
    # Streams of each kind the peer may have open at once (our MAX_STREAMS).
    max_bidi_streams: int = 128
    max_uni_streams: int = 128

    def __post_init__(self) -> None:
        for name in ("max_bidi_streams", "max_uni_streams"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= _MAX_STREAMS:
                raise ValueError(f"{name} must be an integer from 1 to 2**60")
        if not self.alpn_protocols:
            raise ValueError("alpn_protocols must name at least one protocol")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive or None")
        if self.stream_high_water_mark < 1:
            raise ValueError("stream_high_water_mark must be at least 1")
        if self.stream_receive_window < 1024:
            raise ValueError("stream_receive_window must be at least 1024 bytes")
        if self.datagram_queue_size < 1:
            raise ValueError("datagram_queue_size must be at least 1")
        if self.max_datagram_size < 1200:
            raise ValueError("max_datagram_size must be at least 1200 (RFC 9000)")
        self.check_core()

    def check_core(self) -> None:
        """Check that :attr:`core` exists, is installed and can do what is asked.

        Runs at construction and again when the transport uses the config (the
        fields can be changed in between).

        Raises:
            ValueError: :attr:`core` names no known core.
            CoreNotInstalled: the core's package is not installed.
            UnsupportedByCore: a setting the core cannot honour.
        """
        if self.core not in CORES:
            names = ", ".join(map(repr, CORES))
            raise ValueError(f"core must be one of {names}, not {self.core!r}")
        if self.core == "qh3":
            if importlib.util.find_spec("qh3") is None:
                raise CoreNotInstalled(
                    "core='qh3' needs the qh3 package: pip install 'quicframe[qh3]'"
                )
            if self.congestion_control is not None:
                raise UnsupportedByCore(
                    f"congestion_control={self.congestion_control!r} needs core='aioquic':"
                    " qh3 runs its own congestion controller and cannot select another"
                )

    def _base_quic_configuration(
        self, *, is_client: bool, secrets_log: TextIO | None
    ) -> QuicConfiguration:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.logger import QuicFileLogger

        if self.congestion_control == "bbr":
            from .congestion import ensure_registered  # registers "bbr" with aioquic

            ensure_registered()
        if secrets_log is None and not isinstance(self.secrets_log_file, str | os.PathLike):
            secrets_log = self.secrets_log_file
        return QuicConfiguration(
            alpn_protocols=list(self.alpn_protocols),
            congestion_control_algorithm=self.congestion_control or "reno",
            idle_timeout=self.idle_timeout,
            is_client=is_client,
            max_data=self.connection_receive_window,
            max_stream_data=self.stream_receive_window,
            max_datagram_size=self.max_datagram_size,
            max_datagram_frame_size=self.max_datagram_frame_size,
            quic_logger=(
                QuicFileLogger(os.fspath(self.qlog_dir)) if self.qlog_dir is not None else None
            ),
            secrets_log_file=secrets_log,
        )


def _check_addresses(addresses: Any) -> tuple[tuple[str, int], ...]:
    """``ClientConfig.addresses`` as a tuple of ``(host, port)``, or a clear error."""
    if isinstance(addresses, (str, bytes)) or not isinstance(addresses, Sequence):
        raise TypeError(
            f"addresses must be a sequence of (host, port) pairs, not {type(addresses).__name__}"
        )
    checked: list[tuple[str, int]] = []
    for entry in addresses:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise TypeError(f"each address must be a (host, port) pair, not {entry!r}")
        host, port = entry
        if not isinstance(host, str) or not host:
            raise ValueError(f"the host of address {entry!r} must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"the port of address {entry!r} must be an integer in 1..65535")
        if (host, port) in checked:
            raise ValueError(f"address {host}:{port} is given twice")
        checked.append((host, port))
    return tuple(checked)


@dataclass(kw_only=True)
class ClientConfig(_CommonConfig):
    """How a client connects.

    Certificate verification is on by default: the server's chain is checked against
    ``ca_file`` / ``ca_data`` when given, else against the ``certifi`` store, and its
    name against ``server_name`` (default: the host passed to ``connect``).  Only
    ``insecure=True`` turns verification off.

    Attributes:
        alpn_protocols: ALPN protocols offered, in order of preference.
        idle_timeout: seconds without traffic before the connection closes with
            :class:`~quicframe.errors.IdleTimeout` (the smaller of both sides' values).
        keepalive_interval: send a PING after this many idle seconds (None: never).
        max_datagram_frame_size: largest DATAGRAM frame we accept (None disables
            DATAGRAM frames, RFC 9221).
        max_datagram_size: largest UDP payload we send (at least 1200).
        core: the sans-IO QUIC engine: ``"aioquic"`` (the default) or ``"qh3"``
            (aioquic's fork with a Rust core, much faster; needs
            ``pip install 'quicframe[qh3]'``).  Both sides of a connection may use
            different cores.  What differs between them is listed in
            ``docs/transport.md`` ("Cores").
        congestion_control: ``"reno"``, ``"cubic"``, ``"bbr"`` or any name registered
            with ``aioquic.quic.congestion.base.register_congestion_control``; None
            (the default) means the core's own default (aioquic: reno).  Only the
            aioquic core can select one: with ``core="qh3"`` any value raises
            :class:`UnsupportedByCore`.
        qlog_dir: write one qlog file per connection into this directory.
        secrets_log_file: TLS secrets in SSLKEYLOGFILE format (path or text file).
        stream_high_water_mark: ``send_all`` waits while a stream has more than
            this many unsent plus unacknowledged bytes.
        stream_receive_window: per-stream receive credit; the peer can get at most
            this far ahead of what the application has read.
        connection_receive_window: initial connection-wide receive credit.
        datagram_queue_size: received DATAGRAM frames kept for ``receive_datagram``;
            the oldest is dropped (and counted) when full.
        socket_receive_buffer: SO_RCVBUF asked for (best effort).
        socket_send_buffer: SO_SNDBUF asked for (best effort).
        max_bidi_streams: bidirectional streams the peer may have open at once
            (the MAX_STREAMS limit we announce; a peer that goes beyond it is
            closed with STREAM_LIMIT_ERROR).  1 to 2**60.
        max_uni_streams: the same for unidirectional streams.
        server_name: name to verify and to send as SNI.
        ca_file: PEM file of trusted certificate authorities.
        ca_data: PEM bytes of trusted certificate authorities.
        insecure: skip certificate verification entirely.
        handshake_timeout: seconds ``connect`` waits for the handshake before
            raising :class:`~quicframe.errors.HandshakeTimeout` (a safety default).
        session_tickets: a ``quicframe.transport.SessionTicketStore`` to keep the
            servers' tickets in and resume from (None: no resumption).  Share one
            store between configs to resume across connections.
        reconnect: how ``quicframe.connect`` re-establishes a lost session in the
            background (None: it does not).  A ``reconnect=`` argument given to
            ``connect`` takes precedence.  The transport ignores this field.
        addresses: more servers serving the same thing (edges), as ``(host,
            port)`` pairs, for ``quicframe.connect`` to fail over to: it tries the
            host and port it is given first, then these in order, and each
            reconnect starts at the address after the one that was lost, in a
            ring (see ``docs/scale-out.md``, "Client failover").  An entry equal
            to the address given to ``connect`` is skipped there.  Every address
            is verified against the same ``server_name`` (when set) and CA.  The
            transport ignores this field.
    """

    server_name: str | None = None
    ca_file: str | os.PathLike[str] | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    handshake_timeout: float = 10.0
    session_tickets: SessionTicketStore | None = None
    reconnect: ReconnectPolicy | None = None
    addresses: Sequence[tuple[str, int]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        self.addresses = _check_addresses(self.addresses)

    def to_quic_configuration(
        self, *, server_name: str | None = None, secrets_log: TextIO | None = None
    ) -> QuicConfiguration:
        """Build the aioquic configuration for one client connection (aioquic core).

        With ``core="qh3"`` the transport builds qh3's configuration from the same
        fields instead; this method always answers for aioquic.

        Args:
            server_name: used when :attr:`server_name` is not set (``connect`` passes
                the host it dials).
            secrets_log: an open text file for TLS secrets; the transport opens
                ``secrets_log_file`` paths itself so it can close them.

        Returns:
            A new ``aioquic.quic.configuration.QuicConfiguration``.
        """
        import ssl

        configuration = self._base_quic_configuration(is_client=True, secrets_log=secrets_log)
        configuration.server_name = self.server_name or server_name
        if self.insecure:
            configuration.verify_mode = ssl.CERT_NONE
        else:
            configuration.verify_mode = ssl.CERT_REQUIRED
            if self.ca_file is not None or self.ca_data is not None:
                configuration.load_verify_locations(
                    cafile=os.fspath(self.ca_file) if self.ca_file is not None else None,
                    cadata=self.ca_data,
                )
        return configuration


@dataclass(kw_only=True)
class ServerConfig(_CommonConfig):
    """How a server listens.

    ``certificate`` and ``private_key`` accept a path, PEM bytes, or objects already
    loaded with ``cryptography``; ``certificate`` may also be a list (leaf first).
    A single PEM file holding both the chain and the key works as ``certificate``
    alone.  The common attributes are described on :class:`ClientConfig`.

    Attributes:
        certificate: the server's certificate (chain).
        private_key: the certificate's private key.
        private_key_password: password of an encrypted private key.
        max_connections: connections served at once; further INITIALs are dropped.
        max_connections_per_address: connections at once from one source IP.
        max_handshakes: handshakes in progress at once.
        max_handshakes_per_address: handshakes in progress at once from one
            source IP; further INITIALs from it are dropped until one completes
            or times out.
        max_early_data: stream bytes a client may send as 0-RTT data on one
            connection; the bytes beyond it are not delivered, and the
            connection is closed with ``ErrorCode.LIMIT_EXCEEDED`` once its
            handshake completes (0 refuses any early byte).
        retry: validate client addresses with a Retry round trip before creating
            any connection state (costs one round trip per handshake).
        session_tickets: a ``quicframe.transport.ServerTicketStore`` for the
            tickets this server issues (None: ``serve`` makes an in-memory one).
            Tickets are single use, so a replayed ticket gets no 0-RTT.
    """

    certificate: PathOrPem | Any = None
    private_key: PathOrPem | Any = None
    private_key_password: bytes | str | None = None
    max_connections: int = 10_000
    max_connections_per_address: int = 256
    max_handshakes: int = 1_000
    max_handshakes_per_address: int = 100
    max_early_data: int = 256 * 1024
    retry: bool = False
    session_tickets: ServerTicketStore | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.certificate is None:
            raise ValueError("a server needs a certificate")
        for name in (
            "max_connections",
            "max_connections_per_address",
            "max_handshakes",
            "max_handshakes_per_address",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_early_data < 0:
            raise ValueError("max_early_data must be at least 0")

    def to_quic_configuration(self, *, secrets_log: TextIO | None = None) -> QuicConfiguration:
        """Build the aioquic configuration shared by the listener's connections.

        For the aioquic core; with ``core="qh3"`` the transport builds qh3's.

        Args:
            secrets_log: an open text file for TLS secrets (see ``ClientConfig``).

        Returns:
            A new ``aioquic.quic.configuration.QuicConfiguration``.

        Raises:
            ValueError: the certificate or key cannot be loaded.
        """
        from aioquic.tls import load_pem_private_key, load_pem_x509_certificates

        configuration = self._base_quic_configuration(is_client=False, secrets_log=secrets_log)
        password = self.private_key_password
        if isinstance(password, str):
            password = password.encode()

        cert = self.certificate
        if isinstance(cert, str | os.PathLike):
            key = self.private_key
            keyfile = key if isinstance(key, str | os.PathLike) else None
            configuration.load_cert_chain(cert, keyfile, password)
            if keyfile is None and key is not None:
                configuration.private_key = _load_key(key, password, load_pem_private_key)
        else:
            if isinstance(cert, bytes):
                chain = load_pem_x509_certificates(cert)
            elif isinstance(cert, list | tuple):
                chain = list(cert)
            else:
                chain = [cert]
            if not chain:
                raise ValueError("no certificate found")
            configuration.certificate = chain[0]
            configuration.certificate_chain = chain[1:]
            if self.private_key is None:
                raise ValueError("an in-memory certificate needs private_key")
            configuration.private_key = _load_key(self.private_key, password, load_pem_private_key)
        if configuration.private_key is None:
            raise ValueError("no private key found: set private_key")
        return configuration


def _load_key(key: Any, password: bytes | None, loader: Any) -> Any:
    if isinstance(key, str | os.PathLike):
        with open(key, "rb") as file:
            return loader(file.read(), password)
    if isinstance(key, bytes):
        return loader(key, password)
    return key
