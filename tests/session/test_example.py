"""examples/rpc_echo.py runs as-is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rpc_echo.py"


def test_rpc_echo_demo_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo", "--cert-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "'hello quicframe hello quicframe'" in result.stdout
    assert "refused as expected" in result.stdout
