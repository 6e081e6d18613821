"""Topic configs by their Kafka names: validation, defaults from the broker, resolution.

A topic stores only its overrides (``retention.ms=3600000``); every other config takes
the broker's default, which is why describing a topic needs both. Values are kept as
the normalized strings Kafka shows, and parsed once when a topic's settings are resolved.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..storage.log import LogConfig, normalize_cleanup_policy
from .errors import ApiError

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class ConfigType(enum.IntEnum):
    """Kafka's ``ConfigType`` as DescribeConfigs v3+ reports it."""

    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7


class ConfigSource(enum.IntEnum):
    """Where a config's value comes from (DescribeConfigs ``config_source``)."""

    DYNAMIC_TOPIC_CONFIG = 1
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


@dataclass(frozen=True)
class ConfigSynonym:
    name: str
    value: str | None
    source: ConfigSource


@dataclass(frozen=True)
class ConfigEntry:
    """One config as DescribeConfigs and CreateTopics report it."""

    name: str
    value: str | None
    source: ConfigSource
    read_only: bool
    type: ConfigType
    documentation: str
    synonyms: tuple[ConfigSynonym, ...]


@dataclass(frozen=True)
class BrokerSetting:
    """A broker setting by its Kafka name; ``attribute`` names the BrokerConfig field."""

    name: str
    type: ConfigType
    documentation: str
    attribute: str | None = None
    constant: str | None = None
    """The value of a setting Brook does not let the operator change."""

    def value(self, config: BrokerConfig) -> str | None:
        if self.attribute is None:
            assert self.constant is not None
            return self.constant
        return _format(getattr(config, self.attribute))

    def source(self, config: BrokerConfig) -> ConfigSource:
        """STATIC_BROKER_CONFIG when the operator changed it from Brook's built-in default.

        Flags and environment variables leave no trace in BrokerConfig, so a value equal
        to the built-in default is reported as the default, like Kafka does for a setting
        absent from server.properties.
        """
        if self.attribute is None:
            return ConfigSource.DEFAULT_CONFIG
        built_in = _BUILT_IN_DEFAULTS[self.attribute]
        if getattr(config, self.attribute) == built_in:
            return ConfigSource.DEFAULT_CONFIG
        return ConfigSource.STATIC_BROKER_CONFIG

    def entry(self, config: BrokerConfig, include_synonyms: bool) -> ConfigEntry:
        value, source = self.value(config), self.source(config)
        synonyms = (ConfigSynonym(self.name, value, source),) if include_synonyms else ()
        return ConfigEntry(self.name, value, source, True, self.type, self.documentation, synonyms)


@dataclass(frozen=True)
class TopicConfigKey:
    """A topic config: how to check a value, and which broker setting gives its default."""

    name: str
    type: ConfigType
    documentation: str
    broker: BrokerSetting
    normalize: Callable[[str], str]
    """Returns the value as stored, or raises ValueError saying what is wrong with it."""

    def check(self, value: str) -> str:
        try:
            return self.normalize(value)
        except ValueError as error:
            raise ApiError(
                ErrorCode.invalid_config,
                f"Invalid value {value} for configuration {self.name}: {error}",
            ) from None


@dataclass(frozen=True)
class TopicSettings:
    """A topic's effective settings: its overrides resolved against the broker defaults."""

    log: LogConfig
    max_message_bytes: int
    log_append_time: bool
    min_insync_replicas: int


# --- value checks ----------------------------------------------------------------------


def _integer(
    bounds: tuple[int, int], minimum: int | None = None, *, never: bool = False
) -> Callable[[str], str]:
    """A check for an integer in ``bounds``, at least ``minimum`` (or -1 when ``never``)."""
    kind = "INT" if bounds == INT32 else "LONG"

    def normalize(text: str) -> str:
        text = text.strip()
        if not _INTEGER.fullmatch(text):
            raise ValueError(f"Not a number of type {kind}")
        number = int(text)
        if not bounds[0] <= number <= bounds[1]:
            raise ValueError(f"Not a number of type {kind}")
        if minimum is not None and number < minimum and not (never and number == -1):
            suffix = " (or -1 for never)" if never else ""
            raise ValueError(f"Value must be at least {minimum}{suffix}")
        return str(number)

    return normalize


def _boolean(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError("Expected value to be either true or false")
    return lowered


def _one_of(*allowed: str, explain: Mapping[str, str] | None = None) -> Callable[[str], str]:
    def normalize(text: str) -> str:
        value = text.strip()
        if value in allowed:
            return value
        if explain and value in explain:
            raise ValueError(explain[value])
        raise ValueError(f"String must be one of: {', '.join(allowed)}")

    return normalize


def _ratio(text: str) -> str:
    try:
        ratio = float(text.strip())
    except ValueError:
        raise ValueError("Not a number of type DOUBLE") from None
    if not 0 <= ratio <= 1:
        raise ValueError("Value must be between 0 and 1")
    return str(ratio)


def _format(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


# --- the configs -----------------------------------------------------------------------


_BUILT_IN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(BrokerConfig)}

_LONG, _INT, _BOOL, _STRING, _LIST, _DOUBLE = (
    ConfigType.LONG,
    ConfigType.INT,
    ConfigType.BOOLEAN,
    ConfigType.STRING,
    ConfigType.LIST,
    ConfigType.DOUBLE,
)

TOPIC_CONFIGS: dict[str, TopicConfigKey] = {
    key.name: key
    for key in (
        TopicConfigKey(
            "cleanup.policy",
            _LIST,
            "What happens to old segments: delete removes them by retention.ms and "
            "retention.bytes; compact keeps the latest record of each key; compact,delete "
            "does both.",
            BrokerSetting(
                "log.cleanup.policy", _LIST, "Default cleanup.policy.", "log_cleanup_policy"
            ),
            normalize_cleanup_policy,
        ),
        TopicConfigKey(
            "min.cleanable.dirty.ratio",
            _DOUBLE,
            "A compacted log is cleaned once the part not yet cleaned is at least this "
            "share of it.",
            BrokerSetting(
                "log.cleaner.min.cleanable.ratio",
                _DOUBLE,
                "Default min.cleanable.dirty.ratio.",
                "log_cleaner_min_cleanable_ratio",
            ),
            _ratio,
        ),
        TopicConfigKey(
            "min.compaction.lag.ms",
            _LONG,
            "A record stays uncompacted for at least this long after it is written.",
            BrokerSetting(
                "log.cleaner.min.compaction.lag.ms",
                _LONG,
                "Default min.compaction.lag.ms.",
                "log_cleaner_min_compaction_lag_ms",
            ),
            _integer(INT64, 0),
        ),
        TopicConfigKey(
            "max.compaction.lag.ms",
            _LONG,
            "A record is compacted at the latest this long after it is written, whatever "
            "the dirty ratio.",
            BrokerSetting(
                "log.cleaner.max.compaction.lag.ms",
                _LONG,
                "Default max.compaction.lag.ms.",
                "log_cleaner_max_compaction_lag_ms",
            ),
            _integer(INT64, 1),
        ),
        TopicConfigKey(
            "delete.retention.ms",
            _LONG,
            "How long a tombstone (a record with a null value) stays in a compacted log, "
            "so consumers reading from the start see the deletion.",
            BrokerSetting(
                "log.cleaner.delete.retention.ms",
                _LONG,
                "Default delete.retention.ms.",
                "log_cleaner_delete_retention_ms",
            ),
            _integer(INT64, 0),
        ),
        TopicConfigKey(
            "retention.ms",
            _LONG,
            "How long a segment is kept after its newest record before it is deleted; "
            "-1 keeps segments forever.",
            BrokerSetting("log.retention.ms", _LONG, "Default retention.ms.", "log_retention_ms"),
            _integer(INT64, -1),
        ),
        TopicConfigKey(
            "retention.bytes",
            _LONG,
            "The largest size a partition may grow to before its oldest segments are "
            "deleted; -1 for no limit.",
            BrokerSetting(
                "log.retention.bytes", _LONG, "Default retention.bytes.", "log_retention_bytes"
            ),
            _integer(INT64, -1),
        ),
        TopicConfigKey(
            "segment.bytes",
            _INT,
            "The size at which the active segment is rolled and a new one started.",
            BrokerSetting("log.segment.bytes", _INT, "Default segment.bytes.", "log_segment_bytes"),
            _integer(INT32, 14),
        ),
        TopicConfigKey(
            "segment.ms",
            _LONG,
            "The age at which the active segment is rolled even if it is not full, so "
            "that retention can delete it.",
            BrokerSetting("log.roll.ms", _LONG, "Default segment.ms.", "log_segment_ms"),
            _integer(INT64, 1),
        ),
        TopicConfigKey(
            "index.interval.bytes",
            _INT,
            "Bytes of batches between two entries of the sparse offset index.",
            BrokerSetting(
                "log.index.interval.bytes",
                _INT,
                "Default index.interval.bytes.",
                "log_index_interval_bytes",
            ),
            _integer(INT32, 0),
        ),
        TopicConfigKey(
            "max.message.bytes",
            _INT,
            "The largest record batch the broker accepts for this topic.",
            BrokerSetting(
                "message.max.bytes", _INT, "Default max.message.bytes.", "message_max_bytes"
            ),
            _integer(INT32, 0),
        ),
        TopicConfigKey(
            "min.insync.replicas",
            _INT,
            "With acks=all, the fewest in-sync replicas that must have a batch before the "
            "produce request succeeds.",
            BrokerSetting(
                "min.insync.replicas", _INT, "Default min.insync.replicas.", "min_insync_replicas"
            ),
            _integer(INT32, 1),
        ),
        TopicConfigKey(
            "flush.messages",
            _LONG,
            "fsync the log after this many records; -1 never forces a flush by count "
            "(durability comes from replication).",
            BrokerSetting(
                "log.flush.interval.messages",
                _LONG,
                "Default flush.messages.",
                "log_flush_messages",
            ),
            _integer(INT64, 1, never=True),
        ),
        TopicConfigKey(
            "flush.ms",
            _LONG,
            "fsync the log at this interval; -1 never forces a flush by time.",
            BrokerSetting("log.flush.interval.ms", _LONG, "Default flush.ms.", "log_flush_ms"),
            _integer(INT64, 0, never=True),
        ),
        TopicConfigKey(
            "message.timestamp.type",
            _STRING,
            "CreateTime keeps the producer's timestamps; LogAppendTime stamps each batch "
            "with the broker's time when it is appended.",
            BrokerSetting(
                "log.message.timestamp.type",
                _STRING,
                "Default message.timestamp.type.",
                constant="CreateTime",
            ),
            _one_of("CreateTime", "LogAppendTime"),
        ),
        TopicConfigKey(
            "unclean.leader.election.enable",
            _BOOL,
            "Whether a replica outside the in-sync set may become leader, at the price of "
            "losing records.",
            BrokerSetting(
                "unclean.leader.election.enable",
                _BOOL,
                "Default unclean.leader.election.enable.",
                constant="false",
            ),
            _boolean,
        ),
        TopicConfigKey(
            "compression.type",
            _STRING,
            "producer: batches are stored as the producer compressed them (the broker "
            "never recompresses).",
            BrokerSetting(
                "compression.type", _STRING, "Default compression.type.", constant="producer"
            ),
            _one_of(
                "producer",
                explain={
                    codec: "only producer is supported: batches are stored as the producer "
                    "compressed them"
                    for codec in ("uncompressed", "gzip", "snappy", "lz4", "zstd")
                },
            ),
        ),
    )
}

BROKER_SETTINGS: tuple[BrokerSetting, ...] = (
    BrokerSetting("node.id", _INT, "This broker's id.", "node_id"),
    BrokerSetting("broker.id", _INT, "This broker's id.", "node_id"),
    BrokerSetting("log.dirs", _STRING, "Where partition logs and metadata are kept.", "data_dir"),
    BrokerSetting("listeners", _STRING, "The Kafka protocol listener.", "listen"),
    BrokerSetting(
        "advertised.listeners",
        _STRING,
        "The address clients are told to use.",
        "advertised_listener",
    ),
    BrokerSetting("num.partitions", _INT, "Partitions of auto-created topics.", "num_partitions"),
    BrokerSetting(
        "default.replication.factor",
        _INT,
        "Replication factor of new topics.",
        "default_replication_factor",
    ),
    BrokerSetting(
        "auto.create.topics.enable",
        _BOOL,
        "Create unknown topics when clients ask for their metadata.",
        "auto_create_topics",
    ),
    BrokerSetting(
        "log.retention.check.interval.ms",
        _LONG,
        "How often retention runs.",
        "log_retention_check_interval_ms",
    ),
    BrokerSetting(
        "socket.request.max.bytes",
        _INT,
        "The largest request accepted.",
        "socket_request_max_bytes",
    ),
    *(key.broker for key in TOPIC_CONFIGS.values()),
)


# --- operations ------------------------------------------------------------------------


def config_key(name: str) -> TopicConfigKey:
    key = TOPIC_CONFIGS.get(name)
    if key is None:
        raise ApiError(ErrorCode.invalid_config, f"Unknown topic config name: {name}")
    return key


def validate_overrides(configs: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Check topic config overrides; returns them normalized, in Kafka's value format."""
    overrides: dict[str, str] = {}
    for name, value in configs:
        key = config_key(name)
        if name in overrides:
            raise ApiError(ErrorCode.invalid_config, f"Config {name} is given more than once")
        if value is None:
            raise ApiError(
                ErrorCode.invalid_config, f"Null value not supported for topic config: {name}"
            )
        overrides[name] = key.check(value)
    return overrides


def effective_value(name: str, overrides: Mapping[str, str], broker: BrokerConfig) -> str:
    if name in overrides:
        return overrides[name]
    value = TOPIC_CONFIGS[name].broker.value(broker)
    assert value is not None, f"{name} has no default"
    return value


def resolve(overrides: Mapping[str, str], broker: BrokerConfig) -> TopicSettings:
    """The settings a topic's partitions run with: overrides, else the broker's defaults."""

    def number(name: str) -> int:
        return int(effective_value(name, overrides, broker))

    return TopicSettings(
        log=LogConfig(
            segment_bytes=number("segment.bytes"),
            segment_ms=number("segment.ms"),
            retention_ms=number("retention.ms"),
            retention_bytes=number("retention.bytes"),
            index_interval_bytes=number("index.interval.bytes"),
            flush_messages=number("flush.messages"),
            flush_ms=number("flush.ms"),
            cleanup_policy=effective_value("cleanup.policy", overrides, broker),
            min_cleanable_dirty_ratio=float(
                effective_value("min.cleanable.dirty.ratio", overrides, broker)
            ),
            min_compaction_lag_ms=number("min.compaction.lag.ms"),
            max_compaction_lag_ms=number("max.compaction.lag.ms"),
            delete_retention_ms=number("delete.retention.ms"),
        ),
        max_message_bytes=number("max.message.bytes"),
        log_append_time=effective_value("message.timestamp.type", overrides, broker)
        == "LogAppendTime",
        min_insync_replicas=number("min.insync.replicas"),
    )


def describe_topic(
    overrides: Mapping[str, str], broker: BrokerConfig, include_synonyms: bool = False
) -> list[ConfigEntry]:
    """Every topic config with its effective value and where that value comes from."""
    entries = []
    for key in TOPIC_CONFIGS.values():
        default = effective_value(key.name, {}, broker)
        default_source = key.broker.source(broker)
        synonyms: list[ConfigSynonym] = []
        if key.name in overrides:
            value, source = overrides[key.name], ConfigSource.DYNAMIC_TOPIC_CONFIG
            synonyms.append(ConfigSynonym(key.name, value, source))
        else:
            value, source = default, default_source
        synonyms.append(ConfigSynonym(key.broker.name, default, default_source))
        entries.append(
            ConfigEntry(
                key.name,
                value,
                source,
                False,
                key.type,
                key.documentation,
                tuple(synonyms) if include_synonyms else (),
            )
        )
    return entries


def describe_broker(broker: BrokerConfig, include_synonyms: bool = False) -> list[ConfigEntry]:
    """This broker's settings by their Kafka names; all of them are static (read-only)."""
    return [setting.entry(broker, include_synonyms) for setting in BROKER_SETTINGS]
