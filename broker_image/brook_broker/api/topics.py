"""CreateTopics, DeleteTopics and CreatePartitions.

Each topic in a request succeeds or fails on its own, with Kafka's error code and a
message saying why. ``validate_only`` runs every check and changes nothing. Replica
assignments are accepted when they place every replica on this broker, the only one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..metadata.topic_config import describe_topic
from ..metadata.topics import Topic
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

_ZERO_ID = uuid.UUID(int=0)


async def create_topics(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    counts = Counter(creatable.name for creatable in body.topics)
    results = []
    for creatable in body.topics:
        result: dict[str, Any] = {"name": creatable.name, "topic_id": _ZERO_ID, "configs": None}
        try:
            if counts[creatable.name] > 1:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Create topics request from client contains multiple entries for the "
                    f"same topic: {creatable.name}",
                )
            partitions, replication_factor = _layout(context, creatable)
            topic = context.create_topic(
                creatable.name,
                partitions,
                replication_factor,
                [(config.name, config.value) for config in creatable.configs],
                validate_only=body.validate_only,
            )
        except ApiError as error:
            count_error(request, error.code)
            result.update(error_code=error.code, error_message=error.message)
        else:
            result.update(
                error_code=ErrorCode.none,
                error_message=None,
                topic_id=topic.topic_id if not body.validate_only else _ZERO_ID,
                num_partitions=topic.partitions,
                replication_factor=topic.replication_factor,
                configs=_configs(context, topic),
            )
        results.append(result)
    return {"topics": results}


async def delete_topics(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    if request.api_version < 6:
        requested = [(name, None) for name in body.topic_names]
    else:
        requested = [(state.name, state.topic_id) for state in body.topics]
    responses = []
    for name, topic_id in requested:
        response: dict[str, Any] = {"name": name, "topic_id": topic_id or _ZERO_ID}
        try:
            topic = context.delete_topic(_topic_name(context, name, topic_id))
        except ApiError as error:
            count_error(request, error.code)
            response.update(error_code=error.code, error_message=error.message)
        else:
            response.update(error_code=ErrorCode.none, name=topic.name, topic_id=topic.topic_id)
        responses.append(response)
    return {"responses": responses}


async def create_partitions(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    counts = Counter(requested.name for requested in body.topics)
    results = []
    for requested in body.topics:
        result: dict[str, Any] = {"name": requested.name, "error_code": ErrorCode.none}
        try:
            if counts[requested.name] > 1:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Create partitions request from client contains multiple entries for "
                    f"the same topic: {requested.name}",
                )
            if requested.assignments is not None:
                current = context.topics.get(requested.name)
                grown = context.add_partitions(requested.name, requested.count, validate_only=True)
                assert current is not None  # add_partitions refuses unknown topics
                _check_assignments(
                    context,
                    [assignment.broker_ids for assignment in requested.assignments],
                    grown.partitions - current.partitions,
                    current.replication_factor,
                )
            context.add_partitions(
                requested.name, requested.count, validate_only=body.validate_only
            )
        except ApiError as error:
            count_error(request, error.code)
            result.update(error_code=error.code, error_message=error.message)
        results.append(result)
    return {"results": results}


def _layout(context: ApiContext, creatable: Any) -> tuple[int, int]:
    """Partition count and replication factor, from the request, its assignments or defaults."""
    partitions, replication_factor = creatable.num_partitions, creatable.replication_factor
    if creatable.assignments:
        if partitions != -1 or replication_factor != -1:
            raise ApiError(
                ErrorCode.invalid_request,
                "Both numPartitions or replicationFactor and replicasAssignments were set. "
                "Both cannot be used at the same time.",
            )
        indexes = sorted(assignment.partition_index for assignment in creatable.assignments)
        if indexes != list(range(len(indexes))):
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                "Partitions should be a consecutive 0-based integer sequence",
            )
        replica_lists = [assignment.broker_ids for assignment in creatable.assignments]
        _check_assignments(context, replica_lists, len(indexes), len(replica_lists[0]))
        return len(indexes), len(replica_lists[0])
    if partitions == -1:
        partitions = context.config.num_partitions
    if replication_factor == -1:
        replication_factor = context.config.default_replication_factor
    if replication_factor < 1:
        raise ApiError(
            ErrorCode.invalid_replication_factor, "Replication factor must be larger than 0."
        )
    return partitions, replication_factor


def _check_assignments(
    context: ApiContext,
    replica_lists: list[tuple[int, ...]],
    expected_partitions: int,
    replication_factor: int,
) -> None:
    if len(replica_lists) != expected_partitions:
        raise ApiError(
            ErrorCode.invalid_replica_assignment,
            f"Increasing the number of partitions by {expected_partitions} but "
            f"{len(replica_lists)} assignments provided.",
        )
    node_id = context.config.node_id
    for replicas in replica_lists:
        if len(set(replicas)) != len(replicas):
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                f"Duplicate brokers not allowed in replica assignment: {list(replicas)}",
            )
        if len(replicas) != replication_factor:
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                f"Inconsistent replication factor between partitions: expected "
                f"{replication_factor}, got {len(replicas)}",
            )
        unknown = sorted(set(replicas) - {node_id})
        if unknown:
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                f"Unknown broker(s) in replica assignment: {unknown}; the only broker is {node_id}",
            )


def _topic_name(context: ApiContext, name: str | None, topic_id: uuid.UUID | None) -> str:
    if name is not None and topic_id not in (None, _ZERO_ID):
        raise ApiError(ErrorCode.invalid_request, "Give a topic name or a topic id, not both")
    if name is not None:
        return name
    topic = context.topics.get_by_id(topic_id) if topic_id is not None else None
    if topic is None:
        raise ApiError(ErrorCode.unknown_topic_id, f"No topic has the id {topic_id}")
    return topic.name


def _configs(context: ApiContext, topic: Topic) -> list[dict[str, Any]]:
    return [
        {
            "name": entry.name,
            "value": entry.value,
            "read_only": entry.read_only,
            "config_source": entry.source,
            "is_sensitive": False,
        }
        for entry in describe_topic(topic.configs, context.config)
    ]
