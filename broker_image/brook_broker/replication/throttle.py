"""The replication throttle: a token bucket of bytes per second.

A leader takes from it what it sends to replicas that a reassignment is adding, so that
copying a partition to a new broker cannot starve producers and in-sync followers.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes per second, with at most one second's worth saved up.

    A read may take more than is available (a batch is sent whole): the debt is paid
    off before the next read gets anything, so the rate holds on average.
    """

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError(f"a throttle of {rate} bytes/s is not a rate")
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._updated = clock()

    def available(self) -> int:
        """Bytes that may be sent now (0 while a debt is paid off)."""
        self._refill()
        return max(0, int(self._tokens))

    def take(self, size: int) -> None:
        """Count ``size`` bytes as sent."""
        self._refill()
        self._tokens -= size

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
