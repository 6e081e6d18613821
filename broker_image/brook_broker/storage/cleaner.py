"""The log cleaner: compaction of ``cleanup.policy=compact`` logs, as Kafka's LogCleaner.

A log's *clean* section runs from its start to its first dirty offset (where the last
cleaning ended, kept in ``cleaner-offset-checkpoint`` in the partition directory); the
*dirty* section runs from there to the first offset that may not be cleaned yet: the
active segment, a segment not wholly below the high watermark, or one younger than
``min.compaction.lag.ms``. The cleaner picks the log with the largest dirty share of
bytes (``min.cleanable.dirty.ratio``, or any dirt once ``max.compaction.lag.ms`` has
passed), maps each key of the dirty section to its latest offset, and rewrites the
sealed segments of both sections, merged into groups of at most ``segment.bytes``,
keeping:

- a record whose key has no later offset in the map (the latest value of its key);
- a tombstone (null value) until its batch is older than ``delete.retention.ms``;
- the last batch of each idempotent producer, emptied of records if none is kept, so
  that its last sequence number survives (the batch keeps its offset range).

Offsets never change: a compacted log has gaps. The reading, filtering and writing run
in a worker thread on file descriptors of their own, throttled by
``log.cleaner.io.max.bytes.per.second``; only the swap of each group (a few renames, see
``storage.swap``) runs on the event loop, and is refused if the segments changed while
they were cleaned. The map of keys holds at most ``log.cleaner.dedupe.buffer.size``
bytes; a larger dirty section is cleaned over several runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..throttle import TokenBucket
from .batch import HEADER_SIZE, BatchHeader, InvalidBatch, parse_header
from .checkpoint import fsync_path, write_atomically
from .log import PartitionLog, wall_clock_ms
from .records import rebuild_batch, record_views
from .segment import AppendedBatch, Segment, read_headers
from .swap import cleaning_directory

logger = logging.getLogger(__name__)
_Result = TypeVar("_Result")

CLEANER_CHECKPOINT_FILE = "cleaner-offset-checkpoint"
OFFSET_MAP_ENTRY_BYTES = 136
"""Memory one key of the offset map takes: a 16-byte MD5 digest and an offset in a
Python dict, measured (Kafka's packed map takes 24)."""
_READ_CHUNK = 1024 * 1024
_WRITE_CHUNK = 1024 * 1024


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


@dataclass
class CleanerStats:
    """What ``/metrics`` shows about the cleaner (``brook_log_cleaner_*``)."""

    runs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    last_run_end_ms: int = -1
    dirty_ratios: dict[tuple[str, int], float] = field(default_factory=dict)
    uncleanable: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class CleaningPlan:
    """A log's sealed segments from its start to ``end`` (the first offset that may not
    be cleaned), with their sizes as planned, and where its dirty section starts."""

    log: PartitionLog
    segments: list[Segment]
    sizes: list[int]
    first_dirty: int
    end: int
    dirty_ratio: float
    overdue: bool
    """``max.compaction.lag.ms`` has passed for the oldest dirty segment."""

    @property
    def dirty_segments(self) -> list[Segment]:
        return [segment for segment in self.segments if segment.base_offset >= self.first_dirty]

    def end_of(self, index: int) -> int:
        """The offset after segment ``index`` (where the next one starts)."""
        return self.segments[index + 1].base_offset if index + 1 < len(self.segments) else self.end


def plan_cleaning(log: PartitionLog, first_dirty: int, now_ms: int) -> CleaningPlan | None:
    """The cleanable part of a compacted log, or None if it has no sealed segment."""
    config = log.config
    sealed = log.sealed_segments()
    if not config.compact or not sealed:
        return None
    ends = [segment.base_offset for segment in sealed[1:]] + [log.active_segment_base_offset]
    cleanable = 0
    for segment, end in zip(sealed, ends, strict=True):
        too_young = now_ms - segment.largest_timestamp < config.min_compaction_lag_ms
        if end > log.high_watermark or (segment.size and too_young):
            break
        cleanable += 1
    if not cleanable:
        return None
    segments = sealed[:cleanable]
    end = ends[cleanable - 1]
    if first_dirty > log.log_end_offset:  # the log was cut back or restarted since
        first_dirty = 0
    first_dirty = min(max(first_dirty, segments[0].base_offset), end)
    sizes = [segment.size for segment in segments]
    dirty = [s for s in segments if s.base_offset >= first_dirty]
    dirty_bytes = sum(segment.size for segment in dirty)
    total = sum(sizes)
    return CleaningPlan(
        log,
        segments,
        sizes,
        first_dirty,
        end,
        dirty_bytes / total if total else 0.0,
        bool(dirty) and now_ms - dirty[0].largest_timestamp > config.max_compaction_lag_ms,
    )


class _Stopped(Exception):
    """The cleaner is stopping: the run in the worker thread gives up."""


class LogCleaner:
    """Cleans the compacted logs of ``logs`` one at a time, dirtiest first.

    ``logs`` gives the broker's open logs each time it is called. Cleaning a log writes
    nothing another replica needs to know: leaders and followers compact their own
    copies on their own schedules.
    """

    def __init__(
        self,
        logs: Callable[[], Iterable[PartitionLog]],
        *,
        dedupe_buffer_size: int,
        io_max_bytes_per_second: float,
        backoff_ms: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._logs = logs
        self._dedupe_buffer_size = dedupe_buffer_size
        self._throttle = TokenBucket(io_max_bytes_per_second)
        self._throttle_lock = threading.Lock()
        self._backoff_ms = backoff_ms
        self._clock_ms = clock_ms
        self._stopping = threading.Event()
        self.stats = CleanerStats()

    async def run(self) -> None:
        """Forever: clean the dirtiest log, or sleep ``log.cleaner.backoff.ms`` when none
        needs it. On cancellation a run in the worker thread stops at its next batch."""
        try:
            while True:
                try:
                    cleaned = await self.clean_dirtiest()
                except Exception:
                    logger.warning("log cleaning failed", exc_info=True)
                    cleaned = False
                if not cleaned:
                    await asyncio.sleep(self._backoff_ms / 1000)
        finally:
            self._stopping.set()

    async def clean_dirtiest(self) -> bool:
        """Clean the log most in need of it, if any; returns whether one was cleaned."""
        now_ms = self._clock_ms()
        plans: list[CleaningPlan] = []
        ratios: dict[tuple[str, int], float] = {}
        for log in self._logs():
            if (log.topic, log.partition) in self.stats.uncleanable:
                continue
            plan = plan_cleaning(log, read_first_dirty_offset(log.directory), now_ms)
            if plan is None:
                continue
            ratios[(log.topic, log.partition)] = plan.dirty_ratio
            if plan.first_dirty < plan.end and (
                plan.overdue or plan.dirty_ratio >= log.config.min_cleanable_dirty_ratio
            ):
                plans.append(plan)
        self.stats.dirty_ratios = ratios
        if not plans:
            return False
        plan = max(plans, key=lambda plan: (plan.overdue, plan.dirty_ratio))
        try:
            await self.clean(plan, now_ms)
        except (InvalidBatch, OSError) as error:
            # As Kafka: a log the cleaner fails on is left alone until the broker restarts.
            self.stats.uncleanable.add((plan.log.topic, plan.log.partition))
            logger.error(
                "%s-%d cannot be cleaned and is skipped until restart: %s",
                plan.log.topic,
                plan.log.partition,
                error,
            )
        return True

    async def clean(self, plan: CleaningPlan, now_ms: int) -> None:
        """One cleaning run of ``plan``'s log: map its dirty section, then rewrite and swap
        its segments group by group."""
        log = plan.log
        name = (log.topic, log.partition)
        files = [os.open(segment.log_path, os.O_RDONLY) for segment in plan.segments]
        try:
            offset_map, map_end, last_batches = await self._in_thread(
                self._build_offset_map, plan, files
            )
            if map_end <= plan.first_dirty:
                self.stats.uncleanable.add(name)
                logger.error(
                    "%s-%d cannot be cleaned: the keys of its first dirty segment do not fit "
                    "log.cleaner.dedupe.buffer.size (%d bytes)",
                    log.topic,
                    log.partition,
                    self._dedupe_buffer_size,
                )
                return
            self.stats.uncleanable.discard(name)
            read_before = self.stats.bytes_read
            written = 0
            cleaned_segments = [
                i for i, segment in enumerate(plan.segments) if plan.end_of(i) <= map_end
            ]
            for group in _groups(plan, cleaned_segments):
                cleaning, size = await self._in_thread(
                    self._clean_group, plan, group, files, offset_map, last_batches, now_ms
                )
                old = [plan.segments[i] for i in group]
                if not log.replace_segments(old, [plan.sizes[i] for i in group], cleaning):
                    logger.info("%s-%d changed while it was cleaned; the run stops", *name)
                    return
                written += size
            write_first_dirty_offset(log.directory, map_end)
            self.stats.runs += 1
            self.stats.last_run_end_ms = self._clock_ms()
            logger.info(
                "%s-%d: cleaned offsets %d to %d: %d bytes read, %d bytes kept, %d keys",
                log.topic,
                log.partition,
                plan.segments[0].base_offset,
                map_end,
                self.stats.bytes_read - read_before,
                written,
                len(offset_map),
            )
        finally:
            for fd in files:
                os.close(fd)

    async def _in_thread(self, function: Callable[..., _Result], *args: object) -> _Result:
        """``function(*args)`` in a worker thread. If the caller is cancelled, the thread
        is told to stop and waited for, so that the segment files it reads stay open
        until it is done with them."""
        future = asyncio.get_running_loop().run_in_executor(None, function, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._stopping.set()
            with contextlib.suppress(Exception):
                await future
            raise

    # In the worker thread

    def _build_offset_map(
        self, plan: CleaningPlan, files: list[int]
    ) -> tuple[OffsetMap, int, dict[int, int]]:
        """The latest offset of each key from the first dirty offset on, as far as the map
        holds whole segments; the offset it ends at; and the base offset of each producer's
        last batch below that end."""
        offset_map = OffsetMap(self._dedupe_buffer_size)
        last_batches: dict[int, int] = {}
        map_end = plan.first_dirty
        for index, segment in enumerate(plan.segments):
            if segment.base_offset < plan.first_dirty:
                for _, header in read_headers(files[index], 0, plan.sizes[index]):
                    if header.producer_id >= 0:
                        last_batches[header.producer_id] = header.base_offset
                continue
            for batch, header in self._batches(files[index], plan.sizes[index]):
                if header.producer_id >= 0:
                    last_batches[header.producer_id] = header.base_offset
                if header.is_control:
                    continue
                for record in record_views(batch, header):
                    if record.key is not None and not offset_map.put(record.key, record.offset):
                        return offset_map, map_end, last_batches
            map_end = plan.end_of(index)
        return offset_map, map_end, last_batches

    def _clean_group(
        self,
        plan: CleaningPlan,
        group: list[int],
        files: list[int],
        offset_map: OffsetMap,
        last_batches: dict[int, int],
        now_ms: int,
    ) -> tuple[Path, int]:
        """Write the segment replacing ``group`` (indexes of ``plan.segments``) into a
        cleaning directory, synced; returns it and the bytes kept."""
        log = plan.log
        first = plan.segments[group[0]]
        cleaning = cleaning_directory(log.directory, first.base_offset, plan.end_of(group[-1]))
        shutil.rmtree(cleaning, ignore_errors=True)
        cleaning.mkdir()
        cleaned = Segment.create(
            cleaning,
            first.base_offset,
            index_interval_bytes=log.config.index_interval_bytes,
            now_ms=now_ms,
        )
        delete_horizon_ms = now_ms - log.config.delete_retention_ms
        buffers: list[bytes | memoryview] = []
        appended: list[AppendedBatch] = []
        pending = 0
        next_offset = first.base_offset
        try:
            for index in group:
                for batch, header in self._batches(files[index], plan.sizes[index]):
                    kept = _filter_batch(batch, header, offset_map, last_batches, delete_horizon_ms)
                    if kept is None:
                        continue
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
        fsync_path(cleaning)
        return cleaning, size

    def _write(
        self,
        segment: Segment,
        buffers: list[bytes | memoryview],
        appended: list[AppendedBatch],
        next_offset: int,
    ) -> None:
        segment.append(buffers, appended, next_offset)
        self._use_io(sum(batch.size for batch in appended))
        self.stats.bytes_written += sum(batch.size for batch in appended)
        buffers.clear()
        appended.clear()

    def _batches(self, fd: int, size: int) -> Iterator[tuple[memoryview, BatchHeader]]:
        """Each whole batch of a segment file, read in chunks through the throttle."""
        position = 0
        while position < size:
            chunk = memoryview(os.pread(fd, min(_READ_CHUNK, size - position), position))
            self._use_io(len(chunk))
            self.stats.bytes_read += len(chunk)
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
        if self._stopping.is_set():
            raise _Stopped
        with self._throttle_lock:
            self._throttle.take(size)
            wait = self._throttle.seconds_until_available()
        if wait:
            self._stopping.wait(wait)


def _filter_batch(
    batch: memoryview,
    header: BatchHeader,
    offset_map: OffsetMap,
    last_batches: dict[int, int],
    delete_horizon_ms: int,
) -> memoryview | bytes | None:
    """The batch itself if all of it stays, a rebuilt batch of what stays, or None."""
    if header.is_control:
        return batch
    records = record_views(batch, header)
    kept = [
        record
        for record in records
        if record.key is not None
        and _is_latest(offset_map.latest(record.key), record.offset)
        and not (record.is_tombstone and header.max_timestamp < delete_horizon_ms)
    ]
    if len(kept) == len(records):
        return batch
    if kept or (
        header.producer_id >= 0 and last_batches.get(header.producer_id) == header.base_offset
    ):
        return rebuild_batch(batch, header, kept)
    return None


def _is_latest(latest: int | None, offset: int) -> bool:
    """A record is its key's latest if the dirty section has no later one."""
    return latest is None or latest <= offset


def _groups(plan: CleaningPlan, indexes: list[int]) -> Iterator[list[int]]:
    """Runs of consecutive segments whose sizes add up to at most ``segment.bytes`` (one
    segment at least) and whose offsets fit a segment's 32-bit relative offsets."""
    limit = plan.log.config.segment_bytes
    group: list[int] = []
    size = 0
    for index in indexes:
        if group and (
            size + plan.sizes[index] > limit
            or plan.end_of(index) - plan.segments[group[0]].base_offset > 2**31 - 1
        ):
            yield group
            group, size = [], 0
        group.append(index)
        size += plan.sizes[index]
    if group:
        yield group


def read_first_dirty_offset(directory: Path) -> int:
    """Where the last cleaning of the log in ``directory`` ended (0 if never cleaned)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int((directory / CLEANER_CHECKPOINT_FILE).read_text().strip())
    return 0


def write_first_dirty_offset(directory: Path, offset: int) -> None:
    write_atomically(directory / CLEANER_CHECKPOINT_FILE, f"{offset}\n")
