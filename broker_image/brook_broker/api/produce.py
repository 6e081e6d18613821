"""Produce: validate each partition's record batches and append them on the leader.

Only v2 batches with a valid CRC32C are stored; each batch must fit the topic's
``max.message.bytes``. The broker never decompresses or rewrites records: the leader
assigns offsets and stamps its leader epoch by patching each batch's header.

With ``acks=all`` a partition is refused (NOT_ENOUGH_REPLICAS, nothing appended) when
fewer than ``min.insync.replicas`` replicas are in sync as the leader sees them;
otherwise the answer waits until the high watermark passes the appended batches, at
most the request's timeout (REQUEST_TIMED_OUT), and fails if leadership moves first.
All partitions of a request are appended before any wait, so they replicate together.

Batches of idempotent producers are checked against the partition's producer state: a
retried batch that is already in the log is answered as it was the first time (its
original base offset, NONE), and with ``acks=all`` only once that original is committed;
a sequence gap is refused with OUT_OF_ORDER_SEQUENCE_NUMBER and a fenced producer epoch
with INVALID_PRODUCER_EPOCH, nothing appended.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from .. import metrics
from ..metadata.errors import ApiError
from ..metadata.topic_config import TopicSettings
from ..protocol.codec import Request
from ..replication.producer_state import NO_PRODUCER_ID
from ..storage.batch import TRANSACTIONAL_FLAG, BatchHeader, InvalidBatch, validate_batches
from .context import ApiContext
from .errors import count_error, leader_replica

log = logging.getLogger(__name__)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_VALID_ACKS = (0, 1, -1)

_Commit = tuple[dict[str, Any], "asyncio.Future[ErrorCode]"]
"""An answer waiting for the high watermark, and the future that says how it ended."""


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any] | None:
    body = request.body
    now_ms = time.time_ns() // 1_000_000
    responses = []
    commits: list[_Commit] = []
    for topic_data in body.topic_data:
        partitions = []
        for partition_data in topic_data.partition_data:
            try:
                answer = _append(context, body, topic_data.name, partition_data, now_ms, commits)
            except ApiError as error:
                count_error(request, error.code)
                answer = {
                    "index": partition_data.index,
                    "error_code": error.code,
                    "error_message": error.message,
                    "base_offset": -1,
                    "log_append_time": None,
                    "log_start_offset": -1,
                }
            partitions.append(answer)
        responses.append({"name": topic_data.name, "partition_responses": partitions})
    if commits:
        await _wait_for_commits(request, commits, body.timeout.total_seconds())
    if body.acks == 0:
        return None  # the producer reads no response at all
    return {"responses": responses}


def _append(
    context: ApiContext,
    body: Any,
    topic_name: str,
    partition_data: Any,
    now_ms: int,
    commits: list[_Commit],
) -> dict[str, Any]:
    index = partition_data.index
    if body.acks not in _VALID_ACKS:
        raise ApiError(
            ErrorCode.invalid_required_acks, f"acks={body.acks} is not one of 0, 1, -1 (all)"
        )
    if body.transactional_id is not None:
        raise ApiError(
            ErrorCode.transactional_id_authorization_failed, "transactions are not supported"
        )
    partition = leader_replica(context, topic_name, index)
    settings = partition.settings
    records = partition_data.records
    try:
        headers = validate_batches(records if records is not None else b"")
    except InvalidBatch as invalid:
        raise ApiError(ErrorCode[invalid.error], str(invalid)) from None
    _check_batches(headers, settings, f"{topic_name}-{index}")
    if body.acks == -1:
        partition.check_enough_replicas()
    try:
        appended = partition.append(
            records, headers, now_ms=now_ms, log_append_time=settings.log_append_time
        )
    except OSError as error:
        log.warning(
            "append failed", extra={"partition": f"{topic_name}-{index}", "error": str(error)}
        )
        raise ApiError(ErrorCode.kafka_storage_error, f"append failed: {error}") from None
    if appended.record_count:
        metrics.BYTES_IN.labels(topic=topic_name).inc(len(records))
        metrics.RECORDS_IN.labels(topic=topic_name).inc(appended.record_count)
    else:  # a retry of a batch already in the log
        metrics.DUPLICATE_BATCHES.labels(topic=topic_name).inc()
    append_time = appended.log_append_time_ms
    answer = {
        "index": index,
        "error_code": ErrorCode.none,
        "base_offset": appended.base_offset,
        "log_append_time": (
            _EPOCH + datetime.timedelta(milliseconds=append_time) if append_time >= 0 else None
        ),
        "log_start_offset": partition.log.log_start_offset,
    }
    if body.acks == -1:
        commits.append((answer, partition.wait_for_commit(appended.last_offset + 1)))
    return answer


async def _wait_for_commits(request: Request, commits: list[_Commit], timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until every appended batch is committed, then
    put each partition's outcome into its answer."""
    futures = [future for _, future in commits]
    if not all(future.done() for future in futures):
        await asyncio.wait(futures, timeout=max(timeout, 0))
    for answer, future in commits:
        if future.done():
            code = future.result()
        else:
            future.cancel()
            code = ErrorCode.request_timed_out
        if code == ErrorCode.none:
            continue
        count_error(request, code)
        answer["error_code"] = code
        answer["error_message"] = _COMMIT_ERRORS[code]


_COMMIT_ERRORS = {
    ErrorCode.request_timed_out: "The in-sync replicas did not all have the records in time",
    ErrorCode.not_leader_or_follower: "Leadership moved before the records were committed",
    ErrorCode.not_enough_replicas_after_append: (
        "The records were written, but the ISR shrank below min.insync.replicas meanwhile"
    ),
}


def _check_batches(headers: list[BatchHeader], settings: TopicSettings, partition: str) -> None:
    for header in headers:
        if header.size > settings.max_message_bytes:
            raise ApiError(
                ErrorCode.message_too_large,
                f"The record batch of {header.size} bytes for {partition} is larger than "
                f"max.message.bytes ({settings.max_message_bytes})",
            )
        if header.is_control:
            raise ApiError(
                ErrorCode.invalid_record, "control batches are written by the broker only"
            )
        if header.attributes & TRANSACTIONAL_FLAG:
            raise ApiError(ErrorCode.invalid_txn_state, "transactional batches are not supported")
        if header.producer_id != NO_PRODUCER_ID and header.base_sequence < 0:
            raise ApiError(
                ErrorCode.invalid_record,
                f"Invalid sequence number {header.base_sequence} in a record batch of "
                f"producer {header.producer_id} for {partition}",
            )
