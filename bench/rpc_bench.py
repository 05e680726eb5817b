"""RPC benchmark: quicframe.call next to the bare transport and the grpcio anchor.

Usage::

    python bench/rpc_bench.py [--quick] [--rounds N] [--grpc-python PY] [--anchors DIR]
                              [--cores aioquic,qh3]
    python bench/rpc_bench.py server --port P [--core qh3]   # prints "READY <port>"
    python bench/rpc_bench.py client --port P --workload w1|w2 [--quick] [--core qh3]
                                      [--deadline S]   # each call under fail_after(S)
                                                             # prints "RESULT {json}"
    python bench/rpc_bench.py inproc --side rpc|transport [--calls N] [--core qh3]
                                      # W1 in one process over the fake network

Workloads, as the anchors define them (``../shared/anchors/README.md``), over RPC:

* W1: one call at a time (``client.call(ECHO, payload)`` with ``payload =
  bytes(range(64))``, a plain msgpack ``bin``); 300 warm-up calls, then N timed
  calls (5,000; ``--quick`` 1,000).  p50 = ``sorted[n // 2]``, p99 =
  ``sorted[int(0.99 n)]``, calls/s = N / wall time.
* W2: 64 tasks each looping call after call; 1,000 warm-up calls, then N calls
  (20,000; 5,000); calls/s = N / wall.

Server and client are separate processes (a fresh client process per run, the
handshake not timed), both on 127.0.0.1 with the transport's QUIC settings of
``bench/transport_bench.py`` (16 MiB windows, insecure client).  Four sides take
part: ``rpc`` (this file), ``transport`` (the transport-only W1/W2 of
``bench/transport_bench.py``), ``grpcio-syncsrv`` and ``grpcio-aiosrv`` (the
f2-grpcio-syncsrv and f-grpcio-aio anchors, ``grpc_bench.py --server sync|aio``
from ``--anchors``, run with ``--grpc-python``: an interpreter that has grpcio,
default this one; ``pip install 'quicframe[bench]'``; ``--grpc-servers sync``
runs one of them).  The issue asks for 4 x "grpcio's" W2 without naming the
server, so the W2 target is checked against both.
Each of the ``--rounds`` rounds starts every side's server, then runs W1 for
every side and W2 for every side, the sides' order rotating from round to round,
so that the machine's drifts spread over all of them.  It prints the median of
each figure and the issue's targets: RPC W1 p50 <= 1.15 x transport W1 p50; RPC
W1 p50 < grpcio's sync-server W1 p50; RPC W2 calls/s >= 4 x grpcio's (each
server).  A side that cannot run (no grpcio, no anchors folder) is reported on a
``skipped`` line, not an error.

``--cores aioquic,qh3`` (or ``both``) adds ``rpc-qh3`` and ``transport-qh3``: the
same on quicframe's qh3 core (both ends), in the same rounds, with the qh3 core's
targets: RPC W1 p50 <= 1.15 x transport W1 p50 (both on qh3) and RPC W1 p50
<= 0.5 x grpcio's sync-server W1 p50, and the W2 target against each grpcio server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from _harness import client_result, free_port, note_result

HERE: Final = Path(__file__).resolve().parent
ECHO: Final = 0x0001
PAYLOAD: Final = bytes(range(64))
FULL: Final = {"w1_warmup": 300, "w1_calls": 5000, "w2_warmup": 1000, "w2_calls": 20000}
QUICK: Final = {**FULL, "w1_calls": 1000, "w2_calls": 5000}
CONCURRENCY: Final = 64
WINDOW: Final = 16 * 1024 * 1024

perf = time.perf_counter_ns


async def run_server(port: int, core: str) -> None:
    import quicframe
    from quicframe.testing import write_self_signed_certificate

    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed_certificate(folder)
        config = quicframe.ServerConfig(
            core=core,
            certificate=cert,
            private_key=key,
            stream_receive_window=WINDOW,
            connection_receive_window=WINDOW,
        )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(quicframe.serve, router, "127.0.0.1", port, config)
            print(f"READY {server.port}", flush=True)


def _stats(samples: list[int], wall: float) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(0.99 * n))] / 1e3,
        "calls_per_s": n / wall,
        "n": n,
    }


async def run_client(
    port: int, workload: str, quick: bool, core: str, deadline: float | None = None
) -> None:
    import functools

    import quicframe

    counts = QUICK if quick else FULL
    config = quicframe.ClientConfig(
        core=core,
        insecure=True,
        server_name="localhost",
        stream_receive_window=WINDOW,
        connection_receive_window=WINDOW,
    )
    async with quicframe.connect("127.0.0.1", port, config, heartbeat=False) as client:
        # --deadline: every call under trio.fail_after, so that its budget travels
        # and the server enters the call's cancel scope before the handler runs.
        call: Callable[[], Awaitable[Any]] = functools.partial(client.call, ECHO, PAYLOAD)
        if deadline is not None:
            plain, seconds = call, deadline

            async def bounded() -> Any:
                with trio.fail_after(seconds):
                    return await plain()

            call = bounded
        if workload == "w1":
            for _ in range(counts["w1_warmup"]):
                await call()
            samples = []
            start = perf()
            for _ in range(counts["w1_calls"]):
                t0 = perf()
                reply = await call()
                samples.append(perf() - t0)
                assert reply == PAYLOAD
            record = _stats(samples, (perf() - start) / 1e9)
        else:

            async def loop(calls: int) -> None:
                for _ in range(calls):
                    await call()

            async def phase(total: int) -> float:
                start = perf()
                async with trio.open_nursery() as nursery:
                    for i in range(CONCURRENCY):
                        share = total // CONCURRENCY + (i < total % CONCURRENCY)
                        nursery.start_soon(loop, share)
                return (perf() - start) / 1e9

            await phase(counts["w2_warmup"])
            wall = await phase(counts["w2_calls"])
            record = {"calls_per_s": counts["w2_calls"] / wall, "n": counts["w2_calls"]}
        # Packets this client sent, warm-up and handshake included: how well calls
        # share packets (the transport's W1/W2 records carry the same figure).
        record["packets_sent"] = client.connection.statistics().packets_sent
        if deadline is not None:
            record["deadline_s"] = deadline
    print("RESULT " + json.dumps({"side": "rpc", "workload": workload, **record}), flush=True)


# ------------------------------------------------------------------------------ inproc


async def run_inproc(side: str, calls: int, core: str) -> None:
    """W1 with both ends in this process, over ``quicframe.testing.FakeNetwork``.

    ``rpc`` makes ``client.call(ECHO, payload)`` calls; ``transport`` runs the
    transport benchmark's W1 (``bench/transport_bench.py``: its server's stream
    handler, its client's stream-per-call), so that the difference between the
    two is the RPC layer's own work: both ends' CPU per call, with no kernel and
    no second process.  Run it under ``valgrind --tool=callgrind`` with two call
    counts and divide the difference of the instruction totals by the
    difference of the counts (which removes the start-up and the handshake).
    """
    import functools

    import quicframe
    from quicframe import transport
    from quicframe.testing import FakeNetwork, write_self_signed_certificate

    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed_certificate(folder)
        server_config = quicframe.ServerConfig(core=core, certificate=cert, private_key=key)
        client_config = quicframe.ClientConfig(core=core, ca_file=cert, server_name="localhost")
        async with FakeNetwork(seed=1) as network, trio.open_nursery() as nursery:
            factory = network.socket_factory
            if side == "rpc":
                router = quicframe.Router()

                @router.rpc(ECHO)
                async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
                    return request

                server = await nursery.start(
                    functools.partial(
                        quicframe.serve,
                        router,
                        "127.0.0.1",
                        0,
                        server_config,
                        socket_factory=factory,
                    )
                )
                async with quicframe.connect(
                    "127.0.0.1",
                    server.port,
                    client_config,
                    heartbeat=False,
                    socket_factory=factory,
                ) as client:

                    async def one() -> None:
                        await client.call(ECHO, PAYLOAD)

                    cpu = await _timed_calls(one, calls)
            else:
                # Exactly the transport benchmark's W1: its server's stream handler
                # and its client's call.
                from transport_bench import serve_bench_stream, stream_caller

                async def handler(connection: transport.Connection) -> None:
                    await connection.serve_streams(serve_bench_stream)

                listener = await nursery.start(
                    functools.partial(
                        transport.serve,
                        "127.0.0.1",
                        0,
                        server_config,
                        handler,
                        socket_factory=factory,
                    )
                )
                async with transport.connect(
                    "127.0.0.1",
                    listener.port,
                    client_config,
                    local_host="127.0.0.2",
                    socket_factory=factory,
                ) as connection:
                    call = stream_caller(connection)

                    async def one() -> None:
                        assert await call(PAYLOAD) == PAYLOAD

                    cpu = await _timed_calls(one, calls)
            nursery.cancel_scope.cancel()
    record = {"side": f"inproc-{side}", "calls": calls, "cpu_us_per_call": cpu}
    print("RESULT " + json.dumps(record), flush=True)


async def _timed_calls(one: Any, calls: int) -> float:
    for _ in range(50):
        await one()
    start = time.process_time()
    for _ in range(calls):
        await one()
    return (time.process_time() - start) / calls * 1e6


# ------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class Side:
    """One side of the comparison: how to start its server and its client."""

    name: str
    server_argv: list[str]  # "--port P" is appended
    client_argv: list[str]  # "--port P --workload W" (and "--quick") are appended
    port_family: socket.SocketKind | None  # pick a free port of this kind; None: port 0


@contextlib.contextmanager
def _server(side: Side) -> Iterator[int]:
    """Start ``side``'s server and yield its port once it printed ``READY <port>``."""
    port = 0 if side.port_family is None else free_port(side.port_family)
    process = subprocess.Popen(
        [*side.server_argv, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        ready = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                ready = int(line.split()[1])
                break
        if ready is None:
            raise RuntimeError(f"the {side.name} server did not start")
        yield ready
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _sides(args: argparse.Namespace) -> tuple[list[Side], list[str]]:
    """The sides that can run here, and a line for each one that cannot."""
    py = sys.executable
    cores = ["aioquic", "qh3"] if args.cores == "both" else args.cores.split(",")
    sides = []
    skipped = []
    transport_bench = HERE / "transport_bench.py"
    for core in cores:
        suffix, flag = ("", []) if core == "aioquic" else (f"-{core}", ["--core", core])
        me = [py, __file__]
        sides.append(Side(f"rpc{suffix}", [*me, "server", *flag], [*me, "client", *flag], None))
        if transport_bench.exists():
            argv = [py, str(transport_bench)]
            sides.append(
                Side(
                    f"transport{suffix}",
                    [*argv, "server", *flag],
                    [*argv, "client", *flag],
                    None,
                )
            )
        else:
            skipped.append(f"transport{suffix}: skipped ({transport_bench} not found)")
    anchors = Path(args.anchors) if args.anchors else HERE.parent.parent / "shared" / "anchors"
    grpc_bench = anchors / "grpc_bench.py"
    grpc_python = args.grpc_python or py
    probe = subprocess.run([grpc_python, "-c", "import grpc"], capture_output=True, check=False)
    grpc_servers = [name for name in args.grpc_servers.split(",") if name]
    for server in grpc_servers:
        name = f"grpcio-{server}srv"
        if not grpc_bench.exists():
            skipped.append(f"{name}: skipped (no grpc_bench.py in {anchors}; see --anchors)")
        elif probe.returncode != 0:
            skipped.append(
                f"{name}: skipped (grpcio is not installed for {grpc_python}; "
                "pip install 'quicframe[bench]' or pass --grpc-python)"
            )
        else:
            argv = [grpc_python, str(grpc_bench)]
            anchor = "f2-grpcio-syncsrv" if server == "sync" else "f-grpcio-aio"
            sides.append(
                Side(
                    name,
                    [*argv, "server", "--server", server],
                    [*argv, "client", "--server", server, "--anchor", anchor],
                    socket.SOCK_STREAM,
                )
            )
    return sides, skipped


def driver(args: argparse.Namespace) -> int:
    quick = ["--quick"] if args.quick else []
    sides, skipped = _sides(args)
    for line in skipped:
        print(line, flush=True)
    results: dict[str, list[dict[str, Any]]] = {}

    for round_number in range(args.rounds):
        shift = round_number % len(sides)
        order = sides[shift:] + sides[:shift]
        with contextlib.ExitStack() as stack:
            ports: dict[str, int] = {}
            for side in order:
                try:
                    ports[side.name] = stack.enter_context(_server(side))
                except RuntimeError as exc:
                    print(f"round {round_number + 1}: {exc}", file=sys.stderr, flush=True)
            for workload in ("w1", "w2"):
                for side in order:
                    if side.name not in ports:
                        continue
                    argv = [*side.client_argv, "--port", str(ports[side.name])]
                    record = client_result([*argv, "--workload", workload, *quick], args.timeout)
                    if record is not None:
                        record["round"] = round_number
                    key = f"{side.name} {workload}"
                    note_result(results, round_number, key, record, _brief)

    def median(key: str, field: str) -> float | None:
        values = [r[field] for r in results.get(key, []) if field in r]
        return statistics.median(values) if values else None

    counts = QUICK if args.quick else FULL
    print(
        f"medians of {args.rounds} interleaved round(s); W1 {counts['w1_calls']} calls, "
        f"W2 {counts['w2_calls']} calls with {CONCURRENCY} in flight"
    )
    print(f"{'side':<24}{'p50 us':>10}{'p99 us':>10}{'calls/s':>12}")
    for side in sides:
        for workload in ("w1", "w2"):
            key = f"{side.name} {workload}"
            if key not in results:
                print(f"{key:<24}{'no result':>32}")
                continue
            p50, p99, rate = (median(key, f) for f in ("p50_us", "p99_us", "calls_per_s"))
            cells = [f"{v:>10.1f}" if v is not None else f"{'-':>10}" for v in (p50, p99)]
            print(f"{key:<24}{''.join(cells)}{rate or 0:>12.0f}")
    for line in skipped:
        print(line)
    checks = [
        ("RPC W1 p50 <= 1.15 x transport W1 p50", "rpc w1", "p50_us", "transport w1", 1.15, "<="),
        ("RPC W1 p50 < grpcio sync W1 p50", "rpc w1", "p50_us", "grpcio-syncsrv w1", 1.0, "<"),
        (
            "RPC W2 calls/s >= 4 x grpcio sync W2",
            "rpc w2",
            "calls_per_s",
            "grpcio-syncsrv w2",
            4.0,
            ">=",
        ),
        (
            "RPC W2 calls/s >= 4 x grpcio aio W2",
            "rpc w2",
            "calls_per_s",
            "grpcio-aiosrv w2",
            4.0,
            ">=",
        ),
        (
            "RPC-qh3 W1 p50 <= 1.15 x transport-qh3 W1 p50",
            "rpc-qh3 w1",
            "p50_us",
            "transport-qh3 w1",
            1.15,
            "<=",
        ),
        (
            "RPC-qh3 W1 p50 <= 0.5 x grpcio sync W1 p50",
            "rpc-qh3 w1",
            "p50_us",
            "grpcio-syncsrv w1",
            0.5,
            "<=",
        ),
        (
            "RPC-qh3 W2 calls/s >= 4 x grpcio sync W2",
            "rpc-qh3 w2",
            "calls_per_s",
            "grpcio-syncsrv w2",
            4.0,
            ">=",
        ),
        (
            "RPC-qh3 W2 calls/s >= 4 x grpcio aio W2",
            "rpc-qh3 w2",
            "calls_per_s",
            "grpcio-aiosrv w2",
            4.0,
            ">=",
        ),
    ]
    if "rpc-qh3" not in [side.name for side in sides]:
        checks = [check for check in checks if "qh3" not in check[1]]
    for label, ours, field, theirs, factor, op in checks:
        mine, other = median(ours, field), median(theirs, field)
        if mine is None or other is None:
            print(f"{label}: not measured ({theirs if other is None else ours} missing)")
            continue
        ratio = mine / other
        ok = ratio <= factor if op == "<=" else ratio < factor if op == "<" else ratio >= factor
        # The same ratio taken within each round (both runs a few seconds apart)
        # and then its median: less exposed to the machine's drift between rounds.
        paired = _paired_ratios(results.get(ours, []), results.get(theirs, []), field)
        per_round = ""
        if paired:
            listed = ", ".join(f"{r:.2f}" for r in paired)
            per_round = f"; per round {listed}, median {statistics.median(paired):.2f}x"
        print(
            f"{label}: {ratio:.2f}x (target {op} {factor:g}x) {'PASS' if ok else 'FAIL'}"
            + per_round
        )
    return 0 if results else 1


def _paired_ratios(
    mine: list[dict[str, Any]], theirs: list[dict[str, Any]], field: str
) -> list[float]:
    """``mine / theirs`` of ``field`` for every round that has both records."""
    other = {r["round"]: r[field] for r in theirs if r.get(field)}
    return [r[field] / other[r["round"]] for r in mine if field in r and r["round"] in other]


def _brief(record: dict[str, Any]) -> str:
    parts = [f"{k}={record[k]:.1f}" for k in ("p50_us", "p99_us", "calls_per_s") if k in record]
    return " ".join(parts) or json.dumps(record)[:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "role", nargs="?", default="driver", choices=["driver", "server", "client", "inproc"]
    )
    parser.add_argument("--side", default="rpc", choices=["rpc", "transport"], help="inproc")
    parser.add_argument("--calls", type=int, default=2000, help="inproc: timed calls")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workload", default="w1", choices=["w1", "w2"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--deadline", type=float, default=None, help="client: each call under trio.fail_after(S)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--anchors", default=None)
    parser.add_argument("--grpc-python", default=None)
    parser.add_argument(
        "--grpc-servers",
        default="sync,aio",
        help="driver: grpcio anchors to run: sync (f2-grpcio-syncsrv), aio (f-grpcio-aio)",
    )
    parser.add_argument("--core", default="aioquic", choices=["aioquic", "qh3"])
    parser.add_argument(
        "--cores", default="aioquic", help="driver: quicframe cores to run: aioquic, qh3 or both"
    )
    args = parser.parse_args()
    if args.role == "server":
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            trio.run(run_server, args.port, args.core)
        return 0
    if args.role == "inproc":
        trio.run(run_inproc, args.side, args.calls, args.core)
        return 0
    if args.role == "client":
        trio.run(run_client, args.port, args.workload, args.quick, args.core, args.deadline)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
