"""OffsetCommit, OffsetFetch and OffsetDelete: a group's committed offsets.

A commit from a member is checked against its generation; a commit with generation -1
and no member id comes from a consumer that assigns partitions itself and is accepted
while the group has no members. A partition never committed is fetched as offset -1
(the consumer then applies its ``auto.offset.reset``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..groups.offsets_topic import CommittedOffset
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

NO_OFFSET = -1


async def offset_commit(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    offsets = {
        (topic.name, partition.partition_index): (
            partition.committed_offset,
            getattr(partition, "committed_leader_epoch", -1),
            partition.committed_metadata,
        )
        for topic in body.topics
        for partition in topic.partitions
    }
    try:
        codes = await context.groups.offsets.commit(
            body.group_id,
            body.generation_id_or_member_epoch,
            body.member_id,
            getattr(body, "group_instance_id", None),
            offsets,
        )
    except ApiError as error:
        codes = dict.fromkeys(offsets, error.code)
    for code in codes.values():
        if code != ErrorCode.none:
            count_error(request, code)
    return {
        "topics": [
            {
                "name": topic.name,
                "partitions": [
                    {
                        "partition_index": partition.partition_index,
                        "error_code": codes[(topic.name, partition.partition_index)],
                    }
                    for partition in topic.partitions
                ],
            }
            for topic in body.topics
        ]
    }


async def offset_fetch(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    groups = getattr(body, "groups", None)
    if groups is None:  # v1-7: one group, its error at the top level (v2+)
        return _fetch_group(context, request, body.group_id, body.topics)
    return {
        "groups": [_fetch_group(context, request, group.group_id, group.topics) for group in groups]
    }


def _fetch_group(
    context: ApiContext, request: Request, group_id: str, topics: Any
) -> dict[str, Any]:
    wanted = (
        None
        if topics is None
        else [(topic.name, index) for topic in topics for index in topic.partition_indexes]
    )
    try:
        offsets = context.groups.offsets.fetch(group_id, wanted)
        group_error = ErrorCode.none
    except ApiError as error:
        count_error(request, error.code)
        offsets = dict.fromkeys(wanted or [])
        group_error = error.code
    # Before v2 there is no top-level error: each partition carries the group's.
    partition_error = group_error if request.api_version < 2 else ErrorCode.none
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for (topic, index), committed in sorted(offsets.items()):
        by_topic.setdefault(topic, []).append(_partition(index, committed, partition_error))
    return {
        "group_id": group_id,
        "error_code": group_error,
        "topics": [{"name": name, "partitions": rows} for name, rows in by_topic.items()],
    }


def _partition(index: int, committed: CommittedOffset | None, error: ErrorCode) -> dict[str, Any]:
    if committed is None:
        return {
            "partition_index": index,
            "committed_offset": NO_OFFSET,
            "committed_leader_epoch": -1,
            "metadata": "",
            "error_code": error,
        }
    return {
        "partition_index": index,
        "committed_offset": committed.offset,
        "committed_leader_epoch": committed.leader_epoch,
        "metadata": committed.metadata,
        "error_code": error,
    }


async def offset_delete(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    partitions = [
        (topic.name, partition.partition_index)
        for topic in body.topics
        for partition in topic.partitions
    ]
    try:
        codes = await context.groups.offsets.delete(body.group_id, partitions)
    except ApiError as error:
        count_error(request, error.code)
        return {"error_code": error.code, "topics": []}
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for (topic, index), code in codes.items():
        if code != ErrorCode.none:
            count_error(request, code)
        by_topic.setdefault(topic, []).append({"partition_index": index, "error_code": code})
    return {
        "error_code": ErrorCode.none,
        "topics": [{"name": name, "partitions": rows} for name, rows in by_topic.items()],
    }
