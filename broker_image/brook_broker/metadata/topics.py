"""Kafka's rules for topics: names, which become directory and metric names, the internal
topics only the broker writes, and limits on partitions, which keep one request from
holding up or exhausting the brokers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from .errors import ApiError

MAX_TOPIC_NAME_LENGTH = 249

OFFSETS_TOPIC = "__consumer_offsets"
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC})
"""Topics only the broker writes (Kafka's ``Topic.isInternal``): clients read them, but a
produce to them is refused, or any client could forge or corrupt the groups' state."""

_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")


def validate_topic_name(name: str) -> None:
    """Refuse a name Kafka refuses, with Kafka's message."""
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


MAX_PARTITIONS_PER_REQUEST = 10_000
"""The most partitions one CreateTopics or CreatePartitions command may add, whatever the
flags say: Kafka's own cap per CreateTopics request (``MAX_PARTITIONS_PER_BATCH``). It
bounds the time placement holds up the event loop while a command is applied (about 0.1 s
on 3 brokers), and it refuses the commands an older version let into the metadata log
(a request for 2**31 - 1 partitions, whose placement never ended)."""

NO_LIMIT = 2**31 - 1
"""A partition count no topic can reach (Kafka's partition ids are int32)."""


@dataclass(frozen=True)
class PartitionLimits:
    """Limits on partitions that a CreateTopics or CreatePartitions command carries from
    the broker that proposed it, so that every member of the quorum applies the command
    with the same limits, whatever its own flags say. The defaults apply to commands
    logged without limits (by an older version): only what would wedge a member is
    refused there."""

    per_request: int = MAX_PARTITIONS_PER_REQUEST
    """``max.partitions.per.request``: partitions one request may add, over all its topics."""
    per_topic: int = NO_LIMIT
    """``max.partitions.per.topic``: partitions one topic may have."""
    per_broker: int = NO_LIMIT
    """``max.broker.partitions`` (KIP-578): partition replicas one broker may hold."""
    per_cluster: int = NO_LIMIT
    """``max.partitions`` (KIP-578): partitions of all topics together."""

    def check_request(self, added: int) -> None:
        """Refuse a request that adds more partitions than one request may (Kafka's
        INVALID_PARTITIONS for a count it cannot take)."""
        if added < 1:
            raise ApiError(
                ErrorCode.invalid_partitions, "Number of partitions must be larger than 0."
            )
        limit = min(self.per_request, MAX_PARTITIONS_PER_REQUEST)
        if added > limit:
            raise ApiError(
                ErrorCode.invalid_partitions,
                f"Excessively large number of partitions per request: {added} requested, "
                f"but a request may add at most {limit} (max.partitions.per.request).",
            )

    def check_topic(self, name: str, total: int) -> None:
        if total > self.per_topic:
            raise ApiError(
                ErrorCode.invalid_partitions,
                f"Topic '{name}' would have {total} partitions, but a topic may have at most "
                f"{self.per_topic} (max.partitions.per.topic).",
            )

    def check_cluster(self, added: int, existing: int) -> None:
        """The cluster's total is a policy of the operator's, not a fault of the request:
        refused with POLICY_VIOLATION, as Kafka refuses what a topic policy forbids."""
        if existing + added > self.per_cluster:
            raise ApiError(
                ErrorCode.policy_violation,
                f"Adding {added} partition(s) would make {existing + added} partitions in the "
                f"cluster, but it may have at most {self.per_cluster} (max.partitions).",
            )

    def check_broker(self, node_id: int, replicas: int) -> None:
        if replicas > self.per_broker:
            raise ApiError(
                ErrorCode.policy_violation,
                f"Broker {node_id} would hold {replicas} partition replicas, but a broker may "
                f"hold at most {self.per_broker} (max.broker.partitions).",
            )
