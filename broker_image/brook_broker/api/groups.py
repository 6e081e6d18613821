"""The classic group membership APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
and the group admin APIs ListGroups, DescribeGroups, DeleteGroups.

Each handler turns the request into a call on the group coordinator and its answer into
the response of the version asked for; the protocol itself is in ``groups.group_metadata``.
Assignors run in the clients: member metadata and assignments are relayed as opaque bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..groups.group import GroupState, JoinResult, SyncResult
from ..metadata.errors import ApiError
from ..protocol.codec import Request
from ..protocol.server import client_host
from .context import ApiContext
from .errors import count_error

AUTHORIZED_OPERATIONS_OMITTED = -(2**31)


def _milliseconds(duration: Any) -> int:
    return int(duration.total_seconds() * 1000)


async def join_group(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    session_timeout_ms = _milliseconds(body.session_timeout)
    rebalance_timeout = getattr(body, "rebalance_timeout", None)
    # v0 has no rebalance timeout: the session timeout serves as one.
    rebalance_timeout_ms = (
        session_timeout_ms if rebalance_timeout is None else _milliseconds(rebalance_timeout)
    )
    try:
        result = await context.groups.membership.join(
            body.group_id,
            body.member_id,
            getattr(body, "group_instance_id", None),
            client_id=request.client_id or "",
            client_host=client_host(),
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            protocol_type=body.protocol_type,
            protocols=[(protocol.name, protocol.metadata) for protocol in body.protocols],
            require_known_member_id=request.api_version >= 4,
        )
    except ApiError as error:
        result = JoinResult(error.code, body.member_id)
    if result.error not in (ErrorCode.none, ErrorCode.member_id_required):
        count_error(request, result.error)
    return {
        "error_code": result.error,
        "generation_id": result.generation,
        "protocol_type": result.protocol_type,
        # Before v7 the protocol name is not nullable.
        "protocol_name": result.protocol
        if result.protocol is not None or request.api_version >= 7
        else "",
        "leader": result.leader,
        "skip_assignment": False,
        "member_id": result.member_id,
        "members": [
            {"member_id": member_id, "group_instance_id": instance_id, "metadata": metadata}
            for member_id, instance_id, metadata in result.members
        ],
    }


async def sync_group(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    try:
        result = await context.groups.membership.sync(
            body.group_id,
            body.generation_id,
            body.member_id,
            getattr(body, "group_instance_id", None),
            protocol_type=getattr(body, "protocol_type", None),
            protocol=getattr(body, "protocol_name", None),
            assignments={item.member_id: item.assignment for item in body.assignments},
        )
    except ApiError as error:
        result = SyncResult(error.code)
    if result.error != ErrorCode.none:
        count_error(request, result.error)
    return {
        "error_code": result.error,
        "protocol_type": result.protocol_type,
        "protocol_name": result.protocol,
        "assignment": result.assignment,
    }


async def heartbeat(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    try:
        code = context.groups.membership.heartbeat(
            body.group_id,
            body.generation_id,
            body.member_id,
            getattr(body, "group_instance_id", None),
        )
    except ApiError as error:
        code = error.code
    if code != ErrorCode.none:
        count_error(request, code)
    return {"error_code": code}


async def leave_group(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    members = getattr(body, "members", None)
    leaving = (
        [(body.member_id, None)]  # v0-2: one member, errors at the top
        if members is None
        else [(member.member_id, member.group_instance_id) for member in members]
    )
    try:
        codes = context.groups.membership.leave(body.group_id, leaving)
    except ApiError as error:
        count_error(request, error.code)
        return {"error_code": error.code, "members": []}
    for code in codes:
        if code != ErrorCode.none:
            count_error(request, code)
    if members is None:
        return {"error_code": codes[0]}
    return {
        "error_code": ErrorCode.none,
        "members": [
            {"member_id": member_id, "group_instance_id": instance_id, "error_code": code}
            for (member_id, instance_id), code in zip(leaving, codes, strict=True)
        ],
    }


async def list_groups(context: ApiContext, request: Request) -> Mapping[str, Any]:
    wanted = {state.lower() for state in getattr(request.body, "states_filter", None) or ()}
    return {
        "error_code": ErrorCode.none,
        "groups": [
            {
                "group_id": group.group_id,
                "protocol_type": group.protocol_type or "",
                "group_state": group.state.value,
            }
            for group in context.groups.list_groups()
            if not wanted or group.state.value.lower() in wanted
        ],
    }


async def describe_groups(context: ApiContext, request: Request) -> Mapping[str, Any]:
    return {"groups": [_describe(context, request, group_id) for group_id in request.body.groups]}


def _describe(context: ApiContext, request: Request, group_id: str) -> dict[str, Any]:
    described: dict[str, Any] = {
        "error_code": ErrorCode.none,
        "group_id": group_id,
        "group_state": GroupState.DEAD.value,
        "protocol_type": "",
        "protocol_data": "",
        "members": [],
        "authorized_operations": AUTHORIZED_OPERATIONS_OMITTED,
    }
    try:
        group = context.groups.describe(group_id)
    except ApiError as error:
        count_error(request, error.code)
        return {**described, "error_code": error.code}
    if group is None:
        return described  # Kafka describes an unknown group as Dead, without an error
    stable = group.state is GroupState.STABLE
    return {
        **described,
        "group_state": group.state.value,
        "protocol_type": group.protocol_type or "",
        "protocol_data": (group.protocol or "") if stable else "",
        "members": [
            {
                "member_id": member.member_id,
                "group_instance_id": member.group_instance_id,
                "client_id": member.client_id,
                "client_host": member.client_host,
                "member_metadata": member.metadata(group.protocol) if stable else b"",
                "member_assignment": member.assignment if stable else b"",
            }
            for member in group.members.values()
        ],
    }


async def delete_groups(context: ApiContext, request: Request) -> Mapping[str, Any]:
    results = []
    for group_id in request.body.groups_names:
        try:
            await context.groups.delete_group(group_id)
            code = ErrorCode.none
        except ApiError as error:
            code = error.code
            count_error(request, code)
        results.append({"group_id": group_id, "error_code": code})
    return {"results": results}
