"""The frame-type registry: type code <-> frame class and codec.

Each code range has an owner (``docs/PROTOCOL.md``, "Frame types"): 0x00-0x0F
protocol control (quicframe only), 0x10-0xDF application, 0xE0-0xFF experimental.
Registering a code outside the range of its kind, or a code or class twice, raises
:class:`RegistrationError` at once, which for module-level registrations means at
import time.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar

from ._errors import ErrorCode, RegistrationError, RemoteProtocolError
from ._frame import (
    APPLICATION_RANGE,
    CONTROL_RANGE,
    EXPERIMENTAL_RANGE,
    HARD_MAX_FRAME_SIZE,
    Frame,
    encode_frame,
)
from ._metadata import EMPTY_METADATA, Metadata
from .codecs import Codec, FixedLayoutCodec, MsgpackCodec
from .market import MARKET_TICK_CODEC, ORDER_ACK_CODEC, MarketTick, OrderAck

T = TypeVar("T")
Kind = Literal["application", "experimental", "control"]

_RANGES: Final[dict[str, range]] = {
    "control": CONTROL_RANGE,
    "application": APPLICATION_RANGE,
    "experimental": EXPERIMENTAL_RANGE,
}


@dataclasses.dataclass(frozen=True, slots=True)
class FrameSpec:
    """What the registry knows about one frame type."""

    frame_type: int
    cls: type[Any]
    codec: Codec[Any]
    name: str
    kind: Kind


class FrameRegistry:
    """Maps frame type codes to frame classes and their codecs.

    A registry made with ``FrameRegistry(parent)`` sees its parent's types and
    refuses to register them again; :data:`default_registry` holds the frames
    quicframe ships (MarketTick 0x10, OrderAck 0x11).
    """

    def __init__(self, parent: FrameRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._parent = parent
        self._by_type: dict[int, FrameSpec] = {}
        self._by_class: dict[type[Any], FrameSpec] = {}

    def register(
        self,
        frame_type: int,
        cls: type[T],
        codec: Codec[T] | None = None,
        *,
        name: str | None = None,
        kind: Kind = "application",
    ) -> FrameSpec:
        """Register ``cls`` under ``frame_type`` with ``codec`` (default: msgpack).

        Raises:
            RegistrationError: the code is outside the range of ``kind`` (control
                codes belong to quicframe), or the code or class is registered already.
        """
        allowed = _RANGES.get(kind)
        if allowed is None:
            raise RegistrationError(f"unknown frame kind {kind!r}")
        label: str = name or getattr(cls, "__name__", None) or repr(cls)
        if frame_type not in allowed:
            raise RegistrationError(
                f"cannot register {label} as frame type 0x{frame_type:02x}: {kind} frame "
                f"types are 0x{allowed.start:02x}-0x{allowed.stop - 1:02x}"
            )
        if codec is None:
            codec = MsgpackCodec(cls)
        if isinstance(codec, FixedLayoutCodec) and codec.frame_type != frame_type:
            raise RegistrationError(
                f"{label}: its FixedLayoutCodec was built for frame type "
                f"0x{codec.frame_type:02x}, not 0x{frame_type:02x}"
            )
        spec = FrameSpec(frame_type, cls, codec, label, kind)
        with self._lock:
            existing = self.spec_for_type(frame_type)
            if existing is not None:
                raise RegistrationError(
                    f"cannot register {label} as frame type 0x{frame_type:02x}: "
                    f"already registered to {existing.name}"
                )
            if self.spec_for_class(cls) is not None:
                raise RegistrationError(f"{label} is already registered as a frame class")
            self._by_type[frame_type] = spec
            self._by_class[cls] = spec
        return spec

    def frame(self, frame_type: int, *, kind: Kind = "application") -> Callable[[type[T]], type[T]]:
        """Class decorator: register a dataclass (msgpack codec) under ``frame_type``."""

        def decorate(cls: type[T]) -> type[T]:
            self.register(frame_type, cls, kind=kind)
            return cls

        return decorate

    def spec_for_type(self, frame_type: int) -> FrameSpec | None:
        spec = self._by_type.get(frame_type)
        if spec is None and self._parent is not None:
            return self._parent.spec_for_type(frame_type)
        return spec

    def spec_for_class(self, cls: type[Any]) -> FrameSpec | None:
        spec = self._by_class.get(cls)
        if spec is None and self._parent is not None:
            return self._parent.spec_for_class(cls)
        return spec

    def __iter__(self) -> Iterator[FrameSpec]:
        seen = dict(self._by_type)
        if self._parent is not None:
            for spec in self._parent:
                seen.setdefault(spec.frame_type, spec)
        return iter(sorted(seen.values(), key=lambda s: s.frame_type))

    def encode(
        self,
        value: object,
        *,
        opcode: int = 0,
        metadata: Metadata = EMPTY_METADATA,
        compress: bool = False,
        max_frame_size: int = HARD_MAX_FRAME_SIZE,
    ) -> bytes:
        """Encode a registered value as a whole frame.

        Raises:
            RegistrationError: the value's class is not registered.
            LocalProtocolError: the value cannot be encoded or is too large.
        """
        spec = self.spec_for_class(type(value))
        if spec is None:
            raise RegistrationError(f"{type(value).__name__} is not a registered frame class")
        codec = spec.codec
        if isinstance(codec, FixedLayoutCodec) and not metadata and not compress and not opcode:
            return codec.encode_frame(value)
        return encode_frame(
            spec.frame_type,
            codec.encode(value),
            opcode=opcode,
            metadata=metadata,
            compress=compress,
            max_frame_size=max_frame_size,
        )

    def decode(self, frame: Frame) -> object:
        """Decode a frame's body with its registered codec.

        Raises:
            RemoteProtocolError: UNKNOWN_FRAME_TYPE, or MALFORMED_BODY from the codec.
        """
        spec = self.spec_for_type(frame.type)
        if spec is None:
            raise RemoteProtocolError(
                f"no frame class is registered for type 0x{frame.type:02x}",
                code=ErrorCode.UNKNOWN_FRAME_TYPE,
                frame_type=frame.type,
                operation="decode",
            )
        try:
            return spec.codec.decode(frame.body)
        except RemoteProtocolError as exc:
            exc.frame_type = frame.type
            raise


default_registry: Final = FrameRegistry()
default_registry.register(0x10, MarketTick, MARKET_TICK_CODEC)
default_registry.register(0x11, OrderAck, ORDER_ACK_CODEC)

__all__ = ["FrameRegistry", "FrameSpec", "default_registry"]
