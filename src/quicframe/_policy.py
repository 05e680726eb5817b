"""Client policies that are plain values (no trio): reconnection with backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ReconnectPolicy"]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a client re-establishes a lost connection in the background.

    After the connection is lost (or the server sent GOAWAY), the client dials
    again at once; each failed attempt waits ``initial_backoff * 2**(n - 1)``
    seconds (capped at ``max_backoff``, then spread by ``jitter``) before the
    next, and after ``max_retries`` failed attempts it gives up: waiting and new
    calls then fail with :class:`quicframe.errors.ConnectionLost`.

    Attributes:
        max_retries: failed attempts allowed per outage (0: never reconnect).
        initial_backoff: the wait after the first failed attempt, seconds.
        max_backoff: the longest wait between attempts, seconds.
        jitter: each wait is multiplied by a random factor in
            ``[1 - jitter, 1 + jitter]`` (0..1), so clients do not dial in step.
    """

    max_retries: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after the ``failures``-th failed attempt (1-based), in seconds."""
        base = min(self.max_backoff, self.initial_backoff * 2 ** max(0, failures - 1))
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return float(base * spread)
