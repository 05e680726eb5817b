"""Tools for testing code built on quicframe's transport under bad network conditions.

- :class:`FakeNetwork`: an in-memory UDP network for deterministic tests under
  trio's ``autojump_clock``; pass ``network.socket_factory`` to
  ``quicframe.transport.connect`` and ``serve``.
- :class:`ChaosProxy`: a real UDP proxy on loopback between a client and a server.

Both mistreat packets per direction according to a :class:`LinkPolicy` (loss,
duplication, reordering, delay, blackhole windows, bandwidth and a drop-tail queue),
drawing from seeded random generators, and count what they did in
:class:`LinkStatistics`.  Only loopback addresses are accepted.
"""

from ._certificates import write_self_signed_certificate as write_self_signed_certificate
from ._chaos_proxy import ChaosProxy as ChaosProxy, ProxyStatistics as ProxyStatistics
from ._fake_network import FakeNetwork as FakeNetwork, FakeSocket as FakeSocket
from ._link import LinkPolicy as LinkPolicy, LinkStatistics as LinkStatistics

__all__ = [
    "ChaosProxy",
    "FakeNetwork",
    "FakeSocket",
    "LinkPolicy",
    "LinkStatistics",
    "ProxyStatistics",
    "write_self_signed_certificate",
]
