"""Fetch: raw record batches from the partition logs, with long polling, on the leader.

Consumers read below the high watermark; followers (``replica_id`` >= 0) read up to the
log end offset, and the offset a follower asks for tells the leader how far that
follower's log goes, which is what moves the high watermark and the ISR. Replicas that
a reassignment is adding are served within the replication throttle.

A fetch that finds fewer than ``min_bytes`` waits, up to ``max_wait_ms``, for an append
or a move of the high watermark on one of its partitions, then reads again; without
this consumers would spin. Byte limits follow KIP-74: the first batch of the first
partition that has data is returned whole even when it is larger than the limits, so a
consumer can always make progress; later partitions only get what still fits. The
request's ``max_bytes`` is capped by the broker's ``fetch.max.bytes``. There
are no incremental fetch sessions: every answer carries session id 0, which tells
clients to send full fetches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from .. import metrics
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from ..storage.batch import iter_headers
from ..storage.log import OffsetOutOfRange
from .context import ApiContext
from .errors import count_error, leader_replica

_FINAL_EPOCH = -1
"""A session epoch that closes a session; with session id 0 it asks for a full fetch."""


@dataclass(slots=True)
class _Result:
    topic: str
    partition: int
    error_code: ErrorCode
    high_watermark: int = -1
    log_start_offset: int = -1
    records: bytes = b""


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    if getattr(body, "session_id", 0) != 0 and getattr(body, "session_epoch", -1) != _FINAL_EPOCH:
        count_error(request, ErrorCode.fetch_session_id_not_found)
        return {
            "error_code": ErrorCode.fetch_session_id_not_found,
            "session_id": 0,
            "responses": [],
        }
    replica_id = getattr(body, "replica_id", -1)
    max_wait = body.max_wait.total_seconds()
    if replica_id >= 0:
        _record_follower_positions(context, body, replica_id)
        # A follower counts as caught up only while it keeps asking within
        # replica.lag.time.max.ms: never hold its request for more than half of that.
        max_wait = min(max_wait, context.config.replica_lag_time_max_ms / 2000)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    while True:
        results, total_bytes, failed = _read(context, body, replica_id)
        remaining = deadline - loop.time()
        if total_bytes >= body.min_bytes or failed or remaining <= 0:
            break
        await context.appends.wait(((r.topic, r.partition) for r in results), remaining)
    return _response(request, results, counted=replica_id < 0)


def _record_follower_positions(context: ApiContext, body: Any, replica_id: int) -> None:
    """A follower's fetch offsets are its log end offsets: the leader learns them once per
    request, before reading (which may wait)."""
    replicas = context.replicas
    if replicas is None:
        return
    for fetch_topic in body.topics:
        for fetch_partition in fetch_topic.partitions:
            partition = replicas.partition(fetch_topic.topic, fetch_partition.partition)
            if partition is not None and partition.is_leader:
                partition.follower_fetched(replica_id, fetch_partition.fetch_offset)


def _read(context: ApiContext, body: Any, replica_id: int) -> tuple[list[_Result], int, bool]:
    """One pass over the requested partitions: results, bytes found, whether any failed."""
    results: list[_Result] = []
    # fetch.max.bytes: the broker holds each answer until it is sent, so no client may
    # make it build one larger than this.
    max_bytes = min(body.max_bytes, context.config.fetch_max_bytes)
    total_bytes = 0
    failed = False
    for fetch_topic in body.topics:
        for fetch_partition in fetch_topic.partitions:
            result = _read_partition(
                context,
                fetch_topic.topic,
                fetch_partition,
                max_bytes - total_bytes,
                replica_id,
                first=total_bytes == 0,
            )
            total_bytes += len(result.records)
            failed = failed or result.error_code != ErrorCode.none
            results.append(result)
    return results, total_bytes, failed


def _read_partition(
    context: ApiContext,
    topic_name: str,
    fetch: Any,
    response_bytes_left: int,
    replica_id: int,
    *,
    first: bool,
) -> _Result:
    index = fetch.partition
    try:
        partition = leader_replica(
            context, topic_name, index, getattr(fetch, "current_leader_epoch", -1)
        )
    except ApiError as error:
        return _Result(topic_name, index, error.code)
    partition_log = partition.log
    result = _Result(
        topic_name,
        index,
        ErrorCode.none,
        partition_log.high_watermark,
        partition_log.log_start_offset,
    )
    limit = min(fetch.partition_max_bytes, response_bytes_left)
    throttle = None
    if replica_id in partition.state.adding and context.replicas is not None:
        throttle = context.replicas.throttle
    if throttle is not None:
        limit = min(limit, throttle.available())
        if limit <= 0:
            return result  # within the throttle, this replica gets nothing for now
    if limit <= 0 and not first:
        return result  # the response is full; the client asks again
    upper = partition_log.log_end_offset if replica_id >= 0 else partition_log.high_watermark
    try:
        records = partition_log.read(fetch.fetch_offset, max(limit, 0), upper_offset=upper)
    except OffsetOutOfRange:
        result.error_code = ErrorCode.offset_out_of_range
        return result
    if len(records) <= limit or first:
        result.records = records
        if throttle is not None:
            throttle.take(len(records))
    return result


def _response(request: Request, results: list[_Result], *, counted: bool) -> Mapping[str, Any]:
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
