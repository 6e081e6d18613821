"""The topic registry: Kafka's topic rules, atomic persistence, producer ids across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brook_broker.metadata import topics as topics_module
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.topics import TopicRegistry, validate_topic_name
from kio.schema.errors import ErrorCode


def refused(code: ErrorCode, call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as raised:
        call(*args, **kwargs)
    assert raised.value.code == code, raised.value.message
    return raised.value.message


@pytest.mark.parametrize("name", ["a", "A-b_c.9", "x" * 249, "...", "_"])
def test_legal_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "can't be empty"),
        (".", 'cannot be "." or ".."'),
        ("..", 'cannot be "." or ".."'),
        ("x" * 250, "can't be longer than 249 characters"),
        ("with space", "contains a character other than ASCII alphanumerics"),
        ("slash/", "contains a character other than"),
        ("ünicode", "contains a character other than"),
    ],
)
def test_illegal_topic_names(name: str, message: str) -> None:
    assert message in refused(ErrorCode.invalid_topic_exception, validate_topic_name, name)


def test_topics_survive_reopening(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    created = registry.create_topic("events", 3, 1, [("retention.ms", "1000")])
    registry.create_topic("other", 1, 1)
    registry.delete_topic("other")
    registry.add_partitions("events", 5)
    registry.alter_configs("events", {"segment.ms": "60000"})

    reopened = TopicRegistry(tmp_path)
    topic = reopened.get("events")
    assert topic is not None
    assert topic.topic_id == created.topic_id and topic.topic_id.int > 1
    assert (topic.partitions, topic.replication_factor) == (5, 1)
    assert dict(topic.configs) == {"segment.ms": "60000"}
    assert reopened.get_by_id(created.topic_id) == topic
    assert [t.name for t in reopened.list_topics()] == ["events"]
    assert not list(tmp_path.glob("*.tmp"))


def test_validate_only_changes_nothing(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create_topic("dry", 2, 1, validate_only=True)
    assert registry.get("dry") is None
    registry.create_topic("real", 2, 1)
    assert registry.add_partitions("real", 4, validate_only=True).partitions == 4
    assert registry.alter_configs("real", {"retention.ms": "1"}, validate_only=True).configs
    topic = TopicRegistry(tmp_path).get("real")
    assert topic is not None and topic.partitions == 2 and not topic.configs


def test_creation_errors(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create_topic("a.b", 1, 1)
    refused(ErrorCode.topic_already_exists, registry.create_topic, "a.b", 1, 1)
    assert "collides with existing topic: a.b" in refused(
        ErrorCode.invalid_topic_exception, registry.create_topic, "a_b", 1, 1
    )
    refused(ErrorCode.invalid_partitions, registry.create_topic, "none", 0, 1)
    refused(ErrorCode.invalid_replication_factor, registry.create_topic, "norf", 1, 0)
    refused(ErrorCode.invalid_config, registry.create_topic, "cfg", 1, 1, [("bogus", "1")])
    refused(ErrorCode.invalid_topic_exception, registry.create_topic, "bad name", 1, 1)
    assert [t.name for t in registry.list_topics()] == ["a.b"]


def test_partitions_only_grow(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create_topic("t", 3, 1)
    assert "higher than the requested 2" in refused(
        ErrorCode.invalid_partitions, registry.add_partitions, "t", 2
    )
    assert "already has 3 partitions" in refused(
        ErrorCode.invalid_partitions, registry.add_partitions, "t", 3
    )
    refused(ErrorCode.unknown_topic_or_partition, registry.add_partitions, "missing", 3)
    refused(ErrorCode.unknown_topic_or_partition, registry.delete_topic, "missing")


def test_producer_ids_are_never_handed_out_twice(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    first = [registry.allocate_producer_id() for _ in range(5)]
    assert first == [0, 1, 2, 3, 4]
    # A restart skips the rest of the reserved block rather than reusing it.
    reopened = TopicRegistry(tmp_path)
    after = reopened.allocate_producer_id()
    assert after == topics_module.PRODUCER_ID_BLOCK
    many = [reopened.allocate_producer_id() for _ in range(2 * topics_module.PRODUCER_ID_BLOCK)]
    assert len(set(many + first + [after])) == len(many) + len(first) + 1
    assert TopicRegistry(tmp_path).allocate_producer_id() > max(many)


def test_a_damaged_registry_is_an_error_not_an_empty_cluster(tmp_path: Path) -> None:
    TopicRegistry(tmp_path).create_topic("keep", 1, 1)
    (tmp_path / "topics.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="damaged"):
        TopicRegistry(tmp_path)


def test_files_are_plain_json(tmp_path: Path) -> None:
    TopicRegistry(tmp_path).create_topic("t", 1, 1, [("retention.ms", "5")])
    data = json.loads((tmp_path / "topics.json").read_text())
    assert data["topics"][0]["configs"] == {"retention.ms": "5"}
