"""The waiting room of fetches: a fetch that found too little waits for an append.

A waiting fetch registers one event under each partition it reads; an append sets the
events registered under its partition, and so does a move of the high watermark, except
for followers' fetches: a follower reads up to the log end, so a new high watermark alone
gives it nothing to read (it learns the new mark with its next fetch, as in Kafka), and
waking it would only make it read its partitions again. Nothing polls: the fetch is woken
by the event it waits for, never by its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

_Waiters = dict[tuple[str, int], set[asyncio.Event]]


class AppendNotifier:
    def __init__(self) -> None:
        self._for_appends: _Waiters = {}
        """Followers' fetches: woken by appends only."""
        self._for_readable: _Waiters = {}
        """Consumers' fetches: woken by anything that makes records readable."""

    def notify(self, topic: str, partition: int, *, appended: bool) -> None:
        """Records were appended to the partition (``appended``), or its high watermark
        moved."""
        key = (topic, partition)
        for waiting in (
            (self._for_appends, self._for_readable) if appended else (self._for_readable,)
        ):
            events = waiting.pop(key, None)
            if events:
                for event in events:
                    event.set()

    async def wait(
        self, partitions: Iterable[tuple[str, int]], timeout: float, *, follower: bool = False
    ) -> None:
        """Return after an append to one of ``partitions`` (or, unless the fetch is a
        ``follower``'s, a move of its high watermark), or after ``timeout`` seconds."""
        waiting = self._for_appends if follower else self._for_readable
        event = asyncio.Event()
        keys = list(partitions)
        for key in keys:
            waiting.setdefault(key, set()).add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            for key in keys:
                events = waiting.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del waiting[key]
