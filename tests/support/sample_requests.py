"""Request frames with every field present: one element in every array, a value in every
nullable and tagged field, for any API key and version kio knows.

Used to prove that the frame check passes every well-formed request, and as seeds for the
fuzzer (every field is there to be mutated).
"""

from __future__ import annotations

import dataclasses
import datetime
import struct
import uuid
from types import NoneType, UnionType
from typing import Any, get_args, get_origin

from kio.index import load_request_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.serial import entity_writer

PRODUCE_KEY = 0
LAST_LEGACY_PRODUCE = 2

_VALUES: dict[str, Any] = {
    "bool": True,
    "int8": 1,
    "uint8": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 1,
    "uint32": 1,
    "int64": 1,
    "uint64": 1,
    "float64": 1.0,
    "error_code": ErrorCode.none,
    "timedelta_i32": datetime.timedelta(milliseconds=1),
    "timedelta_i64": datetime.timedelta(milliseconds=1),
    "datetime_i64": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    "uuid": uuid.UUID(int=1),
    "string": "x",
    "bytes": b"x",
    "records": b"x",
}


def full_entity(entity_type: Any) -> Any:
    """An instance of ``entity_type`` with a non-null value in every field."""
    values = {}
    for field in dataclasses.fields(entity_type):
        values[field.name] = _value(field.type, field)
    return entity_type(**values)


def full_request(api_key: int, api_version: int, correlation_id: int = 1) -> bytes:
    """A request frame (header and body, no size prefix) with every field present."""
    if api_key == PRODUCE_KEY and api_version <= LAST_LEGACY_PRODUCE:
        return _legacy_produce(api_version, correlation_id)
    request_type = load_request_schema(api_key, api_version)
    return encode(full_entity(request_type), correlation_id)


def encode(body: Any, correlation_id: int, client_id: str | None = "sample") -> bytes:
    header_type = type(body).__header_schema__
    header = header_type(
        request_api_key=type(body).__api_key__,
        request_api_version=type(body).__version__,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    parts: list[bytes] = []
    sink = _Sink(parts)
    entity_writer(header_type)(sink, header)
    entity_writer(type(body))(sink, body)
    return b"".join(parts)


def _value(field_type: Any, field: dataclasses.Field[Any]) -> Any:
    if get_origin(field_type) is UnionType:
        field_type = next(arg for arg in get_args(field_type) if arg is not NoneType)
    if get_origin(field_type) is tuple:
        return (_value(get_args(field_type)[0], field),)
    if dataclasses.is_dataclass(field_type):
        return full_entity(field_type)
    return _VALUES[field.metadata["kafka_type"]]


def _legacy_produce(api_version: int, correlation_id: int) -> bytes:
    """Produce v0-2 (which kio lacks): v3's body without transactional_id, v1 header."""
    parts: list[bytes] = []
    entity_writer(RequestHeaderV1)(
        _Sink(parts),
        RequestHeaderV1(
            request_api_key=PRODUCE_KEY,
            request_api_version=api_version,
            correlation_id=correlation_id,
            client_id="sample",
        ),
    )
    records = b"x"
    body = struct.pack(">hii", 1, 1000, 1) + struct.pack(">h", 1) + b"t"
    body += struct.pack(">ii", 1, 0) + struct.pack(">i", len(records)) + records
    return b"".join(parts) + body


class _Sink:
    def __init__(self, parts: list[bytes]) -> None:
        self.write = parts.append
