"""A token bucket of bytes per second, for work that must not starve clients.

A leader takes from one what it sends to replicas that a reassignment is adding, so that
copying a partition to a new broker cannot starve producers and in-sync followers; the
log cleaner takes from one what it reads and writes (``log.cleaner.io.max.bytes.per.second``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes per second, with at most one second's worth saved up.

    A read may take more than is available (a batch is sent whole): the debt is paid
    off before the next read gets anything, so the rate holds on average.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
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

    def seconds_until_available(self) -> float:
        """How long until the debt is paid off (0 if something may be sent now)."""
        self._refill()
        return max(0.0, -self._tokens / self.rate) if self.rate else 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
