"""Helpers the benchmark drivers ``h3_bench.py`` and ``rpc_bench.py`` share.

A driver runs each server and each client in a child process of its own; these
are the pieces of that which are the same from one benchmark to the next.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent


def free_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that is free now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_result(argv: list[str], timeout: float) -> dict[str, Any] | None:
    """Run one client process to its end; its ``RESULT {json}`` line, or None (with
    the reason on stderr) when it timed out or printed none."""
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:g} s: {' '.join(argv)}", file=sys.stderr)
        return None
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            record: dict[str, Any] = json.loads(line[7:])
            return record
    sys.stderr.write(result.stderr[-2000:])
    return None


def note_result(
    results: dict[str, list[dict[str, Any]]],
    round_number: int,
    key: str,
    record: dict[str, Any] | None,
    brief: Callable[[dict[str, Any]], str],
) -> None:
    """Print one client run's line on stderr and keep its record under ``key``
    (``round_number`` counts from 0; ``record`` None is a failed run)."""
    print(
        f"round {round_number + 1}: {key}: " + ("failed" if record is None else brief(record)),
        file=sys.stderr,
        flush=True,
    )
    if record is not None:
        results.setdefault(key, []).append(record)
