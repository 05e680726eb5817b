"""Soak: many clients through a chaos proxy, a server restart, nothing lost.

Usage::

    python bench/soak.py [--minutes M] [--clients N] [--seed S]    # the whole soak
    python bench/soak.py server --port P --cert C --key K --journal DIR   # (internal)
    python bench/soak.py clients --port P --ca C --count N --first I      # (internal)

Three kinds of processes, all on 127.0.0.1:

* this one, the **conductor**: it runs the :class:`~quicframe.testing.ChaosProxy`
  (loss and reordering all the time, loss bursts, blackholes, NAT rebinding of
  every client), starts the server and the client processes, kills the server
  with SIGKILL half-way through and starts a new one on the same port, and a
  probe client that calls the server directly (not through the proxy) every
  half second, to show that the server kept serving while the others suffered;
* the **server**: an echo RPC and the ``md.ticks`` (CONFLATE) and ``md.acks``
  (BLOCK) topics, fed by :class:`~quicframe.testing.RandomWalkFeed`;
* two **client** processes, each with half of the clients: every client calls
  the echo RPC continuously and is subscribed to both topics, with a
  :class:`~quicframe.ReconnectPolicy`, so after the restart it reconnects and
  resubscribes by itself, resuming after the last sequence number it received.

The restart and the order acknowledgements: the server journals the ``md.acks``
topic to a file (every published frame, written with one unbuffered ``write``
before it is queued for any subscriber), and the ``md.ticks`` topic's sequence
numbers (reserved in blocks of 10,000, so a restarted server never reuses a
number).  The restarted server reloads the journal into the topic's history before
it listens, then goes on numbering where the killed one stopped, so "every
acknowledgement published was delivered exactly once and in order to every
subscriber" keeps meaning what it says across the restart: each client checks
that the acks it receives are numbered 1, 2, 3, ... with no gap and no repeat, and
in the end that it holds every number up to the last one published.  Ticks lost
with the killed process are a gap the client sees (CONFLATE ticks are the latest
value, not a record); they are counted, never duplicated.

Every child runs with its stdin a pipe from the conductor and exits when it
closes; the conductor kills every child it started on every way out.  Exit status
0 when every check passed (see :func:`_verdict`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

import quicframe
from quicframe.cli import run_feed
from quicframe.errors import QuicframeError
from quicframe.pubsub import HistoryGap
from quicframe.pubsub._backbone import Entry, InMemoryLog, Snapshot
from quicframe.testing import (
    ChaosProxy,
    LinkPolicy,
    RandomWalkFeed,
    write_self_signed_certificate,
)
from quicframe.wire import MarketTick, OrderAck

TICKS: Final = "md.ticks"
ACKS: Final = "md.acks"
ECHO: Final = 0x0001
TICK_BLOCK: Final = 10_000  # tick sequence numbers reserved per journal write
ACK_HISTORY: Final = 2_000_000  # acks kept in memory (more than a long soak publishes)
_RECORD = struct.Struct("<QBI")  # seq, urgency, length of the frame that follows
_RESERVED = struct.Struct("<Q")
MAX_STEPS: Final = 100_000_000  # bound of every loop that runs until cancelled


# ------------------------------------------------------------------------------------
# Shared: process figures and the line protocol between conductor and children
# ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def task_count() -> int:
    """Every trio task alive in this run, the caller included."""
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@dataclass
class Gauges:
    """Peaks of RSS and task count, sampled every ``interval`` seconds."""

    peak_rss: int = 0
    peak_tasks: int = 0

    def sample(self) -> tuple[int, int]:
        rss, tasks = rss_bytes(), task_count()
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_tasks = max(self.peak_tasks, tasks)
        return rss, tasks

    async def run(self, interval: float = 0.5) -> None:
        for _ in range(MAX_STEPS):  # until cancelled
            self.sample()
            await trio.sleep(interval)


def emit(message: dict[str, Any]) -> None:
    """A child's answer to the conductor: one JSON line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class LineReader:
    """Lines from a trio receive stream (a child's stdout, or our stdin)."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int = 1 << 20) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._max_line = max_line

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode()
            if len(self._buffer) > self._max_line:
                raise ValueError("line too long")
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk


async def commands() -> AsyncGenerator[list[str]]:
    """The conductor's commands on stdin, split into words, until stdin closes."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    reader = LineReader(stdin)
    async with stdin:
        while (line := await reader.readline()) is not None:
            words = line.split()
            if words:
                yield words


# ------------------------------------------------------------------------------------
# The server process: a journaled topic log, the feed, the echo RPC
# ------------------------------------------------------------------------------------


class JournalLog:
    """A topic log that survives the process (a ``quicframe.pubsub.TopicLog``).

    With ``entries=True`` every appended frame is written to ``path`` (one
    unbuffered ``os.write`` each, so a SIGKILL loses nothing that was appended)
    and reloaded on start.  With ``entries=False`` only a bound on the sequence
    numbers is kept: numbers are reserved ``TICK_BLOCK`` at a time, and a new
    process starts numbering above the last reservation, so no number is ever
    handed out twice; the history before the restart is gone (a gap).
    """

    def __init__(self, topic: str, path: Path, *, entries: bool, history: int) -> None:
        self.topic = topic
        self._entries = entries
        self._inner = InMemoryLog(topic, history)
        self._floor = 0
        self.reloaded = 0
        if entries:
            data = path.read_bytes() if path.exists() else b""
            offset = 0
            while offset + _RECORD.size <= len(data):
                seq, urgency, length = _RECORD.unpack_from(data, offset)
                start = offset + _RECORD.size
                if start + length > len(data):
                    break  # a torn last record: it was never published
                frame = data[start : start + length]
                self._inner.append(Entry(seq, None, frame, urgency, 0))
                self.reloaded += 1
                offset = start + length
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if offset < len(data):
                os.ftruncate(self._fd, offset)
        else:
            if path.exists() and path.stat().st_size >= _RESERVED.size:
                (self._floor,) = _RESERVED.unpack(path.read_bytes()[: _RESERVED.size])
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._reserved = self._floor

    @property
    def head(self) -> int:
        return max(self._inner.head, self._floor)

    @property
    def first_seq(self) -> int:
        if len(self._inner) == 0:
            return self.head + 1
        return self._inner.first_seq

    def append(self, entry: Entry, /) -> None:
        if entry.seq <= self.head:
            raise ValueError(f"topic {self.topic!r}: {entry.seq} is not above {self.head}")
        if self._entries:
            os.write(self._fd, _RECORD.pack(entry.seq, entry.urgency, len(entry.data)) + entry.data)
        elif entry.seq > self._reserved:
            self._reserved = entry.seq + TICK_BLOCK
            os.pwrite(self._fd, _RESERVED.pack(self._reserved), 0)
        self._inner.append(entry)

    def read(self, from_seq: int, limit: int, /) -> list[Entry]:
        first = self.first_seq
        if from_seq < first:
            raise HistoryGap(self.topic, from_seq, first - 1, operation="replay")
        if len(self._inner) == 0:
            return []
        return self._inner.read(from_seq, limit)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.head, self._inner.snapshot().entries)


class JournalBackbone:
    """Supplies a :class:`JournalLog` per topic, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.logs: dict[str, JournalLog] = {}

    def log(self, topic: str, /) -> JournalLog:
        log = self.logs.get(topic)
        if log is None:
            entries = topic == ACKS
            log = JournalLog(
                topic,
                self.directory / f"{topic}.journal",
                entries=entries,
                history=ACK_HISTORY if entries else 100_000,
            )
            self.logs[topic] = log
        return log


def _tick_key(tick: MarketTick) -> Hashable:
    return tick.instrument_id


def server_main(args: argparse.Namespace) -> None:
    backbone = JournalBackbone(Path(args.journal))
    router = quicframe.Router()
    ticks = quicframe.Topic(TICKS, frame=MarketTick, key=_tick_key, backbone=backbone)
    acks = quicframe.Topic(ACKS, frame=OrderAck, backbone=backbone)
    router.add_topic(ticks)
    router.add_topic(acks)

    @router.rpc(ECHO, idempotent=True)  # clients retry it and may send it as 0-RTT
    async def echo(request: object, ctx: quicframe.CallContext) -> object:
        return request

    config = quicframe.ServerConfig(
        certificate=args.cert, private_key=args.key, idle_timeout=args.idle_timeout
    )
    feed = RandomWalkFeed(args.instruments, seed=args.seed)

    def streams_open(server: quicframe.Server) -> int:
        return sum(s.connection.statistics().streams_open for s in server._sessions)

    async def main() -> None:
        gauges = Gauges()
        async with (
            quicframe.open_server(router, "127.0.0.1", args.port, config) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(gauges.run)
            feed_scope = trio.CancelScope()

            async def feed_task() -> None:
                with feed_scope:
                    await run_feed(feed, ticks, acks, rate=args.rate, ack_every=args.ack_every)

            rss, tasks = gauges.sample()
            emit(
                {
                    "event": "ready",
                    "port": server.port,
                    "acks_reloaded": backbone.logs[ACKS].reloaded,
                    "ticks_head": ticks.head,
                    "acks_head": acks.head,
                    "rss": rss,
                    "tasks": tasks,
                }
            )
            async with contextlib.aclosing(commands()) as lines:
                async for words in lines:
                    if words[0] == "feed":
                        nursery.start_soon(feed_task)
                        emit({"event": "feed"})
                    elif words[0] in ("stats", "stop"):
                        if words[0] == "stop":
                            feed_scope.cancel()
                            await trio.lowlevel.checkpoint()
                        gc.collect()
                        await trio.sleep(0.2)
                        rss, tasks = gauges.sample()
                        stats = server.statistics()
                        emit(
                            {
                                "event": words[0],
                                "ticks_head": ticks.head,
                                "acks_head": acks.head,
                                "connections": stats.connections,
                                "streams_open": streams_open(server),
                                "calls_completed": stats.calls_completed,
                                "calls_failed": stats.calls_failed,
                                "rss": rss,
                                "tasks": tasks,
                                "peak_rss": gauges.peak_rss,
                                "peak_tasks": gauges.peak_tasks,
                            }
                        )
            nursery.cancel_scope.cancel()

    trio.run(main)


# ------------------------------------------------------------------------------------
# The client process: N clients calling and subscribed, each checking its acks
# ------------------------------------------------------------------------------------


@dataclass
class ClientRecord:
    """What one client saw."""

    calls_ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    ticks: int = 0
    last_tick: int = 0
    tick_duplicates: int = 0
    tick_gaps: int = 0  # numbers skipped (conflation, and the restart)
    acks: int = 0
    last_ack: int = 0
    ack_duplicates: int = 0
    ack_out_of_order: int = 0
    subscription_duplicates: int = 0  # as the library's own statistics count them
    connects: int = 0
    reconnects: int = 0  # the client's own count: connections re-established
    retries: int = 0  # idempotent calls sent again on a new connection
    streams_open_at_end: int = -1

    def on_tick(self, seq: int) -> None:
        self.ticks += 1
        if seq <= self.last_tick:
            self.tick_duplicates += 1
            return
        self.tick_gaps += seq - self.last_tick - 1 if self.last_tick else 0
        self.last_tick = seq

    def on_ack(self, seq: int) -> None:
        self.acks += 1
        if seq <= self.last_ack:
            self.ack_duplicates += 1
        elif seq != self.last_ack + 1:
            self.ack_out_of_order += 1
            self.last_ack = seq
        else:
            self.last_ack = seq

    def failure(self, exc: BaseException, what: str = "") -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                self.failure(inner, what)
        elif isinstance(exc, QuicframeError):
            self.failed[what + type(exc).__name__] += 1
        elif isinstance(exc, trio.TooSlowError):
            self.failed[what + "deadline (caller's fail_after)"] += 1
        else:
            self.failed["UNTYPED " + what + type(exc).__name__] += 1
            if len(self.untyped) < 5:
                self.untyped.append(repr(exc))


class ClientFleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.records = [ClientRecord() for _ in range(args.count)]
        self.calling = True
        self.target: tuple[int, int] | None = None  # (ticks head, acks head) at the end
        self.finish = trio.Event()
        self.caught_up = [trio.Event() for _ in range(args.count)]
        self.done = [trio.Event() for _ in range(args.count)]
        self.changed = trio.lowlevel.ParkingLot()

    def config(self) -> quicframe.ClientConfig:
        return quicframe.ClientConfig(
            ca_file=self.args.ca,
            server_name="localhost",
            idle_timeout=self.args.idle_timeout,
            reconnect=quicframe.ReconnectPolicy(
                max_retries=1000, initial_backoff=0.05, max_backoff=1.0
            ),
        )

    async def run_client(self, index: int) -> None:
        record = self.records[index]
        rng = random.Random(self.args.seed * 1000 + self.args.first + index)
        try:
            # The first connection is not retried by the policy: retry it here (bounded).
            for attempt in range(50):
                try:
                    await self._session(index, record, rng)
                    return
                except QuicframeError as exc:
                    if record.connects:  # connected once: do not start over
                        record.failure(exc, "session: ")
                        return
                    record.failed["first connect: " + type(exc).__name__] += 1
                    await trio.sleep(min(2.0, 0.1 * (attempt + 1)))
        except Exception as exc:
            record.failure(exc, "session: ")
        finally:
            self.caught_up[index].set()
            self.done[index].set()

    async def _session(self, index: int, record: ClientRecord, rng: random.Random) -> None:
        async with quicframe.connect(
            "127.0.0.1", self.args.port, self.config(), idempotent=[ECHO]
        ) as client:
            record.connects += 1
            async with (
                client.subscribe(ACKS, from_seq=1) as ack_sub,
                client.subscribe(TICKS) as tick_sub,
                trio.open_nursery() as nursery,
            ):

                async def take_acks() -> None:
                    async for ack in ack_sub:
                        assert isinstance(ack, OrderAck)
                        record.on_ack(ack.seq)
                        self._check(index)

                async def take_ticks() -> None:
                    for _ in range(MAX_STEPS * 1000):  # until cancelled
                        for tick in await tick_sub.receive_many():
                            assert isinstance(tick, MarketTick)
                            record.on_tick(tick.seq)
                        self._check(index)

                nursery.start_soon(take_acks)
                nursery.start_soon(take_ticks)
                await self._call_loop(client, record, rng)
                await self.caught_up[index].wait()
                record.subscription_duplicates = (
                    ack_sub.stats().duplicates + tick_sub.stats().duplicates
                )
                statistics = client.statistics()
                record.reconnects = statistics.reconnects
                record.retries = statistics.retries
                nursery.cancel_scope.cancel()
            # Subscriptions and calls are over: only the control stream should remain.
            await trio.sleep(0.5)
            record.streams_open_at_end = client.connection.statistics().streams_open

    def _check(self, index: int) -> None:
        if self.target is None:
            return
        record = self.records[index]
        if record.last_ack >= self.target[1] and record.last_tick >= self.target[0]:
            self.caught_up[index].set()

    async def _call_loop(
        self, client: quicframe.Client, record: ClientRecord, rng: random.Random
    ) -> None:
        interval = 1.0 / self.args.call_rate
        n = 0
        while self.calling:
            n += 1
            payload = {"n": n, "pad": rng.randbytes(rng.randrange(8, 512))}
            try:
                with trio.fail_after(self.args.call_timeout):
                    reply = await client.call(ECHO, payload)
            except Exception as exc:
                record.failure(exc)
            else:
                if reply == payload:
                    record.calls_ok += 1
                else:
                    record.failed["wrong echo"] += 1
            await trio.sleep(interval * rng.uniform(0.5, 1.5))

    def summary(self) -> dict[str, Any]:
        failed: Counter[str] = Counter()
        for r in self.records:
            failed.update(r.failed)
        return {
            "calls_ok": sum(r.calls_ok for r in self.records),
            "failed": dict(failed),
            "untyped": [u for r in self.records for u in r.untyped][:10],
            "ticks": sum(r.ticks for r in self.records),
            "tick_duplicates": sum(r.tick_duplicates for r in self.records),
            "tick_gaps": sum(r.tick_gaps for r in self.records),
            "acks": sum(r.acks for r in self.records),
            "ack_duplicates": sum(r.ack_duplicates for r in self.records),
            "ack_out_of_order": sum(r.ack_out_of_order for r in self.records),
            "subscription_duplicates": sum(r.subscription_duplicates for r in self.records),
            "last_acks": [r.last_ack for r in self.records],
            "last_ticks": [r.last_tick for r in self.records],
            "connects": sum(r.connects for r in self.records),
            "reconnects": sum(r.reconnects for r in self.records),
            "retries": sum(r.retries for r in self.records),
            "streams_open_at_end": [r.streams_open_at_end for r in self.records],
        }


def clients_main(args: argparse.Namespace) -> None:
    async def main() -> None:
        gauges = Gauges()
        fleet = ClientFleet(args)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gauges.run)
            await trio.sleep(0.1)
            baseline_rss, baseline_tasks = gauges.sample()
            async with trio.open_nursery() as clients:
                for index in range(args.count):
                    clients.start_soon(fleet.run_client, index)
                emit({"event": "ready", "rss": baseline_rss, "tasks": baseline_tasks})
                async with contextlib.aclosing(commands()) as lines:
                    async for words in lines:
                        if words[0] == "stats":
                            rss, tasks = gauges.sample()
                            emit({"event": "stats", "rss": rss, "tasks": tasks, **fleet.summary()})
                        elif words[0] == "finish":
                            fleet.calling = False
                            fleet.target = (int(words[1]), int(words[2]))
                            for index in range(args.count):
                                fleet._check(index)
                            with trio.move_on_after(args.catch_up):
                                for event in fleet.caught_up:
                                    await event.wait()
                            for event in fleet.caught_up:
                                event.set()  # whoever did not catch up is reported as such
                            with trio.move_on_after(30):
                                for event in fleet.done:
                                    await event.wait()
                            break
                    # The end (or stdin closed: the conductor is gone).
                    clients.cancel_scope.cancel()
            gc.collect()
            await trio.sleep(0.5)
            rss, tasks = gauges.sample()
            emit(
                {
                    "event": "finished",
                    "rss": rss,
                    "tasks": tasks,
                    "baseline_rss": baseline_rss,
                    "baseline_tasks": baseline_tasks,
                    "peak_rss": gauges.peak_rss,
                    "peak_tasks": gauges.peak_tasks,
                    **fleet.summary(),
                }
            )
            nursery.cancel_scope.cancel()

    trio.run(main)


# ------------------------------------------------------------------------------------
# The conductor
# ------------------------------------------------------------------------------------


class Child:
    """A child process speaking the line protocol; killed by :meth:`kill`."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        assert process.stdout is not None
        assert process.stdin is not None
        self._reader = LineReader(process.stdout)
        self._stdin = process.stdin

    @classmethod
    async def start(cls, name: str, argv: list[str]) -> Child:
        process = await trio.lowlevel.open_process(
            [sys.executable, __file__, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        return cls(name, process)

    async def send(self, line: str) -> None:
        await self._stdin.send_all((line + "\n").encode())

    async def expect(self, event: str, seconds: float) -> dict[str, Any]:
        with trio.fail_after(seconds):
            for _ in range(1_000_000):
                line = await self._reader.readline()
                if line is None:
                    raise RuntimeError(f"{self.name} exited (status {self.process.poll()})")
                try:
                    message: dict[str, Any] = json.loads(line)
                except ValueError:
                    print(f"[{self.name}] {line}", file=sys.stderr)
                    continue
                if message.get("event") == event:
                    return message
        raise RuntimeError(f"{self.name}: no {event!r} in a million lines")

    async def ask(self, command: str, seconds: float = 30) -> dict[str, Any]:
        await self.send(command)
        return await self.expect(command.split()[0], seconds)

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    async def reap(self) -> None:
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.process.wait()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BASE = LinkPolicy(loss=0.01, reorder=0.02, reorder_delay=0.005, jitter=0.001)
BURST = LinkPolicy(loss=0.3, reorder=0.05, reorder_delay=0.005, jitter=0.001)


@dataclass
class Chaos:
    bursts: int = 0
    blackholes: int = 0
    rebinds: int = 0
    restarts: int = 0
    ticks_before_kill: int = 0  # the killed server's head at its last report
    ticks_floor: int = 0  # where the restarted server went on numbering


async def chaos_loop(proxy: ChaosProxy, chaos: Chaos, rng: random.Random) -> None:
    """Every 5-10 s the next of: a 2 s loss burst (30%), a NAT rebinding of every
    client, another loss burst, a 1.5 s blackhole of both directions."""
    for n in range(1_000_000):  # bounded; cancelled at the end of the run
        await trio.sleep(rng.uniform(5, 10))
        kind = ("burst", "rebind", "burst", "blackhole")[n % 4]
        if kind == "burst":
            chaos.bursts += 1
            proxy.set_policy(to_server=BURST, to_client=BURST)
            await trio.sleep(2)
            proxy.set_policy(to_server=BASE, to_client=BASE)
        elif kind == "blackhole":
            chaos.blackholes += 1
            proxy.blackhole(1.5)
        else:
            chaos.rebinds += await proxy.rebind()


@dataclass
class Probe:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    worst: float = 0.0  # slowest answer, leaving out the calls around the restart
    restarting: bool = False


async def probe_loop(port: int, ca: Path, probe: Probe) -> None:
    """A client straight to the server (no proxy): one call every half second."""
    config = quicframe.ClientConfig(
        ca_file=ca,
        server_name="localhost",
        reconnect=quicframe.ReconnectPolicy(
            max_retries=1000, initial_backoff=0.05, max_backoff=0.5
        ),
    )
    async with quicframe.connect("127.0.0.1", port, config, idempotent=[ECHO]) as client:
        for _ in range(MAX_STEPS):  # until cancelled
            start = trio.current_time()
            restarting = probe.restarting
            try:
                with trio.fail_after(5):
                    await client.call(ECHO, b"probe")
            except (QuicframeError, trio.TooSlowError) as exc:
                probe.failed[type(exc).__name__] += 1
            else:
                probe.ok += 1
                if not (restarting or probe.restarting):
                    probe.worst = max(probe.worst, trio.current_time() - start)
            await trio.sleep(0.5)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


async def conduct(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="quicframe-soak-"))
    cert, key = write_self_signed_certificate(workdir)
    journal = workdir / "journal"
    journal.mkdir()
    port = free_udp_port()
    duration = args.minutes * 60
    server_argv = [
        "server",
        "--port",
        str(port),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--journal",
        str(journal),
        "--rate",
        str(args.rate),
        "--ack-every",
        str(args.ack_every),
        "--seed",
        str(args.seed),
        "--idle-timeout",
        str(args.idle_timeout),
    ]
    children: list[Child] = []
    chaos = Chaos()
    probe = Probe()
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    try:
        server = await Child.start("server", server_argv)
        children.append(server)
        ready = await server.expect("ready", 30)
        log(f"server 1 up on 127.0.0.1:{port} (pid {server.process.pid})")
        async with (
            ChaosProxy(
                ("127.0.0.1", port), to_server=BASE, to_client=BASE, seed=args.seed
            ) as proxy,
            trio.open_nursery() as nursery,
        ):
            halves = [args.clients - args.clients // 2, args.clients // 2]
            fleets: list[Child] = []
            first = 0
            for n, count in enumerate(h for h in halves if h):
                fleet = await Child.start(
                    f"clients{n + 1}",
                    [
                        "clients",
                        "--port",
                        str(proxy.port),
                        "--ca",
                        str(cert),
                        "--count",
                        str(count),
                        "--first",
                        str(first),
                        "--seed",
                        str(args.seed),
                        "--call-rate",
                        str(args.call_rate),
                        "--idle-timeout",
                        str(args.idle_timeout),
                    ],
                )
                first += count
                children.append(fleet)
                fleets.append(fleet)
            for fleet in fleets:
                await fleet.expect("ready", 30)
            log(f"{args.clients} clients in {len(fleets)} processes, through {proxy!r}")
            await trio.sleep(3)  # let them connect and subscribe before the feed starts
            await server.ask("feed")
            background = trio.CancelScope()  # the chaos and the probe, until the end

            async def disturb() -> None:
                with background:
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(chaos_loop, proxy, chaos, rng)
                        tasks.start_soon(probe_loop, port, cert, probe)

            nursery.start_soon(disturb)
            server_baseline = ready
            deadline = trio.current_time() + duration
            restart_at = trio.current_time() + duration / 2
            restarted = False
            for _ in range(100_000):  # a report every 30 s at most: bounded by time too
                if (now := trio.current_time()) >= deadline:
                    break
                await trio.sleep(min(30.0, deadline - now, max(0.0, restart_at - now) or 30.0))
                if not restarted and trio.current_time() >= restart_at:
                    restarted = True
                    before = await server.ask("stats")
                    probe.restarting = True
                    server.kill()
                    await server.reap()
                    chaos.restarts += 1
                    chaos.ticks_before_kill = int(before["ticks_head"])
                    log(
                        f"server killed (SIGKILL) at ticks={before['ticks_head']:,} "
                        f"acks={before['acks_head']:,}"
                    )
                    await trio.sleep(1.0)
                    server = await Child.start("server", server_argv)
                    children.append(server)
                    server_baseline = await server.expect("ready", 30)
                    chaos.ticks_floor = int(server_baseline["ticks_head"])
                    log(
                        f"server 2 up on the same port (pid {server.process.pid}): "
                        f"{server_baseline['acks_reloaded']:,} acks reloaded from the "
                        f"journal, ticks numbered from {server_baseline['ticks_head'] + 1:,}"
                    )
                    await server.ask("feed")
                    with trio.move_on_after(max(0.0, deadline - trio.current_time())):
                        await trio.sleep(args.idle_timeout + 5)
                    probe.restarting = False
                    continue
                status = await server.ask("stats")
                parts = []
                for fleet in fleets:
                    s = await fleet.ask("stats")
                    parts.append(
                        f"{fleet.name}: calls={s['calls_ok']:,} acks={s['acks']:,} "
                        f"ticks={s['ticks']:,} failed={sum(s['failed'].values())}"
                    )
                log(
                    f"server: ticks={status['ticks_head']:,} acks={status['acks_head']:,} "
                    f"conns={status['connections']} rss={_mib(status['rss'])} "
                    f"tasks={status['tasks']} | " + " | ".join(parts)
                )
            # The end: stop the feed, let every client catch up, close them all.
            background.cancel()
            stop = await server.ask("stop")
            log(f"feed stopped at ticks={stop['ticks_head']:,} acks={stop['acks_head']:,}")
            proxy.set_policy(to_server=BASE, to_client=BASE)
            for fleet in fleets:
                await fleet.send(f"finish {stop['ticks_head']} {stop['acks_head']}")
            results = [await fleet.expect("finished", args.catch_up + 120) for fleet in fleets]
            # A CONNECTION_CLOSE lost on the lossy path leaves the server to time
            # the connection out: wait for that (bounded) before the last figures.
            with trio.move_on_after(3 * args.idle_timeout + 5):
                for _ in range(1000):
                    await trio.sleep(1.0)
                    final = await server.ask("stats")
                    if final["connections"] == 0:
                        break
            final = await server.ask("stats")
            proxy_stats = proxy.statistics()
        return report(args, stop, final, server_baseline, results, chaos, probe, proxy_stats)
    finally:
        for child in children:
            await child.reap()
        shutil.rmtree(workdir, ignore_errors=True)  # the certificate and the journals


def report(
    args: argparse.Namespace,
    stop: dict[str, Any],
    final: dict[str, Any],
    server_baseline: dict[str, Any],
    results: list[dict[str, Any]],
    chaos: Chaos,
    probe: Probe,
    proxy_stats: Any,
) -> int:
    acks_head = int(stop["acks_head"])
    calls_ok = sum(r["calls_ok"] for r in results)
    failed: Counter[str] = Counter()
    for r in results:
        failed.update(r["failed"])
    ticks = sum(r["ticks"] for r in results)
    acks = sum(r["acks"] for r in results)
    last_acks = [a for r in results for a in r["last_acks"]]
    duplicates = sum(
        r["tick_duplicates"] + r["ack_duplicates"] + r["subscription_duplicates"] for r in results
    )
    ack_dups = sum(r["ack_duplicates"] for r in results)
    out_of_order = sum(r["ack_out_of_order"] for r in results)
    expected_acks = acks_head * args.clients
    # Each client's acks were checked 1, 2, 3, ... in order: what it holds without
    # the repeats is its count; anything short of the last number published is lost.
    acks_lost = expected_acks - (acks - ack_dups)
    untyped = sum(n for name, n in failed.items() if name.startswith("UNTYPED"))
    streams_left = [s for r in results for s in r["streams_open_at_end"]]
    reordered = proxy_stats.to_server.reordered + proxy_stats.to_client.reordered
    print()
    print(f"soak: {args.minutes:g} min, {args.clients} clients, seed {args.seed}")
    print(
        f"chaos: {chaos.bursts} loss bursts, {chaos.blackholes} blackholes, "
        f"{chaos.rebinds} client rebinds, {chaos.restarts} server restart; proxy dropped "
        f"{proxy_stats.to_server.dropped:,} to server / {proxy_stats.to_client.dropped:,} "
        f"to client, reordered {reordered:,}"
    )
    print(f"calls made: {calls_ok + sum(failed.values()):,} ok {calls_ok:,}")
    print("failed by type: " + (", ".join(f"{k}={v}" for k, v in sorted(failed.items())) or "none"))
    for r in results:
        for text in r["untyped"]:
            print(f"  untyped: {text}")
    published = int(stop["ticks_head"]) - (chaos.ticks_floor - chaos.ticks_before_kill)
    print(
        f"ticks: published {published:,} (at least: those between the killed server's "
        f"last report and its death are not counted), numbered up to {stop['ticks_head']:,}, "
        f"conflated per instrument for slow readers; "
        f"delivered {ticks:,} over {args.clients} subscribers, gaps seen "
        f"{sum(r['tick_gaps'] for r in results):,}"
    )
    print(
        f"acks: published {acks_head:,}, delivered {acks:,} "
        f"(expected {expected_acks:,} = {acks_head:,} x {args.clients})"
    )
    print(f"duplicates: {duplicates}")
    print(f"acks lost: {acks_lost} (out of order: {out_of_order})")
    for n, r in enumerate(results, 1):
        print(
            f"clients{n} RSS: baseline {_mib(r['baseline_rss'])}, peak {_mib(r['peak_rss'])}, "
            f"final {_mib(r['rss'])}; tasks: baseline {r['baseline_tasks']}, "
            f"peak {r['peak_tasks']}, final {r['tasks']}"
        )
    print(
        f"server RSS: start {_mib(server_baseline['rss'])}, peak {_mib(final['peak_rss'])}, "
        f"final {_mib(final['rss'])}; tasks: start {server_baseline['tasks']}, "
        f"peak {final['peak_tasks']}, final {final['tasks']}"
    )
    print(
        f"open streams after clients closed: server {final['streams_open']} "
        f"(connections {final['connections']}); clients before close {sorted(set(streams_left))}"
    )
    print(
        f"reconnects: {sum(r['reconnects'] for r in results)} (by the clients themselves), "
        f"idempotent calls retried: {sum(r['retries'] for r in results)}"
    )
    print(
        f"probe (direct to the server): {probe.ok} ok, failed "
        f"{dict(probe.failed) or 'none'}, slowest outside the restart "
        f"{probe.worst * 1000:.0f} ms"
    )
    problems = _verdict(
        args,
        acks_lost=acks_lost,
        duplicates=duplicates,
        out_of_order=out_of_order,
        untyped=untyped,
        last_acks=last_acks,
        acks_head=acks_head,
        results=results,
        final=final,
        server_baseline=server_baseline,
        streams_left=streams_left,
        calls_ok=calls_ok,
        probe=probe,
    )
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


def _verdict(
    args: argparse.Namespace,
    *,
    acks_lost: int,
    duplicates: int,
    out_of_order: int,
    untyped: int,
    last_acks: list[int],
    acks_head: int,
    results: list[dict[str, Any]],
    final: dict[str, Any],
    server_baseline: dict[str, Any],
    streams_left: list[int],
    calls_ok: int,
    probe: Probe,
) -> list[str]:
    """Every check the soak makes; an empty list when all passed."""
    problems = []
    bound = args.rss_bound_mib << 20
    if acks_head == 0 or calls_ok == 0:
        problems.append("nothing happened (no acks published or no call succeeded)")
    if acks_lost or any(last != acks_head for last in last_acks):
        problems.append(f"acks lost: {acks_lost}; last acks per client {last_acks}")
    if duplicates:
        problems.append(f"{duplicates} duplicates")
    if out_of_order:
        problems.append(f"{out_of_order} acks out of order")
    if untyped:
        problems.append(f"{untyped} calls failed with an untyped exception")
    for n, r in enumerate(results, 1):
        if r["tasks"] > r["baseline_tasks"]:
            problems.append(f"clients{n}: {r['tasks']} tasks left, baseline {r['baseline_tasks']}")
        if r["rss"] > r["baseline_rss"] + bound:
            problems.append(f"clients{n}: RSS {_mib(r['rss'])} over baseline + bound")
    if final["tasks"] > server_baseline["tasks"]:
        problems.append(f"server: {final['tasks']} tasks, at start {server_baseline['tasks']}")
    if final["rss"] > server_baseline["rss"] + bound:
        problems.append(f"server: RSS {_mib(final['rss'])} over start + bound")
    if final["streams_open"] or final["connections"]:
        problems.append(
            f"server: {final['connections']} connections, {final['streams_open']} streams left"
        )
    if any(s > 1 or s < 0 for s in streams_left):  # the control stream may remain
        problems.append(f"clients: streams open before close {streams_left}")
    if probe.ok == 0:
        problems.append("the direct probe never got an answer")
    return problems


# ------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0, help="ticks published a second")
    parser.add_argument("--ack-every", type=int, default=20)
    parser.add_argument("--call-rate", type=float, default=20.0, help="calls a second per client")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--catch-up", type=float, default=60.0)
    parser.add_argument("--rss-bound-mib", type=int, default=128)

    s = sub.add_parser("server", allow_abbrev=False)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--journal", required=True)
    s.add_argument("--rate", type=float, default=2000.0)
    s.add_argument("--ack-every", type=int, default=20)
    s.add_argument("--instruments", type=int, default=200)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--idle-timeout", type=float, default=5.0)

    c = sub.add_parser("clients", allow_abbrev=False)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--first", type=int, default=0)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--call-rate", type=float, default=20.0)
    c.add_argument("--call-timeout", type=float, default=10.0)
    c.add_argument("--idle-timeout", type=float, default=5.0)
    c.add_argument("--catch-up", type=float, default=60.0)

    args = parser.parse_args(argv)
    if args.role == "server":
        server_main(args)
        return 0
    if args.role == "clients":
        clients_main(args)
        return 0
    if not 0 < args.minutes <= 24 * 60 or args.clients < 1 or not math.isfinite(args.rate):
        parser.error("need 0 < --minutes <= 1440, --clients >= 1 and a finite --rate")

    async def bounded() -> int:
        # The whole run, with room for start-up, catching up and closing; SIGTERM
        # and SIGHUP end it like Ctrl-C does, through conduct's cleanup.
        result = 1
        with (
            trio.fail_after(args.minutes * 60 + args.catch_up + 300),
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals,
        ):
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal result
                    async for signum in signals:
                        print(f"soak: signal {signum}, stopping", file=sys.stderr)
                        result = 128 + signum
                        nursery.cancel_scope.cancel()
                        return

                async def run() -> None:
                    nonlocal result
                    result = await conduct(args)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                nursery.start_soon(run)
        return result

    try:
        return trio.run(bounded)
    except* KeyboardInterrupt:  # Ctrl-C: conduct's cleanup has killed the children
        print("soak: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
