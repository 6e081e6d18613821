"""One compaction: rewrite a log's sealed segments keeping the latest record of each key.

This is the part of the log cleaner that reads and writes records, and it takes most of
the CPU (records are parsed, and compressed batches decompressed and recompressed). It
works from a ``CompactionJob``, paths and numbers only, so that it can run in a process
of its own (``storage.cleaner`` runs it there): a thread of the broker would hold the
interpreter lock for milliseconds at a time and keep every request waiting.

Given the log's sealed segments from its start and the first dirty offset, it maps each
key of the dirty section to its latest offset (the map holds at most
``dedupe_buffer_size`` bytes of keys; whole segments only, so a larger dirty section is
left to later runs), then writes the segments, merged into groups of at most
``segment.bytes``, into cleaning directories (``storage.swap``), keeping:

- a record whose key has no later offset in the map (the latest value of its key);
- a tombstone (null value) until ``delete.retention.ms`` after the run that first
  cleaned its batch: as Kafka (KIP-534), that run writes the batch with a delete
  horizon, and a later run past the horizon removes the tombstones (so a consumer
  reading the log from the start within ``delete.retention.ms`` sees every delete);
- the last batch of each idempotent producer, emptied of records if none is kept, so
  that its last sequence number survives (the batch keeps its offset range).

Offsets never change: a compacted log has gaps. Key-less records (which a compacted
topic refuses, but a topic switched to ``compact`` may hold) are dropped, as Kafka does.
Reads and writes go through an I/O throttle of ``io_max_bytes_per_second``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..throttle import TokenBucket
from .batch import HEADER_SIZE, BatchHeader, InvalidBatch, parse_header
from .checkpoint import fsync_path
from .records import rebuild_batch, record_views
from .segment import AppendedBatch, Segment, read_headers
from .swap import cleaning_directory

OFFSET_MAP_ENTRY_BYTES = 136
"""Memory one key of the offset map takes: a 16-byte MD5 digest and an offset in a
Python dict, measured (Kafka's packed map takes 24)."""
_READ_CHUNK = 1024 * 1024
_WRITE_CHUNK = 1024 * 1024


class StopSignal(Protocol):
    """A ``threading.Event`` or a ``multiprocessing`` one: set when the broker stops."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class SegmentFile:
    base_offset: int
    path: Path
    size: int
    """The size when the compaction was planned: bytes after it are not read."""


@dataclass(frozen=True)
class CompactionJob:
    """What one compaction needs, in a form another process can take."""

    directory: Path
    segments: tuple[SegmentFile, ...]
    """The sealed segments from the log start, in order."""
    first_dirty: int
    end: int
    """The offset after the last segment (the next segment's base offset)."""
    segment_bytes: int
    index_interval_bytes: int
    delete_retention_ms: int
    dedupe_buffer_size: int
    io_max_bytes_per_second: float
    now_ms: int

    def end_of(self, index: int) -> int:
        """The offset after segment ``index`` (where the next one starts)."""
        segments = self.segments
        return segments[index + 1].base_offset if index + 1 < len(segments) else self.end


@dataclass(frozen=True)
class CleanedGroup:
    """Segments ``indexes`` of the job, rewritten as one segment in ``directory``."""

    indexes: tuple[int, ...]
    directory: Path
    size: int


@dataclass(frozen=True)
class CompactionResult:
    map_end: int
    """Where the offset map ended: the next run's first dirty offset. At ``first_dirty``
    if the keys of the first dirty segment did not fit the map (nothing was written)."""
    keys: int
    groups: tuple[CleanedGroup, ...]
    bytes_read: int
    bytes_written: int
    tombstones_expire_ms: int | None
    """The earliest delete horizon of the tombstones kept (None: none kept): a run after
    it removes them."""


class CompactionStopped(Exception):
    """The broker is stopping: the compaction gave up at its next batch."""


class SegmentsChanged(Exception):
    """A segment file went away (retention, truncation, topic deletion) before it was
    read: the log changed under the compaction, which is not the log's fault."""


class UncleanableLog(Exception):
    """The log holds something the compaction cannot read (a corrupt batch, an I/O error)."""


class OffsetMap:
    """The latest offset of each key seen, keyed by the key's MD5 digest (as Kafka's
    SkimpyOffsetMap), holding at most ``memory_bytes`` worth of keys."""

    def __init__(self, memory_bytes: int) -> None:
        self.capacity = max(1, memory_bytes // OFFSET_MAP_ENTRY_BYTES)
        self._latest: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def put(self, key: bytes, offset: int) -> bool:
        """Record ``offset`` as the latest of ``key``; False (nothing recorded) if the key
        is new and the map is full."""
        digest = hashlib.md5(key, usedforsecurity=False).digest()
        if digest not in self._latest and len(self._latest) >= self.capacity:
            return False
        self._latest[digest] = offset
        return True

    def latest(self, key: bytes) -> int | None:
        return self._latest.get(hashlib.md5(key, usedforsecurity=False).digest())


def compact(job: CompactionJob, stopping: StopSignal) -> CompactionResult:
    """Run ``job``; raises CompactionStopped once ``stopping`` is set, SegmentsChanged
    or UncleanableLog (exceptions any process can pass on)."""
    try:
        files = [os.open(segment.path, os.O_RDONLY) for segment in job.segments]
    except FileNotFoundError as error:
        raise SegmentsChanged(str(error)) from None
    try:
        return _Compaction(job, files, stopping).run()
    except (InvalidBatch, OSError) as error:
        raise UncleanableLog(str(error)) from None
    finally:
        for fd in files:
            os.close(fd)


class _Compaction:
    def __init__(self, job: CompactionJob, files: list[int], stopping: StopSignal) -> None:
        self.job = job
        self.files = files
        self.stopping = stopping
        self.throttle = TokenBucket(job.io_max_bytes_per_second)
        self.bytes_read = 0
        self.bytes_written = 0
        self.tombstones_expire_ms: int | None = None

    def run(self) -> CompactionResult:
        job = self.job
        offset_map, map_end, last_batches = self._build_offset_map()
        groups: list[CleanedGroup] = []
        # No dirty section: the run is for tombstones whose horizon has passed.
        if map_end > job.first_dirty or job.first_dirty == job.end:
            cleaned = [i for i in range(len(job.segments)) if job.end_of(i) <= map_end]
            try:
                for indexes in _groups(job, cleaned):
                    groups.append(self._clean_group(indexes, offset_map, last_batches))
            except BaseException:
                for group in groups:
                    shutil.rmtree(group.directory, ignore_errors=True)
                raise
        return CompactionResult(
            map_end,
            len(offset_map),
            tuple(groups),
            self.bytes_read,
            self.bytes_written,
            self.tombstones_expire_ms,
        )

    def _build_offset_map(self) -> tuple[OffsetMap, int, dict[int, int]]:
        """The latest offset of each key from the first dirty offset on, as far as the map
        holds whole segments; the offset it ends at; and the base offset of each producer's
        last batch below that end."""
        job = self.job
        offset_map = OffsetMap(job.dedupe_buffer_size)
        last_batches: dict[int, int] = {}
        map_end = job.first_dirty
        for index, segment in enumerate(job.segments):
            if segment.base_offset < job.first_dirty:
                for _, header in read_headers(self.files[index], 0, segment.size):
                    if header.producer_id >= 0:
                        last_batches[header.producer_id] = header.base_offset
                continue
            for batch, header in self._batches(index):
                if header.producer_id >= 0:
                    last_batches[header.producer_id] = header.base_offset
                if header.is_control:
                    continue
                for record in record_views(batch, header):
                    if record.key is not None and not offset_map.put(record.key, record.offset):
                        return offset_map, map_end, last_batches
            map_end = job.end_of(index)
        return offset_map, map_end, last_batches

    def _clean_group(
        self, indexes: list[int], offset_map: OffsetMap, last_batches: dict[int, int]
    ) -> CleanedGroup:
        """Write the segment replacing ``indexes`` into a cleaning directory, synced."""
        job = self.job
        first = job.segments[indexes[0]]
        directory = cleaning_directory(job.directory, first.base_offset, job.end_of(indexes[-1]))
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        cleaned = Segment.create(
            directory,
            first.base_offset,
            index_interval_bytes=job.index_interval_bytes,
            now_ms=job.now_ms,
        )
        buffers: list[bytes | memoryview] = []
        appended: list[AppendedBatch] = []
        pending = 0
        next_offset = first.base_offset
        try:
            for index in indexes:
                for batch, header in self._batches(index):
                    kept, horizon = _filter_batch(
                        batch, header, offset_map, last_batches, job.now_ms, job.delete_retention_ms
                    )
                    if kept is None:
                        continue
                    if horizon is not None:
                        expiry = self.tombstones_expire_ms
                        self.tombstones_expire_ms = (
                            horizon if expiry is None else min(expiry, horizon)
                        )
                    kept_header = header if kept is batch else parse_header(kept)
                    buffers.append(kept)
                    appended.append(
                        AppendedBatch(header.base_offset, kept_header.max_timestamp, len(kept))
                    )
                    pending += len(kept)
                    next_offset = header.next_offset
                    if pending >= _WRITE_CHUNK:
                        self._write(cleaned, buffers, appended, next_offset)
                        pending = 0
            if buffers:
                self._write(cleaned, buffers, appended, next_offset)
            cleaned.flush()
            size = cleaned.size
        finally:
            cleaned.close()
        fsync_path(directory)
        return CleanedGroup(tuple(indexes), directory, size)

    def _tombstones_until(self, horizon_ms: int) -> None:
        expiry = self.tombstones_expire_ms
        self.tombstones_expire_ms = horizon_ms if expiry is None else min(expiry, horizon_ms)

    def _write(
        self,
        segment: Segment,
        buffers: list[bytes | memoryview],
        appended: list[AppendedBatch],
        next_offset: int,
    ) -> None:
        segment.append(buffers, appended, next_offset)
        size = sum(batch.size for batch in appended)
        self._use_io(size)
        self.bytes_written += size
        buffers.clear()
        appended.clear()

    def _batches(self, index: int) -> Iterator[tuple[memoryview, BatchHeader]]:
        """Each whole batch of segment ``index``, read in chunks through the throttle."""
        fd, size = self.files[index], self.job.segments[index].size
        position = 0
        while position < size:
            chunk = memoryview(os.pread(fd, min(_READ_CHUNK, size - position), position))
            self._use_io(len(chunk))
            self.bytes_read += len(chunk)
            cursor = 0
            while len(chunk) - cursor >= HEADER_SIZE:
                header = parse_header(chunk, cursor)
                if cursor + header.size > len(chunk):
                    if cursor == 0:  # one batch larger than a chunk
                        chunk = memoryview(os.pread(fd, header.size, position))
                        continue
                    break
                yield chunk[cursor : cursor + header.size], header
                cursor += header.size
            if cursor == 0:
                return
            position += cursor

    def _use_io(self, size: int) -> None:
        if self.stopping.is_set():
            raise CompactionStopped
        self.throttle.take(size)
        wait = self.throttle.seconds_until_available()
        if wait:
            self.stopping.wait(wait)


def _filter_batch(
    batch: memoryview,
    header: BatchHeader,
    offset_map: OffsetMap,
    last_batches: dict[int, int],
    now_ms: int,
    delete_retention_ms: int,
) -> tuple[memoryview | bytes | None, int | None]:
    """The batch itself if all of it stays as it is, a rebuilt batch of what stays, or
    None; and the delete horizon of the tombstones it keeps (None if it keeps none)."""
    if header.is_control:
        return batch, None
    horizon = header.delete_horizon_ms
    expired = horizon is not None and horizon <= now_ms
    records = record_views(batch, header)
    kept = [
        record
        for record in records
        if record.key is not None
        and _is_latest(offset_map.latest(record.key), record.offset)
        and not (record.is_tombstone and expired)
    ]
    new_horizon = None
    if any(record.is_tombstone for record in kept):
        if horizon is None:
            horizon = new_horizon = now_ms + delete_retention_ms
    else:
        horizon = None
    if len(kept) == len(records) and new_horizon is None:
        return batch, horizon
    if kept or (
        header.producer_id >= 0 and last_batches.get(header.producer_id) == header.base_offset
    ):
        return rebuild_batch(batch, header, kept, new_horizon), horizon
    return None, None


def _is_latest(latest: int | None, offset: int) -> bool:
    """A record is its key's latest if the dirty section has no later one."""
    return latest is None or latest <= offset


def _groups(job: CompactionJob, indexes: list[int]) -> Iterator[list[int]]:
    """Runs of consecutive segments whose sizes add up to at most ``segment.bytes`` (one
    segment at least) and whose offsets fit a segment's 32-bit relative offsets."""
    group: list[int] = []
    size = 0
    for index in indexes:
        if group and (
            size + job.segments[index].size > job.segment_bytes
            or job.end_of(index) - job.segments[group[0]].base_offset > 2**31 - 1
        ):
            yield group
            group, size = [], 0
        group.append(index)
        size += job.segments[index].size
    if group:
        yield group
