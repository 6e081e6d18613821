"""CreateTopics, DeleteTopics and CreatePartitions.

Each topic in a request succeeds or fails on its own, with Kafka's error code and a
message saying why. ``validate_only`` runs every check and changes nothing. Without
replica assignments, replicas are placed over the live brokers; given assignments must
name registered brokers, each once per partition, with one replication factor. A request
that adds more partitions over all its topics than ``max.partitions.per.request`` allows
is refused whole, each topic with INVALID_PARTITIONS, before anything is proposed.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..metadata.model import TopicState
from ..metadata.topic_config import describe_topic
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

_ZERO_ID = uuid.UUID(int=0)


async def create_topics(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    counts = Counter(creatable.name for creatable in body.topics)
    too_many = _request_error(context, sum(_new_count(context, c) for c in body.topics))
    results = []
    for creatable in body.topics:
        result: dict[str, Any] = {"name": creatable.name, "topic_id": _ZERO_ID, "configs": None}
        try:
            if too_many is not None:
                raise too_many
            if counts[creatable.name] > 1:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Create topics request from client contains multiple entries for the "
                    f"same topic: {creatable.name}",
                )
            partitions, replication_factor, assignments = _layout(context, creatable)
            topic = await context.create_topic(
                creatable.name,
                partitions,
                replication_factor,
                [(config.name, config.value) for config in creatable.configs],
                assignments=assignments,
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
                num_partitions=len(topic.partitions),
                replication_factor=topic.replication_factor,
                configs=_configs(context, topic),
            )
        results.append(result)
    return {"topics": results}


async def delete_topics(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    requested: list[tuple[str | None, uuid.UUID | None]]
    if request.api_version < 6:
        requested = [(name, None) for name in body.topic_names]
    else:
        requested = [(state.name, state.topic_id) for state in body.topics]
    responses = []
    for name, topic_id in requested:
        response: dict[str, Any] = {"name": name, "topic_id": topic_id or _ZERO_ID}
        try:
            topic = await context.delete_topic(_topic_name(context, name, topic_id))
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
    too_many = _request_error(context, sum(_added_count(context, r) for r in body.topics))
    results = []
    for requested in body.topics:
        result: dict[str, Any] = {"name": requested.name, "error_code": ErrorCode.none}
        try:
            if too_many is not None:
                raise too_many
            if counts[requested.name] > 1:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Create partitions request from client contains multiple entries for "
                    f"the same topic: {requested.name}",
                )
            assignments = (
                None
                if requested.assignments is None
                else [assignment.broker_ids for assignment in requested.assignments]
            )
            await context.add_partitions(
                requested.name, requested.count, assignments, validate_only=body.validate_only
            )
        except ApiError as error:
            count_error(request, error.code)
            result.update(error_code=error.code, error_message=error.message)
        results.append(result)
    return {"results": results}


def _request_error(context: ApiContext, added: int) -> ApiError | None:
    """The refusal of a request adding ``added`` partitions over all its topics, if any."""
    if added < 1:
        return None  # each topic is refused on its own
    try:
        context.partition_limits.check_request(added)
    except ApiError as error:
        return error
    return None


def _new_count(context: ApiContext, creatable: Any) -> int:
    """Partitions a CreateTopics entry asks for (0 for a count that is refused anyway)."""
    if creatable.assignments:
        return len(creatable.assignments)
    if creatable.num_partitions == -1:
        return context.config.num_partitions
    return max(0, int(creatable.num_partitions))


def _added_count(context: ApiContext, requested: Any) -> int:
    """Partitions a CreatePartitions entry adds to its topic (0 if it adds none)."""
    topic = context.topics.get(requested.name)
    return max(0, int(requested.count) - (len(topic.partitions) if topic is not None else 0))


def _layout(context: ApiContext, creatable: Any) -> tuple[int, int, list[tuple[int, ...]] | None]:
    """Partition count, replication factor and replica assignments (or None: placed by
    the controller), from the request or the broker's defaults."""
    partitions, replication_factor = creatable.num_partitions, creatable.replication_factor
    if creatable.assignments:
        if partitions != -1 or replication_factor != -1:
            raise ApiError(
                ErrorCode.invalid_request,
                "Both numPartitions or replicationFactor and replicasAssignments were set. "
                "Both cannot be used at the same time.",
            )
        by_index = {
            assignment.partition_index: tuple(assignment.broker_ids)
            for assignment in creatable.assignments
        }
        if sorted(by_index) != list(range(len(creatable.assignments))):
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                "Partitions should be a consecutive 0-based integer sequence",
            )
        assignments = [by_index[index] for index in range(len(by_index))]
        return len(assignments), len(assignments[0]), assignments
    if partitions == -1:
        partitions = context.config.num_partitions
    if replication_factor == -1:
        replication_factor = context.config.default_replication_factor
    return partitions, replication_factor, None


def _topic_name(context: ApiContext, name: str | None, topic_id: uuid.UUID | None) -> str:
    if name is not None and topic_id not in (None, _ZERO_ID):
        raise ApiError(ErrorCode.invalid_request, "Give a topic name or a topic id, not both")
    if name is not None:
        return name
    topic = context.topics.get_by_id(topic_id) if topic_id is not None else None
    if topic is None:
        raise ApiError(ErrorCode.unknown_topic_id, f"No topic has the id {topic_id}")
    return topic.name


def _configs(context: ApiContext, topic: TopicState) -> list[dict[str, Any]]:
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
