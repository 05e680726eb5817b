"""BBR against reno and cubic through the chaos proxy (issue 7).

Usage::

    python bench/bbr_bench.py [--runs N] [--size BYTES] [--window S] [--losses 0,0.01,0.03]
                              [--algorithms reno,cubic,bbr] [--burst BYTES] [--json]
    python bench/bbr_bench.py server --cc NAME --cert C --key K --size N --window S
    python bench/bbr_bench.py proxy --upstream PORT --loss P --seed S [--burst BYTES]

The path (``quicframe.testing.ChaosProxy``): a bottleneck of 20 Mbit/s of UDP
payload (2.5e6 bytes/s) in each direction, 20 ms delay each way, a drop-tail queue
of 40 ms (about one BDP), random loss on the data direction (server to client) only,
seeded per run.  The bottleneck is the proxy's token bucket: ``--burst`` bytes may
leave back to back after the link was idle (default 16 KiB, the proxy's default;
``--burst 0`` makes it a pure serialization bottleneck).  The client's receive
windows are 4 MiB (connection and stream).
A bulk transfer runs from the server to the client: 16 MiB, or as much as 30 s
allow (the server stops sending at 30 s and sends FIN).  Goodput is bytes received
/ time from the request to the FIN, in MB/s (10^6).  RTT under load is the median
of the server's ``latest_rtt`` sampled every 20 ms after the first 2 s of the
transfer, divided by the server's min RTT.

Every cell runs ``--runs`` times (default 3), interleaved (run 1 of every cell,
then run 2, ...).  Server, proxy and client run in three processes (the server and
the proxy as children of the driver, stopped by PID on every exit path), so no
event loop shares a CPU-bound task with another.  Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from quicframe import ClientConfig, ServerConfig
from quicframe.congestion import BbrCongestionControl
from quicframe.testing import write_self_signed_certificate
from quicframe.transport import Connection, connect, serve
from quicframe.transport._core import as_aioquic

LINK_RATE = 2.5e6  # bytes per second of UDP payload (20 Mbit/s)
ONE_WAY_DELAY = 0.02
QUEUE_DELAY = 0.04
RECEIVE_WINDOW = 4 * 1024 * 1024
DEFAULT_BURST = 16 * 1024  # the proxy's default token-bucket depth
SAMPLE_EVERY = 0.02
SKIP_FIRST = 2.0
CHUNK = 64 * 1024


# -- server (child process) ----------------------------------------------------------


async def server_main(args: argparse.Namespace) -> None:
    config = ServerConfig(
        certificate=args.cert,
        private_key=args.key,
        congestion_control=args.cc,
        idle_timeout=60.0,
    )
    done = trio.Event()
    result: dict[str, Any] = {}

    async def handler(connection: Connection) -> None:
        stream = await connection.accept_stream()
        await stream.receive_some(1)
        samples: list[float] = []
        start = trio.current_time()

        async def sampler() -> None:
            cc = as_aioquic(connection._core)._quic_connection._loss._cc
            for i in range(int((args.window + 30) / SAMPLE_EVERY)):
                await trio.sleep(SAMPLE_EVERY)
                if trio.current_time() - start >= SKIP_FIRST:
                    samples.append(connection.statistics().latest_rtt)
                if args.trace and i % 10 == 0 and isinstance(cc, BbrCongestionControl):
                    print(
                        f"{trio.current_time() - start:6.2f} {cc.state.value:9}"
                        f" gain {cc.pacing_gain:.2f} bw {cc.btl_bw / 1e6:.3f}"
                        f" rate {cc.pacing_rate / 1e6:.3f} cwnd {cc.congestion_window}"
                        f" inflight {cc.bytes_in_flight} ceiling {cc.inflight_ceiling}"
                        f" rtt {connection.statistics().latest_rtt * 1000:.1f}"
                        f" reactions {cc.loss_reactions}",
                        file=sys.stderr,
                        flush=True,
                    )

        chunk = bytes(range(256)) * (CHUNK // 256)
        sent = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            while sent < args.size and trio.current_time() - start < args.window:
                piece = chunk[: min(CHUNK, args.size - sent)]
                await stream.send_all(piece)
                sent += len(piece)
            await stream.send_eof()
            nursery.cancel_scope.cancel()
        stats = connection.statistics()
        cc = as_aioquic(connection._core)._quic_connection._loss._cc
        if isinstance(cc, BbrCongestionControl):
            result.update(
                bbr_state=cc.state.value,
                bbr_btl_bw=cc.btl_bw,
                bbr_min_rtt=cc.min_rtt,
                bbr_loss_reactions=cc.loss_reactions,
                bbr_rounds=cc.round_count,
                bbr_cwnd=cc.congestion_window,
            )
        result.update(
            sent=sent,
            min_rtt=stats.min_rtt,
            median_rtt=statistics.median(samples) if samples else None,
            packets_sent=stats.packets_sent,
            packets_lost=stats.packets_lost,
        )
        # let the FIN and the tail be acknowledged before reporting
        with trio.move_on_after(5):
            await stream.receive_some()
        done.set()

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve, "127.0.0.1", 0, config, handler)
        print(f"READY {listener.port}", flush=True)
        await done.wait()
        print("RESULT " + json.dumps(result), flush=True)
        nursery.cancel_scope.cancel()


# -- proxy (child process) -------------------------------------------------------------


async def proxy_main(args: argparse.Namespace) -> None:
    from quicframe.testing import ChaosProxy, LinkPolicy

    def link(loss: float) -> LinkPolicy:
        return LinkPolicy(
            loss=loss,
            delay=ONE_WAY_DELAY,
            bandwidth=LINK_RATE,
            queue_delay=QUEUE_DELAY,
            queue_bytes=4 * 1024 * 1024,
            burst=args.burst,
        )

    async with ChaosProxy(
        ("127.0.0.1", args.upstream),
        to_server=link(0.0),
        to_client=link(args.loss),
        seed=args.seed,
    ) as proxy:
        print(f"READY {proxy.port}", flush=True)
        await trio.sleep_forever()


# -- driver ------------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_certificate() -> Iterator[tuple[str, str]]:
    """A throwaway self-signed certificate for localhost, removed afterwards."""
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = write_self_signed_certificate(directory, "localhost")
        yield str(cert_path), str(key_path)


class Child:
    """A child process that prints ``READY <port>`` and maybe ``RESULT <json>``."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, *argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # bounded by the child's own startup
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"child {argv[0]} did not start: {line!r}")
        self.port = int(line.split()[1])

    def result(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("RESULT "):
                parsed: dict[str, Any] = json.loads(line[7:])
                return parsed
        raise RuntimeError("server gave no result")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


async def client_transfer(port: int, limit: float) -> tuple[int, float]:
    config = ClientConfig(
        insecure=True,
        server_name="localhost",
        connection_receive_window=RECEIVE_WINDOW,
        stream_receive_window=RECEIVE_WINDOW,
        idle_timeout=60.0,
    )
    with trio.fail_after(limit):
        async with connect("127.0.0.1", port, config) as connection:
            stream = await connection.open_stream()
            start = trio.current_time()
            await stream.send_all(b"G")
            received = 0
            while chunk := await stream.receive_some():
                received += len(chunk)
            elapsed = trio.current_time() - start
            await stream.aclose()
    return received, elapsed


def run_cell(
    cc: str, loss: float, seed: int, cert: tuple[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    server = Child(
        [
            "server",
            "--cc",
            cc,
            "--cert",
            cert[0],
            "--key",
            cert[1],
            "--size",
            str(args.size),
            "--window",
            str(args.window),
            *(["--trace"] if args.trace else []),
        ]
    )
    try:
        proxy = Child(
            [
                "proxy",
                "--upstream",
                str(server.port),
                "--loss",
                str(loss),
                "--seed",
                str(seed),
                "--burst",
                str(args.burst),
            ]
        )
        try:
            received, elapsed = trio.run(client_transfer, proxy.port, args.window + 60)
            result = server.result(timeout=30)
        finally:
            proxy.stop()
    finally:
        server.stop()
    median_rtt = result.get("median_rtt")
    min_rtt = result.get("min_rtt") or 0.0
    return {
        "cc": cc,
        "loss": loss,
        "seed": seed,
        "bytes": received,
        "seconds": elapsed,
        "goodput_MBps": received / elapsed / 1e6,
        "rtt_under_load": (median_rtt / min_rtt) if median_rtt and min_rtt else None,
        "min_rtt": min_rtt,
        "packets_sent": result.get("packets_sent"),
        "packets_lost": result.get("packets_lost"),
    }


def driver(args: argparse.Namespace) -> int:
    algorithms = args.algorithms.split(",")
    losses = [float(x) for x in args.losses.split(",")]
    records: list[dict[str, Any]] = []
    with temporary_certificate() as cert:
        for run in range(args.runs):
            for loss in losses:
                for cc in algorithms:
                    record = run_cell(
                        cc, loss, seed=1000 * run + int(loss * 1000), cert=cert, args=args
                    )
                    record["run"] = run
                    records.append(record)
                    print(
                        f"run {run} loss {loss:.0%} {cc:5}: {record['goodput_MBps']:.2f} MB/s"
                        f" ({record['bytes'] / 1e6:.1f} MB in {record['seconds']:.1f} s),"
                        f" RTT under load {record['rtt_under_load'] or 0:.2f}x"
                        f" (min {record['min_rtt'] * 1000:.1f} ms),"
                        f" lost {record['packets_lost']}/{record['packets_sent']}",
                        file=sys.stderr,
                        flush=True,
                    )
    print("\n| loss | cc | goodput MB/s (median) | runs | RTT under load (median) |")
    print("|---|---|---|---|---|")
    for loss in losses:
        for cc in algorithms:
            cell = [r for r in records if r["cc"] == cc and r["loss"] == loss]
            goodputs = [r["goodput_MBps"] for r in cell]
            rtts = [r["rtt_under_load"] for r in cell if r["rtt_under_load"]]
            print(
                f"| {loss:.0%} | {cc} | {statistics.median(goodputs):.2f} |"
                f" {', '.join(f'{g:.2f}' for g in goodputs)} |"
                f" {statistics.median(rtts) if rtts else float('nan'):.2f}x |"
            )
    if args.json:
        print(json.dumps(records, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="mode")
    server = sub.add_parser("server")
    server.add_argument("--cc", required=True)
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--size", type=int, required=True)
    server.add_argument("--window", type=float, required=True)
    server.add_argument("--trace", action="store_true")
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--upstream", type=int, required=True)
    proxy.add_argument("--loss", type=float, required=True)
    proxy.add_argument("--seed", type=int, required=True)
    proxy.add_argument("--burst", type=int, default=DEFAULT_BURST)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--losses", default="0,0.01,0.03")
    parser.add_argument("--algorithms", default="reno,cubic,bbr")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--trace", action="store_true", help="BBR state every 0.2 s")
    args = parser.parse_args()
    if args.mode == "server":
        trio.run(server_main, args)
        return 0
    if args.mode == "proxy":
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(proxy_main, args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
