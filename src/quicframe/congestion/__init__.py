"""Congestion controllers for aioquic that aioquic does not ship.

Importing this package registers :class:`BbrCongestionControl` with aioquic's
congestion-control registry under the name ``"bbr"``, so
``ClientConfig(congestion_control="bbr")`` / ``ServerConfig(...)`` select it (the
configs import this package themselves when they see that name).  See
docs/congestion.md.
"""

from __future__ import annotations

from ._bbr import (
    DRAIN_PACING_GAIN,
    PROBE_BW_CWND_GAIN,
    PROBE_BW_PACING_GAINS,
    STARTUP_GAIN,
    BbrCongestionControl,
    BbrSettings,
    BbrState,
    register_bbr,
)

__all__ = [
    "DRAIN_PACING_GAIN",
    "PROBE_BW_CWND_GAIN",
    "PROBE_BW_PACING_GAINS",
    "STARTUP_GAIN",
    "BbrCongestionControl",
    "BbrSettings",
    "BbrState",
    "ensure_registered",
    "register_bbr",
]

_registered = False


def ensure_registered() -> None:
    """Register ``"bbr"`` (default settings) with aioquic, once."""
    global _registered
    if not _registered:
        register_bbr("bbr")
        _registered = True


ensure_registered()
