"""DescribeCluster: the live brokers, the cluster id and the active controller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

BROKERS_ENDPOINT = 1
_NOT_REQUESTED = -(2**31)
# Kafka's AclOperation codes: without authorization, every cluster operation is allowed.
CLUSTER_OPERATIONS = sum(1 << operation for operation in (5, 7, 8, 9, 10, 11, 12))


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    endpoint_type = getattr(body, "endpoint_type", BROKERS_ENDPOINT)
    if endpoint_type != BROKERS_ENDPOINT:
        count_error(request, ErrorCode.unsupported_endpoint_type)
        return {
            "error_code": ErrorCode.unsupported_endpoint_type,
            "error_message": "Brokers answer for broker endpoints only (endpoint type 1)",
            "endpoint_type": endpoint_type,
            "cluster_id": context.config.cluster_id,
            "brokers": [],
        }
    controller_id = context.quorum.active_controller_id
    return {
        "error_code": ErrorCode.none,
        "endpoint_type": BROKERS_ENDPOINT,
        "cluster_id": context.config.cluster_id,
        "controller_id": -1 if controller_id is None else controller_id,
        "brokers": [
            {
                "broker_id": broker.node_id,
                "host": broker.host,
                "port": broker.port,
                "rack": broker.rack,
            }
            for broker in context.quorum.state.live_brokers()
        ],
        "cluster_authorized_operations": (
            CLUSTER_OPERATIONS if body.include_cluster_authorized_operations else _NOT_REQUESTED
        ),
    }
