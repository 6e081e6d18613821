"""DeleteRecords: delete a partition's records below an offset, by moving its log start
offset there (``AdminClient.delete_records``, ``kafka-delete-records``).

The replica manager moves each leader's log start offset at once, in request order;
the answer then waits, at most the request's timeout, until the followers in the ISR
have moved theirs too, and while it waits the connection goes on to its next requests.
Each partition answers its low watermark: the new log start offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from ..protocol.server import Deferred
from ..replication.appends import TopicPartition
from ..replication.manager import PartitionDeletion, RecordDeletions
from .context import ApiContext
from .errors import count_error


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any] | Deferred:
    body = request.body
    # One answer per partition, as Kafka's map of them: a partition named twice gets the
    # offset it was given last.
    offsets = {
        (topic.name, partition.partition_index): partition.offset
        for topic in body.topics
        for partition in topic.partitions
    }
    deletions = context.replicas.delete_records(
        offsets.items(), timeout_s=body.timeout.total_seconds()
    )
    if deletions.waiting:
        return Deferred(_when_replicated(request, deletions))
    return _response(request, deletions.partitions)


async def _when_replicated(request: Request, deletions: RecordDeletions) -> Mapping[str, Any]:
    return _response(request, await deletions.replicated())


def _response(
    request: Request, partitions: list[tuple[TopicPartition, PartitionDeletion]]
) -> Mapping[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for (topic, index), answer in partitions:
        if answer.error_code != ErrorCode.none:
            count_error(request, answer.error_code)
        topics.setdefault(topic, []).append(
            {
                "partition_index": index,
                "low_watermark": answer.low_watermark,
                "error_code": answer.error_code,
            }
        )
    return {"topics": [{"name": topic, "partitions": answers} for topic, answers in topics.items()]}
