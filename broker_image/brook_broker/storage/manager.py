"""All partition logs of a broker under one data directory, and their background upkeep.

Each partition lives in ``<data dir>/<topic>-<partition>/``. Anything else in the data
directory (such as the metadata directory, which has no ``-<digits>`` suffix) is left
alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .checkpoint import write_atomically
from .log import LogConfig, PartitionLog, wall_clock_ms

logger = logging.getLogger(__name__)

PARTITION_METADATA_FILE = "partition.metadata"
"""Names the topic id a partition directory belongs to, since names can be reused."""
_MIN_SLEEP_MS = 10
"""Floor of the maintenance loop's sleep, so a tiny flush.ms cannot make it spin."""


def _read_topic_id(directory: Path) -> uuid.UUID | None:
    """The topic id recorded in a partition directory, if any (Kafka's partition.metadata)."""
    try:
        lines = (directory / PARTITION_METADATA_FILE).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == "topic_id":
            try:
                return uuid.UUID(value.strip())
            except ValueError:
                return None
    return None


def _write_topic_id(directory: Path, topic_id: uuid.UUID) -> None:
    write_atomically(directory / PARTITION_METADATA_FILE, f"version: 0\ntopic_id: {topic_id}\n")


def partition_directory_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_partition_directory_name(name: str) -> tuple[str, int] | None:
    """``(topic, partition)`` for a name this manager would have made, else None."""
    topic, separator, number = name.rpartition("-")
    if not (separator and topic and number.isascii() and number.isdigit()):
        return None
    if str(int(number)) != number:
        return None
    return topic, int(number)


class LogManager:
    """Opens, creates and deletes partition logs, and runs retention, time-based rolls and
    time-based flushes for all of them."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._logs: dict[tuple[str, int], PartitionLog] = {}

    def open_existing(self, config_for: Callable[[str, int], LogConfig | None]) -> None:
        """Open every partition directory; ``config_for`` returning None means the topic is
        gone, and that partition's directory is removed."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.data_dir.iterdir()):
            parsed = parse_partition_directory_name(path.name) if path.is_dir() else None
            if parsed is None or parsed in self._logs:
                continue
            topic, partition = parsed
            config = config_for(topic, partition)
            if config is None:
                logger.info("removing %s: its topic no longer exists", path.name)
                shutil.rmtree(path)
                continue
            self._logs[parsed] = PartitionLog.open(path, topic, partition, config)
        logger.info("opened %d partition logs", len(self._logs))

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def create(
        self, topic: str, partition: int, config: LogConfig, topic_id: uuid.UUID | None = None
    ) -> PartitionLog:
        """The partition's log, created if missing; an existing log is returned as it is.

        With ``topic_id``, the log must belong to that topic: a log left by an earlier
        topic of the same name (deleted while this broker was away) is removed first,
        and the id is recorded in the partition directory.
        """
        key = (topic, partition)
        directory = self.data_dir / partition_directory_name(topic, partition)
        recorded = None if topic_id is None else _read_topic_id(directory)
        if recorded is not None and recorded != topic_id:
            logger.warning(
                "removing %s: it belongs to topic id %s, not %s", directory.name, recorded, topic_id
            )
            stale = self._logs.pop(key, None)
            if stale is not None:
                stale.delete()
            else:
                shutil.rmtree(directory, ignore_errors=True)
            recorded = None
        log = self._logs.get(key)
        if log is None:
            log = PartitionLog.open(directory, topic, partition, config)
            self._logs[key] = log
        if topic_id is not None and recorded is None:
            _write_topic_id(directory, topic_id)
        return log

    def delete(self, topic: str, partition: int) -> None:
        """Close and remove one partition's log (a replica moved away), if it is here."""
        log = self._logs.pop((topic, partition), None)
        if log is not None:
            log.delete()

    def delete_topic(self, topic: str) -> None:
        """Close and remove the logs of every partition of ``topic``."""
        for key in [key for key in self._logs if key[0] == topic]:
            self._logs.pop(key).delete()

    def partitions(self) -> Iterator[tuple[str, int, PartitionLog]]:
        """``(topic, partition, log)`` of every open log (a snapshot: safe to change the
        manager while iterating)."""
        for (topic, partition), log in list(self._logs.items()):
            yield topic, partition, log

    async def run_maintenance(self, check_interval_ms: int) -> None:
        """Forever: every ``check_interval_ms`` roll segments older than segment.ms and
        enforce retention; flush each log whose flush.ms has passed."""
        next_check_ms = 0
        while True:
            now_ms = wall_clock_ms()
            if now_ms >= next_check_ms:
                self._check_segments(now_ms)
                next_check_ms = now_ms + check_interval_ms
            wake_ms = min(next_check_ms, self._flush_due(now_ms))
            await asyncio.sleep(max(wake_ms - wall_clock_ms(), _MIN_SLEEP_MS) / 1000)

    def _check_segments(self, now_ms: int) -> None:
        for topic, partition, log in self.partitions():
            try:
                log.roll_if_due(now_ms)
                log.enforce_retention(now_ms)
            except Exception:
                logger.warning("%s-%d: retention failed", topic, partition, exc_info=True)

    def _flush_due(self, now_ms: int) -> float:
        """Flush the logs whose flush.ms has passed; returns when the next one is due."""
        next_due: float = math.inf
        for topic, partition, log in self.partitions():
            flush_ms = log.config.flush_ms
            if flush_ms < 0:
                continue
            if now_ms - log.last_flush_ms >= flush_ms:
                try:
                    log.flush()
                except Exception:
                    logger.warning("%s-%d: flush failed", topic, partition, exc_info=True)
            due = log.last_flush_ms + flush_ms
            next_due = min(next_due, due if due > now_ms else now_ms + flush_ms)
        return next_due

    def close(self) -> None:
        """Flush and close every log."""
        for topic, partition, log in self.partitions():
            try:
                log.close()
            except OSError:
                logger.warning("%s-%d: close failed", topic, partition, exc_info=True)
        self._logs.clear()
