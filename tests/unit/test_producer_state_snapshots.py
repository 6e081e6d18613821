"""Producer-state snapshots: a replica that restarts loads its producers from the newest
valid snapshot and the batch headers after it, and ends with what a scan of its whole
log gives; corrupt snapshots and those a truncation outdated are never used."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.model import PartitionState
from brook_broker.replication.partition import Partition
from brook_broker.replication.producer_state import (
    MAX_SEQUENCE,
    PRODUCER_ID_EXPIRATION_MS,
    ProducerStateTable,
    snapshot_file,
    snapshot_offsets,
)
from brook_broker.storage.batch import BatchHeader, validate_batches
from brook_broker.storage.log import AppendInfo, PartitionLog
from brook_broker.storage.records import rebuild_batch
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS
from tests.unit.test_producer_state import (
    PRODUCER,
    SMALL_SEGMENTS,
    batch,
    header,
    open_log,
    produce,
    replica,
)

Summary = dict[int, tuple[int, list[tuple[int, int, int, int, int]]]]


def summary(table: ProducerStateTable) -> Summary:
    """Producer id -> (epoch, its remembered batches), comparable with ==."""
    return {
        producer_id: (
            entry.epoch,
            [
                (b.first_sequence, b.last_sequence, b.first_offset, b.last_offset, b.timestamp)
                for b in entry.batches
            ],
        )
        for producer_id, entry in table.producers.items()
    }


def full_scan(log: PartitionLog) -> Summary:
    table = ProducerStateTable("orders-0")
    table.load(log.batch_headers())
    return summary(table)


def sample_table() -> ProducerStateTable:
    """Three producers: one with six batches (five remembered), one past an epoch bump,
    one whose sequence wrapped."""
    table = ProducerStateTable("orders-0")
    for index in range(6):
        table.record(header(2 * index, 2), 2 * index, BASE_TIME_MS + index)
    table.record(header(0, epoch=3, producer=8), 20, BASE_TIME_MS)
    table.record(header(0, epoch=4, producer=8), 21, BASE_TIME_MS + 1)
    table.record(header(MAX_SEQUENCE, 2, producer=9), 22, BASE_TIME_MS + 2)
    return table


def loaded(directory: Path, start: int, end: int) -> tuple[int, ProducerStateTable]:
    table = ProducerStateTable("orders-0")
    return table.load_snapshot(directory, start, end), table


def test_a_snapshot_round_trips_every_remembered_batch(tmp_path: Path) -> None:
    table = sample_table()
    table.write_snapshot(tmp_path, 24, 0)
    assert [path.name for path in tmp_path.iterdir()] == ["00000000000000000024.snapshot"]
    offset, again = loaded(tmp_path, 0, 24)
    assert offset == 24
    assert summary(again) == summary(table)
    assert again.check([header(10, 2)]) is not None  # a retry is still recognised
    assert again.check([header(1, producer=9)]) is None  # after the wrap to 0


def test_batches_below_the_log_start_offset_are_not_loaded(tmp_path: Path) -> None:
    sample_table().write_snapshot(tmp_path, 24, 0)
    _, table = loaded(tmp_path, 8, 24)
    assert [b.first_offset for b in table.producers[PRODUCER].batches] == [8, 10]
    _, table = loaded(tmp_path, 11, 24)
    assert [b.first_offset for b in table.producers[PRODUCER].batches] == [10]  # 10 to 11
    assert set(loaded(tmp_path, 12, 24)[1].producers) == {8, 9}
    assert set(loaded(tmp_path, 22, 24)[1].producers) == {9}


def test_loaded_producers_still_expire(tmp_path: Path) -> None:
    sample_table().write_snapshot(tmp_path, 24, 0)
    _, table = loaded(tmp_path, 0, 24)
    assert table.remove_expired(BASE_TIME_MS + PRODUCER_ID_EXPIRATION_MS + 2, 0) == 2
    assert set(table.producers) == {PRODUCER}  # its last batch is the latest
    assert table.remove_expired(BASE_TIME_MS, 12) == 1  # that batch is below the log start


def corruptions(path: Path) -> Iterator[bytes]:
    """A file torn at several places, a flipped digit, another version, garbage."""
    data = path.read_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        yield data[:cut]
    digit = data.index(b" 2 ", data.index(b"\n"))  # a number in the producer lines
    yield data[: digit + 1] + b"3" + data[digit + 2 :]
    yield b"9" + data[1:]
    yield b"\xff\xfe not a snapshot"


def test_a_corrupt_snapshot_is_deleted_and_an_older_one_or_the_log_used(tmp_path: Path) -> None:
    older, newer = ProducerStateTable("orders-0"), sample_table()
    older.record(header(0), 0, BASE_TIME_MS)
    older.write_snapshot(tmp_path, 1, 0)
    newer.write_snapshot(tmp_path, 24, 0)
    good = snapshot_file(tmp_path, 24).read_bytes()
    for corrupt in corruptions(snapshot_file(tmp_path, 24)):
        snapshot_file(tmp_path, 24).write_bytes(corrupt)
        offset, table = loaded(tmp_path, 0, 30)
        assert (offset, summary(table)) == (1, summary(older))
        assert snapshot_offsets(tmp_path) == [1]
        snapshot_file(tmp_path, 24).write_bytes(good)
    assert loaded(tmp_path, 0, 30)[0] == 24
    for offset in (1, 24):
        snapshot_file(tmp_path, offset).write_bytes(b"")
    assert loaded(tmp_path, 5, 30)[0] == 5  # none left: the whole log is read
    assert snapshot_offsets(tmp_path) == []


def test_two_snapshots_are_kept_and_none_outside_the_log(tmp_path: Path) -> None:
    table = sample_table()
    for offset in (10, 20, 30):
        table.write_snapshot(tmp_path, offset, 0)
    assert snapshot_offsets(tmp_path) == [20, 30]
    table.write_snapshot(tmp_path, 40, 35)
    assert snapshot_offsets(tmp_path) == [40]
    table.write_snapshot(tmp_path, 50, 0)
    assert loaded(tmp_path, 0, 45)[0] == 40  # 50 lies beyond the log end: deleted
    assert snapshot_offsets(tmp_path) == [40]
    assert loaded(tmp_path, 41, 45)[0] == 41
    assert snapshot_offsets(tmp_path) == []


# --- a replica's snapshots ---------------------------------------------------------------


def segment_bases(log: PartitionLog) -> list[int]:
    return sorted(int(path.stem) for path in log.directory.glob("*.log"))


def taking_turns(partition: Partition, count: int, start: int = 0) -> None:
    """``count`` one-record batches, producers 7 and 8 taking turns."""
    for index in range(start, start + count):
        produce(partition, batch(index // 2, producer=PRODUCER + index % 2))


def scans_from(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The start offsets of the batch-header reads of the log from now on."""
    starts: list[int] = []
    read = PartitionLog.batch_headers

    def recording(
        log: PartitionLog, start_offset: int = 0, end_offset: int | None = None
    ) -> Iterator[BatchHeader]:
        starts.append(start_offset)
        return read(log, start_offset, end_offset)

    monkeypatch.setattr(PartitionLog, "batch_headers", recording)
    return starts


def test_each_roll_snapshots_the_producers_and_a_restart_reads_only_what_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    leader = replica(log, configs=SMALL_SEGMENTS)
    taking_turns(leader, 20)
    bases = segment_bases(log)
    assert len(bases) > 3
    assert snapshot_offsets(log.directory) == bases[-2:]
    expected = summary(leader.producers)
    assert full_scan(log) == expected
    log.close()  # a crash: no snapshot at the log end
    starts = scans_from(monkeypatch)
    restarted = replica(open_log(tmp_path), configs=SMALL_SEGMENTS)
    assert starts == [bases[-1]]
    assert summary(restarted.producers) == expected
    assert produce(restarted, batch(9, producer=PRODUCER)).record_count == 0  # a retry
    assert produce(restarted, batch(10, producer=PRODUCER + 1)).base_offset == 20


def test_a_stopped_replica_restarts_without_reading_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    leader = replica(log, configs=SMALL_SEGMENTS)
    taking_turns(leader, 9)
    expected = summary(leader.producers)
    leader.stop()
    log.close()
    assert snapshot_offsets(log.directory)[-1] == 9
    starts = scans_from(monkeypatch)
    restarted = replica(open_log(tmp_path))
    assert starts == [9]
    assert summary(restarted.producers) == expected
    restarted.stop()  # nothing new: no new snapshot
    assert snapshot_offsets(log.directory)[-1] == 9


def test_truncation_removes_the_snapshots_beyond_the_cut(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    leader = replica(log, configs=SMALL_SEGMENTS)
    taking_turns(leader, 20)
    older, newer = snapshot_offsets(log.directory)
    leader.truncate_to(newer - 1)
    assert snapshot_offsets(log.directory) == [older]
    taking_turns(leader, 2, start=newer - 1)  # the same batches again, after the cut
    expected = summary(leader.producers)  # what the truncation left, and the new batches
    log.close()
    restarted = replica(open_log(tmp_path), configs=SMALL_SEGMENTS)
    assert summary(restarted.producers) == expected
    restarted.truncate_to(1)
    assert snapshot_offsets(log.directory) == []
    taking_turns(restarted, 1, start=1)
    restarted.restart_at(50)
    assert snapshot_offsets(log.directory) == []
    assert not restarted.producers.producers


def test_a_follower_records_batches_the_cleaner_emptied(tmp_path: Path) -> None:
    """Kafka's cleaner keeps an idempotent producer's last batch without its records,
    so that its sequence number survives: a follower fetching it must take it in."""
    follower = replica(open_log(tmp_path), leader=1, replicas=(0, 1))
    follower.append_as_follower(batch(0, 3), now_ms=BASE_TIME_MS)
    last = batch(3, 2, offset=3)
    emptied = rebuild_batch(last, validate_batches(last)[0], [])
    info = follower.append_as_follower(emptied, now_ms=BASE_TIME_MS)
    assert (info.record_count, follower.log.log_end_offset) == (0, 5)
    entry = follower.producers.producers[PRODUCER]
    assert (entry.last.last_sequence, entry.last.last_offset) == (4, 4)
    follower.update(  # this replica takes over
        PartitionState(replicas=(0, 1), isr=(0, 1), leader=0, leader_epoch=2, partition_epoch=2),
        {},
    )
    assert produce(follower, batch(3, 2)) == AppendInfo(3, 4, 0, -1)  # a retry
    with pytest.raises(ApiError) as refused:
        produce(follower, batch(6))
    assert refused.value.code == ErrorCode.out_of_order_sequence_number
    assert produce(follower, batch(5)).base_offset == 5


# --- random histories --------------------------------------------------------------------


def suffix_of(shorter: list[object], longer: list[object]) -> bool:
    return not shorter or longer[-len(shorter) :] == shorter


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("truncations", [False, True])
def test_a_restart_loads_what_a_scan_of_the_whole_log_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, truncations: bool
) -> None:
    """Appends from a few producers (retries, new epochs), restarts after a crash or a
    stop, and (if ``truncations``) cuts of the log's tail; then a restart from snapshots
    and one from the log alone must know the same producers."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not the question here
    rng = random.Random(seed)
    sequences = {producer: 0 for producer in range(7, 11)}
    epochs = dict.fromkeys(sequences, 0)
    sent: dict[int, bytes] = {}
    log = open_log(tmp_path)
    leader = replica(log, configs=SMALL_SEGMENTS)
    for _ in range(300):
        action = rng.random()
        producer = rng.choice(list(sequences))
        if action < 0.03:
            if rng.random() < 0.5:
                leader.stop()  # else a crash
            log.close()
            log = open_log(tmp_path)
            leader = replica(log, configs=SMALL_SEGMENTS)
            continue
        if truncations and action < 0.08 and log.log_end_offset > 0:
            leader.truncate_to(rng.randrange(max(0, log.log_end_offset - 12), log.log_end_offset))
            continue
        if action < 0.12 and producer in sent and not truncations:
            assert produce(leader, sent[producer]).record_count == 0  # a retry
            continue
        if action < 0.16:
            epochs[producer] += 1
            sequences[producer] = 0
        count = rng.randint(1, 3)
        data = batch(sequences[producer], count, epoch=epochs[producer], producer=producer)
        try:
            produce(leader, data)
        except ApiError as refused:  # a cut took this producer's last batches
            assert refused.code == ErrorCode.out_of_order_sequence_number
            epochs[producer] += 1
            sequences[producer] = 0
            continue
        sequences[producer] = (sequences[producer] + count) % (MAX_SEQUENCE + 1)
        sent[producer] = data
    log.close()
    snapshots = snapshot_offsets(log.directory)
    from_snapshots = summary(replica(open_log(tmp_path)).producers)
    for offset in snapshots:
        snapshot_file(log.directory, offset).unlink()
    scanned = summary(replica(open_log(tmp_path)).producers)
    if not truncations:
        assert snapshots
        assert from_snapshots == scanned
        return
    # A cut forgets a producer's batches above it, and the scan back for those it
    # emptied stops at the first window holding any: the latest batches are the same.
    assert from_snapshots.keys() == scanned.keys()
    for producer, (epoch, batches) in from_snapshots.items():
        assert epoch == scanned[producer][0]
        assert batches[-1] == scanned[producer][1][-1]
        assert suffix_of(list(batches), list(scanned[producer][1]))
