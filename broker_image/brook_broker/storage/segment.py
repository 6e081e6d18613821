"""One segment of a partition log: ``<base offset>.log`` and its two indexes.

The log file holds raw v2 batches back to back, exactly as producers sent them except for
the assigned base offset (and the timestamp under LogAppendTime). Appends are one
``os.pwritev`` of buffers that point into the request, so Python never copies the
payload; reads are positional (``os.pread``) and walk batch headers, never records.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from .batch import HEADER_SIZE, BatchHeader, InvalidBatch, crc_matches, parse_header
from .index import OffsetIndex, TimeIndex
from .records import first_record_at_or_after

logger = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"

Buffer = bytes | bytearray | memoryview

_WALK_WINDOW = 16 * 1024
"""Bytes read at a time when walking headers: batches up to one index interval apart."""
_SCAN_CHUNK = 8 * 1024 * 1024
"""Bytes read at a time when recovery checks every batch's CRC."""
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def segment_file(directory: Path, base_offset: int, suffix: str) -> Path:
    """Kafka's naming: the base offset as 20 digits, so names sort like offsets."""
    return directory / f"{base_offset:020d}{suffix}"


class AppendedBatch(NamedTuple):
    """What a segment indexes about a batch it is given."""

    base_offset: int
    max_timestamp: int
    size: int


class Segment:
    """A slice of a partition log starting at ``base_offset``.

    ``next_offset`` is the offset after its last batch, ``max_timestamp`` the largest batch
    timestamp in it (-1 if none), ``created_ms`` when this broker created or opened it
    (what ``segment.ms`` counts from, as in Kafka).
    """

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        created_ms: int,
        flags: int,
    ) -> None:
        self.base_offset = base_offset
        self.log_path = segment_file(directory, base_offset, LOG_SUFFIX)
        self.index = OffsetIndex(segment_file(directory, base_offset, INDEX_SUFFIX), base_offset)
        self.time_index = TimeIndex(
            segment_file(directory, base_offset, TIME_INDEX_SUFFIX), base_offset
        )
        self.index_interval_bytes = index_interval_bytes
        self.created_ms = created_ms
        self._fd = os.open(self.log_path, flags, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.next_offset = base_offset
        self.max_timestamp = -1
        self._max_timestamp_offset = base_offset
        self._bytes_since_index = 0
        self.dirty = False

    @classmethod
    def create(
        cls, directory: Path, base_offset: int, *, index_interval_bytes: int, now_ms: int
    ) -> Segment:
        segment = cls(
            directory,
            base_offset,
            index_interval_bytes=index_interval_bytes,
            created_ms=now_ms,
            flags=os.O_RDWR | os.O_CREAT | os.O_EXCL,
        )
        segment.index.reset()
        segment.time_index.reset()
        return segment

    @classmethod
    def open(
        cls,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        now_ms: int,
        recover: bool,
    ) -> Segment:
        """Open an existing segment.

        With ``recover`` every batch's CRC is checked and a torn or corrupt tail is cut;
        otherwise the index files are trusted if they agree with the file, and the segment
        is recovered only if they do not.
        """
        segment = cls(
            directory,
            base_offset,
            index_interval_bytes=index_interval_bytes,
            created_ms=now_ms,
            flags=os.O_RDWR,
        )
        try:
            if recover or not segment._load():
                segment.recover()
        except BaseException:
            segment.close()
            raise
        return segment

    @property
    def largest_timestamp(self) -> int:
        """What retention.ms compares: the largest record timestamp, or, when the records
        carry none, the file's modification time (as Kafka does)."""
        if self.max_timestamp >= 0:
            return self.max_timestamp
        return int(os.fstat(self._fd).st_mtime * 1000)

    # Writing

    def append(
        self, buffers: Sequence[Buffer], batches: Sequence[AppendedBatch], next_offset: int
    ) -> None:
        """Write whole batches (``buffers`` concatenated) at the end, then index them."""
        position = self.size
        _write_at(self._fd, buffers, position)
        for batch in batches:
            self._index_batch(position, batch.base_offset, batch.max_timestamp, batch.size)
            position += batch.size
        self.size = position
        self.next_offset = next_offset
        self.dirty = True
        self.index.persist()
        self.time_index.persist()

    def _index_batch(self, position: int, base_offset: int, max_timestamp: int, size: int) -> None:
        if max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp
            self._max_timestamp_offset = base_offset
        if self._bytes_since_index > self.index_interval_bytes:
            self.index.add(base_offset, position)
            if self.max_timestamp > self.time_index.last_timestamp:
                self.time_index.add(self.max_timestamp, self._max_timestamp_offset)
            self._bytes_since_index = 0
        self._bytes_since_index += size

    def recover(self) -> int:
        """Check every batch from the start and cut the file at the first torn or corrupt one.

        The indexes are rebuilt on the way. Returns the number of bytes cut.
        """
        self.index.reset()
        self.time_index.reset()
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self._max_timestamp_offset = self.base_offset
        self._bytes_since_index = 0
        valid_end = 0
        for position, header in self._valid_batches():
            self._index_batch(position, header.base_offset, header.max_timestamp, header.size)
            valid_end = position + header.size
            self.next_offset = header.next_offset
        self.index.persist()
        self.time_index.persist()
        cut = self.size - valid_end
        if cut:
            logger.warning(
                "%s: cut %d bytes of torn or corrupt data after position %d; next offset is %d",
                self.log_path,
                cut,
                valid_end,
                self.next_offset,
            )
            os.ftruncate(self._fd, valid_end)
            self.size = valid_end
            self.dirty = True
        return cut

    def _load(self) -> bool:
        """Adopt the index files if they agree with the segment."""
        return self.index.load() and self.time_index.load() and self._adopt_indexes()

    def _adopt_indexes(self) -> bool:
        """Take the in-memory indexes as right if they agree with the file, and derive
        the next offset and largest timestamp from them.

        Checked cheaply: the batches after the last indexed one must follow it and end
        exactly at the end of the file.
        """
        position = self.index.last_position
        expected = self.index.last_offset
        if (len(self.index) and position >= self.size) or self.time_index.last_offset > expected:
            return False
        max_timestamp = self.time_index.last_timestamp
        max_timestamp_offset = self.time_index.last_offset
        exact = len(self.index) > 0
        try:
            for batch_position, header in self._headers(position, self.size):
                if header.base_offset < expected or (exact and header.base_offset != expected):
                    return False
                exact = False
                position = batch_position + header.size
                expected = header.next_offset
                if header.max_timestamp > max_timestamp:
                    max_timestamp, max_timestamp_offset = header.max_timestamp, header.base_offset
        except InvalidBatch:
            return False
        if position != self.size:
            return False
        self.next_offset = expected
        self.max_timestamp = max_timestamp
        self._max_timestamp_offset = max_timestamp_offset
        self._bytes_since_index = self.size - self.index.last_position
        return True

    def truncate_to(self, offset: int) -> None:
        """Cut the batch holding ``offset`` and every batch after it; the indexes follow.

        The segment may be sealed: it becomes the active one again.
        """
        found = self._find(offset)
        if found is None:
            return
        position, header = found
        os.ftruncate(self._fd, position)
        self.size = position
        self.dirty = True
        self.index.truncate(bisect.bisect_left(self.index.values, position))
        self.time_index.truncate(
            bisect.bisect_left(self.time_index.values, header.base_offset - self.base_offset)
        )
        if not self._adopt_indexes():
            self.recover()

    def seal(self) -> None:
        """The segment takes no more appends: let go of its index file descriptors."""
        self.index.release()
        self.time_index.release()

    def flush(self) -> None:
        """fsync the log and index files (only what changed since the last flush)."""
        if self.dirty:
            os.fsync(self._fd)
            self.dirty = False
        self.index.flush()
        self.time_index.flush()

    def close(self) -> None:
        if self._fd < 0:
            return
        self.seal()
        os.close(self._fd)
        self._fd = -1

    def delete(self) -> None:
        """Close and remove the files; the log file first, so a crash halfway leaves only
        index files, which the next start removes."""
        self.close()
        for path in (self.log_path, self.index.path, self.time_index.path):
            path.unlink(missing_ok=True)

    # Reading

    def read(self, offset: int, max_bytes: int, upper_offset: int) -> bytes | None:
        """Whole batches from the one holding ``offset`` (or the first after it).

        Stops before the first batch that reaches ``upper_offset`` or would take the
        result past ``max_bytes``, except that the first batch is returned whole even if it
        alone is larger (KIP-74). ``None`` if no batch of this segment ends at or after
        ``offset``.
        """
        found = self._find(offset)
        if found is None:
            return None
        start, first = found
        if first.last_offset >= upper_offset:
            return b""
        limit = min(start + max(max_bytes, first.size), self.size)
        end = self._end_of_batches(start, limit, upper_offset)
        return os.pread(self._fd, end - start, start)

    def offset_for_timestamp(
        self, timestamp_ms: int, from_offset: int = 0
    ) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first record at ``from_offset`` or later with a
        timestamp >= ``timestamp_ms``."""
        if self.max_timestamp < timestamp_ms:
            return None
        start = self.index.lookup(max(self.time_index.lookup(timestamp_ms), from_offset))
        for position, header in self._headers(start, self.size):
            if header.max_timestamp >= timestamp_ms and header.last_offset >= from_offset:
                batch = os.pread(self._fd, header.size, position)
                found = first_record_at_or_after(batch, header, timestamp_ms, from_offset)
                if found is not None:
                    return found
        return None

    def headers(self, position: int = 0) -> Iterator[tuple[int, BatchHeader]]:
        """``(position, header)`` of every batch from ``position`` (a batch boundary) on,
        without reading the records."""
        return self._headers(position, self.size)

    def _find(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose last offset is >= ``offset``."""
        for position, header in self._headers(self.index.lookup(offset), self.size):
            if header.last_offset >= offset:
                return position, header
        return None

    def _end_of_batches(self, start: int, limit: int, upper_offset: int) -> int:
        """End of the last whole batch after ``start`` that ends by ``limit`` and stays below
        ``upper_offset``. The walk starts at the last indexed batch known to qualify."""
        if limit == self.size and upper_offset >= self.next_offset:
            return limit
        end = max(start, min(self.index.floor_position(limit), self.index.lookup(upper_offset)))
        for position, header in self._headers(end, limit):
            if position + header.size > limit or header.last_offset >= upper_offset:
                break
            end = position + header.size
        return end

    def _headers(self, position: int, end: int) -> Iterator[tuple[int, BatchHeader]]:
        return read_headers(self._fd, position, end)

    def _valid_batches(self) -> Iterator[tuple[int, BatchHeader]]:
        """Whole batches with a valid CRC and increasing offsets, from the start of the file
        up to the first that is not."""
        position = 0
        expected = self.base_offset
        while self.size - position >= HEADER_SIZE:
            chunk = os.pread(self._fd, min(_SCAN_CHUNK, self.size - position), position)
            cursor = 0
            while len(chunk) - cursor >= HEADER_SIZE:
                try:
                    header = parse_header(chunk, cursor)
                except InvalidBatch:
                    return
                if header.base_offset < expected or position + cursor + header.size > self.size:
                    return
                if cursor + header.size > len(chunk):
                    if cursor:
                        break  # read the next chunk from this batch on
                    chunk = os.pread(self._fd, header.size, position)  # larger than a chunk
                    if len(chunk) < header.size:
                        return
                if not crc_matches(chunk, header, cursor):
                    return
                yield position + cursor, header
                expected = header.next_offset
                cursor += header.size
            if cursor == 0:
                return
            position += cursor


def read_headers(fd: int, position: int, end: int) -> Iterator[tuple[int, BatchHeader]]:
    """``(position, header)`` of each batch starting in ``[position, end)``.

    Headers are read in windows: small batches cost one pread per window, a large one a
    pread of its first bytes. Raises :class:`InvalidBatch` where a header is not one.
    """
    while end - position >= HEADER_SIZE:
        window = os.pread(fd, min(_WALK_WINDOW, end - position), position)
        cursor = 0
        while len(window) - cursor >= HEADER_SIZE:
            header = parse_header(window, cursor)
            yield position + cursor, header
            cursor += header.size
        if cursor == 0:
            return
        position += cursor


def _write_at(fd: int, buffers: Sequence[Buffer], position: int) -> None:
    """Write all of ``buffers`` at ``position``: one pwritev per IOV_MAX buffers, short
    writes resumed. On failure the file is cut back so no partial batch stays behind."""
    start = position
    pending = list(buffers)
    try:
        while pending:
            group = pending[:_IOV_MAX]
            written = os.pwritev(fd, group, position)
            if written <= 0:
                raise OSError("pwritev wrote nothing")
            position += written
            done = 0
            while done < len(group) and written >= len(group[done]):
                written -= len(group[done])
                done += 1
            del pending[:done]
            if written:
                pending[0] = memoryview(pending[0])[written:]
    except BaseException:
        os.ftruncate(fd, start)
        raise
