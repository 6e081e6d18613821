"""Broker settings: command-line flags, each also settable as a ``BROOK_*`` environment variable.

A flag ``--log-retention-ms`` reads ``BROOK_LOG_RETENTION_MS`` when not given; the flag
wins over the environment, the environment over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class BrokerConfig:
    node_id: int = 0
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:9092"
    advertised_listener: str | None = None
    http_listen: str = "127.0.0.1:9644"
    cluster_id: str = "brook"
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
    message_max_bytes: int = 1024 * 1024 + 12
    min_insync_replicas: int = 1
    # Protocol limits.
    socket_request_max_bytes: int = 100 * 1024 * 1024
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


def split_host_port(address: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_HELP = {
    "node_id": "this broker's id in the cluster",
    "data_dir": "directory for partition logs and metadata",
    "listen": "HOST:PORT for the Kafka protocol",
    "advertised_listener": "HOST:PORT clients are told to use (default: --listen)",
    "http_listen": "HOST:PORT for /healthz, /readyz and /metrics",
    "cluster_id": "cluster id reported to clients",
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
    "message_max_bytes": "default max.message.bytes: the largest record batch accepted",
    "min_insync_replicas": "default min.insync.replicas",
    "socket_request_max_bytes": "largest request frame accepted; larger ones close the connection",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brook-broker",
        description="Run one Brook broker. Every flag can also be set as BROOK_<FLAG> "
        "(for example BROOK_DATA_DIR, BROOK_LOG_RETENTION_MS).",
    )
    for field in fields(BrokerConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = {"int": int, "bool": _parse_bool, "Path": Path}.get(
            str(field.type).split(" ")[0], str
        )
        parser.add_argument(flag, type=kind, default=None, help=_HELP[field.name])
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
            action = next(a for a in parser._actions if a.dest == field.name)
            try:
                value = action.type(raw) if action.type else raw
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"BROOK_{field.name.upper()}: {error}")
        values[field.name] = value
    config = BrokerConfig(**values)  # type: ignore[arg-type]
    for name in ("listen", "http_listen"):
        try:
            split_host_port(getattr(config, name))
        except ValueError as error:
            parser.error(f"--{name.replace('_', '-')}: {error}")
    if config.advertised_listener:
        try:
            split_host_port(config.advertised_listener)
        except ValueError as error:
            parser.error(f"--advertised-listener: {error}")
    return config
