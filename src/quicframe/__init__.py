"""quicframe: a trio-native SDK for a low-latency binary protocol over QUIC.

This package re-exports the public names.  ``quicframe.wire`` (frames, metadata,
codecs, errors) is sans-IO and importing it loads neither trio nor aioquic; the
trio layers are imported only when their names are first used.

The session layer: ``Router`` and ``CallContext`` describe the operations served,
``serve`` / ``open_server`` run them, and ``connect`` yields a ``Client`` whose
``call`` runs one RPC.

Market data: a ``Topic`` added to the router with ``router.add_topic`` fans its
published frames out to every subscriber; ``client.subscribe(name)`` yields a
``Subscription`` to iterate (see ``quicframe.pubsub`` for the sans-IO core).
"""

from typing import TYPE_CHECKING, Any

from ._config import (
    ClientConfig as ClientConfig,
    CoreNotInstalled as CoreNotInstalled,
    ServerConfig as ServerConfig,
    UnsupportedByCore as UnsupportedByCore,
)
from ._policy import ReconnectPolicy as ReconnectPolicy
from ._version import __version__ as __version__
from .errors import (
    ConnectionClosed as ConnectionClosed,
    DeadlineExceeded as DeadlineExceeded,
    ErrorCode as ErrorCode,
    HandshakeError as HandshakeError,
    LocalProtocolError as LocalProtocolError,
    ProtocolError as ProtocolError,
    QuicframeError as QuicframeError,
    RemoteError as RemoteError,
    RemoteProtocolError as RemoteProtocolError,
    StreamReset as StreamReset,
    TransportError as TransportError,
)
from .wire import (
    FixedLayoutCodec as FixedLayoutCodec,
    Frame as Frame,
    FrameDecoder as FrameDecoder,
    FrameRegistry as FrameRegistry,
    FrameType as FrameType,
    MarketTick as MarketTick,
    Metadata as Metadata,
    MsgpackCodec as MsgpackCodec,
    OrderAck as OrderAck,
    OrderStatus as OrderStatus,
    Side as Side,
    SlaClass as SlaClass,
    default_registry as default_registry,
)

if TYPE_CHECKING:
    from . import middleware as middleware
    from ._client import (
        Client as Client,
        ClientCallContext as ClientCallContext,
        ClientStatistics as ClientStatistics,
        Interceptor as Interceptor,
        connect as connect,
    )
    from ._nats import JetStreamBackbone as JetStreamBackbone
    from ._router import (
        CallContext as CallContext,
        CallNext as CallNext,
        Middleware as Middleware,
        Route as Route,
        Router as Router,
    )
    from ._server import (
        Authenticator as Authenticator,
        Server as Server,
        ServerStatistics as ServerStatistics,
        open_server as open_server,
        serve as serve,
    )
    from ._subscription import (
        Subscription as Subscription,
        SubscriptionStatistics as SubscriptionStatistics,
    )
    from ._topic import Topic as Topic, TopicStatistics as TopicStatistics

# Names whose modules import trio: loaded on first use, so that importing
# quicframe (or quicframe.wire) stays free of trio and aioquic.
_LAZY = {
    "Client": "._client",
    "ClientCallContext": "._client",
    "ClientStatistics": "._client",
    "Interceptor": "._client",
    "connect": "._client",
    "CallContext": "._router",
    "CallNext": "._router",
    "Middleware": "._router",
    "Route": "._router",
    "Router": "._router",
    "Authenticator": "._server",
    "Server": "._server",
    "ServerStatistics": "._server",
    "open_server": "._server",
    "serve": "._server",
    "Subscription": "._subscription",
    "SubscriptionStatistics": "._subscription",
    "Topic": "._topic",
    "TopicStatistics": "._topic",
    "JetStreamBackbone": "._nats",  # needs the nats extra when it runs
}


def __getattr__(name: str) -> Any:
    if name == "middleware":
        import importlib

        return importlib.import_module(".middleware", __name__)
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value
