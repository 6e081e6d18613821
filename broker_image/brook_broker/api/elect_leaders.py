"""ElectLeaders: preferred and unclean leader elections, asked for by an operator.

A preferred election gives leadership back to a partition's first replica when it is
live and in sync; an unclean one gives a partition without a leader any live replica,
losing what only the lost ISR had. Without a list of partitions, a preferred election
covers every partition led by another replica than its preferred one, and an unclean
one every partition without a leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.cluster_state import PREFERRED, UNCLEAN
from ..metadata.commands import ElectLeaders
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

ELECTION_TYPES = {0: PREFERRED, 1: UNCLEAN}


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    election = ELECTION_TYPES.get(getattr(body, "election_type", 0))
    if election is None:
        count_error(request, ErrorCode.invalid_request)
        return {"error_code": ErrorCode.invalid_request, "replica_election_results": []}
    state = context.quorum.state
    if body.topic_partitions is None:
        partitions = (
            state.preferred_leader_imbalance()
            if election == PREFERRED
            else state.offline_partitions()
        )
    else:
        partitions = list(
            dict.fromkeys(
                (requested.topic, index)
                for requested in body.topic_partitions
                for index in requested.partitions
            )
        )
    try:
        results: Mapping[tuple[str, int], ApiError | None] = await context.quorum.submit(
            ElectLeaders(election, partitions), timeout=body.timeout.total_seconds()
        )
    except ApiError as refused:
        count_error(request, refused.code)
        results = dict.fromkeys(partitions, refused)
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for (topic, index), error in results.items():
        if error is not None:
            count_error(request, error.code)
        by_topic.setdefault(topic, []).append(
            {
                "partition_id": index,
                "error_code": ErrorCode.none if error is None else error.code,
                "error_message": None if error is None else error.message,
            }
        )
    return {
        "error_code": ErrorCode.none,
        "replica_election_results": [
            {"topic": topic, "partition_result": partition_results}
            for topic, partition_results in by_topic.items()
        ],
    }
