"""The qh3 core: qh3's ``QuicConnection`` (a Rust packet engine) behind the seam.

qh3 is a fork of aioquic with the same sans-IO surface, so the driver's
:class:`~quicframe.transport._core.SansIOQuic` calls go to it unchanged.  Its
packet handling, flow control, stream scheduling and congestion control live in
native code, though, so the extras :class:`AioquicCore` gets by reaching into
aioquic's Python internals are either read from what qh3 exposes or degrade to
qh3's own behaviour:

* send-buffer occupancy counts bytes not yet sent (qh3 does not expose the sent
  and unacknowledged ones); the connection-wide "unacknowledged" figure adds the
  bytes in flight;
* receive credit follows arrival, as qh3 grants it, not consumption;
* a finished stream is discarded by qh3 at once, not when the application lets
  go of it;
* streams are served in qh3's order whatever their urgency;
* congestion control is qh3's own (no registry, so no BBR and no choice).

Two things are adapted rather than given up.  qh3 refuses to open a stream past
the peer's MAX_STREAMS limit (``ValueError``) where aioquic queues it: here the
writes of such a stream wait in :class:`_Qh3Connection` until the peer raises
the limit.  And qh3's tickets are converted to and from aioquic's at the seam,
so the ticket stores and their file hold one kind of ticket whatever the core.

Only this module imports qh3 (lazily, through ``core_factory("qh3")``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TextIO

from aioquic import tls as aioquic_tls
from qh3 import tls as qh3_tls
from qh3._hazmat import Buffer as Qh3Buffer, QuicConnectionCore
from qh3.quic import events as qh3_events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.logger import QuicFileLogger
from qh3.quic.packet import QuicProtocolVersion

from .._config import UnsupportedByCore
from ._core import STREAMS_UNKNOWN, CoreStatistics, NetworkAddress, SansIOQuic, event_kinds_of

if TYPE_CHECKING:
    from .._config import ClientConfig, ServerConfig, _CommonConfig

__all__ = ["Qh3Core"]

_SUPPORTED_VERSIONS: Final = [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2]
_KEEPALIVE_PING_UID: Final = (1 << 62) - 1  # never a waiter's: those count up from 0
_INITIAL_RTT: Final = 0.1
_FIN_GRACE: Final = 0.001  # how long a 0-RTT write's last byte waits for a FIN
_CLOSING_STATES: Final = frozenset({"closing", "draining", "terminated"})


# --------------------------------------------------------------------------------------
# Session tickets: aioquic's at the seam, qh3's inside.
# --------------------------------------------------------------------------------------


def _ticket_fields(ticket: Any) -> dict[str, Any]:
    return {
        "age_add": ticket.age_add,
        "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after,
        "not_valid_before": ticket.not_valid_before,
        "resumption_secret": ticket.resumption_secret,
        "server_name": ticket.server_name,
        "ticket": ticket.ticket,
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": list(ticket.other_extensions),
    }


def _to_qh3_ticket(ticket: aioquic_tls.SessionTicket | None) -> qh3_tls.SessionTicket | None:
    if ticket is None:
        return None
    fields = _ticket_fields(ticket)
    fields["cipher_suite"] = qh3_tls.CipherSuite(fields["cipher_suite"])
    for name in ("not_valid_after", "not_valid_before"):
        # qh3 compares ticket times with naive UTC datetimes.
        moment: datetime.datetime = fields[name]
        if moment.tzinfo is not None:
            fields[name] = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return qh3_tls.SessionTicket(**fields)


def _to_aioquic_ticket(ticket: qh3_tls.SessionTicket) -> aioquic_tls.SessionTicket:
    fields = _ticket_fields(ticket)
    fields["cipher_suite"] = aioquic_tls.CipherSuite(fields["cipher_suite"])
    for name in ("not_valid_after", "not_valid_before"):
        moment: datetime.datetime = fields[name]
        if moment.tzinfo is None:
            fields[name] = moment.replace(tzinfo=datetime.UTC)
    return aioquic_tls.SessionTicket(**fields)


def _ticket_allows_early_data(ticket: qh3_tls.SessionTicket | None) -> bool:
    # qh3 sends 0-RTT only with a ticket for unlimited early data that carries the
    # server's transport parameters (it needs them to size its first flight).
    return (
        ticket is not None
        and ticket.max_early_data_size == 0xFFFFFFFF
        and any(
            kind == qh3_tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS
            for kind, _ in ticket.other_extensions
        )
    )


# --------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------


def _base_configuration(
    config: _CommonConfig, *, is_client: bool, secrets_log: TextIO | None
) -> QuicConfiguration:
    if config.congestion_control is not None:
        raise UnsupportedByCore(
            f"congestion_control={config.congestion_control!r} needs core='aioquic':"
            " qh3 runs its own congestion controller and cannot select another"
        )
    if secrets_log is None and not isinstance(config.secrets_log_file, str | os.PathLike):
        secrets_log = config.secrets_log_file
    configuration = QuicConfiguration(
        alpn_protocols=list(config.alpn_protocols),
        idle_timeout=config.idle_timeout,
        is_client=is_client,
        max_data=config.connection_receive_window,
        max_stream_data=config.stream_receive_window,
        max_datagram_size=config.max_datagram_size,
        # The configured size is the largest UDP payload sent, as with aioquic.
        probe_datagram_size=False,
        # qh3 reads None as "the default" (65536) on a client; 0 is "no DATAGRAM
        # frames" on the wire (RFC 9221), which is what None means here.
        max_datagram_frame_size=(
            config.max_datagram_frame_size if config.max_datagram_frame_size is not None else 0
        ),
        quic_logger=(
            QuicFileLogger(os.fspath(config.qlog_dir)) if config.qlog_dir is not None else None
        ),
        secrets_log_file=secrets_log,  # type: ignore[arg-type]  # qh3 allows None too
        supported_versions=list(_SUPPORTED_VERSIONS),
        # aioquic's initial RTT estimate (qh3's own is 333 ms): the first probe
        # timeouts, and so handshakes under loss, behave alike on both cores.
        initial_rtt=_INITIAL_RTT,
    )
    return configuration


def _client_configuration(
    config: ClientConfig, server_name: str | None, secrets_log: TextIO | None
) -> QuicConfiguration:
    configuration = _base_configuration(config, is_client=True, secrets_log=secrets_log)
    configuration.server_name = config.server_name or server_name
    if config.insecure:
        configuration.verify_mode = ssl.CERT_NONE
    else:
        configuration.verify_mode = ssl.CERT_REQUIRED
        if config.ca_file is not None or config.ca_data is not None:
            configuration.load_verify_locations(
                cafile=os.fspath(config.ca_file) if config.ca_file is not None else None,
                cadata=config.ca_data,
            )
        else:
            import certifi  # what aioquic verifies against by default

            configuration.load_verify_locations(cafile=certifi.where())
    return configuration


def _server_configuration(config: ServerConfig, secrets_log: TextIO | None) -> QuicConfiguration:
    # Certificates and keys are read with ``cryptography`` (aioquic's dependency,
    # so always present), which accepts every form ServerConfig does, then handed
    # to qh3 as PEM it parses: the chain as certificates, the key as PKCS#8.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    configuration = _base_configuration(config, is_client=False, secrets_log=secrets_log)
    password = config.private_key_password
    if isinstance(password, str):
        password = password.encode()

    def read(source: Any) -> bytes | None:
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                return file.read()
        return source if isinstance(source, bytes) else None

    cert: Any = config.certificate
    cert_pem = read(cert)
    if cert_pem is not None:
        chain_pem = b"".join(
            item.public_bytes(serialization.Encoding.PEM)
            for item in x509.load_pem_x509_certificates(cert_pem)
        )
    else:
        items = list(cert) if isinstance(cert, list | tuple) else [cert]
        chain_pem = b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items)
    chain = qh3_tls.load_pem_x509_certificates(chain_pem)
    if not chain:
        raise ValueError("no certificate found")

    key_source: Any = config.private_key
    if key_source is None and cert_pem is not None and b"PRIVATE KEY-----" in cert_pem:
        key_source = cert_pem  # one file holding the chain and the key
    if key_source is None:
        raise ValueError("no private key found: set private_key")
    key_pem = read(key_source)
    key: Any = (
        serialization.load_pem_private_key(key_pem, password) if key_pem is not None else key_source
    )
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    configuration.certificate = chain[0]
    configuration.certificate_chain = chain[1:]
    configuration.private_key = qh3_tls.load_pem_private_key(pkcs8)
    return configuration


def _with_stream_limits(parameters: bytes, limits: tuple[int, int]) -> bytes:
    """Transport parameters with initial_max_streams_bidi/uni (0x08, 0x09) replaced.

    Every other parameter is kept byte for byte, unknown ones (GREASE) included.
    """
    replace = {0x08: limits[0], 0x09: limits[1]}
    source = Qh3Buffer(data=parameters)
    out = Qh3Buffer(capacity=len(parameters) + 32)
    while not source.eof():
        parameter_id = source.pull_uint_var()
        value = source.pull_bytes(source.pull_uint_var())
        if parameter_id in replace:
            number = Qh3Buffer(capacity=8)
            number.push_uint_var(replace[parameter_id])
            value = number.data
        out.push_uint_var(parameter_id)
        out.push_uint_var(len(value))
        out.push_bytes(value)
    return out.data


# --------------------------------------------------------------------------------------
# The connection: qh3's, with streams over the peer's limit waiting instead of failing.
# --------------------------------------------------------------------------------------


class _Qh3Connection(QuicConnection):
    """qh3's ``QuicConnection`` adapted to what the driver expects of a core.

    * A stream past the peer's MAX_STREAMS limit is opened when the limit allows
      (its writes, FIN and reset wait here meanwhile), as aioquic does; qh3
      itself raises ``ValueError``.
    * Native errors qh3 reports as ``QuicConnectionError`` on stream calls come
      out as ``RuntimeError``, and resetting or stopping a stream qh3 no longer
      knows does nothing, as with aioquic.
    * Datagrams sent are counted (statistics), and the per-datagram qlog work
      qh3 does in Python is skipped when there is no qlog.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Streams waiting for the peer's MAX_STREAMS, bidirectional [0] and
        # unidirectional [1]: stream ID -> [writes (data, FIN), reset code or None],
        # in the order they were opened.
        self._qf_deferred: tuple[dict[int, list[Any]], dict[int, list[Any]]] = ({}, {})
        self._qf_any_deferred = False
        # Local streams known to be open in qh3, per direction (a lower bound that
        # spares reading qh3's stream counters on every write).
        self._qf_opened = [0, 0]
        # 0-RTT: qh3 2.1 loses a FIN sent on its own (a zero-length STREAM frame)
        # in 0-RTT when the server rejects early data: it resends the data, not
        # that FIN.  A FIN sent with data survives.  So while early data may be
        # rejected, the last byte of each write is held back briefly: a FIN that
        # follows within _FIN_GRACE travels with it, else the byte goes alone.
        # A FIN with nothing to ride on waits until the fate of 0-RTT is known.
        self._qf_early = self._is_client and self._remembered_transport_parameters() is not None
        self._qf_held_bytes: dict[int, bytes] = {}
        self._qf_hold_deadline: float | None = None
        self._qf_held_fins: list[int] = []
        self._qf_datagrams_sent = 0
        self._qf_sent_to: NetworkAddress | None = None  # where the last datagram went
        # (bidirectional, unidirectional) streams the peer may open at once, set
        # by Qh3Core before the native core exists; None keeps qh3's 100 and 103.
        self._qf_stream_limits: tuple[int, int] | None = None

    # -- the peer's stream limits (qh3 hard-codes them) ---------------------------

    def _create_core(self, remote_addr: NetworkAddress, initial_dcid: bytes, now: float) -> None:
        limits = self._qf_stream_limits
        if limits is None:
            super()._create_core(remote_addr, initial_dcid, now)
            return
        # qh3 2.1's own _create_core with the two stream limits replaced: the
        # native core enforces them and raises them as streams finish.
        configuration = self._configuration
        remembered = self._remembered_transport_parameters()
        version = self._version
        assert version is not None  # set before the core is created
        self._core = QuicConnectionCore(
            self._is_client,
            version,
            ("0.0.0.0", 0),
            remote_addr,
            self.host_cid,
            initial_dcid,
            self._is_client or self._retry_source_connection_id is not None,
            configuration.active_connection_id_limit or (2 if self._is_client else 8),
            configuration.max_datagram_size,
            configuration.probe_datagram_size,
            configuration.idle_timeout,
            3,
            (
                configuration.max_datagram_frame_size
                if configuration.max_datagram_frame_size is not None
                else (65536 if self._is_client else None)
            ),
            remembered.max_datagram_frame_size if remembered is not None else None,
            configuration.max_data,
            (remembered.initial_max_data or 0) if remembered is not None else 0,
            configuration.max_stream_data,
            (remembered.initial_max_stream_data_bidi_local or 0) if remembered else 0,
            (remembered.initial_max_stream_data_bidi_remote or 0) if remembered else 0,
            (remembered.initial_max_stream_data_uni or 0) if remembered else 0,
            configuration.max_stream_data,
            limits[0],
            limits[1],
            (remembered.initial_max_streams_bidi or 0) if remembered else 0,
            (remembered.initial_max_streams_uni or 0) if remembered else 0,
            configuration.initial_rtt,
            0.025,
            now,
        )
        self._applied_transport_parameters = None
        self._pre_handshake_state_replayed = False

    def _create_tls(self, remote_source_cid: bytes | None) -> Any:
        bridge = super()._create_tls(remote_source_cid)
        limits = self._qf_stream_limits
        if limits is not None:
            # Announce the limits the native core enforces (the bridge serializes
            # qh3's constants, here and again if the version changes).
            serialize = bridge.serialize_transport_parameters

            def serialize_with_limits() -> bytes:
                return _with_stream_limits(serialize(), limits)

            bridge.serialize_transport_parameters = serialize_with_limits  # type: ignore[method-assign]
            bridge.tls.handshake_extensions = [
                (qh3_tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, serialize_with_limits())
            ]
        return bridge

    # -- streams past the peer's limit ------------------------------------------

    def _qf_over_limit(self, stream_id: int) -> bool:
        """True for a local stream qh3 has not opened and may not open yet."""
        if not self._handshake_complete or (stream_id & 1) != (0 if self._is_client else 1):
            return False  # before the handshake qh3 stages writes itself
        unidirectional = (stream_id >> 1) & 1
        index = stream_id >> 2
        if index < self._qf_opened[unidirectional]:
            return False  # already open (or finished)
        core = self._core
        if core is None:
            return False
        limits = core.stream_limits  # peer's bidi/uni maxima, then bidi/uni opened
        self._qf_opened[unidirectional] = limits[2 + unidirectional]
        if index < limits[2 + unidirectional]:
            return False
        return bool(self._qf_deferred[unidirectional]) or index >= limits[unidirectional]

    def _qf_release_deferred(self) -> None:
        for deferred in self._qf_deferred:
            while deferred:
                stream_id = next(iter(deferred))
                core = self._core
                assert core is not None
                unidirectional = (stream_id >> 1) & 1
                if stream_id >> 2 >= core.stream_limits[unidirectional]:
                    break  # still over the limit: later IDs wait too
                writes, reset_code = deferred.pop(stream_id)
                for data, fin in writes:
                    super().send_stream_data(stream_id, data, fin)
                if reset_code is not None:
                    super().reset_stream(stream_id, reset_code)
        self._qf_any_deferred = bool(self._qf_deferred[0] or self._qf_deferred[1])

    def _qf_send_early(self, stream_id: int, data: Any, end_stream: bool) -> None:
        """A write while 0-RTT may still be rejected (see ``__init__``)."""
        payload = self._qf_held_bytes.pop(stream_id, b"") + bytes(data)
        if end_stream:
            if payload:
                super().send_stream_data(stream_id, payload, True)
            elif stream_id not in self._qf_held_fins:
                self._qf_held_fins.append(stream_id)
        elif len(payload) > 1:
            super().send_stream_data(stream_id, payload[:-1])
            self._qf_held_bytes[stream_id] = payload[-1:]
        elif payload:
            self._qf_held_bytes[stream_id] = payload
        else:
            super().send_stream_data(stream_id, b"")  # creates the stream

    def _qf_release_early(self, *, fins: bool) -> None:
        held, self._qf_held_bytes = self._qf_held_bytes, {}
        self._qf_hold_deadline = None
        for stream_id, byte in held.items():
            with contextlib.suppress(ValueError, RuntimeError):  # stopped meanwhile
                super().send_stream_data(stream_id, byte)
        if fins:
            finished, self._qf_held_fins = self._qf_held_fins, []
            for stream_id in finished:
                with contextlib.suppress(ValueError, RuntimeError):
                    super().send_stream_data(stream_id, b"", True)

    def send_stream_data(self, stream_id: int, data: Any, end_stream: bool = False) -> None:
        if self._qf_early:
            if not (self._handshake_complete or self._zero_rtt_resolved):
                self._qf_send_early(stream_id, data, end_stream)
                return
            self._qf_early = False
            self._qf_release_early(fins=True)
        deferred = None
        if self._qf_any_deferred:
            deferred = self._qf_deferred[(stream_id >> 1) & 1].get(stream_id)
        if deferred is None and self._qf_over_limit(stream_id):
            # Reserve the ID (the next one offered is higher) and keep the writes.
            self._record_local_stream(stream_id)
            deferred = self._qf_deferred[(stream_id >> 1) & 1][stream_id] = [[], None]
            self._qf_any_deferred = True
        if deferred is not None:
            if deferred[1] is not None:
                raise ValueError("cannot write after RESET_STREAM")
            deferred[0].append((bytes(data), end_stream))
            return
        try:
            super().send_stream_data(stream_id, data, end_stream)
        except QuicConnectionError as exc:
            raise RuntimeError(str(exc)) from exc

    def deferred_bytes(self, stream_id: int | None = None) -> int:
        if not self._qf_any_deferred:
            return 0
        if stream_id is not None:
            entry = self._qf_deferred[(stream_id >> 1) & 1].get(stream_id)
            return 0 if entry is None else sum(len(data) for data, _ in entry[0])
        return sum(
            len(data)
            for deferred in self._qf_deferred
            for writes, _ in deferred.values()
            for data, _ in writes
        )

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        # A reset supersedes what was held back for 0-RTT.
        self._qf_held_bytes.pop(stream_id, None)
        if stream_id in self._qf_held_fins:
            self._qf_held_fins.remove(stream_id)
        deferred = self._qf_deferred[(stream_id >> 1) & 1].get(stream_id)
        if deferred is not None:
            deferred[1] = error_code
            deferred[0].clear()
            return
        # Already reset, finished or discarded: nothing to do.
        with contextlib.suppress(ValueError, QuicConnectionError):
            super().reset_stream(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        # Finished or discarded: nothing left to stop.
        with contextlib.suppress(ValueError, QuicConnectionError):
            super().stop_stream(stream_id, error_code)

    def send_ping(self, uid: int) -> None:
        # qh3 takes unsigned IDs only; the driver's keepalive uses -1 (no waiter).
        super().send_ping(uid if uid >= 0 else _KEEPALIVE_PING_UID)

    # -- datagrams -----------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        core = self._core
        if (
            core is not None
            and self._handshake_complete
            and self._quic_logger is None
            and data
            and not data[0] & 0x80
        ):
            # A short-header packet once the handshake is done: what qh3's Python
            # layer adds for it (per-packet header parsing for logs, Retry and
            # Version Negotiation checks) cannot apply, so go to the engine.
            self._call_core(core.receive_datagram, data, addr, now, len(data))
            self._drain_core()
        else:
            super().receive_datagram(data, addr, now)
        if self._qf_any_deferred:
            self._qf_release_deferred()
        if self._qf_early and (self._handshake_complete or self._zero_rtt_resolved):
            self._qf_early = False
            self._qf_release_early(fins=True)

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        deadline = self._qf_hold_deadline
        if deadline is not None and (timer is None or deadline < timer):
            return deadline
        return timer

    def handle_timer(self, now: float) -> None:
        deadline = self._qf_hold_deadline
        if deadline is not None and now >= deadline:
            self._qf_release_early(fins=False)
        super().handle_timer(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        core = self._core
        if core is None:
            return []
        if self._qf_held_bytes and self._qf_hold_deadline is None:
            self._qf_hold_deadline = now + _FIN_GRACE
        logging = self._quic_logger is not None
        datagrams: list[tuple[bytes, NetworkAddress]] = []
        poll = core.poll_transmit
        while True:
            try:
                transmit = poll(now)
            except RuntimeError as exc:
                if self._handshake_complete or "capacity exhausted" not in str(exc):
                    raise QuicConnectionError(1, None, str(exc)) from exc
                # qh3 2.1 fails to build its handshake flight when the peer's
                # first flight was a single datagram (an aioquic client) and the
                # anti-amplification budget runs out mid-flight, instead of
                # waiting.  The client's acknowledgement raises the budget; the
                # rest of the flight follows then.
                break
            if transmit is None:
                break
            if logging:
                self._log_datagram("datagrams_sent", transmit[0])
                self._log_packets("packet_sent", transmit[0])
            datagrams.append((transmit[0], transmit[1]))
        if datagrams:
            self._qf_datagrams_sent += len(datagrams)
            self._qf_sent_to = datagrams[-1][1]
        return datagrams


class Qh3Core:
    """qh3's connection behind the seam (see the module docstring for the differences)."""

    __slots__ = ("_connection", "_min_rtt", "quic")

    event_kinds: Mapping[type, int] = event_kinds_of(qh3_events)

    def __init__(self, connection: _Qh3Connection) -> None:
        self._connection = connection
        self.quic: SansIOQuic = connection
        self._min_rtt = 0.0

    # -- the factory side (CoreFactory) -------------------------------------------

    @classmethod
    def client_configuration(
        cls, config: ClientConfig, *, server_name: str | None, secrets_log: TextIO | None
    ) -> QuicConfiguration:
        return _client_configuration(config, server_name, secrets_log)

    @classmethod
    def server_configuration(
        cls, config: ServerConfig, *, secrets_log: TextIO | None
    ) -> QuicConfiguration:
        return _server_configuration(config, secrets_log)

    @classmethod
    def use_ticket(
        cls, configuration: QuicConfiguration, ticket: aioquic_tls.SessionTicket | None
    ) -> bool:
        converted = _to_qh3_ticket(ticket)
        configuration.session_ticket = converted
        return _ticket_allows_early_data(converted)

    @classmethod
    def client(
        cls,
        configuration: QuicConfiguration,
        *,
        ticket_handler: Callable[[aioquic_tls.SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> Qh3Core:
        handler = None
        if ticket_handler is not None:
            store = ticket_handler

            def handler(ticket: qh3_tls.SessionTicket) -> None:
                store(_to_aioquic_ticket(ticket))

        connection = _Qh3Connection(configuration=configuration, session_ticket_handler=handler)
        connection._qf_stream_limits = stream_limits
        return cls(connection)

    @classmethod
    def server(
        cls,
        configuration: QuicConfiguration,
        original_destination_cid: bytes,
        retry_source_cid: bytes | None = None,
        *,
        ticket_fetcher: Callable[[bytes], aioquic_tls.SessionTicket | None] | None = None,
        ticket_handler: Callable[[aioquic_tls.SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> Qh3Core:
        fetcher = handler = None
        if ticket_fetcher is not None:
            fetch = ticket_fetcher

            def fetcher(label: bytes) -> qh3_tls.SessionTicket | None:
                return _to_qh3_ticket(fetch(label))

        if ticket_handler is not None:
            store = ticket_handler

            def handler(ticket: qh3_tls.SessionTicket) -> None:
                store(_to_aioquic_ticket(ticket))

        connection = _Qh3Connection(
            configuration=configuration,
            original_destination_connection_id=original_destination_cid,
            retry_source_connection_id=retry_source_cid,
            session_ticket_fetcher=fetcher,
            session_ticket_handler=handler,
        )
        connection._qf_stream_limits = stream_limits
        return cls(connection)

    @classmethod
    def host_cid_length(cls, configuration: QuicConfiguration) -> int:
        return configuration.connection_id_length

    # -- streams ------------------------------------------------------------------

    def send_buffered(self, stream_id: int) -> int:
        """Bytes of the stream not sent yet (qh3 does not expose unacknowledged ones)."""
        connection = self._connection
        buffered = connection.get_send_buffer_size(stream_id)
        if connection._qf_any_deferred:
            buffered += connection.deferred_bytes(stream_id)
        if connection._qf_held_bytes:
            buffered += len(connection._qf_held_bytes.get(stream_id, b""))
        return buffered

    def gate_stream_credit(self, stream_id: int) -> None:
        """No-op: qh3 grants receive credit as data arrives."""

    def release_stream(self, stream_id: int) -> bool:
        """No-op: qh3 discards a finished stream by itself."""
        return False

    def grant_stream_credit(self, stream_id: int, ceiling: int) -> None:
        """No-op: qh3 grants receive credit as data arrives."""

    def unacknowledged_stream_bytes(self) -> int:
        """Stream bytes not sent yet, plus every byte in flight."""
        connection = self._connection
        core = connection._core
        if core is None or connection._close_event is not None:
            return 0
        return (
            connection.get_send_buffer_size()
            + connection.deferred_bytes()
            + len(connection._qf_held_fins)
            + len(connection._qf_held_bytes)
            + core.bytes_in_flight
        )

    def stream_exists(self, stream_id: int) -> bool:
        # Stopping a stream qh3 forgot is harmless here (see _Qh3Connection).
        return True

    def streams_allowed(self, unidirectional: bool) -> int:
        connection = self._connection
        native = connection._core
        if native is None or not connection._handshake_complete:
            return STREAMS_UNKNOWN  # the adapter holds such streams (see _Qh3Connection)
        limit = native.stream_limits[int(unidirectional)]
        next_index = connection.get_next_available_stream_id(unidirectional) >> 2
        return max(0, limit - next_index)

    # -- handshake ------------------------------------------------------------------

    def resumption_state(self) -> tuple[bool, bool]:
        context = self._connection.tls
        if context is None:
            return (False, False)
        return context.session_resumed, context.early_data_accepted

    # -- priorities, pacing, acknowledgements: qh3 decides ---------------------------

    def datagrams_by_urgency(
        self, now: float, urgency: dict[int, int], default: int
    ) -> list[tuple[bytes, NetworkAddress]] | None:
        """None: qh3 schedules streams itself, whatever their urgency."""
        return None

    def pacing_due(self, now: float) -> bool:
        core = self._connection._core
        if core is None:
            return False
        timer = core.get_timer()
        return timer is not None and timer[0] == "pacing" and timer[1] <= now

    def note_queued(self, size: int) -> None:
        """No-op: qh3's packet loop is native code."""

    def acknowledge_with_next_packet(self, now: float, streams: int = 1) -> None:
        """No-op: qh3 adds pending acknowledgements to the packets it builds."""

    # -- connection ---------------------------------------------------------------

    def peer_address(self) -> NetworkAddress | None:
        """Where qh3 last sent (it answers a migrated peer before validating the path)."""
        connection = self._connection
        if connection._qf_sent_to is not None:
            return connection._qf_sent_to
        core = connection._core
        return connection._remote_addr if core is None else core.active_path[2]

    def peer_max_datagram_frame_size(self) -> int | None:
        return self._connection._remote_max_datagram_frame_size

    def max_datagram_size(self) -> int:
        return self._connection.configuration.max_datagram_size

    def has_peer_traffic(self) -> bool:
        connection = self._connection
        core = connection._core
        return connection._close_event is not None or (
            core is not None and core.received_authenticated_packet
        )

    def is_draining(self) -> bool:
        core = self._connection._core
        return core is not None and core.state == "draining"

    def is_closing_or_closed(self) -> bool:
        core = self._connection._core
        return core is not None and core.state in _CLOSING_STATES

    def close_reason(self) -> tuple[int, bool, str]:
        event = self._connection._close_event
        if event is None:
            return (0, True, "")
        return (event.error_code, event.frame_type is not None, event.reason_phrase)

    def is_idle_termination(self, event: Any) -> bool:
        # qh3 reports its idle timeout as aioquic does: INTERNAL_ERROR, frame
        # type PADDING (0), reason "Idle timeout".
        return bool(event.frame_type == 0 and event.reason_phrase == "Idle timeout")

    def statistics(self) -> CoreStatistics:
        connection = self._connection
        core = connection._core
        if core is None:
            return CoreStatistics(0.0, 0.0, 0.0, 0, 0, connection._qf_datagrams_sent, 0)
        latest = core.latest_rtt or 0.0
        # qh3 does not expose its minimum RTT: keep the smallest sample seen here.
        if latest and (not self._min_rtt or latest < self._min_rtt):
            self._min_rtt = latest
        return CoreStatistics(
            smoothed_rtt=core.smoothed_rtt or 0.0,
            min_rtt=self._min_rtt,
            latest_rtt=latest,
            congestion_window=core.congestion_window,
            bytes_in_flight=core.bytes_in_flight,
            packets_sent=connection._qf_datagrams_sent,
            packets_lost=core.loss_total,
        )
