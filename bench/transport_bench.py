"""Transport benchmark: quicframe.transport next to aioquic's asyncio layer, same core.

Usage::

    python bench/transport_bench.py [--quick] [--rounds N] [--workloads w1,w2,...]
                                    [--cores aioquic,qh3] [--anchors DIR] [--timeout S]
                                    [--json]
    python bench/transport_bench.py server --port P [--core qh3]  # prints "READY <port>"
    python bench/transport_bench.py client --port P --workload w1 [--quick] [--core qh3]
                                                              # prints "RESULT {json}"
    python bench/transport_bench.py floor [--quick] [--rounds N]

``floor`` measures what any trio driver pays before QUIC: a plain trio UDP
64-byte echo between two processes (W1's counts and percentiles, no QUIC, no
crypto), the trio twin of the anchors' ``udp_floor.py``.

The workloads are those of ``../shared/anchors/README.md`` (payload
``bytes(range(64))``; every client run is a fresh process with a fresh
connection; the handshake is not timed).  Each stream starts with a 1-byte
opcode: ``E`` echo until FIN, ``L`` long-lived echo of ``[u32 BE len][payload]``
frames, ``T`` + u32 N ticks, ``B`` + u64 N bulk bytes.

* W1: one call at a time, a new bidirectional stream per call (``E``); 300
  warm-up calls, then N timed calls (5,000; ``--quick`` 1,000).  Latency is from
  opening the stream to the reply's FIN; p50 = ``sorted[n // 2]``, p99 =
  ``sorted[int(0.99 n)]``, calls/s = N / wall time.  Both ends read an ``E``
  stream until its FIN has arrived and been read (``Stream.receive_finished``,
  as quicframe's session layer reads a call), not until a further
  ``receive_some`` returns ``b""``.
* W1l: as W1 on one long-lived stream opened with ``L``.
* W2: 64 tasks each looping call after call (stream per call); 1,000-call
  warm-up, then N calls (20,000; 5,000); calls/s = N / wall.
* W3: one stream (``T``); the server sends N 64-byte ticks
  ``[u32 60][u64 seq][52 x 0xAB]`` (200,000; 50,000), handing them to the
  transport 256 at a time (one ``send_all`` per 256, as the anchors' TCP server
  does), then FIN.  The client parses every tick and checks the sequence.
  msgs/s and MB/s (N x 64 / wall / 10^6), clock from the request to the last tick.
* W4: one stream (``B``); the server sends N bytes (64 MiB; 16 MiB) in 64 KiB
  ``send_all`` calls, then FIN; MB/s = bytes / wall / 10^6.

QUIC settings, both sides, as for the anchors: ALPN ``"bench"``,
``max_data = max_stream_data = 16 MiB`` (quicframe's connection and stream
receive windows), TLS 1.3 with a self-signed EC P-256 certificate for
"localhost" generated at run time into a temporary directory (removed once
loaded), client verification off (``insecure=True``), server name "localhost".
Everything else is quicframe's default (reno, 1200-byte datagrams, 4 MiB socket
buffers asked for).

The driver (the default mode) runs, in one invocation, interleaved rounds of
quicframe and the aioquic asyncio anchor (``quic_asyncio.py`` of the anchors
folder, located as ``../shared/anchors`` next to the repository unless
``--anchors`` says otherwise): per round it starts one server of each, then for
every workload runs one client of each, alternating which goes first.  It
prints per workload the median over rounds of each side, the ratio
quicframe / aioquic against the issue's targets (W1 p50 <= 0.9x; W2 calls/s >=
1.2x; W3 msgs/s >= 1.5x; W4 MB/s >= 1.1x) and the kernel receive drops of the
benchmark's own sockets during W3 and W4 (the ``drops`` column of
/proc/net/udp and /proc/net/udp6: the server socket is read before and after
each client run; the client socket is found by inode through /proc/<pid>/fd and
polled while the client runs, and quicframe's client also reads its own socket
and the server's exactly, before and after its workload).  A FAIL is a
measurement, not an error: the exit status is 1 only when a run failed.

Bounds: everything binds 127.0.0.1 only; ports are picked free in 20000-31999;
a server must print READY within 20 s; each client run has a time limit
(``--timeout``, default 180 s, 90 s with ``--quick``); children are stopped by
their PID (SIGTERM, then SIGKILL) on every exit path, and servers also get
SIGTERM when the driver dies (Linux ``PR_SET_PDEATHSIG``).

Cores: ``--cores aioquic,qh3`` (or ``--cores both``) adds, in the same rounds,
quicframe on its qh3 core (``quicframe-qh3``, both ends on qh3) next to the qh3
asyncio anchor (``quic_asyncio.py --lib qh3``), compared against the qh3 targets
(W1 p50 <= 0.75x; W3 msgs/s >= 1.2x).  The qh3 anchor has no W2 (qh3 raises
"stream limit exceeded" instead of waiting for MAX_STREAMS credit; see the anchors'
README), so W2 shows quicframe-qh3 alone.  quicframe-qh3 uses qh3's own congestion
controller and PMTU setting of quicframe (1200-byte datagrams, no probing).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import ConnectionClosed
from quicframe.transport import Connection, Stream, connect, serve

HOST: Final = "127.0.0.1"
ALPN: Final = "bench"
MAX_DATA: Final = 16 * 1024 * 1024
PAYLOAD: Final = bytes(range(64))
W2_INFLIGHT: Final = 64
TICK_SIZE: Final = 64
TICK_BATCH: Final = 256
BULK_CHUNK: Final = 64 * 1024
LEN: Final = struct.Struct(">I")
TICK_HEADER: Final = struct.Struct(">IQ")
TICK_FILLER: Final = b"\xab" * 52

FULL: Final[dict[str, int]] = {
    "w1_warmup": 300,
    "w1_calls": 5000,
    "w2_warmup": 1000,
    "w2_calls": 20000,
    "w3_msgs": 200_000,
    "w4_bytes": 64 * 1024 * 1024,
}
QUICK: Final[dict[str, int]] = {
    **FULL,
    "w1_calls": 1000,
    "w2_calls": 5000,
    "w3_msgs": 50_000,
    "w4_bytes": 16 * 1024 * 1024,
}
WORKLOADS: Final = ("w1", "w1l", "w2", "w3", "w4")
# workload -> (metric, comparison, target ratio quicframe / aioquic)
TARGETS: Final[dict[str, tuple[str, str, float]]] = {
    "w1": ("p50_us", "<=", 0.9),
    "w2": ("calls_per_s", ">=", 1.2),
    "w3": ("msgs_per_s", ">=", 1.5),
    "w4": ("mb_per_s", ">=", 1.1),
}
# The same for quicframe on the qh3 core against the qh3 asyncio anchor (issue 9).
QH3_TARGETS: Final[dict[str, tuple[str, str, float]]] = {
    "w1": ("p50_us", "<=", 0.75),
    "w3": ("msgs_per_s", ">=", 1.2),
}
SHOWN_METRICS: Final[dict[str, tuple[str, ...]]] = {
    "w1": ("p50_us", "p99_us", "calls_per_s"),
    "w1l": ("p50_us", "p99_us", "calls_per_s"),
    "w2": ("calls_per_s",),
    "w3": ("msgs_per_s", "mb_per_s"),
    "w4": ("mb_per_s",),
}
SERVER_START_TIMEOUT: Final = 20.0
STOP_GRACE: Final = 5.0
PORT_RANGE: Final = (20000, 32000)

perf = time.perf_counter_ns


# ------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------


def counts(quick: bool) -> dict[str, int]:
    return dict(QUICK if quick else FULL)


def emit(record: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def latency_stats(samples_ns: list[int], wall_s: float) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1e3,
        "mean_us": statistics.fmean(ordered) / 1e3,
        "calls_per_s": n / wall_s,
        "n": n,
    }


@dataclass(frozen=True, slots=True)
class UdpSocketRow:
    port: int
    inode: int
    drops: int


def read_udp_table() -> list[UdpSocketRow]:
    """Every UDP socket of /proc/net/udp and udp6: local port, inode, drops column."""
    rows: list[UdpSocketRow] = []
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as file:
                lines = file.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 13:
                continue
            rows.append(
                UdpSocketRow(
                    port=int(parts[1].rsplit(":", 1)[1], 16),
                    inode=int(parts[9]),
                    drops=int(parts[-1]),
                )
            )
    return rows


def drops_by_port(ports: Sequence[int]) -> dict[int, int]:
    wanted = set(ports)
    out: dict[int, int] = {}
    for row in read_udp_table():
        if row.port in wanted:
            out[row.port] = out.get(row.port, 0) + row.drops
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (empty if it is gone)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """Best effort (Linux): SIGTERM when the parent dies, so no server is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def temporary_certificate() -> Iterator[tuple[str, str]]:
    """(certificate, key) PEM paths of a fresh self-signed P-256 cert for "localhost"."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory(prefix="qf-bench-cert-") as directory:
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with open(cert_path, "wb") as file:
            file.write(certificate.public_bytes(serialization.Encoding.PEM))
        yield cert_path, key_path


# ------------------------------------------------------------------------------------
# quicframe server
# ------------------------------------------------------------------------------------


async def serve_bench_stream(stream: Stream) -> None:
    """One stream of the benchmark protocol, dispatched on its first byte."""
    answered = False
    try:
        buffer = bytearray()
        while not buffer:
            data = await receive_now_or_later(stream)
            if not data:
                return
            buffer += data
        op = bytes(buffer[:1])
        del buffer[:1]
        if op == b"E":
            # Stop at the FIN, as the session layer does: once the peer's FIN
            # came and everything was read, a further receive_some() would only
            # return b"" (and cost a scheduling round).
            while not stream.receive_finished and (data := await receive_now_or_later(stream)):
                buffer += data
            await send_with_fin(stream, bytes(buffer))
            # Both directions are over (the request's FIN read, the reply's
            # queued): the transport has let the stream go, and aclose() would
            # only add its checkpoint, a scheduling round per call.
            answered = stream.receive_finished
        elif op == b"L":
            await echo_frames(stream, buffer)
        elif op == b"T":
            await read_at_least(stream, buffer, 4)
            await push_ticks(stream, LEN.unpack_from(buffer)[0])
        elif op == b"B":
            await read_at_least(stream, buffer, 8)
            await push_bulk(stream, int.from_bytes(buffer[:8], "big"))
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        pass  # the client went away
    finally:
        if not answered:
            await stream.aclose()


async def receive_now_or_later(stream: Stream) -> bytes:
    """What is buffered without a scheduling round (a new stream's handler
    starts with its first data already there), else wait for it."""
    try:
        return stream.receive_nowait()
    except trio.WouldBlock:
        return await stream.receive_some()


async def send_with_fin(stream: Stream, data: bytes) -> None:
    """Queue ``data`` and the FIN together, so they leave in one packet.

    In one synchronous step when the stream takes it (``send_nowait(eof=True)``),
    as the session layer sends requests and replies: the read that follows, or
    the end of the task, comes without a scheduling round in between.
    """
    try:
        stream.send_nowait(data, eof=True)
    except trio.WouldBlock:
        await stream.send_all(data)
        await stream.send_eof()


async def read_at_least(stream: Stream, buffer: bytearray, size: int) -> None:
    while len(buffer) < size:
        data = await stream.receive_some()
        if not data:
            raise trio.BrokenResourceError("short request")
        buffer += data


async def echo_frames(stream: Stream, buffer: bytearray) -> None:
    """Reply to every complete [u32 len][payload] frame as soon as it is complete."""
    while True:
        end = 0
        size = len(buffer)
        while size - end >= 4:
            frame_end = end + 4 + LEN.unpack_from(buffer, end)[0]
            if frame_end > size:
                break
            end = frame_end
        if end:
            reply = bytes(buffer[:end])
            del buffer[:end]
            await stream.send_all(reply)
        data = await stream.receive_some()
        if not data:
            await stream.send_eof()
            return
        buffer += data


async def push_ticks(stream: Stream, n: int) -> None:
    pack = TICK_HEADER.pack
    filler = TICK_FILLER
    batch: list[bytes] = []
    for seq in range(n):
        batch.append(pack(60, seq) + filler)
        if len(batch) == TICK_BATCH:
            await stream.send_all(b"".join(batch))
            batch.clear()
    if batch:
        await stream.send_all(b"".join(batch))
    await stream.send_eof()


async def push_bulk(stream: Stream, n: int) -> None:
    chunk = b"\0" * BULK_CHUNK
    sent = 0
    while sent < n:
        size = min(BULK_CHUNK, n - sent)
        await stream.send_all(chunk if size == BULK_CHUNK else chunk[:size])
        sent += size
    await stream.send_eof()


def load_certificate() -> tuple[bytes, bytes]:
    """PEM bytes of a fresh certificate and key; the files are gone on return."""
    with temporary_certificate() as (cert_path, key_path):
        return Path(cert_path).read_bytes(), Path(key_path).read_bytes()


async def server_main(port: int, cert_pem: bytes, key_pem: bytes, core: str) -> None:
    config = ServerConfig(
        core=core,
        certificate=cert_pem,
        private_key=key_pem,
        alpn_protocols=[ALPN],
        connection_receive_window=MAX_DATA,
        stream_receive_window=MAX_DATA,
    )

    async def handler(connection: Connection) -> None:
        await connection.serve_streams(serve_bench_stream)

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve, HOST, port, config, handler)
        print(f"READY {listener.port}", flush=True)


# ------------------------------------------------------------------------------------
# quicframe client
# ------------------------------------------------------------------------------------

Call = Callable[[bytes], Awaitable[bytes]]


def stream_caller(connection: Connection) -> Call:
    """One new bidirectional stream per call: E + payload + FIN, echo + FIN back."""

    async def call(payload: bytes) -> bytes:
        try:
            stream = connection.open_stream_nowait()
        except trio.WouldBlock:
            stream = await connection.open_stream()
        await send_with_fin(stream, b"E" + payload)
        reply = b""
        while not stream.receive_finished and (data := await stream.receive_some()):
            reply += data
        return reply

    return call


async def long_lived_caller(connection: Connection) -> Call:
    stream = await connection.open_stream()
    await stream.send_all(b"L")
    buffer = bytearray()

    async def call(payload: bytes) -> bytes:
        await stream.send_all(LEN.pack(len(payload)) + payload)
        while True:
            if len(buffer) >= 4:
                end = 4 + LEN.unpack_from(buffer)[0]
                if len(buffer) >= end:
                    reply = bytes(buffer[4:end])
                    del buffer[:end]
                    return reply
            data = await stream.receive_some()
            if not data:
                raise trio.BrokenResourceError("the server ended the stream")
            buffer.extend(data)

    return call


async def run_w1(name: str, call: Call, n: dict[str, int]) -> dict[str, Any]:
    reply = b""
    for _ in range(n["w1_warmup"]):
        reply = await call(PAYLOAD)
    if reply != PAYLOAD:
        raise RuntimeError(f"bad echo: {reply!r}")
    samples: list[int] = []
    cpu0 = time.process_time()
    t0 = perf()
    for _ in range(n["w1_calls"]):
        start = perf()
        await call(PAYLOAD)
        samples.append(perf() - start)
    wall = (perf() - t0) / 1e9
    return {
        "workload": name,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        **latency_stats(samples, wall),
    }


async def run_w2(call: Call, n: dict[str, int]) -> dict[str, Any]:
    async def phase(total: int) -> None:
        left = [total]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                if len(await call(PAYLOAD)) != len(PAYLOAD):
                    raise RuntimeError("bad echo")

        async with trio.open_nursery() as nursery:
            for _ in range(W2_INFLIGHT):
                nursery.start_soon(worker)

    await phase(n["w2_warmup"])
    cpu0 = time.process_time()
    t0 = perf()
    await phase(n["w2_calls"])
    wall = (perf() - t0) / 1e9
    return {
        "workload": "w2",
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        "calls_per_s": n["w2_calls"] / wall,
        "n": n["w2_calls"],
    }


async def run_w3(connection: Connection, n: dict[str, int]) -> dict[str, Any]:
    total = n["w3_msgs"]
    unpack = TICK_HEADER.unpack_from
    buffer = bytearray()
    count = 0
    last = -1
    in_order = True
    cpu0 = time.process_time()
    t0 = perf()
    stream = await connection.open_stream()
    await stream.send_all(b"T" + LEN.pack(total))
    await stream.send_eof()
    while data := await stream.receive_some():
        buffer += data
        size = len(buffer)
        offset = 0
        while size - offset >= 12:
            length, seq = unpack(buffer, offset)
            end = offset + 4 + length
            if end > size:
                break
            if seq != last + 1:
                in_order = False
            last = seq
            count += 1
            offset = end
        if offset:
            del buffer[:offset]
    wall = (perf() - t0) / 1e9
    return {
        "workload": "w3",
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        "msgs_per_s": count / wall,
        "mb_per_s": count * TICK_SIZE / wall / 1e6,
        "n": count,
        "ok": count == total and in_order and not buffer,
    }


async def run_w4(connection: Connection, n: dict[str, int]) -> dict[str, Any]:
    total = n["w4_bytes"]
    received = 0
    cpu0 = time.process_time()
    t0 = perf()
    stream = await connection.open_stream()
    await stream.send_all(b"B" + total.to_bytes(8, "big"))
    await stream.send_eof()
    while data := await stream.receive_some():
        received += len(data)
    wall = (perf() - t0) / 1e9
    return {
        "workload": "w4",
        "cpu_s": time.process_time() - cpu0,
        "wall_s": wall,
        "mb_per_s": received / wall / 1e6,
        "n": received,
        "ok": received == total,
    }


async def client_main(port: int, workload: str, n: dict[str, int], core: str) -> None:
    config = ClientConfig(
        core=core,
        alpn_protocols=[ALPN],
        server_name="localhost",
        insecure=True,
        connection_receive_window=MAX_DATA,
        stream_receive_window=MAX_DATA,
    )
    async with connect(HOST, port, config) as connection:
        ports = [port, int(connection.local_address[1])]
        before = drops_by_port(ports)
        if workload in ("w1", "w1l"):
            call = (
                stream_caller(connection)
                if workload == "w1"
                else await long_lived_caller(connection)
            )
            result = await run_w1(workload, call, n)
        elif workload == "w2":
            result = await run_w2(stream_caller(connection), n)
        elif workload == "w3":
            result = await run_w3(connection, n)
        elif workload == "w4":
            result = await run_w4(connection, n)
        else:
            raise SystemExit(f"unknown workload {workload}")
        after = drops_by_port(ports)
        statistics_ = connection.statistics()
        result["packets_sent"] = statistics_.packets_sent
        result["packets_lost"] = statistics_.packets_lost
        result["socket_drops"] = sum(after.get(p, 0) - before.get(p, 0) for p in ports)
    emit({"anchor": "quicframe" if core == "aioquic" else f"quicframe-{core}", **result})


# ------------------------------------------------------------------------------------
# The trio UDP echo floor
# ------------------------------------------------------------------------------------


async def udp_echo_server(port: int) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, port))
    print(f"READY {port}", flush=True)
    while True:
        data, address = await sock.recvfrom(2048)
        await sock.sendto(data, address)


async def udp_echo_client(port: int, n: dict[str, int]) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    await sock.connect((HOST, port))
    for _ in range(n["w1_warmup"]):
        await sock.send(PAYLOAD)
        await sock.recv(2048)
    samples: list[int] = []
    t0 = perf()
    for _ in range(n["w1_calls"]):
        start = perf()
        await sock.send(PAYLOAD)
        await sock.recv(2048)
        samples.append(perf() - start)
    emit({"anchor": "trio-udp-echo", **latency_stats(samples, (perf() - t0) / 1e9)})


def floor(args: argparse.Namespace) -> int:
    """Rounds of the trio UDP echo floor, each a fresh server and client process."""
    python = args.python or sys.executable
    me = str(Path(__file__).resolve())
    children = Children()
    extra = ["--quick"] if args.quick else []
    side = Side("trio-udp", [python, "-B", me, "udp-server"], [python, "-B", me, "udp-client"])
    p50s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qf-floor-") as workdir:
        try:
            for round_number in range(1, (args.rounds or 3) + 1):
                server, port = start_server(children, side, Path(workdir) / "server.log")
                try:
                    record = run_client(children, side, server, port, "w1", extra, 60.0)
                finally:
                    children.stop(server)
                if "error" in record:
                    print(f"[r{round_number}] ERROR {record['error'][-300:]}", file=sys.stderr)
                    return 1
                result = record["result"]
                p50s.append(result["p50_us"])
                print(
                    f"[r{round_number}] trio UDP echo p50_us={fmt(result['p50_us'])} "
                    f"p99_us={fmt(result['p99_us'])}",
                    flush=True,
                )
        finally:
            children.stop_all()
    print(f"trio UDP echo floor: p50 median {fmt(median(p50s))} us over {len(p50s)} rounds")
    return 0


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------


def find_anchors(explicit: str | None) -> Path:
    if explicit is not None:
        path = Path(explicit)
    else:
        path = Path(__file__).resolve().parent.parent.parent / "shared" / "anchors"
    if not (path / "quic_asyncio.py").is_file():
        raise SystemExit(f"no quic_asyncio.py in {path}: pass --anchors DIR")
    return path


def free_port() -> int:
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((HOST, port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError("no free UDP port on 127.0.0.1 in 20000-31999")


@dataclass
class Side:
    """One library under test: how to start its server and its clients."""

    name: str
    server_argv: list[str]
    client_argv: list[str]


class Children:
    """Every child process started, so each can be stopped by its PID."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen[Any]] = {}

    def stop(self, process: subprocess.Popen[Any]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_GRACE)
        self.live.pop(process.pid, None)

    def stop_all(self) -> None:
        for process in list(self.live.values()):
            self.stop(process)


def start_server(
    children: Children, side: Side, log_path: Path
) -> tuple[subprocess.Popen[Any], int]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*side.server_argv, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    children.live[process.pid] = process
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("READY"):
                return process, int(line.split()[1])
        if process.poll() is not None:
            break
        time.sleep(0.02)
    children.stop(process)
    raise RuntimeError(f"{side.name} server not ready: {log_path.read_text(errors='replace')}")


def run_client(
    children: Children,
    side: Side,
    server: subprocess.Popen[Any],
    port: int,
    workload: str,
    extra: list[str],
    timeout: float,
) -> dict[str, Any]:
    """One client run; its result plus the drops and server CPU around it."""
    server_drops0 = drops_by_port([port]).get(port, 0)
    cpu0 = process_cpu(server.pid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [*side.client_argv, "--port", str(port), "--workload", workload, *extra],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        children.live[process.pid] = process
        client_inodes: set[int] = set()
        client_drops: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        timed_out = False
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                # The client's socket lives only as long as the client: poll it.
                client_inodes |= socket_inodes(process.pid)
                if client_inodes:
                    for row in read_udp_table():
                        if row.inode in client_inodes:
                            client_drops[row.inode] = row.drops
                time.sleep(0.02)
        finally:
            children.stop(process)
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    cpu1 = process_cpu(server.pid)
    server_drops1 = drops_by_port([port]).get(port, 0)
    record: dict[str, Any] = {
        "side": side.name,
        "workload": workload,
        "server_drops": server_drops1 - server_drops0,
        "client_drops_polled": sum(client_drops.values()),
        "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
    }
    if timed_out:
        record["error"] = f"timeout after {timeout:g} s"
        return record
    results = [line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not results:
        record["error"] = (stderr or stdout)[-1500:] or f"exit status {process.returncode}"
        return record
    result = json.loads(results[-1])
    record["result"] = result
    if not result.get("ok", True):
        record["error"] = "invalid result"
    return record


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def summarize(
    records: list[dict[str, Any]],
    workloads: Sequence[str],
    sides: Sequence[str],
    targets: dict[str, tuple[str, str, float]] = TARGETS,
) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    header = (
        f"{'workload':8s} {'metric':12s} {sides[0]:>13s} {sides[1]:>11s} "
        f"{'ratio':>6s} {'target':>8s} {'verdict':>7s}  spread (qf / anchor, min-max)"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for workload in workloads:
        for metric in SHOWN_METRICS[workload]:
            per_side: dict[str, list[float]] = {}
            for side in sides:
                per_side[side] = [
                    float(r["result"][metric])
                    for r in records
                    if r["side"] == side
                    and r["workload"] == workload
                    and "error" not in r
                    and metric in r["result"]
                ]
            qf = median(per_side[sides[0]])
            aq = median(per_side[sides[1]])
            ratio = qf / aq if qf is not None and aq else None
            target = targets.get(workload)
            target_text = verdict = ""
            passed: bool | None = None
            if target is not None and target[0] == metric:
                target_text = f"{target[1]} {target[2]:g}x"
                if ratio is not None:
                    passed = ratio <= target[2] if target[1] == "<=" else ratio >= target[2]
                    verdict = "PASS" if passed else "FAIL"
            spread = " / ".join(
                f"{fmt(min(v))}-{fmt(max(v))}" if v else "-"
                for v in (per_side[sides[0]], per_side[sides[1]])
            )
            ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
            lines.append(
                f"{workload:8s} {metric:12s} {fmt(qf):>13s} {fmt(aq):>11s} "
                f"{ratio_text:>6s} {target_text:>8s} {verdict:>7s}  {spread}"
            )
            rows.append(
                {
                    "workload": workload,
                    "metric": metric,
                    "sides": list(sides),
                    "quicframe": qf,
                    "anchor": aq,
                    "ratio": ratio,
                    "target": target_text or None,
                    "pass": passed,
                    "runs": [len(per_side[s]) for s in sides],
                }
            )
    lines.append("")
    lines.append("kernel receive drops on the benchmark's sockets (per run, each round):")
    for workload in workloads:
        if workload not in ("w3", "w4"):
            continue
        for side in sides:
            runs = [r for r in records if r["side"] == side and r["workload"] == workload]
            cells = []
            for r in runs:
                exact = r.get("result", {}).get("socket_drops")
                client = r["client_drops_polled"]
                cells.append(
                    f"server {r['server_drops']} + client {client}"
                    + (f" (exact, own sockets: {exact})" if exact is not None else "")
                )
            total = sum(r["server_drops"] + r["client_drops_polled"] for r in runs)
            verdict = "PASS" if side == sides[0] and total == 0 else ""
            if side == sides[0] and total:
                verdict = "FAIL"
            lines.append(
                f"  {workload} {side:10s} total {total:5d} {verdict:4s} | " + "; ".join(cells)
            )
            rows.append(
                {"workload": workload, "metric": "socket_drops", "side": side, "total": total}
            )
    return lines, rows


def driver(args: argparse.Namespace) -> int:
    anchors = find_anchors(args.anchors)
    python = args.python or sys.executable
    me = str(Path(__file__).resolve())
    cores = ["aioquic", "qh3"] if args.cores == "both" else args.cores.split(",")
    anchor = str(anchors / "quic_asyncio.py")
    sides: list[Side] = []
    # Pairs compared: (quicframe side, anchor side, targets).
    pairs: list[tuple[str, str, dict[str, tuple[str, str, float]]]] = []
    if "aioquic" in cores:
        sides.append(Side("quicframe", [python, "-B", me, "server"], [python, "-B", me, "client"]))
        sides.append(
            Side("aioquic", [python, "-B", anchor, "server"], [python, "-B", anchor, "client"])
        )
        pairs.append(("quicframe", "aioquic", TARGETS))
    if "qh3" in cores:
        qh3 = ["--core", "qh3"]
        sides.append(
            Side(
                "quicframe-qh3",
                [python, "-B", me, "server", *qh3],
                [python, "-B", me, "client", *qh3],
            )
        )
        lib = ["--lib", "qh3"]
        sides.append(
            Side(
                "qh3",
                [python, "-B", anchor, "server", *lib],
                [python, "-B", anchor, "client", *lib],
            )
        )
        pairs.append(("quicframe-qh3", "qh3", QH3_TARGETS))
    if not sides:
        raise SystemExit("--cores takes aioquic, qh3 or both")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for workload in workloads:
        if workload not in WORKLOADS:
            raise SystemExit(f"unknown workload {workload}")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    timeout = args.timeout or (90.0 if args.quick else 180.0)
    extra = ["--quick"] if args.quick else []
    children = Children()
    records: list[dict[str, Any]] = []
    failures = 0

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qf-bench-") as workdir:
        try:
            for round_number in range(1, rounds + 1):
                servers: dict[str, tuple[subprocess.Popen[Any], int]] = {}
                try:
                    for side in sides:
                        servers[side.name] = start_server(
                            children, side, Path(workdir) / f"{side.name}.r{round_number}.log"
                        )
                    for index, workload in enumerate(workloads):
                        order = sides if (round_number + index) % 2 else sides[::-1]
                        for side in order:
                            if side.name == "qh3" and workload == "w2":
                                continue  # the qh3 anchor has no W2 (see the docstring)
                            process, port = servers[side.name]
                            record = run_client(
                                children, side, process, port, workload, extra, timeout
                            )
                            record["round"] = round_number
                            records.append(record)
                            if "error" in record:
                                failures += 1
                                summary = "ERROR " + record["error"][-300:]
                            else:
                                result = record["result"]
                                summary = " ".join(
                                    f"{m}={fmt(result.get(m))}" for m in SHOWN_METRICS[workload]
                                )
                            print(
                                f"[r{round_number}] {side.name:9s} {workload:4s} {summary} "
                                f"drops(server={record['server_drops']}, "
                                f"client={record['client_drops_polled']})",
                                file=sys.stderr,
                                flush=True,
                            )
                finally:
                    for process, _ in servers.values():
                        children.stop(process)
        except KeyboardInterrupt:
            print("interrupted; stopping children", file=sys.stderr)
            failures += 1
        finally:
            children.stop_all()
    load_after = os.getloadavg()
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    for quicframe_side, anchor_side, targets in pairs:
        pair_lines, pair_rows = summarize(
            records, workloads, [quicframe_side, anchor_side], targets
        )
        lines += [*pair_lines, ""]
        rows += pair_rows
    libraries = ("quicframe", "aioquic", "trio") + (("qh3",) if "qh3" in cores else ())
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in libraries)
    context = (
        f"quicframe.transport vs asyncio anchors ({anchors / 'quic_asyncio.py'}); "
        f"Python {platform.python_version()}, {versions}; "
        f"{'quick' if args.quick else 'full'} counts, {rounds} interleaved rounds, medians; "
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f} / after "
        f"{load_after[0]:.2f}; {time.time() - started:.0f} s"
    )
    if args.json:
        print(json.dumps({"context": context, "failures": failures}))
        for row in rows:
            print(json.dumps(row))
    else:
        print(context)
        print("\n".join(lines))
    return 1 if failures else 0


# ------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "role",
        nargs="?",
        default="driver",
        choices=["driver", "server", "client", "floor", "udp-server", "udp-client"],
    )
    parser.add_argument("--port", type=int, default=0, help="server/client: UDP port")
    parser.add_argument("--workload", default="w1", choices=WORKLOADS, help="client: workload")
    parser.add_argument("--quick", action="store_true", help="reduced counts")
    parser.add_argument("--rounds", type=int, default=None, help="driver: rounds (5; quick 2)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="driver: comma-separated workloads"
    )
    parser.add_argument("--anchors", default=None, help="driver: the shared/anchors folder")
    parser.add_argument("--python", default=None, help="driver: interpreter for the children")
    parser.add_argument("--timeout", type=float, default=None, help="driver: per client run, s")
    parser.add_argument("--json", action="store_true", help="driver: JSON lines on stdout")
    parser.add_argument(
        "--core", default="aioquic", choices=["aioquic", "qh3"], help="server/client: QUIC core"
    )
    parser.add_argument(
        "--cores",
        default="aioquic",
        help="driver: quicframe cores to measure next to their anchors: aioquic, qh3 or both",
    )
    args = parser.parse_args(argv)
    if args.role == "server":
        die_with_parent()
        if not args.port:
            args.port = free_port()
        trio.run(server_main, args.port, *load_certificate(), args.core)
        return 0
    if args.role == "client":
        die_with_parent()
        trio.run(client_main, args.port, args.workload, counts(args.quick), args.core)
        return 0
    if args.role == "udp-server":
        die_with_parent()
        trio.run(udp_echo_server, args.port or free_port())
        return 0
    if args.role == "udp-client":
        die_with_parent()
        trio.run(udp_echo_client, args.port, counts(args.quick))
        return 0
    if args.role == "floor":
        return floor(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
