"""BrokerHeartbeat: brokers keep their session with the active controller.

Only the active controller answers; every other broker says NOT_CONTROLLER, and the
sender looks the controller up again in its metadata. A heartbeat also tells the
controller which connection the broker uses: when that connection closes, the broker
is fenced unless it heartbeats again within one interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from ..protocol.server import when_connection_closes
from .context import ApiContext
from .errors import count_error


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    controller = context.controller
    if controller is None:
        count_error(request, ErrorCode.not_controller)
        return {"error_code": ErrorCode.not_controller, "is_fenced": True}
    answer = await controller.heartbeat(body.broker_id, body.broker_epoch, body.want_shut_down)
    if answer.error != ErrorCode.none:
        count_error(request, answer.error)
    else:
        broker_id, epoch = body.broker_id, body.broker_epoch
        when_connection_closes(
            ("broker heartbeat", broker_id),
            lambda: controller.heartbeat_connection_closed(broker_id, epoch),
        )
    return {
        "error_code": answer.error,
        "is_caught_up": answer.error == ErrorCode.none,
        "is_fenced": answer.is_fenced,
        "should_shut_down": answer.should_shut_down,
    }
