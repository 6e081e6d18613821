"""Checkpoint files: written whole or not at all, and the high watermarks read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from brook_broker.storage.checkpoint import (
    HIGH_WATERMARK_FILE,
    read_high_watermarks,
    write_atomically,
    write_high_watermarks,
)


def test_high_watermarks_round_trip(tmp_path: Path) -> None:
    assert read_high_watermarks(tmp_path) == {}
    marks = {("orders", 0): 17, ("my topic-with-dashes", 12): 0}
    write_high_watermarks(tmp_path, marks)
    assert read_high_watermarks(tmp_path) == marks
    write_high_watermarks(tmp_path, {})
    assert read_high_watermarks(tmp_path) == {}
    assert [path.name for path in tmp_path.iterdir()] == [HIGH_WATERMARK_FILE]


@pytest.mark.parametrize("text", ["", "0\n2\norders 0 5\n", "1\n0\n", "0\n1\norders x 5\n"])
def test_an_unreadable_checkpoint_is_ignored(tmp_path: Path, text: str) -> None:
    (tmp_path / HIGH_WATERMARK_FILE).write_text(text)
    assert read_high_watermarks(tmp_path) == {}


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file"
    write_atomically(path, "old\n")

    def failing_replace(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", failing_replace)
    with pytest.raises(OSError):
        write_atomically(path, "new\n")
    assert path.read_text() == "old\n"
