"""Pub/sub benchmark (issue 5): market data over quicframe next to the transport, grpcio and zmq.

Usage::

    python bench/pubsub_bench.py [--quick] [--rounds N] [--fanout-connections 100,1]
                                 [--parts single,transport,fanout,acks,grpcio,pyzmq]
                                 [--anchors DIR] [--timeout S] [--json]
    python bench/pubsub_bench.py server --port P        # prints "READY <port>"
    python bench/pubsub_bench.py client --port P --workload single|fanout-cK|ack-idle|ack-flood
    python bench/pubsub_bench.py zmq-server             # prints "READY <pub port> <ctl port>"
    python bench/pubsub_bench.py zmq-client --port P --ctl-port C

What one invocation measures, in interleaved rounds (3 by default, the order of
the runs reversed every other round), each client run a fresh process with
fresh connections (handshakes and subscribing not timed), medians over rounds:

1. **single**: ticks/s to one subscriber over a reliable stream.  The server
   process publishes N MarketTick values (200,000; ``--quick`` 50,000, W3's
   counts) as fast as it can: ``Topic.publish_many`` of 256 at a time on a topic
   with the **BLOCK** policy, so the publisher waits for the subscriber instead of
   dropping anything.  The client (``client.subscribe(..., snapshot=False)``,
   ``sub.receive_many()``) counts the decoded MarketTick values and checks that
   the sequence numbers run from SUBSCRIBED's head + 1 without a hole.  Clock: from
   the client's START call (an RPC on the same connection) to the last tick, as W3
   times from its request.  Compared with the transport's own **W3** msgs/s
   (``bench/transport_bench.py``'s server and client, same counts, same run):
   target >= 0.8x.  A MarketTick frame is 60 bytes on the wire, a W3 tick 64.
2. **fanout-cK**: the same topic with 100 subscribers, all in one client process,
   spread round-robin over K QUIC connections (``--fanout-connections``, default
   ``100,1``: both one connection per subscriber, as 100 separate subscribers
   would have, and all 100 on one connection).  The server publishes N ticks
   (20,000; 5,000); total ticks/s = 100 N / time from the START call to the last
   tick of the last subscriber.  Compared with the single-subscriber rate:
   target >= 0.8x, judged for each K.
3. **ack-idle / ack-flood**: one connection holds two subscriptions, order
   acknowledgements (``OrderAck``, BLOCK, HIGH urgency) and ticks (a second
   MarketTick topic, CONFLATE, LOW urgency, 256 instruments).  The server
   publishes acknowledgements at a fixed 200/s (1,000; 400); with ``ack-flood`` it
   also publishes ticks as fast as it can on the tick topic (``publish_many`` of
   256, from 0.5 s before the first acknowledgement until 0.1 s after the last).
   Latency of an acknowledgement: the client's ``time.time_ns()`` when the
   application takes it from the subscription minus its ``send_time_ns`` (stamped
   by the topic when published; same host, same clock).  p50 and p99
   (``sorted[int(0.99 n)]``) of the flood run are shown next to the idle run's.
   The issue's test bound (3x the idle p99) is for a congested link; here the
   flood saturates the CPUs of both processes instead, so the ratio is reported,
   not judged.
4. **grpcio**: the anchors' ``grpc_bench.py`` W3 (``--server aio``: grpcio aio
   server streaming 64-byte messages to a sync-channel iterator, the anchors'
   f-grpcio-aio row), same counts: target single / grpcio >= 10x.
   **pyzmq**: a minimal PUB/SUB pair of this file (not the anchors' W3, which
   uses PUSH/PULL): a PUB socket bound on 127.0.0.1 sends N 64-byte messages
   (u64 seq + 56 bytes, the anchors' message) in a tight loop, a SUB socket
   subscribed to everything receives them and checks the sequence.  Both
   high-water marks are 0 (unlimited), so PUB never drops (the count N bounds the
   memory); the subscription is confirmed with a probe message before the clock
   starts, so the slow-joiner loss cannot happen.  The ratio single / pyzmq is
   reported, not judged.

The summary also shows each ratio per round, and the CPU per message of both
processes (server from /proc, client its own process time) for single, W3 and
grpcio.  For investigation only, ``--send-buffer BYTES`` sets the tick topics'
``Topic(send_buffer=...)`` (default: the Topic default) and ``--flood-batch N``
the ticks per ``publish_many`` of the flood (256).

QUIC settings as in ``bench/transport_bench.py``: 16 MiB connection and stream
receive windows on both sides, reno, aioquic core, a self-signed certificate made
at run time, ``insecure=True`` clients, heartbeats off on the clients.

Bounds: everything is on 127.0.0.1; servers must print READY within 20 s; each
client run has a time limit (``--timeout``, default 180 s, 90 s with ``--quick``)
and the server bounds each publishing job too; every child is stopped by its PID
(SIGTERM, then SIGKILL) on every exit path, and servers also get SIGTERM when the
driver dies (Linux ``PR_SET_PDEATHSIG``).  The kernel's UDP receive drops of the
benchmark's sockets are shown per QUIC run.  A FAIL is a measurement, not an
error: the exit status is 1 only when a run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio
from transport_bench import (
    MAX_DATA,
    Children,
    Side,
    die_with_parent,
    find_anchors,
    fmt,
    free_port,
    load_certificate,
    run_client,
)

HOST: Final = "127.0.0.1"
HERE: Final = Path(__file__).resolve().parent

BLOCK_TOPIC: Final = "bench.block"
FLOOD_TOPIC: Final = "bench.flood"
ACK_TOPIC: Final = "bench.acks"
START_TICKS: Final = 0x0B01
START_ACKS: Final = 0x0B02

BATCH: Final = 256  # ticks per publish_many, as W3 hands 256 ticks at a time
INSTRUMENTS: Final = 256
ACK_RATE: Final = 200.0  # acknowledgements per second
FLOOD_WARMUP: Final = 0.5  # seconds of flood before the first acknowledgement
FLOOD_TAIL: Final = 0.1  # seconds of flood after the last one
SUBSCRIBERS: Final = 100

FULL: Final[dict[str, int]] = {"ticks": 200_000, "fanout_ticks": 20_000, "acks": 1000}
QUICK: Final[dict[str, int]] = {"ticks": 50_000, "fanout_ticks": 5_000, "acks": 400}

PARTS: Final = ("single", "transport", "fanout", "acks", "grpcio", "pyzmq")

ZMQ_SEQ: Final = struct.Struct(">Q")
ZMQ_FILLER: Final = b"\xab" * 56
ZMQ_PROBE: Final = b"probe"
ZMQ_TIMEOUT_MS: Final = 60_000

SERVER_START_TIMEOUT: Final = 20.0

perf = time.perf_counter_ns


def counts(quick: bool) -> dict[str, int]:
    return dict(QUICK if quick else FULL)


def emit(record: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    if not n:
        return {"n": 0}
    return {
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1e3,
        "max_us": ordered[-1] / 1e3,
        "n": n,
    }


# ------------------------------------------------------------------------------------
# quicframe server: three topics and two control RPCs
# ------------------------------------------------------------------------------------


def tick_pool() -> list[Any]:
    """BATCH ticks of distinct instruments; a Topic stamps seq and send time itself."""
    from quicframe import MarketTick

    now = time.time_ns()
    return [
        MarketTick(
            seq=0,
            event_time_ns=now,
            send_time_ns=0,
            price=100_000_000_000 + i,
            quantity=100 + i,
            instrument_id=i % INSTRUMENTS,
            side=1,
            kind=1,
        )
        for i in range(BATCH)
    ]


async def server_main(port: int, send_buffer: int | None, flood_batch: int) -> None:
    import quicframe

    cert_pem, key_pem = load_certificate()
    config = quicframe.ServerConfig(
        certificate=cert_pem,
        private_key=key_pem,
        connection_receive_window=MAX_DATA,
        stream_receive_window=MAX_DATA,
    )
    router = quicframe.Router()

    # Keyed by instrument, named as a field: the topic reads it in C.
    block: quicframe.Topic[Any] = quicframe.Topic(
        BLOCK_TOPIC,
        frame=quicframe.MarketTick,
        key="instrument_id",
        policy="block",
        send_buffer=send_buffer,
    )
    flood: quicframe.Topic[Any] = quicframe.Topic(
        FLOOD_TOPIC,
        frame=quicframe.MarketTick,
        key="instrument_id",
        policy="conflate",
        send_buffer=send_buffer,
    )
    acks: quicframe.Topic[Any] = quicframe.Topic(ACK_TOPIC, frame=quicframe.OrderAck)
    for topic in (block, flood, acks):
        router.add_topic(topic)
    pool = tick_pool()

    async def publish_ticks(n: int, limit: float) -> None:
        with trio.move_on_after(limit):
            left = n
            while left > 0:
                size = min(BATCH, left)
                await block.publish_many(pool if size == BATCH else pool[:size])
                left -= size

    async def flood_ticks() -> None:
        batch = pool[:flood_batch]
        while True:
            await flood.publish_many(batch)

    async def publish_acks(n: int, rate: float, with_flood: bool, limit: float) -> None:
        with trio.move_on_after(limit):
            async with trio.open_nursery() as inner:
                if with_flood:
                    inner.start_soon(flood_ticks)
                    await trio.sleep(FLOOD_WARMUP)
                start = trio.current_time()
                for i in range(n):
                    await trio.sleep_until(start + i / rate)
                    await acks.publish(
                        quicframe.OrderAck(
                            seq=0,
                            order_id=i + 1,
                            client_order_id=1_000_000 + i,
                            event_time_ns=time.time_ns(),
                            send_time_ns=0,
                            price=100_000_000_000,
                            quantity=100,
                            filled_quantity=100,
                            instrument_id=i % INSTRUMENTS,
                            side=1,
                            status=2,
                        )
                    )
                await trio.sleep(FLOOD_TAIL)
                inner.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:

        @router.rpc(START_TICKS)
        async def start_ticks(request: Any, ctx: quicframe.CallContext) -> Any:
            # Each subscriber's queue is attached before its SUBSCRIBED goes out,
            # so all of them are here by the time the call arrives.
            if block.subscribers < int(request["subscribers"]):
                raise RuntimeError(f"only {block.subscribers} subscribers")
            first = block.head + 1
            nursery.start_soon(publish_ticks, int(request["n"]), float(request["limit"]))
            return {"first": first}

        @router.rpc(START_ACKS)
        async def start_acks(request: Any, ctx: quicframe.CallContext) -> Any:
            nursery.start_soon(
                publish_acks,
                int(request["n"]),
                float(request["rate"]),
                bool(request["flood"]),
                float(request["limit"]),
            )
            return {"first": acks.head + 1}

        server = await nursery.start(quicframe.serve, router, HOST, port, config)
        print(f"READY {server.port}", flush=True)


# ------------------------------------------------------------------------------------
# quicframe clients
# ------------------------------------------------------------------------------------


def client_config() -> Any:
    import quicframe

    return quicframe.ClientConfig(
        insecure=True,
        server_name="localhost",
        connection_receive_window=MAX_DATA,
        stream_receive_window=MAX_DATA,
    )


async def run_single(port: int, n: int, limit: float) -> dict[str, Any]:
    import quicframe

    async with (
        quicframe.connect(HOST, port, client_config(), heartbeat=False) as client,
        client.subscribe(BLOCK_TOPIC, snapshot=False) as sub,
    ):
        assert sub.subscribed is not None
        expect = sub.subscribed.head + 1
        count = 0
        in_order = True
        receive = sub.receive_many
        with trio.fail_after(limit):
            cpu0 = time.process_time()
            t0 = perf()
            await client.call(START_TICKS, {"n": n, "subscribers": 1, "limit": limit})
            while count < n:
                for tick in await receive():
                    if tick.seq != expect:
                        in_order = False
                    expect = tick.seq + 1
                    count += 1
            wall = (perf() - t0) / 1e9
        stats = sub.stats()
        path = client.connection.statistics()
    return {
        "workload": "single",
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        "msgs_per_s": count / wall,
        "n": count,
        "gaps": stats.gaps,
        "duplicates": stats.duplicates,
        "latency_p50_us": None if stats.latency_p50_ns is None else stats.latency_p50_ns / 1e3,
        "latency_p99_us": None if stats.latency_p99_ns is None else stats.latency_p99_ns / 1e3,
        "packets_sent": path.packets_sent,
        "packets_lost": path.packets_lost,
        "ok": count == n and in_order and stats.gaps == 0 and stats.duplicates == 0,
    }


async def open_subscribers(
    stack: contextlib.AsyncExitStack, port: int, topic: str, subscribers: int, connections: int
) -> tuple[list[Any], list[Any]]:
    """``connections`` clients and ``subscribers`` subscriptions to ``topic`` spread
    over them (no snapshot), closed with ``stack``."""
    import quicframe

    clients = [
        await stack.enter_async_context(
            quicframe.connect(HOST, port, client_config(), heartbeat=False)
        )
        for _ in range(connections)
    ]
    subs = [
        await stack.enter_async_context(clients[i % connections].subscribe(topic, snapshot=False))
        for i in range(subscribers)
    ]
    return clients, subs


async def run_fanout(
    port: int, n: int, subscribers: int, connections: int, limit: float
) -> dict[str, Any]:

    received = [0] * subscribers
    finished = [0] * subscribers
    in_order = [True] * subscribers
    async with contextlib.AsyncExitStack() as stack:
        clients, subs = await open_subscribers(stack, port, BLOCK_TOPIC, subscribers, connections)

        async def consume(index: int, sub: Any) -> None:
            expect = sub.subscribed.head + 1
            count = 0
            ordered = True
            receive = sub.receive_many
            while count < n:
                for tick in await receive():
                    if tick.seq != expect:
                        ordered = False
                    expect = tick.seq + 1
                    count += 1
            received[index] = count
            in_order[index] = ordered
            finished[index] = perf()

        with trio.fail_after(limit):
            cpu0 = time.process_time()
            t0 = perf()
            async with trio.open_nursery() as nursery:
                for index, sub in enumerate(subs):
                    nursery.start_soon(consume, index, sub)
                await clients[0].call(
                    START_TICKS, {"n": n, "subscribers": subscribers, "limit": limit}
                )
            wall = (max(finished) - t0) / 1e9
        gaps = sum(sub.stats().gaps for sub in subs)
        duplicates = sum(sub.stats().duplicates for sub in subs)
        slowest = (max(finished) - t0) / 1e9
        fastest = (min(finished) - t0) / 1e9
    total = sum(received)
    return {
        "workload": f"fanout-c{connections}",
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        "total_per_s": total / wall,
        "per_subscriber_per_s": n / wall,
        "first_done_s": fastest,
        "last_done_s": slowest,
        "n": total,
        "subscribers": subscribers,
        "connections": connections,
        "gaps": gaps,
        "duplicates": duplicates,
        "ok": total == n * subscribers and all(in_order) and gaps == 0 and duplicates == 0,
    }


async def run_acks(port: int, n: int, flood: bool, limit: float) -> dict[str, Any]:
    import quicframe

    latencies: list[int] = []
    ticks = [0]
    async with (
        quicframe.connect(HOST, port, client_config(), heartbeat=False) as client,
        client.subscribe(ACK_TOPIC, snapshot=False) as ack_sub,
        client.subscribe(FLOOD_TOPIC, snapshot=False) as tick_sub,
    ):
        assert ack_sub.subscribed is not None
        expect = ack_sub.subscribed.head + 1
        in_order = True

        async def take_ticks() -> None:
            while True:
                ticks[0] += len(await tick_sub.receive_many())

        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take_ticks)
                t0 = perf()
                await client.call(
                    START_ACKS, {"n": n, "rate": ACK_RATE, "flood": flood, "limit": limit}
                )
                clock = time.time_ns
                async for ack in ack_sub:
                    latencies.append(clock() - ack.send_time_ns)
                    if ack.seq != expect:
                        in_order = False
                    expect = ack.seq + 1
                    if len(latencies) >= n:
                        break
                wall = (perf() - t0) / 1e9
                nursery.cancel_scope.cancel()
        tick_stats = tick_sub.stats()
        ack_stats = ack_sub.stats()
    return {
        "workload": "ack-flood" if flood else "ack-idle",
        **percentiles(latencies),
        "acks": len(latencies),
        "wall_s": wall,
        "ticks": ticks[0],
        "ticks_per_s": ticks[0] / wall,
        "ticks_missing": tick_stats.missing,
        # The subscription's own send-to-receive figures (when its task took the
        # frame off the stream, before the application): the rest is scheduling.
        "sub_p50_us": None if ack_stats.latency_p50_ns is None else ack_stats.latency_p50_ns / 1e3,
        "sub_p99_us": None if ack_stats.latency_p99_ns is None else ack_stats.latency_p99_ns / 1e3,
        "ok": len(latencies) == n and in_order and ack_stats.gaps == 0,
    }


async def client_main(port: int, workload: str, n: dict[str, int], limit: float) -> None:
    if workload == "single":
        result = await run_single(port, n["ticks"], limit)
    elif workload.startswith("fanout-c"):
        connections = int(workload.removeprefix("fanout-c"))
        result = await run_fanout(port, n["fanout_ticks"], SUBSCRIBERS, connections, limit)
    elif workload in ("ack-idle", "ack-flood"):
        result = await run_acks(port, n["acks"], workload == "ack-flood", limit)
    else:
        raise SystemExit(f"unknown workload {workload}")
    emit({"anchor": "quicframe-pubsub", **result})


# ------------------------------------------------------------------------------------
# pyzmq PUB/SUB
# ------------------------------------------------------------------------------------


def zmq_server() -> None:
    import zmq

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # unlimited: N bounds the queue, PUB never drops
    pub_port = pub.bind_to_random_port(f"tcp://{HOST}", 20000, 32000)
    control = context.socket(zmq.REP)
    control_port = control.bind_to_random_port(f"tcp://{HOST}", 20000, 32000)
    print(f"READY {pub_port} {control_port}", flush=True)
    try:
        while True:
            request = control.recv()
            control.send(b"ok")
            if request[:1] == b"P":
                pub.send(ZMQ_PROBE)
            elif request[:1] == b"T":
                n = int.from_bytes(request[1:5], "big")
                send = pub.send
                pack = ZMQ_SEQ.pack
                filler = ZMQ_FILLER
                for seq in range(n):
                    send(pack(seq) + filler)
    finally:
        context.destroy(linger=0)


def zmq_client(pub_port: int, control_port: int, n: int) -> None:
    import zmq

    context = zmq.Context()
    try:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://{HOST}:{pub_port}")
        control = context.socket(zmq.REQ)
        control.setsockopt(zmq.RCVTIMEO, ZMQ_TIMEOUT_MS)
        control.connect(f"tcp://{HOST}:{control_port}")
        # Probe until the subscription has reached the publisher (no slow joiner).
        deadline = time.monotonic() + 10
        while True:
            if time.monotonic() > deadline:
                raise SystemExit("the PUB/SUB subscription never became live")
            control.send(b"P")
            control.recv()
            if sub.poll(100) and sub.recv() == ZMQ_PROBE:
                break
        while sub.poll(50):  # late probes
            sub.recv()
        sub.setsockopt(zmq.RCVTIMEO, ZMQ_TIMEOUT_MS)
        unpack = ZMQ_SEQ.unpack_from
        recv = sub.recv
        in_order = True
        cpu0 = time.process_time()
        t0 = perf()
        control.send(b"T" + n.to_bytes(4, "big"))
        control.recv()
        for seq in range(n):
            if unpack(recv(), 0)[0] != seq:
                in_order = False
        wall = (perf() - t0) / 1e9
    finally:
        context.destroy(linger=0)
    emit(
        {
            "anchor": "pyzmq-pubsub",
            "workload": "pubsub",
            "cpu_s": time.process_time() - cpu0,
            "wall_s": wall,
            "msgs_per_s": n / wall,
            "n": n,
            "ok": in_order,
        }
    )


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def launch(
    children: Children, name: str, argv: list[str], log_path: Path
) -> tuple[subprocess.Popen[Any], list[int]]:
    """Start a server; return it and the ports of its ``READY <port>...`` line."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    children.live[process.pid] = process
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY"):
                return process, [int(word) for word in line.split()[1:]]
        if process.poll() is not None:
            break
        time.sleep(0.02)
    children.stop(process)
    raise RuntimeError(f"{name} server not ready: {log_path.read_text(errors='replace')[-1500:]}")


# (label, side, workload, metric)
Measure = tuple[str, str, str, str]


def measures(fanouts: Sequence[int]) -> list[Measure]:
    out: list[Measure] = [
        ("pub/sub 1 subscriber ticks/s", "pubsub", "single", "msgs_per_s"),
        ("transport W3 msgs/s", "transport", "w3", "msgs_per_s"),
    ]
    for k in fanouts:
        out.append(
            (
                f"pub/sub {SUBSCRIBERS} subs / {k} conn total ticks/s",
                "pubsub",
                f"fanout-c{k}",
                "total_per_s",
            )
        )
    out += [
        ("ack latency idle p50 us", "pubsub", "ack-idle", "p50_us"),
        ("ack latency idle p99 us", "pubsub", "ack-idle", "p99_us"),
        ("ack latency flood p50 us", "pubsub", "ack-flood", "p50_us"),
        ("ack latency flood p99 us", "pubsub", "ack-flood", "p99_us"),
        ("ack latency flood max us", "pubsub", "ack-flood", "max_us"),
        ("  same, at the subscription task p50 us", "pubsub", "ack-flood", "sub_p50_us"),
        ("  same, at the subscription task p99 us", "pubsub", "ack-flood", "sub_p99_us"),
        ("flood ticks/s received", "pubsub", "ack-flood", "ticks_per_s"),
        ("grpcio W3 (aio server) msgs/s", "grpcio", "w3", "msgs_per_s"),
        ("pyzmq PUB/SUB msgs/s", "pyzmq", "pubsub", "msgs_per_s"),
    ]
    return out


def values(records: list[dict[str, Any]], side: str, workload: str, metric: str) -> list[float]:
    return [
        float(r["result"][metric])
        for r in records
        if r["side"] == side
        and r["workload"] == workload
        and "error" not in r
        and r["result"].get(metric) is not None
    ]


def median_of(records: list[dict[str, Any]], side: str, workload: str, metric: str) -> float | None:
    found = values(records, side, workload, metric)
    return statistics.median(found) if found else None


def summarize(
    records: list[dict[str, Any]], fanouts: Sequence[int]
) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    header = f"{'measure':44s} {'median':>11s} {'runs':>4s}  spread (min-max)"
    lines += [header, "-" * len(header)]
    for label, side, workload, metric in measures(fanouts):
        found = values(records, side, workload, metric)
        if not found:
            continue  # not run (--parts), or every run failed (see the run lines)
        mid = statistics.median(found)
        spread = f"{fmt(min(found))}-{fmt(max(found))}"
        lines.append(f"{label:44s} {fmt(mid):>11s} {len(found):4d}  {spread}")
        rows.append(
            {
                "measure": label,
                "side": side,
                "workload": workload,
                "metric": metric,
                "median": mid,
                "values": found,
            }
        )

    Key = tuple[str, str, str]  # side, workload, metric
    single: Key = ("pubsub", "single", "msgs_per_s")
    # (label, ours, theirs, comparison, target or None)
    checks: list[tuple[str, Key, Key, str, float | None]] = [
        ("1. single / transport W3", single, ("transport", "w3", "msgs_per_s"), ">=", 0.8)
    ]
    for k in fanouts:
        checks.append(
            (
                f"2. fan-out {SUBSCRIBERS} subs, {k} conn / single",
                ("pubsub", f"fanout-c{k}", "total_per_s"),
                single,
                ">=",
                0.8,
            )
        )
    checks += [
        (
            "3. ack p99 flood / idle",
            ("pubsub", "ack-flood", "p99_us"),
            ("pubsub", "ack-idle", "p99_us"),
            "",
            None,
        ),
        ("4. single / grpcio W3", single, ("grpcio", "w3", "msgs_per_s"), ">=", 10.0),
        ("4. single / pyzmq PUB/SUB", single, ("pyzmq", "pubsub", "msgs_per_s"), "", None),
    ]

    def by_round(key: Key) -> dict[int, float]:
        side, workload, metric = key
        return {
            int(r["round"]): float(r["result"][metric])
            for r in records
            if r["side"] == side
            and r["workload"] == workload
            and "error" not in r
            and r["result"].get(metric) is not None
        }

    lines.append("")
    header = (
        f"{'ratio (of the medians)':44s} {'value':>7s} {'target':>8s} {'verdict':>7s}  per round"
    )
    lines += [header, "-" * len(header)]
    for label, ours_key, theirs_key, op, target in checks:
        ours = median_of(records, *ours_key)
        theirs = median_of(records, *theirs_key)
        ratio = ours / theirs if ours is not None and theirs else None
        mine, other = by_round(ours_key), by_round(theirs_key)
        per_round = [mine[n] / other[n] for n in sorted(mine) if other.get(n)]
        passed: bool | None = None
        verdict = "report"
        if target is not None:
            verdict = "-"
            if ratio is not None:
                passed = ratio >= target
                verdict = "PASS" if passed else "FAIL"
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        target_text = f"{op} {target:g}x" if target is not None else ""
        lines.append(
            f"{label:44s} {ratio_text:>7s} {target_text:>8s} {verdict:>7s}  "
            + ", ".join(f"{x:.2f}" for x in per_round)
        )
        rows.append(
            {
                "ratio": label,
                "value": ratio,
                "target": target_text or None,
                "pass": passed,
                "per_round": per_round,
            }
        )
    lines.append("")
    lines.append("CPU per message, us (medians; server from /proc, client its own process time):")
    for side, workload in (("pubsub", "single"), ("transport", "w3"), ("grpcio", "w3")):
        runs = [r for r in records if r["side"] == side and r["workload"] == workload]
        server = [
            r["server_cpu_s"] * 1e6 / r["result"]["n"]
            for r in runs
            if "error" not in r and r.get("server_cpu_s") is not None and r["result"].get("n")
        ]
        client = [
            r["result"]["cpu_s"] * 1e6 / r["result"]["n"]
            for r in runs
            if "error" not in r and r["result"].get("cpu_s") is not None and r["result"].get("n")
        ]
        if server or client:
            server_text = fmt(statistics.median(server)) if server else "-"
            client_text = fmt(statistics.median(client)) if client else "-"
            lines.append(
                f"  {side + ' ' + workload:22s} server {server_text:>6s}  client {client_text:>6s}"
            )
            rows.append(
                {
                    "cpu_us_per_message": f"{side} {workload}",
                    "server": statistics.median(server) if server else None,
                    "client": statistics.median(client) if client else None,
                }
            )
    lines.append("")
    lines.append("kernel UDP receive drops on the benchmark's sockets (server + client, per run):")
    for side, workload in [("pubsub", "single"), ("transport", "w3")] + [
        ("pubsub", f"fanout-c{k}") for k in fanouts
    ]:
        runs = [r for r in records if r["side"] == side and r["workload"] == workload]
        if not runs:
            continue
        cells = [f"{r['server_drops']}+{r['client_drops_polled']}" for r in runs]
        lost = [str(r.get("result", {}).get("packets_lost", "-")) for r in runs]
        lines.append(
            f"  {side + ' ' + workload:22s} drops {', '.join(cells)}"
            + (f"; QUIC packets lost {', '.join(lost)}" if workload == "single" else "")
        )
    return lines, rows


def brief(record: dict[str, Any]) -> str:
    if "error" in record:
        return "ERROR " + str(record["error"])[-300:]
    result = record["result"]
    keys = ("msgs_per_s", "total_per_s", "p50_us", "p99_us", "ticks_per_s", "last_done_s")
    text = " ".join(f"{k}={fmt(result[k])}" for k in keys if result.get(k) is not None)
    cpu = record.get("server_cpu_s")
    return text + (f" server_cpu={cpu}s" if cpu is not None else "")


def driver(args: argparse.Namespace) -> int:
    python = args.python or sys.executable
    me = str(Path(__file__).resolve())
    transport = str(HERE / "transport_bench.py")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in parts:
        if part not in PARTS:
            raise SystemExit(f"unknown part {part} (choose from {', '.join(PARTS)})")
    fanouts = [int(k) for k in args.fanout_connections.split(",") if k.strip()]
    if any(k < 1 or k > SUBSCRIBERS for k in fanouts):
        raise SystemExit(f"--fanout-connections takes 1..{SUBSCRIBERS}")
    skipped: list[str] = []
    grpc_bench: Path | None = None
    if "grpcio" in parts:
        try:
            grpc_bench = find_anchors(args.anchors) / "grpc_bench.py"
        except SystemExit as exc:
            skipped.append(f"grpcio: skipped ({exc})")
        else:
            probe = subprocess.run([python, "-c", "import grpc"], capture_output=True, check=False)
            if probe.returncode != 0 or not grpc_bench.is_file():
                skipped.append("grpcio: skipped (no grpcio, or no grpc_bench.py in the anchors)")
                grpc_bench = None
    if "pyzmq" in parts:
        probe = subprocess.run([python, "-c", "import zmq"], capture_output=True, check=False)
        if probe.returncode != 0:
            skipped.append("pyzmq: skipped (pip install pyzmq)")
            parts.remove("pyzmq")
    for line in skipped:
        print(line, file=sys.stderr, flush=True)
    rounds = args.rounds
    timeout = args.timeout or (90.0 if args.quick else 180.0)
    extra = ["--quick"] if args.quick else []
    send_buffer = [] if args.send_buffer is None else ["--send-buffer", str(args.send_buffer)]
    send_buffer += ["--flood-batch", str(args.flood_batch)]
    children = Children()
    records: list[dict[str, Any]] = []
    failures = 0

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qf-pubsub-bench-") as workdir:
        try:
            for round_number in range(1, rounds + 1):
                servers: list[subprocess.Popen[Any]] = []
                try:
                    log = Path(workdir)
                    # (side, workload, port)
                    runs: list[tuple[Side, str, int, subprocess.Popen[Any]]] = []
                    quicframe_side = Side(
                        "pubsub",
                        [python, "-B", me, "server", *send_buffer],
                        [python, "-B", me, "client", "--timeout", str(timeout)],
                    )
                    process, (port,) = launch(
                        children,
                        "pubsub",
                        [*quicframe_side.server_argv, "--port", str(free_port())],
                        log / f"pubsub.r{round_number}.log",
                    )
                    servers.append(process)
                    pubsub_server = (port, process)
                    if "transport" in parts:
                        side = Side(
                            "transport",
                            [python, "-B", transport, "server"],
                            [python, "-B", transport, "client"],
                        )
                        process, (port,) = launch(
                            children,
                            "transport",
                            [*side.server_argv, "--port", str(free_port())],
                            log / f"transport.r{round_number}.log",
                        )
                        servers.append(process)
                        runs.append((side, "w3", port, process))
                    if grpc_bench is not None:
                        side = Side(
                            "grpcio",
                            [python, "-B", str(grpc_bench), "server", "--server", "aio"],
                            [python, "-B", str(grpc_bench), "client", "--server", "aio"],
                        )
                        process, (port,) = launch(
                            children,
                            "grpcio",
                            [*side.server_argv, "--port", str(free_tcp_port())],
                            log / f"grpcio.r{round_number}.log",
                        )
                        servers.append(process)
                        runs.append((side, "w3", port, process))
                    if "pyzmq" in parts:
                        process, (pub_port, control_port) = launch(
                            children,
                            "pyzmq",
                            [python, "-B", me, "zmq-server"],
                            log / f"pyzmq.r{round_number}.log",
                        )
                        servers.append(process)
                        side = Side(
                            "pyzmq",
                            [],
                            [python, "-B", me, "zmq-client", "--ctl-port", str(control_port)],
                        )
                        runs.append((side, "pubsub", pub_port, process))
                    # Compared sides back to back: W3, single, grpcio, pyzmq, then
                    # the fan-out (against single) and the acknowledgements.
                    anchors = {side.name: (side, w, p, s) for side, w, p, s in runs}
                    port, process = pubsub_server
                    runs = []
                    if "transport" in anchors:
                        runs.append(anchors["transport"])
                    if "single" in parts:
                        runs.append((quicframe_side, "single", port, process))
                    runs += [anchors[name] for name in ("grpcio", "pyzmq") if name in anchors]
                    if "fanout" in parts:
                        runs += [(quicframe_side, f"fanout-c{k}", port, process) for k in fanouts]
                    if "acks" in parts:
                        runs.append((quicframe_side, "ack-idle", port, process))
                        runs.append((quicframe_side, "ack-flood", port, process))
                    # Every other round in reverse: each comparison stays back to back
                    # and neither side always goes first.
                    order = runs if round_number % 2 else runs[::-1]
                    for side, workload, port, server in order:
                        record = run_client(children, side, server, port, workload, extra, timeout)
                        record["round"] = round_number
                        records.append(record)
                        if "error" in record:
                            failures += 1
                        print(
                            f"[r{round_number}] {side.name:9s} {workload:11s} {brief(record)} "
                            f"drops(server={record['server_drops']}, "
                            f"client={record['client_drops_polled']})",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    for process in servers:
                        children.stop(process)
        except KeyboardInterrupt:
            print("interrupted; stopping children", file=sys.stderr)
            failures += 1
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
        finally:
            children.stop_all()
    load_after = os.getloadavg()
    lines, rows = summarize(records, fanouts if "fanout" in parts else [])
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("quicframe", "aioquic", "trio", "grpcio", "pyzmq")
        if _installed(name)
    )
    n = counts(args.quick)
    context = (
        f"quicframe pub/sub vs transport W3, grpcio, pyzmq PUB/SUB; Python "
        f"{platform.python_version()}, {versions}; {'quick' if args.quick else 'full'} counts "
        f"(ticks {n['ticks']:,}, fan-out {SUBSCRIBERS} x {n['fanout_ticks']:,}, acks "
        f"{n['acks']} at {ACK_RATE:g}/s), {rounds} interleaved rounds, medians; "
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f} / after "
        f"{load_after[0]:.2f}; {time.time() - started:.0f} s"
    )
    if args.json:
        print(json.dumps({"context": context, "failures": failures, "skipped": skipped}))
        for row in rows:
            print(json.dumps(row))
    else:
        print(context)
        print("\n".join(lines))
        for line in skipped:
            print(line)
    return 1 if failures else 0


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# ------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "role",
        nargs="?",
        default="driver",
        choices=["driver", "server", "client", "zmq-server", "zmq-client"],
    )
    parser.add_argument("--port", type=int, default=0, help="server/client: port")
    parser.add_argument("--ctl-port", type=int, default=0, help="zmq-client: control port")
    parser.add_argument("--workload", default="single", help="client: workload")
    parser.add_argument("--quick", action="store_true", help="reduced counts")
    parser.add_argument("--rounds", type=int, default=3, help="driver: rounds (3)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"driver: what to run ({','.join(PARTS)})"
    )
    parser.add_argument(
        "--fanout-connections",
        default=f"{SUBSCRIBERS},1",
        help=f"driver: connections the {SUBSCRIBERS} subscribers share, comma-separated list",
    )
    parser.add_argument("--anchors", default=None, help="driver: the shared/anchors folder")
    parser.add_argument("--python", default=None, help="driver: interpreter for the children")
    parser.add_argument("--timeout", type=float, default=None, help="per client run, s")
    parser.add_argument("--json", action="store_true", help="driver: JSON lines on stdout")
    parser.add_argument(
        "--send-buffer",
        type=int,
        default=None,
        help="server (and driver): Topic(send_buffer=...) of the tick topics, bytes "
        "(default: the Topic default: 64 KiB for the CONFLATE flood, the "
        "connection's 256 KiB stream high-water mark for the BLOCK topic); for investigation",
    )
    parser.add_argument(
        "--flood-batch",
        type=int,
        default=BATCH,
        choices=range(1, BATCH + 1),
        metavar=f"1..{BATCH}",
        help=f"server (and driver): ticks per publish_many of the flood ({BATCH}); "
        "for investigation",
    )
    args = parser.parse_args(argv)
    limit = args.timeout or (90.0 if args.quick else 180.0)
    if args.role == "server":
        die_with_parent()
        trio.run(server_main, args.port or free_port(), args.send_buffer, args.flood_batch)
        return 0
    if args.role == "client":
        die_with_parent()
        trio.run(client_main, args.port, args.workload, counts(args.quick), limit)
        return 0
    if args.role == "zmq-server":
        die_with_parent()
        zmq_server()
        return 0
    if args.role == "zmq-client":
        die_with_parent()
        zmq_client(args.port, args.ctl_port, counts(args.quick)["ticks"])
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
