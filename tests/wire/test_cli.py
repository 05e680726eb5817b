"""The ``quicframe demo`` main job, as the README runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quicframe.cli import main


def test_demo_checks_every_sequence_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "5000", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("demo: ticks=5000/5000 acks=100/100 gaps=0 duplicates=0 ")


def test_python_dash_m_quicframe_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quicframe", "demo", "--count", "1000"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gaps=0 duplicates=0" in result.stdout
