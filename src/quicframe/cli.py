"""The ``quicframe`` command: a market-data demo, a development server and client tools.

``quicframe demo`` is the main job: a server, a simulated feed and a subscriber in
one process, talking QUIC over loopback with a certificate made in memory.  It
shows a live view while it runs and ends with one summary line.  The other
commands: ``serve`` (the same feed and an echo RPC, for other processes to use),
``subscribe`` and ``call`` (clients for any quicframe server), ``cert`` (write a
development certificate) and ``bench`` (a quick loopback benchmark; the full
comparisons live in the repository's ``bench/`` folder).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__

if TYPE_CHECKING:
    import trio

    from . import Client, Router, Topic
    from .testing import RandomWalkFeed
    from .wire import MarketTick, OrderAck

TICKS = "md.ticks"
ACKS = "md.acks"
ECHO = 0x0001  # the echo RPC the development server offers


# ------------------------------------------------------------------------------------
# The market: topics, feed and router shared by ``demo`` and ``serve``
# ------------------------------------------------------------------------------------


def market_router(history: int = 100_000) -> tuple[Router, Topic[MarketTick], Topic[OrderAck]]:
    """A router with the ``md.ticks`` and ``md.acks`` topics and an echo RPC."""
    import quicframe

    router = quicframe.Router()
    ticks = quicframe.Topic(
        TICKS, frame=quicframe.MarketTick, key=lambda t: t.instrument_id, history=history
    )
    acks = quicframe.Topic(ACKS, frame=quicframe.OrderAck, history=history)
    router.add_topic(ticks)
    router.add_topic(acks)

    @router.rpc(ECHO, idempotent=True)
    async def echo(request: object, ctx: quicframe.CallContext) -> object:
        return request

    return router, ticks, acks


_MAX_FEED_STEPS = 10**11  # a bound for every feed loop: about three years of steps


async def run_feed(
    feed: RandomWalkFeed,
    ticks: Topic[MarketTick],
    acks: Topic[OrderAck],
    *,
    rate: float,
    ack_every: int = 50,
    duration: float = math.inf,
) -> int:
    """Publish ``rate`` ticks a second (and an order ack every ``ack_every``) for ``duration`` s.

    Paced on trio's clock, at most a millisecond's worth at a time; returns the
    number of ticks published.
    """
    import trio

    start = trio.current_time()
    published = 0
    step = 0.001
    for _ in range(_MAX_FEED_STEPS):  # one step a millisecond at most
        now = trio.current_time()
        if now - start >= duration:
            break
        due = int((now - start) * rate) + 1
        batch = []
        while published < due:
            published += 1
            wall = time.time_ns()
            batch.append(feed.next_tick(wall))
            if published % ack_every == 0:
                await acks.publish(feed.next_ack(wall))
        if batch:
            # One batch per millisecond: a later quote of an instrument in the same
            # batch replaces an earlier one not yet sent (CONFLATE keeps the latest).
            await ticks.publish_many(batch)
        await trio.sleep_until(max(now + step, start + published / rate))
    return published


# ------------------------------------------------------------------------------------
# The subscriber side: a view of the last values and the counters
# ------------------------------------------------------------------------------------


@dataclass
class MarketView:
    """What a subscriber has seen: last tick per instrument, counters."""

    last: dict[int, MarketTick] = field(default_factory=dict)
    ticks: int = 0
    acks: int = 0
    last_tick_seq: int = 0
    last_ack_seq: int = 0
    ack_disorder: int = 0  # order acks out of order or repeated (must stay 0)
    _target: tuple[int, int] = (0, 0)
    _reached: trio.Event | None = None

    def on_tick(self, tick: MarketTick) -> None:
        self.ticks += 1
        self.last[tick.instrument_id] = tick
        self.last_tick_seq = tick.seq
        if self._reached is not None:
            self._check()

    def on_ack(self, ack: OrderAck) -> None:
        self.acks += 1
        if ack.seq != self.last_ack_seq + 1:
            self.ack_disorder += 1
        self.last_ack_seq = ack.seq
        if self._reached is not None:
            self._check()

    async def wait_for(self, tick_seq: int, ack_seq: int) -> None:
        """Wait until the tick ``tick_seq`` and the ack ``ack_seq`` have arrived."""
        import trio

        self._target = (tick_seq, ack_seq)
        self._reached = trio.Event()
        self._check()
        await self._reached.wait()

    def _check(self) -> None:
        assert self._reached is not None
        tick_seq, ack_seq = self._target
        if self.last_tick_seq >= tick_seq and self.last_ack_seq >= ack_seq:
            self._reached.set()


def _us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.0f}us"


def render_table(view: MarketView, rows: int = 12) -> list[str]:
    """The live table: last price, size and sequence per instrument."""
    from .wire import PRICE_SCALE

    lines = [f"{'instrument':>10} {'last':>12} {'size':>6} {'seq':>10}"]
    for instrument in sorted(view.last)[:rows]:
        tick = view.last[instrument]
        lines.append(
            f"{instrument:>10} {tick.price / PRICE_SCALE:>12.4f} {tick.quantity:>6} {tick.seq:>10}"
        )
    return lines


class LiveView:
    """Redraws a block of lines on a terminal; prints plain lines otherwise."""

    def __init__(self, out: TextIO, interactive: bool | None = None) -> None:
        self._out = out
        self._interactive = out.isatty() if interactive is None else interactive
        self._drawn = 0

    def show(self, lines: list[str], status: str) -> None:
        if not self._interactive:
            print(status, file=self._out, flush=True)
            return
        block = [*lines, status]
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F")  # back to the block's first line
        self._out.write("".join(f"\x1b[2K{line}\n" for line in block))
        self._out.flush()
        self._drawn = len(block)


async def consume(
    client: Client,
    view: MarketView,
    *,
    ready: trio.Event | None = None,
    subscriptions: list[Any] | None = None,
) -> None:
    """Subscribe to both topics and apply what arrives to ``view``, until cancelled."""
    import trio

    from .wire import MarketTick, OrderAck

    async with (
        client.subscribe(TICKS) as tick_sub,
        client.subscribe(ACKS) as ack_sub,
        trio.open_nursery() as nursery,
    ):
        if subscriptions is not None:
            subscriptions.extend((tick_sub, ack_sub))

        async def take_ticks() -> None:
            on_tick = view.on_tick
            while True:
                for tick in await tick_sub.receive_many():
                    assert isinstance(tick, MarketTick)
                    on_tick(tick)

        async def take_acks() -> None:
            async for ack in ack_sub:
                assert isinstance(ack, OrderAck)
                view.on_ack(ack)

        nursery.start_soon(take_ticks)
        nursery.start_soon(take_acks)
        if ready is not None:
            ready.set()


# ------------------------------------------------------------------------------------
# quicframe demo
# ------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    published: int
    acks_published: int
    view: MarketView
    tick_stats: Any  # SubscriptionStatistics of md.ticks, client side
    ack_stats: Any
    conflated: int  # ticks the server replaced by a newer one of the same instrument
    seconds: float

    @property
    def lost(self) -> int:
        """Ticks neither received nor conflated away: must be 0."""
        return self.published - self.view.ticks - self.conflated

    @property
    def ok(self) -> bool:
        return (
            self.view.ticks > 0
            and self.lost == 0
            and self.tick_stats.duplicates == 0
            and self.view.acks == self.acks_published
            and self.view.ack_disorder == 0
            and self.ack_stats.gaps == 0
        )

    def summary(self) -> str:
        ticks = self.tick_stats
        return (
            f"demo: ticks={self.view.ticks}/{self.published} conflated={self.conflated} "
            f"gaps={ticks.gaps} lost={self.lost} duplicates={ticks.duplicates} "
            f"acks={self.view.acks}/{self.acks_published} ack_gaps={self.ack_stats.gaps} "
            f"p50={_us(ticks.latency_p50_ns)} p99={_us(ticks.latency_p99_ns)} "
            f"rate={self.view.ticks / self.seconds:,.0f}/s seconds={self.seconds:.1f}"
        )


async def run_demo(
    *,
    duration: float,
    rate: float,
    instruments: int,
    seed: int | None,
    out: TextIO,
    interactive: bool | None = None,
    refresh: float = 0.5,
) -> DemoResult:
    """Server, feed and subscriber over QUIC on loopback, for ``duration`` seconds."""
    import trio

    import quicframe
    from quicframe.testing import RandomWalkFeed, self_signed_certificate

    certificate, key = self_signed_certificate()
    router, ticks, acks = market_router()
    server_config = quicframe.ServerConfig(certificate=certificate, private_key=key)
    client_config = quicframe.ClientConfig(ca_data=certificate, server_name="localhost")
    feed = RandomWalkFeed(instruments, seed=seed)
    view = MarketView()
    live = LiveView(out, interactive)
    subscriptions: list[Any] = []

    def status() -> str:
        stats = subscriptions[0].stats() if subscriptions else None
        latency = "" if stats is None else f" p50={_us(stats.latency_p50_ns)}"
        gaps = "" if stats is None else f" gaps={stats.gaps}"
        return f"ticks={view.ticks:,} (published {ticks.head:,}) acks={view.acks:,}{gaps}{latency}"

    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
        trio.open_nursery() as nursery,
    ):
        ready = trio.Event()
        nursery.start_soon(
            functools.partial(consume, client, view, ready=ready, subscriptions=subscriptions)
        )
        await ready.wait()
        started = trio.current_time()

        async def refresh_view() -> None:
            while True:
                await trio.sleep(refresh)
                live.show(render_table(view), status())

        nursery.start_soon(refresh_view)
        published = await run_feed(feed, ticks, acks, rate=rate, duration=duration)
        # Let the subscriber catch up with everything published (bounded).
        with trio.move_on_after(5):
            await view.wait_for(ticks.head, acks.head)
        seconds = trio.current_time() - started
        live.show(render_table(view), status())
        (queue,) = ticks.statistics().subscriptions
        result = DemoResult(
            published=published,
            acks_published=acks.head,
            view=view,
            tick_stats=subscriptions[0].stats(),
            ack_stats=subscriptions[1].stats(),
            conflated=queue.conflated + queue.stale + queue.dropped,
            seconds=seconds,
        )
        nursery.cancel_scope.cancel()
    return result


def demo(args: argparse.Namespace) -> int:
    import trio

    result = trio.run(
        functools.partial(
            run_demo,
            duration=args.duration,
            rate=args.rate,
            instruments=args.instruments,
            seed=args.seed,
            out=sys.stdout,
        )
    )
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


# ------------------------------------------------------------------------------------
# quicframe serve / subscribe / call / cert / bench
# ------------------------------------------------------------------------------------


def _server_config(args: argparse.Namespace) -> Any:
    import quicframe
    from quicframe.testing import self_signed_certificate

    if args.cert and args.key:
        return quicframe.ServerConfig(certificate=args.cert, private_key=args.key)
    if args.cert or args.key:
        raise SystemExit("quicframe serve: give both --cert and --key, or neither")
    certificate, key = self_signed_certificate()
    if args.write_cert:
        Path(args.write_cert).write_bytes(certificate)
    return quicframe.ServerConfig(certificate=certificate, private_key=key)


def serve(args: argparse.Namespace) -> int:
    import trio

    import quicframe
    from quicframe.testing import RandomWalkFeed

    config = _server_config(args)
    router, ticks, acks = market_router()
    feed = RandomWalkFeed(args.instruments, seed=args.seed)

    async def main() -> None:
        async with quicframe.open_server(router, args.host, args.port, config) as server:
            print(
                f"serving {TICKS} and {ACKS} ({args.rate:,.0f} ticks/s) and echo RPC "
                f"{ECHO:#06x} on {args.host}:{server.port}",
                flush=True,
            )
            await run_feed(feed, ticks, acks, rate=args.rate, duration=args.duration)

    trio.run(main)
    return 0


def _client_config(args: argparse.Namespace) -> Any:
    import quicframe

    if args.insecure:
        return quicframe.ClientConfig(insecure=True, server_name=args.server_name)
    return quicframe.ClientConfig(ca_file=args.ca, server_name=args.server_name)


def subscribe(args: argparse.Namespace) -> int:
    import trio

    import quicframe

    config = _client_config(args)
    view = MarketView()
    live = LiveView(sys.stdout)

    async def main() -> None:
        async with quicframe.connect(args.host, args.port, config) as client:
            subscriptions: list[Any] = []
            with trio.move_on_after(args.duration):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        functools.partial(consume, client, view, subscriptions=subscriptions)
                    )
                    while True:
                        await trio.sleep(0.5)
                        stats = subscriptions[0].stats() if subscriptions else None
                        live.show(
                            render_table(view),
                            f"ticks={view.ticks:,} acks={view.acks:,}"
                            + ("" if stats is None else f" gaps={stats.gaps}"),
                        )
            if subscriptions:
                stats = subscriptions[0].stats()
                print(
                    f"subscribe: ticks={view.ticks} gaps={stats.gaps} acks={view.acks} "
                    f"p50={_us(stats.latency_p50_ns)} p99={_us(stats.latency_p99_ns)}",
                    flush=True,
                )

    trio.run(main)
    return 0 if view.ack_disorder == 0 else 1


def _parse_opcode(text: str) -> int:
    return int(text, 0)


def call(args: argparse.Namespace) -> int:
    import trio

    import quicframe

    config = _client_config(args)
    body = json.loads(args.body) if args.body is not None else None

    async def main() -> object:
        async with quicframe.connect(args.host, args.port, config) as client:
            with trio.fail_after(args.deadline):
                return await client.call(args.opcode, body)

    try:
        reply = trio.run(main)
    except quicframe.errors.QuicframeError as exc:
        print(f"call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, default=_json_default))
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def cert(args: argparse.Namespace) -> int:
    from quicframe.testing import write_self_signed_certificate

    directory = Path(args.out)
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = write_self_signed_certificate(directory, args.hostname, days=args.days)
    print(f"wrote {certificate} and {key} (self-signed, for development only)")
    return 0


async def run_bench(*, calls: int, seconds: float) -> dict[str, float]:
    """RPC latency and ticks/s to one subscriber, over loopback in this process."""
    import trio

    import quicframe
    from quicframe.testing import RandomWalkFeed, self_signed_certificate

    certificate, key = self_signed_certificate()
    router, ticks, _acks = market_router()
    server_config = quicframe.ServerConfig(certificate=certificate, private_key=key)
    client_config = quicframe.ClientConfig(ca_data=certificate, server_name="localhost")
    feed = RandomWalkFeed(50, seed=1)
    payload = bytes(range(64))
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config) as server,
        quicframe.connect("127.0.0.1", server.port, client_config) as client,
    ):
        for _ in range(min(200, calls)):
            await client.call(ECHO, payload)
        samples = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            await client.call(ECHO, payload)
            samples.append(time.perf_counter_ns() - start)
        samples.sort()
        view = MarketView()
        subscriptions: list[Any] = []
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(
                functools.partial(consume, client, view, ready=ready, subscriptions=subscriptions)
            )
            await ready.wait()
            start_ns = time.perf_counter_ns()
            published = 0
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                batch = [feed.next_tick(time.time_ns()) for _ in range(256)]
                await ticks.publish_many(batch)
                published += len(batch)
            with trio.move_on_after(5):
                await view.wait_for(ticks.head, 0)
            elapsed = (time.perf_counter_ns() - start_ns) / 1e9
            nursery.cancel_scope.cancel()
    return {
        "rpc_p50_us": samples[len(samples) // 2] / 1000,
        "rpc_p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "rpc_mean_us": statistics.fmean(samples) / 1000,
        "ticks_published": published,
        "ticks_received": view.ticks,
        "ticks_per_s": view.ticks / elapsed,
    }


def bench(args: argparse.Namespace) -> int:
    import trio

    figures = trio.run(functools.partial(run_bench, calls=args.calls, seconds=args.seconds))
    print(
        f"bench: rpc p50={figures['rpc_p50_us']:.0f}us p99={figures['rpc_p99_us']:.0f}us "
        f"ticks={figures['ticks_received']:.0f}/{figures['ticks_published']:.0f} "
        f"({figures['ticks_per_s']:,.0f}/s to one subscriber, server and client in one "
        "process); the comparisons with other libraries are in the repository's bench/"
    )
    return 0


# ------------------------------------------------------------------------------------
# Argument parsing
# ------------------------------------------------------------------------------------


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca", help="PEM file of the certificate authority to trust")
    trust.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    parser.add_argument("--server-name", default="localhost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quicframe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"quicframe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add: Callable[..., argparse.ArgumentParser] = commands.add_parser

    p = add("demo", help="the main job: server, feed and subscriber over QUIC on loopback")
    p.add_argument("--duration", type=float, default=5.0, help="seconds to publish")
    p.add_argument("--rate", type=float, default=5_000, help="ticks per second")
    p.add_argument("--instruments", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=demo)

    p = add("serve", help="serve the simulated feed and an echo RPC")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4433)
    p.add_argument("--cert", help="PEM certificate (default: a throwaway one)")
    p.add_argument("--key", help="PEM private key")
    p.add_argument("--write-cert", help="with the throwaway certificate: write it here")
    p.add_argument("--rate", type=float, default=1_000, help="ticks per second")
    p.add_argument("--instruments", type=int, default=50)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=math.inf, help="seconds to run")
    p.set_defaults(func=serve)

    p = add("subscribe", help="subscribe to md.ticks and md.acks and show them")
    _add_client_options(p)
    p.add_argument("--duration", type=float, default=math.inf, help="seconds to run")
    p.set_defaults(func=subscribe)

    p = add("call", help="make one RPC call; the body is JSON")
    _add_client_options(p)
    p.add_argument("opcode", type=_parse_opcode, help="decimal or 0x-hex")
    p.add_argument("body", nargs="?", help="JSON request body (default: null)")
    p.add_argument("--deadline", type=float, default=5.0, help="seconds")
    p.set_defaults(func=call)

    p = add("cert", help="write a self-signed development certificate and key")
    p.add_argument("--out", default=".", help="directory for cert.pem and key.pem")
    p.add_argument("--hostname", default="localhost")
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(func=cert)

    p = add("bench", help="a quick loopback benchmark of this machine")
    p.add_argument("--calls", type=int, default=2_000, help="sequential RPC calls")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of ticks")
    p.set_defaults(func=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
