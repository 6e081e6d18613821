"""OffsetForLeaderEpoch: where a leader epoch ends in the leader's log.

A follower that starts following a new leader asks this for its own latest epoch and
cuts its log where the answer says the leader's log went another way; consumers ask it
to detect that a log they read was truncated after a leader change (KIP-320). The
answer is the largest epoch the leader knows at or below the asked one, and the offset
where it ends: the start of the next epoch, or the log end offset for the current one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    topics = []
    for requested_topic in request.body.topics:
        partitions = []
        for requested in requested_topic.partitions:
            answer: dict[str, Any] = {
                "partition": requested.partition,
                "error_code": ErrorCode.none,
                "leader_epoch": -1,
                "end_offset": -1,
            }
            try:
                partition = context.replicas.leader_partition(
                    requested_topic.topic,
                    requested.partition,
                    requested.current_leader_epoch,
                )
            except ApiError as error:
                count_error(request, error.code)
                answer["error_code"] = error.code
            else:
                log = partition.log
                answer["leader_epoch"], answer["end_offset"] = log.leader_epochs.end_offset_for(
                    requested.leader_epoch, log.log_end_offset
                )
            partitions.append(answer)
        topics.append({"topic": requested_topic.topic, "partitions": partitions})
    return {"topics": topics}
