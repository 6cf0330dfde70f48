"""Retry policy: exponential backoff with full jitter, bounded in attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(n)`` is uniform in ``[0, min(cap, base * 2**(n-1))]`` (full jitter)."""

    base_s: float = 0.5
    cap_s: float = 60.0
    max_attempts: int = 10

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` failed attempts used up the budget."""
        return attempts >= self.max_attempts
