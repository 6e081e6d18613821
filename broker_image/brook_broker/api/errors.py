"""Counting the errors answered, and the checks every partition-level API shares."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from .. import metrics
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from ..replication import Partition
from .context import ApiContext


def api_name(request_type: type) -> str:
    """The API's name as Kafka spells it (``Produce``, ``ListOffsets``), from kio's class."""
    return request_type.__name__.removesuffix("Request")


def count_error(request: Request, code: ErrorCode) -> None:
    metrics.REQUEST_ERRORS.labels(api=api_name(type(request.body)), error=code.name).inc()


def leader_replica(
    context: ApiContext, topic: str, index: int, current_leader_epoch: int = -1
) -> Partition:
    """The partition's replica here, if this broker leads it in the epoch the client
    believes in (-1: it does not say); else the ApiError that sends the client to
    refresh its metadata, in Kafka's order of checks."""
    if context.topics.get(topic) is None or context.quorum.state.partition(topic, index) is None:
        raise ApiError(
            ErrorCode.unknown_topic_or_partition,
            f"This server does not host this topic-partition: {topic}-{index}",
        )
    replicas = context.replicas
    partition = None if replicas is None else replicas.partition(topic, index)
    if partition is None:
        raise ApiError(
            ErrorCode.not_leader_or_follower,
            f"This server is not the leader for {topic}-{index}",
        )
    epoch = partition.state.leader_epoch
    if current_leader_epoch >= 0 and current_leader_epoch != epoch:
        if current_leader_epoch > epoch:
            raise ApiError(
                ErrorCode.unknown_leader_epoch,
                f"Leader epoch {current_leader_epoch} of {topic}-{index} is newer than {epoch}",
            )
        raise ApiError(
            ErrorCode.fenced_leader_epoch,
            f"Leader epoch {current_leader_epoch} of {topic}-{index} is older than {epoch}",
        )
    if not partition.is_leader:
        raise ApiError(
            ErrorCode.not_leader_or_follower,
            f"This server is not the leader for {topic}-{index}",
        )
    return partition
