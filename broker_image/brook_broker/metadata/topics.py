"""The topic registry of a single broker: topics, their ids and overrides, producer ids.

Everything is kept as JSON files in ``<data_dir>/metadata/``, each replaced atomically
(write a temporary file, fsync, rename, fsync the directory), so a crash leaves either
the old or the new state, never half of one. The interface is deliberately narrow: a
replicated quorum can later hold the same state behind the same methods.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kio.schema.errors import ErrorCode

from .errors import ApiError
from .topic_config import validate_overrides

log = logging.getLogger(__name__)

MAX_TOPIC_NAME_LENGTH = 249
PRODUCER_ID_BLOCK = 1000
"""Producer ids are reserved on disk this many at a time, so most allocations write nothing."""

_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
_TOPICS_FILE = "topics.json"
_PRODUCER_IDS_FILE = "producer_ids.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Topic:
    name: str
    topic_id: uuid.UUID
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)
    """Config overrides by Kafka name; everything else takes the broker's defaults."""


def validate_topic_name(name: str) -> None:
    """Kafka's rules for topic names (they become directory and metric names)."""
    if not name:
        raise ApiError(
            ErrorCode.invalid_topic_exception, "Topic name is illegal, it can't be empty"
        )
    if name in (".", ".."):
        raise ApiError(ErrorCode.invalid_topic_exception, 'Topic name cannot be "." or ".."')
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise ApiError(
            ErrorCode.invalid_topic_exception,
            f"Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_LENGTH} "
            f"characters, topic name: {name}",
        )
    if not _LEGAL_TOPIC_NAME.fullmatch(name):
        raise ApiError(
            ErrorCode.invalid_topic_exception,
            f'Topic name "{name}" is illegal, it contains a character other than '
            "ASCII alphanumerics, '.', '_' and '-'",
        )


class TopicRegistry:
    def __init__(self, directory: Path) -> None:
        """Open (or start) the registry kept in ``directory``."""
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._topics: dict[str, Topic] = {}
        self._by_id: dict[uuid.UUID, Topic] = {}
        for topic in _load_topics(directory / _TOPICS_FILE):
            self._index(topic)
        self._next_producer_id = _load_producer_id_block(directory / _PRODUCER_IDS_FILE)
        self._producer_id_limit = self._next_producer_id
        log.info("topic registry opened", extra={"topics": len(self._topics)})

    # --- reads -------------------------------------------------------------------------

    def get(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def get_by_id(self, topic_id: uuid.UUID) -> Topic | None:
        return self._by_id.get(topic_id)

    def list_topics(self) -> list[Topic]:
        return sorted(self._topics.values(), key=lambda topic: topic.name)

    # --- changes -----------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Iterable[tuple[str, str | None]] = (),
        *,
        validate_only: bool = False,
    ) -> Topic:
        """Create a topic, or with ``validate_only`` check that it could be created."""
        validate_topic_name(name)
        if name in self._topics:
            raise ApiError(ErrorCode.topic_already_exists, f"Topic '{name}' already exists.")
        colliding = next(
            (other for other in self._topics if _metric_name(other) == _metric_name(name)), None
        )
        if colliding is not None:
            raise ApiError(
                ErrorCode.invalid_topic_exception,
                f"Topic '{name}' collides with existing topic: {colliding} "
                "('.' and '_' are the same in metric names)",
            )
        _check_partitions(partitions)
        if replication_factor < 1:
            raise ApiError(
                ErrorCode.invalid_replication_factor, "Replication factor must be larger than 0."
            )
        topic = Topic(
            name,
            _new_topic_id(self._by_id),
            partitions,
            replication_factor,
            validate_overrides(configs),
        )
        if not validate_only:
            self._index(topic)
            self._save_topics()
        return topic

    def delete_topic(self, name: str) -> Topic:
        topic = self._require(name)
        del self._topics[name]
        del self._by_id[topic.topic_id]
        self._save_topics()
        return topic

    def add_partitions(self, name: str, total: int, *, validate_only: bool = False) -> Topic:
        """Grow a topic to ``total`` partitions; partitions can never be removed."""
        topic = self._require(name)
        if total < topic.partitions:
            raise ApiError(
                ErrorCode.invalid_partitions,
                f"Topic currently has {topic.partitions} partitions, which is higher than "
                f"the requested {total}.",
            )
        if total == topic.partitions:
            raise ApiError(
                ErrorCode.invalid_partitions, f"Topic already has {topic.partitions} partitions."
            )
        _check_partitions(total)
        return self._replace(replace(topic, partitions=total), validate_only)

    def alter_configs(
        self, name: str, configs: Mapping[str, str], *, validate_only: bool = False
    ) -> Topic:
        """Replace a topic's config overrides with ``configs``."""
        topic = self._require(name)
        return self._replace(
            replace(topic, configs=validate_overrides(configs.items())), validate_only
        )

    def allocate_producer_id(self) -> int:
        """A producer id never handed out before, not even before a restart."""
        if self._next_producer_id >= self._producer_id_limit:
            limit = self._next_producer_id + PRODUCER_ID_BLOCK
            _write_json(
                self._directory / _PRODUCER_IDS_FILE,
                {"version": _FORMAT_VERSION, "next_block_start": limit},
            )
            self._producer_id_limit = limit
        producer_id = self._next_producer_id
        self._next_producer_id += 1
        return producer_id

    # --- internals ---------------------------------------------------------------------

    def _require(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise ApiError(
                ErrorCode.unknown_topic_or_partition,
                f"This server does not host this topic: {name}",
            )
        return topic

    def _replace(self, topic: Topic, validate_only: bool) -> Topic:
        if not validate_only:
            self._index(topic)
            self._save_topics()
        return topic

    def _index(self, topic: Topic) -> None:
        self._topics[topic.name] = topic
        self._by_id[topic.topic_id] = topic

    def _save_topics(self) -> None:
        _write_json(
            self._directory / _TOPICS_FILE,
            {
                "version": _FORMAT_VERSION,
                "topics": [
                    {
                        "name": topic.name,
                        "topic_id": str(topic.topic_id),
                        "partitions": topic.partitions,
                        "replication_factor": topic.replication_factor,
                        "configs": dict(topic.configs),
                    }
                    for topic in self.list_topics()
                ],
            },
        )


def _check_partitions(partitions: int) -> None:
    if partitions < 1:
        raise ApiError(ErrorCode.invalid_partitions, "Number of partitions must be larger than 0.")
    if partitions > 2**31 - 1:
        raise ApiError(ErrorCode.invalid_partitions, f"Too many partitions: {partitions}")


def _metric_name(name: str) -> str:
    return name.replace(".", "_")


def _new_topic_id(taken: Mapping[uuid.UUID, Topic]) -> uuid.UUID:
    """A random id; Kafka reserves the zero id (no topic) and 1 (its metadata topic)."""
    while True:
        topic_id = uuid.uuid4()
        if topic_id.int > 1 and topic_id not in taken:
            return topic_id


def _load_topics(path: Path) -> list[Topic]:
    data = _read_json(path)
    if data is None:
        return []
    try:
        return [
            Topic(
                name=entry["name"],
                topic_id=uuid.UUID(entry["topic_id"]),
                partitions=int(entry["partitions"]),
                replication_factor=int(entry["replication_factor"]),
                configs=dict(entry.get("configs", {})),
            )
            for entry in data["topics"]
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise RuntimeError(f"{path} is not a topic registry: {error!r}") from error


def _load_producer_id_block(path: Path) -> int:
    data = _read_json(path)
    if data is None:
        return 0
    try:
        return int(data["next_block_start"])
    except (KeyError, TypeError, ValueError) as error:
        raise RuntimeError(f"{path} is not a producer id block: {error!r}") from error


def _read_json(path: Path) -> Any:
    """The file's content, or None if it was never written. A damaged file is an error:
    starting without the topics it lists would silently lose them."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RuntimeError(f"{path} is damaged: {error}") from error


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
