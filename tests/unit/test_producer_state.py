"""Idempotent producers' state: retries of any of a producer's last five batches are
found, sequence gaps and fenced epochs refused, sequence numbers wrap at 2**31 - 1; a
replica's state follows its log through leader and follower appends, truncation and a
restart (rebuilt from the log)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from brook_broker.config import BrokerConfig
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.model import PartitionState
from brook_broker.replication.partition import Partition
from brook_broker.replication.producer_state import (
    MAX_SEQUENCE,
    PRODUCER_ID_EXPIRATION_MS,
    BatchMetadata,
    ProducerStateTable,
)
from brook_broker.storage.batch import BatchHeader, validate_batches
from brook_broker.storage.log import AppendInfo, LogConfig, PartitionLog
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS, make_batch

PRODUCER = 7


def batch(
    sequence: int, count: int = 1, *, epoch: int = 0, producer: int = PRODUCER, offset: int = 0
) -> bytes:
    return make_batch(
        [b"%d" % (sequence + i) for i in range(count)],
        base_offset=offset,
        producer_id=producer,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def header(sequence: int, count: int = 1, **fields: int) -> BatchHeader:
    return validate_batches(batch(sequence, count, **fields))[0]


def table_with(*batches: tuple[int, int], epoch: int = 0) -> ProducerStateTable:
    """A table that saw PRODUCER write (first sequence, record count) batches back to back
    from offset 100."""
    table = ProducerStateTable("orders-0")
    offset = 100
    for sequence, count in batches:
        table.record(header(sequence, count, epoch=epoch), offset, BASE_TIME_MS)
        offset += count
    return table


def refusal(table: ProducerStateTable, *headers: BatchHeader) -> ErrorCode:
    with pytest.raises(ApiError) as refused:
        table.check(headers)
    assert "orders-0" in refused.value.message
    return refused.value.code


def test_a_retry_of_any_of_the_last_five_batches_is_found_with_its_offsets() -> None:
    table = table_with(*((sequence, 2) for sequence in range(0, 12, 2)))  # six batches
    for index, sequence in enumerate(range(2, 12, 2)):
        offset = 102 + 2 * index
        assert table.check([header(sequence, 2)]) == BatchMetadata(
            sequence, sequence + 1, offset, offset + 1, BASE_TIME_MS
        )
    # The sixth-last is forgotten: it is simply out of sequence now.
    assert refusal(table, header(0, 2)) == ErrorCode.out_of_order_sequence_number
    # Same first sequence, other length: not the same batch.
    assert refusal(table, header(10, 1)) == ErrorCode.out_of_order_sequence_number


def test_the_next_sequence_passes_and_a_gap_is_refused() -> None:
    table = table_with((0, 3))
    assert table.check([header(3, 5)]) is None
    assert refusal(table, header(4)) == ErrorCode.out_of_order_sequence_number
    with pytest.raises(ApiError, match=r"5 \(incoming seq. number\), 2 \(current end"):
        table.check([header(5)])


def test_batches_of_one_append_are_checked_one_after_the_other() -> None:
    table = table_with((0, 1))
    assert table.check([header(1, 2), header(3, 1)]) is None
    assert refusal(table, header(1, 2), header(4)) == ErrorCode.out_of_order_sequence_number
    # A retry in the middle of an append answers for the whole append, as in Kafka.
    assert table.check([header(1), header(0)]) == BatchMetadata(0, 0, 100, 100, BASE_TIME_MS)


def test_epochs_fence_older_producers_and_a_new_epoch_starts_at_zero() -> None:
    table = table_with((0, 2), epoch=3)
    assert refusal(table, header(2, epoch=2)) == ErrorCode.invalid_producer_epoch
    assert refusal(table, header(5, epoch=4)) == ErrorCode.out_of_order_sequence_number
    assert table.check([header(0, epoch=4)]) is None
    table.record(header(0, epoch=4), 102, BASE_TIME_MS)
    # The new epoch forgot the old one's batches: retrying one is fenced, not a duplicate.
    assert refusal(table, header(0, 2, epoch=3)) == ErrorCode.invalid_producer_epoch
    assert table.check([header(0, epoch=4)]) is not None
    assert table.check([header(1, epoch=4)]) is None


def test_sequence_numbers_wrap_at_int32_max() -> None:
    table = table_with((MAX_SEQUENCE - 1, 3))  # MAX-1, MAX, 0
    entry = table.producers[PRODUCER]
    assert (entry.last.first_sequence, entry.last.last_sequence) == (MAX_SEQUENCE - 1, 0)
    assert table.check([header(MAX_SEQUENCE - 1, 3)]) is not None  # the retry is found
    assert table.check([header(1)]) is None
    assert refusal(table, header(MAX_SEQUENCE)) == ErrorCode.out_of_order_sequence_number
    ends_at_max = table_with((MAX_SEQUENCE, 1))
    assert ends_at_max.check([header(0)]) is None
    assert refusal(ends_at_max, header(1)) == ErrorCode.out_of_order_sequence_number


def test_unknown_producers_and_batches_without_a_producer_pass() -> None:
    table = table_with((0, 1))
    # Kafka (before transactions v2) accepts any sequence from a producer it has no state
    # for: its batches may have expired or been deleted by retention.
    assert table.check([header(42, producer=8)]) is None
    assert table.check([validate_batches(make_batch([b"plain"]))[0]]) is None
    table.record(validate_batches(make_batch([b"plain"]))[0], 101, BASE_TIME_MS)
    assert list(table.producers) == [PRODUCER]


def test_truncation_keeps_the_earlier_batches_and_reports_producers_it_emptied() -> None:
    table = table_with((0, 2), (2, 2), (4, 2))  # offsets 100-101, 102-103, 104-105
    table.record(header(0, producer=8), 106, BASE_TIME_MS)
    assert table.truncate(103) == {8}  # the batch at 102 goes whole
    assert [b.first_offset for b in table.producers[PRODUCER].batches] == [100]
    assert table.check([header(2, 2)]) is None
    assert table.check([header(0, 2)]) is not None


def test_emptied_producers_are_found_looking_back_from_the_cut_in_growing_windows() -> None:
    stored = [
        header(0, offset=0),
        header(1, offset=1),
        header(0, producer=9, offset=5000),
        header(0, producer=8, offset=9000),
        header(2, offset=9500),
    ]
    asked: list[tuple[int, int]] = []

    def headers(start: int, end: int) -> list[BatchHeader]:
        asked.append((start, end))
        return [h for h in stored if h.last_offset >= start and h.base_offset < end]

    table = ProducerStateTable("orders-0")
    table.recover({PRODUCER}, headers, 0, 10_000)
    assert asked == [(8976, 10_000)]  # found at once: nothing more is read
    assert [b.first_offset for b in table.producers[PRODUCER].batches] == [9500]
    asked.clear()
    table = ProducerStateTable("orders-0")
    table.recover({PRODUCER, 9, 10}, headers, 0, 10_000)
    assert asked == [(8976, 10_000), (784, 8976), (0, 784)]
    assert [b.first_offset for b in table.producers[9].batches] == [5000]
    assert set(table.producers) == {PRODUCER, 9}  # 8 was not lost; 10 is nowhere


def test_producers_expire_after_a_day_or_with_their_deleted_batches() -> None:
    table = table_with((0, 1))  # offset 100 at BASE_TIME_MS
    table.record(header(0, producer=8), 101, BASE_TIME_MS + 10)
    assert table.remove_expired(BASE_TIME_MS + PRODUCER_ID_EXPIRATION_MS - 1, 0) == 0
    assert table.remove_expired(BASE_TIME_MS + PRODUCER_ID_EXPIRATION_MS, 0) == 1
    assert list(table.producers) == [8]
    assert table.remove_expired(BASE_TIME_MS, 102) == 1
    assert not table.producers


# --- a replica's state follows its log ---------------------------------------------------


SMALL_SEGMENTS = {"segment.bytes": "300"}
"""A few batches a segment."""


def replica(
    log: PartitionLog,
    *,
    leader: int = 0,
    replicas: tuple[int, ...] = (0,),
    configs: dict[str, str] | None = None,
) -> Partition:
    """A replica on broker 0 of a partition led by ``leader`` in epoch 1."""
    partition = Partition(
        0,
        "orders",
        0,
        log,
        topic_id=uuid.UUID(int=1),
        config=BrokerConfig(),
        submit=_no_submit,
        notify=lambda topic, index, appended: None,
    )
    partition.update(
        PartitionState(
            replicas=replicas, isr=replicas, leader=leader, leader_epoch=1, partition_epoch=1
        ),
        configs or {},
    )
    return partition


async def _no_submit(*args: object) -> None:
    raise AssertionError("no ISR change expected")


def open_log(tmp_path: Path) -> PartitionLog:
    return PartitionLog.open(tmp_path / "orders-0", "orders", 0, LogConfig())


def produce(partition: Partition, data: bytes, *, log_append_time: bool = False) -> AppendInfo:
    return partition.append(
        data, validate_batches(data), now_ms=BASE_TIME_MS + 500, log_append_time=log_append_time
    )


def test_a_leader_answers_a_retry_with_the_original_offsets_and_appends_nothing(
    tmp_path: Path,
) -> None:
    leader = replica(open_log(tmp_path))
    assert produce(leader, batch(0, 3)).base_offset == 0
    assert produce(leader, batch(3, 2)).base_offset == 3
    assert produce(leader, batch(0, 3)) == AppendInfo(0, 2, 0, -1)
    with pytest.raises(ApiError) as refused:
        produce(leader, batch(6))
    assert refused.value.code == ErrorCode.out_of_order_sequence_number
    assert leader.log.log_end_offset == 5


def test_under_log_append_time_a_retry_gets_the_original_append_time(tmp_path: Path) -> None:
    leader = replica(open_log(tmp_path))
    produce(leader, batch(0, 2), log_append_time=True)
    retry = leader.append(
        batch(0, 2), validate_batches(batch(0, 2)), now_ms=BASE_TIME_MS + 9000, log_append_time=True
    )
    assert retry == AppendInfo(0, 1, 0, BASE_TIME_MS + 500)


async def test_a_retried_batch_is_committed_only_with_the_original(tmp_path: Path) -> None:
    leader = replica(open_log(tmp_path), replicas=(0, 1))
    first = produce(leader, batch(0, 2))
    retry = produce(leader, batch(0, 2))
    waiter = leader.wait_for_commit(retry.last_offset + 1)
    assert retry.base_offset == first.base_offset and not waiter.done()
    leader.follower_fetched(1, first.last_offset + 1)
    assert waiter.result() == ErrorCode.none


def test_a_follower_keeps_the_state_a_new_leader_needs(tmp_path: Path) -> None:
    leader = replica(open_log(tmp_path / "leader"))
    for sequence in range(0, 10, 2):
        produce(leader, batch(sequence, 2))
    follower = replica(open_log(tmp_path / "follower"), leader=1, replicas=(0, 1))
    fetched = leader.log.read(0, 1 << 20)
    follower.append_as_follower(fetched[: len(fetched) - 5], now_ms=BASE_TIME_MS)  # a cut end
    assert follower.log.log_end_offset == 8
    follower.update(
        PartitionState(replicas=(0, 1), isr=(0, 1), leader=0, leader_epoch=2, partition_epoch=2),
        {},
    )
    assert follower.is_leader
    assert produce(follower, batch(6, 2)) == AppendInfo(6, 7, 0, -1)
    assert produce(follower, batch(8, 2)).record_count == 2  # never reached this replica


def test_a_restarted_replica_rebuilds_the_state_from_its_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    leader = replica(log, configs=SMALL_SEGMENTS)
    for index in range(12):  # two producers taking turns
        produce(leader, batch(index // 2, producer=PRODUCER + index % 2))
    log.close()
    restarted = replica(open_log(tmp_path))
    assert len(list(tmp_path.glob("orders-0/*.log"))) > 2
    assert produce(restarted, batch(4, producer=PRODUCER)).base_offset == 8
    assert produce(restarted, batch(5, producer=PRODUCER + 1)).base_offset == 11
    assert produce(restarted, batch(6, producer=PRODUCER)).base_offset == 12


def test_truncation_takes_a_replica_state_back_from_memory_or_the_log(tmp_path: Path) -> None:
    leader = replica(open_log(tmp_path), configs=SMALL_SEGMENTS)
    for sequence in range(3):  # offsets 0-2: producer 7, seq 0-2
        produce(leader, batch(sequence))
    for sequence in range(3):  # offsets 3-5: producer 8, in a later segment
        produce(leader, batch(sequence, producer=8))
    for sequence in range(3, 8):  # offsets 6-10: producer 7, seq 3-7, remembered
        produce(leader, batch(sequence))
    leader.truncate_to(9)
    assert produce(leader, batch(5)).record_count == 0  # still remembered: a retry
    assert produce(leader, batch(6)).base_offset == 9
    leader.truncate_to(6)  # all of producer 7's remembered batches go
    assert len(list(tmp_path.glob("orders-0/*.log"))) == 2
    assert produce(leader, batch(2)) == AppendInfo(2, 2, 0, -1)  # found again in the log
    assert produce(leader, batch(3)).base_offset == 6
    assert produce(leader, batch(2, producer=8)).record_count == 0
    leader.truncate_to(0)
    assert not leader.producers.producers
    leader.restart_at(50)
    assert produce(leader, batch(9)).base_offset == 50  # unknown again: any sequence


def test_the_log_reads_the_batch_headers_of_an_offset_range(tmp_path: Path) -> None:
    leader = replica(open_log(tmp_path), configs=SMALL_SEGMENTS)
    for sequence in range(0, 20, 2):  # offsets 0-19: batches of two, three a segment
        produce(leader, batch(sequence, 2))

    def bases(*bounds: int) -> list[int]:
        return [header.base_offset for header in leader.log.batch_headers(*bounds)]

    assert bases() == list(range(0, 20, 2))
    assert bases(7, 14) == [6, 8, 10, 12]  # from the batch holding 7 to the last before 14
    assert bases(5, 6) == [4]
    assert bases(12, 12) == []
