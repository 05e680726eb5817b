"""Tools for testing code built on quicframe's transport under bad network conditions.

- :class:`FakeNetwork`: an in-memory UDP network for deterministic tests under
  trio's ``autojump_clock``; pass ``network.socket_factory`` to
  ``quicframe.transport.connect`` and ``serve``.
- :class:`ChaosProxy`: a real UDP proxy on loopback between a client and a server.
- :class:`RandomWalkFeed`: simulated quotes and order acknowledgements to publish.
- :func:`self_signed_certificate` / :func:`write_self_signed_certificate`: throwaway
  certificates for tests and development servers.
- :func:`nats_server_binary`: the ``nats-server`` to start for tests of the NATS
  JetStream backbone.

Both mistreat packets per direction according to a :class:`LinkPolicy` (loss,
duplication, reordering, delay, blackhole windows, bandwidth and a drop-tail queue),
drawing from seeded random generators, and count what they did in
:class:`LinkStatistics`.  Only loopback addresses are accepted.
"""

from ._certificates import (
    self_signed_certificate as self_signed_certificate,
    write_self_signed_certificate as write_self_signed_certificate,
)
from ._chaos_proxy import ChaosProxy as ChaosProxy, ProxyStatistics as ProxyStatistics
from ._fake_network import FakeNetwork as FakeNetwork, FakeSocket as FakeSocket
from ._feed import RandomWalkFeed as RandomWalkFeed
from ._link import LinkPolicy as LinkPolicy, LinkStatistics as LinkStatistics
from ._nats import nats_server_binary as nats_server_binary

__all__ = [
    "ChaosProxy",
    "FakeNetwork",
    "FakeSocket",
    "LinkPolicy",
    "LinkStatistics",
    "ProxyStatistics",
    "RandomWalkFeed",
    "nats_server_binary",
    "self_signed_certificate",
    "write_self_signed_certificate",
]
