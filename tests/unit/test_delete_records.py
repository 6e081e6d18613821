"""DeleteRecords without sockets: the log start offset inside a segment (persisted, read
bounds, segments deleted, kept within the log by retention and truncation), the leader's
checks and its wait for the followers in the ISR, and followers following the leader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from brook_broker.metadata.errors import ApiError
from brook_broker.replication.manager import PartitionDeletion, RecordDeletions
from brook_broker.storage.batch import iter_headers, validate_batches
from brook_broker.storage.log import (
    LOG_START_OFFSET_FILE,
    LogConfig,
    OffsetOutOfRange,
    PartitionLog,
)
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS, make_batch
from tests.unit.test_replication_partition import Harness, settle

NOW_MS = BASE_TIME_MS + 60_000


def open_log(directory: Path, **config: int) -> PartitionLog:
    return PartitionLog.open(directory, "orders", 0, LogConfig(**config))


def produce(log: PartitionLog, batches: int, records_per_batch: int = 5) -> None:
    """Append as the only replica: committed at once."""
    for number in range(batches):
        batch = make_batch([b"r%d-%d" % (number, i) * 20 for i in range(records_per_batch)])
        log.append(batch, validate_batches(batch), now_ms=NOW_MS, leader_epoch=0)
    log.high_watermark = log.log_end_offset


def first_offset_read(log: PartitionLog, offset: int) -> int:
    """The base offset of the first batch a fetch at ``offset`` returns."""
    return next(iter_headers(log.read(offset, 1 << 20)))[1].base_offset


def segment_bases(log: PartitionLog) -> list[int]:
    return sorted(int(path.stem) for path in log.directory.glob("*.log"))


# --- the log ---------------------------------------------------------------------------


def test_the_log_start_moves_inside_a_segment_and_reads_below_it_are_out_of_range(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 20)  # offsets 0..99 in one segment
    assert log.increment_log_start_offset(42, "test")
    assert log.log_start_offset == 42
    assert segment_bases(log) == [0]  # the segment holds offsets kept: it stays
    with pytest.raises(OffsetOutOfRange) as raised:
        log.read(41, 100)
    assert raised.value.log_start_offset == 42
    assert first_offset_read(log, 42) == 40  # the whole batch holding offset 42
    assert not log.increment_log_start_offset(30, "test")  # never backwards
    assert log.log_start_offset == 42


def test_a_lookup_by_timestamp_never_answers_below_the_log_start(tmp_path: Path) -> None:
    """As Kafka's: what ListOffsets by timestamp finds is a record a fetch can return."""
    log = open_log(tmp_path / "orders-0")
    produce(log, 20)  # every record at most a few milliseconds after BASE_TIME_MS
    assert log.offset_for_timestamp(0) == (0, BASE_TIME_MS)
    assert log.increment_log_start_offset(42, "test")
    found = log.offset_for_timestamp(0)
    assert found is not None and found[0] == 42


def test_the_log_start_offset_survives_a_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 20)
    log.increment_log_start_offset(40, "test")
    log.close()
    reopened = open_log(tmp_path / "orders-0")
    assert reopened.log_start_offset == 40
    assert reopened.log_end_offset == 100
    with pytest.raises(OffsetOutOfRange):
        reopened.read(39, 100)
    assert (tmp_path / "orders-0" / LOG_START_OFFSET_FILE).exists()


def test_an_unreadable_checkpoint_falls_back_to_the_first_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 4)
    log.close()
    (tmp_path / "orders-0" / LOG_START_OFFSET_FILE).write_text("garbage")
    assert open_log(tmp_path / "orders-0").log_start_offset == 0


def test_segments_wholly_below_the_log_start_are_deleted(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=600)
    produce(log, 20)
    bases = segment_bases(log)
    assert len(bases) > 4
    inside = bases[3] + 2
    log.increment_log_start_offset(inside, "test")
    assert segment_bases(log) == bases[3:]
    assert log.log_start_offset == inside
    assert log.leader_epochs.entries == [(0, inside)]


def test_all_records_deleted_up_to_the_log_end(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=600)
    produce(log, 6)
    log.increment_log_start_offset(log.high_watermark, "test")
    assert log.log_start_offset == log.log_end_offset == 30
    assert segment_bases(log) == [30]
    assert log.read(30, 100) == b""


def test_the_log_start_never_passes_the_high_watermark(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 4)
    log.high_watermark = 10
    with pytest.raises(OffsetOutOfRange):
        log.increment_log_start_offset(11, "test")
    assert log.log_start_offset == 0


def test_retention_past_a_deleted_offset_moves_the_log_start_to_the_next_segment(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=600)
    produce(log, 20)
    bases = segment_bases(log)
    log.increment_log_start_offset(bases[1] + 1, "test")
    log.update_config(LogConfig(segment_bytes=600, retention_bytes=log.size_bytes // 2))
    assert log.enforce_retention(NOW_MS) > 0
    assert log.log_start_offset == segment_bases(log)[0] > bases[1] + 1


def test_a_log_restarted_below_its_start_starts_there_even_after_a_reopen(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 20)
    log.increment_log_start_offset(42, "test")
    log.restart_at(40)
    assert log.log_start_offset == log.log_end_offset == 40
    batch = make_batch([b"a"] * 5, base_offset=40)
    log.append_as_follower(batch, now_ms=NOW_MS)
    log.high_watermark = 45
    assert first_offset_read(log, 40) == 40
    log.close()
    assert open_log(tmp_path / "orders-0").log_start_offset == 40


def test_a_cut_tail_never_leaves_the_log_start_beyond_the_log_end(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    produce(log, 20)
    log.increment_log_start_offset(42, "test")
    log.truncate_to(43)  # the batch holding 42 (40..44) goes whole
    assert log.log_end_offset == 40
    assert log.log_start_offset == 40 == log.high_watermark


# --- the leader ------------------------------------------------------------------------


def leader_with_records(tmp_path: Path, batches: int = 10, **configs: str) -> Harness:
    """A leader of replicas 0, 1, 2 whose followers have everything (5 records a batch)."""
    h = Harness(tmp_path)
    h.configs = {**h.configs, **configs}
    h.lead()
    for _ in range(batches):
        end = h.produce(5)
    for follower in (1, 2):
        h.partition.follower_fetched(follower, end, 0)
    assert h.log.high_watermark == end
    return h


async def test_delete_records_waits_for_the_followers_in_the_isr(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path)
    assert h.partition.delete_records(23) == 23
    assert h.log.log_start_offset == 23
    assert h.partition.low_watermark == 0
    done = h.partition.wait_for_low_watermark(23)
    h.partition.follower_fetched(1, 50, 23)
    await settle()
    assert not done.done()
    h.partition.follower_fetched(2, 50, 23)
    assert done.result() == ErrorCode.none
    assert h.partition.low_watermark == 23


async def test_a_follower_leaving_the_isr_no_longer_holds_a_deletion_back(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path)
    h.partition.delete_records(23)
    h.partition.follower_fetched(1, 50, 23)
    done = h.partition.wait_for_low_watermark(23)
    h.set_state(isr=(0, 1), partition_epoch=11)
    assert done.result() == ErrorCode.none


async def test_a_deletion_waiting_when_leadership_moves_fails(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path)
    h.partition.delete_records(23)
    done = h.partition.wait_for_low_watermark(23)
    h.set_state(leader=1, leader_epoch=4, partition_epoch=11)
    assert done.result() == ErrorCode.not_leader_or_follower


async def test_an_answer_not_replicated_in_time_times_out_with_the_low_watermark_it_had(
    tmp_path: Path,
) -> None:
    h = leader_with_records(tmp_path)
    required = h.partition.delete_records(23)
    late = PartitionDeletion(low_watermark=h.partition.low_watermark)
    deletions = RecordDeletions(timeout_s=0.05)
    deletions.partitions.append((("orders", 0), late))
    deletions.wait_for(late, h.partition, required)
    assert deletions.waiting
    h.partition.follower_fetched(1, 50, 23)  # broker 2 never reports
    assert await deletions.replicated() == [(("orders", 0), late)]
    assert (late.error_code, late.low_watermark) == (ErrorCode.request_timed_out, 0)


async def test_an_answer_replicated_in_time_carries_the_new_low_watermark(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path)
    answer = PartitionDeletion(low_watermark=0)
    deletions = RecordDeletions(timeout_s=5)
    deletions.wait_for(answer, h.partition, h.partition.delete_records(23))
    replicated = asyncio.ensure_future(deletions.replicated())
    await settle()
    for follower in (1, 2):
        h.partition.follower_fetched(follower, 50, 23)
    await replicated
    assert (answer.error_code, answer.low_watermark) == (ErrorCode.none, 23)


def test_minus_one_deletes_up_to_the_high_watermark(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path)
    h.produce(5)  # not yet on the followers: above the high watermark
    assert h.partition.delete_records(-1) == 50 == h.log.log_start_offset


@pytest.mark.parametrize("offset", [51, -2])
def test_offsets_beyond_the_high_watermark_or_negative_are_out_of_range(
    tmp_path: Path, offset: int
) -> None:
    h = leader_with_records(tmp_path)
    with pytest.raises(ApiError) as raised:
        h.partition.delete_records(offset)
    assert raised.value.code == ErrorCode.offset_out_of_range
    assert h.log.log_start_offset == 0


def test_a_compact_only_topic_refuses_deletion(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path, **{"cleanup.policy": "compact"})
    with pytest.raises(ApiError) as raised:
        h.partition.delete_records(10)
    assert raised.value.code == ErrorCode.policy_violation
    assert h.log.log_start_offset == 0


def test_compact_and_delete_allows_deletion(tmp_path: Path) -> None:
    h = leader_with_records(tmp_path, **{"cleanup.policy": "compact,delete"})
    assert h.partition.delete_records(10) == 10


# --- followers -------------------------------------------------------------------------


def follower_with_records(tmp_path: Path) -> Harness:
    h = Harness(tmp_path, node_id=1)
    h.set_state(replicas=(0, 1), isr=(0, 1), leader=0, leader_epoch=2, partition_epoch=1)
    for number in range(10):
        batch = make_batch([b"f%d" % number] * 5, base_offset=number * 5)
        h.partition.append_as_follower(batch, now_ms=NOW_MS)
    return h


def test_a_follower_follows_the_leaders_log_start_inside_a_segment(tmp_path: Path) -> None:
    h = follower_with_records(tmp_path)
    h.partition.follower_appended(leader_high_watermark=30, leader_log_start_offset=23)
    assert h.log.log_start_offset == 23
    h.partition.follower_appended(leader_high_watermark=30, leader_log_start_offset=40)
    assert h.log.log_start_offset == 30  # never past its own high watermark
    h.partition.follower_appended(leader_high_watermark=50, leader_log_start_offset=40)
    assert h.log.log_start_offset == 40
    with pytest.raises(OffsetOutOfRange):
        h.log.read(39, 100)


def test_an_empty_follower_takes_the_whole_batch_holding_the_leaders_log_start(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, node_id=1)
    h.set_state(replicas=(0, 1), isr=(0, 1), leader=0, leader_epoch=2, partition_epoch=1)
    h.partition.restart_at(42)  # behind the leader's log start offset 42
    batch = make_batch([b"x"] * 5, base_offset=40)  # the leader's batch 40..44
    info = h.partition.append_as_follower(batch, now_ms=NOW_MS)
    assert (info.base_offset, info.last_offset) == (40, 44)
    h.partition.follower_appended(leader_high_watermark=45, leader_log_start_offset=42)
    assert (h.log.log_start_offset, h.log.log_end_offset) == (42, 45)


def test_low_watermark_counts_a_follower_not_heard_from(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead()
    h.produce(5)
    assert h.partition.low_watermark == -1
