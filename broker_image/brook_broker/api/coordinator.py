"""FindCoordinator: on a single broker, this broker coordinates every consumer group.

Transactions are not supported, so a transaction coordinator is refused with the same
fatal error InitProducerId gives a transactional id: clients fail at once, not retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from .context import ApiContext

_GROUP = 0


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    key_type = getattr(body, "key_type", _GROUP)
    keys = getattr(body, "coordinator_keys", None)
    if keys is None:  # v0-3 ask for one key and answer with one coordinator at the top level
        return _coordinator(context, key_type, body.key)
    return {"coordinators": [_coordinator(context, key_type, key) for key in keys]}


def _coordinator(context: ApiContext, key_type: int, key: str) -> dict[str, Any]:
    if key_type != _GROUP:
        return {
            "key": key,
            "error_code": ErrorCode.transactional_id_authorization_failed,
            "error_message": "transactions are not supported",
            "node_id": -1,
            "host": "",
            "port": -1,
        }
    host, port = context.advertised_address
    return {
        "key": key,
        "error_code": ErrorCode.none,
        "error_message": None,
        "node_id": context.config.node_id,
        "host": host,
        "port": port,
    }
