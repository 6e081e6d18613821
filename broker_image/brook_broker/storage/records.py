"""Record-level reading and writing of v2 batches, for the few places that need it.

Produce and fetch never look inside a batch. Two things do: ListOffsets by timestamp
(each record's leading varints are read; keys, values and headers are skipped by the
record length), and the broker's own internal topic ``__consumer_offsets``, whose
batches the group coordinator writes and reads back (uncompressed, no headers).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import cramjam
from crc32c import crc32c

from .batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_TYPE_LOG_APPEND,
    BatchHeader,
    InvalidBatch,
    iter_headers,
)

NO_COMPRESSION = 0
GZIP = 1
SNAPPY = 2
LZ4 = 3
ZSTD = 4

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
"""Java clients frame snappy data as xerial's snappy-java does; librdkafka sends raw snappy."""
_XERIAL_HEADER_SIZE = 16  # magic, version i32, minimum compatible version i32
_BLOCK_LENGTH = struct.Struct(">i")
_BEFORE_CRC = struct.Struct(">qiib")
_AFTER_CRC = struct.Struct(">hiqqqhii")
_CRC = struct.Struct(">I")
NO_PRODUCER_ID = -1

_DECOMPRESSORS = {
    GZIP: cramjam.gzip.decompress,
    LZ4: cramjam.lz4.decompress,  # the LZ4 frame format, as v2 batches use it
    ZSTD: cramjam.zstd.decompress,
}


def decompress(compression: int, data: bytes | memoryview) -> bytes | memoryview:
    """The records section of a batch compressed with ``compression`` (its attribute bits)."""
    if compression == NO_COMPRESSION:
        return data
    try:
        if compression == SNAPPY:
            return _snappy_decompress(data)
        decompressor = _DECOMPRESSORS.get(compression)
        if decompressor is None:
            raise InvalidBatch(f"unknown compression codec {compression}")
        return memoryview(decompressor(data))
    except cramjam.DecompressionError as error:
        raise InvalidBatch(f"records do not decompress: {error}") from error


def _snappy_decompress(data: bytes | memoryview) -> bytes | memoryview:
    view = memoryview(data)
    if view[: len(_XERIAL_MAGIC)] != _XERIAL_MAGIC:
        return memoryview(cramjam.snappy.decompress_raw(view))
    blocks = []
    position = _XERIAL_HEADER_SIZE
    while position < len(view):
        if len(view) - position < _BLOCK_LENGTH.size:
            raise InvalidBatch("xerial snappy block length is cut off")
        (length,) = _BLOCK_LENGTH.unpack_from(view, position)
        position += _BLOCK_LENGTH.size
        if length < 0 or position + length > len(view):
            raise InvalidBatch("xerial snappy block is cut off")
        blocks.append(bytes(cramjam.snappy.decompress_raw(view[position : position + length])))
        position += length
    return b"".join(blocks)


def first_record_at_or_after(
    batch: bytes | memoryview, header: BatchHeader, timestamp_ms: int
) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the batch's first record with a timestamp >= ``timestamp_ms``.

    ``batch`` is the whole batch as stored (its header is ``header``). Raises
    :class:`InvalidBatch` if the records cannot be read.
    """
    if header.attributes & TIMESTAMP_TYPE_LOG_APPEND:
        # Every record of a LogAppendTime batch carries the batch's timestamp.
        if header.max_timestamp >= timestamp_ms:
            return header.base_offset, header.max_timestamp
        return None
    records = decompress(header.compression, memoryview(batch)[HEADER_SIZE : header.size])
    position = 0
    try:
        for _ in range(header.records_count):
            length, position = read_varint(records, position)
            end = position + length
            timestamp_delta, cursor = read_varint(records, position + 1)  # after attributes
            offset_delta, _ = read_varint(records, cursor)
            if length < 0 or end > len(records):
                raise InvalidBatch("record length does not fit its batch")
            timestamp = header.base_timestamp + timestamp_delta
            if timestamp >= timestamp_ms:
                return header.base_offset + offset_delta, timestamp
            position = end
    except IndexError as error:
        raise InvalidBatch("record is cut off") from error
    return None


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """Decode a zigzag varint/varlong at ``position``; returns ``(value, next position)``."""
    result = 0
    shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
        if shift > 63:
            raise InvalidBatch("varint is longer than 10 bytes")


def write_varint(value: int, out: bytearray) -> None:
    """Append ``value`` as a zigzag varint/varlong."""
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def build_batch(records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int) -> bytes:
    """One uncompressed v2 batch of ``(key, value)`` records at ``timestamp_ms``, without a
    producer id; the log assigns its offsets and leader epoch on append."""
    if not records:
        raise ValueError("a record batch holds at least one record")
    body = bytearray()
    for offset_delta, (key, value) in enumerate(records):
        record = bytearray(b"\x00")  # attributes
        write_varint(0, record)  # timestamp delta
        write_varint(offset_delta, record)
        for field in (key, value):
            if field is None:
                write_varint(-1, record)
            else:
                write_varint(len(field), record)
                record += field
        write_varint(0, record)  # no headers
        write_varint(len(record), body)
        body += record
    after_crc = _AFTER_CRC.pack(
        0,  # attributes: no compression, CreateTime
        len(records) - 1,
        timestamp_ms,
        timestamp_ms,
        NO_PRODUCER_ID,
        -1,  # producer epoch
        -1,  # base sequence
        len(records),
    ) + bytes(body)
    batch_length = HEADER_SIZE - LOG_OVERHEAD + len(body)
    before_crc = _BEFORE_CRC.pack(0, batch_length, -1, 2)
    return before_crc + _CRC.pack(crc32c(after_crc)) + after_crc


def iter_records(
    data: bytes | memoryview,
) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """``(offset, key, value)`` of every record in ``data``, whole batches as the log
    reads them; control batches are skipped. Raises :class:`InvalidBatch` on bad records."""
    for position, header in iter_headers(data):
        if header.is_control:
            continue
        batch = memoryview(data)[position : position + header.size]
        records = decompress(header.compression, batch[HEADER_SIZE:])
        cursor = 0
        try:
            for _ in range(header.records_count):
                length, cursor = read_varint(records, cursor)
                end = cursor + length
                if length < 0 or end > len(records):
                    raise InvalidBatch("record length does not fit its batch")
                _, cursor = read_varint(records, cursor + 1)  # timestamp delta, after attributes
                offset_delta, cursor = read_varint(records, cursor)
                key, cursor = _read_field(records, cursor)
                value, cursor = _read_field(records, cursor)
                yield header.base_offset + offset_delta, key, value
                cursor = end
        except IndexError as error:
            raise InvalidBatch("record is cut off") from error


def _read_field(data: bytes | memoryview, position: int) -> tuple[bytes | None, int]:
    length, position = read_varint(data, position)
    if length < 0:
        return None, position
    if position + length > len(data):
        raise InvalidBatch("record key or value is cut off")
    return bytes(data[position : position + length]), position + length
