"""ListOffsets: the earliest and latest offsets of a partition, or the offset for a time.

Answered by the partition's leader only. Special timestamps: -2 is the log start offset,
-1 the high watermark (the next offset a consumer would read, which is also the last
stable offset without transactions; a broker asking as a replica gets the log end
offset, as in Kafka), and from v7 -3 the record with the largest timestamp. Any other
timestamp finds the first record whose timestamp is at least that, through the time
index; only records below the high watermark are ever answered. Each answer carries
the leader epoch that wrote the offset (the current one for the latest offset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..protocol.codec import Request
from ..storage.log import PartitionLog
from .context import ApiContext
from .errors import count_error

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
_MAX_TIMESTAMP_VERSION = 7
_INT64_MIN = -(2**63)


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    topics = []
    for list_topic in request.body.topics:
        partitions = []
        for list_partition in list_topic.partitions:
            answer = _list(context, request, list_topic.name, list_partition)
            if answer["error_code"] != ErrorCode.none:
                count_error(request, answer["error_code"])
            partitions.append(answer)
        topics.append({"name": list_topic.name, "partitions": partitions})
    return {"topics": topics}


def _list(context: ApiContext, request: Request, topic_name: str, requested: Any) -> dict[str, Any]:
    index = requested.partition_index
    answer: dict[str, Any] = {
        "partition_index": index,
        "error_code": ErrorCode.none,
        "timestamp": -1,
        "offset": -1,
        "leader_epoch": -1,
    }
    try:
        partition = context.replicas.leader_partition(
            topic_name, index, getattr(requested, "current_leader_epoch", -1)
        )
    except ApiError as error:
        answer["error_code"] = error.code
        return answer
    partition_log = partition.log
    as_replica = getattr(request.body, "replica_id", -1) >= 0
    upper = partition_log.log_end_offset if as_replica else partition_log.high_watermark
    timestamp = requested.timestamp
    if timestamp == LATEST:
        answer["offset"] = upper
        answer["leader_epoch"] = partition.leader_epoch
        return answer
    if timestamp == EARLIEST:
        found: tuple[int, int] | None = (partition_log.log_start_offset, -1)
    elif timestamp == MAX_TIMESTAMP and request.api_version >= _MAX_TIMESTAMP_VERSION:
        found = _max_timestamp(partition_log)
    else:
        found = partition_log.offset_for_timestamp(timestamp)
    if found is not None and (timestamp == EARLIEST or found[0] < upper):
        answer["offset"], answer["timestamp"] = found
        answer["leader_epoch"] = partition_log.leader_epochs.epoch_for(found[0])
    return answer


def _max_timestamp(partition_log: PartitionLog) -> tuple[int, int] | None:
    """The first record with the largest timestamp, as (offset, timestamp).

    The time index answers "first record at or after time t"; that answer exists exactly
    while t is at most the largest timestamp, so a binary search over t finds it, each
    found record raising the lower bound straight to its own timestamp.
    """
    best = partition_log.offset_for_timestamp(_INT64_MIN)
    if best is None:
        return None
    low, high = best[1], 2**63  # a timestamp in the log; one no record reaches
    while high - low > 1:
        middle = (low + high) // 2
        candidate = partition_log.offset_for_timestamp(middle)
        if candidate is None:
            high = middle
        else:
            best, low = candidate, candidate[1]
    return best
