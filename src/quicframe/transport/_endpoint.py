"""The endpoint: the one UDP socket, its receive loop, routing, and connect/serve.

An :class:`Endpoint` owns a non-blocking UDP socket and a nursery.  Its receive
loop drains every datagram the kernel holds (up to a bound) before yielding, routes
each by destination connection ID to its connection's inbox, and wakes that
connection's driver once per batch, so a driver feeds all of a batch before it
flushes.  When listening, it also answers unknown versions with Version Negotiation
and creates connections from INITIAL datagrams, within the configured limits.

Sending goes through :meth:`Endpoint.send_datagrams`: a direct non-blocking
``sendto`` and, only when the kernel buffer is full, a wait for writability under a
lock (trio lets one task at a time wait on a socket for writing).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TextIO, final

import trio

from .._config import ClientConfig, ServerConfig
from .._util import unwrap_single_exception
from ..errors import ErrorCode, HandshakeTimeout
from ._connection import Connection
from ._core import (
    MIN_INITIAL_SIZE,
    Core,
    CoreFactory,
    NetworkAddress,
    RetryGate,
    address_is_loopback,
    core_factory,
    encode_version_negotiation,
    invalid_token_close,
    now,
    parse_header_untrusted,
    version_is_supported,
)
from ._tickets import ServerTicketStore

__all__ = ["Endpoint", "Listener", "ListenerStatistics", "connect", "serve"]

logger = logging.getLogger("quicframe.transport")

Handler = Callable[[Connection], Awaitable[object]]

_RECEIVE_BATCH: Final = 64  # datagrams drained per wake-up before yielding
_MAX_UDP_PAYLOAD: Final = 65535
# How long a graceful close waits for the peer to acknowledge outstanding stream data
# when the library closes on the user's behalf (leaving ``connect``, a handler returning).
GRACEFUL_CLOSE_BOUND: Final = 5.0


def _open_udp_socket(
    family: int, address: NetworkAddress, receive_buffer: int, send_buffer: int
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Best effort: the kernel caps these at net.core.rmem_max / wmem_max.
        # Bigger buffers absorb bursts that would otherwise be dropped (and then
        # cost QUIC a loss recovery and a congestion-window cut).
        for option, size in ((socket.SO_RCVBUF, receive_buffer), (socket.SO_SNDBUF, send_buffer)):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, size)
        if family == socket.AF_INET6 and address[0] in ("::", ""):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


SocketFactory = Callable[[int, NetworkAddress, int, int], socket.socket]
"""Opens the endpoint's UDP socket: ``(family, local address, SO_RCVBUF, SO_SNDBUF)``.

It returns a bound, non-blocking datagram socket.  The default opens a real one;
``quicframe.testing.FakeNetwork.socket_factory`` returns an in-memory stand-in with
the same methods (``fileno``, ``getsockname``, ``recvfrom``, ``sendto``, ``close``).
"""


async def _resolve(host: str, port: int) -> tuple[int, NetworkAddress]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, address = infos[0]
    return int(family), address


@contextlib.contextmanager
def _open_secrets_log(target: object) -> Iterator[TextIO | None]:
    if isinstance(target, str | os.PathLike):
        with open(target, "a", encoding="ascii") as file:
            yield file
    else:
        yield None


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """A snapshot of a listener.

    Attributes:
        connections: connections currently served.
        datagrams_dropped: datagrams dropped unanswered (garbage, unknown connection
            IDs, INITIALs that are too small or over a limit).
        version_negotiations_sent: Version Negotiation packets sent.
        retries_sent: Retry packets sent (``ServerConfig.retry``).
        invalid_tokens: INITIALs refused with INVALID_TOKEN.
    """

    connections: int
    datagrams_dropped: int
    version_negotiations_sent: int
    retries_sent: int
    invalid_tokens: int


@final
class Listener:
    """What :func:`serve` hands to ``task_status.started``: the bound address."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    @property
    def address(self) -> NetworkAddress:
        """The bound socket address."""
        return self._endpoint.local_address

    @property
    def port(self) -> int:
        """The bound UDP port (useful after binding port 0)."""
        return int(self._endpoint.local_address[1])

    @property
    def connection_count(self) -> int:
        """Connections currently served."""
        return self._endpoint.connection_count

    def statistics(self) -> ListenerStatistics:
        """A snapshot of the listener's counters."""
        endpoint = self._endpoint
        return ListenerStatistics(
            connections=endpoint.connection_count,
            datagrams_dropped=endpoint.datagrams_dropped,
            version_negotiations_sent=endpoint.version_negotiations_sent,
            retries_sent=endpoint.retries_sent,
            invalid_tokens=endpoint.invalid_tokens,
        )

    @contextlib.asynccontextmanager
    async def connect(
        self,
        host: str,
        port: int,
        config: ClientConfig | None = None,
        *,
        early_data: bool = False,
    ) -> AsyncIterator[Connection]:
        """Dial a server from this listener's own socket (same port, same endpoint).

        Works like :func:`connect` (same handshake timeout, closing and errors);
        the connection's driver runs in the listener's nursery, so it ends when
        ``serve`` is cancelled.  Such a connection cannot ``migrate()``.

        Raises:
            OSError: ``host`` resolves to another address family than the
                listener's socket and cannot be mapped onto it.

        Cancellation:
            As for :func:`connect`.
        """
        config = config if config is not None else ClientConfig()
        endpoint = self._endpoint
        with unwrap_single_exception():
            family, address = await _resolve(host, port)
            address = _to_socket_family(endpoint.family, family, address)
            factory, quic_config, early, ticket = _prepare_client(config, host, None, early_data)
            connection = endpoint.dial(address, config, factory, quic_config)
            async with _established(connection, host, port, config, early, ticket) as established:
                yield established

    def __repr__(self) -> str:
        return f"<quicframe.transport.Listener address={self.address!r}>"


def _to_socket_family(
    socket_family: int, address_family: int, address: NetworkAddress
) -> NetworkAddress:
    if socket_family == address_family:
        return address
    if socket_family == socket.AF_INET6 and address_family == socket.AF_INET:
        # A dual-stack IPv6 socket reaches IPv4 peers through mapped addresses.
        return (f"::ffff:{address[0]}", address[1], 0, 0)
    raise OSError(
        f"cannot reach {address[0]} from an IPv{4 if socket_family == socket.AF_INET else 6} socket"
    )


@final
class Endpoint:
    """One UDP socket serving a listener and/or dialled connections.  Internal."""

    def __init__(
        self,
        sock: socket.socket,
        nursery: trio.Nursery,
        *,
        server_config: ServerConfig | None = None,
        server_factory: CoreFactory | None = None,
        server_quic_config: Any = None,
        handler: Handler | None = None,
        receive_buffer: int = 0,
        send_buffer: int = 0,
        tickets: ServerTicketStore | None = None,
        socket_factory: SocketFactory = _open_udp_socket,
    ) -> None:
        self._sock = sock
        self._socket_factory = socket_factory
        self._tickets = tickets
        self._nursery = nursery
        self._receive_buffer = receive_buffer
        self._send_buffer = send_buffer
        self._send_lock = trio.Lock()
        self.local_address: NetworkAddress = sock.getsockname()
        self._routes: dict[bytes, Connection] = {}
        self._connections: set[Connection] = set()
        self._server_config = server_config
        self._server_factory = server_factory
        self._server_quic_config = server_quic_config
        self._handler = handler
        self._cid_length = (
            server_factory.host_cid_length(server_quic_config) if server_factory is not None else 8
        )
        self._per_address: dict[str, int] = {}
        # Server connections whose handshake is in progress -> their source host,
        # and the count per host (ServerConfig.max_handshakes_per_address).
        self._handshaking: dict[Connection, str] = {}
        self._handshaking_per_address: dict[str, int] = {}
        self._unproven: list[Connection] = []  # created in this batch, no task yet
        self._retry = RetryGate() if server_config is not None and server_config.retry else None
        self.datagrams_dropped = 0
        self.version_negotiations_sent = 0
        self.retries_sent = 0
        self.invalid_tokens = 0

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- receiving ------------------------------------------------------------------

    @property
    def family(self) -> int:
        return int(self._sock.family)

    @property
    def can_rebind(self) -> bool:
        """True for a client's private endpoint (one connection, no listener)."""
        return self._server_quic_config is None and len(self._connections) == 1

    def rebind(self) -> None:
        """Swap in a new socket on a fresh port of the same local address."""
        old = self._sock
        host = self.local_address[0]
        address = (host, 0, *self.local_address[2:])
        self._sock = self._socket_factory(
            old.family, address, self._receive_buffer, self._send_buffer
        )
        self.local_address = self._sock.getsockname()
        # Wake the receive loop off the old socket before closing it.
        trio.lowlevel.notify_closing(old)
        old.close()

    async def receive_loop(self) -> None:
        fed: dict[Connection, None] = {}  # connections fed in this batch, in order
        while True:
            sock = self._sock
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                if sock is self._sock:
                    raise
                continue  # rebind() replaced the socket: listen on the new one
            t = now()
            for _ in range(_RECEIVE_BATCH):
                try:
                    data, address = sock.recvfrom(_MAX_UDP_PAYLOAD)
                except BlockingIOError:
                    break
                except OSError:
                    # e.g. an ICMP error surfaced on some platforms: not ours to handle.
                    continue
                connection = self._dispatch(data, address)
                if connection is not None:
                    connection._feed(data, address, t)
                    fed[connection] = None
            # The whole batch is fed before any connection drains events or flushes.
            for connection in fed:
                connection._after_feed(t)
            fed.clear()
            if self._unproven:
                self._start_proven_connections()

    def _dispatch(self, data: bytes, address: NetworkAddress) -> Connection | None:
        """The connection a datagram belongs to, creating it for a valid INITIAL."""
        if data and data[0] & 0xC0 == 0x40:
            # Short header (fixed bit set): the destination connection ID follows
            # the first byte.  Route the common case without a full header parse;
            # the core authenticates the packet anyway.
            connection = self._routes.get(data[1 : 1 + self._cid_length])
            if connection is not None:
                return connection
        header = parse_header_untrusted(data, self._cid_length)
        if header is None:
            self.datagrams_dropped += 1
            return None
        connection = self._routes.get(header.destination_cid)
        if connection is not None:
            return connection
        if self._server_quic_config is None or header.version is None:
            self.datagrams_dropped += 1
            return None
        if not version_is_supported(header.version):
            # Never answer a Version Negotiation packet with another one: two servers
            # could be made to bounce them at each other forever.
            if not header.is_version_negotiation and len(data) >= MIN_INITIAL_SIZE:
                self._send_now(encode_version_negotiation(header), address)
                self.version_negotiations_sent += 1
            return None
        if not header.is_initial or len(data) < MIN_INITIAL_SIZE:
            self.datagrams_dropped += 1
            return None
        if not self._admit(address):
            self.datagrams_dropped += 1
            return None
        original_cid = header.destination_cid
        retry_cid = None
        if self._retry is not None:
            if not header.token:
                self._send_now(self._retry.retry_packet(header, address, now()), address)
                self.retries_sent += 1
                return None
            validated = self._retry.validate(header, address, now())
            if validated is None:
                self._send_now(invalid_token_close(header), address)
                self.invalid_tokens += 1
                return None
            original_cid, retry_cid = validated, header.destination_cid
        return self._create_server_connection(original_cid, address, retry_cid)

    def _admit(self, address: NetworkAddress) -> bool:
        config = self._server_config
        assert config is not None
        host = address[0]
        return (
            len(self._connections) < config.max_connections
            and len(self._handshaking) < config.max_handshakes
            and self._per_address.get(host, 0) < config.max_connections_per_address
            and self._handshaking_per_address.get(host, 0) < config.max_handshakes_per_address
        )

    def _create_server_connection(
        self, original_cid: bytes, address: NetworkAddress, retry_cid: bytes | None
    ) -> Connection:
        config = self._server_config
        assert config is not None
        assert self._server_factory is not None
        tickets = self._tickets
        core = self._server_factory.server(
            self._server_quic_config,
            original_cid,
            retry_cid,
            ticket_fetcher=tickets.pop if tickets is not None else None,
            ticket_handler=tickets.add if tickets is not None else None,
            stream_limits=(config.max_bidi_streams, config.max_uni_streams),
        )
        connection = self._new_connection(core, config, is_client=False, peer=address)
        # Route the client's first destination ID too: its later INITIALs use it.
        first_cid = retry_cid if retry_cid is not None else original_cid
        self._add_cid(connection, first_cid)
        host = address[0]
        self._per_address[host] = self._per_address.get(host, 0) + 1
        self._handshaking[connection] = host
        self._handshaking_per_address[host] = self._handshaking_per_address.get(host, 0) + 1
        self._unproven.append(connection)
        return connection

    def _start_proven_connections(self) -> None:
        # A connection gets a task only once its first datagram decrypted (or
        # provoked a close): an INITIAL of random bytes with a valid-looking header
        # costs no more than the attempt to decrypt it, and leaves no state behind.
        for connection in self._unproven:
            if connection._core.has_peer_traffic():
                self._nursery.start_soon(self._serve_connection, connection)
            else:
                self.datagrams_dropped += 1
                self._connection_finished(connection)
        self._unproven.clear()

    def _new_connection(
        self,
        core: Core,
        config: ClientConfig | ServerConfig,
        *,
        is_client: bool,
        peer: NetworkAddress,
    ) -> Connection:
        connection = Connection(
            self,
            core,
            is_client=is_client,
            peer_address=peer,
            stream_high_water_mark=config.stream_high_water_mark,
            stream_receive_window=config.stream_receive_window,
            keepalive_interval=config.keepalive_interval,
            datagram_queue_size=config.datagram_queue_size,
            max_early_data=config.max_early_data if isinstance(config, ServerConfig) else None,
        )
        self._connections.add(connection)
        self._add_cid(connection, core.quic.host_cid)
        return connection

    async def _serve_connection(self, connection: Connection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection._run)
            with trio.move_on_after(_server_handshake_timeout(self._server_config)):
                await connection._wait_handshake_quietly(or_early_data=True)
            if not (connection._handshake_done.is_set() or connection._early_data_arrived.is_set()):
                # Dead or too slow: drop it without waking anyone.
                nursery.cancel_scope.cancel()
                return
            if self._handler is None:
                return
            try:
                await self._handler(connection)
            except Exception:
                logger.exception("connection handler failed; closing its connection")
                with trio.CancelScope(shield=True):
                    await connection.aclose(ErrorCode.INTERNAL, "handler failed")
            else:
                with trio.move_on_after(GRACEFUL_CLOSE_BOUND):
                    await connection.aclose()

    # -- dialling -------------------------------------------------------------------

    def dial(
        self,
        address: NetworkAddress,
        config: ClientConfig,
        factory: CoreFactory,
        quic_config: Any,
    ) -> Connection:
        store = config.session_tickets
        core = factory.client(
            quic_config,
            ticket_handler=store.add if store is not None else None,
            stream_limits=(config.max_bidi_streams, config.max_uni_streams),
        )
        connection = self._new_connection(core, config, is_client=True, peer=address)
        core.quic.connect(address, now())
        connection._wake()
        self._nursery.start_soon(connection._run)
        return connection

    # -- routing table, kept current from the core's events ----------------------------

    def _add_cid(self, connection: Connection, cid: bytes) -> None:
        self._routes[cid] = connection
        connection._host_cids.add(cid)

    def _remove_cid(self, connection: Connection, cid: bytes) -> None:
        if self._routes.get(cid) is connection:
            del self._routes[cid]
        connection._host_cids.discard(cid)

    def _handshake_finished(self, connection: Connection) -> None:
        host = self._handshaking.pop(connection, None)
        if host is not None:
            left = self._handshaking_per_address[host] - 1
            if left:
                self._handshaking_per_address[host] = left
            else:
                del self._handshaking_per_address[host]

    def _connection_finished(self, connection: Connection) -> None:
        for cid in connection._host_cids:
            if self._routes.get(cid) is connection:
                del self._routes[cid]
        connection._host_cids.clear()
        self._handshake_finished(connection)
        if connection in self._connections:
            self._connections.discard(connection)
            if not connection.is_client:
                host = connection.remote_address[0]
                left = self._per_address.get(host, 1) - 1
                if left:
                    self._per_address[host] = left
                else:
                    self._per_address.pop(host, None)

    # -- sending --------------------------------------------------------------------

    def _send_now(self, data: bytes, address: NetworkAddress) -> None:
        """Send without waiting; a full socket buffer drops the datagram."""
        with contextlib.suppress(OSError):
            self._sock.sendto(data, address)

    async def send_datagrams(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        sock = self._sock
        for data, address in datagrams:
            try:
                sock.sendto(data, address)
            except BlockingIOError:
                await self._send_blocked(data, address)
            except OSError as exc:
                # Unreachable peers and the like: QUIC treats it as a lost packet.
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED):
                    logger.debug("sendto failed: %s", exc)

    async def _send_blocked(self, data: bytes, address: NetworkAddress) -> None:
        async with self._send_lock:
            while True:
                sock = self._sock
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return  # rebind() closed it under us: the datagram is lost
                try:
                    sock.sendto(data, address)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                return

    def try_send(
        self, datagrams: list[tuple[bytes, NetworkAddress]]
    ) -> list[tuple[bytes, NetworkAddress]]:
        """Send what the socket takes now; return the rest (from the first refusal on)."""
        if self._send_lock.locked():
            return datagrams  # a blocked send is in progress: keep the order
        sock = self._sock
        for index, (data, address) in enumerate(datagrams):
            try:
                sock.sendto(data, address)
            except BlockingIOError:
                return datagrams[index:]
            except OSError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED):
                    logger.debug("sendto failed: %s", exc)
        return []

    def send_now(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        """Send without waiting (shutdown path); a full socket buffer drops datagrams."""
        for data, address in datagrams:
            self._send_now(data, address)


def _server_handshake_timeout(config: ServerConfig | None) -> float:
    # A server gives a handshake as long as the idle timeout, at most 30 s.
    return min(config.idle_timeout if config is not None else 30.0, 30.0)


# ------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(
    host: str,
    port: int,
    config: ClientConfig | None = None,
    *,
    local_host: str | None = None,
    early_data: bool = False,
    socket_factory: SocketFactory | None = None,
) -> AsyncIterator[Connection]:
    """Dial a QUIC server and yield the established :class:`Connection`.

    The context manager owns a UDP socket and the connection's driver task; leaving
    it closes the connection (application code 0) and the socket.  Errors come out
    as single exceptions, never as an exception group from the hidden nursery.

    Args:
        host: the server's name or address; also the TLS server name unless
            ``config.server_name`` is set.
        port: the server's UDP port.
        config: client settings (default ``ClientConfig()``: verification on).
        local_host: address to bind locally (default: loopback for a loopback
            server, else the wildcard address of the server's family).
        early_data: when ``config.session_tickets`` holds a ticket for the server
            that allows it, yield before the handshake completes so the first
            writes travel as 0-RTT data.  0-RTT data can be replayed by an attacker:
            send only idempotent requests this way.  Check
            ``Connection.early_data_accepted`` once ``handshake_complete``.
        socket_factory: opens the UDP socket (default: a real one); tests pass
            ``quicframe.testing.FakeNetwork.socket_factory`` here.

    Yields:
        The connection, once the handshake completed.

    Raises:
        quicframe.errors.HandshakeTimeout: no handshake within
            ``config.handshake_timeout`` seconds.
        quicframe.errors.HandshakeError: the handshake failed (e.g. the
            certificate did not verify, or no common ALPN protocol).
        OSError: the host could not be resolved or the socket not bound.

    Cancellation:
        Cancelling during the handshake abandons it.  Leaving the body normally
        closes gracefully (waiting, at most 5 s, for outstanding stream data to
        be acknowledged); leaving it by an exception or cancellation closes at
        once with ``ErrorCode.INTERNAL`` or ``ErrorCode.CANCELLED``.
    """
    config = config if config is not None else ClientConfig()
    family, address = await _resolve(host, port)
    if local_host is None:
        if address_is_loopback(address[0]):
            local_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        else:
            local_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    _, local_address = await _resolve(local_host, 0)
    open_socket = socket_factory if socket_factory is not None else _open_udp_socket
    sock = open_socket(
        family, local_address, config.socket_receive_buffer, config.socket_send_buffer
    )
    with (
        contextlib.ExitStack() as stack,
        _open_secrets_log(config.secrets_log_file) as secrets_log,
        unwrap_single_exception(),
    ):
        stack.callback(sock.close)
        factory, quic_config, early, ticket = _prepare_client(config, host, secrets_log, early_data)
        async with trio.open_nursery() as nursery:
            endpoint = Endpoint(
                sock,
                nursery,
                receive_buffer=config.socket_receive_buffer,
                send_buffer=config.socket_send_buffer,
                socket_factory=open_socket,
            )
            nursery.start_soon(endpoint.receive_loop)
            connection = endpoint.dial(address, config, factory, quic_config)
            # migrate() may swap the socket: close whichever is current at the end.
            stack.callback(lambda: endpoint._sock.close())
            try:
                async with _established(
                    connection, host, port, config, early, ticket
                ) as established:
                    yield established
            finally:
                nursery.cancel_scope.cancel()


def _prepare_client(
    config: ClientConfig, host: str, secrets_log: TextIO | None, early_data: bool
) -> tuple[CoreFactory, Any, bool, Any]:
    """The core factory, the QUIC configuration, whether to yield for 0-RTT, and the
    session ticket taken from the store (None: a full handshake)."""
    config.check_core()
    factory = core_factory(config.core)
    quic_config = factory.client_configuration(config, server_name=host, secrets_log=secrets_log)
    early = False
    ticket = None
    if config.session_tickets is not None and quic_config.server_name is not None:
        ticket = config.session_tickets.pop(quic_config.server_name)
        early = factory.use_ticket(quic_config, ticket) and early_data
    return factory, quic_config, early, ticket


@contextlib.asynccontextmanager
async def _established(
    connection: Connection,
    host: str,
    port: int,
    config: ClientConfig,
    early: bool,
    ticket: Any,
) -> AsyncIterator[Connection]:
    """Wait for the handshake (or watch it, for 0-RTT), yield, then close.

    A ``ticket`` taken from the store goes back into it when the handshake never
    completed: the server cannot have consumed it, so the next attempt may resume
    (and send 0-RTT data) from it.
    """
    try:
        async with _handshake_then_close(connection, host, port, config, early) as established:
            yield established
    finally:
        if ticket is not None and not connection.handshake_complete:
            assert config.session_tickets is not None
            config.session_tickets.add(ticket)


@contextlib.asynccontextmanager
async def _handshake_then_close(
    connection: Connection, host: str, port: int, config: ClientConfig, early: bool
) -> AsyncIterator[Connection]:
    async with trio.open_nursery() as nursery:

        async def complete_handshake() -> None:
            with trio.move_on_after(config.handshake_timeout) as handshake_scope:
                await connection._wait_handshake()
            if handshake_scope.cancelled_caught:
                raise HandshakeTimeout(
                    f"no QUIC handshake with {host}:{port} within {config.handshake_timeout} s"
                )

        if early:
            # 0-RTT: the body runs during the handshake; a failed handshake still
            # ends it, from this watcher task.
            nursery.start_soon(complete_handshake)
        else:
            await complete_handshake()
        try:
            yield connection
        except BaseException as exc:
            # The body failed: close at once, no waiting for acknowledgements.
            code = ErrorCode.CANCELLED if isinstance(exc, trio.Cancelled) else ErrorCode.INTERNAL
            with trio.CancelScope(shield=True), trio.move_on_after(GRACEFUL_CLOSE_BOUND):
                await connection.aclose(code)
            raise
        else:
            with trio.CancelScope(shield=True), trio.move_on_after(GRACEFUL_CLOSE_BOUND):
                await connection.aclose()
        finally:
            nursery.cancel_scope.cancel()


async def serve(
    host: str,
    port: int,
    config: ServerConfig,
    handler: Handler | None,
    *,
    socket_factory: SocketFactory | None = None,
    task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for QUIC connections on ``host``:``port`` until cancelled.

    Each connection whose handshake completes is passed to ``handler`` in a task
    of its own; the connection is closed when the handler returns (with code 0) or
    raises (with ``ErrorCode.INTERNAL``; the exception is logged, serving goes on).
    Use ``Connection.accept_stream()`` in the handler to take the peer's streams.

    Args:
        host: local address to bind (``"::"`` accepts IPv4 and IPv6).
        port: local UDP port; 0 picks a free one (see ``Listener.port``).
        config: server settings, including the certificate.
        handler: ``async def handler(connection)``, or None to accept connections
            without running anything.
        socket_factory: opens the UDP socket (default: a real one); tests pass
            ``quicframe.testing.FakeNetwork.socket_factory`` here.
        task_status: receives the :class:`Listener` once the socket is bound.

    Raises:
        OSError: the address could not be bound.

    Cancellation:
        Cancelling ``serve`` sends CONNECTION_CLOSE (``GOING_AWAY``) on every
        connection, without waiting, and closes the socket.
    """
    family, address = await _resolve(host, port)
    open_socket = socket_factory if socket_factory is not None else _open_udp_socket
    sock = open_socket(family, address, config.socket_receive_buffer, config.socket_send_buffer)
    with (
        contextlib.closing(sock),
        _open_secrets_log(config.secrets_log_file) as secrets_log,
        unwrap_single_exception(),
    ):
        config.check_core()
        factory = core_factory(config.core)
        quic_config = factory.server_configuration(config, secrets_log=secrets_log)
        tickets = config.session_tickets
        if tickets is None:
            tickets = ServerTicketStore()
        async with trio.open_nursery() as nursery:
            endpoint = Endpoint(
                sock,
                nursery,
                server_config=config,
                server_factory=factory,
                server_quic_config=quic_config,
                handler=handler,
                receive_buffer=config.socket_receive_buffer,
                send_buffer=config.socket_send_buffer,
                tickets=tickets,
                socket_factory=open_socket,
            )
            nursery.start_soon(endpoint.receive_loop)
            task_status.started(Listener(endpoint))
            # Runs until cancelled; each driver sends CONNECTION_CLOSE (GOING_AWAY)
            # as it is cancelled.
