"""The market-data examples run as documented: server and subscriber in two processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_market_data_server_and_subscriber(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    server = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "market_data_server.py"),
            "--port",
            "0",
            "--rate",
            "1000",
            "--duration",
            "30",
            "--write-cert",
            str(ca),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("market data on "), line
        port = line.split(":")[1].split()[0]
        result = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "market_data_subscriber.py"),
                "--port",
                port,
                "--ca",
                str(ca),
                "--duration",
                "1.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    assert result.returncode == 0, result.stderr
    ticks, acks = result.stdout.strip().splitlines()[-2:]
    assert ticks.startswith("md.ticks: received=")
    assert int(ticks.split("received=")[1].split()[0]) > 0
    assert acks.startswith("md.acks: received=")
    assert " gaps=0 duplicates=0 " in acks
