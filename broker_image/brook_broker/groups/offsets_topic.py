"""The internal ``__consumer_offsets`` topic: which partition holds a group, and its records.

Records use Kafka's own layout, so tools that read Kafka's offsets topic read ours:

- key version 1, an offset commit: group, topic, partition;
  value version 3: offset, leader epoch, metadata, commit timestamp;
- key version 2, a group's membership: group;
  value version 3: protocol type, generation, protocol, leader, state timestamp, members.

A record with a null value (a tombstone) deletes what its key names. Strings are
non-flexible (int16 length, -1 for null), member metadata and assignments int32-length bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..metadata.topics import OFFSETS_TOPIC as OFFSETS_TOPIC


def offsets_topic_configs(segment_bytes: int) -> dict[str, str]:
    """Compacted, as Kafka's: a group's committed offsets and metadata are keyed records,
    so the topic keeps the latest of each (and expired offsets go by tombstones), and its
    size follows the live groups and partitions, not the number of commits."""
    return {"cleanup.policy": "compact", "segment.bytes": str(segment_bytes)}


_OFFSET_KEY_VERSION = 1
_GROUP_KEY_VERSION = 2
_OFFSET_VALUE_VERSION = 3
_GROUP_VALUE_VERSION = 3

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


def partition_for(group_id: str, partitions: int) -> int:
    """Kafka's choice: Java's ``String.hashCode`` of the group id, sign bit cleared, modulo
    the partition count, so a group lands where a Kafka cluster would put it."""
    code = 0
    encoded = group_id.encode("utf-16-be")
    for index in range(0, len(encoded), 2):
        code = (31 * code + int.from_bytes(encoded[index : index + 2], "big")) & 0xFFFFFFFF
    return (code & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class OffsetKey:
    group_id: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class GroupKey:
    group_id: str


@dataclass(frozen=True, slots=True)
class StoredMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    subscription: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class StoredGroup:
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    state_timestamp_ms: int
    members: tuple[StoredMember, ...]


class UnknownRecord(ValueError):
    """A record of a key or value version this broker does not know."""


# --- encoding ------------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def i16(self, value: int) -> _Writer:
        self.out += _I16.pack(value)
        return self

    def i32(self, value: int) -> _Writer:
        self.out += _I32.pack(value)
        return self

    def i64(self, value: int) -> _Writer:
        self.out += _I64.pack(value)
        return self

    def string(self, value: str | None) -> _Writer:
        if value is None:
            return self.i16(-1)
        encoded = value.encode()
        self.i16(len(encoded))
        self.out += encoded
        return self

    def blob(self, value: bytes) -> _Writer:
        self.i32(len(value))
        self.out += value
        return self


def offset_key(key: OffsetKey) -> bytes:
    writer = _Writer().i16(_OFFSET_KEY_VERSION).string(key.group_id).string(key.topic)
    return bytes(writer.i32(key.partition).out)


def offset_value(offset: CommittedOffset) -> bytes:
    writer = _Writer().i16(_OFFSET_VALUE_VERSION).i64(offset.offset).i32(offset.leader_epoch)
    return bytes(writer.string(offset.metadata).i64(offset.commit_timestamp_ms).out)


def group_key(key: GroupKey) -> bytes:
    return bytes(_Writer().i16(_GROUP_KEY_VERSION).string(key.group_id).out)


def group_value(group: StoredGroup) -> bytes:
    writer = (
        _Writer()
        .i16(_GROUP_VALUE_VERSION)
        .string(group.protocol_type)
        .i32(group.generation)
        .string(group.protocol)
        .string(group.leader)
        .i64(group.state_timestamp_ms)
        .i32(len(group.members))
    )
    for member in group.members:
        (
            writer.string(member.member_id)
            .string(member.group_instance_id)
            .string(member.client_id)
            .string(member.client_host)
            .i32(member.rebalance_timeout_ms)
            .i32(member.session_timeout_ms)
            .blob(member.subscription)
            .blob(member.assignment)
        )
    return bytes(writer.out)


# --- decoding ------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _unpack(self, layout: struct.Struct) -> int:
        if self.position + layout.size > len(self.data):
            raise UnknownRecord("record is cut off")
        (value,) = layout.unpack_from(self.data, self.position)
        self.position += layout.size
        return int(value)

    def i16(self) -> int:
        return self._unpack(_I16)

    def i32(self) -> int:
        return self._unpack(_I32)

    def i64(self) -> int:
        return self._unpack(_I64)

    def _take(self, length: int) -> bytes:
        if length < 0 or self.position + length > len(self.data):
            raise UnknownRecord("record is cut off")
        value = self.data[self.position : self.position + length]
        self.position += length
        return value

    def string(self) -> str | None:
        length = self.i16()
        if length < 0:
            return None
        try:
            return self._take(length).decode()
        except UnicodeDecodeError:
            raise UnknownRecord("a string is not UTF-8") from None

    def required_string(self) -> str:
        value = self.string()
        if value is None:
            raise UnknownRecord("a required string is null")
        return value

    def blob(self) -> bytes:
        length = self.i32()
        return b"" if length < 0 else self._take(length)


def decode_key(key: bytes) -> OffsetKey | GroupKey:
    reader = _Reader(key)
    version = reader.i16()
    if version in (0, _OFFSET_KEY_VERSION):
        return OffsetKey(reader.required_string(), reader.required_string(), reader.i32())
    if version == _GROUP_KEY_VERSION:
        return GroupKey(reader.required_string())
    raise UnknownRecord(f"unknown key version {version}")


def decode_offset_value(value: bytes) -> CommittedOffset:
    reader = _Reader(value)
    version = reader.i16()
    if version != _OFFSET_VALUE_VERSION:
        raise UnknownRecord(f"unknown offset commit value version {version}")
    return CommittedOffset(reader.i64(), reader.i32(), reader.required_string(), reader.i64())


def decode_group_value(value: bytes) -> StoredGroup:
    reader = _Reader(value)
    version = reader.i16()
    if version != _GROUP_VALUE_VERSION:
        raise UnknownRecord(f"unknown group metadata value version {version}")
    protocol_type = reader.required_string()
    generation = reader.i32()
    protocol = reader.string()
    leader = reader.string()
    state_timestamp_ms = reader.i64()
    members = tuple(
        StoredMember(
            member_id=reader.required_string(),
            group_instance_id=reader.string(),
            client_id=reader.required_string(),
            client_host=reader.required_string(),
            rebalance_timeout_ms=reader.i32(),
            session_timeout_ms=reader.i32(),
            subscription=reader.blob(),
            assignment=reader.blob(),
        )
        for _ in range(reader.i32())
    )
    return StoredGroup(protocol_type, generation, protocol, leader, state_timestamp_ms, members)
