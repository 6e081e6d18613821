"""Broker settings: command-line flags, each also settable as a ``BROOK_*`` environment variable.

A flag ``--log-retention-ms`` reads ``BROOK_LOG_RETENTION_MS`` when not given; the flag
wins over the environment, the environment over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .metadata.topics import MAX_PARTITIONS_PER_REQUEST
from .storage.log import normalize_cleanup_policy

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class BrokerConfig:
    node_id: int = 0
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:9092"
    advertised_listener: str | None = None
    http_listen: str = "127.0.0.1:9644"
    cluster_id: str = "brook"
    # Brokers' requests to each other come only on the internal listener.
    internal_listen: str | None = None
    internal_advertised_listener: str | None = None
    cluster_secret: str | None = dataclasses.field(default=None, repr=False)
    cluster_secret_file: Path | None = None
    # Defaults for topics; each topic can override them with Kafka's topic config names.
    num_partitions: int = 1
    default_replication_factor: int = 1
    auto_create_topics: bool = True
    log_retention_ms: int = 7 * DAY_MS
    log_retention_bytes: int = -1
    log_segment_bytes: int = 1024 * 1024 * 1024
    log_segment_ms: int = 7 * DAY_MS
    log_index_interval_bytes: int = 4096
    log_flush_messages: int = -1
    log_flush_ms: int = -1
    log_retention_check_interval_ms: int = 5 * 60 * 1000
    log_cleanup_policy: str = "delete"
    # The log cleaner (compaction of cleanup.policy=compact topics).
    log_cleaner_enable: bool = True
    log_cleaner_dedupe_buffer_size: int = 128 * 1024 * 1024
    log_cleaner_io_max_bytes_per_second: float = 1.7976931348623157e308
    log_cleaner_backoff_ms: int = 15_000
    log_cleaner_min_cleanable_ratio: float = 0.5
    log_cleaner_min_compaction_lag_ms: int = 0
    log_cleaner_max_compaction_lag_ms: int = 2**63 - 1
    log_cleaner_delete_retention_ms: int = DAY_MS
    message_max_bytes: int = 1024 * 1024 + 12
    min_insync_replicas: int = 1
    # The cluster: metadata quorum, sessions, replication.
    controller_quorum: str | None = None
    controller_listen: str | None = None
    rack: str | None = None
    broker_heartbeat_interval_ms: int = 250
    broker_session_timeout_ms: int = 1500
    replica_lag_time_max_ms: int = 10000
    replication_throttle_bytes: int = -1
    auto_leader_rebalance: bool = True
    # Consumer groups and their committed offsets (in the internal __consumer_offsets topic).
    offsets_topic_num_partitions: int = 50
    offsets_topic_replication_factor: int = 3
    offsets_topic_segment_bytes: int = 100 * 1024 * 1024
    offsets_retention_minutes: int = 7 * 24 * 60
    offsets_retention_check_interval_ms: int = 10 * 60 * 1000
    offsets_commit_timeout_ms: int = 5000
    group_initial_rebalance_delay_ms: int = 3000
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 30 * 60 * 1000
    group_max_size: int = 2**31 - 1
    # Limits on partitions, checked before a topic change is proposed and carried with it.
    max_partitions_per_request: int = 1_000
    max_partitions_per_topic: int = 5_000
    max_broker_partitions: int = 4_000
    max_partitions: int = 10_000
    # Protocol limits.
    socket_request_max_bytes: int = 100 * 1024 * 1024
    fetch_max_bytes: int = 55 * 1024 * 1024
    socket_request_timeout_ms: int = 30_000
    queued_max_request_bytes: int = 256 * 1024 * 1024
    connections_max_idle_ms: int = 10 * 60 * 1000
    max_connections: int = 10_000
    max_connections_per_ip: int = -1
    shutdown_timeout_ms: int = 30_000
    log_level: str = "WARNING"

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_host_port(self.listen)

    @property
    def http_address(self) -> tuple[str, int]:
        return split_host_port(self.http_listen)

    @property
    def advertised_address(self) -> tuple[str, int]:
        """What clients are told to connect to: the advertised listener, else the listener."""
        return split_host_port(self.advertised_listener or self.listen)

    @property
    def internal_address(self) -> tuple[str, int]:
        """Where the internal listener binds: by default the client listener's host, on a
        port of the system's choosing."""
        if self.internal_listen:
            return split_host_port(self.internal_listen)
        return self.listen_address[0], 0

    @property
    def voters(self) -> dict[int, str]:
        """The metadata quorum's voters by node id (empty: this broker is a quorum of one)."""
        return parse_quorum(self.controller_quorum) if self.controller_quorum else {}


WILDCARD_HOSTS = ("0.0.0.0", "::", "")
"""Listener hosts that mean "every address": never given to a client or another broker."""


def split_host_port(address: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_quorum(text: str) -> dict[int, str]:
    """``ID@HOST:PORT,...`` (Kafka's controller.quorum.voters) as {node id: "HOST:PORT"}."""
    voters: dict[int, str] = {}
    for entry in text.split(","):
        node, separator, address = entry.strip().partition("@")
        if not separator or not node.strip().isdigit():
            raise ValueError(f"expected ID@HOST:PORT, got {entry.strip()!r}")
        host, port = split_host_port(address)
        node_id = int(node)
        if node_id in voters:
            raise ValueError(f"node {node_id} is named twice")
        voters[node_id] = f"{host}:{port}"
    if len(set(voters.values())) != len(voters):
        raise ValueError("two voters share an address")
    return voters


_HELP = {
    "node_id": "this broker's id in the cluster",
    "data_dir": "directory for partition logs and metadata",
    "listen": "HOST:PORT for the Kafka protocol",
    "advertised_listener": "HOST:PORT clients are told to use (default: --listen)",
    "http_listen": "HOST:PORT for /healthz, /readyz and /metrics",
    "cluster_id": "cluster id reported to clients",
    "internal_listen": "HOST:PORT for other brokers' requests (heartbeats, follower fetches), "
    "refused on --listen (default: the --listen host, a free port)",
    "internal_advertised_listener": "HOST:PORT other brokers are told to use for the internal "
    "listener (default: --internal-listen)",
    "cluster_secret": "the secret the brokers of one cluster share: their password on the "
    "internal listener (SASL PLAIN, user 'broker') and the key of Raft traffic",
    "cluster_secret_file": "a file holding --cluster-secret (wins over it)",
    "num_partitions": "partitions of an auto-created topic or a CreateTopics without a count",
    "default_replication_factor": "replication factor when CreateTopics gives none",
    "auto_create_topics": "create a topic when a client asks for metadata of an unknown one",
    "log_retention_ms": "default retention.ms (-1: keep forever)",
    "log_retention_bytes": "default retention.bytes per partition (-1: no limit)",
    "log_segment_bytes": "default segment.bytes: roll a segment at this size",
    "log_segment_ms": "default segment.ms: roll a segment at this age",
    "log_index_interval_bytes": "default index.interval.bytes between offset index entries",
    "log_flush_messages": "default flush.messages: fsync after this many records (-1: never)",
    "log_flush_ms": "default flush.ms: fsync at this interval (-1: never)",
    "log_retention_check_interval_ms": "how often retention runs",
    "log_cleanup_policy": "default cleanup.policy: delete, compact or compact,delete",
    "log_cleaner_enable": "run the log cleaner, which compacts cleanup.policy=compact topics",
    "log_cleaner_dedupe_buffer_size": "memory for the cleaner's map of latest offset per key "
    "(about 136 bytes a key; at least 1 MiB): a larger dirty section is cleaned over several "
    "runs",
    "log_cleaner_io_max_bytes_per_second": "bytes/s the cleaner reads and writes at most",
    "log_cleaner_backoff_ms": "how long the cleaner sleeps when no log needs cleaning (at least 1)",
    "log_cleaner_min_cleanable_ratio": "default min.cleanable.dirty.ratio",
    "log_cleaner_min_compaction_lag_ms": "default min.compaction.lag.ms",
    "log_cleaner_max_compaction_lag_ms": "default max.compaction.lag.ms",
    "log_cleaner_delete_retention_ms": "default delete.retention.ms: how long tombstones stay",
    "message_max_bytes": "default max.message.bytes: the largest record batch accepted",
    "min_insync_replicas": "default min.insync.replicas",
    "controller_quorum": "the metadata quorum's voters, ID@HOST:PORT,... (their Raft "
    "addresses); other brokers observe it (default: this broker alone)",
    "controller_listen": "HOST:PORT this voter binds for Raft (default: its --controller-quorum "
    "address)",
    "rack": "this broker's rack: replicas of a partition go to different racks",
    "broker_heartbeat_interval_ms": "how often the broker heartbeats to the active controller",
    "broker_session_timeout_ms": "the controller fences a broker not heard from for this long",
    "replica_lag_time_max_ms": "default replica.lag.time.max.ms: a follower not caught up for "
    "this long leaves the ISR",
    "replication_throttle_bytes": "bytes/s a leader sends to replicas being added by a "
    "reassignment (-1: no limit)",
    "auto_leader_rebalance": "move leadership back to preferred replicas once they are in sync",
    "offsets_topic_num_partitions": "partitions of __consumer_offsets, made when a group "
    "first asks for its coordinator; a group's coordinator leads the partition its id hashes to",
    "offsets_topic_replication_factor": "replication factor of __consumer_offsets (capped at "
    "the brokers registered when it is made)",
    "offsets_topic_segment_bytes": "segment.bytes of __consumer_offsets: the cleaner compacts "
    "closed segments only",
    "offsets_retention_minutes": "committed offsets of a group that has been empty this long "
    "are removed",
    "offsets_retention_check_interval_ms": "how often expired committed offsets are removed",
    "offsets_commit_timeout_ms": "an offset commit waits this long for the replicas of "
    "__consumer_offsets",
    "group_initial_rebalance_delay_ms": "the first rebalance of an empty group waits this long "
    "for more members to join",
    "group_min_session_timeout_ms": "smallest session.timeout.ms a consumer may ask for",
    "group_max_session_timeout_ms": "largest session.timeout.ms a consumer may ask for",
    "group_max_size": "most members one group may have",
    "max_partitions_per_request": "max.partitions.per.request: partitions one CreateTopics or "
    "CreatePartitions request may add over all its topics (at most 10000, Kafka's own cap)",
    "max_partitions_per_topic": "max.partitions.per.topic: partitions one topic may have",
    "max_broker_partitions": "max.broker.partitions (KIP-578): partition replicas one broker "
    "may hold; new replicas go only to brokers below it",
    "max_partitions": "max.partitions (KIP-578): partitions of all topics in the cluster",
    "shutdown_timeout_ms": "after SIGTERM or SIGINT, exit without a clean stop if the broker "
    "has not stopped within this long (a blocked event loop cannot stop it)",
    "socket_request_max_bytes": "largest request frame accepted; larger ones close the connection",
    "fetch_max_bytes": "fetch.max.bytes: most record bytes one Fetch answer holds, whatever "
    "the request asks (consumers and followers alike); a larger first batch is still sent whole",
    "socket_request_timeout_ms": "a request must arrive whole within this long of its first "
    "byte, else the connection is closed (-1: no limit); on the internal listener a connection "
    "must also authenticate within this long of connecting",
    "queued_max_request_bytes": "queued.max.request.bytes: bytes of requests received and not "
    "yet answered, over all connections; when used up, connections stop being read (-1: no limit)",
    "connections_max_idle_ms": "connections.max.idle.ms: close a connection idle this long "
    "(-1: never)",
    "max_connections": "max.connections: connections open at once; more are closed at once "
    "(-1: no limit); the internal listener counts its own, at most half of them not yet "
    "authenticated",
    "max_connections_per_ip": "max.connections.per.ip: connections open at once from one client "
    "address; more are closed at once (-1: no limit)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_PARSERS: dict[str, Callable[[str], object]] = {
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "Path": Path,
}


def _parser_of(field: dataclasses.Field[object]) -> Callable[[str], object]:
    """How the text of a flag or variable becomes the value of ``field`` (by its type)."""
    return _PARSERS.get(str(field.type).split(" ")[0], str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brook-broker",
        description="Run one Brook broker. Every flag can also be set as BROOK_<FLAG> "
        "(for example BROOK_DATA_DIR, BROOK_LOG_RETENTION_MS).",
    )
    for field in fields(BrokerConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=_parser_of(field), default=None, help=_HELP[field.name])
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Flags first, then ``BROOK_*`` variables, then defaults."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    arguments = vars(parser.parse_args(argv))
    values: dict[str, object] = {}
    for field in fields(BrokerConfig):
        value = arguments[field.name]
        if value is None:
            raw = environ.get("BROOK_" + field.name.upper())
            if raw is None or raw == "":
                continue
            try:
                value = _parser_of(field)(raw)
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"BROOK_{field.name.upper()}: {error}")
        values[field.name] = value
    config = BrokerConfig(**values)  # type: ignore[arg-type]
    for name in ("listen", "http_listen"):
        try:
            split_host_port(getattr(config, name))
        except ValueError as error:
            parser.error(f"--{name.replace('_', '-')}: {error}")
    for name in (
        "advertised_listener",
        "controller_listen",
        "internal_listen",
        "internal_advertised_listener",
    ):
        if getattr(config, name):
            try:
                split_host_port(getattr(config, name))
            except ValueError as error:
                parser.error(f"--{name.replace('_', '-')}: {error}")
    if config.controller_quorum:
        try:
            parse_quorum(config.controller_quorum)
        except ValueError as error:
            parser.error(f"--controller-quorum: {error}")
    if not 0 < config.broker_heartbeat_interval_ms < config.broker_session_timeout_ms:
        parser.error(
            "--broker-heartbeat-interval-ms must be above 0 and below --broker-session-timeout-ms"
        )
    if config.replica_lag_time_max_ms < 1:
        parser.error("--replica-lag-time-max-ms must be at least 1")
    for name in (
        "max_partitions_per_request",
        "max_partitions_per_topic",
        "max_broker_partitions",
        "max_partitions",
        "shutdown_timeout_ms",
        "fetch_max_bytes",
        "log_cleaner_backoff_ms",  # 0 would have an idle cleaner look for work nonstop
        "log_cleaner_max_compaction_lag_ms",
    ):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.max_partitions_per_request > MAX_PARTITIONS_PER_REQUEST:
        parser.error(f"--max-partitions-per-request must be at most {MAX_PARTITIONS_PER_REQUEST}")
    for name in (
        "socket_request_timeout_ms",
        "queued_max_request_bytes",
        "connections_max_idle_ms",
        "max_connections",
        "max_connections_per_ip",
    ):
        if getattr(config, name) < 1 and getattr(config, name) != -1:
            parser.error(f"--{name.replace('_', '-')} must be -1 (no limit) or at least 1")
    try:
        config = replace(
            config, log_cleanup_policy=normalize_cleanup_policy(config.log_cleanup_policy)
        )
    except ValueError as error:
        parser.error(f"--log-cleanup-policy: {error}")
    if not 0 <= config.log_cleaner_min_cleanable_ratio <= 1:
        parser.error("--log-cleaner-min-cleanable-ratio must be between 0 and 1")
    if config.log_cleaner_io_max_bytes_per_second <= 0:
        parser.error("--log-cleaner-io-max-bytes-per-second must be above 0")
    if config.log_cleaner_min_compaction_lag_ms < 0 or config.log_cleaner_delete_retention_ms < 0:
        parser.error(
            "--log-cleaner-min-compaction-lag-ms and --log-cleaner-delete-retention-ms "
            "must be at least 0"
        )
    if config.log_cleaner_dedupe_buffer_size < 1024 * 1024:
        parser.error("--log-cleaner-dedupe-buffer-size must be at least 1048576")
    if config.cluster_secret_file is not None:
        try:
            secret = config.cluster_secret_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"--cluster-secret-file: {error}")
        if not secret:
            parser.error(f"--cluster-secret-file: {config.cluster_secret_file} is empty")
        config = replace(config, cluster_secret=secret)
    if config.cluster_secret == "":
        parser.error("--cluster-secret must not be empty")
    return config
