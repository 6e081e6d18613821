"""The log cleaner against a model of compaction: the latest value of each key.

Random histories of keyed records and tombstones, in batches of every codec, are written
to a log, cleaned (with maps small enough that cleaning takes several runs), and read
back from the start.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from brook_broker.storage.batch import parse_header, validate_batches
from brook_broker.storage.cleaner import LogCleaner, ThreadWorker
from brook_broker.storage.compaction import OFFSET_MAP_ENTRY_BYTES
from brook_broker.storage.log import LogConfig, PartitionLog, wall_clock_ms
from brook_broker.storage.records import iter_records, rebuild_batch, record_views
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.batches import CODECS, Record, encode_batch

NOW_MS = wall_clock_ms()

KeyValue = tuple[bytes, bytes | None]
History = list[tuple[str, list[KeyValue]]]


def batch_of(
    records: list[KeyValue], codec: str = "none", timestamp_ms: int = NOW_MS, **producer: int
) -> bytes:
    return encode_batch(
        [Record(key, value) for key, value in records],
        codec=codec,
        base_timestamp=timestamp_ms,
        **producer,
    )


def compacted_config(**changes: object) -> LogConfig:
    config = LogConfig(
        segment_bytes=150,
        cleanup_policy="compact",
        min_cleanable_dirty_ratio=0.0,
        delete_retention_ms=10**12,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def write(log: PartitionLog, batches: History, now_ms: int) -> None:
    for codec, records in batches:
        data = batch_of(records, codec, now_ms)
        log.append(data, validate_batches(data), now_ms=now_ms, leader_epoch=0)
    log.high_watermark = log.log_end_offset


def seal_all(log: PartitionLog, now_ms: int) -> None:
    """Roll the active segment so that everything written may be cleaned."""
    config = log.config
    log.update_config(dataclasses.replace(config, segment_ms=0))
    log.roll_if_due(max(now_ms, wall_clock_ms()))
    log.update_config(config)


def clean_until_done(cleaner: LogCleaner) -> int:
    async def runs() -> int:
        count = 0
        while await cleaner.clean_dirtiest():
            count += 1
            assert count < 500
        return count

    return asyncio.run(runs())


def read_all(log: PartitionLog) -> list[tuple[int, bytes | None, bytes | None]]:
    found: list[tuple[int, bytes | None, bytes | None]] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20, upper_offset=log.log_end_offset)
        if not data:
            break
        found += [record for record in iter_records(data) if record[0] >= offset]
        offset = max(parse_header(data, position).next_offset for position in _positions(data))
    return found


def _positions(data: bytes) -> list[int]:
    positions, position = [], 0
    while position < len(data):
        positions.append(position)
        position += parse_header(data, position).size
    return positions


def latest_per_key(
    batches: History, *, keep_tombstones: bool
) -> list[tuple[int, bytes, bytes | None]]:
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    offset = 0
    for _, records in batches:
        for key, value in records:
            latest[key] = (offset, value)
            offset += 1
    return sorted(
        (offset, key, value)
        for key, (offset, value) in latest.items()
        if value is not None or keep_tombstones
    )


keys = st.sampled_from([b"k%d" % i for i in range(16)])
values = st.one_of(st.none(), st.binary(min_size=1, max_size=40))
histories = st.lists(
    st.tuples(
        st.sampled_from(sorted(CODECS)),
        st.lists(st.tuples(keys, values), min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=histories,
    # A segment (150 bytes) holds at most 8 keys: the map must hold one segment's.
    map_keys=st.integers(min_value=8, max_value=20),
    tombstones_expired=st.booleans(),
)
def test_a_cleaned_log_holds_the_latest_value_of_each_key(
    tmp_path_factory: pytest.TempPathFactory,
    batches: History,
    map_keys: int,
    tombstones_expired: bool,
) -> None:
    directory = tmp_path_factory.mktemp("log")
    config = compacted_config(delete_retention_ms=0 if tombstones_expired else 10**12)
    log = PartitionLog.open(directory, "t", 0, config)
    written_end = sum(len(records) for _, records in batches)
    write(log, batches, NOW_MS)
    seal_all(log, NOW_MS + 1)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=OFFSET_MAP_ENTRY_BYTES * map_keys,
        io_max_bytes_per_second=float("inf"),
        backoff_ms=0,
        clock_ms=lambda: NOW_MS + 1,
    )
    clean_until_done(cleaner)

    expected = latest_per_key(batches, keep_tombstones=not tombstones_expired)
    assert read_all(log) == expected
    assert log.log_end_offset == written_end
    # The same after a restart: the swapped segments and their indexes are whole.
    log.close()
    reopened = PartitionLog.open(directory, "t", 0, config)
    reopened.high_watermark = reopened.log_end_offset
    assert read_all(reopened) == expected
    reopened.close()


def test_a_log_is_not_cleaned_below_the_dirty_ratio(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, "t", 0, compacted_config(min_cleanable_dirty_ratio=0.9))
    write(log, [("none", [(b"a", b"1")]) for _ in range(40)], NOW_MS)
    seal_all(log, NOW_MS + 1)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e9,
        backoff_ms=0,
    )
    assert clean_until_done(cleaner) == 1  # all of it is dirty the first time
    assert [offset for offset, _, _ in read_all(log)] == [39]
    write(log, [("none", [(b"a", b"2")])], NOW_MS)
    seal_all(log, NOW_MS + 2)
    assert clean_until_done(cleaner) == 0  # a 1-record dirty section is below 0.9
    assert 0 < cleaner.stats.dirty_ratios[("t", 0)] < 0.9
    log.close()


def test_a_delete_only_log_is_never_cleaned(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, "t", 0, compacted_config(cleanup_policy="delete"))
    write(log, [("none", [(b"a", b"1")]) for _ in range(20)], NOW_MS)
    seal_all(log, NOW_MS + 1)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e9,
        backoff_ms=0,
    )
    assert clean_until_done(cleaner) == 0
    assert len(read_all(log)) == 20
    log.close()


def test_an_idempotent_producers_last_batch_survives_empty(tmp_path: Path) -> None:
    """Its last sequence number must stay readable, or the producer's next batch would be
    refused as out of order after a restart."""
    log = PartitionLog.open(tmp_path, "t", 0, compacted_config())
    first = batch_of([(b"a", b"1")], producer_id=7, producer_epoch=0, base_sequence=0)
    log.append(first, validate_batches(first), now_ms=NOW_MS, leader_epoch=0)
    later = batch_of([(b"a", b"2")])
    log.append(later, validate_batches(later), now_ms=NOW_MS, leader_epoch=0)
    log.high_watermark = log.log_end_offset
    seal_all(log, NOW_MS + 1)
    clean_until_done(
        LogCleaner(
            lambda: [log],
            worker=ThreadWorker(),
            dedupe_buffer_size=1 << 20,
            io_max_bytes_per_second=1e9,
            backoff_ms=0,
        )
    )
    headers = list(log.batch_headers())
    assert [(h.base_offset, h.producer_id, h.records_count) for h in headers] == [
        (0, 7, 0),
        (1, -1, 1),
    ]
    assert read_all(log) == [(1, b"a", b"2")]
    log.close()


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_rebuilt_batch_keeps_its_codec_offsets_and_producer(codec: str) -> None:
    data = batch_of(
        [(b"a", b"1"), (b"b", None), (b"c", b"3")],
        codec,
        producer_id=3,
        producer_epoch=1,
        base_sequence=10,
    )
    header = parse_header(data)
    records = record_views(data, header)
    rebuilt = rebuild_batch(data, header, [records[1]])
    new = validate_batches(rebuilt)[0]
    assert (new.compression, new.last_offset_delta, new.records_count) == (CODECS[codec][0], 2, 1)
    assert (new.producer_id, new.producer_epoch, new.base_sequence) == (3, 1, 10)
    assert list(iter_records(rebuilt)) == [(1, b"b", None)]


def test_xerial_framed_snappy_stays_framed() -> None:
    """Java clients frame snappy as xerial does; what they wrote is written back so."""
    data = batch_of([(b"a", b"x" * 50_000), (b"b", b"y" * 50_000)], "snappy-xerial")
    header = parse_header(data)
    rebuilt = rebuild_batch(data, header, record_views(data, header)[1:])
    assert rebuilt[61:].startswith(b"\x82SNAPPY\x00")
    assert list(iter_records(rebuilt)) == [(1, b"b", b"y" * 50_000)]


def test_a_tombstone_stays_delete_retention_ms_after_its_first_cleaning(tmp_path: Path) -> None:
    """However old its timestamp, as Kafka (KIP-534): a consumer that reads the log from
    the start within delete.retention.ms of the cleaning sees the delete. The batch keeps
    its records' timestamps although its base timestamp now holds the delete horizon."""
    day_ms = 86_400_000
    written_ms = NOW_MS - 2 * day_ms
    now = [NOW_MS]
    log = PartitionLog.open(tmp_path, "t", 0, compacted_config(delete_retention_ms=day_ms))
    write(log, [("lz4", [(b"a", b"1"), (b"b", b"1")]), ("lz4", [(b"a", None)])], written_ms)
    seal_all(log, NOW_MS)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=1 << 20,
        io_max_bytes_per_second=1e9,
        backoff_ms=0,
        clock_ms=lambda: now[0],
    )
    assert clean_until_done(cleaner) == 1
    assert read_all(log) == [(1, b"b", b"1"), (2, b"a", None)]
    data = log.read(2, 1 << 20, upper_offset=log.log_end_offset)
    tombstones = parse_header(data)
    assert tombstones.delete_horizon_ms == NOW_MS + day_ms
    assert [record.timestamp for record in record_views(data, tombstones)] == [written_ms]
    now[0] = NOW_MS + day_ms - 1
    assert clean_until_done(cleaner) == 0
    now[0] = NOW_MS + day_ms
    assert clean_until_done(cleaner) == 1
    assert read_all(log) == [(1, b"b", b"1")]
    log.close()
