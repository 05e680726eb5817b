"""Subscribe to a quicframe market-data server and show a live table.

::

    python examples/market_data_subscriber.py --ca /tmp/md-ca.pem [--port 4433]

Shows the last price, size and sequence number per instrument, and below it the
counters of both subscriptions: values received, gaps (sequence jumps: conflated
or stale quotes; order acks never have any), duplicates and send-to-receive
latency.  If the connection drops, the client reconnects and the subscriptions
resume from their last sequence number by themselves.
"""

from __future__ import annotations

import argparse
import sys

import trio

import quicframe
from quicframe.wire import PRICE_SCALE


def table(last: dict[int, quicframe.MarketTick], rows: int) -> list[str]:
    lines = [f"{'instrument':>10} {'last':>12} {'size':>6} {'seq':>10}"]
    for instrument in sorted(last)[:rows]:
        tick = last[instrument]
        price = tick.price / PRICE_SCALE
        lines.append(f"{instrument:>10} {price:>12.4f} {tick.quantity:>6} {tick.seq:>10}")
    return lines


def counters(name: str, stats: quicframe.SubscriptionStatistics) -> str:
    p50 = "-" if stats.latency_p50_ns is None else f"{stats.latency_p50_ns / 1000:.0f}us"
    p99 = "-" if stats.latency_p99_ns is None else f"{stats.latency_p99_ns / 1000:.0f}us"
    return (
        f"{name}: received={stats.received} gaps={stats.gaps} duplicates={stats.duplicates} "
        f"resubscribes={stats.resubscribes} latency p50={p50} p99={p99}"
    )


async def main(args: argparse.Namespace) -> None:
    config = quicframe.ClientConfig(
        ca_file=args.ca,
        server_name="localhost",
        reconnect=quicframe.ReconnectPolicy(),
    )
    last: dict[int, quicframe.MarketTick] = {}
    drawn = 0
    async with (
        quicframe.connect(args.host, args.port, config) as client,
        client.subscribe("md.ticks") as ticks,
        client.subscribe("md.acks") as acks,
        trio.open_nursery() as nursery,
    ):

        async def take_ticks() -> None:
            async for tick in ticks:
                last[tick.instrument_id] = tick

        async def take_acks() -> None:
            async for _ack in acks:
                pass  # an order system would match these to its orders

        nursery.start_soon(take_ticks)
        nursery.start_soon(take_acks)
        with trio.move_on_after(args.duration):
            while True:
                await trio.sleep(0.5)
                lines = [
                    *table(last, args.rows),
                    counters("md.ticks", ticks.stats()),
                    counters("md.acks", acks.stats()),
                ]
                if sys.stdout.isatty():
                    if drawn:
                        sys.stdout.write(f"\x1b[{drawn}F")
                    sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in lines))
                    drawn = len(lines)
                else:
                    print(lines[-2], flush=True)
        nursery.cancel_scope.cancel()
    print(counters("md.ticks", ticks.stats()))
    print(counters("md.acks", acks.stats()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--ca", required=True, help="the server's certificate (PEM)")
    parser.add_argument("--rows", type=int, default=15, help="instruments shown")
    parser.add_argument("--duration", type=float, default=float("inf"), help="seconds to run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
