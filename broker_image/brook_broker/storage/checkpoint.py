"""Small text files that must never be seen half-written: checkpoints; and fsync by path.

A checkpoint is written to a temporary file, synced, renamed over the old one, and the
directory is synced, so after a crash it is either the old or the new one, whole.

The high-watermark checkpoint (Kafka's ``replication-offset-checkpoint``) keeps the
high watermark of every partition of the broker, so that after a restart consumers are
served what was committed before, rather than nothing until the followers report in.
It is written every few seconds and on shutdown: an older value is merely lower, and a
high watermark may always lag.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

HIGH_WATERMARK_FILE = "replication-offset-checkpoint"
_VERSION = 0


def write_atomically(path: Path, text: str) -> None:
    """Each write has a temporary file of its own: a periodic checkpoint still running in
    a worker thread when the final one is written at shutdown cannot clash with it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Sync a file or directory that is not open (a directory: its entries, after a
    rename, creation or deletion in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_high_watermarks(data_dir: Path, marks: Mapping[tuple[str, int], int]) -> None:
    lines = [str(_VERSION), str(len(marks))]
    lines += [f"{topic} {partition} {offset}" for (topic, partition), offset in marks.items()]
    write_atomically(data_dir / HIGH_WATERMARK_FILE, "\n".join(lines) + "\n")


def read_high_watermarks(data_dir: Path) -> dict[tuple[str, int], int]:
    """The checkpointed high watermarks; none if the file is missing or unreadable."""
    path = data_dir / HIGH_WATERMARK_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    try:
        version, count = int(lines[0]), int(lines[1])
        entries = [line.rsplit(" ", 2) for line in lines[2:]]
        if version != _VERSION or len(entries) != count:
            raise ValueError(f"version {version}, {count} entries, {len(entries)} lines")
        return {(topic, int(partition)): int(offset) for topic, partition, offset in entries}
    except (IndexError, ValueError) as error:
        logger.warning("%s cannot be read (%s): ignoring it", path, error)
        return {}
