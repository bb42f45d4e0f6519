"""One backoff for everything that tries again: task retries, the worker's reconnect loop, Redis commands.

Exponential with full jitter and a cap (the "Full Jitter" of AWS's *Exponential Backoff
and Jitter*): attempt ``n`` waits a uniform time in ``[0, min(cap, base * 2**(n-1))]``.
The jitter spreads out clients that failed together (a Redis failover drops every
worker at once), so they do not come back in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits uniform(0, min(cap, base * 2**(n-1)))."""

    base_s: float = 1.0
    cap_s: float = 300.0

    def ceiling_s(self, attempt: int) -> float:
        """The longest wait after ``attempt`` (counted from 1)."""
        # Past 2**64 any base is beyond any cap, and 2**1024 no longer fits a float: a long
        # outage must not turn the reconnect loop's wait into an OverflowError.
        doublings = min(max(attempt - 1, 0), 64)
        return min(self.cap_s, self.base_s * 2.0**doublings)

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """How long to wait after ``attempt`` (counted from 1) failed."""
        return (rng or random).uniform(0.0, self.ceiling_s(attempt))
