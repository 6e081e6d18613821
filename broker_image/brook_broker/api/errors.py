"""Counting the errors answered, and the checks every partition-level API shares."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from .. import metrics
from ..protocol.codec import Request

LEADER_EPOCH = 0
"""Every partition of a single broker is led by it, in epoch 0, forever."""


def api_name(request_type: type) -> str:
    """The API's name as Kafka spells it (``Produce``, ``ListOffsets``), from kio's class."""
    return request_type.__name__.removesuffix("Request")


def count_error(request: Request, code: ErrorCode) -> None:
    metrics.REQUEST_ERRORS.labels(api=api_name(type(request.body)), error=code.name).inc()


def leader_epoch_error(current_leader_epoch: int) -> ErrorCode:
    """Check the leader epoch a client believes in (-1: it does not say)."""
    if current_leader_epoch < 0 or current_leader_epoch == LEADER_EPOCH:
        return ErrorCode.none
    if current_leader_epoch > LEADER_EPOCH:
        return ErrorCode.unknown_leader_epoch
    return ErrorCode.fenced_leader_epoch
