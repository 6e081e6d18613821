"""PartitionLog: append and read, rolls, KIP-74, bounds, recovery, retention, flush, time lookup."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import pytest
from brook_broker.storage.batch import (
    TIMESTAMP_TYPE_LOG_APPEND,
    iter_headers,
    parse_header,
    validate_batches,
)
from brook_broker.storage.log import (
    AppendInfo,
    LogConfig,
    OffsetOutOfRange,
    PartitionLog,
    wall_clock_ms,
)

from tests.support.batches import BASE_TIME_MS, CODECS, make_batch, payload, split_batches
from tests.support.fsync import count_fsyncs

NOW_MS = BASE_TIME_MS + 60_000


def open_log(tmp_path: Path, **config: int) -> PartitionLog:
    """The log of a replica that leads in epoch 0, as ``append`` writes it."""
    log = PartitionLog.open(tmp_path / "orders-0", "orders", 0, LogConfig(**config))
    log.leader_epochs.assign(0, log.log_end_offset)
    return log


def append(log: PartitionLog, *batches: bytes, now_ms: int = NOW_MS, **options: bool) -> AppendInfo:
    """Append as the only replica would: everything appended is committed at once."""
    records = b"".join(batches)
    info = log.append(records, validate_batches(records), now_ms=now_ms, leader_epoch=0, **options)
    log.high_watermark = log.log_end_offset
    return info


def consume(log: PartitionLog, offset: int, max_bytes: int = 1 << 20) -> list[tuple[int, bytes]]:
    """Fetch from ``offset`` until the log returns nothing, as a consumer would."""
    got: list[tuple[int, bytes]] = []
    while data := log.read(offset, max_bytes):
        got.extend(split_batches(data))
        offset = list(iter_headers(data))[-1][1].next_offset
    return got


def segment_files(log: PartitionLog) -> list[Path]:
    return sorted(log.directory.glob("*.log"))


def fill(log: PartitionLog, count: int, records_per_batch: int = 3) -> list[tuple[int, bytes]]:
    """Append ``count`` batches; returns what a consumer must read back."""
    sent = []
    for number in range(count):
        batch = make_batch(
            [b"value-%d-%d" % (number, index) * 5 for index in range(records_per_batch)]
        )
        info = append(log, batch)
        sent.append((info.base_offset, payload(batch)))
    return sent


def test_offsets_are_assigned_from_the_log_end(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    first = append(log, make_batch([b"a", b"b"], base_offset=55))
    second = append(log, make_batch([b"c"]), make_batch([b"d", b"e", b"f"]))
    assert first == AppendInfo(0, 1, 2, -1)
    assert second == AppendInfo(2, 5, 4, -1)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (0, 6, 6)
    assert [base for base, _ in consume(log, 0)] == [0, 2, 3]


def test_round_trip_across_segment_rolls_and_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=2000, index_interval_bytes=300)
    sent = fill(log, 60)
    assert len(segment_files(log)) > 5
    assert log.size_bytes == sum(path.stat().st_size for path in segment_files(log))
    assert consume(log, 0) == sent
    assert consume(log, 0, max_bytes=700) == sent
    log.close()
    reopened = open_log(tmp_path, segment_bytes=2000, index_interval_bytes=300)
    assert reopened.log_end_offset == 180
    assert consume(reopened, 0, max_bytes=500) == sent
    more = fill(reopened, 5)
    assert more[0][0] == 180
    assert consume(reopened, 0) == sent + more


def test_read_at_any_offset_starts_with_the_batch_holding_it(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=3000, index_interval_bytes=250)
    fill(log, 40, records_per_batch=4)
    for offset in range(log.log_end_offset):
        header = parse_header(log.read(offset, 1))
        assert header.base_offset <= offset <= header.last_offset


def test_first_batch_is_whole_even_beyond_max_bytes(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    big = make_batch([b"x" * 5000])
    small = make_batch([b"y" * 10])
    append(log, big, small, small)
    assert log.read(0, 100) == log.read(0, len(big))
    assert len(log.read(0, 100)) == len(big)
    assert len(log.read(0, len(big) + len(small) - 1)) == len(big)
    assert len(log.read(0, len(big) + len(small))) == len(big) + len(small)
    assert len(log.read(1, 2 * len(small) - 1)) == len(small)
    assert len(log.read(1, 0)) == len(small)
    assert len(log.read(1, 10**9)) == 2 * len(small)


def test_reads_stop_below_the_upper_offset_at_whole_batches(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=1)
    for _ in range(5):
        append(log, make_batch([b"a", b"b"]))  # offsets 0-1, 2-3, ..., 8-9

    def bases(offset: int, **bound: int) -> list[int]:
        return [base for base, _ in split_batches(log.read(offset, 10**6, **bound))]

    assert bases(0, upper_offset=4) == [0, 2]
    assert bases(0, upper_offset=5) == [0, 2]  # the batch 4-5 is not wholly below
    assert bases(0, upper_offset=6) == [0, 2, 4]
    assert bases(3, upper_offset=4) == [2]
    assert log.read(4, 10**6, upper_offset=4) == b""
    assert log.read(4, 10**6, upper_offset=5) == b""
    log.high_watermark = 6
    assert bases(0) == [0, 2, 4]
    assert log.read(6, 100) == b""
    assert log.read(8, 100) == b""  # between the high watermark and the log end
    assert bases(0, upper_offset=10) == [0, 2, 4, 6, 8]


def test_offsets_outside_the_log_are_out_of_range(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 2)
    assert log.read(6, 100) == b""  # the log end offset itself: nothing yet
    with pytest.raises(OffsetOutOfRange) as raised:
        log.read(7, 100)
    assert (raised.value.offset, raised.value.log_start_offset, raised.value.log_end_offset) == (
        7,
        0,
        6,
    )
    with pytest.raises(OffsetOutOfRange):
        log.read(-1, 100)


def test_many_batches_in_one_append_are_written_whole(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    batches = [make_batch([b"%d" % number]) for number in range(700)]  # 1,400 buffers > IOV_MAX
    info = append(log, *batches)
    assert (info.base_offset, info.last_offset, info.record_count) == (0, 699, 700)
    assert consume(log, 0) == [(number, payload(batch)) for number, batch in enumerate(batches)]


def test_one_append_is_one_pwritev_of_views_into_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    records = b"".join(make_batch([b"%d" % number * 100]) for number in range(3))
    calls: list[list[bytes | memoryview]] = []
    real_pwritev = os.pwritev

    def recording_pwritev(fd: int, buffers: list[bytes | memoryview], position: int) -> int:
        calls.append(list(buffers))
        return real_pwritev(fd, buffers, position)

    monkeypatch.setattr(os, "pwritev", recording_pwritev)
    log.append(records, validate_batches(records), now_ms=NOW_MS, leader_epoch=0)
    (buffers,) = calls
    assert len(buffers) == 6  # base offset and leader epoch + the rest, for each batch
    views = [buffer for buffer in buffers if isinstance(buffer, memoryview)]
    assert len(views) == 3
    assert all(view.obj is records for view in views)  # the payload was not copied


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwritev = os.pwritev

    def at_most_100_bytes(fd: int, buffers: list[bytes], position: int) -> int:
        head = bytes(memoryview(b"".join(bytes(buffer) for buffer in buffers))[:100])
        return real_pwritev(fd, [head], position)

    log = open_log(tmp_path)
    monkeypatch.setattr(os, "pwritev", at_most_100_bytes)
    sent = fill(log, 3)
    monkeypatch.undo()
    assert consume(log, 0) == sent


def test_failed_write_leaves_the_log_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    sent = fill(log, 2)
    size = log.size_bytes
    real_pwritev = os.pwritev
    calls = []

    def disk_full_after_a_few_bytes(fd: int, buffers: list[bytes], position: int) -> int:
        calls.append(position)
        if len(calls) == 1:
            return real_pwritev(fd, [bytes(buffers[0])[:5]], position)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", disk_full_after_a_few_bytes)
    with pytest.raises(OSError):
        fill(log, 1)
    monkeypatch.undo()
    assert (log.log_end_offset, log.size_bytes) == (6, size)
    assert segment_files(log)[-1].stat().st_size == size
    more = fill(log, 1)
    assert consume(log, 0) == sent + more


def test_headers_must_cover_the_records(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    batch = make_batch([b"a"])
    with pytest.raises(ValueError):
        log.append(batch + b"extra", validate_batches(batch), now_ms=NOW_MS, leader_epoch=0)
    with pytest.raises(ValueError):
        log.append(b"", [], now_ms=NOW_MS, leader_epoch=0)
    assert log.log_end_offset == 0


def test_log_append_time_stamps_a_copy_of_each_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    records = make_batch([b"a", b"b"]) + make_batch([b"c"])
    original = bytes(records)
    info = log.append(
        records, validate_batches(records), now_ms=NOW_MS, leader_epoch=0, log_append_time=True
    )
    log.high_watermark = log.log_end_offset
    assert info.log_append_time_ms == NOW_MS
    assert records == original
    stored = log.read(0, 10**6)
    headers = validate_batches(stored)  # CRCs were recomputed
    assert [header.base_offset for header in headers] == [0, 2]
    for header in headers:
        assert header.attributes & TIMESTAMP_TYPE_LOG_APPEND
        assert header.max_timestamp == NOW_MS
    assert log.offset_for_timestamp(NOW_MS) == (0, NOW_MS)
    assert log.offset_for_timestamp(NOW_MS + 1) is None


def test_roll_by_segment_ms(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_ms=1000)
    now = wall_clock_ms()
    log.roll_if_due(now + 5000)
    assert len(segment_files(log)) == 1  # never an empty segment
    append(log, make_batch([b"a"]), now_ms=now)
    log.roll_if_due(now + 500)
    assert len(segment_files(log)) == 1
    log.roll_if_due(now + 2000)
    assert len(segment_files(log)) == 2
    append(log, make_batch([b"b"]), now_ms=now + 2000)
    append(log, make_batch([b"c"]), now_ms=now + 3000)  # due on append too
    assert [path.name for path in segment_files(log)] == [
        "00000000000000000000.log",
        "00000000000000000001.log",
        "00000000000000000002.log",
    ]
    assert [base for base, _ in consume(log, 0)] == [0, 1, 2]


def test_update_config_applies_to_the_next_append(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 3)
    log.update_config(LogConfig(segment_bytes=100))
    fill(log, 2)
    assert len(segment_files(log)) == 3


# Recovery


def _batch_ends(log: PartitionLog) -> list[tuple[int, int]]:
    """``(end position, next offset)`` of every batch in the last segment."""
    data = segment_files(log)[-1].read_bytes()
    return [(position + header.size, header.next_offset) for position, header in iter_headers(data)]


def test_recovery_cuts_a_tail_cut_mid_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=3000, index_interval_bytes=200)
    sent = fill(log, 30)
    ends = _batch_ends(log)
    log.close()
    path = segment_files(log)[-1]
    end, next_offset = ends[-3]
    os.truncate(path, end + 30)
    recovered = open_log(tmp_path, segment_bytes=3000, index_interval_bytes=200)
    assert recovered.log_end_offset == recovered.high_watermark == next_offset
    assert path.stat().st_size == end
    kept = [batch for batch in sent if batch[0] < next_offset]
    assert consume(recovered, 0) == kept
    more = fill(recovered, 2)
    assert more[0][0] == next_offset
    assert consume(recovered, 0) == kept + more
    for offset in range(recovered.log_end_offset):
        assert parse_header(recovered.read(offset, 1)).last_offset >= offset


def test_recovery_cuts_garbage_over_the_tail(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=3000, index_interval_bytes=200)
    sent = fill(log, 30)
    ends = _batch_ends(log)
    log.close()
    path = segment_files(log)[-1]
    with path.open("r+b") as file:
        file.seek(-40, os.SEEK_END)
        file.write(os.urandom(40))
    recovered = open_log(tmp_path, segment_bytes=3000, index_interval_bytes=200)
    end, next_offset = ends[-2]  # the last batch's bytes were overwritten
    assert recovered.log_end_offset == next_offset
    assert path.stat().st_size == end
    assert consume(recovered, 0) == sent[:-1]


def test_recovery_cuts_garbage_after_the_last_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    sent = fill(log, 5)
    log.close()
    with segment_files(log)[-1].open("ab") as file:
        file.write(b"\x00" * 4096)  # as a torn, zero-filled write leaves it
    recovered = open_log(tmp_path)
    assert recovered.log_end_offset == 15
    assert consume(recovered, 0) == sent


def test_recovery_cuts_from_a_batch_with_a_bad_crc(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    sent = fill(log, 6)
    ends = _batch_ends(log)
    log.close()
    path = segment_files(log)[-1]
    data = bytearray(path.read_bytes())
    data[ends[2][0] + 70] ^= 0xFF  # a record byte of the fourth batch
    path.write_bytes(bytes(data))
    recovered = open_log(tmp_path)
    assert recovered.log_end_offset == ends[2][1]
    assert consume(recovered, 0) == sent[:3]


def test_a_segment_cut_to_nothing_recovers_to_its_base_offset(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=1000)
    sent = fill(log, 20)
    log.close()
    last = segment_files(log)[-1]
    base_offset = int(last.stem)
    last.write_bytes(b"garbage" * 3)
    recovered = open_log(tmp_path, segment_bytes=1000)
    assert recovered.log_end_offset == base_offset
    assert consume(recovered, 0) == [batch for batch in sent if batch[0] < base_offset]


def test_data_written_by_a_process_that_died_is_read_back(tmp_path: Path) -> None:
    # Appends go to the page cache: without close or flush, a new opener sees them all.
    dead = open_log(tmp_path, segment_bytes=2000, index_interval_bytes=100)
    sent = fill(dead, 40)
    survivor = open_log(tmp_path, segment_bytes=2000, index_interval_bytes=100)
    assert survivor.log_end_offset == 120
    assert consume(survivor, 0) == sent


def test_wrong_or_missing_indexes_of_older_segments_are_rebuilt(tmp_path: Path) -> None:
    config = {"segment_bytes": 2000, "index_interval_bytes": 100}
    log = open_log(tmp_path, **config)
    sent = fill(log, 40)
    log.close()
    files = segment_files(log)
    files[0].with_suffix(".index").unlink()
    files[1].with_suffix(".timeindex").write_bytes(b"\x01" * 7)
    files[2].with_suffix(".index").write_bytes(bytes.fromhex("00000001 00000005"))
    good_index = files[3].with_suffix(".index").read_bytes()
    reopened = open_log(tmp_path, **config)
    assert consume(reopened, 0) == sent
    for offset in range(0, reopened.log_end_offset, 7):
        assert parse_header(reopened.read(offset, 1)).last_offset >= offset
    assert files[0].with_suffix(".index").stat().st_size > 0
    assert files[3].with_suffix(".index").read_bytes() == good_index


def test_index_files_without_a_segment_are_removed(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 2)
    log.close()
    stray = log.directory / "00000000000000000099.index"
    stray.write_bytes(b"")
    open_log(tmp_path)
    assert not stray.exists()


# Retention


def _timed_log(tmp_path: Path, **config: int) -> tuple[PartitionLog, list[tuple[int, bytes]]]:
    """Batches one second apart from BASE_TIME_MS, about three per segment."""
    log = open_log(tmp_path, segment_bytes=600, **config)
    sent = []
    for second in range(12):
        batch = make_batch([b"r%d" % second * 30], timestamps=[BASE_TIME_MS + second * 1000])
        sent.append((append(log, batch).base_offset, payload(batch)))
    assert len(segment_files(log)) >= 4
    return log, sent


def test_retention_ms_deletes_old_segments_and_moves_the_log_start(tmp_path: Path) -> None:
    log, sent = _timed_log(tmp_path, retention_ms=5000)
    segments_before = len(segment_files(log))
    now = BASE_TIME_MS + 11_000
    deleted = log.enforce_retention(now)
    assert deleted > 0
    assert len(segment_files(log)) == segments_before - deleted
    assert log.log_start_offset == int(segment_files(log)[0].stem) > 0
    kept = consume(log, log.log_start_offset)
    assert kept == [batch for batch in sent if batch[0] >= log.log_start_offset]
    # The oldest batch kept is in a segment whose newest record is within retention.ms.
    assert any(
        BASE_TIME_MS + second * 1000 >= now - 5000 for second in range(kept[0][0], kept[-1][0] + 1)
    )
    with pytest.raises(OffsetOutOfRange) as raised:
        log.read(0, 100)
    assert raised.value.log_start_offset == log.log_start_offset
    assert log.enforce_retention(now) == 0


def test_retention_ms_rolls_and_deletes_an_expired_active_segment(tmp_path: Path) -> None:
    log, _ = _timed_log(tmp_path, retention_ms=5000)
    log.enforce_retention(BASE_TIME_MS + 10**6)
    assert log.log_start_offset == log.log_end_offset == 12
    assert log.size_bytes == 0
    assert [path.name for path in segment_files(log)] == ["00000000000000000012.log"]
    assert log.enforce_retention(BASE_TIME_MS + 10**7) == 0  # the empty active segment stays
    info = append(log, make_batch([b"new"]))
    assert info.base_offset == 12
    assert split_batches(log.read(12, 100))[0][0] == 12
    log.close()
    assert open_log(tmp_path).log_start_offset == 12


def test_retention_bytes_keeps_at_least_retention_bytes(tmp_path: Path) -> None:
    log, sent = _timed_log(tmp_path)
    sizes = [path.stat().st_size for path in segment_files(log)]
    limit = sum(sizes[2:]) + 1  # one byte more than the newest segments but the first two
    log.update_config(LogConfig(segment_bytes=600, retention_bytes=limit))
    assert log.enforce_retention(NOW_MS) == 1
    assert log.size_bytes == sum(sizes[1:]) >= limit
    assert consume(log, log.log_start_offset) == [
        batch for batch in sent if batch[0] >= log.log_start_offset
    ]


def test_retention_bytes_zero_empties_the_log(tmp_path: Path) -> None:
    log, _ = _timed_log(tmp_path, retention_bytes=0)
    log.enforce_retention(NOW_MS)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (12, 12, 0)


def test_retention_never_passes_the_high_watermark(tmp_path: Path) -> None:
    log, _ = _timed_log(tmp_path, retention_ms=0)
    log.high_watermark = 1
    assert log.enforce_retention(BASE_TIME_MS + 10**6) == 0
    second_segment = int(segment_files(log)[1].stem)
    log.high_watermark = second_segment
    assert log.enforce_retention(BASE_TIME_MS + 10**6) == 1
    assert log.log_start_offset == second_segment


def test_retention_with_no_limits_deletes_nothing(tmp_path: Path) -> None:
    log, sent = _timed_log(tmp_path, retention_ms=-1, retention_bytes=-1)
    assert log.enforce_retention(BASE_TIME_MS + 10**9) == 0
    assert consume(log, 0) == sent


# Offset for timestamp


def test_offset_for_timestamp_across_codecs_and_segments(tmp_path: Path) -> None:
    config = {"segment_bytes": 1500, "index_interval_bytes": 150}
    log = open_log(tmp_path, **config)
    records: list[tuple[int, int]] = []  # (offset, timestamp) of every record
    codecs = itertools.islice(itertools.cycle(sorted(CODECS)), 30)
    for number, codec in enumerate(codecs):
        # Timestamps rise overall but not within a batch, and one batch goes back in time.
        start = BASE_TIME_MS + (500 if number == 17 else number * 100)
        timestamps = [start + 40, start + 10, start + 70, start + 70]
        batch = make_batch(
            [b"%s-%d" % (codec.encode(), number) * 20] * 4, timestamps=timestamps, codec=codec
        )
        base = append(log, batch).base_offset
        records.extend((base + index, timestamp) for index, timestamp in enumerate(timestamps))
    assert len(segment_files(log)) > 3

    def expected(target: int) -> tuple[int, int] | None:
        return next(((offset, ts) for offset, ts in records if ts >= target), None)

    targets = [BASE_TIME_MS - 1, *range(BASE_TIME_MS, BASE_TIME_MS + 3100, 7), BASE_TIME_MS + 10**6]
    for target in targets:
        assert log.offset_for_timestamp(target) == expected(target), target
    log.close()
    reopened = open_log(tmp_path, **config)
    for target in targets:
        assert reopened.offset_for_timestamp(target) == expected(target), target


def test_offset_for_timestamp_on_an_empty_log_is_none(tmp_path: Path) -> None:
    assert open_log(tmp_path).offset_for_timestamp(0) is None


# Flush policy and lifecycle


def test_flush_messages_fsyncs_after_that_many_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path, flush_messages=3)
    synced = count_fsyncs(monkeypatch)
    append(log, make_batch([b"a", b"b"]))
    assert synced == []
    append(log, make_batch([b"c"]))
    assert synced
    synced.clear()
    append(log, make_batch([b"d"]))
    assert synced == []


def test_no_fsync_by_default_until_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path, segment_bytes=500)
    synced = count_fsyncs(monkeypatch)
    fill(log, 20)
    assert synced == []
    before = log.last_flush_ms
    log.close()
    assert synced  # close flushes
    assert log.last_flush_ms >= before


def test_flush_with_nothing_written_does_not_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    fill(log, 1)
    log.flush()
    synced = count_fsyncs(monkeypatch)
    log.flush()
    assert synced == []


def test_delete_removes_the_directory(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 2)
    log.delete()
    assert not log.directory.exists()
