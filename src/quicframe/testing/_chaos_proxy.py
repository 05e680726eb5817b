"""A real UDP proxy on loopback that mistreats the packets it forwards.

:class:`ChaosProxy` listens on a loopback port and forwards each client's datagrams
to one upstream server from a socket of its own per client (so the server sees one
address per client, and replies find their way back).  Each direction runs the
packets through a :class:`LinkPolicy`: loss, duplication, reordering, delay,
blackhole windows, a bandwidth cap (token bucket) and a drop-tail queue.  Unlike
:class:`~quicframe.testing.FakeNetwork` it uses the kernel's sockets and trio's
real clock, so it also tests what the fake network cannot: socket buffers, real
scheduling and the code path of real UDP.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from dataclasses import dataclass
from typing import Any, Final, Literal, final

import trio

from ._link import Link, LinkPolicy, LinkStatistics, check_loopback
from ._timeline import BackgroundService, Timeline

__all__ = ["ChaosProxy", "ProxyStatistics"]

Address = tuple[Any, ...]
Direction = Literal["to_server", "to_client"]

_MAX_UDP_PAYLOAD: Final = 65535
_TRANSIENT_ERRORS: Final = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """A snapshot of a :class:`ChaosProxy`.

    Attributes:
        to_server: counters of the client-to-server direction.
        to_client: counters of the server-to-client direction.
        clients: client addresses seen so far (each has its own upstream socket).
        clients_refused: datagrams from new clients refused beyond ``max_clients``.
    """

    to_server: LinkStatistics
    to_client: LinkStatistics
    clients: int
    clients_refused: int


class _Session:
    """One client: its address and the upstream socket that speaks for it."""

    def __init__(self, client: Address) -> None:
        self.client = client
        self.upstream: trio.socket.SocketType | None = None
        self.scope: trio.CancelScope | None = None  # the upstream socket's reader


_Item = tuple[Link, _Session, bytes, bool]  # (link, session, payload, to the server?)


@final
class ChaosProxy(BackgroundService):
    """A UDP proxy between clients and one server, on loopback only.

    Start it with ``async with ChaosProxy(...) as proxy:`` or
    ``proxy = await nursery.start(ChaosProxy(...).run)``; either way it owns the
    nursery of its tasks.  Point clients at :attr:`address` (or :attr:`port`).

    Example::

        async with ChaosProxy(("127.0.0.1", listener.port),
                              to_server=LinkPolicy(loss=0.02),
                              to_client=LinkPolicy(loss=0.02, bandwidth=5e6)) as proxy:
            async with connect("127.0.0.1", proxy.port, config) as conn:
                ...
            print(proxy.statistics())

    The proxy measures time on trio's clock but waits for real sockets, so run it
    under the default clock, not ``autojump_clock``.

    Args:
        upstream: the server's ``(host, port)``; the host must be a loopback address.
        listen_host: the loopback address to listen on (default: ``127.0.0.1`` or
            ``::1``, following the upstream's family).
        listen_port: the port to listen on (0: any free port).
        to_server: the policy of client-to-server packets.
        to_client: the policy of server-to-client packets.
        seed: seeds both directions' random generators.
        max_clients: client addresses served at most; datagrams from further
            clients are dropped and counted.
        max_in_flight: datagrams held for delayed delivery at most (both
            directions together); beyond that new ones are dropped.
        socket_buffer: SO_RCVBUF and SO_SNDBUF asked for on every socket.

    Raises:
        ValueError: an address is not a loopback address.
    """

    def __init__(
        self,
        upstream: Address,
        *,
        listen_host: str | None = None,
        listen_port: int = 0,
        to_server: LinkPolicy | None = None,
        to_client: LinkPolicy | None = None,
        seed: int = 0,
        max_clients: int = 64,
        max_in_flight: int = 100_000,
        socket_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        upstream_host = str(upstream[0])
        check_loopback(upstream_host)
        self._family = socket.AF_INET6 if ":" in upstream_host else socket.AF_INET
        if listen_host is None:
            listen_host = "::1" if self._family == socket.AF_INET6 else "127.0.0.1"
        check_loopback(listen_host)
        if (":" in listen_host) != (self._family == socket.AF_INET6):
            raise ValueError("listen_host and the upstream host must be of one family")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._upstream: Address = (upstream_host, int(upstream[1]))
        self._listen_at: Address = (listen_host, listen_port)
        self._policies: dict[Direction, LinkPolicy] = {
            "to_server": to_server if to_server is not None else LinkPolicy(),
            "to_client": to_client if to_client is not None else LinkPolicy(),
        }
        self._links: dict[Direction, Link] = {
            direction: Link(random.Random(f"quicframe-chaos-proxy:{seed}:{direction}"))
            for direction in ("to_server", "to_client")
        }
        self._windows: dict[Direction, list[tuple[float, float]]] = {
            "to_server": [],
            "to_client": [],
        }
        self._max_clients = max_clients
        self._socket_buffer = socket_buffer
        self._timeline: Timeline[_Item] = Timeline(max_in_flight)
        self._sessions: dict[tuple[Any, ...], _Session] = {}
        self._clients_refused = 0
        self._listener: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._address: Address | None = None

    def __repr__(self) -> str:
        return f"<quicframe.testing.ChaosProxy {self._address!r} -> {self._upstream!r}>"

    # -- public -------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The address clients send to.

        Raises:
            RuntimeError: the proxy is not running.
        """
        if self._address is None:
            raise RuntimeError("the proxy is not running")
        return self._address

    @property
    def port(self) -> int:
        """The port clients send to (see :attr:`address`)."""
        return int(self.address[1])

    def set_policy(
        self, *, to_server: LinkPolicy | None = None, to_client: LinkPolicy | None = None
    ) -> None:
        """Replace a direction's policy; it applies from the next datagram on."""
        if to_server is not None:
            self._policies["to_server"] = to_server
        if to_client is not None:
            self._policies["to_client"] = to_client

    def policy(self, direction: Direction) -> LinkPolicy:
        """The policy of ``"to_server"`` or ``"to_client"`` datagrams."""
        return self._policies[direction]

    def blackhole(self, duration: float, *, to_server: bool = True, to_client: bool = True) -> None:
        """Drop every datagram of the chosen directions for ``duration`` seconds from now."""
        start = trio.current_time()
        chosen: list[Direction] = []
        if to_server:
            chosen.append("to_server")
        if to_client:
            chosen.append("to_client")
        for direction in chosen:
            self._windows[direction].append((start, start + duration))

    async def rebind(self, client: Address | None = None) -> int:
        """Give one client (or every client) a new upstream socket, as a NAT that
        changes its mapping: the server sees the client's datagrams come from a
        new port, and replies to the old port are lost.

        Args:
            client: the client's address as the proxy sees it (None: all clients).

        Returns:
            How many clients were rebound.

        Raises:
            RuntimeError: the proxy is not running.
            KeyError: ``client`` never sent anything through the proxy.

        Cancellation:
            A cancelled call may have rebound some clients.
        """
        if self._nursery is None:
            raise RuntimeError("the proxy is not running")
        if client is not None:
            sessions = [self._sessions[self._key(client)]]
        else:
            sessions = list(self._sessions.values())
        for session in sessions:
            old = session.scope
            await self._open_upstream(session)
            if old is not None:
                old.cancel()
        return len(sessions)

    def upstream_address(self, client: Address) -> Address:
        """The source address the server currently sees for ``client``.

        Raises:
            KeyError: ``client`` never sent anything through the proxy.
        """
        upstream = self._sessions[self._key(client)].upstream
        if upstream is None:
            raise KeyError(client)
        return tuple(upstream.getsockname())

    def statistics(self) -> ProxyStatistics:
        """A snapshot of the counters."""
        return ProxyStatistics(
            to_server=self._links["to_server"].statistics(),
            to_client=self._links["to_client"].statistics(),
            clients=len(self._sessions),
            clients_refused=self._clients_refused,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[ChaosProxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Forward datagrams until cancelled; ``task_status.started(self)`` once listening.

        Raises:
            OSError: the listening socket could not be bound.
            RuntimeError: the proxy is already running.

        Cancellation:
            Closes every socket; datagrams still held for delayed delivery are
            discarded.
        """
        if self._listener is not None:
            raise RuntimeError("this ChaosProxy is already running")
        listener = self._new_socket()
        try:
            await listener.bind(self._listen_at)
            self._listener = listener
            self._address = tuple(listener.getsockname())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._deliver_loop)
                task_status.started(self)
                await self._client_loop(listener)
        finally:
            self._nursery = None
            self._listener = None
            self._address = None
            self._timeline.clear()
            for session in self._sessions.values():
                if session.upstream is not None:
                    session.upstream.close()
            self._sessions.clear()
            listener.close()

    # -- internals ----------------------------------------------------------------

    def _key(self, address: Address) -> tuple[Any, ...]:
        return (str(address[0]), int(address[1]))

    def _new_socket(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(self._family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, self._socket_buffer)
        return sock

    async def _open_upstream(self, session: _Session) -> None:
        assert self._nursery is not None
        sock = self._new_socket()
        try:
            await sock.bind((self._listen_at[0], 0))
        except BaseException:
            sock.close()
            raise
        session.upstream = sock
        session.scope = await self._nursery.start(self._upstream_loop, session, sock)

    async def _client_loop(self, listener: trio.socket.SocketType) -> None:
        while True:
            try:
                data, client = await listener.recvfrom(_MAX_UDP_PAYLOAD)
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRORS:
                    continue  # an ICMP error reported late: not the proxy's concern
                raise
            key = self._key(client)
            session = self._sessions.get(key)
            if session is None:
                if len(self._sessions) >= self._max_clients:
                    self._clients_refused += 1
                    continue
                session = self._sessions[key] = _Session(tuple(client))
                await self._open_upstream(session)
            await self._admit("to_server", session, data)

    async def _upstream_loop(
        self,
        session: _Session,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[trio.CancelScope],
    ) -> None:
        upstream = self._key(self._upstream)
        with trio.CancelScope() as scope, sock:
            task_status.started(scope)
            while True:
                try:
                    data, source = await sock.recvfrom(_MAX_UDP_PAYLOAD)
                except OSError as exc:
                    if exc.errno in _TRANSIENT_ERRORS:
                        continue  # e.g. the server's port was closed a moment ago
                    raise
                if self._key(source) == upstream:  # anything else is not the server
                    await self._admit("to_client", session, data)

    async def _admit(self, direction: Direction, session: _Session, data: bytes) -> None:
        link = self._links[direction]
        now = trio.current_time()
        windows = self._windows[direction]
        if windows:
            windows[:] = [w for w in windows if w[1] > now]
        arrivals = link.admit(
            self._policies[direction],
            now,
            len(data),
            blackholed=any(start <= now for start, _ in windows),
        )
        item = (link, session, data, direction == "to_server")
        for at in arrivals:
            if at <= now:
                await self._forward(item)
            elif not self._timeline.push(at, item):
                link.dropped_queue += 1

    async def _deliver_loop(self) -> None:
        while True:
            await self._timeline.wait_due()
            for item in self._timeline.pop_due(trio.current_time()):
                await self._forward(item)

    async def _forward(self, item: _Item) -> None:
        link, session, data, to_server = item
        if to_server:
            sock, destination = session.upstream, self._upstream
        else:
            sock, destination = self._listener, session.client
        if sock is None:
            link.dropped_unroutable += 1
            return
        try:
            await sock.sendto(data, destination)
        except (OSError, trio.ClosedResourceError):
            # The socket was rebound or closed under us, or the kernel refused:
            # the datagram is lost, as on a real path.
            link.dropped_unroutable += 1
        else:
            link.delivered(len(data))
