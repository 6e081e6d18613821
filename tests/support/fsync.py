"""Watching fsync calls, for tests of flush policies."""

from __future__ import annotations

import os

import pytest


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every ``os.fsync`` still syncs and appends its file descriptor here."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return synced
