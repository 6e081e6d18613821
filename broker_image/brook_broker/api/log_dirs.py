"""DescribeLogDirs: the size of every partition replica this broker holds, in its one
log directory, with the directory's disk space; admin tools and the operator's broker
autoscaling (bytes per broker) read it from each broker in turn."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from .context import ApiContext


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    asked = request.body.topics
    wanted = (
        None
        if asked is None
        else {(topic.topic, index) for topic in asked for index in topic.partitions}
    )
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, index, log in context.logs.partitions():
        if wanted is not None and (topic, index) not in wanted:
            continue
        by_topic.setdefault(topic, []).append(
            {
                "partition_index": index,
                "partition_size": log.size_bytes,
                # How far the log end is behind the high watermark: only a replica being
                # truncated or caught up lags; there are no future (moving) logs.
                "offset_lag": max(0, log.high_watermark - log.log_end_offset),
                "is_future_key": False,
            }
        )
    directory = context.logs.data_dir
    disk = shutil.disk_usage(directory)
    return {
        "error_code": ErrorCode.none,
        "results": [
            {
                "error_code": ErrorCode.none,
                "log_dir": str(directory.resolve()),
                "topics": [
                    {"name": name, "partitions": partitions}
                    for name, partitions in sorted(by_topic.items())
                ],
                "total_bytes": disk.total,
                "usable_bytes": disk.free,
            }
        ],
    }
