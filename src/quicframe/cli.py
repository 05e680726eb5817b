"""The ``quicframe`` command.

``quicframe demo`` runs the main job.  Today it exercises the wire layer end to
end in one process: a simulated feed (a random walk over a set of instruments)
is encoded into MarketTick and OrderAck frames, cut into random chunks as a QUIC
stream would deliver them, decoded incrementally, and checked for gaps and
duplicates by sequence number.  Later versions run it over QUIC on loopback.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from . import __version__
from .wire import (
    MARKET_TICK_CODEC,
    ORDER_ACK_CODEC,
    PRICE_SCALE,
    Frame,
    FrameDecoder,
    MarketTick,
    OrderAck,
    OrderStatus,
    Side,
    TickKind,
    default_registry,
)


def _simulate_feed(count: int, instruments: int, rng: random.Random) -> tuple[bytes, int, int]:
    """Encode ``count`` frames (one OrderAck per 50 ticks) into one buffer."""
    prices = [100 * PRICE_SCALE + rng.randrange(PRICE_SCALE) for _ in range(instruments)]
    buffer = bytearray(
        count * MARKET_TICK_CODEC.frame_size + (count // 50 + 1) * ORDER_ACK_CODEC.frame_size
    )
    offset = 0
    tick_seq = ack_seq = 0
    now = time.time_ns()
    for i in range(count):
        instrument = rng.randrange(instruments)
        prices[instrument] += rng.randrange(-5, 6) * PRICE_SCALE // 100
        tick_seq += 1
        tick = MarketTick(
            seq=tick_seq,
            event_time_ns=now + i,
            send_time_ns=now + i + 1,
            price=prices[instrument],
            quantity=rng.randrange(1, 1000),
            instrument_id=instrument,
            side=rng.choice((Side.BUY, Side.SELL)),
            kind=TickKind.QUOTE,
        )
        offset = MARKET_TICK_CODEC.encode_frame_into(tick, buffer, offset)
        if i % 50 == 49:
            ack_seq += 1
            ack = OrderAck(
                seq=ack_seq,
                order_id=ack_seq,
                client_order_id=10_000 + ack_seq,
                event_time_ns=now + i,
                send_time_ns=now + i + 1,
                price=prices[instrument],
                quantity=100,
                filled_quantity=100,
                instrument_id=instrument,
                side=Side.BUY,
                status=OrderStatus.FILLED,
            )
            offset = ORDER_ACK_CODEC.encode_frame_into(ack, buffer, offset)
    return bytes(buffer[:offset]), tick_seq, ack_seq


def demo(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    started = time.perf_counter()
    encoded, tick_count, ack_count = _simulate_feed(args.count, args.instruments, rng)
    encoded_at = time.perf_counter()

    decoder = FrameDecoder()
    last_tick = last_ack = 0
    gaps = duplicates = 0
    received = 0
    last_price: dict[int, int] = {}
    pos = 0
    while pos < len(encoded):
        step = rng.randrange(1, 4096)  # cut as a stream would deliver it
        decoder.feed(encoded[pos : pos + step])
        pos += step
        for item in decoder.drain_values(MARKET_TICK_CODEC):
            if isinstance(item, Frame):
                value = default_registry.decode(item)
                if isinstance(value, OrderAck):
                    gaps += value.seq > last_ack + 1
                    duplicates += value.seq <= last_ack
                    last_ack = max(last_ack, value.seq)
                continue
            received += 1
            gaps += item.seq > last_tick + 1
            duplicates += item.seq <= last_tick
            last_tick = max(last_tick, item.seq)
            last_price[item.instrument_id] = item.price
    decoder.feed_eof()
    finished = time.perf_counter()

    if sys.stdout.isatty():
        for instrument in sorted(last_price)[:10]:
            print(
                f"  instrument {instrument:>4}  last {last_price[instrument] / PRICE_SCALE:>12.4f}"
            )
    frames = tick_count + ack_count
    print(
        f"demo: ticks={received}/{tick_count} acks={last_ack}/{ack_count} gaps={gaps} "
        f"duplicates={duplicates} bytes={len(encoded)} "
        f"publish={(encoded_at - started) / frames * 1e9:.0f}ns/frame (simulate+encode) "
        f"decode={(finished - encoded_at) / frames * 1e9:.0f}ns/frame"
    )
    ok = received == tick_count and last_ack == ack_count and not gaps and not duplicates
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quicframe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"quicframe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p_demo = commands.add_parser("demo", help="run the main job: a simulated feed end to end")
    p_demo.add_argument("--count", type=int, default=200_000, help="ticks to publish")
    p_demo.add_argument("--instruments", type=int, default=50)
    p_demo.add_argument("--seed", type=int, default=1)
    p_demo.set_defaults(func=demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
