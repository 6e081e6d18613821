"""Check a request frame's counts, lengths and nulls before kio decodes it.

kio's native decoder reserves room for a whole array from its count before it reads an
element: a 17-byte Metadata v12 request with the compact count ``ffffffff0f`` asks for
32 GiB and aborts the process, and a legacy count of 2^31-1 reserves 16 GiB. It also
returns ``None`` for an array sent with count -1 whether or not the field is nullable,
which handlers do not expect. Strings and bytes it reads safely, but they are checked
here too, so that every length in a frame is held against the bytes left in it.

For each (API key, version) the schema's dataclasses are compiled once into closures
that walk a frame without building anything: a *step* takes ``(frame, position, end)``
and returns the position after its field, or raises :class:`InvalidFrame`. Positions
follow kio's reading exactly, so what passes here is what kio then reads.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from types import NoneType, UnionType
from typing import Any, get_args, get_origin

from kio.index import load_request_schema
from kio.schema.produce.v3.request import ProduceRequest as ProduceRequestV3
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.static.protocol import Entity

Step = Callable[[memoryview, int, int], int]

_PRODUCE_KEY = 0
_LAST_LEGACY_PRODUCE = 2  # v0-2: v3's body without transactional_id (kio lacks them)
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_FIXED_WIDTH: Mapping[str, int] = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "error_code": 2,
    "int32": 4,
    "uint32": 4,
    "timedelta_i32": 4,
    "int64": 8,
    "uint64": 8,
    "timedelta_i64": 8,
    "datetime_i64": 8,
    "float64": 8,
    "uuid": 16,
}
_LENGTH_PREFIXED = frozenset({"string", "bytes", "records"})


class InvalidFrame(ValueError):
    """A count or length that does not fit the frame, or a null where none is allowed."""


def check_request(frame: memoryview, api_key: int, api_version: int) -> int:
    """Raise :class:`InvalidFrame` unless every length in ``frame`` (header included,
    size prefix excluded) fits the bytes left and every null is in a nullable field.

    Returns where the body ends, which is where kio's reading of it ends.
    """
    return _frame_checker(api_key, api_version)(frame, 0, len(frame))


@cache
def _frame_checker(api_key: int, api_version: int) -> Step:
    if api_key == _PRODUCE_KEY and api_version <= _LAST_LEGACY_PRODUCE:
        header_type: type[Entity] = RequestHeaderV1
        body = _entity(ProduceRequestV3, skip=("transactional_id",))
    else:
        request_type = load_request_schema(api_key, api_version)
        header_type = request_type.__header_schema__
        body = _entity(request_type)
    return _sequence((_whole(_entity(header_type, header=True)), _whole(body)))


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    """A field's check: a step, or just a width for a fixed-width field; and the fewest
    bytes the field can take (to bound an array's count)."""

    min_size: int
    step: Step | None = None  # None: a fixed-width field of min_size bytes

    def after(self, fixed: int) -> Step:
        """The step, first skipping ``fixed`` bytes of fixed-width fields before it."""
        assert self.step is not None
        return self.step if fixed == 0 else _after(fixed, self.step)


def _entity(
    entity_type: type[Entity], *, header: bool = False, skip: Sequence[str] = ()
) -> _Compiled:
    flexible: bool = entity_type.__flexible__
    steps: list[Step] = []
    fixed = 0  # fixed-width bytes since the last step, skipped by the next one
    min_size = 0
    tagged: dict[int, Step] = {}
    for field in dataclasses.fields(entity_type):
        if field.name in skip:
            continue
        tag = field.metadata.get("tag")
        if tag is not None:
            # kio reads tagged fields as not nullable: absence is their null.
            tagged[int(tag)] = _whole(_field(field.type, field, flexible, nullable=False))
            continue
        # Apache Kafka writes the header's client_id as a legacy string in every version.
        legacy = header and field.name == "client_id"
        compiled = _field(field.type, field, flexible and not legacy, _is_nullable(field.type))
        min_size += compiled.min_size
        if compiled.step is None:
            fixed += compiled.min_size
        else:
            steps.append(compiled.after(fixed))
            fixed = 0
    if flexible:
        steps.append(_Compiled(1, _tagged_fields(tagged)).after(fixed))
        min_size += 1
    elif fixed or not steps:
        steps.append(_skip(fixed))
    return _Compiled(min_size, _sequence(tuple(steps)))


def _field(
    field_type: Any, field: dataclasses.Field[Any], flexible: bool, nullable: bool
) -> _Compiled:
    inner = _without_none(field_type)
    if get_origin(inner) is tuple:
        element = _field(get_args(inner)[0], field, flexible, nullable=False)
        return _Compiled(1 if flexible else 4, _array(element, flexible, nullable))
    if dataclasses.is_dataclass(inner):
        entity = _entity(inner)  # type: ignore[arg-type]
        if nullable:  # KIP-893: a nullable struct starts with a marker byte
            return _Compiled(1, _nullable_struct(_whole(entity)))
        return entity
    kafka_type = field.metadata.get("kafka_type", "")
    width = _FIXED_WIDTH.get(kafka_type)
    if width is not None:
        return _Compiled(width)
    if kafka_type not in _LENGTH_PREFIXED:
        raise NotImplementedError(f"no frame check for kafka_type {kafka_type!r}")
    if flexible:
        return _Compiled(1, _compact_length(nullable))
    if kafka_type == "string":
        return _Compiled(2, _legacy_length(_I16, nullable))
    return _Compiled(4, _legacy_length(_I32, nullable))


def _whole(compiled: _Compiled) -> Step:
    return _skip(compiled.min_size) if compiled.step is None else compiled.step


def _is_nullable(field_type: Any) -> bool:
    return get_origin(field_type) is UnionType and NoneType in get_args(field_type)


def _without_none(field_type: Any) -> Any:
    if _is_nullable(field_type):
        return next(arg for arg in get_args(field_type) if arg is not NoneType)
    return field_type


# --- steps -----------------------------------------------------------------------------
# Each reads the first byte of a varint inline (most are one byte) and bounds every
# position by ``end`` before it is used: a step never indexes past the frame.


def _sequence(steps: tuple[Step, ...]) -> Step:
    if len(steps) == 1:
        return steps[0]

    def run(frame: memoryview, at: int, end: int) -> int:
        for step in steps:
            at = step(frame, at, end)
        return at

    return run


def _skip(width: int) -> Step:
    def skip(frame: memoryview, at: int, end: int) -> int:
        at += width
        if at > end:
            raise InvalidFrame("frame ends inside a field")
        return at

    return skip


def _after(width: int, step: Step) -> Step:
    def after(frame: memoryview, at: int, end: int) -> int:
        return step(frame, at + width, end)

    return after


def _uvarint(frame: memoryview, at: int, end: int) -> tuple[int, int]:
    """An unsigned varint of at most 5 bytes, as Kafka reads them."""
    value = 0
    for shift in (0, 7, 14, 21, 28):
        if at >= end:
            raise InvalidFrame("frame ends inside a varint")
        byte = frame[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise InvalidFrame("varint longer than 5 bytes")


def _compact_length(nullable: bool) -> Step:
    def compact(frame: memoryview, at: int, end: int) -> int:
        if at < end and (length := frame[at]) < 0x80:
            at += 1
        else:
            length, at = _uvarint(frame, at, end)
        if length == 0:
            if not nullable:
                raise InvalidFrame("null in a non-nullable string or bytes field")
            return at
        at += length - 1
        if at > end:
            raise InvalidFrame(f"length {length - 1} is beyond the end of the frame")
        return at

    return compact


def _legacy_length(prefix: struct.Struct, nullable: bool) -> Step:
    size = prefix.size
    unpack_from = prefix.unpack_from

    def legacy(frame: memoryview, at: int, end: int) -> int:
        if at + size > end:
            raise InvalidFrame("frame ends inside a length")
        length = unpack_from(frame, at)[0]
        at += size
        if length < 0:
            if length != -1 or not nullable:
                raise InvalidFrame(f"length {length} in a non-nullable string or bytes field")
            return at
        at += length
        if at > end:
            raise InvalidFrame(f"length {length} is beyond the end of the frame")
        return at

    return legacy


def _array(element: _Compiled, flexible: bool, nullable: bool) -> Step:
    element_step, element_size = element.step, element.min_size
    assert element_size > 0, "an array element always takes a byte"
    unpack_from = _I32.unpack_from

    def array(frame: memoryview, at: int, end: int) -> int:
        if not flexible:
            if at + 4 > end:
                raise InvalidFrame("frame ends inside an array count")
            count: int = unpack_from(frame, at)[0]
            at += 4
        elif at < end and (count := frame[at]) < 0x80:
            at += 1
            count -= 1
        else:
            count, at = _uvarint(frame, at, end)
            count -= 1
        if count < 0:
            if count != -1 or not nullable:
                raise InvalidFrame(f"array count {count} in a non-nullable array")
            return at
        if count * element_size > end - at:
            raise InvalidFrame(f"array count {count} is beyond the end of the frame")
        if element_step is None:  # fixed-width elements: the check above was all
            return at + count * element_size
        for _ in range(count):
            at = element_step(frame, at, end)
        return at

    return array


def _nullable_struct(step: Step) -> Step:
    def nullable_struct(frame: memoryview, at: int, end: int) -> int:
        if at >= end:
            raise InvalidFrame("frame ends inside a struct marker")
        marker = frame[at]
        if marker == 0xFF:  # -1: null
            return at + 1
        if marker != 1:
            raise InvalidFrame(f"struct marker {marker} is neither -1 nor 1")
        return step(frame, at + 1, end)

    return nullable_struct


def _tagged_fields(known: Mapping[int, Step]) -> Step:
    def tagged_fields(frame: memoryview, at: int, end: int) -> int:
        if at < end and frame[at] == 0:  # almost always: no tagged fields
            return at + 1
        count, at = _uvarint(frame, at, end)
        if count * 2 > end - at:  # a tag and a size take a byte each at least
            raise InvalidFrame(f"tagged field count {count} is beyond the end of the frame")
        for _ in range(count):
            tag, at = _uvarint(frame, at, end)
            size, at = _uvarint(frame, at, end)
            field_end = at + size
            if field_end > end:
                raise InvalidFrame(f"tagged field size {size} is beyond the end of the frame")
            step = known.get(tag)
            # kio reads a known tag by its own length, not the size before it: the two
            # must agree for the walk here to stay where kio will be.
            if step is not None and step(frame, at, field_end) != field_end:
                raise InvalidFrame(f"tagged field {tag} does not fill its size {size}")
            at = field_end
        return at

    return tagged_fields
