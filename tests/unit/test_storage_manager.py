"""LogManager: partition directories, topic deletion, and the maintenance loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.log import LogConfig, PartitionLog, wall_clock_ms
from brook_broker.storage.manager import LogManager, parse_partition_directory_name

from tests.support.batches import BASE_TIME_MS, make_batch
from tests.support.fsync import count_fsyncs


def _append(log: PartitionLog, *values: bytes, timestamp: int = BASE_TIME_MS) -> None:
    batch = make_batch(list(values), timestamps=[timestamp] * len(values))
    log.append(batch, validate_batches(batch), now_ms=BASE_TIME_MS, leader_epoch=0)
    log.high_watermark = log.log_end_offset


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("orders-0", ("orders", 0)),
        ("my-topic-12", ("my-topic", 12)),
        ("__consumer_offsets-49", ("__consumer_offsets", 49)),
        ("metadata", None),
        ("orders-01", None),
        ("orders-", None),
        ("-3", None),
        ("orders-²", None),
        ("orders-0.delete", None),
    ],
)
def test_partition_directory_names(name: str, parsed: tuple[str, int] | None) -> None:
    assert parse_partition_directory_name(name) == parsed


def test_open_existing_reopens_logs_and_removes_deleted_topics(tmp_path: Path) -> None:
    manager = LogManager(tmp_path)
    for topic, partition in (("a", 0), ("a", 1), ("b-x", 0)):
        _append(
            manager.create(topic, partition, LogConfig()), b"%s/%d" % (topic.encode(), partition)
        )
    manager.close()
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "state").write_text("kept")
    (tmp_path / "c-7").write_text("a file, not a partition")

    configs: dict[str, LogConfig] = {"a": LogConfig(retention_ms=1234)}
    reopened = LogManager(tmp_path)
    reopened.open_existing(lambda topic, partition: configs.get(topic))
    assert sorted((topic, partition) for topic, partition, _ in reopened.partitions()) == [
        ("a", 0),
        ("a", 1),
    ]
    log = reopened.get("a", 1)
    assert log is not None
    assert (log.log_end_offset, log.config.retention_ms) == (1, 1234)
    assert not (tmp_path / "b-x-0").exists()
    assert (tmp_path / "metadata" / "state").read_text() == "kept"
    assert (tmp_path / "c-7").exists()
    reopened.close()


def test_a_log_left_by_an_earlier_topic_of_the_same_name_is_replaced(tmp_path: Path) -> None:
    first, second = uuid.UUID(int=11), uuid.UUID(int=12)
    manager = LogManager(tmp_path)
    _append(manager.create("t", 0, LogConfig(), first), b"old")
    assert manager.create("t", 0, LogConfig(), first).log_end_offset == 1  # the same topic
    manager.close()
    reopened = LogManager(tmp_path)
    reopened.open_existing(lambda topic, partition: LogConfig())
    log = reopened.create("t", 0, LogConfig(), second)  # deleted and made again meanwhile
    assert log.log_end_offset == 0
    assert (
        "topic_id: 00000000-0000-0000-0000-00000000000c"
        in (tmp_path / "t-0" / "partition.metadata").read_text()
    )
    reopened.delete("t", 0)
    assert not (tmp_path / "t-0").exists()
    reopened.delete("t", 0)  # nothing left: no error
    reopened.close()


def test_create_is_idempotent(tmp_path: Path) -> None:
    manager = LogManager(tmp_path)
    assert manager.get("t", 0) is None
    log = manager.create("t", 0, LogConfig())
    assert manager.create("t", 0, LogConfig(retention_ms=1)) is log
    assert manager.get("t", 0) is log
    assert log.directory == tmp_path / "t-0"
    manager.close()


def test_delete_topic_removes_only_that_topic(tmp_path: Path) -> None:
    manager = LogManager(tmp_path)
    for partition in range(3):
        _append(manager.create("gone", partition, LogConfig()), b"x")
    manager.create("gone-too", 0, LogConfig())
    manager.delete_topic("gone")
    assert [(topic, partition) for topic, partition, _ in manager.partitions()] == [("gone-too", 0)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gone-too-0"]
    manager.close()


async def test_maintenance_enforces_retention_and_flushes_by_flush_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = LogManager(tmp_path)
    expiring = manager.create("expiring", 0, LogConfig(retention_ms=1000, segment_bytes=200))
    for number in range(6):
        _append(expiring, b"old-%d" % number * 20)
    flushed = manager.create("flushed", 0, LogConfig(flush_ms=30))
    kept = manager.create("kept", 0, LogConfig())
    _append(kept, b"x", timestamp=wall_clock_ms())
    synced = count_fsyncs(monkeypatch)
    task = asyncio.create_task(manager.run_maintenance(check_interval_ms=60_000))
    try:
        _append(flushed, b"y")
        await asyncio.sleep(0.2)
        assert synced  # flush.ms passed while the loop slept
        assert expiring.log_start_offset == expiring.log_end_offset == 6  # everything expired
        assert kept.log_start_offset == 0  # a fresh record, well within 7 days
        first_flush = flushed.last_flush_ms
        await asyncio.sleep(0.1)
        assert flushed.last_flush_ms > first_flush  # and again, every flush.ms
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    manager.close()
