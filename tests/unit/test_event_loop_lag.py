"""The event-loop lag histogram shows a loop that was blocked, and how long for."""

from __future__ import annotations

import asyncio
import time

from brook_broker import metrics


def _observed_above(bound: float) -> float:
    """Observations above ``bound`` (one of the histogram's bucket bounds)."""
    total = at_most = 0.0
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "brook_event_loop_lag_seconds_count":
                total = sample.value
            elif (
                sample.name == "brook_event_loop_lag_seconds_bucket"
                and float(sample.labels["le"]) == bound
            ):
                at_most = sample.value
    return total - at_most


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    before = _observed_above(0.25)
    watcher = asyncio.create_task(metrics.watch_event_loop_lag(interval_s=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.6)  # something that does not yield, as a blocking fsync would
    await asyncio.sleep(0.05)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert _observed_above(0.25) - before >= 1
