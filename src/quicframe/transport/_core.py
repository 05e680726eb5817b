"""The core seam: the sans-IO QUIC engine the driver runs, and the clock it runs on.

Everything the transport knows about aioquic lives here.  :class:`SansIOQuic` is the
narrow interface aioquic's ``QuicConnection`` and its fork qh3 share (datagrams and
``now`` in, datagrams, timers and events out); the driver calls only that, plus the
extras of :class:`Core`, which :class:`AioquicCore` implements by reaching into
aioquic internals for what the public API does not offer (send-buffer occupancy,
consumption-driven stream credit, statistics, peer limits).  The second core,
``Qh3Core`` in ``_core_qh3.py``, implements the same two interfaces over qh3;
:func:`core_factory` picks one by the name in the configuration.  The driver never
names a core's classes, not even its event classes: it dispatches on the small
integers of :attr:`Core.event_kinds`.

This module is also the one place that converts time: :func:`now` is
``trio.current_time()``, and every ``now`` handed to the core comes from it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from aioquic import tls
from aioquic._buffer import Buffer  # the C buffer; aioquic.buffer re-exports it
from aioquic.quic import events as core_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    TRANSPORT_CLOSE_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.quic.stream import QuicStream as _AioquicStream
from aioquic.tls import SessionTicket

from .._config import CoreNotInstalled

if TYPE_CHECKING:
    from typing import TextIO

    from .._config import ClientConfig, ServerConfig

__all__ = [
    "MIN_INITIAL_SIZE",
    "AioquicCore",
    "Core",
    "CoreFactory",
    "CoreStatistics",
    "Header",
    "NetworkAddress",
    "RetryGate",
    "SansIOQuic",
    "core_events",
    "core_factory",
    "encode_version_negotiation",
    "invalid_token_close",
    "now",
    "parse_header_untrusted",
]

NetworkAddress = Any
"""A socket address as ``recvfrom`` returns it (2-tuple for IPv4, 4-tuple for IPv6)."""

MIN_INITIAL_SIZE: Final = 1200
"""RFC 9000 section 14.1: a client's INITIAL datagram is at least this big."""


def now() -> float:
    """The core's clock: trio's clock, so ``autojump_clock`` and deadlines agree."""
    return trio.current_time()


# What Core.streams_allowed answers while the peer's stream limits are unknown.
STREAMS_UNKNOWN = 1 << 30


class SansIOQuic(Protocol):
    """The sans-IO QUIC connection interface shared by aioquic and qh3."""

    host_cid: bytes

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...
    def connect(self, addr: NetworkAddress, now: float) -> None: ...
    def close(
        self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None: ...
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int) -> None: ...
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...
    def send_datagram_frame(self, data: bytes) -> None: ...
    def send_ping(self, uid: int) -> None: ...
    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int: ...
    def change_connection_id(self) -> None: ...


# The events the driver handles, as small integers: both cores' event modules have
# classes of these names (aioquic's ``quic.events``, qh3's copy), and each core maps
# its own classes to these kinds, so the driver dispatches without naming a core.
EVENT_STREAM_DATA: Final = 0
EVENT_STREAM_RESET: Final = 1
EVENT_STOP_SENDING: Final = 2
EVENT_DATAGRAM: Final = 3
EVENT_PING_ACKNOWLEDGED: Final = 4
EVENT_HANDSHAKE_COMPLETED: Final = 5
EVENT_PROTOCOL_NEGOTIATED: Final = 6
EVENT_CID_ISSUED: Final = 7
EVENT_CID_RETIRED: Final = 8
EVENT_TERMINATED: Final = 9

_EVENT_CLASS_NAMES: Final = (
    "StreamDataReceived",
    "StreamReset",
    "StopSendingReceived",
    "DatagramFrameReceived",
    "PingAcknowledged",
    "HandshakeCompleted",
    "ProtocolNegotiated",
    "ConnectionIdIssued",
    "ConnectionIdRetired",
    "ConnectionTerminated",
)


def event_kinds_of(module: ModuleType) -> dict[type, int]:
    """Map an events module's classes to the ``EVENT_*`` kinds (by class name)."""
    return {getattr(module, name): kind for kind, name in enumerate(_EVENT_CLASS_NAMES)}


class Core(Protocol):
    """What the driver needs from a core beyond :class:`SansIOQuic`.

    ``quic`` is the sans-IO connection itself, called directly on the hot path.
    Where a core cannot do something (qh3 has no hook for consumption-driven
    credit, stream release or urgency-ordered building), the method degrades to
    the core's own behaviour as documented in ``docs/transport.md`` ("Cores").
    """

    quic: SansIOQuic
    event_kinds: Mapping[type, int]

    def send_buffered(self, stream_id: int) -> int: ...
    def gate_stream_credit(self, stream_id: int) -> None: ...
    def release_stream(self, stream_id: int) -> bool: ...
    def grant_stream_credit(self, stream_id: int, ceiling: int) -> None: ...
    def unacknowledged_stream_bytes(self) -> int: ...
    def stream_exists(self, stream_id: int) -> bool: ...
    def streams_allowed(self, unidirectional: bool) -> int: ...
    def resumption_state(self) -> tuple[bool, bool]: ...
    def datagrams_by_urgency(
        self, now: float, urgency: dict[int, int], default: int
    ) -> list[tuple[bytes, NetworkAddress]] | None: ...
    def pacing_due(self, now: float) -> bool: ...
    def acknowledge_with_next_packet(self, now: float, streams: int = 1) -> None: ...
    def note_queued(self, size: int) -> None: ...
    def peer_address(self) -> NetworkAddress | None: ...
    def peer_max_datagram_frame_size(self) -> int | None: ...
    def max_datagram_size(self) -> int: ...
    def has_peer_traffic(self) -> bool: ...
    def is_draining(self) -> bool: ...
    def is_closing_or_closed(self) -> bool: ...
    def close_reason(self) -> tuple[int, bool, str]: ...
    def is_idle_termination(self, event: Any) -> bool: ...
    def statistics(self) -> CoreStatistics: ...


class CoreFactory(Protocol):
    """Builds one core's configurations and connections (the core class itself).

    ``stream_limits`` is (bidirectional, unidirectional): how many streams of
    each kind the peer may have open at once (the MAX_STREAMS we announce);
    None keeps the core's own default.

    Configurations are the core's own objects: the endpoint passes them back
    without looking inside, except for ``server_name``.  Session tickets cross
    the seam as aioquic ``SessionTicket`` objects (the stores' and the ticket
    file's currency); a core using other ticket objects converts at the edge.
    """

    def client_configuration(
        self, config: ClientConfig, *, server_name: str | None, secrets_log: TextIO | None
    ) -> Any: ...
    def server_configuration(self, config: ServerConfig, *, secrets_log: TextIO | None) -> Any: ...
    def use_ticket(self, configuration: Any, ticket: SessionTicket | None) -> bool: ...
    def client(
        self,
        configuration: Any,
        *,
        ticket_handler: Callable[[SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> Core: ...
    def server(
        self,
        configuration: Any,
        original_destination_cid: bytes,
        retry_source_cid: bytes | None = None,
        *,
        ticket_fetcher: Callable[[bytes], SessionTicket | None] | None = None,
        ticket_handler: Callable[[SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> Core: ...
    def host_cid_length(self, configuration: Any) -> int: ...


def core_factory(name: str) -> CoreFactory:
    """The core called ``name`` in ``ClientConfig.core`` / ``ServerConfig.core``.

    Raises:
        quicframe.CoreNotInstalled: ``"qh3"`` was asked for and qh3 does not import.
        ValueError: no core has that name.
    """
    if name == "aioquic":
        return AioquicCore
    if name == "qh3":
        try:
            from ._core_qh3 import Qh3Core
        except ImportError as exc:
            raise CoreNotInstalled(
                "core='qh3' needs the qh3 package: pip install 'quicframe[qh3]'"
            ) from exc
        return Qh3Core
    raise ValueError(f"unknown QUIC core {name!r} (expected 'aioquic' or 'qh3')")


# --------------------------------------------------------------------------------------
# Endpoint helpers: the header of an untrusted datagram, Version Negotiation.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """What the endpoint needs from a datagram's first packet header."""

    destination_cid: bytes
    source_cid: bytes
    version: int | None  # None for short headers
    is_initial: bool
    is_version_negotiation: bool
    token: bytes


SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (
    QuicProtocolVersion.VERSION_1,
    QuicProtocolVersion.VERSION_2,
)


def parse_header_untrusted(data: bytes, host_cid_length: int) -> Header | None:
    """Parse the first header of a datagram from anyone; None if it is garbage."""
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=host_cid_length)
    except ValueError:  # BufferReadError is a ValueError too
        return None
    return Header(
        destination_cid=header.destination_cid,
        source_cid=header.source_cid,
        version=header.version,
        is_initial=header.packet_type == QuicPacketType.INITIAL,
        is_version_negotiation=header.packet_type == QuicPacketType.VERSION_NEGOTIATION,
        token=header.token,
    )


def version_is_supported(version: int) -> bool:
    return version in SUPPORTED_VERSIONS


def encode_version_negotiation(header: Header) -> bytes:
    """A Version Negotiation packet answering ``header`` (never answer one with one)."""
    assert not header.is_version_negotiation
    return encode_quic_version_negotiation(
        source_cid=header.destination_cid,
        destination_cid=header.source_cid,
        supported_versions=list(SUPPORTED_VERSIONS),
    )


class RetryGate:
    """Stateless address validation with Retry packets (RFC 9000 section 8.1.2).

    Tokens are sealed with a key that lives as long as the listener, bind the
    client's address and the connection IDs, and expire quickly.
    """

    def __init__(self) -> None:
        self._tokens = QuicRetryTokenHandler()

    def retry_packet(self, header: Header, address: NetworkAddress, now: float) -> bytes:
        """The Retry packet answering a token-less INITIAL."""
        assert header.version is not None
        retry_cid = os.urandom(8)
        token = self._tokens.create_token(
            address=address,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=retry_cid,
            now=now,
        )
        return encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )

    def validate(self, header: Header, address: NetworkAddress, now: float) -> bytes | None:
        """The original destination connection ID the token vouches for, or None."""
        try:
            return self._tokens.validate_token(
                address=address,
                destination_cid=header.destination_cid,
                token=header.token,
                now=now,
            )
        except ValueError:
            return None


def invalid_token_close(header: Header) -> bytes:
    """An INITIAL packet closing the connection with INVALID_TOKEN (RFC 9000 8.1.3).

    The server has no connection state for this client, so the INITIAL keys are
    derived here from the client's chosen destination connection ID.
    """
    assert header.version is not None
    keys = CryptoPair()
    keys.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(
        host_cid=header.destination_cid,
        peer_cid=header.source_cid,
        version=header.version,
        is_client=False,
        max_datagram_size=MIN_INITIAL_SIZE,
    )
    builder.start_packet(QuicPacketType.INITIAL, keys)
    frame = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY
    )
    frame.push_uint_var(QuicErrorCode.INVALID_TOKEN)  # error code
    frame.push_uint_var(QuicFrameType.PADDING)  # offending frame type: none
    frame.push_uint_var(0)  # empty reason phrase
    datagrams, _ = builder.flush()
    return datagrams[0]


def address_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------
# Consumption-driven receive credit.
# --------------------------------------------------------------------------------------


class _CreditGatedStream(_AioquicStream):
    """An aioquic stream whose receive credit and lifetime follow the application.

    aioquic raises a stream's MAX_STREAM_DATA as data *arrives* (it doubles
    ``max_stream_data_local`` once the peer has used half of it), so a reader that
    stops reading would still let the peer send without bound into our buffers.
    Instances of aioquic's own stream class are switched to this class in place.
    For them the connection's per-packet limit writer (replaced in
    :class:`AioquicCore`) never doubles anything: the limit moves only when the
    driver grants credit as the application reads (consumed + window), and never
    goes down, as RFC 9000 requires.
    """

    _qf_released: bool

    @property
    def is_finished(self) -> bool:
        # aioquic discards a finished stream and, for a peer's stream, lets the
        # peer open a new one.  Holding that back until the application let go of
        # the stream (closed it, or finished both directions) bounds the streams a
        # peer can pile up on an application that does not accept or read them.
        # aioquic asks for every stream it holds on every packet it builds: the
        # condition most often false (data not yet acknowledged) comes first.
        return self.sender.is_finished and self._qf_released and self.receiver.is_finished


# Up to this many streams, aioquic's own packet loop is cheap enough.
_FEW_STREAMS: Final = 8
# Unsent bytes of the streams shown to aioquic per datagrams_to_send call (about
# four full packets), and at most this many streams.
_WINDOW_BYTES: Final = 4800
_WINDOW_STREAMS: Final = 64


class _StreamWindow:
    """Builds a flush's packets from a window of the streams that have something to send.

    For every packet it builds, aioquic walks all of the connection's streams
    twice: once for flow-control frames, and once for data, where each stream
    with data is offered the rest of the packet even when no byte of it fits.
    With a hundred subscriptions on one connection that walk costs a hundred
    calls per 1,200-byte packet, several times the packet's own work.  Here the
    streams are sorted once per flush: those with nothing to send (and no
    frame owed) are hidden from both walks, and those with data are shown a
    window at a time, enough to fill a few packets, until the congestion window,
    the pacer or flow control stops the core or every stream has been served.
    Streams that sent go to the back of the queue, as aioquic itself does, so
    the order stays round-robin.
    """

    __slots__ = ("_connection", "backlog", "queued")

    def __init__(self, connection: QuicConnection) -> None:
        self._connection = connection
        # Worth it only when several packets are to be built: bytes handed to
        # the core since the last flush, and whether the last flush left data.
        self.queued = 0
        self.backlog = False

    def build(
        self,
        build: Callable[[QuicConnection, float], list[tuple[bytes, NetworkAddress]]],
        now: float,
    ) -> list[tuple[bytes, NetworkAddress]]:
        connection = self._connection
        queue = connection._streams_queue
        streams = connection._streams
        active: list[_AioquicStream] = []
        quiet: list[_AioquicStream] = []
        for stream in queue:
            sender = stream.sender
            if (
                (not sender.buffer_is_empty and not stream.is_blocked)
                or sender.reset_pending
                or stream.receiver.stop_pending
                or stream.is_finished
            ):
                active.append(stream)
            else:
                quiet.append(stream)
        # Streams owing a flow-control frame stay visible to the limits walk.
        owed = {
            stream_id: stream
            for stream_id, stream in streams.items()
            if stream.max_stream_data_local_sent != stream.max_stream_data_local
            or (
                stream.__class__ is not _CreditGatedStream
                and stream.max_stream_data_local
                and stream.receiver.highest_offset * 2 > stream.max_stream_data_local
            )
        }
        datagrams: list[tuple[bytes, NetworkAddress]] = []
        unserved: list[_AioquicStream] = []
        served: list[_AioquicStream] = []
        position = 0
        try:
            while True:
                window: list[_AioquicStream] = []
                size = 0
                while position < len(active) and (
                    size < _WINDOW_BYTES and len(window) < _WINDOW_STREAMS
                ):
                    stream = active[position]
                    position += 1
                    window.append(stream)
                    pending = stream.sender._pending
                    if len(pending):
                        size += pending[-1].stop - pending[0].start
                before = [_send_mark(stream) for stream in window]
                shown = dict(owed)
                for stream in window:
                    if (stream_id := stream.stream_id) is not None:
                        shown[stream_id] = stream
                connection._streams_queue = list(window)
                connection._streams = shown
                try:
                    datagrams += build(connection, now)
                finally:
                    connection._streams = streams
                    rebuilt = connection._streams_queue
                    for stream in window:
                        if (stream_id := stream.stream_id) is not None and stream_id not in shown:
                            streams.pop(stream_id, None)  # aioquic discarded it
                    marks = dict(zip(map(id, window), before, strict=True))
                    for stream in rebuilt:
                        if _send_mark(stream) != marks[id(stream)]:
                            served.append(stream)
                        else:
                            unserved.append(stream)
                owed = {}  # written by the first call
                if position >= len(active) or connection._pacing_at is not None:
                    break
                if any(
                    not stream.sender.buffer_is_empty and not stream.is_blocked
                    for stream in rebuilt
                ):
                    break  # the congestion window or flow control stopped the core
        finally:
            connection._streams_queue = unserved + active[position:] + quiet + served
        return datagrams


def _send_mark(stream: _AioquicStream) -> tuple[int, bool, bool]:
    """What changes when the core sends anything of ``stream`` in a packet."""
    sender = stream.sender
    return sender.next_offset, sender._pending_eof, sender.reset_pending


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    smoothed_rtt: float
    min_rtt: float
    latest_rtt: float
    congestion_window: int
    bytes_in_flight: int
    packets_sent: int
    packets_lost: int


def _limit_peer_streams(connection: QuicConnection, limits: tuple[int, int] | None) -> None:
    """Set the streams the peer may open at once (aioquic hard-codes 128 of each).

    Done before the connection serializes its transport parameters (at
    ``connect`` or on the first datagram); aioquic then raises the limit by one
    per stream it discards, as it does for its own default.
    """
    if limits is None:
        return
    for limit, value in zip(
        (connection._local_max_streams_bidi, connection._local_max_streams_uni),
        limits,
        strict=True,
    ):
        limit.value = limit.sent = value


class AioquicCore:
    """aioquic's ``QuicConnection`` behind the seam, plus the driver's extras.

    ``quic`` is used directly by the driver for the :class:`SansIOQuic` calls (one
    attribute lookup fewer on the hot path); the methods below are the extras.
    """

    __slots__ = (
        "_ack_ride_window",
        "_application_space",
        "_packets_lost",
        "_quic_connection",
        "_window",
        "quic",
    )

    event_kinds: Mapping[type, int] = event_kinds_of(core_events)

    def __init__(self, connection: QuicConnection) -> None:
        self._quic_connection = connection
        self.quic: SansIOQuic = connection
        self._packets_lost = 0
        self._application_space: QuicPacketSpace | None = None
        # A pending ACK rides with data once it has waited half of the ACK delay.
        self._ack_ride_window: float = connection._ack_delay / 2
        # Count real losses (congestion events) for statistics by wrapping the
        # recovery object's loss hook on this instance only.
        recovery = connection._loss
        original = recovery._on_packets_lost

        def counting_on_packets_lost(*, packets: Iterable[Any], **kwargs: Any) -> None:
            packets = list(packets)
            if kwargs.get("congestion_event", True):
                self._packets_lost += len(packets)
            original(packets=packets, **kwargs)

        recovery._on_packets_lost = counting_on_packets_lost  # type: ignore[method-assign]

        # aioquic calls its limit writer for every stream in every packet it builds.
        # For credit-gated streams only a grant made by the driver can be due, so
        # one comparison decides; other streams keep aioquic's own behaviour.
        aioquic_stream_limits = type(connection)._write_stream_limits
        logger = connection._quic_logger

        def write_stream_limits(
            builder: QuicPacketBuilder, space: QuicPacketSpace, stream: _AioquicStream
        ) -> None:
            if stream.__class__ is not _CreditGatedStream:
                aioquic_stream_limits(connection, builder, space, stream)
                return
            limit = stream.max_stream_data_local
            stream_id = stream.stream_id
            if stream.max_stream_data_local_sent == limit or stream_id is None:
                return
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=connection._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(limit)
            stream.max_stream_data_local_sent = limit
            frames = builder.quic_logger_frames
            if logger is not None and frames is not None:
                frames.append(
                    logger.encode_max_stream_data_frame(maximum=limit, stream_id=stream_id)
                )

        connection._write_stream_limits = write_stream_limits  # type: ignore[method-assign]

        # With many streams and several packets' worth to send, build packets from
        # a window of the streams (_StreamWindow).
        build = type(connection).datagrams_to_send
        self._window = window = _StreamWindow(connection)
        loss = connection._loss

        def datagrams_to_send(now: float) -> list[tuple[bytes, NetworkAddress]]:
            if len(connection._streams_queue) <= _FEW_STREAMS or (
                window.queued < _WINDOW_BYTES and not window.backlog
            ):
                datagrams = build(connection, now)
            else:
                datagrams = window.build(build, now)
            window.queued = 0
            # The pacer or a full congestion window stopped the core: data is left
            # in the streams for later flushes.
            window.backlog = connection._pacing_at is not None or (
                loss.bytes_in_flight + connection._max_datagram_size > loss.congestion_window
            )
            return datagrams

        connection.datagrams_to_send = datagrams_to_send  # type: ignore[method-assign]

    # -- the factory side (CoreFactory) -------------------------------------------

    @classmethod
    def client_configuration(
        cls, config: ClientConfig, *, server_name: str | None, secrets_log: TextIO | None
    ) -> QuicConfiguration:
        return config.to_quic_configuration(server_name=server_name, secrets_log=secrets_log)

    @classmethod
    def server_configuration(
        cls, config: ServerConfig, *, secrets_log: TextIO | None
    ) -> QuicConfiguration:
        return config.to_quic_configuration(secrets_log=secrets_log)

    @classmethod
    def use_ticket(cls, configuration: QuicConfiguration, ticket: SessionTicket | None) -> bool:
        """Resume from ``ticket``; True when it allows early (0-RTT) data."""
        configuration.session_ticket = ticket
        return ticket is not None and ticket.max_early_data_size is not None

    @classmethod
    def client(
        cls,
        configuration: QuicConfiguration,
        *,
        ticket_handler: Callable[[SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> AioquicCore:
        connection = QuicConnection(
            configuration=configuration, session_ticket_handler=ticket_handler
        )
        _limit_peer_streams(connection, stream_limits)
        return cls(connection)

    @classmethod
    def server(
        cls,
        configuration: QuicConfiguration,
        original_destination_cid: bytes,
        retry_source_cid: bytes | None = None,
        *,
        ticket_fetcher: Callable[[bytes], SessionTicket | None] | None = None,
        ticket_handler: Callable[[SessionTicket], None] | None = None,
        stream_limits: tuple[int, int] | None = None,
    ) -> AioquicCore:
        connection = QuicConnection(
            configuration=configuration,
            original_destination_connection_id=original_destination_cid,
            retry_source_connection_id=retry_source_cid,
            session_ticket_fetcher=ticket_fetcher,
            session_ticket_handler=ticket_handler,
        )
        _limit_peer_streams(connection, stream_limits)
        return cls(connection)

    @classmethod
    def host_cid_length(cls, configuration: QuicConfiguration) -> int:
        return configuration.connection_id_length

    # -- streams ------------------------------------------------------------------

    def _stream(self, stream_id: int) -> _AioquicStream | None:
        return self._quic_connection._streams.get(stream_id)

    def send_buffered(self, stream_id: int) -> int:
        """Bytes of the stream aioquic holds: not yet sent, or sent and not yet ACKed."""
        stream = self._stream(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def gate_stream_credit(self, stream_id: int) -> None:
        """Make the stream's receive credit follow consumption (see _CreditGatedStream)."""
        stream = self._stream(stream_id)
        if stream is None or isinstance(stream, _CreditGatedStream):
            return
        stream.__class__ = _CreditGatedStream
        assert isinstance(stream, _CreditGatedStream)
        stream._qf_released = False

    def release_stream(self, stream_id: int) -> bool:
        """The application is done with the stream: the core may discard it.

        Returns True when a flush should follow soon: the stream is the peer's
        and the peer has used most of the streams it may open, so the credit
        the discard frees (MAX_STREAMS) should reach it now.  Otherwise the
        discard can wait for whatever flush comes next.
        """
        stream = self._stream(stream_id)
        if not isinstance(stream, _CreditGatedStream):
            return False
        stream._qf_released = True
        connection = self._quic_connection
        if (stream_id & 1 == 0) == connection._is_client:
            return False  # ours: discarding it frees nothing the peer waits for
        if not (stream.receiver.is_finished and stream.sender.is_finished):
            return False  # not discardable yet: the flush that finishes it will
        limit = connection._stream_limit(stream_id)
        return limit.sent - limit.used <= limit.sent // 4

    def grant_stream_credit(self, stream_id: int, ceiling: int) -> None:
        """Let the peer send up to offset ``ceiling``; announced at the next flush."""
        stream = self._stream(stream_id)
        if isinstance(stream, _CreditGatedStream) and ceiling > stream.max_stream_data_local:
            stream.max_stream_data_local = ceiling

    def unacknowledged_stream_bytes(self) -> int:
        """Stream bytes written and not yet acknowledged, over streams not reset."""
        total = 0
        for stream in self._quic_connection._streams.values():
            sender = stream.sender
            if sender._reset_error_code is None and not sender.is_finished:
                total += sender._buffer_stop - sender._buffer_start
                if sender._buffer_fin is not None and not sender._acked_fin:
                    total += 1  # the FIN itself still needs its acknowledgement
        return total

    def stream_exists(self, stream_id: int) -> bool:
        return stream_id in self._quic_connection._streams

    def streams_allowed(self, unidirectional: bool) -> int:
        """How many more streams of ours the peer's MAX_STREAMS allows now.

        Before the peer's limits are known (early in a handshake) the answer is
        :data:`STREAMS_UNKNOWN`: aioquic holds such streams until they are.
        """
        connection = self._quic_connection
        if unidirectional:
            next_id = connection._local_next_stream_id_uni
            limit = connection._remote_max_streams_uni
        else:
            next_id = connection._local_next_stream_id_bidi
            limit = connection._remote_max_streams_bidi
        if limit == 0 and not connection._handshake_complete:
            return STREAMS_UNKNOWN
        return max(0, limit - next_id // 4)

    # -- handshake ------------------------------------------------------------------

    def resumption_state(self) -> tuple[bool, bool]:
        """(session resumed, early data accepted) as TLS decided them so far.

        A server knows both once it has processed the ClientHello, a flight
        before the handshake completes.
        """
        tls_context = self._quic_connection.tls
        return tls_context.session_resumed, tls_context.early_data_accepted

    # -- priorities -----------------------------------------------------------------

    def datagrams_by_urgency(
        self, now: float, urgency: dict[int, int], default: int
    ) -> list[tuple[bytes, NetworkAddress]] | None:
        """Build datagrams serving the most urgent streams' data first.

        ``urgency`` maps stream IDs to their urgency (lower is more urgent); the
        others have ``default``.  aioquic serves streams round-robin, one packet
        at a time, so a less urgent stream with data would share every burst.
        Streams of each less urgent level are held back (marked blocked, which
        aioquic honours, for the duration of the call) while a more urgent level
        is served, and released level by level while the congestion window has
        room.  Returns None when fewer than two levels have data to send: the
        plain ``datagrams_to_send`` does the same work for less.
        """
        connection = self._quic_connection
        streams = connection._streams
        for gone in [i for i in urgency if i not in streams]:
            del urgency[gone]  # the core discarded the stream
        levels: dict[int, list[_AioquicStream]] = {}
        for stream in connection._streams_queue:
            stream_id = stream.stream_id
            if (
                stream_id is not None
                and not stream.sender.buffer_is_empty
                and not stream.is_blocked
            ):
                levels.setdefault(urgency.get(stream_id, default), []).append(stream)
        if len(levels) < 2:
            return None
        order = sorted(levels)
        held = [stream for level in order[1:] for stream in levels[level]]
        loss = connection._loss
        try:
            for stream in held:
                stream.is_blocked = True
            datagrams = connection.datagrams_to_send(now)
            for level in order[1:]:
                if loss.congestion_window - loss.bytes_in_flight < connection._max_datagram_size:
                    break  # no room left: the rest waits for acknowledgements
                for stream in levels[level]:
                    stream.is_blocked = False
                datagrams += connection.datagrams_to_send(now)
        finally:
            for stream in held:
                stream.is_blocked = False
        return datagrams

    # -- pacing -------------------------------------------------------------------

    def pacing_due(self, now: float) -> bool:
        """True when the core held packets back for pacing and may send them now.

        aioquic's pacer lets a burst of a few microseconds' worth of packets out
        per ``datagrams_to_send`` call, then asks to be called again one packet
        time later; on a fast path that moment has passed before the datagrams
        are even handed to the socket.
        """
        pacing_at = self._quic_connection._pacing_at
        return pacing_at is not None and pacing_at <= now

    def note_queued(self, size: int) -> None:
        """``size`` bytes of stream data were handed to the core for the next flush."""
        self._window.queued += size

    # -- acknowledgements ---------------------------------------------------------

    def acknowledge_with_next_packet(self, now: float, streams: int = 1) -> None:
        """Let a pending 1-RTT acknowledgement ride in the packets about to be built.

        aioquic delays every acknowledgement by its 1 ms ACK delay and only writes
        an ACK frame once that delay has passed, so a reply built right after a
        request never carries the request's ACK: a separate ACK-only packet
        follows a millisecond later, costing both ends a packet and a timer
        wake-up per exchange.  The driver calls this when it is about to send
        application data anyway; an ACK that has waited at least half its delay
        then travels with that data (RFC 9000 section 13.2.1 lets a receiver
        acknowledge earlier than its delay).  A younger one keeps waiting: an
        ACK frame in every reply would make the peer process an acknowledgement
        on every request's critical path (10-20 us of aioquic's work per
        exchange here), where one ACK every few exchanges covers them all.
        When the flush carries data of several ``streams``, the ACK rides
        whatever its age: its cost is shared by those streams' calls, and with
        that much traffic an ACK-only packet would be pure overhead.
        """
        space = self._application_space
        if space is None:
            space = self._quic_connection._spaces.get(tls.Epoch.ONE_RTT)
            if space is None:
                return
            self._application_space = space
        ack_at = space.ack_at
        if (
            ack_at is not None
            and now < ack_at
            and (streams > 1 or ack_at <= now + self._ack_ride_window)
        ):
            space.ack_at = now

    # -- connection ---------------------------------------------------------------

    def peer_address(self) -> NetworkAddress | None:
        """Where the core currently sends (it follows validated peer migrations)."""
        return self._quic_connection.get_peer_address()

    def peer_max_datagram_frame_size(self) -> int | None:
        return self._quic_connection._remote_max_datagram_frame_size

    def max_datagram_size(self) -> int:
        return self._quic_connection._max_datagram_size

    def has_peer_traffic(self) -> bool:
        """True once a packet from the peer decrypted (a garbage INITIAL never does),
        or the core decided to close (it understood enough to refuse, e.g. no ALPN)."""
        connection = self._quic_connection
        return connection._close_event is not None or any(
            space.largest_received_packet >= 0 for space in connection._spaces.values()
        )

    def is_draining(self) -> bool:
        """True once the peer's CONNECTION_CLOSE was received (RFC 9000 draining)."""
        return self._quic_connection._state is QuicConnectionState.DRAINING

    def is_closing_or_closed(self) -> bool:
        return self._quic_connection._state in (
            QuicConnectionState.CLOSING,
            QuicConnectionState.DRAINING,
            QuicConnectionState.TERMINATED,
        )

    def close_reason(self) -> tuple[int, bool, str]:
        """(code, is_transport, reason) of the close in progress, if any."""
        event = self._quic_connection._close_event
        if event is None:
            return (0, True, "")
        return (event.error_code, event.frame_type is not None, event.reason_phrase)

    def is_idle_termination(self, event: core_events.ConnectionTerminated) -> bool:
        # aioquic reports its idle timeout as a local INTERNAL_ERROR with this
        # frame type and reason; nothing else produces that combination.
        return event.frame_type == QuicFrameType.PADDING and event.reason_phrase == "Idle timeout"

    def statistics(self) -> CoreStatistics:
        connection = self._quic_connection
        loss = connection._loss
        min_rtt = loss._rtt_min
        return CoreStatistics(
            smoothed_rtt=loss._rtt_smoothed,
            min_rtt=0.0 if min_rtt == float("inf") else min_rtt,
            latest_rtt=loss._rtt_latest,
            congestion_window=loss.congestion_window,
            bytes_in_flight=loss.bytes_in_flight,
            packets_sent=connection._packet_number,
            packets_lost=self._packets_lost,
        )


# --------------------------------------------------------------------------------------
# Client session tickets as plain data (the file format of SessionTicketStore(path=...)).
# --------------------------------------------------------------------------------------


def ticket_to_record(ticket: SessionTicket) -> dict[str, Any]:
    """A client session ticket as JSON-ready data; ``ticket_from_record`` reverses it."""
    return {
        "server_name": ticket.server_name,
        "ticket": ticket.ticket.hex(),
        "resumption_secret": ticket.resumption_secret.hex(),
        "cipher_suite": int(ticket.cipher_suite),
        "age_add": ticket.age_add,
        "not_valid_before": ticket.not_valid_before.isoformat(),
        "not_valid_after": ticket.not_valid_after.isoformat(),
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[kind, value.hex()] for kind, value in ticket.other_extensions],
    }


def ticket_from_record(record: object) -> SessionTicket:
    """Rebuild a ticket from ``ticket_to_record`` data.

    Raises:
        ValueError: ``record`` is not what ``ticket_to_record`` produces.
    """
    import datetime  # only the ticket file needs it

    if not isinstance(record, dict):
        raise ValueError("a ticket record is a JSON object")

    def number(value: object, name: str, bits: int) -> int:
        if type(value) is not int or not 0 <= value < 1 << bits:
            raise ValueError(f"ticket field {name!r} is not a {bits}-bit unsigned integer")
        return value

    def text(name: str) -> str:
        value = record.get(name)
        if type(value) is not str:
            raise ValueError(f"ticket field {name!r} is missing or not a string")
        return value

    def moment(name: str) -> datetime.datetime:
        value = datetime.datetime.fromisoformat(text(name))
        if value.tzinfo is None:
            raise ValueError(f"ticket field {name!r} has no time zone")
        return value

    cipher_suite = tls.CipherSuite(number(record.get("cipher_suite"), "cipher_suite", 16))
    secret = bytes.fromhex(text("resumption_secret"))
    if len(secret) != (48 if cipher_suite == tls.CipherSuite.AES_256_GCM_SHA384 else 32):
        raise ValueError("the resumption secret does not fit the cipher suite")
    label = bytes.fromhex(text("ticket"))
    if not 0 < len(label) < 1 << 16:
        raise ValueError("the ticket label is empty or too long")
    max_early_data_size = record.get("max_early_data_size")
    if max_early_data_size is not None:
        max_early_data_size = number(max_early_data_size, "max_early_data_size", 32)
    extensions = record.get("other_extensions")
    if type(extensions) is not list:
        raise ValueError("ticket field 'other_extensions' is missing or not a list")
    other_extensions: list[tuple[int, bytes]] = []
    for item in extensions:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not str:
            raise ValueError("a ticket extension is an [int, hex string] pair")
        other_extensions.append((number(item[0], "other_extensions", 16), bytes.fromhex(item[1])))
    return SessionTicket(
        age_add=number(record.get("age_add"), "age_add", 32),
        cipher_suite=cipher_suite,
        not_valid_after=moment("not_valid_after"),
        not_valid_before=moment("not_valid_before"),
        resumption_secret=secret,
        server_name=text("server_name"),
        ticket=label,
        max_early_data_size=max_early_data_size,
        other_extensions=other_extensions,
    )


def as_aioquic(core: Core) -> AioquicCore:
    """``core`` as the aioquic core (for tools that read aioquic's internals)."""
    if not isinstance(core, AioquicCore):
        raise TypeError(f"this needs the aioquic core, not {type(core).__name__}")
    return core
