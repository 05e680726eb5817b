"""The ``quicframe`` command: the demo (the README's main job) and the client tools."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicframe.cli import LiveView, MarketView, main, render_table
from quicframe.testing import RandomWalkFeed


def test_demo_runs_over_quic_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "1", "--rate", "2000", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = out[-1]
    assert summary.startswith("demo: ticks=")
    fields = dict(part.split("=", 1) for part in summary.split()[1:])
    received, published = map(int, fields["ticks"].split("/"))
    assert published >= 1500  # about 2,000 a second for a second
    assert received + int(fields["conflated"]) == published
    assert fields["lost"] == "0"
    assert fields["duplicates"] == "0"
    acks, acks_published = map(int, fields["acks"].split("/"))
    assert acks == acks_published > 0
    assert fields["ack_gaps"] == "0"
    assert fields["p50"].endswith("us")
    # Not a terminal: the live view degrades to plain status lines.
    assert any(line.startswith("ticks=") for line in out[:-1])
    assert not any("\x1b[" in line for line in out)


def test_python_dash_m_quicframe_runs_the_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quicframe", "demo", "--duration", "0.5", "--rate", "1000"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert " lost=0 duplicates=0 " in result.stdout.splitlines()[-1]


def test_live_view_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    view = MarketView()
    feed = RandomWalkFeed(3, seed=1)
    for seq in range(1, 10):
        view.on_tick(feed.next_tick(0)._replace(seq=seq))
    live = LiveView(out, interactive=True)
    live.show(render_table(view), "status one")
    live.show(render_table(view), "status two")
    text = out.getvalue()
    lines = len(render_table(view)) + 1
    assert f"\x1b[{lines}F" in text  # the second frame moved back over the first
    assert text.count("\x1b[2K") == 2 * lines
    assert text.endswith("status two\n")


def test_market_view_counts_acks_out_of_order() -> None:
    view = MarketView()
    feed = RandomWalkFeed(2, seed=1)
    for seq in (1, 2, 4, 4):
        view.on_ack(feed.next_ack(0)._replace(seq=seq))
    assert view.acks == 4
    assert view.ack_disorder == 2


def test_cert_writes_a_usable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "--out", str(tmp_path), "--hostname", "localhost"]) == 0
    assert (tmp_path / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in (tmp_path / "key.pem").read_bytes()
    assert "development only" in capsys.readouterr().out


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``quicframe serve`` in a child process on a free port; yields (port, CA file)."""
    ca = tmp_path / "ca.pem"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quicframe",
            "serve",
            "--port",
            "0",
            "--write-cert",
            str(ca),
            "--rate",
            "500",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving" in line, line
        port = int(line.rsplit(":", 1)[1])
        yield port, ca
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_call_and_subscribe_against_quicframe_serve(
    dev_server: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, ca = dev_server
    common = ["127.0.0.1", str(port), "--ca", str(ca)]
    assert main(["call", *common, "0x0001", '{"hello": [1, 2, 3]}']) == 0
    assert json.loads(capsys.readouterr().out) == {"hello": [1, 2, 3]}
    assert main(["call", *common, "0x7777", "1"]) == 1
    assert "unknown opcode 0x7777" in capsys.readouterr().err
    assert main(["subscribe", *common, "--duration", "1.5"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("subscribe: ticks=")
    assert int(summary.split("ticks=")[1].split()[0]) > 0


def test_bench_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--calls", "200", "--seconds", "0.3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("bench: rpc p50=")
    assert "/s to one subscriber" in line
