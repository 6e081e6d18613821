"""The sparse offset and time indexes: lookups, persistence, and files that cannot be right."""

from __future__ import annotations

from pathlib import Path

from brook_broker.storage.index import OffsetIndex, TimeIndex


def _offset_index(tmp_path: Path) -> OffsetIndex:
    index = OffsetIndex(tmp_path / "00000000000000001000.index", 1000)
    for offset, position in ((1010, 4100), (1025, 8300), (1040, 12500)):
        index.add(offset, position)
    index.persist()
    return index


def test_offset_lookup_returns_the_last_indexed_batch_at_or_before(tmp_path: Path) -> None:
    index = _offset_index(tmp_path)
    assert index.lookup(1000) == 0
    assert index.lookup(1009) == 0
    assert index.lookup(1010) == 4100
    assert index.lookup(1024) == 4100
    assert index.lookup(1039) == 8300
    assert index.lookup(10**9) == 12500
    assert index.last_offset == 1040
    assert index.last_position == 12500


def test_floor_position_returns_the_last_indexed_boundary_at_or_before(tmp_path: Path) -> None:
    index = _offset_index(tmp_path)
    assert index.floor_position(4099) == 0
    assert index.floor_position(4100) == 4100
    assert index.floor_position(12499) == 8300
    assert index.floor_position(99999) == 12500


def test_offset_index_survives_reload_from_its_file(tmp_path: Path) -> None:
    written = _offset_index(tmp_path)
    written.release()
    assert written.path.stat().st_size == 3 * 8
    loaded = OffsetIndex(written.path, 1000)
    assert loaded.load()
    assert list(loaded.keys) == [10, 25, 40]
    assert list(loaded.values) == [4100, 8300, 12500]


def test_index_files_that_cannot_be_right_do_not_load(tmp_path: Path) -> None:
    path = tmp_path / "00000000000000000000.index"
    assert not OffsetIndex(path, 0).load()  # missing
    path.write_bytes(b"\x00" * 12)  # not a whole number of entries
    assert not OffsetIndex(path, 0).load()
    path.write_bytes(bytes.fromhex("00000005 00000100 00000003 00000200"))  # offsets go back
    assert not OffsetIndex(path, 0).load()
    path.write_bytes(bytes.fromhex("00000003 00000100 00000005 00000200"))
    assert OffsetIndex(path, 0).load()


def test_reset_forgets_entries_in_memory_and_on_disk(tmp_path: Path) -> None:
    index = _offset_index(tmp_path)
    index.reset()
    assert len(index) == 0
    assert index.lookup(1040) == 0
    assert index.path.stat().st_size == 0


def test_time_lookup_starts_at_the_last_entry_below_the_target(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "00000000000000000100.timeindex", 100)
    for timestamp, offset in ((1000, 100), (2000, 130), (3000, 170)):
        index.add(timestamp, offset)
    assert index.lookup(500) == 100  # no entry below: from the segment start
    assert index.lookup(1000) == 100
    assert index.lookup(1001) == 100
    assert index.lookup(2000) == 100
    assert index.lookup(2001) == 130
    assert index.lookup(99999) == 170
    assert index.last_timestamp == 3000
    assert index.last_offset == 170
    index.persist()
    index.flush()
    index.release()
    assert index.path.stat().st_size == 3 * 12
    reloaded = TimeIndex(index.path, 100)
    assert reloaded.load()
    assert reloaded.lookup(2001) == 130


def test_empty_time_index_has_no_timestamp(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "00000000000000000000.timeindex", 0)
    assert index.last_timestamp == -1
    assert index.lookup(123) == 0
