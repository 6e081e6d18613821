"""A broker killed (SIGKILL) in the middle of cleaning a log loses nothing.

A child process cleans a compacted log and kills itself at a chosen point of the run;
the log is then opened again (which finishes or discards the interrupted swap) and read
from the start. It must hold every key's latest record at its offset, and nothing that
was not written; once cleaned to the end it must equal the model exactly. The same check
run against a swap that is not crash-safe fails.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.cleaner import LogCleaner, ProcessWorker, ThreadWorker
from brook_broker.storage.log import PartitionLog, wall_clock_ms

from tests.support.batches import Record, encode_batch
from tests.support.cleaner_crash import COMPACTED, POINTS, seal
from tests.unit.test_log_cleaner import read_all

ROOT = Path(__file__).resolve().parents[2]
Written = list[tuple[int, bytes, bytes | None]]


def write_history(directory: Path) -> Written:
    """300 batches over 40 keys, some values tombstones, in many 4 KiB segments; the
    first 30 batches also write a key of their own that is never written again, so every
    segment holds records that cleaning must keep."""
    log = PartitionLog.open(directory, "t", 0, COMPACTED)
    written: Written = []
    now_ms = wall_clock_ms()
    for index in range(300):
        records = [
            (b"key-%d" % ((index * 7 + delta) % 40), None if index % 13 == 0 else b"v%d" % index)
            for delta in range(3)
        ]
        if index < 30:
            records.append((b"once-%d" % index, b"only"))
        data = encode_batch([Record(key, value) for key, value in records], base_timestamp=now_ms)
        info = log.append(data, validate_batches(data), now_ms=now_ms, leader_epoch=0)
        written += [
            (info.base_offset + delta, key, value) for delta, (key, value) in enumerate(records)
        ]
    log.close()
    return written


def crash_while_cleaning(directory: Path, point: str, *extra: str) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.cleaner_crash", str(directory), point, *extra],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]


def nothing_lost(found: Written, written: Written) -> list[str]:
    """What is wrong with a log read after a crash: records never written (or moved),
    offsets out of order, a key whose latest record is missing."""
    problems = []
    history = set(written)
    problems += [f"never written: {record}" for record in found if record not in history]
    offsets = [offset for offset, _, _ in found]
    if offsets != sorted(set(offsets)):
        problems.append("offsets out of order")
    latest = {key: (offset, key, value) for offset, key, value in written}
    problems += [f"lost: {record}" for record in latest.values() if record not in found]
    return problems


def clean_to_the_end(log: PartitionLog) -> None:
    seal(log)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e12,
        backoff_ms=0,
    )

    async def clean() -> None:
        while await cleaner.clean_dirtiest():
            pass

    asyncio.run(clean())


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_kill_during_cleaning_leaves_the_old_or_the_new_segments(
    tmp_path: Path, point: str
) -> None:
    written = write_history(tmp_path)
    crash_while_cleaning(tmp_path, point)
    left = sorted(path.name.split("-")[0] for path in tmp_path.iterdir() if path.is_dir())
    # Groups written but not swapped yet wait in cleaning directories; one swap was under way.
    swaps = 0 if point == "writing" else 1
    assert left.count("swap") == swaps and left.count("cleaning") == len(left) - swaps >= 1, left
    log = PartitionLog.open(tmp_path, "t", 0, COMPACTED)
    assert not [path.name for path in tmp_path.iterdir() if path.is_dir()]
    assert nothing_lost(read_all(log), written) == []
    clean_to_the_end(log)
    latest = {key: (offset, key, value) for offset, key, value in written}
    assert read_all(log) == sorted(latest.values())  # tombstones stay delete.retention.ms
    log.close()


def test_the_check_catches_a_swap_that_is_not_crash_safe(tmp_path: Path) -> None:
    written = write_history(tmp_path)
    crash_while_cleaning(tmp_path, "none", "--naive-swap")
    log = PartitionLog.open(tmp_path, "t", 0, COMPACTED)
    problems = nothing_lost(read_all(log), written)
    log.close()
    assert any(problem.startswith("lost:") for problem in problems)


def test_a_killed_compaction_process_fails_one_run_and_the_next_run_starts_another(
    tmp_path: Path,
) -> None:
    """The broker compacts in a child process; if that dies (killed for its memory, say),
    the broker goes on and the next run has a new one."""
    written = write_history(tmp_path)
    log = PartitionLog.open(tmp_path, "t", 0, COMPACTED)
    seal(log)
    worker = ProcessWorker()
    cleaner = LogCleaner(
        lambda: [log],
        worker=worker,
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e12,
        backoff_ms=0,
    )

    async def scenario() -> None:
        assert await cleaner.clean_dirtiest()
        (child,) = multiprocessing.active_children()
        now_ms = wall_clock_ms()
        for index in range(100):  # new values for every key: the log is dirty again
            records = [(b"key-%d" % (index % 40), b"later-%d" % index)]
            data = encode_batch([Record(k, v) for k, v in records], base_timestamp=now_ms)
            info = log.append(data, validate_batches(data), now_ms=now_ms, leader_epoch=0)
            written.append((info.base_offset, *records[0]))
        log.high_watermark = log.log_end_offset
        seal(log)
        os.kill(child.pid or 0, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            await cleaner.clean_dirtiest()
        assert await cleaner.clean_dirtiest()
        worker.close()

    asyncio.run(scenario())
    latest = {key: (offset, key, value) for offset, key, value in written}
    assert read_all(log) == sorted(latest.values())
    assert cleaner.stats.uncleanable == set()
    log.close()
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == [], "the compaction process outlived close()"
