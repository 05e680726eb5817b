"""quicframe's wire layer: frames, TLV metadata, the frame-type registry, codecs, the
incremental decoder and the error model.

Sans-IO and dependency-light: it imports neither trio nor aioquic (a test checks),
so it can be used to implement or test the protocol anywhere.  The format is
specified in ``docs/PROTOCOL.md``.
"""

from ._decoder import (
    COPY_THRESHOLD as COPY_THRESHOLD,
    FrameDecoder as FrameDecoder,
    decode_frame as decode_frame,
)
from ._errors import (
    APPLICATION_MAX as APPLICATION_MAX,
    APPLICATION_MIN as APPLICATION_MIN,
    ErrorCode as ErrorCode,
    TransportErrorCode as TransportErrorCode,
    code_name as code_name,
    register_error_code as register_error_code,
    remote_error_class as remote_error_class,
    transport_code_name as transport_code_name,
)
from ._frame import (
    APPLICATION_RANGE as APPLICATION_RANGE,
    CONTROL_RANGE as CONTROL_RANGE,
    DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE,
    EXPERIMENTAL_RANGE as EXPERIMENTAL_RANGE,
    FLAG_COMPRESSED as FLAG_COMPRESSED,
    HARD_MAX_FRAME_SIZE as HARD_MAX_FRAME_SIZE,
    HEADER_SIZE as HEADER_SIZE,
    WIRE_VERSION as WIRE_VERSION,
    Frame as Frame,
    FrameType as FrameType,
    check_max_frame_size as check_max_frame_size,
    encode_frame as encode_frame,
    encode_frame_into as encode_frame_into,
)
from ._metadata import (
    EMPTY_METADATA as EMPTY_METADATA,
    MAX_METADATA_SIZE as MAX_METADATA_SIZE,
    Metadata as Metadata,
    MetaKey as MetaKey,
    SlaClass as SlaClass,
    TlvEntry as TlvEntry,
    TlvType as TlvType,
)
from ._registry import (
    FrameRegistry as FrameRegistry,
    FrameSpec as FrameSpec,
    default_registry as default_registry,
)
from .codecs import (
    Codec as Codec,
    FixedLayoutCodec as FixedLayoutCodec,
    MsgpackCodec as MsgpackCodec,
)
from .market import (
    MARKET_TICK_CODEC as MARKET_TICK_CODEC,
    ORDER_ACK_CODEC as ORDER_ACK_CODEC,
    PRICE_SCALE as PRICE_SCALE,
    MarketTick as MarketTick,
    OrderAck as OrderAck,
    OrderStatus as OrderStatus,
    Side as Side,
    TickKind as TickKind,
    price_from_wire as price_from_wire,
    price_to_wire as price_to_wire,
)
