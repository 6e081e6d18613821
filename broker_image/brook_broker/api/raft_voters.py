"""AddRaftVoter and RemoveRaftVoter: change the metadata quorum's voters while it runs.

A broker joins as a voter by starting with ``--controller-quorum`` naming the current
voters and itself; it waits, unready, until an operator adds it with AddRaftVoter (its
Raft address is the listener named CONTROLLER, or the only one given). RemoveRaftVoter
takes a voter out; the active controller hands its role to another voter first if it is
the one leaving. Voters change one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

CONTROLLER_LISTENER = "CONTROLLER"


async def add_voter(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    try:
        _check_cluster(context, body.cluster_id)
        listeners = {listener.name: listener for listener in body.listeners}
        listener = listeners.get(CONTROLLER_LISTENER)
        if listener is None and len(listeners) == 1:
            listener = next(iter(listeners.values()))
        if listener is None:
            raise ApiError(
                ErrorCode.invalid_request,
                f"Give the voter's Raft address as the listener named {CONTROLLER_LISTENER}",
            )
        await context.quorum.add_voter(
            body.voter_id, f"{listener.host}:{listener.port}", body.timeout.total_seconds()
        )
    except ApiError as error:
        count_error(request, error.code)
        return {"error_code": error.code, "error_message": error.message}
    return {"error_code": ErrorCode.none}


async def remove_voter(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    try:
        _check_cluster(context, body.cluster_id)
        await context.quorum.remove_voter(body.voter_id)
    except ApiError as error:
        count_error(request, error.code)
        return {"error_code": error.code, "error_message": error.message}
    return {"error_code": ErrorCode.none}


def _check_cluster(context: ApiContext, cluster_id: str | None) -> None:
    if cluster_id is not None and cluster_id != context.config.cluster_id:
        raise ApiError(
            ErrorCode.inconsistent_cluster_id,
            f"The request is for cluster {cluster_id}; this is {context.config.cluster_id}",
        )
