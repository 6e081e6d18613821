"""FindCoordinator: a group's coordinator is the leader of the ``__consumer_offsets``
partition its id hashes to; the topic is made by the first such request.

Transactions are not supported, so a transaction coordinator is refused with the same
fatal error InitProducerId gives a transactional id: clients fail at once, not retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..groups.offsets_topic import OFFSETS_TOPIC, offsets_topic_configs, partition_for
from ..metadata.errors import ApiError
from ..metadata.model import NO_LEADER
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

_GROUP = 0


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    key_type = getattr(body, "key_type", _GROUP)
    keys = getattr(body, "coordinator_keys", None)
    if keys is None:  # v0-3 ask for one key and answer with one coordinator at the top level
        return await _coordinator(context, request, key_type, body.key)
    return {"coordinators": [await _coordinator(context, request, key_type, key) for key in keys]}


async def _coordinator(
    context: ApiContext, request: Request, key_type: int, key: str
) -> dict[str, Any]:
    try:
        node_id, host, port = await _locate(context, key_type, key)
    except ApiError as error:
        count_error(request, error.code)
        return {
            "key": key,
            "error_code": error.code,
            "error_message": error.message,
            "node_id": -1,
            "host": "",
            "port": -1,
        }
    return {
        "key": key,
        "error_code": ErrorCode.none,
        "error_message": None,
        "node_id": node_id,
        "host": host,
        "port": port,
    }


async def _locate(context: ApiContext, key_type: int, key: str) -> tuple[int, str, int]:
    if key_type != _GROUP:
        raise ApiError(
            ErrorCode.transactional_id_authorization_failed, "transactions are not supported"
        )
    if not key:
        raise ApiError(ErrorCode.invalid_request, "The group id is empty")
    try:
        await _ensure_offsets_topic(context)
    except ApiError as error:
        raise ApiError(
            ErrorCode.coordinator_not_available, f"{OFFSETS_TOPIC} cannot be made yet: {error}"
        ) from None
    state = context.quorum.state
    topic = state.topics[OFFSETS_TOPIC]
    partition = partition_for(key, len(topic.partitions))
    leader = topic.partitions[partition].leader
    broker = state.brokers.get(leader)
    if leader == NO_LEADER or broker is None or broker.fenced:
        raise ApiError(
            ErrorCode.coordinator_not_available,
            f"{OFFSETS_TOPIC}-{partition}, which holds group {key}, has no leader",
        )
    return leader, broker.host, broker.port


async def _ensure_offsets_topic(context: ApiContext) -> None:
    """Make ``__consumer_offsets`` unless it exists (a concurrent request may make it)."""
    if context.topics.get(OFFSETS_TOPIC) is not None:
        return
    config = context.config
    brokers = sum(1 for broker in context.quorum.state.brokers.values() if not broker.fenced)
    replication_factor = max(1, min(config.offsets_topic_replication_factor, brokers))
    try:
        await context.create_topic(
            OFFSETS_TOPIC,
            config.offsets_topic_num_partitions,
            replication_factor,
            offsets_topic_configs(config.offsets_topic_segment_bytes).items(),
        )
    except ApiError as error:
        if error.code != ErrorCode.topic_already_exists:
            raise
