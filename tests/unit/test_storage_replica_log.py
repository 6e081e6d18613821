"""PartitionLog as a replica: leader epochs stamped and recorded, follower appends that keep
the leader's offsets, truncation of a divergent tail, restart at the leader's log start."""

from __future__ import annotations

from pathlib import Path

import pytest
from brook_broker.storage.batch import InvalidBatch, iter_headers, validate_batches
from brook_broker.storage.leader_epochs import CHECKPOINT_FILE
from brook_broker.storage.log import LogConfig, OffsetOutOfRange, PartitionLog

from tests.support.batches import BASE_TIME_MS, make_batch, split_batches

NOW_MS = BASE_TIME_MS + 60_000


def open_log(directory: Path, **config: int) -> PartitionLog:
    return PartitionLog.open(directory, "orders", 0, LogConfig(**config))


def lead(log: PartitionLog, epoch: int, count: int, records_per_batch: int = 2) -> None:
    """Append ``count`` batches as the leader in ``epoch``."""
    if epoch > log.leader_epochs.latest_epoch:
        log.leader_epochs.assign(epoch, log.log_end_offset)
    for number in range(count):
        batch = make_batch(
            [b"e%d-%d-%d" % (epoch, number, i) * 4 for i in range(records_per_batch)]
        )
        log.append(batch, validate_batches(batch), now_ms=NOW_MS, leader_epoch=epoch)


def everything(log: PartitionLog) -> bytes:
    """All batches of the log, read across segments as a follower would fetch them."""
    data = b""
    offset = log.log_start_offset
    while chunk := log.read(offset, 10**9, upper_offset=log.log_end_offset):
        data += chunk
        offset = list(iter_headers(chunk))[-1][1].next_offset
    return data


def test_the_leader_stamps_its_epoch_without_touching_the_crc(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    lead(log, 3, 2)
    lead(log, 7, 1)
    stored = everything(log)
    headers = validate_batches(stored)  # the CRCs still hold
    assert [header.partition_leader_epoch for header in headers] == [3, 3, 7]
    assert log.leader_epochs.entries == [(3, 0), (7, 4)]
    assert log.high_watermark == 0  # appends do not commit anything


def test_a_follower_copies_the_leader_byte_for_byte(tmp_path: Path) -> None:
    leader = open_log(tmp_path / "leader" / "orders-0", segment_bytes=700)
    follower = open_log(tmp_path / "follower" / "orders-0", segment_bytes=700)
    lead(leader, 1, 5)
    lead(leader, 4, 5)
    while follower.log_end_offset < leader.log_end_offset:
        chunk = leader.read(follower.log_end_offset, 300, upper_offset=leader.log_end_offset)
        info = follower.append_as_follower(chunk, now_ms=NOW_MS)
        assert info.base_offset == next(iter_headers(chunk))[1].base_offset
    assert everything(follower) == everything(leader)
    assert follower.leader_epochs.entries == leader.leader_epochs.entries == [(1, 0), (4, 10)]
    assert len(list(follower.directory.glob("*.log"))) > 1  # rolled like any log


def test_a_follower_leaves_out_a_cut_batch_and_refuses_gaps_and_corruption(
    tmp_path: Path,
) -> None:
    leader = open_log(tmp_path / "leader" / "orders-0")
    lead(leader, 0, 3)
    data = everything(leader)
    follower = open_log(tmp_path / "follower" / "orders-0")
    first_size = next(iter(iter_headers(data)))[1].size
    info = follower.append_as_follower(data[: first_size + 20], now_ms=NOW_MS)
    assert (info.base_offset, info.last_offset, follower.log_end_offset) == (0, 1, 2)
    with pytest.raises(InvalidBatch):
        follower.append_as_follower(data, now_ms=NOW_MS)  # starts at 0, not at 2
    rest = bytearray(data[first_size:])
    rest[-1] ^= 0xFF
    with pytest.raises(InvalidBatch):
        follower.append_as_follower(rest, now_ms=NOW_MS)
    assert follower.log_end_offset == 2
    assert follower.append_as_follower(b"", now_ms=NOW_MS).record_count == 0


def test_truncate_to_cuts_whole_batches_segments_and_epochs(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=500, index_interval_bytes=100)
    lead(log, 1, 10)
    lead(log, 2, 10)  # offsets 20..39 in epoch 2
    log.high_watermark = 30
    before = split_batches(everything(log))
    segments = len(list(log.directory.glob("*.log")))
    log.truncate_to(25)  # inside the batch 24-25: it goes whole
    assert log.log_end_offset == 24
    assert log.high_watermark == 24
    assert split_batches(everything(log)) == [batch for batch in before if batch[0] < 24]
    assert len(list(log.directory.glob("*.log"))) < segments
    assert log.leader_epochs.entries == [(1, 0), (2, 20)]
    log.truncate_to(20)
    assert log.leader_epochs.entries == [(1, 0)]
    lead(log, 5, 2)  # a new leader appends after the cut
    assert split_batches(everything(log))[-1][0] == 22
    for offset in range(log.log_end_offset):
        assert log.read(offset, 1, upper_offset=log.log_end_offset)
    kept = everything(log)
    log.close()
    reopened = open_log(tmp_path / "orders-0", segment_bytes=500, index_interval_bytes=100)
    assert reopened.log_end_offset == 24
    assert reopened.leader_epochs.entries == [(1, 0), (5, 20)]
    assert everything(reopened) == kept


def test_truncate_to_the_log_start_or_beyond_the_end(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    lead(log, 1, 3)
    log.truncate_to(100)
    assert log.log_end_offset == 6
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset) == (0, 0)
    assert log.leader_epochs.entries == []
    lead(log, 2, 1)
    assert log.leader_epochs.entries == [(2, 0)]


def test_truncation_keeps_the_time_index_right(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", index_interval_bytes=1)
    for second in range(10):
        batch = make_batch([b"x"], timestamps=[BASE_TIME_MS + second * 1000])
        log.append(batch, validate_batches(batch), now_ms=NOW_MS, leader_epoch=0)
    log.high_watermark = log.log_end_offset
    log.truncate_to(4)
    assert log.offset_for_timestamp(BASE_TIME_MS + 3000) == (3, BASE_TIME_MS + 3000)
    assert log.offset_for_timestamp(BASE_TIME_MS + 4000) is None
    batch = make_batch([b"y"], timestamps=[BASE_TIME_MS + 3500])
    log.append(batch, validate_batches(batch), now_ms=NOW_MS, leader_epoch=1)
    assert log.offset_for_timestamp(BASE_TIME_MS + 3200) == (4, BASE_TIME_MS + 3500)


def test_restart_at_drops_everything(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=300)
    lead(log, 1, 10)
    log.restart_at(500)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (500, 500, 500)
    assert [path.name for path in log.directory.glob("*.log")] == ["00000000000000000500.log"]
    assert log.leader_epochs.entries == []
    leader = open_log(tmp_path / "leader" / "orders-0")
    leader.restart_at(500)
    lead(leader, 3, 2)
    log.append_as_follower(everything(leader), now_ms=NOW_MS)
    assert everything(log) == everything(leader)
    assert log.leader_epochs.entries == [(3, 500)]
    log.close()
    assert open_log(tmp_path / "orders-0").log_start_offset == 500


def test_the_log_start_follows_the_leaders_within_the_high_watermark(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0", segment_bytes=300)
    lead(log, 1, 6)
    lead(log, 2, 6)
    bases = sorted(int(path.stem) for path in log.directory.glob("*.log"))
    assert bases == [0, 4, 8, 12, 16, 20]
    log.high_watermark = 4
    with pytest.raises(OffsetOutOfRange):  # never past the high watermark
        log.increment_log_start_offset(8, "the leader's log start offset")
    log.high_watermark = log.log_end_offset
    assert log.increment_log_start_offset(9, "the leader's log start offset")
    assert log.log_start_offset == 9
    assert sorted(int(path.stem) for path in log.directory.glob("*.log")) == bases[2:]
    assert log.leader_epochs.entries == [(1, 9), (2, 12)]


def test_recovery_trims_the_checkpoint_to_the_recovered_log(tmp_path: Path) -> None:
    log = open_log(tmp_path / "orders-0")
    lead(log, 1, 3)
    lead(log, 2, 3)
    log.close()
    segment = next((tmp_path / "orders-0").glob("*.log"))
    data = segment.read_bytes()
    fourth = [position for position, _ in iter_headers(data)][3]
    segment.write_bytes(data[: fourth + 10])  # torn inside the first batch of epoch 2
    recovered = open_log(tmp_path / "orders-0")
    assert recovered.log_end_offset == 6
    assert recovered.leader_epochs.entries == [(1, 0)]
    assert (tmp_path / "orders-0" / CHECKPOINT_FILE).read_text().split() == ["0", "1", "1", "0"]
