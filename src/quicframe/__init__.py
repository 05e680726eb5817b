"""quicframe: a trio-native SDK for a low-latency binary protocol over QUIC.

This package re-exports the public names.  ``quicframe.wire`` (frames, metadata,
codecs, errors) is sans-IO and importing it loads neither trio nor aioquic; the
trio layers are imported only when their names are first used.
"""

from ._config import ClientConfig as ClientConfig, ServerConfig as ServerConfig
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
