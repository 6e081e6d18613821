"""The one exception that carries a Kafka error code from the metadata layer to a response."""

from __future__ import annotations

from kio.schema.errors import ErrorCode


class ApiError(Exception):
    """A request that must be refused with ``code``; ``message`` goes into error_message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
