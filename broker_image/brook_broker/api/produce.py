"""Produce: hand each partition's record batches to the replica manager, answer what it did.

The replica manager appends every partition at once, in request order. With ``acks=all``
the answer then waits for the in-sync replicas, and while it waits the connection goes on
to its next request (answers still leave in order): a producer with several requests in
flight has them all replicating together instead of one after another. With ``acks=0``
there is no answer; a partition's error closes the connection instead, as in Kafka.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from ..protocol.server import CloseConnection, Deferred
from ..replication.appends import AppendResult, PartitionAppend, TopicPartition
from .context import ApiContext
from .errors import count_error

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any] | Deferred | None:
    body = request.body
    appended = context.replicas.append_records(
        (
            ((topic_data.name, partition_data.index), partition_data.records)
            for topic_data in body.topic_data
            for partition_data in topic_data.partition_data
        ),
        acks=body.acks,
        timeout_s=body.timeout.total_seconds(),
        transactional_id=body.transactional_id,
    )
    if body.acks == 0:
        _close_on_error(request, appended.partitions)
        return None  # the producer reads no response at all
    if appended.waiting:
        # The answer waits without the records: their frame is free for reuse.
        header = dataclasses.replace(request, body=dataclasses.replace(body, topic_data=()))
        return Deferred(_when_committed(header, appended))
    return _response(request, appended.partitions)


def _close_on_error(
    request: Request, partitions: list[tuple[TopicPartition, PartitionAppend]]
) -> None:
    """acks=0: a producer that reads no answers learns of an error (a moved leader) only
    by its connection closing, and then refreshes its metadata; Kafka closes it so.
    Otherwise it would go on sending to a broker that drops every batch."""
    failed = [
        (key, answer.error_code)
        for key, answer in partitions
        if answer.error_code != ErrorCode.none
    ]
    if failed:
        for _, code in failed:
            count_error(request, code)
        named = ", ".join(f"{topic}-{index}: {code.name}" for (topic, index), code in failed)
        raise CloseConnection(f"produce with acks=0 failed ({named})")


async def _when_committed(request: Request, appended: AppendResult) -> Mapping[str, Any]:
    return _response(request, await appended.committed())


def _response(
    request: Request, partitions: list[tuple[TopicPartition, PartitionAppend]]
) -> Mapping[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for (topic, index), answer in partitions:
        if answer.error_code != ErrorCode.none:
            count_error(request, answer.error_code)
        append_time = answer.log_append_time_ms
        topics.setdefault(topic, []).append(
            {
                "index": index,
                "error_code": answer.error_code,
                "error_message": answer.error_message,
                "base_offset": answer.base_offset,
                "log_append_time": (
                    _EPOCH + datetime.timedelta(milliseconds=append_time)
                    if append_time >= 0
                    else None
                ),
                "log_start_offset": answer.log_start_offset,
            }
        )
    return {
        "responses": [
            {"name": topic, "partition_responses": answers} for topic, answers in topics.items()
        ]
    }
