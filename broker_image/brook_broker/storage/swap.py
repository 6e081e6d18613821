"""Crash-safe replacement of a run of segments by the one segment the cleaner wrote.

The cleaner writes the new segment (log and both indexes, fsynced) into a directory
``cleaning-<B>-<E>`` beside the segments, where ``[B, E)`` is the offset range of the
segments it replaces. Installing it is three steps, each of which a crash may cut short:

1. the directory is renamed to ``swap-<B>-<E>`` (atomic, then the partition directory is
   synced): from here on the new segment is the truth;
2. the replaced segments are removed, except the one at ``B``, whose files are
   overwritten in the next step;
3. the new files are moved into place with ``rename`` (indexes first, the log last) and
   the swap directory is removed.

On open, :func:`finish_interrupted_swaps` removes a ``cleaning-`` directory (the old
segments are whole) and completes a ``swap-`` directory by doing steps 2 and 3 again,
which are idempotent: while the new ``.log`` is still inside the swap directory, a
``<B>.log`` beside it is the old one. So a ``kill -9`` at any point leaves the old
segments or the new one, never a mix (Kafka's ``.cleaned`` and ``.swap`` files play the
same part).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .checkpoint import fsync_path
from .segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_file

logger = logging.getLogger(__name__)

CLEANING_PREFIX = "cleaning-"
SWAP_PREFIX = "swap-"
_RANGE = re.compile(r"^(cleaning|swap)-(\d+)-(\d+)$")
_LOG_NAME = re.compile(r"^(\d{20})\.log$")


def cleaning_directory(directory: Path, base_offset: int, end_offset: int) -> Path:
    """Where the cleaner writes the segment replacing those in ``[base_offset, end_offset)``."""
    return directory / f"{CLEANING_PREFIX}{base_offset}-{end_offset}"


def install(cleaning: Path) -> None:
    """Steps 1 to 3 above; the caller has closed the replaced segments' files."""
    parsed = _parse(cleaning)
    if parsed is None or parsed[0] != "cleaning":
        raise ValueError(f"{cleaning} is not a cleaning directory")
    _, base_offset, end_offset = parsed
    swap = cleaning.with_name(f"{SWAP_PREFIX}{base_offset}-{end_offset}")
    os.rename(cleaning, swap)
    fsync_path(swap.parent)
    _complete(swap, base_offset, end_offset)


def finish_interrupted_swaps(directory: Path) -> None:
    """Discard unfinished cleanings and complete committed swaps (see the module doc)."""
    for path in sorted(directory.iterdir()):
        parsed = _parse(path) if path.is_dir() else None
        if parsed is None:
            continue
        kind, base_offset, end_offset = parsed
        if kind == "cleaning":
            logger.info(
                "%s: discarding an unfinished cleaning of offsets %d to %d",
                directory.name,
                base_offset,
                end_offset,
            )
            shutil.rmtree(path)
        else:
            logger.info(
                "%s: completing the swap of cleaned offsets %d to %d",
                directory.name,
                base_offset,
                end_offset,
            )
            _complete(path, base_offset, end_offset)
    fsync_path(directory)


def _parse(path: Path) -> tuple[str, int, int] | None:
    match = _RANGE.match(path.name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


def _complete(swap: Path, base_offset: int, end_offset: int) -> None:
    """Steps 2 and 3: idempotent, so a crash inside them is completed by running them again."""
    directory = swap.parent
    for path in directory.iterdir():
        match = _LOG_NAME.match(path.name)
        if match is not None and base_offset < int(match.group(1)) < end_offset:
            old_base = int(match.group(1))
            for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
                segment_file(directory, old_base, suffix).unlink(missing_ok=True)
    for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX):
        source = segment_file(swap, base_offset, suffix)
        if source.exists():
            os.replace(source, segment_file(directory, base_offset, suffix))
    shutil.rmtree(swap)
    fsync_path(directory)
