"""Clean a compacted log and die by SIGKILL at a named point of the run.

Run as ``python -m tests.support.cleaner_crash DIRECTORY POINT [--naive-swap]``. The
log in DIRECTORY (topic ``t``, partition 0) is opened, its active segment rolled, and
cleaned; at POINT (one of ``POINTS``) the process kills itself, as a ``kill -9`` would
stop a broker. With ``--naive-swap`` the cleaned
segment replaces the old ones the obvious way (delete them, then move it in) instead of
through the swap directory: the crash test shows that this loses data.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brook_broker.storage import cleaner, compaction, swap
from brook_broker.storage.log import LogConfig, PartitionLog, wall_clock_ms
from brook_broker.storage.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, Segment

COMPACTED = LogConfig(segment_bytes=4096, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_calls(
    count: int, function: Callable[..., Any], when: Callable[..., bool] = lambda *_: True
) -> Callable[..., Any]:
    """``function``, killing the process after its ``count``-th call for which ``when``
    holds returns."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = function(*args, **kwargs)
        if when(*args):
            calls += 1
            if calls >= count:
                die()
        return result

    return wrapper


def before_calls(
    count: int, function: Callable[..., Any], when: Callable[..., bool] = lambda *_: True
) -> Callable[..., Any]:
    """``function``, killing the process at its ``count``-th call for which ``when`` holds."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if when(*args):
            calls += 1
            if calls >= count:
                die()
        return function(*args, **kwargs)

    return wrapper


def _is_swap(path: object, *_: object) -> bool:
    return Path(str(path)).name.startswith(swap.SWAP_PREFIX)


def _from_swap(source: object, *_: object) -> bool:
    return _is_swap(Path(str(source)).parent)


POINTS: dict[str, Callable[[], None]] = {
    # Halfway through writing the first cleaned segment.
    "writing": lambda: setattr(
        compaction._Compaction, "_write", after_calls(1, compaction._Compaction._write)
    ),
    # The swap of the second group is committed; no old segment is removed yet.
    "committed": lambda: setattr(swap, "_complete", before_calls(2, swap._complete)),
    # Old segments removed, the new index moved in, the new log not yet.
    "moving": lambda: setattr(swap.os, "replace", after_calls(1, os.replace, _from_swap)),
    # Everything moved; the swap directory not yet removed.
    "moved": lambda: setattr(swap.shutil, "rmtree", before_calls(1, swap.shutil.rmtree, _is_swap)),
}


def naive_replace_segments(
    self: PartitionLog, old: Sequence[Segment], sizes: Sequence[int], cleaning: Path
) -> bool:
    """Not crash-safe: the old segments are gone before the new one is in place, and the
    process dies right there."""
    for segment in old:
        segment.delete()
    die()
    base_offset = old[0].base_offset
    for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
        os.replace(
            cleaning / f"{base_offset:020d}{suffix}",
            self.directory / f"{base_offset:020d}{suffix}",
        )
    return True


def seal(log: PartitionLog) -> None:
    """Roll the active segment, so that all of the log may be cleaned."""
    log.update_config(dataclasses.replace(log.config, segment_ms=0))
    log.roll_if_due(wall_clock_ms())
    log.update_config(COMPACTED)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("point", choices=[*POINTS, "none"])
    parser.add_argument("--naive-swap", action="store_true")
    args = parser.parse_args(argv)
    log = PartitionLog.open(args.directory, "t", 0, COMPACTED)
    seal(log)
    if args.naive_swap:
        PartitionLog.replace_segments = naive_replace_segments  # type: ignore[method-assign]
    elif args.point != "none":
        POINTS[args.point]()
    log_cleaner = cleaner.LogCleaner(
        lambda: [log],
        worker=cleaner.ThreadWorker(),
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e12,
        backoff_ms=0,
    )

    async def clean() -> None:
        while await log_cleaner.clean_dirtiest():
            pass

    asyncio.run(clean())
    log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
