"""Kio request and response dataclasses made from plain mappings, for tests and benches.

Handlers are given decoded requests (kio dataclasses); tests make them from the mappings
a client would send. The broker itself never builds dataclasses to encode: its encoder
writes mappings straight to bytes (``brook_broker.protocol.encoder``), and
``tests/unit/test_protocol_encoder.py`` holds it to the bytes kio writes for what
:func:`build` makes.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeGuard, get_args, get_origin

from kio.schema.errors import ErrorCode
from kio.static.protocol import Entity

_ZERO_UUID = uuid.UUID(int=0)


def build(entity_type: type[Entity], data: Mapping[str, Any]) -> Any:
    """Construct ``entity_type`` from a mapping, recursively, for any version of it.

    Absent fields get their default, or Kafka's zero value where they have none.
    """
    values = {}
    for field in _fields(entity_type):
        if field.name in data:
            values[field.name] = field.convert(data[field.name])
        elif field.needs_value:
            values[field.name] = field.zero
    return entity_type(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    convert: Callable[[Any], Any]
    needs_value: bool
    zero: Any


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
