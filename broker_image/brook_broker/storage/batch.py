"""The v2 record batch header: the only part of a batch the broker reads.

Batches are stored and served as the raw bytes a producer sent; the broker reads the
61-byte header to validate it, assign offsets and index it. Layout (big-endian):

    base_offset i64 | batch_length i32 | partition_leader_epoch i32 | magic i8 | crc u32 |
    attributes i16 | last_offset_delta i32 | base_timestamp i64 | max_timestamp i64 |
    producer_id i64 | producer_epoch i16 | base_sequence i32 | records_count i32

The CRC32C covers everything from ``attributes`` to the end of the batch, so the base
offset and the partition leader epoch can be rewritten without recomputing it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from crc32c import crc32c

HEADER_SIZE = 61
LOG_OVERHEAD = 12
"""Bytes before ``batch_length`` counts from: base offset (8) and the length itself (4)."""
PARTITION_LEADER_EPOCH_OFFSET = 12
MAGIC_OFFSET = 16
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
MAX_TIMESTAMP_OFFSET = 35

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND = 0x08
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
DELETE_HORIZON_FLAG = 0x40
"""Set by the log cleaner (KIP-534): the batch's base timestamp is the time after which
its tombstones may be removed; its records' timestamp deltas are relative to it."""

_HEADER = struct.Struct(">qiibIhiqqqhii")
_LENGTH = struct.Struct(">qi")
_I64 = struct.Struct(">q")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")


class InvalidBatch(ValueError):
    """A batch that must not be stored. ``error`` names the Kafka error code to answer."""

    def __init__(self, message: str, error: str = "corrupt_message") -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch takes on disk and on the wire."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_FLAG)

    @property
    def delete_horizon_ms(self) -> int | None:
        """When the cleaner may remove this batch's tombstones (None: not cleaned yet)."""
        return self.base_timestamp if self.attributes & DELETE_HORIZON_FLAG else None


def parse_header(data: bytes | bytearray | memoryview, position: int = 0) -> BatchHeader:
    """Decode the header at ``position``; raises :class:`InvalidBatch` if it cannot be one."""
    if len(data) - position < HEADER_SIZE:
        raise InvalidBatch("record batch shorter than its header")
    header = BatchHeader(*_HEADER.unpack_from(data, position))
    if header.magic != 2:
        raise InvalidBatch(
            f"record batch magic {header.magic} is not supported: only v2 batches are accepted",
            error="unsupported_for_message_format" if header.magic in (0, 1) else "corrupt_message",
        )
    if header.batch_length < HEADER_SIZE - LOG_OVERHEAD:
        raise InvalidBatch(f"record batch length {header.batch_length} is below the header size")
    if header.last_offset_delta < 0 or header.records_count < 0:
        raise InvalidBatch("record batch has a negative record count or offset delta")
    return header


def batch_size_at(data: bytes | bytearray | memoryview, position: int) -> int | None:
    """Size of the batch starting at ``position``, or None if its length prefix is cut off."""
    if len(data) - position < LOG_OVERHEAD:
        return None
    batch_length: int = _LENGTH.unpack_from(data, position)[1]
    return batch_length + LOG_OVERHEAD


def crc_matches(
    data: bytes | bytearray | memoryview, header: BatchHeader, position: int = 0
) -> bool:
    start = position + ATTRIBUTES_OFFSET
    return crc32c(memoryview(data)[start : position + header.size]) == header.crc


def validate_batches(records: bytes | memoryview) -> list[BatchHeader]:
    """Check that ``records`` is a whole number of well-formed v2 batches with valid CRCs.

    This is what a produce request's records must pass before anything is appended.
    """
    headers: list[BatchHeader] = []
    position = 0
    total = len(records)
    if total == 0:
        raise InvalidBatch("produce request carries no record batch")
    while position < total:
        header = parse_header(records, position)
        if position + header.size > total:
            raise InvalidBatch("record batch is truncated")
        if not crc_matches(records, header, position):
            raise InvalidBatch("record batch CRC32C does not match its contents")
        if header.records_count == 0:
            raise InvalidBatch("record batch holds no records")
        headers.append(header)
        position += header.size
    return headers


def iter_headers(
    data: bytes | bytearray | memoryview, *, check_crc: bool = False
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each whole, valid batch until the first bad or cut one."""
    position = 0
    total = len(data)
    while position < total:
        try:
            header = parse_header(data, position)
        except InvalidBatch:
            return
        if position + header.size > total:
            return
        if check_crc and not crc_matches(data, header, position):
            return
        yield position, header
        position += header.size


def set_base_offset(batch: bytearray | memoryview, position: int, base_offset: int) -> None:
    """Assign offsets to a batch in place; the CRC does not cover the base offset."""
    _I64.pack_into(batch, position, base_offset)


def set_leader_epoch(batch: bytearray | memoryview, position: int, leader_epoch: int) -> None:
    """Stamp the epoch of the leader that appends the batch; the CRC does not cover it."""
    _I32.pack_into(batch, position + PARTITION_LEADER_EPOCH_OFFSET, leader_epoch)


def set_log_append_time(
    batch: bytearray | memoryview, position: int, header: BatchHeader, now_ms: int
) -> None:
    """Stamp a batch with the broker's time (``message.timestamp.type=LogAppendTime``).

    This changes bytes the CRC covers, so the CRC is recomputed.
    """
    _I16.pack_into(
        batch, position + ATTRIBUTES_OFFSET, header.attributes | TIMESTAMP_TYPE_LOG_APPEND
    )
    _I64.pack_into(batch, position + MAX_TIMESTAMP_OFFSET, now_ms)
    view = memoryview(batch)
    crc = crc32c(view[position + ATTRIBUTES_OFFSET : position + header.size])
    _U32.pack_into(batch, position + CRC_OFFSET, crc)
