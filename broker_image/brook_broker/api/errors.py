"""Counting the errors answered."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from .. import metrics
from ..protocol.codec import Request


def api_name(request_type: type) -> str:
    """The API's name as Kafka spells it (``Produce``, ``ListOffsets``), from kio's class."""
    return request_type.__name__.removesuffix("Request")


def count_error(request: Request, code: ErrorCode) -> None:
    metrics.REQUEST_ERRORS.labels(api=api_name(type(request.body)), error=code.name).inc()
