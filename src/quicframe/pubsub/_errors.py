"""The pub/sub layer's errors, all in the SDK's one hierarchy (``quicframe.errors``).

:class:`HistoryGap` is the "this range is gone" error of issue 5: a subclass of
:class:`~quicframe.errors.SequenceGap` (code SEQUENCE_GAP, 0x0301) that names the
topic and the first and last missing sequence numbers.  It travels in an ERROR frame
whose ``details`` carry the same three fields, so the receiving side rebuilds it
with :meth:`HistoryGap.from_remote`.

A subscriber that its DISCONNECT policy cut off gets the existing
:class:`~quicframe.errors.SlowConsumer` (SLOW_CONSUMER, 0x0300).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..wire._errors import ErrorCode, RemoteError, SequenceGap, SlowConsumer

__all__ = ["HistoryGap", "SlowConsumer", "slow_consumer"]


class HistoryGap(SequenceGap):
    """Frames ``first_missing..last_missing`` (inclusive) of ``topic`` cannot be replayed.

    Raised by a backbone's ``read`` when the bounded history no longer holds the
    start of the requested range, and by a client whose subscription asked to fail
    rather than recover with a snapshot (``on_gap="error"``).
    """

    default_code = ErrorCode.SEQUENCE_GAP

    def __init__(
        self,
        topic: str,
        first_missing: int,
        last_missing: int,
        message: str = "",
        *,
        operation: str | None = None,
    ) -> None:
        self.topic = topic
        self.first_missing = first_missing
        self.last_missing = last_missing
        super().__init__(
            message
            or f"topic {topic!r}: sequence numbers {first_missing}..{last_missing} "
            "are no longer held in the history",
            details={"topic": topic, "first_missing": first_missing, "last_missing": last_missing},
            operation=operation,
        )

    @property
    def missing(self) -> int:
        """How many sequence numbers are missing."""
        return self.last_missing - self.first_missing + 1

    @classmethod
    def from_remote(cls, error: RemoteError) -> HistoryGap | RemoteError:
        """Rebuild a :class:`HistoryGap` from a peer's SEQUENCE_GAP error; other errors
        (or a SEQUENCE_GAP without usable details) are returned unchanged."""
        if error.code != ErrorCode.SEQUENCE_GAP:
            return error
        details: Mapping[str, Any] = error.details
        topic = details.get("topic")
        first = details.get("first_missing")
        last = details.get("last_missing")
        if not (isinstance(topic, str) and type(first) is int and type(last) is int):
            return error
        return cls(topic, first, last, error.message, operation=error.operation)


def slow_consumer(topic: str, depth: int, limit: int, *, unit: str = "frames") -> SlowConsumer:
    """The error a subscriber gets when its queue overflows (DISCONNECT policy, or a
    BLOCK queue pushed past its hard limit); ``unit`` is "frames" or "bytes"."""
    return SlowConsumer(
        f"topic {topic!r}: subscriber fell behind ({depth} {unit} queued, limit {limit}) "
        "and was disconnected by its DISCONNECT policy",
        details={"topic": topic, "queued": depth, "limit": limit, "unit": unit},
    )
