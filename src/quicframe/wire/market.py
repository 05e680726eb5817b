"""The market-data frames quicframe ships: ``MarketTick`` (0x10) and ``OrderAck`` (0x11).

Both are fixed-layout frames following market conventions: prices are int64 in
units of 1e-9 (``PRICE_SCALE``), quantities int64, timestamps uint64 nanoseconds
since the Unix epoch (event time at the source, send time at the server), and a
per-topic sequence number (u64).  Layouts are in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Final, NamedTuple

from ._frame import FrameType
from .codecs import FixedLayoutCodec

PRICE_SCALE: Final = 1_000_000_000
"""A wire price of ``p`` means ``p / PRICE_SCALE`` currency units."""


def price_to_wire(price: Decimal | str | int) -> int:
    """Scale a decimal price to the wire's int64 (exact; rounds half-even past 1e-9)."""
    return int((Decimal(price) * PRICE_SCALE).to_integral_value())


def price_from_wire(price: int) -> Decimal:
    """The exact decimal value of a wire price."""
    return Decimal(price) / PRICE_SCALE


class Side(enum.IntEnum):
    UNKNOWN = 0
    BUY = 1  # bid side of a quote, buyer-initiated trade
    SELL = 2  # ask side of a quote, seller-initiated trade


class TickKind(enum.IntEnum):
    UNSPECIFIED = 0
    TRADE = 1
    QUOTE = 2


class OrderStatus(enum.IntEnum):
    PENDING_NEW = 0
    NEW = 1
    PARTIALLY_FILLED = 2
    FILLED = 3
    CANCELED = 4
    REPLACED = 5
    REJECTED = 6
    EXPIRED = 7


class MarketTick(NamedTuple):
    """A price update for one instrument (48-byte body, frame type 0x10)."""

    seq: int
    event_time_ns: int
    send_time_ns: int
    price: int
    quantity: int
    instrument_id: int
    side: int = Side.UNKNOWN
    kind: int = TickKind.UNSPECIFIED

    @property
    def price_decimal(self) -> Decimal:
        return price_from_wire(self.price)


class OrderAck(NamedTuple):
    """An order acknowledgement (72-byte body, frame type 0x11)."""

    seq: int
    order_id: int
    client_order_id: int
    event_time_ns: int
    send_time_ns: int
    price: int
    quantity: int
    filled_quantity: int
    instrument_id: int
    side: int
    status: int

    @property
    def price_decimal(self) -> Decimal:
        return price_from_wire(self.price)

    @property
    def leaves_quantity(self) -> int:
        return self.quantity - self.filled_quantity


MARKET_TICK_LAYOUT: Final = ">QQQqqIBBxx"
ORDER_ACK_LAYOUT: Final = ">QQQQQqqqIBBxx"

MARKET_TICK_CODEC: Final = FixedLayoutCodec(
    MarketTick, MARKET_TICK_LAYOUT, frame_type=FrameType.MARKET_TICK
)
ORDER_ACK_CODEC: Final = FixedLayoutCodec(
    OrderAck, ORDER_ACK_LAYOUT, frame_type=FrameType.ORDER_ACK
)

__all__ = [
    "MARKET_TICK_CODEC",
    "ORDER_ACK_CODEC",
    "PRICE_SCALE",
    "MarketTick",
    "OrderAck",
    "OrderStatus",
    "Side",
    "TickKind",
    "price_from_wire",
    "price_to_wire",
]
