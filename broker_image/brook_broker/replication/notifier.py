"""The waiting room of fetches: a fetch that found too little waits for an append.

A waiting fetch registers one event under each partition it reads; an append (or a move
of the high watermark) sets the events registered under its partition. Nothing polls:
the fetch is woken by the event it waits for, never by its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class AppendNotifier:
    def __init__(self) -> None:
        self._waiters: dict[tuple[str, int], set[asyncio.Event]] = {}

    def notify(self, topic: str, partition: int) -> None:
        waiters = self._waiters.pop((topic, partition), None)
        if waiters:
            for event in waiters:
                event.set()

    async def wait(self, partitions: Iterable[tuple[str, int]], timeout: float) -> None:
        """Return after an append to one of ``partitions``, or after ``timeout`` seconds."""
        event = asyncio.Event()
        keys = list(partitions)
        for key in keys:
            self._waiters.setdefault(key, set()).add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[key]
