"""quicframe's QUIC transport: trio driving a sans-IO QUIC core over one UDP socket.

The only layer that touches sockets and clocks.  Entry points: :func:`connect` (an
async context manager yielding a :class:`Connection`) and :func:`serve` (runs until
cancelled, calls ``task_status.started(listener)``).  Streams are
:class:`trio.abc.HalfCloseableStream` objects with send backpressure and receive
credit that follows consumption.
"""

from ._connection import Connection as Connection, ConnectionStatistics as ConnectionStatistics
from ._endpoint import (
    Listener as Listener,
    ListenerStatistics as ListenerStatistics,
    SocketFactory as SocketFactory,
    connect as connect,
    serve as serve,
)
from ._errors import DatagramTooLarge as DatagramTooLarge, StreamResetByPeer as StreamResetByPeer
from ._stream import Stream as Stream, StreamStatistics as StreamStatistics
from ._tickets import (
    ServerTicketStore as ServerTicketStore,
    SessionTicketStore as SessionTicketStore,
)

__all__ = [
    "Connection",
    "ConnectionStatistics",
    "DatagramTooLarge",
    "Listener",
    "ListenerStatistics",
    "ServerTicketStore",
    "SessionTicketStore",
    "SocketFactory",
    "Stream",
    "StreamResetByPeer",
    "StreamStatistics",
    "connect",
    "serve",
]
