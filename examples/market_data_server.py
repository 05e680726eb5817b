"""A simulated market-data server: quotes on ``md.ticks``, order acks on ``md.acks``.

Run it, then the subscriber in another terminal::

    python examples/market_data_server.py --rate 2000 --write-cert /tmp/md-ca.pem
    python examples/market_data_subscriber.py --ca /tmp/md-ca.pem

The feed is a random walk over ``--instruments`` instruments at ``--rate`` quotes a
second, with an order acknowledgement every 50 quotes.  Quotes are conflated per
instrument for slow subscribers (the latest price wins); order acks are never
dropped (BLOCK: a slow subscriber holds the publisher back instead) and are sent
before quotes when the link is congested.  The certificate is a throwaway one made
at start-up: use a real certificate in production.
"""

from __future__ import annotations

import argparse
import time

import trio

import quicframe
from quicframe.pubsub import Policy
from quicframe.testing import RandomWalkFeed, self_signed_certificate


def build_router(
    history: int,
) -> tuple[
    quicframe.Router, quicframe.Topic[quicframe.MarketTick], quicframe.Topic[quicframe.OrderAck]
]:
    router = quicframe.Router()
    ticks = quicframe.Topic(
        "md.ticks",
        frame=quicframe.MarketTick,
        key=lambda tick: tick.instrument_id,  # CONFLATE keeps the latest per instrument
        history=history,
        policy=Policy.CONFLATE,
        stale_after=0.5,  # a quote not sent within half a second is dropped
    )
    acks = quicframe.Topic(
        "md.acks", frame=quicframe.OrderAck, history=history, policy=Policy.BLOCK
    )
    router.add_topic(ticks)
    router.add_topic(acks)
    return router, ticks, acks


async def publish(
    feed: RandomWalkFeed,
    ticks: quicframe.Topic[quicframe.MarketTick],
    acks: quicframe.Topic[quicframe.OrderAck],
    rate: float,
) -> None:
    """Publish ``rate`` quotes a second, a millisecond's worth at a time."""
    start = trio.current_time()
    sent = 0
    while True:
        due = int((trio.current_time() - start) * rate)
        quotes = []
        while sent < due:
            sent += 1
            quotes.append(feed.next_tick(time.time_ns()))
            if sent % 50 == 0:
                await acks.publish(feed.next_ack(time.time_ns()))
        if quotes:
            await ticks.publish_many(quotes)
        await trio.sleep(0.001)


async def main(args: argparse.Namespace) -> None:
    certificate, key = self_signed_certificate()
    if args.write_cert:
        await trio.Path(args.write_cert).write_bytes(certificate)
    config = quicframe.ServerConfig(certificate=certificate, private_key=key)
    router, ticks, acks = build_router(args.history)
    feed = RandomWalkFeed(args.instruments, seed=args.seed)
    async with quicframe.open_server(router, args.host, args.port, config) as server:
        print(f"market data on {args.host}:{server.port} ({args.rate:,.0f} quotes/s)", flush=True)
        with trio.move_on_after(args.duration):
            await publish(feed, ticks, acks, args.rate)
        stats = ticks.statistics()
        print(f"published {stats.head} quotes and {acks.head} order acks", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--rate", type=float, default=2_000, help="quotes per second")
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--history", type=int, default=100_000, help="frames kept for replay")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=float("inf"), help="seconds to run")
    parser.add_argument("--write-cert", help="write the throwaway certificate here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
