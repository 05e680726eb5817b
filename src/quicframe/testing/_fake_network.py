"""An in-memory UDP network for deterministic transport tests.

:class:`FakeNetwork` hands out :class:`FakeSocket` objects that stand in for the
non-blocking UDP sockets the transport's endpoint uses (pass
``network.socket_factory`` to ``connect``/``serve``).  Packets never touch the
kernel's network stack: ``sendto`` runs the direction's :class:`LinkPolicy` (loss,
duplication, reordering, delay, blackholes, bandwidth) and either delivers into the
destination's bounded receive queue at once or schedules the delivery with the
network's own task, which sleeps on trio's clock, so ``autojump_clock`` skips the
delays.

Each fake socket owns one end of a local socket pair that is readable exactly while
its receive queue holds packets.  That is how ``trio.lowlevel.wait_readable`` works
on a fake socket with no change to the endpoint; since the byte is written
synchronously by the sender, trio sees the readiness before the clock could jump.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import ipaddress
import random
import socket
from collections import deque
from socket import socket as StdlibSocket
from types import TracebackType
from typing import Any, Final, cast, final

import trio

from ._link import Link, LinkPolicy, LinkStatistics
from ._timeline import BackgroundService, Timeline

__all__ = ["FakeNetwork", "FakeSocket"]

Address = tuple[Any, ...]
_Key = tuple[str, int]  # normalized (host, port)
_Packet = tuple[Link, bytes, _Key, _Key]  # (link, payload, source, destination)

_FIRST_EPHEMERAL_PORT: Final = 49152
_MAX_UDP_PAYLOAD: Final = 65507


@functools.lru_cache(maxsize=1024)
def _normalize_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise OSError(errno.EADDRNOTAVAIL, f"the fake network has no host {host!r}") from None
    return address.compressed


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _format(key: _Key) -> Address:
    host, port = key
    return (host, port, 0, 0) if _family_of(host) == socket.AF_INET6 else (host, port)


@final
class FakeSocket:
    """A UDP socket on a :class:`FakeNetwork`; duck-types the parts of
    :class:`socket.socket` a non-blocking datagram user needs.

    ``recvfrom`` raises :class:`BlockingIOError` when nothing is queued, like a
    non-blocking socket; wait with ``trio.lowlevel.wait_readable(sock)`` (the
    socket has a real ``fileno()`` for that purpose).  ``sendto`` never blocks.
    """

    type: Final = socket.SOCK_DGRAM
    proto: Final = 0

    def __init__(self, network: FakeNetwork, family: int = socket.AF_INET) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "the fake network carries IPv4 and IPv6 only")
        self.family = family
        self._network = network
        self._bound: _Key | None = None
        self._visible: _Key | None = None  # the source address peers see (NAT)
        self._queue: deque[tuple[bytes, _Key]] = deque()
        self._queue_limit = network.queue_packets
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._signalled = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"bound={self._bound!r}"
        return f"<quicframe.testing.FakeSocket {state}>"

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the endpoint calls ------------------------------------------------

    def fileno(self) -> int:
        """A real descriptor that is readable exactly while packets are queued."""
        return -1 if self._closed else self._reader.fileno()

    def getsockname(self) -> Address:
        """The bound address (not the NAT's view of it: see :meth:`FakeNetwork.rebind`)."""
        self._check_open()
        if self._bound is None:
            return ("0.0.0.0", 0) if self.family == socket.AF_INET else ("::", 0, 0, 0)
        return _format(self._bound)

    def bind(self, address: Address) -> None:
        """Bind to a loopback address; port 0 picks a free port."""
        self._check_open()
        if self._bound is not None:
            raise OSError(errno.EINVAL, "the socket is already bound")
        self._network._bind(self, str(address[0]), int(address[1]))

    def sendto(self, data: bytes | bytearray | memoryview, *args: Any) -> int:
        """Send one datagram: ``sendto(data, address)`` or ``sendto(data, flags, address)``."""
        self._check_open()
        if len(args) not in (1, 2):
            raise TypeError("sendto(data, [flags,] address)")
        address = args[-1]
        payload = bytes(data)
        if len(payload) > _MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, "message too long")
        host = _normalize_host(str(address[0]))
        if _family_of(host) != self.family:
            raise OSError(errno.EAFNOSUPPORT, f"cannot reach {host} from this socket's family")
        if self._bound is None:
            self._network._bind(self, "127.0.0.1" if self.family == socket.AF_INET else "::1", 0)
        assert self._visible is not None
        self._network._send(payload, self._visible, (host, int(address[1])))
        return len(payload)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Address]:
        """Take the oldest queued datagram (truncated to ``bufsize``) and its source.

        Raises:
            BlockingIOError: nothing is queued.
        """
        payload, source = self._take()
        return payload[:bufsize], _format(source)

    def recvfrom_into(
        self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0
    ) -> tuple[int, Address]:
        """Like :meth:`recvfrom`, into ``buffer``; returns the byte count and source."""
        payload, source = self._take()
        view = memoryview(buffer).cast("B")
        size = min(len(payload), nbytes or len(view), len(view))
        view[:size] = payload[:size]
        return size, _format(source)

    def setsockopt(self, *args: Any) -> None:
        """Accepted and ignored (buffer sizes are the network's ``queue_packets``)."""
        self._check_open()

    def setblocking(self, flag: bool) -> None:
        """Accepted and ignored: a fake socket never blocks."""
        self._check_open()

    def close(self) -> None:
        """Close the socket; packets still queued for it are discarded."""
        if self._closed:
            return
        self._closed = True
        self._network._unbind(self)
        self._queue.clear()
        with contextlib.suppress(RuntimeError):  # outside trio nobody can be waiting
            trio.lowlevel.notify_closing(self._reader)
        self._reader.close()
        self._writer.close()

    # -- internals ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Datagrams waiting in the receive queue."""
        return len(self._queue)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the fake socket is closed")

    def _take(self) -> tuple[bytes, _Key]:
        self._check_open()
        if not self._queue:
            raise BlockingIOError(errno.EAGAIN, "no datagram queued")
        packet = self._queue.popleft()
        if not self._queue and self._signalled:
            self._reader.recv(1)
            self._signalled = False
        return packet

    def _enqueue(self, payload: bytes, source: _Key) -> bool:
        if len(self._queue) >= self._queue_limit:
            return False
        self._queue.append((payload, source))
        if not self._signalled:
            self._writer.send(b"\x00")
            self._signalled = True
        return True


@final
class FakeNetwork(BackgroundService):
    """An in-memory UDP network of loopback addresses with seeded misbehaviour.

    Use it as an async context manager (it owns the task that delivers delayed
    packets) or run :meth:`run` with ``nursery.start``.  Every direction between
    two hosts gets its own ``random.Random`` seeded from ``seed`` and the two host
    addresses, so a test replays the same losses whatever else is on the network.

    Example::

        async with FakeNetwork(seed=1, policy=LinkPolicy(loss=0.05)) as net:
            listener = await nursery.start(
                partial(serve, "127.0.0.1", 0, config, handler,
                        socket_factory=net.socket_factory))
            async with connect("127.0.0.1", listener.port, client_config,
                               local_host="127.0.0.2",
                               socket_factory=net.socket_factory) as conn:
                ...

    Only loopback addresses exist (127.0.0.0/8 and ::1); binding anything else,
    including a wildcard address, fails with ``EADDRNOTAVAIL``.

    Args:
        seed: seeds every direction's random generator.
        policy: the policy of every direction without one of its own.
        queue_packets: receive queue of each socket, in datagrams; a datagram
            arriving at a full queue is dropped (drop-tail).
        max_in_flight: datagrams the network holds for later delivery at most;
            beyond that new delayed datagrams are dropped.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        policy: LinkPolicy | None = None,
        queue_packets: int = 1024,
        max_in_flight: int = 100_000,
    ) -> None:
        if queue_packets < 1 or max_in_flight < 1:
            raise ValueError("queue_packets and max_in_flight must be at least 1")
        self.seed = seed
        self.queue_packets = queue_packets
        self._policies: dict[tuple[str | None, str | None], LinkPolicy] = {
            (None, None): policy if policy is not None else LinkPolicy()
        }
        self._links: dict[tuple[str, str], Link] = {}
        self._windows: list[tuple[float, float, str | None, str | None]] = []
        self._sockets: dict[_Key, FakeSocket] = {}  # by bound address
        self._routes: dict[_Key, FakeSocket] = {}  # by visible address
        self._next_port: dict[str, int] = {}
        self._timeline: Timeline[_Packet] = Timeline(max_in_flight)
        self._running = False

    def __repr__(self) -> str:
        return f"<quicframe.testing.FakeNetwork seed={self.seed} sockets={len(self._sockets)}>"

    # -- running ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver delayed datagrams until cancelled.

        Cancellation:
            Datagrams still in flight stay scheduled; they are delivered if the
            network runs again, else never.
        """
        if self._running:
            raise RuntimeError("this FakeNetwork is already running")
        self._running = True
        try:
            task_status.started()
            while True:
                await self._timeline.wait_due()
                for packet in self._timeline.pop_due(trio.current_time()):
                    self._deliver(packet)
        finally:
            self._running = False

    # -- sockets ------------------------------------------------------------------

    def socket(self, family: int = socket.AF_INET) -> FakeSocket:
        """A new unbound socket (``sendto`` binds it to an ephemeral port)."""
        return FakeSocket(self, family)

    def socket_factory(
        self, family: int, address: Address, receive_buffer: int = 0, send_buffer: int = 0
    ) -> StdlibSocket:
        """Open a bound socket; pass this method as ``socket_factory=`` to the transport.

        The buffer sizes are ignored (see ``queue_packets``).  The result is a
        :class:`FakeSocket`, typed as :class:`socket.socket` for the transport's
        signature; it implements only what a non-blocking datagram user calls.
        """
        sock = FakeSocket(self, family)
        try:
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        return cast("StdlibSocket", sock)

    def _bind(self, sock: FakeSocket, host: str, port: int) -> None:
        host = _normalize_host(host)
        if _family_of(host) != sock.family:
            raise OSError(errno.EAFNOSUPPORT, f"{host} is not of the socket's family")
        if not ipaddress.ip_address(host).is_loopback:
            raise OSError(
                errno.EADDRNOTAVAIL, f"{host}: the fake network has loopback addresses only"
            )
        if port == 0:
            port = self._free_port(host)
        elif (host, port) in self._sockets or (host, port) in self._routes:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is in use")
        key = (host, port)
        sock._bound = sock._visible = key
        self._sockets[key] = sock
        self._routes[key] = sock

    def _unbind(self, sock: FakeSocket) -> None:
        if sock._bound is not None and self._sockets.get(sock._bound) is sock:
            del self._sockets[sock._bound]
        if sock._visible is not None and self._routes.get(sock._visible) is sock:
            del self._routes[sock._visible]

    def _free_port(self, host: str) -> int:
        port = self._next_port.get(host, _FIRST_EPHEMERAL_PORT)
        for _ in range(65536):
            if port > 65535:
                port = _FIRST_EPHEMERAL_PORT
            if (host, port) not in self._sockets and (host, port) not in self._routes:
                self._next_port[host] = port + 1
                return port
            port += 1
        raise OSError(errno.EADDRINUSE, f"no free port left on {host}")

    # -- misbehaviour -------------------------------------------------------------

    def set_policy(
        self, policy: LinkPolicy, *, source: str | None = None, destination: str | None = None
    ) -> None:
        """Set the policy of packets from host ``source`` to host ``destination``.

        None matches any host.  The most specific match applies: both hosts, then
        the source alone, then the destination alone, then the default.  Takes
        effect for the next packet sent.
        """
        key = (
            _normalize_host(source) if source is not None else None,
            _normalize_host(destination) if destination is not None else None,
        )
        self._policies[key] = policy

    def policy(self, source: str, destination: str) -> LinkPolicy:
        """The policy that applies from host ``source`` to host ``destination``."""
        return self._policy_for(_normalize_host(source), _normalize_host(destination))

    def _policy_for(self, source: str, destination: str) -> LinkPolicy:
        policies = self._policies
        return (
            policies.get((source, destination))
            or policies.get((source, None))
            or policies.get((None, destination))
            or policies[(None, None)]
        )

    def blackhole(
        self, duration: float, *, source: str | None = None, destination: str | None = None
    ) -> None:
        """Drop every packet from ``source`` to ``destination`` (None: any) for
        ``duration`` seconds of trio time, starting now."""
        start = trio.current_time()
        self._windows.append(
            (
                start,
                start + duration,
                _normalize_host(source) if source is not None else None,
                _normalize_host(destination) if destination is not None else None,
            )
        )

    def rebind(self, address: Address) -> Address:
        """Make the socket bound at ``address`` appear from a new port, as when a NAT
        forgets a mapping and makes another one.

        Peers see the new source address from the next datagram on; datagrams
        sent to the old one (including those in flight) are dropped as
        unroutable.  The socket's own ``getsockname()`` does not change.

        Returns:
            The new address peers see.

        Raises:
            OSError: no socket is bound at ``address``.
        """
        key = (_normalize_host(str(address[0])), int(address[1]))
        sock = self._sockets.get(key)
        if sock is None or sock._visible is None:
            raise OSError(errno.ENOENT, f"no fake socket is bound at {address!r}")
        new = (key[0], self._free_port(key[0]))
        if self._routes.get(sock._visible) is sock:
            del self._routes[sock._visible]
        sock._visible = new
        self._routes[new] = sock
        return _format(new)

    def visible_address(self, address: Address) -> Address:
        """The address peers currently see for the socket bound at ``address``."""
        key = (_normalize_host(str(address[0])), int(address[1]))
        sock = self._sockets.get(key)
        if sock is None or sock._visible is None:
            raise OSError(errno.ENOENT, f"no fake socket is bound at {address!r}")
        return _format(sock._visible)

    # -- statistics -----------------------------------------------------------------

    def statistics(
        self, *, source: str | None = None, destination: str | None = None
    ) -> LinkStatistics:
        """Counters summed over the directions from ``source`` to ``destination``
        (hosts; None: any)."""
        src = _normalize_host(source) if source is not None else None
        dst = _normalize_host(destination) if destination is not None else None
        total = LinkStatistics()
        for (link_src, link_dst), link in self._links.items():
            if (src is None or src == link_src) and (dst is None or dst == link_dst):
                total += link.statistics()
        return total

    # -- moving packets -------------------------------------------------------------

    def _link(self, source: str, destination: str) -> Link:
        link = self._links.get((source, destination))
        if link is None:
            rng = random.Random(f"quicframe-fake-network:{self.seed}:{source}>{destination}")
            link = self._links[(source, destination)] = Link(rng)
        return link

    def _blackholed(self, now: float, source: str, destination: str) -> bool:
        if not self._windows:
            return False
        self._windows = [w for w in self._windows if w[1] > now]
        return any(
            start <= now and (src is None or src == source) and (dst is None or dst == destination)
            for start, _end, src, dst in self._windows
        )

    def _send(self, payload: bytes, source: _Key, destination: _Key) -> None:
        link = self._link(source[0], destination[0])
        now = trio.current_time()
        arrivals = link.admit(
            self._policy_for(source[0], destination[0]),
            now,
            len(payload),
            blackholed=self._blackholed(now, source[0], destination[0]),
        )
        for at in arrivals:
            packet = (link, payload, source, destination)
            if at <= now:
                self._deliver(packet)
                continue
            if not self._running:
                raise RuntimeError(
                    "a delayed datagram needs a running FakeNetwork: `async with network:`"
                )
            if not self._timeline.push(at, packet):
                link.dropped_queue += 1

    def _deliver(self, packet: _Packet) -> None:
        link, payload, source, destination = packet
        target = self._routes.get(destination)
        if target is None:
            link.dropped_unroutable += 1
        elif not target._enqueue(payload, source):
            link.dropped_queue += 1
        else:
            link.delivered(len(payload))
