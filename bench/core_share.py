"""Where a benchmark process spends its CPU: in aioquic, or in everything else.

Usage::

    python bench/core_share.py run [--calls N] -- SCRIPT ARGS...
    python bench/core_share.py wake [--tasks K] [--rounds N]

``run`` runs ``SCRIPT ARGS...`` (any Python benchmark client or server: this
folder's ``transport_bench.py client ...``, or the anchors' ``quic_asyncio.py
client ...``) in this process with aioquic's ``QuicConnection`` entry points
timed (``datagrams_to_send``, ``receive_datagram``, ``send_stream_data``,
``next_event``, ``get_timer``, ``handle_timer``,
``get_next_available_stream_id``), and prints, when the script ends, the
process CPU time, the part spent inside those calls ("aioquic") and the rest
(the event loop, the driver, sockets, the application), each also per call when
``--calls`` gives the number of calls the run made (W2: 21,000 with the
warm-up).  Both sides of a workload can be measured this way, quicframe's and
aioquic's asyncio layer's, which tells what a driver could save at best: only
the rest.  The timing adds about 0.3 us per timed call (two clock reads).
``--time MODULE:CLASS.METHOD`` (repeatable) times more synchronous functions the
same way, e.g. ``quicframe.pubsub._topic:TopicCore.publish_many`` in the pub/sub
benchmark's server.  A server runs until stopped: SIGUSR1 prints the figures so
far and starts counting again (send it before and after a client run), SIGTERM
prints them and ends the process at once.

``wake`` measures trio's floor for waking tasks: ``K`` tasks parked on one
ParkingLot, woken together, each taking one step and parking again (what a W2
client pays per reply: its caller task is woken once), as microseconds per
task wake and step; and the same for one task ping-ponging with another
(``K = 1``: a scheduling batch of one, with the I/O poll of every batch).

Examples (the W2 figures of docs/performance.md, session 5)::

    python bench/transport_bench.py server --port 24594 &
    python bench/core_share.py run --calls 21000 -- \\
        bench/transport_bench.py client --port 24594 --workload w2
    python ../shared/anchors/quic_asyncio.py server --port 24595 &
    python bench/core_share.py run --calls 21000 -- \\
        ../shared/anchors/quic_asyncio.py client --port 24595 --workload w2
    python bench/core_share.py wake
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import importlib
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio
import trio.testing

_ENTRY_POINTS = (
    "datagrams_to_send",
    "receive_datagram",
    "send_stream_data",
    "next_event",
    "get_timer",
    "handle_timer",
    "get_next_available_stream_id",
)


def _timed(
    method: Callable[..., Any], totals: collections.Counter[str], counts: collections.Counter[str]
) -> Callable[..., Any]:
    name = method.__name__
    clock = time.perf_counter_ns

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] += clock() - start
            counts[name] += 1

    return timed


def run(script: Sequence[str], calls: int | None, extra: Sequence[str] = ()) -> int:
    from aioquic.quic.connection import QuicConnection

    totals: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for name in _ENTRY_POINTS:
        setattr(QuicConnection, name, _timed(getattr(QuicConnection, name), totals, counts))
    others: collections.Counter[str] = collections.Counter()
    other_counts: collections.Counter[str] = collections.Counter()
    for target in extra:  # "package.module:Class.method", synchronous only
        module_name, _, qualified = target.partition(":")
        owner: Any = importlib.import_module(module_name)
        *path, attribute = qualified.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, attribute, _timed(getattr(owner, attribute), others, other_counts))
    cpu_start = time.process_time()

    def report() -> None:
        cpu_ms = (time.process_time() - cpu_start) * 1e3
        core_ms = sum(totals.values()) / 1e6
        per = f" = {cpu_ms * 1e3 / calls:.1f} us per call" if calls else ""
        print(f"core_share: process CPU {cpu_ms:.0f} ms{per}", file=sys.stderr)
        per = f" = {core_ms * 1e3 / calls:.1f} us per call" if calls else ""
        print(f"core_share: in aioquic  {core_ms:.0f} ms{per}", file=sys.stderr)
        rest = cpu_ms - core_ms
        per = f" = {rest * 1e3 / calls:.1f} us per call" if calls else ""
        print(f"core_share: the rest    {rest:.0f} ms{per}", file=sys.stderr)
        for name, total in totals.most_common():
            print(
                f"core_share:   {name:30s} {total / 1e6:8.1f} ms in {counts[name]:7d} calls",
                file=sys.stderr,
            )
        for name, total in others.most_common():
            print(
                f"core_share: --time {name:30s} {total / 1e6:8.1f} ms in "
                f"{other_counts[name]:7d} calls",
                file=sys.stderr,
            )

    def report_and_restart(signum: int, frame: object) -> None:
        nonlocal cpu_start
        report()
        totals.clear()
        counts.clear()
        others.clear()
        other_counts.clear()
        cpu_start = time.process_time()

    def stop(signum: int, frame: object) -> None:
        # A measured server has nothing to finish: report, then end at once.
        report()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(report)
    signal.signal(signal.SIGUSR1, report_and_restart)
    signal.signal(signal.SIGTERM, stop)
    sys.argv = list(script)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))
    try:
        runpy.run_path(script[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


async def _wake_floor(tasks: int, rounds: int) -> float:
    lot = trio.lowlevel.ParkingLot()
    back = trio.lowlevel.ParkingLot()
    stepped = 0

    async def worker() -> None:
        nonlocal stepped
        while True:
            await lot.park()
            stepped += 1
            if stepped == tasks:
                back.unpark()

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for _ in range(rounds):
            stepped = 0
            lot.unpark_all()
            await back.park()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / rounds / tasks * 1e6


def wake(tasks: int, rounds: int) -> int:
    for k in (tasks, 1):
        us = trio.run(_wake_floor, k, rounds)
        print(f"trio wake floor: {k} task(s) woken together, one step each: {us:.2f} us per task")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run a benchmark script with aioquic timed")
    run_parser.add_argument("--calls", type=int, default=None, help="calls the run makes")
    run_parser.add_argument(
        "--time",
        action="append",
        default=[],
        metavar="MODULE:CLASS.METHOD",
        help="also time this synchronous function (repeatable), e.g. "
        "quicframe.pubsub._topic:TopicCore.publish_many",
    )
    run_parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS...")
    wake_parser = sub.add_parser("wake", help="trio's floor for waking tasks")
    wake_parser.add_argument("--tasks", type=int, default=16)
    wake_parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.command == "wake":
        return wake(args.tasks, args.rounds)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("run: give the script to run after --")
    return run(script, args.calls, args.time)


if __name__ == "__main__":
    sys.exit(main())
