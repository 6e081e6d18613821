"""The log cleaner: compaction of ``cleanup.policy=compact`` logs, as Kafka's LogCleaner.

A log's *clean* section runs from its start to its first dirty offset (where the last
cleaning ended, kept in ``cleaner-offset-checkpoint`` in the partition directory); the
*dirty* section runs from there to the first offset that may not be cleaned yet: the
active segment, a segment not wholly below the high watermark, or one younger than
``min.compaction.lag.ms``. The cleaner picks the log with the largest dirty share of
bytes (``min.cleanable.dirty.ratio``, or any dirt once ``max.compaction.lag.ms`` has
passed) and has a worker compact it (``storage.compaction``: what is kept, and why).

The worker is a child process in the broker (``ProcessWorker``), so that parsing and
recompressing records never holds the event loop's interpreter lock; tests run it in a
thread (``ThreadWorker``). Only the swap of each rewritten group of segments (a few
renames, see ``storage.swap``) runs on the event loop, and it is refused if the segments
changed while they were cleaned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import compaction
from .checkpoint import write_atomically
from .compaction import (
    CompactionJob,
    CompactionResult,
    CompactionStopped,
    SegmentFile,
    SegmentsChanged,
    StopSignal,
    UncleanableLog,
)
from .log import PartitionLog, wall_clock_ms
from .segment import Segment

logger = logging.getLogger(__name__)

CLEANER_CHECKPOINT_FILE = "cleaner-offset-checkpoint"


@dataclass
class CleanerStats:
    """What ``/metrics`` shows about the cleaner (``brook_log_cleaner_*``)."""

    runs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    last_run_end_ms: int = -1
    """When the last run ended; before the first, when the cleaner started."""
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


class CompactionWorker(Protocol):
    """Where compactions run: ``compact`` runs one; ``close`` ends the worker."""

    async def compact(self, job: CompactionJob) -> CompactionResult: ...

    def close(self) -> None: ...


async def _await_worker(
    future: asyncio.Future[CompactionResult], stopping: StopSignal
) -> CompactionResult:
    """The compaction's result. If the caller is cancelled, the compaction is told to stop
    and waited for (it stops at its next batch), so that nothing writes into the log's
    directory after the cleaner is gone."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stopping.set()
        with contextlib.suppress(Exception):
            await future
        raise


class ThreadWorker:
    """Compactions in a thread of this process: simple, for tests and tools (a busy
    compaction slows every other thread of the process down)."""

    def __init__(self) -> None:
        self._stopping = threading.Event()

    async def compact(self, job: CompactionJob) -> CompactionResult:
        future = asyncio.get_running_loop().run_in_executor(
            None, compaction.compact, job, self._stopping
        )
        return await _await_worker(future, self._stopping)

    def close(self) -> None:
        self._stopping.set()


_worker_stopping: StopSignal | None = None
"""In a ProcessWorker's child: the event its parent sets when the broker stops."""
_PR_SET_PDEATHSIG = 1


def _start_child(stopping: StopSignal, parent_pid: int) -> None:
    """Make the child die with the broker: a compaction left running by a killed broker
    would write into the log directory of the broker started after it."""
    global _worker_stopping
    _worker_stopping = stopping
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the broker died before the line above
        os._exit(1)


def _compact_in_child(job: CompactionJob) -> CompactionResult:
    assert _worker_stopping is not None
    if _worker_stopping.is_set():
        raise CompactionStopped
    return compaction.compact(job, _worker_stopping)


@contextlib.contextmanager
def _keeping_signal_mask() -> Iterator[None]:
    """multiprocessing unblocks SIGINT and SIGTERM in the thread that starts its resource
    tracker; the broker keeps them blocked in every thread but the one that stops it
    cleanly (see ``main``), so the mask is put back."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class ProcessWorker:
    """Compactions in a child process (started on first use, kept for the next ones).

    A compaction is CPU work in Python: in a thread it would hold the interpreter lock
    and delay every request the event loop serves. A child that dies (killed for its
    memory, say) fails that run; the next run starts a new one. The child dies with the
    broker, however the broker ends (Linux's parent-death signal).
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        with _keeping_signal_mask():
            self._stopping = self._context.Event()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    async def compact(self, job: CompactionJob) -> CompactionResult:
        with _keeping_signal_mask():
            if self._executor is None:
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=self._context,
                    initializer=_start_child,
                    initargs=(self._stopping, os.getpid()),
                )
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, _compact_in_child, job
            )
        try:
            return await _await_worker(future, self._stopping)
        except BrokenProcessPool:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def close(self) -> None:
        self._stopping.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


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
        worker: CompactionWorker,
        dedupe_buffer_size: int,
        io_max_bytes_per_second: float,
        backoff_ms: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._logs = logs
        self._worker = worker
        self._dedupe_buffer_size = dedupe_buffer_size
        self._io_max_bytes_per_second = io_max_bytes_per_second
        self._backoff_ms = backoff_ms
        self._clock_ms = clock_ms
        self._tombstones_expire_ms: dict[tuple[str, int], int] = {}
        """Per log, when the earliest delete horizon of its tombstones passes (learnt
        from the last run; a restart forgets it until the next run)."""
        self.stats = CleanerStats(last_run_end_ms=clock_ms())

    async def run(self) -> None:
        """Forever: clean the dirtiest log, or sleep ``log.cleaner.backoff.ms`` when none
        needs it. On cancellation a running compaction stops at its next batch."""
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
            self._worker.close()

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
            name = (log.topic, log.partition)
            ratios[name] = plan.dirty_ratio
            tombstones_expired = now_ms >= self._tombstones_expire_ms.get(name, now_ms + 1)
            if tombstones_expired or (
                plan.first_dirty < plan.end
                and (plan.overdue or plan.dirty_ratio >= log.config.min_cleanable_dirty_ratio)
            ):
                plans.append(plan)
        self.stats.dirty_ratios = ratios
        if not plans:
            return False
        plan = max(plans, key=lambda plan: (plan.overdue, plan.dirty_ratio))
        name = (plan.log.topic, plan.log.partition)
        try:
            await self.clean(plan, now_ms)
        except SegmentsChanged:
            logger.info("%s-%d changed before it was cleaned; it is tried again later", *name)
        except UncleanableLog as error:
            # As Kafka: a log the cleaner fails on is left alone until the broker restarts.
            self.stats.uncleanable.add(name)
            logger.error("%s-%d cannot be cleaned and is skipped until restart: %s", *name, error)
        return True

    async def clean(self, plan: CleaningPlan, now_ms: int) -> None:
        """One cleaning run of ``plan``'s log: the worker rewrites its segments, then each
        rewritten group is swapped in."""
        log = plan.log
        name = (log.topic, log.partition)
        config = log.config
        job = CompactionJob(
            directory=log.directory,
            segments=tuple(
                SegmentFile(segment.base_offset, segment.log_path, size)
                for segment, size in zip(plan.segments, plan.sizes, strict=True)
            ),
            first_dirty=plan.first_dirty,
            end=plan.end,
            segment_bytes=config.segment_bytes,
            index_interval_bytes=config.index_interval_bytes,
            delete_retention_ms=config.delete_retention_ms,
            dedupe_buffer_size=self._dedupe_buffer_size,
            io_max_bytes_per_second=self._io_max_bytes_per_second,
            now_ms=now_ms,
        )
        result = await self._worker.compact(job)
        self.stats.bytes_read += result.bytes_read
        self.stats.bytes_written += result.bytes_written
        if plan.first_dirty < plan.end and result.map_end <= plan.first_dirty:
            raise UncleanableLog(
                "the keys of its first dirty segment do not fit log.cleaner.dedupe.buffer.size "
                f"({self._dedupe_buffer_size} bytes)"
            )
        for number, group in enumerate(result.groups):
            old = [plan.segments[i] for i in group.indexes]
            if not log.replace_segments(
                old, [plan.sizes[i] for i in group.indexes], group.directory
            ):
                logger.info("%s-%d changed while it was cleaned; the run stops", *name)
                for rest in result.groups[number + 1 :]:
                    shutil.rmtree(rest.directory, ignore_errors=True)
                return
        write_first_dirty_offset(log.directory, result.map_end)
        if result.tombstones_expire_ms is None:
            self._tombstones_expire_ms.pop(name, None)
        else:
            self._tombstones_expire_ms[name] = result.tombstones_expire_ms
        self.stats.runs += 1
        self.stats.last_run_end_ms = self._clock_ms()
        logger.info(
            "%s-%d: cleaned offsets %d to %d: %d bytes read, %d bytes kept, %d keys",
            *name,
            plan.segments[0].base_offset,
            result.map_end,
            result.bytes_read,
            sum(group.size for group in result.groups),
            result.keys,
        )


def read_first_dirty_offset(directory: Path) -> int:
    """Where the last cleaning of the log in ``directory`` ended (0 if never cleaned)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int((directory / CLEANER_CHECKPOINT_FILE).read_text().strip())
    return 0


def write_first_dirty_offset(directory: Path, offset: int) -> None:
    write_atomically(directory / CLEANER_CHECKPOINT_FILE, f"{offset}\n")
