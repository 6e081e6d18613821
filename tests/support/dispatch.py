"""Requests handed straight to a broker's dispatcher, as its listener would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brook_broker.api.dispatcher import Dispatcher
from brook_broker.protocol.codec import Request
from brook_broker.protocol.server import Deferred


async def answer_of(dispatcher: Dispatcher, request: Request) -> Mapping[str, Any] | None:
    """The response body, once ready: a deferred answer (acks=all) is awaited."""
    answer = await dispatcher.handle(request)
    if isinstance(answer, Deferred):
        return await answer.body
    return answer
