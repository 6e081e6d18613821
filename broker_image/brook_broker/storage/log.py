"""A partition's log: its segments in offset order, as Kafka's log layer keeps them.

Only the last (active) segment takes appends. It is rolled when full (``segment.bytes``)
or old (``segment.ms``); retention deletes whole segments from the oldest end, which is
what moves the log start offset. DeleteRecords (and a follower following its leader)
moves it too, also to inside a segment: then it is kept in a checkpoint file of the
partition directory, and the segments wholly below it are deleted. On open the active
segment is checked batch by batch (CRC included) and a torn or corrupt tail is cut, so
the log end offset is the end of the last whole, valid batch; data written before a
crash or ``kill -9`` is in the page cache and survives.

A PartitionLog is not thread-safe: the broker calls it from its event loop only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .batch import (
    BatchHeader,
    InvalidBatch,
    crc_matches,
    iter_headers,
    set_base_offset,
    set_leader_epoch,
    set_log_append_time,
)
from .checkpoint import fsync_path, write_atomically
from .leader_epochs import LeaderEpochCache
from .segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, AppendedBatch, Buffer, Segment
from .swap import finish_interrupted_swaps, install

logger = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
_STAMPED = 16
"""Bytes of a batch the leader rewrites: base offset, batch length, partition leader epoch."""
_MAX_RELATIVE = 2**31 - 1
"""Relative offsets and positions in a segment stay within a signed 32-bit int, as in Kafka."""
_SEGMENT_NAME = re.compile(r"^(\d{20})(\.log|\.index|\.timeindex)$")
LOG_START_OFFSET_FILE = "log-start-offset-checkpoint"
"""The log start offset, where it lies above the first segment's base offset."""
_LOG_START_OFFSET_VERSION = 0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


CLEANUP_POLICIES = ("compact", "delete")


def normalize_cleanup_policy(text: str) -> str:
    """``cleanup.policy`` as stored and shown: its policies, each once, comma-separated in
    a fixed order; raises ValueError naming what is wrong."""
    policies = {item.strip() for item in text.split(",") if item.strip()}
    unknown = policies - set(CLEANUP_POLICIES)
    if unknown or not policies:
        raise ValueError(f"Every policy must be one of: {', '.join(CLEANUP_POLICIES)}")
    return ",".join(policy for policy in CLEANUP_POLICIES if policy in policies)


@dataclass(frozen=True)
class LogConfig:
    """The topic configs the log obeys, under Kafka's names with dots as underscores."""

    segment_bytes: int = 1024 * 1024 * 1024
    segment_ms: int = 7 * DAY_MS
    retention_ms: int = 7 * DAY_MS  # -1: keep forever
    retention_bytes: int = -1  # per partition; -1: no limit
    index_interval_bytes: int = 4096
    flush_messages: int = -1  # -1: never fsync by count
    flush_ms: int = -1  # -1: never fsync by time
    cleanup_policy: str = "delete"  # "delete", "compact" or "compact,delete"
    min_cleanable_dirty_ratio: float = 0.5
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int = 2**63 - 1
    delete_retention_ms: int = DAY_MS  # how long tombstones stay once cleaned

    @property
    def compact(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def delete(self) -> bool:
        """Retention by time and size applies (a compact-only topic keeps every key)."""
        return "delete" in self.cleanup_policy


class OffsetOutOfRange(Exception):
    """A fetch below the log start offset or beyond the log end offset."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


@dataclass(frozen=True, slots=True)
class AppendInfo:
    base_offset: int
    last_offset: int
    record_count: int
    log_append_time_ms: int  # -1 unless log_append_time was used


class PartitionLog:
    """The segments of one partition, from ``log_start_offset`` to ``log_end_offset``.

    ``high_watermark`` is a plain attribute that the replication layer moves: appends
    never do, because what is committed depends on the other replicas. It starts at the
    log end offset on open and follows the log down when it is cut.
    ``leader_epochs`` is the partition's leader-epoch checkpoint, kept in step with
    appends, truncation and retention.
    """

    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        config: LogConfig,
        segments: list[Segment],
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.config = config
        self._segments = segments
        self._bases = [segment.base_offset for segment in segments]
        self._log_start_offset = _read_log_start_offset(directory)
        self.high_watermark = self.log_end_offset
        self.leader_epochs = LeaderEpochCache(directory)
        self.leader_epochs.truncate_from_end(self.log_end_offset)
        self.leader_epochs.truncate_from_start(self.log_start_offset)
        self.last_flush_ms = wall_clock_ms()
        self._unflushed_records = 0
        self._directory_dirty = True  # new segment files may not be durable in it yet
        self._closed = False

    @classmethod
    def open(cls, directory: Path, topic: str, partition: int, config: LogConfig) -> PartitionLog:
        """Open (or create) the log in ``directory``, recovering its active segment and
        finishing or discarding a swap of cleaned segments that a crash interrupted."""
        directory.mkdir(parents=True, exist_ok=True)
        finish_interrupted_swaps(directory)
        now_ms = wall_clock_ms()
        bases = _segment_base_offsets(directory)
        segments: list[Segment] = []
        try:
            for base_offset in bases:
                is_last = base_offset == bases[-1]
                segment = Segment.open(
                    directory,
                    base_offset,
                    index_interval_bytes=config.index_interval_bytes,
                    now_ms=now_ms,
                    recover=is_last,
                )
                segments.append(segment)
                if not is_last:
                    segment.seal()
            if not segments:
                segments.append(
                    Segment.create(
                        directory,
                        0,
                        index_interval_bytes=config.index_interval_bytes,
                        now_ms=now_ms,
                    )
                )
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        log = cls(directory, topic, partition, config, segments)
        logger.debug(
            "%s-%d: opened %d segments, offsets %d to %d",
            topic,
            partition,
            len(segments),
            log.log_start_offset,
            log.log_end_offset,
        )
        return log

    @property
    def log_start_offset(self) -> int:
        """The first offset readers may fetch: the first segment's base offset, or above it
        once records were deleted before an offset inside it; never past the log end (a
        cut tail may end below it, until the log grows again)."""
        return min(max(self._log_start_offset, self._segments[0].base_offset), self.log_end_offset)

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def active_segment_base_offset(self) -> int:
        """Base offset of the segment that takes appends (it changes when the log rolls)."""
        return self._segments[-1].base_offset

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    # Writing

    def append(
        self,
        records: bytes | memoryview,
        batches: Sequence[BatchHeader],
        *,
        now_ms: int,
        leader_epoch: int,
        log_append_time: bool = False,
    ) -> AppendInfo:
        """Append validated batches (``batches`` are their headers, in order) at the log end,
        as the leader in ``leader_epoch``.

        Offsets are assigned from the log end offset by writing each batch's base offset,
        and the leader epoch is stamped next to it (neither is covered by the CRC); the
        rest of each batch is written from ``records`` itself, without a copy, except
        under LogAppendTime, where a copy of each batch is stamped with ``now_ms``.
        """
        if not batches:
            raise ValueError("append needs at least one batch")
        view = memoryview(records)
        base_offset = next_offset = self.log_end_offset
        buffers: list[Buffer] = []
        appended: list[AppendedBatch] = []
        record_count = 0
        position = 0
        for header in batches:
            size = header.size
            if log_append_time:
                batch = bytearray(view[position : position + size])
                set_log_append_time(batch, 0, header, now_ms)
                set_base_offset(batch, 0, next_offset)
                set_leader_epoch(batch, 0, leader_epoch)
                buffers.append(batch)
                max_timestamp = now_ms
            else:
                prefix = bytearray(view[position : position + _STAMPED])
                set_base_offset(prefix, 0, next_offset)
                set_leader_epoch(prefix, 0, leader_epoch)
                buffers.append(prefix)
                buffers.append(view[position + _STAMPED : position + size])
                max_timestamp = header.max_timestamp
            appended.append(AppendedBatch(next_offset, max_timestamp, size))
            next_offset += header.last_offset_delta + 1
            record_count += header.records_count
            position += size
        if position != len(view):
            raise ValueError(f"batch headers cover {position} bytes of {len(view)}")
        self._write(buffers, appended, next_offset, record_count, now_ms)
        if leader_epoch > self.leader_epochs.latest_epoch:
            self.leader_epochs.assign(leader_epoch, base_offset)
        return AppendInfo(
            base_offset, next_offset - 1, record_count, now_ms if log_append_time else -1
        )

    def append_as_follower(self, records: bytes | memoryview, *, now_ms: int) -> AppendInfo:
        """Append batches fetched from the leader exactly as they are, offsets included.

        Every whole batch is checked (header and CRC); a cut batch at the end, as a fetch
        may return, is left out. The first batch must start at or after the log end offset:
        the leader's log may be compacted, so offsets may skip. Leader epochs met for the
        first time are recorded in the checkpoint.
        """
        view = memoryview(records)
        appended: list[AppendedBatch] = []
        new_epochs: list[tuple[int, int]] = []
        latest_epoch = self.leader_epochs.latest_epoch
        next_offset = self.log_end_offset
        record_count = 0
        end = 0
        for position, header in iter_headers(view):
            if header.base_offset < next_offset:
                raise InvalidBatch(
                    f"{self.topic}-{self.partition}: fetched batch at offset "
                    f"{header.base_offset} does not follow offset {next_offset}"
                )
            if not crc_matches(view, header, position):
                raise InvalidBatch(
                    f"{self.topic}-{self.partition}: fetched batch at offset "
                    f"{header.base_offset} fails its CRC check"
                )
            if header.partition_leader_epoch > latest_epoch:
                latest_epoch = header.partition_leader_epoch
                new_epochs.append((latest_epoch, header.base_offset))
            appended.append(AppendedBatch(header.base_offset, header.max_timestamp, header.size))
            next_offset = header.next_offset
            record_count += header.records_count
            end = position + header.size
        if not appended:
            return AppendInfo(next_offset, next_offset - 1, 0, -1)
        self._write([view[:end]], appended, next_offset, record_count, now_ms)
        for epoch, start_offset in new_epochs:
            self.leader_epochs.assign(epoch, start_offset)
        return AppendInfo(appended[0].base_offset, next_offset - 1, record_count, -1)

    def _write(
        self,
        buffers: list[Buffer],
        batches: list[AppendedBatch],
        next_offset: int,
        record_count: int,
        now_ms: int,
    ) -> None:
        size = sum(batch.size for batch in batches)
        segment = self._segment_for(size, next_offset - 1, now_ms)
        segment.append(buffers, batches, next_offset)
        self._unflushed_records += record_count
        if 0 < self.config.flush_messages <= self._unflushed_records:
            self.flush()

    def _segment_for(self, size: int, last_offset: int, now_ms: int) -> Segment:
        """The active segment, rolled first if ``size`` more bytes up to ``last_offset``
        would overfill it or it is older than segment.ms."""
        active = self._segments[-1]
        if active.size and (
            active.size + size > min(self.config.segment_bytes, _MAX_RELATIVE)
            or last_offset - active.base_offset > _MAX_RELATIVE
            or now_ms - active.created_ms >= self.config.segment_ms
        ):
            active = self._roll(now_ms)
        return active

    def _roll(self, now_ms: int) -> Segment:
        segment = Segment.create(
            self.directory,
            self.log_end_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            now_ms=now_ms,
        )
        self._segments[-1].seal()
        self._segments.append(segment)
        self._bases.append(segment.base_offset)
        self._directory_dirty = True
        logger.debug(
            "%s-%d: rolled a new segment at offset %d",
            self.topic,
            self.partition,
            segment.base_offset,
        )
        return segment

    def truncate_to(self, offset: int) -> None:
        """Drop every batch at and above ``offset`` (a follower cutting a divergent tail).

        A batch holding ``offset`` goes whole, so the log end offset may end up below
        ``offset``. The leader epochs and the high watermark follow the log down.
        """
        if offset >= self.log_end_offset:
            return
        if offset <= self.log_start_offset:
            self.restart_at(offset)
            return
        keep = bisect_right(self._bases, offset - 1)
        doomed = self._segments[keep:]
        del self._segments[keep:]
        del self._bases[keep:]
        for segment in doomed:
            segment.delete()
        self._segments[-1].truncate_to(offset)
        self._directory_dirty = True
        self._after_truncation()
        logger.info(
            "%s-%d: truncated to offset %d", self.topic, self.partition, self.log_end_offset
        )

    def restart_at(self, offset: int) -> None:
        """Drop everything and continue at ``offset``: for a follower whose log is wholly
        behind the leader's log start offset."""
        for segment in self._segments:
            segment.delete()
        self._segments = [
            Segment.create(
                self.directory,
                offset,
                index_interval_bytes=self.config.index_interval_bytes,
                now_ms=wall_clock_ms(),
            )
        ]
        self._bases = [offset]
        self._directory_dirty = True
        self.leader_epochs.clear()
        self.high_watermark = offset
        if self._log_start_offset != offset:
            self._checkpoint_log_start_offset(offset)
        logger.info("%s-%d: restarted the log at offset %d", self.topic, self.partition, offset)

    def increment_log_start_offset(self, offset: int, reason: str) -> bool:
        """Move the log start offset up to ``offset`` (Kafka's
        ``maybeIncrementLogStartOffset``): records below it are no longer read, and the
        segments wholly below it are deleted. Returns whether it moved.

        Raises OffsetOutOfRange above the high watermark: what is not committed yet may
        still be cut. The new start is checkpointed before any segment goes, so a crash
        in between leaves segments no reader sees rather than deleted records back."""
        if offset > self.high_watermark:
            raise OffsetOutOfRange(offset, self.log_start_offset, self.high_watermark)
        if offset <= self.log_start_offset:
            return False
        self._checkpoint_log_start_offset(offset)
        self._delete_oldest(
            lambda segment, end_offset: end_offset <= offset, wall_clock_ms(), reason
        )
        self.leader_epochs.truncate_from_start(self.log_start_offset)
        logger.info(
            "%s-%d: log start offset is now %d (%s)",
            self.topic,
            self.partition,
            self.log_start_offset,
            reason,
        )
        return True

    def _checkpoint_log_start_offset(self, offset: int) -> None:
        write_atomically(
            self.directory / LOG_START_OFFSET_FILE, f"{_LOG_START_OFFSET_VERSION}\n{offset}\n"
        )
        self._log_start_offset = offset

    def _after_truncation(self) -> None:
        self.leader_epochs.truncate_from_end(self.log_end_offset)
        self.high_watermark = min(self.high_watermark, self.log_end_offset)

    def roll_if_due(self, now_ms: int) -> None:
        """Roll a non-empty active segment older than segment.ms, though nothing is appended."""
        active = self._segments[-1]
        if active.size and now_ms - active.created_ms >= self.config.segment_ms:
            self._roll(now_ms)

    # Compaction

    def sealed_segments(self) -> list[Segment]:
        """The segments that take no more appends (all but the active one), oldest first:
        the cleaner rewrites only these."""
        return self._segments[:-1]

    def replace_segments(
        self, old: Sequence[Segment], sizes: Sequence[int], cleaning: Path
    ) -> bool:
        """Put the segment the cleaner wrote into ``cleaning`` in place of ``old``, a run
        of sealed segments that had ``sizes`` when the cleaner read them, crash-safely (see
        ``storage.swap``). Refused, and ``cleaning`` removed, if those segments changed
        meanwhile (retention or truncation got there first)."""
        first = next((i for i, segment in enumerate(self._segments) if segment is old[0]), -1)
        last = first + len(old)
        if (
            self._closed
            or first < 0
            or last >= len(self._segments)
            or any(a is not b for a, b in zip(self._segments[first:last], old, strict=True))
            or any(segment.size != size for segment, size in zip(old, sizes, strict=True))
        ):
            shutil.rmtree(cleaning, ignore_errors=True)
            return False
        for segment in old:
            segment.close()
        install(cleaning)
        replacement = Segment.open(
            self.directory,
            old[0].base_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            now_ms=wall_clock_ms(),
            recover=False,
        )
        replacement.seal()
        self._segments[first:last] = [replacement]
        self._bases[first:last] = [replacement.base_offset]
        return True

    # Reading

    def read(self, offset: int, max_bytes: int, *, upper_offset: int | None = None) -> bytes:
        """Whole batches from the one holding ``offset``, below ``upper_offset`` (default: the
        high watermark), within ``max_bytes`` except that the first batch is always whole."""
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRange(offset, self.log_start_offset, self.log_end_offset)
        upper = self.high_watermark if upper_offset is None else upper_offset
        if offset >= upper:
            return b""
        # A segment may end before the next one starts (a cut tail): read on from the next.
        for index in range(bisect_right(self._bases, offset) - 1, len(self._segments)):
            data = self._segments[index].read(offset, max_bytes, upper)
            if data is not None:
                return data
        return b""

    def batch_headers(
        self, start_offset: int = 0, end_offset: int | None = None
    ) -> Iterator[BatchHeader]:
        """Headers of the batches from the one holding ``start_offset`` (or the first after
        it) to the last that starts before ``end_offset`` (default: the log end), without
        reading their records: for state kept per batch (idempotent producers) to be
        rebuilt from the log. An unreadable header ends what is read of its segment, with
        a warning."""
        end = self.log_end_offset if end_offset is None else end_offset
        first = max(bisect_right(self._bases, start_offset) - 1, 0)
        for segment in self._segments[first:]:
            if segment.base_offset >= end:
                return
            try:
                for _, header in segment.headers(segment.index.lookup(start_offset)):
                    if header.base_offset >= end:
                        return
                    if header.last_offset >= start_offset:
                        yield header
            except InvalidBatch as error:
                logger.warning(
                    "%s-%d: segment %d has an unreadable batch header: %s",
                    self.topic,
                    self.partition,
                    segment.base_offset,
                    error,
                )

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first record from the log start offset on (as
        DeleteRecords left it) with a timestamp >= ``timestamp_ms``."""
        start = self.log_start_offset
        for segment in self._segments:
            if segment.next_offset <= start:
                continue
            found = segment.offset_for_timestamp(timestamp_ms, start)
            if found is not None:
                return found
        return None

    # Retention

    def enforce_retention(self, now_ms: int) -> int:
        """Delete the oldest segments beyond retention.ms and retention.bytes; returns how many.
        A compact-only log keeps every segment: the cleaner bounds it."""
        deleted = 0
        if not self.config.delete:
            return 0
        retention_ms = self.config.retention_ms
        if retention_ms >= 0:
            deleted += self._delete_oldest(
                lambda segment, _: now_ms - segment.largest_timestamp > retention_ms,
                now_ms,
                "retention.ms",
            )
        if self.config.retention_bytes >= 0:
            excess = self.size_bytes - self.config.retention_bytes

            def beyond_size(segment: Segment, _: int) -> bool:
                nonlocal excess
                if excess - segment.size < 0:
                    return False
                excess -= segment.size
                return True

            deleted += self._delete_oldest(beyond_size, now_ms, "retention.bytes")
        return deleted

    def _delete_oldest(
        self, expired: Callable[[Segment, int], bool], now_ms: int, reason: str
    ) -> int:
        """Delete the longest run of oldest segments that are ``expired`` (given each one and
        its end offset) and wholly below the high watermark. An expired, non-empty active
        segment is rolled first so that it can go too (as in Kafka); the empty active segment
        always stays."""
        count = 0
        for index, segment in enumerate(self._segments):
            is_last = index == len(self._segments) - 1
            end_offset = self.log_end_offset if is_last else self._bases[index + 1]
            if (
                self.high_watermark < end_offset
                or (is_last and not segment.size)
                or not expired(segment, end_offset)
            ):
                break
            count += 1
        if not count:
            return 0
        if count == len(self._segments):
            self._roll(now_ms)
        doomed = self._segments[:count]
        del self._segments[:count]
        del self._bases[:count]
        self._directory_dirty = True
        for segment in doomed:
            segment.delete()
        self.leader_epochs.truncate_from_start(self.log_start_offset)
        logger.info(
            "%s-%d: deleted %d segments beyond %s; log start offset is now %d",
            self.topic,
            self.partition,
            count,
            reason,
            self.log_start_offset,
        )
        return count

    # Durability and lifecycle

    def flush(self) -> None:
        """fsync whatever changed since the last flush (flush.messages, flush.ms, close)."""
        for segment in self._segments:
            segment.flush()
        if self._directory_dirty:
            fsync_path(self.directory)
            self._directory_dirty = False
        self._unflushed_records = 0
        self.last_flush_ms = wall_clock_ms()

    def update_config(self, config: LogConfig) -> None:
        """Apply new topic configs; sizes and ages count from the next append or check."""
        self.config = config
        self._segments[-1].index_interval_bytes = config.index_interval_bytes

    def close(self) -> None:
        """Flush and close the files; the log must not be used afterwards."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            for segment in self._segments:
                segment.close()
            self._closed = True

    def delete(self) -> None:
        """Close the log and remove its directory."""
        if not self._closed:
            for segment in self._segments:
                segment.close()
            self._closed = True
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
        logger.info("%s-%d: deleted the log", self.topic, self.partition)


def _read_log_start_offset(directory: Path) -> int:
    """The checkpointed log start offset; 0 (the first segment's base offset rules) if
    the file is missing or unreadable."""
    path = directory / LOG_START_OFFSET_FILE
    try:
        version, offset = path.read_text().split()
        if int(version) != _LOG_START_OFFSET_VERSION:
            raise ValueError(f"version {version}")
        return int(offset)
    except FileNotFoundError:
        return 0
    except ValueError as error:
        logger.warning("%s cannot be read (%s): ignoring it", path, error)
        return 0


def _segment_base_offsets(directory: Path) -> list[int]:
    """Base offsets of the segments in ``directory``, ascending; index files without a log
    file (left by a crash while a segment was deleted) are removed."""
    bases: set[int] = set()
    indexes: list[tuple[int, Path]] = []
    for path in directory.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match is None:
            continue
        base_offset = int(match.group(1))
        if match.group(2) == LOG_SUFFIX:
            bases.add(base_offset)
        elif match.group(2) in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            indexes.append((base_offset, path))
    for base_offset, path in indexes:
        if base_offset not in bases:
            path.unlink(missing_ok=True)
    return sorted(bases)
