"""Decode requests and encode responses with kio, Kafka's schemas generated as dataclasses.

Each kio version of a message is its own dataclass with its own fields. Handlers describe
a response once, as plain mappings with Kafka's field names; :mod:`.encoder` writes that
as the version the client asked for, dropping fields the version does not have and
filling fields the handler left out with Kafka's zero values.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader
from kio.static.primitive import i32
from kio.static.protocol import Entity, ResponsePayload

from . import encoder, legacy_produce
from .request_check import InvalidFrame, check_request

PRODUCE_KEY = 0
API_VERSIONS_KEY = 18
_API_KEY_AND_VERSION = struct.Struct(">hhi")
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
    return encode_frame(response_type, request.correlation_id, body)


def encode_frame(
    response_type: type[ResponsePayload], correlation_id: i32, body: Mapping[str, Any] | Entity
) -> bytes:
    """The frame of a response (a mapping, or an instance of ``response_type``)."""
    parts: encoder.Parts = []
    # ApiVersions answers with a v0 header whatever its version, so that a client that
    # asked for a version above ours can still read the answer.
    flexible_header = response_type.__flexible__ and response_type.__api_key__ != API_VERSIONS_KEY
    encoder.write_response_header(parts, correlation_id, flexible_header)
    encoder.write_entity(parts, response_type, body)
    return encoder.frame(parts)


# --- internals -------------------------------------------------------------------------


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
