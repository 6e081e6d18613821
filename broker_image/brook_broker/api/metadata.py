"""Metadata: the live brokers, the cluster id, the active controller, and topics with
their partitions: leader and leader epoch, replicas, ISR and offline replicas.

Everything comes from the replicated cluster metadata as this broker has applied it.
Brokers are the registered, unfenced ones; a replica on a fenced broker is offline; a
partition without a leader says LEADER_NOT_AVAILABLE. Unknown topics are created here
when the broker allows auto-creation and the client does too
(``allow_auto_topic_creation``, v4+).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..groups.offsets_topic import OFFSETS_TOPIC
from ..metadata.cluster_state import ClusterState
from ..metadata.errors import ApiError
from ..metadata.model import NO_LEADER, PartitionState, TopicState
from ..metadata.topics import validate_topic_name
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

_ZERO_ID = uuid.UUID(int=0)
_FIRST_NULLABLE_NAME_VERSION = 12  # Metadata v12 looks topics up by id, name null
_NOT_REQUESTED = -(2**31)
# Kafka's AclOperation codes: without authorization, every operation is allowed.
_TOPIC_OPERATIONS = sum(1 << operation for operation in (3, 4, 5, 6, 7, 8, 10, 11))
_CLUSTER_OPERATIONS = sum(1 << operation for operation in (5, 7, 8, 9, 10, 11, 12))


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    include_operations = getattr(body, "include_topic_authorized_operations", False)
    if body.topics is None:
        topics = [
            _describe(context, request, topic, include_operations)
            for topic in context.topics.list_topics()
        ]
    else:
        allow_creation = getattr(body, "allow_auto_topic_creation", True)
        seen: set[str | uuid.UUID] = set()
        topics = []
        for requested in body.topics:
            key = requested.name if requested.name is not None else requested.topic_id
            if key in seen:
                continue
            seen.add(key)
            topics.append(
                await _lookup(context, request, requested, allow_creation, include_operations)
            )
    controller_id = context.quorum.active_controller_id
    return {
        "brokers": [
            {
                "node_id": broker.node_id,
                "host": broker.host,
                "port": broker.port,
                "rack": broker.rack,
            }
            for broker in context.quorum.state.live_brokers()
        ],
        "cluster_id": context.config.cluster_id,
        "controller_id": -1 if controller_id is None else controller_id,
        "topics": topics,
        "cluster_authorized_operations": (
            _CLUSTER_OPERATIONS
            if getattr(body, "include_cluster_authorized_operations", False)
            else _NOT_REQUESTED
        ),
    }


async def _lookup(
    context: ApiContext,
    request: Request,
    requested: Any,
    allow_creation: bool,
    include_operations: bool,
) -> dict[str, Any]:
    name: str | None = requested.name
    if name is None and request.api_version < _FIRST_NULLABLE_NAME_VERSION:
        # Kafka refuses this as invalid: these versions have no null name to answer with.
        return _error(request, ErrorCode.invalid_request, "", _ZERO_ID)
    if name is None:
        topic_id = getattr(requested, "topic_id", None) or _ZERO_ID
        topic = context.topics.get_by_id(topic_id)
        if topic is None:
            error = (
                ErrorCode.unknown_topic_id if topic_id != _ZERO_ID else ErrorCode.invalid_request
            )
            return _error(request, error, None, topic_id)
        return _describe(context, request, topic, include_operations)
    topic = context.topics.get(name)
    if topic is not None:
        return _describe(context, request, topic, include_operations)
    try:
        validate_topic_name(name)
        if not (allow_creation and context.config.auto_create_topics):
            return _error(request, ErrorCode.unknown_topic_or_partition, name, _ZERO_ID)
        topic = await context.create_topic(
            name, context.config.num_partitions, context.config.default_replication_factor
        )
    except ApiError as error:
        topic = context.topics.get(name)
        if error.code != ErrorCode.topic_already_exists or topic is None:
            return _error(request, error.code, name, _ZERO_ID)
        # Created meanwhile by another client or broker: describe it.
    return _describe(context, request, topic, include_operations)


def _describe(
    context: ApiContext, request: Request, topic: TopicState, include_operations: bool
) -> dict[str, Any]:
    state = context.quorum.state
    return {
        "error_code": ErrorCode.none,
        "name": topic.name,
        "topic_id": topic.topic_id,
        "is_internal": topic.name == OFFSETS_TOPIC,
        "partitions": [
            _partition(request, state, index, partition)
            for index, partition in enumerate(topic.partitions)
        ],
        "topic_authorized_operations": _TOPIC_OPERATIONS if include_operations else _NOT_REQUESTED,
    }


def _partition(
    request: Request, state: ClusterState, index: int, partition: PartitionState
) -> dict[str, Any]:
    error = ErrorCode.none
    if partition.leader == NO_LEADER:
        error = ErrorCode.leader_not_available
        count_error(request, error)
    return {
        "error_code": error,
        "partition_index": index,
        "leader_id": partition.leader,
        "leader_epoch": partition.leader_epoch,
        "replica_nodes": partition.replicas,
        "isr_nodes": partition.isr,
        "offline_replicas": state.offline_replicas(partition),
    }


def _error(
    request: Request, code: ErrorCode, name: str | None, topic_id: uuid.UUID
) -> dict[str, Any]:
    count_error(request, code)
    return {"error_code": code, "name": name, "topic_id": topic_id, "partitions": []}
