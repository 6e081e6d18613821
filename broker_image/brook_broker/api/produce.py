"""Produce: validate each partition's record batches and append them as they came.

Only v2 batches with a valid CRC32C are stored; each batch must fit the topic's
``max.message.bytes``. The broker never decompresses or rewrites records: the log
assigns offsets by patching each batch's base offset.
"""

from __future__ import annotations

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
from ..storage.batch import TRANSACTIONAL_FLAG, BatchHeader, InvalidBatch, validate_batches
from .context import LIVE_BROKERS, ApiContext
from .errors import count_error

log = logging.getLogger(__name__)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_VALID_ACKS = (0, 1, -1)


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any] | None:
    body = request.body
    now_ms = time.time_ns() // 1_000_000
    responses = []
    for topic_data in body.topic_data:
        partitions = []
        for partition_data in topic_data.partition_data:
            try:
                partitions.append(_append(context, body, topic_data.name, partition_data, now_ms))
            except ApiError as error:
                count_error(request, error.code)
                partitions.append(
                    {
                        "index": partition_data.index,
                        "error_code": error.code,
                        "error_message": error.message,
                        "base_offset": -1,
                        "log_append_time": None,
                        "log_start_offset": -1,
                    }
                )
        responses.append({"name": topic_data.name, "partition_responses": partitions})
    if body.acks == 0:
        return None  # the producer reads no response at all
    return {"responses": responses}


def _append(
    context: ApiContext, body: Any, topic_name: str, partition_data: Any, now_ms: int
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
    topic = context.topics.get(topic_name)
    partition_log = None
    if topic is not None and 0 <= index < topic.partitions:
        partition_log = context.logs.get(topic_name, index)
    if topic is None or partition_log is None:
        raise ApiError(
            ErrorCode.unknown_topic_or_partition,
            f"This server does not host this topic-partition: {topic_name}-{index}",
        )
    settings = context.settings(topic)
    records = partition_data.records
    try:
        headers = validate_batches(records if records is not None else b"")
    except InvalidBatch as invalid:
        raise ApiError(ErrorCode[invalid.error], str(invalid)) from None
    _check_batches(headers, settings, f"{topic_name}-{index}")
    if body.acks == -1 and settings.min_insync_replicas > LIVE_BROKERS:
        raise ApiError(
            ErrorCode.not_enough_replicas,
            f"The size of the current ISR {LIVE_BROKERS} is insufficient to satisfy the "
            f"min.isr requirement of {settings.min_insync_replicas} for partition "
            f"{topic_name}-{index}",
        )
    try:
        appended = partition_log.append(
            records, headers, now_ms=now_ms, log_append_time=settings.log_append_time
        )
    except OSError as error:
        log.warning(
            "append failed", extra={"partition": f"{topic_name}-{index}", "error": str(error)}
        )
        raise ApiError(ErrorCode.kafka_storage_error, f"append failed: {error}") from None
    context.appends.notify(topic_name, index)
    metrics.BYTES_IN.labels(topic=topic_name).inc(len(records))
    metrics.RECORDS_IN.labels(topic=topic_name).inc(appended.record_count)
    append_time = appended.log_append_time_ms
    return {
        "index": index,
        "error_code": ErrorCode.none,
        "base_offset": appended.base_offset,
        "log_append_time": (
            _EPOCH + datetime.timedelta(milliseconds=append_time) if append_time >= 0 else None
        ),
        "log_start_offset": partition_log.log_start_offset,
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
