"""The two sparse indexes kept next to each segment, as Kafka keeps them.

* The offset index maps the offset of an indexed batch to its position in the segment
  file, so a fetch lands at most ``index.interval.bytes`` (plus one batch) before the
  batch it wants instead of scanning the segment.
* The time index maps the largest timestamp seen so far to the batch that first reached
  it, so ListOffsets by time skips every batch that cannot hold the answer.

Offsets are stored relative to the segment's base offset (u32), positions as u32,
timestamps as i64, all big-endian. Entries live in memory as arrays for ``bisect``; the
files are only a cache of what the segment holds, rebuilt from it when missing or wrong.
Writes are buffered per append and written with one ``os.write``, so an index entry
never reaches the file before the batch it points at.
"""

from __future__ import annotations

import bisect
import operator
import os
import struct
from array import array
from pathlib import Path

from .checkpoint import fsync_path

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")


class _IndexFile:
    """An append-only file of fixed-size entries mirrored by two ascending arrays.

    The file descriptor is opened only while entries are written, so a partition with
    many sealed segments holds no index descriptors.
    """

    def __init__(self, path: Path, entry: struct.Struct, key_type: str, value_type: str) -> None:
        self.path = path
        self._entry = entry
        self.keys = array(key_type)
        self.values = array(value_type)
        self._pending = bytearray()
        self._fd: int | None = None
        self._unsynced = False

    def __len__(self) -> int:
        return len(self.keys)

    def load(self) -> bool:
        """Read the file; False if it is missing or cannot be a valid index."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if len(data) % self._entry.size:
            return False
        entries = list(self._entry.iter_unpack(data))
        self.keys = array(self.keys.typecode, [key for key, _ in entries])
        self.values = array(self.values.typecode, [value for _, value in entries])
        return _strictly_ascending(self.keys) and _strictly_ascending(self.values)

    def append(self, key: int, value: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        self._pending += self._entry.pack(key, value)

    def persist(self) -> None:
        """Write the entries appended since the last call."""
        if self._pending:
            os.write(self._writer(), self._pending)
            self._pending.clear()
            self._unsynced = True

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries, in memory and in the file."""
        if count >= len(self.keys):
            return
        self.persist()
        del self.keys[count:]
        del self.values[count:]
        os.ftruncate(self._writer(), count * self._entry.size)
        self._unsynced = True

    def reset(self) -> None:
        """Forget every entry, in memory and in the file (before a rebuild)."""
        self.keys = array(self.keys.typecode)
        self.values = array(self.values.typecode)
        self._pending.clear()
        os.ftruncate(self._writer(), 0)

    def release(self) -> None:
        """Close the file descriptor; the segment takes no more entries for now."""
        self.persist()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def flush(self) -> None:
        self.persist()
        if not self._unsynced:
            return
        if self._fd is not None:
            os.fsync(self._fd)
        else:
            fsync_path(self.path)
        self._unsynced = False

    def _writer(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd


class OffsetIndex(_IndexFile):
    """Relative offset of an indexed batch -> its position in the segment file."""

    def __init__(self, path: Path, base_offset: int) -> None:
        super().__init__(path, _OFFSET_ENTRY, "I", "I")
        self.base_offset = base_offset

    def add(self, offset: int, position: int) -> None:
        self.append(offset - self.base_offset, position)

    def lookup(self, offset: int) -> int:
        """Position of the last indexed batch whose base offset is <= ``offset`` (else 0)."""
        slot = bisect.bisect_right(self.keys, offset - self.base_offset) - 1
        return self.values[slot] if slot >= 0 else 0

    def floor_position(self, position: int) -> int:
        """The last indexed batch boundary at or before ``position`` (else 0)."""
        slot = bisect.bisect_right(self.values, position) - 1
        return self.values[slot] if slot >= 0 else 0

    @property
    def last_offset(self) -> int:
        """Base offset of the last indexed batch (the segment's base offset if none)."""
        return self.base_offset + (self.keys[-1] if self.keys else 0)

    @property
    def last_position(self) -> int:
        return self.values[-1] if self.values else 0


class TimeIndex(_IndexFile):
    """Largest timestamp so far -> relative offset of the batch that first reached it."""

    def __init__(self, path: Path, base_offset: int) -> None:
        super().__init__(path, _TIME_ENTRY, "q", "I")
        self.base_offset = base_offset

    def add(self, timestamp: int, offset: int) -> None:
        self.append(timestamp, offset - self.base_offset)

    def lookup(self, timestamp: int) -> int:
        """An offset from which to scan for the first record with a timestamp >= ``timestamp``.

        Every batch up to the last entry below ``timestamp`` holds only older records, so
        the scan starts at that entry's batch (the segment's base offset if none).
        """
        slot = bisect.bisect_left(self.keys, timestamp) - 1
        return self.base_offset + (self.values[slot] if slot >= 0 else 0)

    @property
    def last_timestamp(self) -> int:
        return self.keys[-1] if self.keys else -1

    @property
    def last_offset(self) -> int:
        return self.base_offset + (self.values[-1] if self.values else 0)


def _strictly_ascending(values: array[int]) -> bool:
    return all(map(operator.lt, values, values[1:]))
