"""RPC benchmark: quicframe.call next to the bare transport and the grpcio anchor.

Usage::

    python bench/rpc_bench.py [--quick] [--rounds N] [--grpc-python PY] [--anchors DIR]
    python bench/rpc_bench.py server --port P          # prints "READY <port>"
    python bench/rpc_bench.py client --port P --workload w1|w2 [--quick]
                                                       # prints "RESULT {json}"

Workloads, as the anchors define them (``../shared/anchors/README.md``), over RPC:

* W1: one call at a time (``client.call(ECHO, payload)`` with ``payload =
  bytes(range(64))``, a plain msgpack ``bin``); 300 warm-up calls, then N timed
  calls (5,000; ``--quick`` 1,000).  p50 = ``sorted[n // 2]``, p99 =
  ``sorted[int(0.99 n)]``, calls/s = N / wall time.
* W2: 64 tasks each looping call after call; 1,000 warm-up calls, then N calls
  (20,000; 5,000); calls/s = N / wall.

Server and client are separate processes (a fresh client process per run, the
handshake not timed), both on 127.0.0.1 with the transport's QUIC settings of
``bench/transport_bench.py`` (16 MiB windows, insecure client).  The driver runs
``--rounds`` rounds; per round it runs the RPC client, then, when they are
available, the transport-only W1/W2 clients of ``bench/transport_bench.py`` and
the grpcio anchor (``grpc_bench.py``, sync server) with ``--grpc-python`` (an
interpreter that has grpcio; default: this one).  It prints the median of each
figure and the issue's targets: RPC p50 <= 1.15 x transport W1 p50; RPC p50 <
grpcio's W1 p50; RPC W2 calls/s >= 4 x grpcio's.  A missing side is reported,
not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import trio

HERE: Final = Path(__file__).resolve().parent
ECHO: Final = 0x0001
PAYLOAD: Final = bytes(range(64))
FULL: Final = {"w1_warmup": 300, "w1_calls": 5000, "w2_warmup": 1000, "w2_calls": 20000}
QUICK: Final = {**FULL, "w1_calls": 1000, "w2_calls": 5000}
CONCURRENCY: Final = 64
WINDOW: Final = 16 * 1024 * 1024

perf = time.perf_counter_ns


def _certificate(folder: Path) -> tuple[Path, Path]:
    # The example's throwaway self-signed certificate maker (same settings).
    namespace = runpy.run_path(str(HERE.parent / "examples" / "rpc_echo.py"))
    paths: tuple[Path, Path] = namespace["make_certificate"](folder)
    return paths


async def run_server(port: int) -> None:
    import quicframe

    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    with tempfile.TemporaryDirectory() as folder:
        cert, key = _certificate(Path(folder))
        config = quicframe.ServerConfig(
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


async def run_client(port: int, workload: str, quick: bool) -> None:
    import quicframe

    counts = QUICK if quick else FULL
    config = quicframe.ClientConfig(
        insecure=True,
        server_name="localhost",
        stream_receive_window=WINDOW,
        connection_receive_window=WINDOW,
    )
    async with quicframe.connect("127.0.0.1", port, config, heartbeat=False) as client:
        if workload == "w1":
            for _ in range(counts["w1_warmup"]):
                await client.call(ECHO, PAYLOAD)
            samples = []
            start = perf()
            for _ in range(counts["w1_calls"]):
                t0 = perf()
                reply = await client.call(ECHO, PAYLOAD)
                samples.append(perf() - t0)
                assert reply == PAYLOAD
            record = _stats(samples, (perf() - start) / 1e9)
        else:

            async def loop(calls: int) -> None:
                for _ in range(calls):
                    await client.call(ECHO, PAYLOAD)

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
    print("RESULT " + json.dumps({"side": "rpc", "workload": workload, **record}), flush=True)


# ------------------------------------------------------------------------------ driver


@contextlib.contextmanager
def _server(argv: list[str]) -> Iterator[int]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        port = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                port = int(line.split()[1])
                break
        if port is None:
            raise RuntimeError(f"server {argv} did not start")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _client(argv: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            record: dict[str, Any] = json.loads(line[7:])
            return record
    sys.stderr.write(result.stderr[-2000:])
    return None


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def driver(args: argparse.Namespace) -> int:
    py = sys.executable
    quick = ["--quick"] if args.quick else []
    anchors = Path(args.anchors) if args.anchors else HERE.parent.parent / "shared" / "anchors"
    transport_bench = HERE / "transport_bench.py"
    grpc_python = args.grpc_python or py
    results: dict[str, list[dict[str, Any]]] = {}

    def add(key: str, record: dict[str, Any] | None) -> None:
        if record is not None:
            results.setdefault(key, []).append(record)

    for _ in range(args.rounds):
        with _server([py, __file__, "server", "--port", "0"]) as port:
            for workload in ("w1", "w2"):
                argv = [py, __file__, "client", "--port", str(port), "--workload", workload]
                add(f"rpc {workload}", _client(argv + quick, args.timeout))
        if transport_bench.exists():
            with (
                contextlib.suppress(RuntimeError),
                _server([py, str(transport_bench), "server", "--port", "0"]) as port,
            ):
                for workload in ("w1", "w2"):
                    argv = [py, str(transport_bench), "client", "--port", str(port)]
                    argv += ["--workload", workload, *quick]
                    add(f"transport {workload}", _client(argv, args.timeout))
        grpc_bench = anchors / "grpc_bench.py"
        has_grpc = (
            subprocess.run(
                [grpc_python, "-c", "import grpc"], capture_output=True, check=False
            ).returncode
            == 0
        )
        if grpc_bench.exists() and has_grpc:
            gport = _free_port()
            with (
                contextlib.suppress(RuntimeError),
                _server(
                    [
                        grpc_python,
                        str(grpc_bench),
                        "server",
                        "--port",
                        str(gport),
                        "--server",
                        "sync",
                    ]
                ),
            ):
                for workload in ("w1", "w2"):
                    argv = [grpc_python, str(grpc_bench), "client", "--port", str(gport)]
                    argv += ["--server", "sync", "--workload", workload, *quick]
                    add(f"grpcio-syncsrv {workload}", _client(argv, args.timeout))

    def median(key: str, field: str) -> float | None:
        values = [r[field] for r in results.get(key, []) if field in r]
        return statistics.median(values) if values else None

    print(f"{'side':<24}{'p50 us':>10}{'p99 us':>10}{'calls/s':>12}")
    for key in sorted(results):
        p50, p99, rate = (median(key, f) for f in ("p50_us", "p99_us", "calls_per_s"))
        cells = [f"{v:>10.1f}" if v is not None else f"{'-':>10}" for v in (p50, p99)]
        print(f"{key:<24}{''.join(cells)}{rate or 0:>12.0f}")
    checks = [
        ("RPC p50 <= 1.15 x transport W1 p50", "rpc w1", "p50_us", "transport w1", 1.15, "<="),
        ("RPC p50 < grpcio W1 p50", "rpc w1", "p50_us", "grpcio-syncsrv w1", 1.0, "<"),
        ("RPC W2 >= 4 x grpcio W2", "rpc w2", "calls_per_s", "grpcio-syncsrv w2", 4.0, ">="),
    ]
    for label, ours, field, theirs, factor, op in checks:
        mine, other = median(ours, field), median(theirs, field)
        if mine is None or other is None:
            print(f"{label}: not measured ({theirs if other is None else ours} missing)")
            continue
        ratio = mine / other
        ok = ratio <= factor if op == "<=" else ratio < factor if op == "<" else ratio >= factor
        print(f"{label}: {ratio:.2f}x {'PASS' if ok else 'FAIL'}")
    return 0 if results else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("role", nargs="?", default="driver", choices=["driver", "server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workload", default="w1", choices=["w1", "w2"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--anchors", default=None)
    parser.add_argument("--grpc-python", default=None)
    args = parser.parse_args()
    if args.role == "server":
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            trio.run(run_server, args.port)
        return 0
    if args.role == "client":
        trio.run(run_client, args.port, args.workload, args.quick)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
