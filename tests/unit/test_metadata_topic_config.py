"""Topic configs: Kafka names, validation with precise messages, resolution, description."""

from __future__ import annotations

import pytest
from brook_broker.config import BrokerConfig
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.topic_config import (
    TOPIC_CONFIGS,
    ConfigSource,
    ConfigType,
    describe_broker,
    describe_topic,
    resolve,
    validate_overrides,
)
from kio.schema.errors import ErrorCode


def invalid(configs: dict[str, str | None]) -> str:
    with pytest.raises(ApiError) as raised:
        validate_overrides(configs.items())
    assert raised.value.code == ErrorCode.invalid_config
    return raised.value.message


def test_every_supported_config_has_a_default_and_documentation() -> None:
    broker = BrokerConfig()
    assert set(TOPIC_CONFIGS) == {
        "cleanup.policy",
        "retention.ms",
        "retention.bytes",
        "segment.bytes",
        "segment.ms",
        "index.interval.bytes",
        "max.message.bytes",
        "min.insync.replicas",
        "flush.messages",
        "flush.ms",
        "message.timestamp.type",
        "unclean.leader.election.enable",
        "compression.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "delete.retention.ms",
    }
    for entry in describe_topic({}, broker):
        assert entry.value is not None and entry.documentation
        assert validate_overrides([(entry.name, entry.value)]) == {entry.name: entry.value}


def test_values_are_normalized() -> None:
    assert validate_overrides(
        [
            ("retention.ms", " 3600000 "),
            ("unclean.leader.election.enable", "TRUE"),
            ("cleanup.policy", "delete, delete"),
            ("flush.messages", "-1"),
        ]
    ) == {
        "retention.ms": "3600000",
        "unclean.leader.election.enable": "true",
        "cleanup.policy": "delete",
        "flush.messages": "-1",
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "retention.ms",
            "soon",
            "Invalid value soon for configuration retention.ms: Not a number of type LONG",
        ),
        ("retention.ms", "-2", "Value must be at least -1"),
        (
            "segment.bytes",
            "13",
            "Invalid value 13 for configuration segment.bytes: Value must be at least 14",
        ),
        ("segment.bytes", str(2**31), "Not a number of type INT"),
        ("segment.ms", "0", "Value must be at least 1"),
        ("min.insync.replicas", "0", "Value must be at least 1"),
        ("flush.messages", "0", "Value must be at least 1 (or -1 for never)"),
        ("max.message.bytes", "1_000", "Not a number of type INT"),
        (
            "message.timestamp.type",
            "createtime",
            "String must be one of: CreateTime, LogAppendTime",
        ),
        ("unclean.leader.election.enable", "yes", "either true or false"),
        ("cleanup.policy", "compact,shrink", "Every policy must be one of: compact, delete"),
        ("cleanup.policy", "", "Every policy must be one of: compact, delete"),
        ("min.cleanable.dirty.ratio", "1.5", "Value must be between 0 and 1"),
        ("min.cleanable.dirty.ratio", "half", "Not a number of type DOUBLE"),
        ("max.compaction.lag.ms", "0", "Value must be at least 1"),
        ("delete.retention.ms", "-1", "Value must be at least 0"),
        ("compression.type", "zstd", "only producer is supported"),
    ],
)
def test_bad_values_name_the_config_and_the_rule(name: str, value: str, message: str) -> None:
    assert message in invalid({name: value})


def test_unknown_names_and_null_values_are_refused() -> None:
    assert invalid({"retention.hours": "1"}) == "Unknown topic config name: retention.hours"
    assert "Null value" in invalid({"retention.ms": None})


def test_resolution_takes_overrides_then_broker_defaults() -> None:
    broker = BrokerConfig(log_retention_ms=1000, message_max_bytes=2048, log_segment_bytes=4096)
    settings = resolve({"retention.ms": "5", "message.timestamp.type": "LogAppendTime"}, broker)
    assert settings.log.retention_ms == 5
    assert settings.log.segment_bytes == 4096
    assert settings.log.retention_bytes == -1
    assert settings.log.flush_messages == -1
    assert settings.max_message_bytes == 2048
    assert settings.log_append_time is True
    assert settings.min_insync_replicas == 1
    assert resolve({}, broker).log_append_time is False


def test_description_says_where_each_value_comes_from() -> None:
    broker = BrokerConfig(log_retention_ms=1000)
    entries = {
        entry.name: entry
        for entry in describe_topic({"segment.ms": "60000"}, broker, include_synonyms=True)
    }
    segment = entries["segment.ms"]
    assert (segment.value, segment.source) == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert [(s.name, s.source) for s in segment.synonyms] == [
        ("segment.ms", ConfigSource.DYNAMIC_TOPIC_CONFIG),
        ("log.roll.ms", ConfigSource.DEFAULT_CONFIG),
    ]
    # Changed from the built-in default, so it was set on the broker.
    retention = entries["retention.ms"]
    assert (retention.value, retention.source) == ("1000", ConfigSource.STATIC_BROKER_CONFIG)
    assert entries["cleanup.policy"].type == ConfigType.LIST
    assert entries["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG
    assert not any(entry.read_only for entry in entries.values())
    assert describe_topic({}, broker)[0].synonyms == ()


def test_broker_description_is_read_only_with_kafka_names() -> None:
    broker = BrokerConfig(node_id=3, num_partitions=6)
    entries = {entry.name: entry for entry in describe_broker(broker)}
    assert entries["node.id"].value == "3"
    assert entries["num.partitions"].value == "6"
    assert entries["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG
    assert entries["log.retention.ms"].source == ConfigSource.DEFAULT_CONFIG
    assert entries["auto.create.topics.enable"].value == "true"
    assert entries["advertised.listeners"].value is None
    assert entries["compression.type"].value == "producer"
    assert all(entry.read_only for entry in entries.values())
