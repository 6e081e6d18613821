"""The encoder writes the very bytes kio writes for the dataclasses ``build`` makes.

For every response version the broker serves and every request version it sends, bodies
are generated from kio's schema: fields left out, nulls, empty arrays, tagged fields set
or at their default, extreme integers, unicode, memoryview records, nested entities given
as mappings or as built instances.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Iterator
from types import NoneType, UnionType
from typing import Any, get_args, get_origin

import pytest
from brook_broker.api.api_versions import SUPPORTED_VERSIONS
from brook_broker.protocol import codec, legacy_produce
from brook_broker.protocol.client import encode_request
from brook_broker.replication.fetcher import FETCH_VERSION, OFFSET_FOR_LEADER_EPOCH_VERSION
from brook_client import cluster_admin, group_admin, session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_writer

from tests.support.entities import build

FETCH, OFFSET_FOR_LEADER_EPOCH, SASL_HANDSHAKE, SASL_AUTHENTICATE, BROKER_HEARTBEAT = (
    1,
    23,
    17,
    36,
    63,
)

_INTEGER_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _client_versions() -> Iterator[tuple[int, int]]:
    """Every request version the broker and brook_client send."""
    apis = [
        value
        for module in (session, cluster_admin, group_admin)
        for value in vars(module).values()
        if isinstance(value, session.Api)
    ]
    for api in apis:
        yield from ((api.key, version) for version in range(api.lowest, api.highest + 1))
    yield FETCH, FETCH_VERSION
    yield OFFSET_FOR_LEADER_EPOCH, OFFSET_FOR_LEADER_EPOCH_VERSION
    yield SASL_HANDSHAKE, 1
    yield SASL_AUTHENTICATE, 2
    yield BROKER_HEARTBEAT, 1


RESPONSE_VERSIONS = sorted(
    (key, version)
    for key, (lowest, highest) in SUPPORTED_VERSIONS.items()
    for version in range(lowest, highest + 1)
    # Produce before v3 has its own codec, kio has no schema for it.
    if not (key == codec.PRODUCE_KEY and version <= legacy_produce.LAST_LEGACY_VERSION)
)
REQUEST_VERSIONS = sorted(
    {
        (key, version)
        for key, version in [*RESPONSE_VERSIONS, *_client_versions()]
        if load_request_schema(key, version).__header_schema__ in (RequestHeaderV1, RequestHeaderV2)
    }
)


# --- bodies generated from the schema --------------------------------------------------


def _scalar(kafka_type: str) -> st.SearchStrategy[Any]:
    if kafka_type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[kafka_type]
        edges = [low, high, 0, -1] if low < 0 else [low, high]
        return st.one_of(st.sampled_from(edges), st.integers(low, high))
    if kafka_type == "error_code":
        return st.one_of(st.sampled_from(list(ErrorCode)), st.sampled_from([0, 3, 35]))
    if kafka_type in ("timedelta_i32", "timedelta_i64"):
        high = 2**31 - 1 if kafka_type == "timedelta_i32" else 2**55
        return st.one_of(
            st.integers(-(2**31), high),
            st.integers(-(2**31), high).map(lambda ms: datetime.timedelta(milliseconds=ms)),
        )
    if kafka_type == "uuid":
        return st.one_of(st.uuids(), st.uuids().map(str), st.just(uuid.UUID(int=0)))
    if kafka_type == "string":
        return st.text(max_size=8)
    if kafka_type in ("bytes", "records"):
        return st.one_of(st.binary(max_size=16), st.binary(max_size=16).map(memoryview))
    if kafka_type == "datetime_i64":
        return st.datetimes(
            min_value=datetime.datetime(1900, 1, 1),
            max_value=datetime.datetime(2200, 1, 1),
            timezones=st.just(datetime.UTC),
        ).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
    if kafka_type == "bool":
        return st.booleans()
    if kafka_type == "float64":
        return st.floats(allow_nan=False)
    raise AssertionError(f"no values for {kafka_type}")


def _field_values(field: dataclasses.Field[Any], depth: int) -> st.SearchStrategy[Any]:
    annotation: Any = field.type
    nullable = get_origin(annotation) is UnionType and NoneType in get_args(annotation)
    if nullable:
        annotation = next(arg for arg in get_args(annotation) if arg is not NoneType)
    array = get_origin(annotation) is tuple
    if array:
        annotation = get_args(annotation)[0]
    if dataclasses.is_dataclass(annotation):
        one = _entity_values(annotation, depth + 1)
    elif array:
        # build() keeps the items of primitive arrays as given: they must be kio's own.
        kafka_type = field.metadata["kafka_type"]
        one = _scalar(kafka_type).map(_as_kio_holds_it(kafka_type))
    else:
        one = _scalar(field.metadata["kafka_type"])
    values = st.lists(one, max_size=3 if depth < 3 else 1) if array else one
    tagged = "tag" in field.metadata
    if nullable and not tagged:
        values = st.one_of(st.none(), values)
    if field.default is not dataclasses.MISSING:
        values = st.one_of(st.just(field.default), values)
    return values


def _as_kio_holds_it(kafka_type: str) -> Any:
    def convert(value: Any) -> Any:
        if kafka_type == "uuid":
            return uuid.UUID(str(value))
        if kafka_type == "error_code":
            return ErrorCode(value)
        if kafka_type.startswith("timedelta") and isinstance(value, int):
            return datetime.timedelta(milliseconds=value)
        return value

    return convert


def _may_be_absent(field: dataclasses.Field[Any]) -> bool:
    """build() leaves None in a required struct or records field: kio cannot write it."""
    annotation: Any = field.type
    has_default = field.default is not dataclasses.MISSING
    nullable = get_origin(annotation) is UnionType and NoneType in get_args(annotation)
    records = field.metadata.get("kafka_type") == "records"
    return has_default or nullable or not (dataclasses.is_dataclass(annotation) or records)


@st.composite
def _mapping(draw: st.DrawFn, entity_type: type, depth: int) -> dict[str, Any]:
    body = {}
    for field in dataclasses.fields(entity_type):
        if _may_be_absent(field) and draw(st.booleans()):
            continue
        body[field.name] = draw(_field_values(field, depth))
    return body


def _entity_values(entity_type: Any, depth: int) -> st.SearchStrategy[Any]:
    mappings = _mapping(entity_type, depth)
    return st.one_of(mappings, mappings.map(lambda body: build(entity_type, body)))


# --- the reference: kio's own writers ---------------------------------------------------


class _Sink(list[bytes]):
    def write(self, data: bytes) -> None:
        self.append(bytes(data))


def _kio_frame(header: Any, entity: Any) -> bytes:
    sink = _Sink()
    entity_writer(type(header))(sink, header)
    entity_writer(type(entity))(sink, entity)
    payload = b"".join(sink)
    return len(payload).to_bytes(4, "big", signed=True) + payload


def _kio_response(response_type: Any, correlation_id: int, body: Any) -> bytes:
    flexible = response_type.__flexible__ and response_type.__api_key__ != 18
    header_type = ResponseHeaderV1 if flexible else ResponseHeaderV0
    header = header_type(correlation_id=correlation_id)
    return _kio_frame(header, build(response_type, body))


def _kio_request(request_type: Any, correlation_id: int, client_id: str, body: Any) -> bytes:
    header = request_type.__header_schema__(
        request_api_key=request_type.__api_key__,
        request_api_version=request_type.__version__,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    return _kio_frame(header, build(request_type, body))


_EXAMPLES = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("api_key", "version"), RESPONSE_VERSIONS)
@_EXAMPLES
@given(data=st.data())
def test_responses_are_written_as_kio_writes_them(
    api_key: int, version: int, data: st.DataObject
) -> None:
    response_type = load_response_schema(api_key, version)
    body = data.draw(_mapping(response_type, 0))
    correlation_id = data.draw(st.integers(-(2**31), 2**31 - 1))
    expected = _kio_response(response_type, correlation_id, body)
    assert codec.encode_frame(response_type, correlation_id, body) == expected


@pytest.mark.parametrize(("api_key", "version"), REQUEST_VERSIONS)
@_EXAMPLES
@given(data=st.data())
def test_requests_are_written_as_kio_writes_them(
    api_key: int, version: int, data: st.DataObject
) -> None:
    request_type = load_request_schema(api_key, version)
    body = data.draw(_mapping(request_type, 0))
    correlation_id = data.draw(st.integers(0, 2**31 - 1))
    client_id = data.draw(st.text(max_size=6))
    expected = _kio_request(request_type, correlation_id, client_id, body)
    assert encode_request(api_key, version, correlation_id, client_id, body) == expected


def test_an_empty_body_is_all_zero_values() -> None:
    """Handlers may leave out whatever is Kafka's zero: a fetch answer with no topics."""
    response_type = load_response_schema(FETCH, 12)
    assert codec.encode_frame(response_type, 5, {}) == _kio_response(response_type, 5, {})


def test_a_generator_serves_as_an_array() -> None:
    response_type = load_response_schema(FETCH, 12)
    topics = ({"topic": name, "partitions": []} for name in ("a", "b"))
    expected = _kio_response(response_type, 5, {"responses": [{"topic": "a"}, {"topic": "b"}]})
    assert codec.encode_frame(response_type, 5, {"responses": topics}) == expected
