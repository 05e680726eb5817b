"""quicframe's HTTP/3 gateway: the same Router served to HTTP/3 clients on the same port.

``quicframe.serve(router, host, port, config, http3=True)`` offers ALPN ``h3``
next to the native ``quicframe/1``; each connection that negotiates ``h3`` is
served here, on aioquic's sans-IO ``H3Connection`` driven over quicframe's
transport streams.  This package is imported only when a server enables HTTP/3,
so ``import quicframe`` stays light.  See ``docs/http3.md``.
"""

from ._gateway import (
    H3_ALPN as H3_ALPN,
    Gateway as Gateway,
    SubscriptionHandler as SubscriptionHandler,
    TopicRequest as TopicRequest,
    gateway_of as gateway_of,
)
from ._mapping import http_status as http_status
from ._metrics import Metrics as Metrics

__all__ = [
    "H3_ALPN",
    "Gateway",
    "Metrics",
    "SubscriptionHandler",
    "TopicRequest",
    "gateway_of",
    "http_status",
]
