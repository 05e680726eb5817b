"""A simulated market: random-walk prices and order acknowledgements (no I/O)."""

from __future__ import annotations

import random

from ..wire.market import (
    PRICE_SCALE,
    MarketTick,
    OrderAck,
    OrderStatus,
    Side,
    TickKind,
)

__all__ = ["RandomWalkFeed"]


class RandomWalkFeed:
    """Quotes for ``instruments`` instruments whose prices take random steps.

    Each :meth:`next_tick` moves one instrument, chosen at random, by up to
    ``max_step`` price units (default one cent) either way and returns its quote;
    :meth:`next_ack` fills a made-up order at an instrument's current price.  The
    values leave ``seq`` and ``send_time_ns`` at 0: a ``quicframe.Topic`` stamps
    them when it publishes.  For demos, examples and tests; seed it for a
    reproducible run.
    """

    def __init__(
        self,
        instruments: int = 50,
        *,
        seed: int | None = None,
        start_price: int = 100 * PRICE_SCALE,
        max_step: int = PRICE_SCALE // 100,
    ) -> None:
        if instruments < 1:
            raise ValueError("instruments must be at least 1")
        self._rng = random.Random(seed)
        self._max_step = max_step
        self.prices = [
            start_price + self._rng.randrange(-50, 51) * max_step for _ in range(instruments)
        ]
        self._orders = 0

    @property
    def instruments(self) -> int:
        return len(self.prices)

    def next_tick(self, now_ns: int) -> MarketTick:
        """The next quote: one instrument's price after a random step."""
        rng = self._rng
        instrument = rng.randrange(len(self.prices))
        price = max(self._max_step, self.prices[instrument] + rng.randint(-1, 1) * self._max_step)
        self.prices[instrument] = price
        return MarketTick(
            seq=0,
            event_time_ns=now_ns,
            send_time_ns=0,
            price=price,
            quantity=rng.randrange(1, 1000),
            instrument_id=instrument,
            side=Side.BUY if rng.random() < 0.5 else Side.SELL,
            kind=TickKind.QUOTE,
        )

    def next_ack(self, now_ns: int) -> OrderAck:
        """An acknowledgement that a new order for a random instrument filled."""
        rng = self._rng
        self._orders += 1
        instrument = rng.randrange(len(self.prices))
        quantity = rng.randrange(1, 100) * 100
        return OrderAck(
            seq=0,
            order_id=self._orders,
            client_order_id=1_000_000 + self._orders,
            event_time_ns=now_ns,
            send_time_ns=0,
            price=self.prices[instrument],
            quantity=quantity,
            filled_quantity=quantity,
            instrument_id=instrument,
            side=Side.BUY if rng.random() < 0.5 else Side.SELL,
            status=OrderStatus.FILLED,
        )
