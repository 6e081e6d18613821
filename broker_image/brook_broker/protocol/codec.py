"""Decode requests and encode responses with kio, Kafka's schemas generated as dataclasses.

Each kio version of a message is its own dataclass with its own fields. Handlers describe
a response once, as plain mappings with Kafka's field names; :func:`build` turns that
into the dataclass of the version the client asked for, dropping fields the version does
not have and filling fields the handler left out with Kafka's zero values.
"""

from __future__ import annotations

import dataclasses
import datetime
import struct
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeGuard, get_args, get_origin

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32
from kio.static.protocol import Entity, ResponsePayload

from . import legacy_produce
from .request_check import InvalidFrame, check_request

PRODUCE_KEY = 0
API_VERSIONS_KEY = 18
_API_KEY_AND_VERSION = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")
_ZERO_UUID = uuid.UUID(int=0)
_NO_CORRELATION_ID = i32(-1)


class MalformedRequest(ValueError):
    """A frame that cannot be decoded: the connection is closed, as Kafka does."""

    def __init__(self, message: str, api_key: int | None = None) -> None:
        super().__init__(message)
        self.api_key = api_key  # None when not even the header could be read


class UnsupportedRequest(ValueError):
    """An API key or version this broker does not implement."""

    def __init__(self, api_key: int, api_version: int, correlation_id: i32) -> None:
        super().__init__(f"unsupported API key {api_key} version {api_version}")
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: i32
    client_id: str | None
    body: Any


def peek_header(frame: memoryview) -> tuple[int, int, i32]:
    """API key, version and correlation id: the fixed start of every request header."""
    if len(frame) < _API_KEY_AND_VERSION.size:
        raise MalformedRequest("frame is shorter than a request header")
    header: tuple[int, int, i32] = _API_KEY_AND_VERSION.unpack_from(frame, 0)
    return header


def decode_request(frame: memoryview, supported: Mapping[int, tuple[int, int]]) -> Request:
    """Decode one request frame (without its size prefix).

    ``supported`` maps API keys to the (min, max) versions this broker implements.
    """
    api_key, api_version, correlation_id = peek_header(frame)
    versions = supported.get(api_key)
    if versions is None or not versions[0] <= api_version <= versions[1]:
        raise UnsupportedRequest(api_key, api_version, correlation_id)
    name, header_reader, body_reader = _request_codec(api_key, api_version)
    try:
        # Before kio: it reserves memory from array counts, and reads -1 counts as null.
        check_request(frame, api_key, api_version)
        header, offset = header_reader(frame, 0)
        body = body_reader(frame, offset)
    except InvalidFrame as error:
        raise MalformedRequest(f"refused {name} v{api_version}: {error}", api_key) from None
    except Exception as error:  # kio raises a variety of errors on bad bytes
        raise MalformedRequest(f"cannot decode {name} v{api_version}: {error}", api_key) from None
    # Bytes after the body are ignored, as Kafka does: librdkafka's Metadata v9+ request
    # for all topics carries 3 stray bytes (an unshrunk 4-byte array count placeholder).
    return Request(api_key, api_version, correlation_id, header.client_id, body)


def encode_response(request: Request, body: Mapping[str, Any]) -> bytes:
    """The response frame for ``request``, size prefix included."""
    if _is_legacy_produce(request.api_key, request.api_version):
        return legacy_produce.encode(request.api_version, request.correlation_id, body)
    response_type = _response_type(request.api_key, request.api_version)
    return encode_frame(response_type, request.correlation_id, build(response_type, body))


def encode_frame(
    response_type: type[ResponsePayload], correlation_id: i32, response: Entity
) -> bytes:
    parts: list[bytes] = []
    sink = _ListSink(parts)
    # ApiVersions answers with a v0 header whatever its version, so that a client that
    # asked for a version above ours can still read the answer.
    if response_type.__api_key__ == API_VERSIONS_KEY or not response_type.__flexible__:
        _writer(ResponseHeaderV0)(sink, ResponseHeaderV0(correlation_id=correlation_id))
    else:
        _writer(ResponseHeaderV1)(sink, ResponseHeaderV1(correlation_id=correlation_id))
    _writer(response_type)(sink, response)
    payload = b"".join(parts)
    return _SIZE.pack(len(payload)) + payload


def build(entity_type: type[Entity], data: Mapping[str, Any]) -> Any:
    """Construct ``entity_type`` from a mapping, recursively, for any version of it."""
    values = {}
    for field in _fields(entity_type):
        if field.name in data:
            values[field.name] = field.convert(data[field.name])
        elif field.needs_value:
            values[field.name] = field.zero
    return entity_type(**values)


# --- internals -------------------------------------------------------------------------


class _ListSink:
    """A write target for kio that collects parts; joining once beats growing a BytesIO."""

    __slots__ = ("write",)

    def __init__(self, parts: list[bytes]) -> None:
        self.write = parts.append


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    convert: Callable[[Any], Any]
    needs_value: bool
    zero: Any


@cache
def _request_codec(
    api_key: int, api_version: int
) -> tuple[str, Callable[..., Any], Callable[[memoryview, int], Any]]:
    """Name, header reader and body decoder of one request version."""
    if _is_legacy_produce(api_key, api_version):
        return "ProduceRequest", _reader(RequestHeaderV1), legacy_produce.decode
    request_type = load_request_schema(api_key, api_version)
    # Widened to type[Entity]: mypy takes the header classes themselves for unhashable.
    header_type: type[Entity] = request_type.__header_schema__
    if header_type not in (RequestHeaderV1, RequestHeaderV2):
        raise UnsupportedRequest(api_key, api_version, _NO_CORRELATION_ID)
    read_body = _reader(request_type)
    return request_type.__name__, _reader(header_type), lambda frame, at: read_body(frame, at)[0]


@cache
def _response_type(api_key: int, api_version: int) -> type[ResponsePayload]:
    """kio resolves a schema by importing its module path, which costs more than encoding
    a small response: every response looks it up once per version here."""
    response_type: type[ResponsePayload] = load_response_schema(api_key, api_version)
    return response_type


def _is_legacy_produce(api_key: int, api_version: int) -> bool:
    return api_key == PRODUCE_KEY and api_version <= legacy_produce.LAST_LEGACY_VERSION


@cache
def _reader(entity_type: type[Entity]) -> Callable[..., Any]:
    return entity_reader(entity_type)


@cache
def _writer(entity_type: type[Entity]) -> Callable[..., Any]:
    return entity_writer(entity_type)


@cache
def _fields(entity_type: type[Entity]) -> tuple[_Field, ...]:
    return tuple(_describe(field) for field in dataclasses.fields(entity_type))


def _describe(field: dataclasses.Field[Any]) -> _Field:
    has_default = (
        field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    )
    field_type = field.type
    optional = type(None) in get_args(field_type)
    if optional:
        # Nullable fields (``X | None``), arrays of entities included, are built like X.
        field_type = next(arg for arg in get_args(field_type) if arg is not type(None))
    convert: Callable[[Any], Any]
    if get_origin(field_type) is tuple:
        inner = get_args(field_type)[0]
        convert = _entity_tuple(inner) if _is_entity(inner) else tuple
        zero: Any = ()
    elif _is_entity(field_type):
        convert, zero = _entity(field_type), None
    else:
        convert, zero = _PRIMITIVES.get(field.metadata.get("kafka_type", ""), (_same, 0))
    if optional:
        convert, zero = _nullable(convert), None
    return _Field(field.name, convert, not has_default, zero)


def _is_entity(annotation: object) -> TypeGuard[type[Entity]]:
    """A field of a kio entity that is itself a dataclass holds a nested entity."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _nullable(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _entity(entity_type: type[Entity]) -> Callable[[Any], Any]:
    return lambda value: value if isinstance(value, entity_type) else build(entity_type, value)


def _entity_tuple(inner: type[Entity]) -> Callable[[Any], tuple[Any, ...]]:
    def convert(items: Any) -> tuple[Any, ...]:
        return tuple(item if isinstance(item, inner) else build(inner, item) for item in items)

    return convert


def _same(value: Any) -> Any:
    return value


def _error_code(value: Any) -> ErrorCode:
    return value if isinstance(value, ErrorCode) else ErrorCode(value)


def _millis(value: Any) -> datetime.timedelta:
    return (
        value if isinstance(value, datetime.timedelta) else datetime.timedelta(milliseconds=value)
    )


def _uuid(value: Any) -> uuid.UUID | None:
    return value if value is None or isinstance(value, uuid.UUID) else uuid.UUID(str(value))


_PRIMITIVES: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "error_code": (_error_code, ErrorCode.none),
    "timedelta_i32": (_millis, datetime.timedelta(0)),
    "timedelta_i64": (_millis, datetime.timedelta(0)),
    "uuid": (_uuid, _ZERO_UUID),
    "string": (_same, ""),
    "bytes": (_same, b""),
    "records": (_same, None),
    "bool": (bool, False),
    "float64": (float, 0.0),
}
