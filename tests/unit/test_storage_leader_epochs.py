"""LeaderEpochCache: Kafka's OffsetForLeaderEpoch answers, truncation both ways, the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from brook_broker.storage.leader_epochs import CHECKPOINT_FILE, EpochEntry, LeaderEpochCache


def cache_with(tmp_path: Path, *entries: tuple[int, int]) -> LeaderEpochCache:
    cache = LeaderEpochCache(tmp_path)
    for epoch, start_offset in entries:
        cache.assign(epoch, start_offset)
    return cache


def test_an_empty_cache_knows_nothing(tmp_path: Path) -> None:
    cache = LeaderEpochCache(tmp_path)
    assert cache.latest_epoch == -1
    assert cache.end_offset_for(0, 10) == (-1, -1)
    assert cache.epoch_for(5) == -1
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_end_offset_for_follows_kafka(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, (1, 0), (2, 10), (5, 30))
    assert cache.end_offset_for(5, 42) == (5, 42)  # the latest epoch ends at the log end
    assert cache.end_offset_for(1, 42) == (1, 10)
    assert cache.end_offset_for(2, 42) == (2, 30)
    assert cache.end_offset_for(3, 42) == (2, 30)  # unknown epoch: the largest below it
    assert cache.end_offset_for(4, 42) == (2, 30)
    assert cache.end_offset_for(0, 42) == (0, 0)  # below every epoch: the first start
    assert cache.end_offset_for(6, 42) == (-1, -1)  # newer than any epoch known here
    assert cache.end_offset_for(-1, 42) == (-1, -1)


def test_epoch_for_offset(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, (1, 5), (3, 10))
    assert [cache.epoch_for(offset) for offset in (0, 4, 5, 9, 10, 99)] == [-1, -1, 1, 1, 3, 3]


def test_assign_keeps_entries_increasing(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, (1, 0), (2, 10), (3, 20))
    cache.assign(3, 25)  # same epoch, later start: nothing to record
    assert cache.entries == [(1, 0), (2, 10), (3, 20)]
    cache.assign(4, 15)  # an earlier start removes the entries it overtakes
    assert cache.entries == [(1, 0), (2, 10), (4, 15)]
    cache.assign(2, 12)  # an older epoch replaces itself and the newer ones
    assert cache.entries == [(1, 0), (2, 12)]
    with pytest.raises(ValueError):
        cache.assign(-1, 3)


def test_truncation_from_the_end(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, (1, 0), (2, 10), (3, 20))
    cache.truncate_from_end(25)
    assert cache.latest_epoch == 3
    cache.truncate_from_end(20)
    assert cache.entries == [(1, 0), (2, 10)]
    cache.truncate_from_end(0)
    assert cache.entries == []


def test_truncation_from_the_start(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, (1, 0), (2, 10), (3, 20))
    cache.truncate_from_start(0)
    assert cache.entries == [(1, 0), (2, 10), (3, 20)]
    cache.truncate_from_start(15)
    assert cache.entries == [(2, 15), (3, 20)]
    cache.truncate_from_start(20)
    assert cache.entries == [(3, 20)]
    cache.truncate_from_start(50)
    assert cache.entries == [(3, 50)]


def test_the_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    cache_with(tmp_path, (1, 0), (4, 17))
    assert (tmp_path / CHECKPOINT_FILE).read_text() == "0\n2\n1 0\n4 17\n"
    reloaded = LeaderEpochCache(tmp_path)
    assert reloaded.entries == [EpochEntry(1, 0), EpochEntry(4, 17)]
    reloaded.clear()
    assert LeaderEpochCache(tmp_path).entries == []
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "1\n1\n0 0\n", "0\n2\n1 0\n", "0\n2\n3 0\n2 5\n", "0\n1\nx y\n"],
)
def test_an_unreadable_checkpoint_is_ignored(tmp_path: Path, text: str) -> None:
    (tmp_path / CHECKPOINT_FILE).write_text(text)
    assert LeaderEpochCache(tmp_path).entries == []
