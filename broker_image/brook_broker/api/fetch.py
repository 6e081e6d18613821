"""Fetch: hand the partitions asked for to the replica manager, answer what it read.

The replica manager records follower positions, reads, and holds a fetch that found
fewer than ``min_bytes`` until an append wakes it (see ``ReplicaManager.fetch_records``).
The request's ``max_bytes`` is capped here by the broker's ``fetch.max.bytes``: the
broker holds each answer until it is sent, so no client may make it build a larger one.
There are no incremental fetch sessions: every answer carries session id 0, which tells
clients to send full fetches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from .. import metrics
from ..protocol.codec import Request
from ..replication.fetches import FetchedPartition, FetchParams, PartitionFetch
from ..storage.batch import iter_headers
from .context import ApiContext
from .errors import count_error

_FULL_FETCH_EPOCHS = (0, -1)
"""Session epochs of a full fetch: 0 asks for a new session, -1 for none (closing any
named). Any other epoch is an incremental fetch in a session, and no session exists
here: FETCH_SESSION_ID_NOT_FOUND, whatever the session id (as Kafka's FetchManager)."""


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    if getattr(body, "session_epoch", -1) not in _FULL_FETCH_EPOCHS:
        count_error(request, ErrorCode.fetch_session_id_not_found)
        return {
            "error_code": ErrorCode.fetch_session_id_not_found,
            "session_id": 0,
            "responses": [],
        }
    params = FetchParams(
        replica_id=getattr(body, "replica_id", -1),
        max_wait_s=body.max_wait.total_seconds(),
        min_bytes=body.min_bytes,
        max_bytes=min(body.max_bytes, context.config.fetch_max_bytes),
    )
    asked = [
        PartitionFetch(
            fetch_topic.topic,
            fetch_partition.partition,
            fetch_partition.fetch_offset,
            fetch_partition.partition_max_bytes,
            getattr(fetch_partition, "current_leader_epoch", -1),
            getattr(fetch_partition, "log_start_offset", -1),
        )
        for fetch_topic in body.topics
        for fetch_partition in fetch_topic.partitions
    ]
    results = await context.replicas.fetch_records(params, asked)
    return _response(request, results, counted=not params.from_follower)


def _response(
    request: Request, results: list[FetchedPartition], *, counted: bool
) -> Mapping[str, Any]:
    """The answer; ``counted``: the records go to a consumer and count as sent."""
    topics: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.error_code != ErrorCode.none:
            count_error(request, result.error_code)
        elif result.records and counted:
            metrics.BYTES_OUT.labels(topic=result.topic).inc(len(result.records))
            metrics.RECORDS_OUT.labels(topic=result.topic).inc(
                sum(header.records_count for _, header in iter_headers(result.records))
            )
        topics.setdefault(result.topic, []).append(
            {
                "partition_index": result.partition,
                "error_code": result.error_code,
                "high_watermark": result.high_watermark,
                # No transactions: everything below the high watermark is stable.
                "last_stable_offset": result.high_watermark,
                "log_start_offset": result.log_start_offset,
                "aborted_transactions": None,
                "preferred_read_replica": -1,
                "records": result.records,
            }
        )
    return {
        "error_code": ErrorCode.none,
        "session_id": 0,
        "responses": [
            {"topic": topic, "partitions": partitions} for topic, partitions in topics.items()
        ],
    }
