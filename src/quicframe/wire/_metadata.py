"""TLV metadata: the typed key/value area between a frame's header and its body.

Each entry is ``key u16 | type u8 | length u16 | value``.  Well-known keys (request
id, deadline budget, SLA class, payload digest, trace context) have fixed types and
are validated; every other key is kept byte for byte, in order, so a frame can pass
through a peer that does not know all of its keys (forward compatibility).
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Final, NamedTuple

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError

MAX_METADATA_SIZE: Final = 0xFFFF
"""The metadata area's length is a u16 in the header."""

MAX_REQUEST_ID_SIZE: Final = 128
MAX_TRACE_CONTEXT_SIZE: Final = 512

_ENTRY: Final = struct.Struct(">HBH")
_ENTRY_SIZE: Final = _ENTRY.size
_U64: Final = struct.Struct(">Q")
_I64: Final = struct.Struct(">q")
_F64: Final = struct.Struct(">d")
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF
_UINT_FORMATS: Final = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
_INT_FORMATS: Final = {1: ">b", 2: ">h", 4: ">i", 8: ">q"}


class TlvType(enum.IntEnum):
    """The value encodings of a TLV entry.  Codes 6-255 are unassigned: entries
    with them are preserved untouched (unless the key is well-known)."""

    BYTES = 0
    STRING = 1  # UTF-8
    UINT = 2  # big-endian, 1, 2, 4 or 8 bytes (quicframe writes 8)
    INT = 3  # two's complement big-endian, 1, 2, 4 or 8 bytes (quicframe writes 8)
    BOOL = 4  # one byte, 0 or 1
    FLOAT = 5  # IEEE 754 binary64, big-endian


class MetaKey(enum.IntEnum):
    """Well-known metadata keys (0x0001-0x00FF are reserved to quicframe)."""

    REQUEST_ID = 0x0001
    DEADLINE_BUDGET_NS = 0x0002
    SLA_CLASS = 0x0003
    PAYLOAD_SHA256 = 0x0004
    TRACE_CONTEXT = 0x0005


class SlaClass(enum.IntEnum):
    """Service classes carried in ``MetaKey.SLA_CLASS``; higher is more urgent."""

    BRONZE = 0
    SILVER = 1
    GOLD = 2


MetaValue = bytes | str | int | bool | float

# Plain int constants for the TlvType codes: enum member lookups cost several
# times more on the hot paths below.


_BYTES: Final = 0
_STRING: Final = 1
_UINT: Final = 2
_INT: Final = 3
_BOOL: Final = 4
_FLOAT: Final = 5


class TlvEntry(NamedTuple):
    """One raw metadata entry; ``value`` holds the encoded value bytes."""

    key: int
    type: int
    value: bytes

    @classmethod
    def of(cls, key: int, value: MetaValue) -> TlvEntry:
        """Encode a Python value with the TLV type that fits it."""
        if isinstance(value, bool):
            return _entry((key, _BOOL, b"\x01" if value else b"\x00"))
        if isinstance(value, int):
            if value >= 0:
                if value > 0xFFFF_FFFF_FFFF_FFFF:
                    raise LocalProtocolError(
                        f"metadata key 0x{key:04x}: {value} does not fit in u64",
                        code=ErrorCode.MALFORMED_METADATA,
                    )
                return _entry((key, _UINT, _U64.pack(value)))
            if value < -(1 << 63):
                raise LocalProtocolError(
                    f"metadata key 0x{key:04x}: {value} does not fit in i64",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            return _entry((key, _INT, _I64.pack(value)))
        if isinstance(value, float):
            return _entry((key, _FLOAT, _F64.pack(value)))
        if isinstance(value, str):
            return _entry((key, _STRING, value.encode("utf-8")))
        if isinstance(value, (bytes, bytearray, memoryview)):
            return _entry((key, _BYTES, bytes(value)))
        raise LocalProtocolError(
            f"metadata key 0x{key:04x}: cannot encode a {type(value).__name__}",
            code=ErrorCode.MALFORMED_METADATA,
        )

    def decoded(self) -> MetaValue:
        """The Python value of this entry (raw ``bytes`` for unassigned types)."""
        t = self.type
        v = self.value
        if t == TlvType.UINT:
            return int.from_bytes(v, "big")
        if t == TlvType.INT:
            return int.from_bytes(v, "big", signed=True)
        if t == TlvType.STRING:
            return v.decode("utf-8")
        if t == TlvType.BOOL:
            return v == b"\x01"
        if t == TlvType.FLOAT:
            value: float = _F64.unpack(v)[0]
            return value
        return v


# TlvEntry(...) runs the Python-level __new__ NamedTuple generates; this does not.
_entry: Final[Callable[[tuple[int, int, bytes]], TlvEntry]] = functools.partial(
    tuple.__new__, TlvEntry
)
_INT_SIZES: Final = frozenset((1, 2, 4, 8))

# Well-known key -> (type, smallest and largest value length).
_WELL_KNOWN: Final[dict[int, tuple[int, int, int]]] = {
    0x0001: (_STRING, 1, MAX_REQUEST_ID_SIZE),  # REQUEST_ID
    0x0002: (_UINT, 1, 8),  # DEADLINE_BUDGET_NS
    0x0003: (_UINT, 1, 8),  # SLA_CLASS (value checked below)
    0x0004: (_BYTES, 32, 32),  # PAYLOAD_SHA256
    0x0005: (_STRING, 0, MAX_TRACE_CONTEXT_SIZE),  # TRACE_CONTEXT
}


def _bad_entry(key: int, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"metadata key 0x{key:04x}: {why}", code=ErrorCode.MALFORMED_METADATA
    )


def _check_entry_untrusted(key: int, type_: int, value: bytes) -> None:
    """Validate one entry that came from the peer; raise RemoteProtocolError if bad."""
    n = len(value)
    if key == 0:
        raise _bad_entry(key, "key 0 is reserved")
    if type_ in (_UINT, _INT):
        if n not in _INT_SIZES:
            raise _bad_entry(key, f"an integer must be 1, 2, 4 or 8 bytes, not {n}")
    elif type_ == _STRING:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_entry(key, "string is not valid UTF-8") from None
    elif type_ == _BOOL:
        if n != 1 or value[0] > 1:
            raise _bad_entry(key, "a bool must be one byte, 0 or 1")
    elif type_ == _FLOAT and n != 8:
        raise _bad_entry(key, f"a float must be 8 bytes, not {n}")
    spec = _WELL_KNOWN.get(key)
    if spec is None:
        return  # an application key, or a quicframe key from a newer version: kept as is
    expected, shortest, longest = spec
    if type_ != expected:
        raise _bad_entry(key, f"must have type {TlvType(expected).name}, not {type_}")
    if not shortest <= n <= longest:
        raise _bad_entry(key, f"{MetaKey(key).name} must be {shortest}..{longest} bytes, not {n}")
    if key == MetaKey.SLA_CLASS and int.from_bytes(value, "big") > 0xFF:
        raise _bad_entry(key, "SLA class must be 0..255")


class Metadata:
    """An immutable, ordered set of TLV entries with typed access to well-known keys.

    Unknown keys are kept as raw :class:`TlvEntry` values and re-encoded byte for
    byte.  Build one with :meth:`build`, read one with :meth:`decode_untrusted`.
    """

    __slots__ = ("_encoded", "_entries")

    def __init__(self, entries: Iterable[TlvEntry] = ()) -> None:
        self._entries: tuple[TlvEntry, ...] = tuple(entries)
        self._encoded: bytes | None = None
        seen: set[int] = set()
        size = 0
        for key, type_, value in self._entries:
            if not 0 < key <= 0xFFFF or not 0 <= type_ <= 0xFF or len(value) > 0xFFFF:
                raise LocalProtocolError(
                    f"metadata entry (0x{key:x}, {type_}) is out of range",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            if key in _WELL_KNOWN:
                if key in seen:
                    raise LocalProtocolError(
                        f"well-known metadata key {MetaKey(key).name} appears twice",
                        code=ErrorCode.MALFORMED_METADATA,
                    )
                seen.add(key)
            size += _ENTRY_SIZE + len(value)
        if size > MAX_METADATA_SIZE:
            raise LocalProtocolError(
                f"metadata of {size} bytes exceeds {MAX_METADATA_SIZE}",
                code=ErrorCode.MALFORMED_METADATA,
            )

    @classmethod
    def build(
        cls,
        *,
        request_id: str | None = None,
        deadline_budget_ns: int | None = None,
        sla_class: int | None = None,
        payload_sha256: bytes | None = None,
        trace_context: str | None = None,
        extra: Iterable[TlvEntry] = (),
    ) -> Metadata:
        """Build metadata from well-known values (in key order) plus raw ``extra`` entries."""
        entries: list[TlvEntry] = []
        add = entries.append
        if request_id is not None:
            raw = request_id.encode("utf-8")
            if not 1 <= len(raw) <= MAX_REQUEST_ID_SIZE:
                raise LocalProtocolError(
                    f"request id must be 1..{MAX_REQUEST_ID_SIZE} bytes",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            add(_entry((0x0001, _STRING, raw)))
        if deadline_budget_ns is not None:
            budget = min(max(0, deadline_budget_ns), _U64_MAX)
            add(_entry((0x0002, _UINT, _U64.pack(budget))))
        if sla_class is not None:
            if not 0 <= sla_class <= 0xFF:
                raise LocalProtocolError(
                    "SLA class must be 0..255", code=ErrorCode.MALFORMED_METADATA
                )
            add(_entry((0x0003, _UINT, _U64.pack(sla_class))))
        if payload_sha256 is not None:
            if len(payload_sha256) != 32:
                raise LocalProtocolError(
                    "a SHA-256 digest is 32 bytes", code=ErrorCode.MALFORMED_METADATA
                )
            add(_entry((0x0004, _BYTES, bytes(payload_sha256))))
        if trace_context is not None:
            raw = trace_context.encode("utf-8")
            if len(raw) > MAX_TRACE_CONTEXT_SIZE:
                raise LocalProtocolError(
                    f"trace context is limited to {MAX_TRACE_CONTEXT_SIZE} bytes",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            add(_entry((0x0005, _STRING, raw)))
        if extra:
            entries.extend(extra)
            return cls(entries)  # validates the caller's raw entries too
        # Every entry above was checked as it was made, and together they stay
        # far below the 64 KiB limit: no second pass.
        return cls._trusted(tuple(entries), None)

    @classmethod
    def _trusted(cls, entries: tuple[TlvEntry, ...], encoded: bytes | None) -> Metadata:
        self = cls.__new__(cls)
        self._entries = entries
        self._encoded = encoded
        return self

    @classmethod
    def decode_untrusted(cls, data: bytes | bytearray | memoryview) -> Metadata:
        """Parse a metadata area received from a peer.

        Raises:
            RemoteProtocolError: with code MALFORMED_METADATA for a truncated entry,
                a reserved key, a malformed value or a duplicated well-known key.
        """
        raw = bytes(data)
        end = len(raw)
        if end > MAX_METADATA_SIZE:
            raise RemoteProtocolError(
                f"metadata of {end} bytes exceeds {MAX_METADATA_SIZE}",
                code=ErrorCode.MALFORMED_METADATA,
            )
        unpack_entry = _ENTRY.unpack_from
        if end > _ENTRY_SIZE:
            # The common case, a call's metadata holding its request id alone.
            key, type_, length = unpack_entry(raw, 0)
            if (
                key == 0x0001  # REQUEST_ID
                and type_ == _STRING
                and _ENTRY_SIZE + length == end
                and length <= MAX_REQUEST_ID_SIZE
            ):
                value = raw[_ENTRY_SIZE:]
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _bad_entry(key, "string is not valid UTF-8") from None
                return cls._trusted((_entry((key, type_, value)),), raw)
        entries: list[TlvEntry] = []
        seen: set[int] = set()
        pos = 0
        while pos < end:
            if end - pos < _ENTRY_SIZE:
                raise RemoteProtocolError(
                    f"truncated metadata entry header at offset {pos}",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            key, type_, length = unpack_entry(raw, pos)
            pos += _ENTRY_SIZE
            if end - pos < length:
                raise RemoteProtocolError(
                    f"metadata key 0x{key:04x} announces {length} bytes, {end - pos} remain",
                    code=ErrorCode.MALFORMED_METADATA,
                )
            value = raw[pos : pos + length]
            pos += length
            _check_entry_untrusted(key, type_, value)
            if key in _WELL_KNOWN:
                if key in seen:
                    raise RemoteProtocolError(
                        f"well-known metadata key {MetaKey(key).name} appears twice",
                        code=ErrorCode.MALFORMED_METADATA,
                    )
                seen.add(key)
            entries.append(_entry((key, type_, value)))
        return cls._trusted(tuple(entries), raw)

    def encode(self) -> bytes:
        """The wire form: the concatenated entries (empty metadata encodes to ``b""``)."""
        encoded = self._encoded
        if encoded is None:
            pack = _ENTRY.pack
            encoded = b"".join(
                [pack(key, type_, len(value)) + value for key, type_, value in self._entries]
            )
            self._encoded = encoded
        return encoded

    @property
    def entries(self) -> tuple[TlvEntry, ...]:
        return self._entries

    def _find(self, key: int) -> TlvEntry | None:
        for entry in self._entries:
            if entry.key == key:
                return entry
        return None

    def get(self, key: int, default: MetaValue | None = None) -> MetaValue | None:
        """The decoded value of the first entry with ``key``, or ``default``."""
        entry = self._find(key)
        return default if entry is None else entry.decoded()

    def get_all(self, key: int) -> list[MetaValue]:
        """The decoded values of every entry with ``key``, in order."""
        return [entry.decoded() for entry in self._entries if entry.key == key]

    def replace(self, **values: MetaValue | None) -> Metadata:
        """A copy with the given well-known values set (None removes one).

        Keyword names are the lower-case :class:`MetaKey` names; every other entry,
        unknown ones included, keeps its place.
        """
        keys = {}
        for name, value in values.items():
            try:
                keys[int(MetaKey[name.upper()])] = value
            except KeyError:
                raise TypeError(f"unknown well-known metadata key {name!r}") from None
        built = Metadata.build(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
        fresh = {entry.key: entry for entry in built._entries}
        out = [
            fresh.pop(entry.key) if entry.key in fresh else entry
            for entry in self._entries
            if not (entry.key in keys and keys[entry.key] is None)
        ]
        out.extend(fresh.values())
        return Metadata(out)

    def call_fields(self) -> tuple[str | None, int | None, int | None, bytes | None]:
        """``(request_id, deadline_budget_ns, sla_class, payload_sha256)`` in one
        pass: what a server reads of every REQUEST."""
        request_id = budget = sla_class = digest = None
        for key, _, value in self._entries:
            if key == 0x0001:
                request_id = value.decode("utf-8")
            elif key == 0x0002:
                budget = int.from_bytes(value, "big")
            elif key == 0x0003:
                sla_class = int.from_bytes(value, "big")
            elif key == 0x0004:
                digest = value
        return request_id, budget, sla_class, digest

    @property
    def request_id(self) -> str | None:
        entry = self._find(0x0001)  # REQUEST_ID (a plain int: enum lookups cost more)
        return None if entry is None else entry.value.decode("utf-8")

    @property
    def deadline_budget_ns(self) -> int | None:
        entry = self._find(0x0002)  # DEADLINE_BUDGET_NS (a plain int: enum lookups cost more)
        return None if entry is None else int.from_bytes(entry.value, "big")

    @property
    def sla_class(self) -> int | None:
        entry = self._find(0x0003)  # SLA_CLASS (a plain int: enum lookups cost more)
        return None if entry is None else int.from_bytes(entry.value, "big")

    @property
    def payload_sha256(self) -> bytes | None:
        entry = self._find(0x0004)  # PAYLOAD_SHA256 (a plain int: enum lookups cost more)
        return None if entry is None else entry.value

    @property
    def trace_context(self) -> str | None:
        entry = self._find(0x0005)  # TRACE_CONTEXT (a plain int: enum lookups cost more)
        return None if entry is None else entry.value.decode("utf-8")

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TlvEntry]:
        return iter(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Metadata):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self._entries)

    def __repr__(self) -> str:
        parts = []
        for entry in self._entries:
            try:
                name = MetaKey(entry.key).name.lower()
            except ValueError:
                name = f"0x{entry.key:04x}"
            parts.append(f"{name}={entry.decoded()!r}")
        return f"Metadata({', '.join(parts)})"


EMPTY_METADATA: Final = Metadata()
