"""AlterPartitionReassignments and ListPartitionReassignments.

A reassignment adds the target replicas, waits until they are all in the ISR, moves
leadership if the leader is leaving, and drops the replicas that are not in the target;
the state machine does all of it, so a controller failover does not interrupt it. Null
replicas cancel the reassignment in progress. Each partition succeeds or fails on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.commands import AlterReassignment
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error


async def alter(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    timeout = body.timeout.total_seconds()
    requested = [
        (topic.name, partition.partition_index, partition.replicas)
        for topic in body.topics
        for partition in topic.partitions
    ]
    outcomes = await asyncio.gather(
        *(_reassign(context, name, index, replicas, timeout) for name, index, replicas in requested)
    )
    responses: dict[str, list[dict[str, Any]]] = {}
    for (name, index, _), error in zip(requested, outcomes, strict=True):
        if error is not None:
            count_error(request, error.code)
        responses.setdefault(name, []).append(
            {
                "partition_index": index,
                "error_code": ErrorCode.none if error is None else error.code,
                "error_message": None if error is None else error.message,
            }
        )
    return {
        "error_code": ErrorCode.none,
        "responses": [
            {"name": name, "partitions": partitions} for name, partitions in responses.items()
        ],
    }


async def list_reassignments(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    ongoing = context.quorum.state.reassignments()
    if body.topics is not None:
        wanted = {(topic.name, index) for topic in body.topics for index in topic.partition_indexes}
        ongoing = {key: state for key, state in ongoing.items() if key in wanted}
    topics: dict[str, list[dict[str, Any]]] = {}
    for (name, index), state in ongoing.items():
        topics.setdefault(name, []).append(
            {
                "partition_index": index,
                "replicas": state.replicas,
                "adding_replicas": state.adding,
                "removing_replicas": state.removing,
            }
        )
    return {
        "error_code": ErrorCode.none,
        "topics": [{"name": name, "partitions": partitions} for name, partitions in topics.items()],
    }


async def _reassign(
    context: ApiContext, name: str, index: int, replicas: Any, timeout: float
) -> ApiError | None:
    target = None if replicas is None else list(replicas)
    try:
        await context.quorum.submit(
            AlterReassignment(name, index, target, context.partition_limits), timeout=timeout
        )
    except ApiError as error:
        return error
    return None
