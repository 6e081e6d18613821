"""A partition's leader-epoch checkpoint: which leader epoch wrote the log from which offset.

Every leader stamps its epoch into the batches it appends, and the first offset of each
epoch is recorded here (``leader-epoch-checkpoint`` in the partition directory, in
Kafka's text format: a version line, a count line, then ``epoch start_offset`` lines).
When leadership moves, a follower asks the new leader where its own latest epoch ends
in the leader's log (OffsetForLeaderEpoch) and cuts whatever it holds beyond: that is
how a divergent tail written by a deposed leader disappears without losing anything
the ISR acknowledged.

Entries increase in both epoch and start offset; the file is rewritten atomically on
every change, which happens once per leader change.
"""

from __future__ import annotations

import itertools
import logging
from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple

from .checkpoint import write_atomically

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "leader-epoch-checkpoint"
_VERSION = 0
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


class LeaderEpochCache:
    """Epoch -> start offset for one partition, mirrored in its checkpoint file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT_FILE
        self._entries: list[EpochEntry] = _read_checkpoint(self.path)

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        """The newest epoch recorded, or -1 if none."""
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that ``epoch`` starts at ``start_offset``.

        An entry that would break the order (an epoch not above, or a start offset not
        below, the new one) is removed first, as a log truncation would have done.
        """
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"leader epoch {epoch} at offset {start_offset} is not valid")
        if self._entries:
            latest = self._entries[-1]
            if epoch == latest.epoch and start_offset >= latest.start_offset:
                return
        while self._entries and (
            self._entries[-1].epoch >= epoch or self._entries[-1].start_offset >= start_offset
        ):
            self._entries.pop()
        self._entries.append(EpochEntry(epoch, start_offset))
        self._write()

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """``(epoch, end offset)`` as OffsetForLeaderEpoch answers for ``epoch``.

        The end offset is the start offset of the first epoch above it (the log end
        offset for the latest epoch); the epoch is the largest known one at or below the
        asked one. An epoch below every known one gets its own number and the start of
        the first known epoch; an unknown newer epoch gets ``(-1, -1)``.
        """
        if epoch == UNDEFINED_EPOCH or not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if epoch == self._entries[-1].epoch:
            return epoch, log_end_offset
        higher = bisect_right(self._entries, epoch, key=lambda entry: entry.epoch)
        if higher == len(self._entries):
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if higher == 0:
            return epoch, self._entries[0].start_offset
        return self._entries[higher - 1].epoch, self._entries[higher].start_offset

    def epoch_for(self, offset: int) -> int:
        """The epoch that wrote ``offset`` (-1 if no entry starts at or before it)."""
        index = bisect_right(self._entries, offset, key=lambda entry: entry.start_offset)
        return self._entries[index - 1].epoch if index else UNDEFINED_EPOCH

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after ``end_offset`` (the log was cut there)."""
        count = len(self._entries)
        while self._entries and self._entries[-1].start_offset >= end_offset:
            self._entries.pop()
        if len(self._entries) != count:
            self._write()

    def truncate_from_start(self, start_offset: int) -> None:
        """The log now starts at ``start_offset``: epochs wholly before it go, and the one
        holding it starts there."""
        index = bisect_right(self._entries, start_offset, key=lambda entry: entry.start_offset)
        if index == 0 or (index == 1 and self._entries[0].start_offset == start_offset):
            return
        holder = self._entries[index - 1]
        self._entries[:index] = [EpochEntry(holder.epoch, start_offset)]
        self._write()

    def clear(self) -> None:
        if self._entries:
            self._entries.clear()
            self._write()

    def _write(self) -> None:
        lines = [str(_VERSION), str(len(self._entries))]
        lines += [f"{entry.epoch} {entry.start_offset}" for entry in self._entries]
        write_atomically(self.path, "\n".join(lines) + "\n")


def _read_checkpoint(path: Path) -> list[EpochEntry]:
    """The entries of a checkpoint file; none if it is missing or cannot be read (then the
    partition behaves as one written before leader epochs were kept)."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return []
    try:
        version, count = int(lines[0]), int(lines[1])
        numbers = [int(word) for word in lines[2:]]
        if version != _VERSION or len(numbers) != 2 * count:
            raise ValueError(f"version {version}, {count} entries, {len(numbers)} numbers")
        entries = [EpochEntry(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]
        for before, after in itertools.pairwise(entries):
            if not (before.epoch < after.epoch and before.start_offset < after.start_offset):
                raise ValueError("entries are not in increasing order")
    except (IndexError, ValueError) as error:
        logger.warning("%s is not a valid leader-epoch checkpoint (%s): ignoring it", path, error)
        return []
    return entries
