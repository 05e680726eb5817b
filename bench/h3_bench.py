"""HTTP/3 gateway benchmark: quicframe over HTTP/3 next to native quicframe and the h3 anchors.

Usage::

    python bench/h3_bench.py [--quick] [--rounds N] [--anchors DIR]
    python bench/h3_bench.py server --port P        # quicframe, http3=True; "READY <port>"
    python bench/h3_bench.py h3-client --port P --path /rpc/echo --msgpack [--quick]
    python bench/h3_bench.py native-client --port P [--quick]   # each prints "RESULT {json}"

Workloads (those of ``../shared/anchors/h3``), 64-byte echo on one connection:

* G1: sequential requests, 300 warm-up then N timed (2,000; ``--quick`` 500):
  p50 = ``sorted[n // 2]``, p99 = ``sorted[int(0.99 n)]``, req/s = N / wall.
* G2: 64 requests in flight (64 workers, a new request as soon as one is
  answered) until N were sent (10,000; 2,000); req/s = completed / time of the
  last completion.  G2 stops if nothing was answered for 10 s; requests still
  open then are counted as ``unanswered``.

Sides, every one a server process and a fresh client process per run:

* ``quicframe-h3``: ``quicframe.serve(..., http3=True)``, ``POST /rpc/echo``
  with the payload as a msgpack ``bin`` (66 bytes) and ``application/msgpack``.
* ``quicframe-native``: the same server process, ``client.call(ECHO, payload)``.
* ``hypercorn-trio``: the anchor ``h3/app.py`` under ``hypercorn --worker-class trio``.
* ``aioquic-h3``: the anchor ``h3/aq_server.py`` (asyncio, aioquic's H3Connection).

The HTTP/3 sides are measured by one client (``h3-client``: aioquic's asyncio
layer and ``H3Connection``, ALPN h3, aioquic defaults, certificate not
verified), so they differ only by server.  Rounds interleave the sides.  It
prints the medians and the issue's targets: gateway G1 p50 <= 0.5 x
hypercorn's and <= 1.0 x aioquic-h3's; gateway G2 req/s >= 1.0 x aioquic-h3's;
every request answered.  A side that cannot run (no anchors folder, no
hypercorn) is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _harness import client_result, free_port, note_result

HERE: Final = Path(__file__).resolve().parent
ECHO: Final = 0x0001
PAYLOAD: Final = bytes(range(64))
FULL: Final = {"g1_warmup": 300, "g1_calls": 2000, "g2_calls": 10_000}
QUICK: Final = {**FULL, "g1_calls": 500, "g2_calls": 2000}
IN_FLIGHT: Final = 64
G2_IDLE: Final = 10.0

perf_ns = time.perf_counter_ns


def _latency(samples: list[int], wall: float, calls: int) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50_us": ordered[n // 2] / 1e3 if n else 0.0,
        "p99_us": ordered[min(n - 1, int(0.99 * n))] / 1e3 if n else 0.0,
        "req_per_s": calls / wall,
        "n": n,
    }


# ------------------------------------------------------------------------ quicframe server


def run_server(port: int) -> None:
    import trio

    import quicframe
    from quicframe.testing import write_self_signed_certificate

    router = quicframe.Router()

    @router.rpc(ECHO, name="echo")
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    async def main() -> None:
        with tempfile.TemporaryDirectory() as folder:
            cert, key = write_self_signed_certificate(folder)
            config = quicframe.ServerConfig(certificate=cert, private_key=key)
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    lambda task_status: quicframe.serve(
                        router, "127.0.0.1", port, config, http3=True, task_status=task_status
                    )
                )
                print(f"READY {server.port}", flush=True)

    trio.run(main)


# ------------------------------------------------------------------------ native client


def run_native_client(port: int, counts: dict[str, int]) -> None:
    import trio

    import quicframe

    async def main() -> None:
        config = quicframe.ClientConfig(insecure=True, server_name="localhost")
        async with quicframe.connect("127.0.0.1", port, config, heartbeat=False) as client:
            for _ in range(counts["g1_warmup"]):
                await client.call(ECHO, PAYLOAD)
            samples = []
            bad = 0
            start = perf_ns()
            for _ in range(counts["g1_calls"]):
                t0 = perf_ns()
                reply = await client.call(ECHO, PAYLOAD)
                samples.append(perf_ns() - t0)
                bad += reply != PAYLOAD
            g1 = _latency(samples, (perf_ns() - start) / 1e9, counts["g1_calls"])
            g1["bad"] = bad
            remaining = counts["g2_calls"]
            done = 0
            last = 0
            start = perf_ns()

            async def worker() -> None:
                nonlocal remaining, done, last
                while remaining > 0:
                    remaining -= 1
                    await client.call(ECHO, PAYLOAD)
                    done += 1
                    last = perf_ns()

            async with trio.open_nursery() as nursery:
                for _ in range(IN_FLIGHT):
                    nursery.start_soon(worker)
            g2 = {
                "req_per_s": done / ((last - start) / 1e9),
                "done": done,
                "unanswered": counts["g2_calls"] - done,
            }
        print("RESULT " + json.dumps({"g1": g1, "g2": g2}), flush=True)

    trio.run(main)


# ------------------------------------------------------------------------ HTTP/3 client


def run_h3_client(port: int, path: str, use_msgpack: bool, counts: dict[str, int]) -> None:
    """G1 and G2 on one connection, with aioquic's asyncio layer and H3Connection."""
    import msgpack
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset

    if use_msgpack:
        body: bytes = msgpack.packb(PAYLOAD, use_bin_type=True)
        content_type = b"application/msgpack"
    else:
        body, content_type = PAYLOAD, b"application/octet-stream"

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)
            self.waiting: dict[int, tuple[asyncio.Future[tuple[bytes, bytes]], list[Any]]] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamReset | ConnectionTerminated):
                ids = [event.stream_id] if isinstance(event, StreamReset) else list(self.waiting)
                for stream_id in ids:
                    entry = self.waiting.pop(stream_id, None)
                    if entry is not None and not entry[0].done():
                        entry[0].set_exception(ConnectionError(repr(event)))
            h3_event: H3Event
            for h3_event in self.h3.handle_event(event):
                if not isinstance(h3_event, HeadersReceived | DataReceived):
                    continue
                entry = self.waiting.get(h3_event.stream_id)
                if entry is None:
                    continue
                future, parts = entry
                if isinstance(h3_event, HeadersReceived):
                    parts[0] = dict(h3_event.headers).get(b":status", b"")
                else:
                    parts[1] += h3_event.data
                if h3_event.stream_ended:
                    del self.waiting[h3_event.stream_id]
                    future.set_result((parts[0], bytes(parts[1])))

        async def post(self) -> tuple[bytes, bytes]:
            stream_id = self._quic.get_next_available_stream_id()
            future: asyncio.Future[tuple[bytes, bytes]] = self._loop.create_future()
            self.waiting[stream_id] = (future, [b"", bytearray()])
            headers = [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", f"localhost:{port}".encode()),
                (b":path", path.encode()),
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ]
            self.h3.send_headers(stream_id, headers)
            self.h3.send_data(stream_id, body, end_stream=True)
            self.transmit()
            return await future

    async def main() -> None:
        configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True)
        configuration.verify_mode = ssl.CERT_NONE
        configuration.server_name = "localhost"
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        quic = QuicConnection(configuration=configuration)
        transport, protocol = await loop.create_datagram_endpoint(lambda: Client(quic), sock=sock)
        client: Client = protocol
        try:
            client.connect(("127.0.0.1", port))
            await asyncio.wait_for(client.wait_connected(), 20)
            status, echoed = await asyncio.wait_for(client.post(), 10)
            if status != b"200" or echoed != body:
                raise SystemExit(f"bad echo: {status!r} {echoed!r}")
            for _ in range(counts["g1_warmup"]):
                await asyncio.wait_for(client.post(), 10)
            samples = []
            bad = 0
            start = perf_ns()
            for _ in range(counts["g1_calls"]):
                t0 = perf_ns()
                status, echoed = await asyncio.wait_for(client.post(), 10)
                samples.append(perf_ns() - t0)
                bad += status != b"200" or echoed != body
            g1 = _latency(samples, (perf_ns() - start) / 1e9, counts["g1_calls"])
            g1["bad"] = bad
            g2 = await run_g2(client)
        finally:
            client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.wait_closed(), 5)
            transport.close()
        print("RESULT " + json.dumps({"g1": g1, "g2": g2}), flush=True)

    async def run_g2(client: Any) -> dict[str, Any]:
        state = {"remaining": counts["g2_calls"], "sent": 0, "done": 0, "bad": 0, "errors": 0}
        marks = {"last": 0, "progress": perf_ns()}

        async def worker() -> None:
            while state["remaining"] > 0:
                state["remaining"] -= 1
                state["sent"] += 1
                try:
                    status, echoed = await client.post()
                except ConnectionError:
                    state["errors"] += 1
                    return
                state["done"] += 1
                state["bad"] += status != b"200" or echoed != body
                marks["last"] = marks["progress"] = perf_ns()

        start = perf_ns()
        tasks = [asyncio.ensure_future(worker()) for _ in range(IN_FLIGHT)]
        stop = "complete"
        while True:
            _, pending = await asyncio.wait(tasks, timeout=0.25)
            if not pending:
                break
            if (perf_ns() - marks["progress"]) / 1e9 > G2_IDLE:
                stop = "stalled"
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        span = (marks["last"] - start) / 1e9
        return {
            "req_per_s": state["done"] / span if span > 0 else 0.0,
            "done": state["done"],
            "unanswered": state["sent"] - state["done"] - state["errors"],
            "not_sent": counts["g2_calls"] - state["sent"],
            "bad": state["bad"],
            "errors": state["errors"],
            "stop": stop,
        }

    asyncio.run(main())


# ------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class Server:
    name: str
    argv: list[str]  # {port}, {cert}, {key} are substituted
    ready_marker: str  # printed (stdout or stderr) once serving; {port} substituted


@dataclass(frozen=True)
class Side:
    name: str
    server: str  # Server.name
    client_argv: list[str]  # "--port P" (and "--quick") are appended


@contextlib.contextmanager
def _start(server: Server, certificate: tuple[str, str], log: Path) -> Iterator[int]:
    port = free_port()
    argv = [part.format(port=port, cert=certificate[0], key=certificate[1]) for part in server.argv]
    marker = server.ready_marker.format(port=port)
    with open(log, "wb") as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=HERE.parent,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if marker in log.read_text(errors="replace"):
                break
            if process.poll() is not None:
                raise RuntimeError(f"{server.name} exited: {log.read_text()[-500:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{server.name} did not start: {log.read_text()[-500:]}")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _setup(args: argparse.Namespace) -> tuple[list[Server], list[Side], list[str]]:
    py = sys.executable
    me = str(Path(__file__).resolve())
    servers = [Server("quicframe", [py, me, "server", "--port", "{port}"], "READY")]
    sides = [
        Side(
            "quicframe-h3",
            "quicframe",
            [py, me, "h3-client", "--path", "/rpc/echo", "--msgpack"],
        ),
        Side("quicframe-native", "quicframe", [py, me, "native-client"]),
    ]
    skipped = []
    anchors = Path(args.anchors) if args.anchors else HERE.parent.parent / "shared" / "anchors"
    h3_dir = anchors / "h3"
    anchor_client = [py, me, "h3-client", "--path", "/echo"]
    if not (h3_dir / "aq_server.py").exists():
        skipped.append(f"aioquic-h3, hypercorn-trio: skipped (no {h3_dir}; see --anchors)")
        return servers, sides, skipped
    servers.append(
        Server("aioquic-h3", [py, str(h3_dir / "aq_server.py"), "--port", "{port}"], "READY")
    )
    sides.append(Side("aioquic-h3", "aioquic-h3", anchor_client))
    probe = subprocess.run([py, "-c", "import hypercorn"], capture_output=True, check=False)
    if probe.returncode != 0:
        skipped.append("hypercorn-trio: skipped (pip install hypercorn)")
    else:
        servers.append(
            Server(
                "hypercorn-trio",
                [
                    py,
                    "-m",
                    "hypercorn",
                    "--worker-class",
                    "trio",
                    "--workers",
                    "1",
                    "--certfile",
                    "{cert}",
                    "--keyfile",
                    "{key}",
                    "--bind",
                    "127.0.0.1:0",
                    "--quic-bind",
                    "127.0.0.1:{port}",
                    f"{h3_dir / 'app.py'}:app",
                ],
                "127.0.0.1:{port} (QUIC)",
            )
        )
        sides.append(Side("hypercorn-trio", "hypercorn-trio", anchor_client))
    return servers, sides, skipped


def driver(args: argparse.Namespace) -> int:
    from quicframe.testing import write_self_signed_certificate

    quick = ["--quick"] if args.quick else []
    servers, sides, skipped = _setup(args)
    by_name = {server.name: server for server in servers}
    for line in skipped:
        print(line, flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        cert, key = (str(p) for p in write_self_signed_certificate(folder))
        for round_number in range(args.rounds):
            shift = round_number % len(sides)
            for side in sides[shift:] + sides[:shift]:
                log = Path(folder) / f"{side.name}.log"
                try:
                    with _start(by_name[side.server], (cert, key), log) as port:
                        argv = [*side.client_argv, "--port", str(port), *quick]
                        record = client_result(argv, args.timeout)
                except RuntimeError as exc:
                    print(f"round {round_number + 1}: {exc}", file=sys.stderr, flush=True)
                    continue
                note_result(results, round_number, side.name, record, _brief)

    def median(side: str, group: str, field: str) -> float | None:
        values = [r[group][field] for r in results.get(side, []) if field in r[group]]
        return statistics.median(values) if values else None

    counts = QUICK if args.quick else FULL
    print(
        f"medians of {args.rounds} interleaved round(s); 64-byte echo; G1 {counts['g1_calls']} "
        f"sequential requests, G2 {counts['g2_calls']} with {IN_FLIGHT} in flight"
    )
    print(
        f"{'side':<20}{'G1 p50 us':>11}{'G1 p99 us':>11}{'G1 req/s':>10}{'G2 req/s':>10}"
        f"{'G2 unanswered':>15}"
    )
    for side in sides:
        if side.name not in results:
            print(f"{side.name:<20}{'no result':>11}")
            continue
        p50, p99, g1_rate = (median(side.name, "g1", f) for f in ("p50_us", "p99_us", "req_per_s"))
        g2_rate = median(side.name, "g2", "req_per_s")
        unanswered = sum(r["g2"].get("unanswered", 0) for r in results[side.name])
        print(
            f"{side.name:<20}{p50 or 0:>11.0f}{p99 or 0:>11.0f}{g1_rate or 0:>10.0f}"
            f"{g2_rate or 0:>10.0f}{unanswered:>15}"
        )
    for line in skipped:
        print(line)
    checks = [
        ("gateway G1 p50 <= 0.5 x hypercorn-trio's", "g1", "p50_us", "hypercorn-trio", 0.5, "<="),
        ("gateway G1 p50 <= 1.0 x aioquic-h3's", "g1", "p50_us", "aioquic-h3", 1.0, "<="),
        ("gateway G2 req/s >= 1.0 x aioquic-h3's", "g2", "req_per_s", "aioquic-h3", 1.0, ">="),
        ("(info) gateway G1 p50 vs native", "g1", "p50_us", "quicframe-native", None, ""),
        ("(info) gateway G2 req/s vs native", "g2", "req_per_s", "quicframe-native", None, ""),
    ]
    for label, group, field, theirs, factor, op in checks:
        mine, other = median("quicframe-h3", group, field), median(theirs, group, field)
        if mine is None or other is None:
            print(f"{label}: not measured")
            continue
        ratio = mine / other
        if factor is None:
            print(f"{label}: {ratio:.2f}x")
            continue
        ok = ratio <= factor if op == "<=" else ratio >= factor
        print(f"{label}: {ratio:.2f}x (target {op} {factor:g}x) {'PASS' if ok else 'FAIL'}")
    gateway = results.get("quicframe-h3", [])
    unanswered = sum(r["g2"].get("unanswered", 0) + r["g2"].get("errors", 0) for r in gateway)
    bad = sum(r["g1"].get("bad", 0) + r["g2"].get("bad", 0) for r in gateway)
    answered_ok = bool(gateway) and unanswered == 0 and bad == 0
    print(
        f"gateway: every request answered correctly: {'PASS' if answered_ok else 'FAIL'} "
        f"(unanswered {unanswered}, wrong {bad})"
    )
    return 0 if results else 1


def _brief(record: dict[str, Any]) -> str:
    g1, g2 = record["g1"], record["g2"]
    return (
        f"G1 p50={g1['p50_us']:.0f}us p99={g1['p99_us']:.0f}us {g1['req_per_s']:.0f} req/s | "
        f"G2 {g2['req_per_s']:.0f} req/s unanswered={g2.get('unanswered', 0)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "role",
        nargs="?",
        default="driver",
        choices=["driver", "server", "h3-client", "native-client"],
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--path", default="/rpc/echo")
    parser.add_argument("--msgpack", action="store_true", help="msgpack body (the gateway)")
    parser.add_argument("--anchors", default=None, help="the anchors folder (../shared/anchors)")
    parser.add_argument("--timeout", type=float, default=240.0, help="per client run, seconds")
    parser.add_argument("--g1-calls", type=int, default=None, help="client: override G1's count")
    parser.add_argument("--g2-calls", type=int, default=None, help="client: override G2's count")
    args = parser.parse_args()
    if args.role == "server":
        with contextlib.suppress(KeyboardInterrupt):
            run_server(args.port)
        return 0
    counts = dict(QUICK if args.quick else FULL)
    if args.g1_calls is not None:
        counts["g1_calls"] = args.g1_calls
    if args.g2_calls is not None:
        counts["g2_calls"] = args.g2_calls
    if args.role == "h3-client":
        run_h3_client(args.port, args.path, args.msgpack, counts)
        return 0
    if args.role == "native-client":
        run_native_client(args.port, counts)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
