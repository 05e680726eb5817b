"""Body codecs: msgpack for evolving messages, fixed layouts for zero-copy frames.

Codecs are built once and reused.  ``decode`` takes bytes or a ``memoryview`` of
the received bytes and raises :class:`RemoteProtocolError` (MALFORMED_BODY) for
anything it cannot turn into a value; ``encode`` raises
:class:`LocalProtocolError` for a value it cannot encode.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import struct
import threading
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, Protocol, TypeVar, overload

import msgpack

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frame import HEADER, HEADER_SIZE, WIRE_VERSION

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Codec(Protocol[T]):
    """Turns values into frame bodies and back."""

    def encode(self, value: T, /) -> bytes: ...

    def decode(self, data: bytes | memoryview, /) -> T: ...


def _malformed(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, code=ErrorCode.MALFORMED_BODY, operation="decode")


# --------------------------------------------------------------------------------------
# msgpack
# --------------------------------------------------------------------------------------

_unpackb: Final = msgpack.unpackb
_SIMPLE_TYPES: Final = (int, str, bytes, float, bool, list, dict, type(None))


def _value_check(annotation: Any) -> tuple[type, ...] | None:
    """The isinstance() tuple a field value must pass, or None to accept anything."""
    if annotation is Any or annotation is object:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        checks: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _value_check(arg)
            if sub is None:
                return None
            checks.extend(sub)
        return tuple(checks)
    if origin is not None:
        annotation = origin
    if annotation is float:
        return (float, int)
    if annotation is bytes:
        return (bytes, bytearray)
    if annotation is tuple:
        return (list, tuple)  # msgpack arrays decode as lists
    if annotation is typing.Literal:
        return None
    if isinstance(annotation, type) and issubclass(annotation, _SIMPLE_TYPES):
        return (annotation,)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return (dict,)
    return None


Converter = Callable[[Any], Any]


def _converters(annotation: Any) -> tuple[Converter, Converter] | None:
    """(encode, decode) functions for a field whose values hold dataclasses, or None.

    Handles a dataclass, ``X | None``, ``list[X]``, ``tuple[X, ...]`` and
    ``dict[K, X]``, nested in any way.  Schemas are looked up when a value is
    converted, so a dataclass may refer to itself.
    """
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        schema = _schema_for(annotation)
        return (lambda v: schema.to_dict(v)), (lambda v: schema.from_dict(v))
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        inner = _converters(options[0]) if len(options) == 1 else None
        if inner is None:
            return None
        enc, dec = inner
        return (lambda v: None if v is None else enc(v)), (lambda v: None if v is None else dec(v))
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence) and args:
        inner = _converters(args[0])
        if inner is None:
            return None
        enc, dec = inner
        return (lambda v: [enc(x) for x in v]), (lambda v: [dec(x) for x in v])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = _converters(args[0])
        if inner is None:
            return None
        enc, dec = inner
        return (lambda v: [enc(x) for x in v]), (lambda v: tuple(dec(x) for x in v))
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        inner = _converters(args[1])
        if inner is None:
            return None
        enc, dec = inner
        return (lambda v: {k: enc(x) for k, x in v.items()}), (
            lambda v: {k: dec(x) for k, x in v.items()}
        )
    return None


_schemas: dict[type[Any], _DataclassSchema] = {}
_schemas_lock = threading.RLock()  # schemas build the schemas of their fields


def _schema_for(cls: type[Any]) -> _DataclassSchema:
    schema = _schemas.get(cls)
    if schema is None:
        with _schemas_lock:
            schema = _schemas.get(cls) or _DataclassSchema(cls)
    return schema


class _DataclassSchema:
    """What MsgpackCodec needs to know about one dataclass, computed once.

    ``to_dict`` and ``from_dict`` are functions generated for the class (as
    ``dataclasses`` generates ``__init__``): the common case, a value of exactly the
    class and a map with exactly its fields and values of exactly the annotated
    types, runs without loops over fields.  Anything else takes the general path,
    which handles schema evolution, subclasses and errors.
    """

    __slots__ = (
        "checks",
        "cls",
        "converters",
        "field_names",
        "from_dict",
        "known",
        "required",
        "to_dict",
    )

    def __init__(self, cls: type[Any]) -> None:
        # Registered first, so that a field referring back to ``cls`` finds it;
        # withdrawn if anything below fails, so no half-built schema stays cached.
        _schemas[cls] = self
        try:
            self._build(cls)
        except BaseException:
            _schemas.pop(cls, None)
            raise

    def _build(self, cls: type[Any]) -> None:
        self.cls = cls
        self.to_dict: Callable[[Any], dict[str, Any]] = self._to_dict_general
        self.from_dict: Callable[[Any], Any] = self._from_dict_general
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        self.field_names: tuple[str, ...] = tuple(f.name for f in fields)
        self.known: frozenset[str] = frozenset(self.field_names)
        self.required: frozenset[str] = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        self.checks: dict[str, tuple[type, ...]] = {}
        self.converters: dict[str, tuple[Converter, Converter]] = {}
        for f in fields:
            annotation = hints.get(f.name, Any)
            check = _value_check(annotation)
            if check is not None:
                self.checks[f.name] = check
            converters = _converters(annotation)
            if converters is not None:
                self.converters[f.name] = converters
        self._compile()

    def _compile(self) -> None:
        # Field names are identifiers (dataclasses guarantees it), so they are safe
        # to splice into source; every other value is passed in the namespace.
        names = self.field_names
        namespace: dict[str, Any] = {
            "cls": self.cls,
            "known": self.known,
            "to_general": self._to_dict_general,
            "from_general": self._from_dict_general,
            "malformed": _malformed,
        }
        items = []
        for i, name in enumerate(names):
            if name in self.converters:
                namespace[f"enc{i}"] = self.converters[name][0]
                items.append(f"{name!r}: enc{i}(value.{name})")
            else:
                items.append(f"{name!r}: value.{name}")
        to_src = (
            "def to_dict(value):\n"
            "    if type(value) is not cls:\n"
            "        return to_general(value)\n"
            f"    return {{{', '.join(items)}}}\n"
        )
        lines = [
            "def from_dict(data):",
            f"    if type(data) is not dict or len(data) != {len(names)}:",
            "        return from_general(data)",
            "    try:",
        ]
        lines += [f"        f{i} = data[{name!r}]" for i, name in enumerate(names)]
        lines += ["    except KeyError:", "        return from_general(data)"]
        for i, name in enumerate(names):
            if name in self.checks:
                check = self.checks[name]
                if len(check) == 1:  # an identity test is cheaper than a tuple scan
                    namespace[f"t{i}"] = check[0]
                    lines.append(f"    if type(f{i}) is not t{i}:")
                else:
                    namespace[f"t{i}"] = check
                    lines.append(f"    if type(f{i}) not in t{i}:")
                lines.append("        return from_general(data)")
            if name in self.converters:
                namespace[f"dec{i}"] = self.converters[name][1]
                lines.append(f"    f{i} = dec{i}(f{i})")
        # Positional arguments are cheaper, but only for the leading parameters of
        # __init__ that are our fields, in __init__'s order (an InitVar or a
        # keyword-only field ends the run); the rest are passed by name.
        index = {name: i for i, name in enumerate(names)}
        positional: list[str] = []
        for parameter in inspect.signature(self.cls).parameters.values():
            if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD or parameter.name not in index:
                break
            positional.append(parameter.name)
        args = ", ".join(
            [f"f{index[name]}" for name in positional]
            + [f"{name}=f{i}" for i, name in enumerate(names) if name not in positional]
        )
        lines += [
            "    try:",
            f"        return cls({args})",
            "    except Exception as exc:",
            "        raise malformed(f'{cls.__name__}: {exc}') from None",
        ]
        exec(to_src, namespace)
        exec("\n".join(lines) + "\n", namespace)
        self.to_dict = namespace["to_dict"]
        self.from_dict = namespace["from_dict"]

    def _to_dict_general(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, self.cls):
            raise LocalProtocolError(
                f"expected {self.cls.__name__}, got {type(value).__name__}",
                code=ErrorCode.MALFORMED_BODY,
                operation="encode",
            )
        out = {name: getattr(value, name) for name in self.field_names}
        for name, (enc, _) in self.converters.items():
            out[name] = enc(out[name])
        return out

    def _from_dict_general(self, data: Any) -> Any:
        if type(data) is not dict:
            raise _malformed(f"{self.cls.__name__} must be a map, not {type(data).__name__}")
        if not self.known.issuperset(data):
            # Schema evolution: fields this version does not know are ignored.
            data = {k: v for k, v in data.items() if k in self.known}
        missing = self.required.difference(data)
        if missing:
            raise _malformed(f"{self.cls.__name__} lacks required fields {sorted(missing)}")
        for name, check in self.checks.items():
            if name in data and not isinstance(data[name], check):
                raise _malformed(
                    f"{self.cls.__name__}.{name}: {type(data[name]).__name__} is not allowed"
                )
        for name, (_, dec) in self.converters.items():
            if name in data:
                try:
                    data[name] = dec(data[name])
                except RemoteProtocolError:
                    raise
                except Exception as exc:  # e.g. a list where the annotation wants a map
                    raise _malformed(f"{self.cls.__name__}.{name}: {exc}") from None
        try:
            return self.cls(**data)
        except Exception as exc:  # a __post_init__ that rejects the values
            raise _malformed(f"{self.cls.__name__}: {exc}") from None


class MsgpackCodec(Generic[T]):
    """msgpack bodies, for dataclass messages or plain values.

    With a dataclass type, a value travels as a map of field name to value.
    Decoding ignores fields it does not know and fills missing optional fields with
    their defaults (schema evolution); a missing required field or a value of the
    wrong kind is MALFORMED_BODY.  Without a type, any msgpack value passes.
    """

    __slots__ = ("_packer", "_schema", "type")

    @overload
    def __init__(self: MsgpackCodec[Any], type: None = None) -> None: ...

    @overload
    def __init__(self, type: type[T]) -> None: ...

    def __init__(self, type: type[T] | None = None) -> None:  # noqa: A002
        if type is not None and not dataclasses.is_dataclass(type):
            raise TypeError(f"MsgpackCodec needs a dataclass type, not {type!r}")
        self.type = type
        self._schema = None if type is None else _schema_for(type)
        # A reused Packer avoids building one per call, as msgpack.packb does.
        self._packer = msgpack.Packer(autoreset=True, use_bin_type=True)

    def encode(self, value: T, /) -> bytes:
        schema = self._schema
        try:
            if schema is None:
                data: bytes = self._packer.pack(value)
            else:
                data = self._packer.pack(schema.to_dict(value))
            return data
        except LocalProtocolError:
            raise
        except Exception as exc:
            self._packer.reset()
            raise LocalProtocolError(
                f"cannot encode {type(value).__name__} as msgpack: {exc}",
                code=ErrorCode.MALFORMED_BODY,
                operation="encode",
            ) from None

    def decode(self, data: bytes | memoryview, /) -> T:
        try:
            # msgpack's defaults (str as str, map keys str or bytes) are the fast
            # call; plain values with other scalar keys take the second one.
            value = _unpackb(data)
        except Exception as exc:
            if self._schema is not None:
                raise _malformed(f"invalid msgpack body: {type(exc).__name__}: {exc}") from None
            try:
                value = _unpackb(data, strict_map_key=False)
            except Exception as exc2:
                raise _malformed(f"invalid msgpack body: {type(exc2).__name__}: {exc2}") from None
        schema = self._schema
        if schema is None:
            plain: T = value
            return plain
        try:
            typed: T = schema.from_dict(value)
        except RemoteProtocolError:
            raise
        except Exception as exc:  # hostile shapes: a scalar where a list is due, deep nesting
            raise _malformed(f"{schema.cls.__name__}: {type(exc).__name__}: {exc}") from None
        return typed


# --------------------------------------------------------------------------------------
# Fixed layout
# --------------------------------------------------------------------------------------

# tuple.__new__ builds a NamedTuple from a tuple without re-checking its fields.
_tuple_new: Final[Callable[[type[Any], tuple[Any, ...]], Any]] = tuple.__new__


class FixedLayoutCodec(Generic[T]):
    """A fixed-layout body, read straight out of the received bytes.

    ``cls`` is a ``NamedTuple`` whose fields are, in order, the items of the
    big-endian ``struct`` format ``layout`` (pad bytes ``x`` excepted).  Decoding
    unpacks the fields directly from a ``memoryview`` of the received bytes: the body
    is never copied.  A body longer than the layout is accepted and its tail
    ignored, so a later version may append fields; a shorter one is MALFORMED_BODY.

    ``frame_type`` lets the codec write whole frames (:meth:`encode_frame`,
    :meth:`encode_frame_into`) with one ``pack`` call, and lets
    :class:`FrameDecoder` decode runs of such frames on a fast path.
    """

    __slots__ = (
        "_body",
        "_frame",
        "_header",
        "_pack_frame",
        "cls",
        "fast_prefix",
        "fast_prefix_bytes",
        "frame_size",
        "frame_type",
        "iter_unpack_frames",
        "make",
        "pack_frame",
        "size",
    )

    def __init__(self, cls: type[T], layout: str, *, frame_type: int) -> None:
        if not layout.startswith(">"):
            raise TypeError("a fixed layout must be big-endian: start it with '>'")
        fields = getattr(cls, "_fields", None)
        if not isinstance(cls, type) or not issubclass(cls, tuple) or fields is None:
            raise TypeError(f"{cls!r} must be a NamedTuple")
        self.cls = cls
        self.frame_type = frame_type
        self._body = struct.Struct(layout)
        n_items = len(self._body.unpack(bytes(self._body.size)))
        if n_items != len(fields):
            raise TypeError(
                f"{cls.__name__} has {len(fields)} fields but layout {layout!r} has {n_items}"
            )
        self.size: int = self._body.size
        self.frame_size: int = HEADER_SIZE + self.size
        # Header and body in one struct: one pack call writes a whole frame, with
        # the header fields bound in advance.
        frame = struct.Struct(">BBHHHI" + layout[1:])
        header = (frame_type, 0, WIRE_VERSION, 0, 0, self.size)
        self._pack_frame: Callable[..., bytes] = functools.partial(frame.pack, *header)
        # Public form of the same: ``pack_frame(*fields)`` writes a whole frame from
        # the field values given positionally, with no value object built first (the
        # pub/sub layer stamps sequence numbers this way).  No error translation.
        self.pack_frame: Callable[..., bytes] = self._pack_frame
        self._frame = frame
        self._header = header
        # Decoding from the start of a frame skips the 12 header bytes in the format.
        skip_header = struct.Struct(f">{HEADER_SIZE}x" + layout[1:])
        # For runs of frames: C-level iteration over whole frames, and a C-level
        # constructor (no Python frame per value).
        self.iter_unpack_frames: Callable[[memoryview], Iterator[tuple[Any, ...]]] = (
            skip_header.iter_unpack
        )
        self.make: Callable[[tuple[Any, ...]], T] = functools.partial(_tuple_new, cls)
        # The exact header of such a frame with no metadata and no flags.
        self.fast_prefix: bytes = HEADER.pack(frame_type, 0, WIRE_VERSION, 0, 0, self.size)
        self.fast_prefix_bytes: tuple[bytes, ...] = tuple(bytes([b]) for b in self.fast_prefix)

    # ``*value`` below: T is a NamedTuple (checked in __init__), which mypy cannot
    # know for an unbounded TypeVar; a cast() would cost a call per frame.

    def _encode_error(self, exc: Exception, where: str = "") -> LocalProtocolError:
        return LocalProtocolError(
            f"cannot encode {self.cls.__name__}{where}: {exc}",
            code=ErrorCode.MALFORMED_BODY,
            frame_type=self.frame_type,
            operation="encode",
        )

    def encode(self, value: T, /) -> bytes:
        try:
            return self._body.pack(*value)  # type: ignore[misc]
        except (struct.error, TypeError) as exc:
            raise self._encode_error(exc) from None

    def decode(self, data: bytes | memoryview, /) -> T:
        if len(data) < self.size:
            raise RemoteProtocolError(
                f"{self.cls.__name__} body is {len(data)} bytes, needs {self.size}",
                code=ErrorCode.MALFORMED_BODY,
                frame_type=self.frame_type,
                operation="decode",
            )
        value: T = _tuple_new(self.cls, self._body.unpack_from(data))
        return value

    def encode_frame(self, value: T, /) -> bytes:
        """Encode a whole frame (header + body, no metadata) in one pack call."""
        try:
            return self._pack_frame(*value)  # type: ignore[misc]
        except (struct.error, TypeError) as exc:
            raise self._encode_error(exc) from None

    def encode_frame_into(self, value: T, buffer: bytearray | memoryview, offset: int) -> int:
        """Write a whole frame into a caller-supplied buffer; return the end offset."""
        try:
            self._frame.pack_into(buffer, offset, *self._header, *value)  # type: ignore[misc]
        except (struct.error, TypeError) as exc:
            raise self._encode_error(exc, f" at offset {offset}") from None
        return offset + self.frame_size


__all__ = ["Codec", "FixedLayoutCodec", "MsgpackCodec"]
