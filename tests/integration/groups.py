"""Consumer-group helpers for integration tests: ``brook groups`` run as a user runs it,
its table read back, consumers in a group, and FindCoordinator asked directly."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from kio.schema.find_coordinator.v4.request import FindCoordinatorRequest

from .brokers import KafkaConnection

CLI_TIMEOUT_S = 60.0
GROUP_BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "0")
"""Brokers for group tests: the first rebalance does not wait for more members."""


def run_brook(*args: str) -> subprocess.CompletedProcess[str]:
    """``brook ARGS`` (as ``python -m brook_cli``, this interpreter), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "brook_cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@dataclass(frozen=True)
class LagRow:
    """One row of ``brook groups describe``; None where it prints "-"."""

    group: str
    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None
    consumer_id: str | None
    host: str | None
    client_id: str | None


DESCRIBE_HEADER = [
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
]


def _number(cell: str) -> int | None:
    return None if cell == "-" else int(cell)


def _text(cell: str) -> str | None:
    return None if cell == "-" else cell


def parse_describe(stdout: str) -> tuple[list[LagRow], str]:
    """The rows and the closing state line of ``brook groups describe``'s table."""
    table, _, state = stdout.strip().partition("\n\n")
    header, *lines = table.splitlines()
    assert header.split() == DESCRIBE_HEADER, header
    rows = []
    for line in lines:
        group, topic, partition, current, end, lag, consumer, host, client = line.split()
        rows.append(
            LagRow(
                group,
                topic,
                int(partition),
                _number(current),
                _number(end),
                _number(lag),
                _text(consumer),
                _text(host),
                _text(client),
            )
        )
    return rows, state.strip()


def describe_group(bootstrap: str, group: str, *options: str) -> tuple[list[LagRow], str]:
    """``brook groups describe GROUP``, which must succeed."""
    result = run_brook("groups", "describe", group, "--bootstrap", bootstrap, *options)
    assert result.returncode == 0, f"brook groups describe failed: {result.stderr}"
    return parse_describe(result.stdout)


def group_consumer(bootstrap: str, group: str, **config: Any) -> confluent_kafka.Consumer:
    """A confluent-kafka consumer in ``group`` that commits only when told to."""
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
            **{key.replace("_", "."): value for key, value in config.items()},
        }
    )


def wait_for_assignment(
    consumer: confluent_kafka.Consumer, partitions: int, timeout: float = 30.0
) -> list[confluent_kafka.TopicPartition]:
    """Poll until the consumer has ``partitions`` partitions. Records polled meanwhile are
    dropped: for a consumer that commits offsets it chooses, not positions."""
    deadline = time.monotonic() + timeout
    while len(consumer.assignment()) < partitions:
        assert time.monotonic() < deadline, f"no assignment after {timeout} s"
        consumer.poll(0.1)
    return list(consumer.assignment())


def committed(
    consumer: confluent_kafka.Consumer, topic: str, partitions: Sequence[int]
) -> dict[int, int | None]:
    """The group's committed offsets as the client itself fetches them (None: none)."""
    answers = consumer.committed(
        [confluent_kafka.TopicPartition(topic, p) for p in partitions], timeout=15
    )
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in answers}


def find_coordinator(connection: KafkaConnection, group: str) -> tuple[int, int]:
    """FindCoordinator v4 for one group: (error code, node id)."""
    response = connection.request(FindCoordinatorRequest(key_type=0, coordinator_keys=(group,)))
    (coordinator,) = response.coordinators
    return int(coordinator.error_code), int(coordinator.node_id)
