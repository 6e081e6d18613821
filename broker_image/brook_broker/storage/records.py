"""Record-level reading of a v2 batch, needed only to answer ListOffsets by timestamp.

Produce and fetch never look inside a batch. Finding the first record at or after a
timestamp does: the batch's records section is decompressed if needed and each record's
leading varints (length, attributes, timestamp delta, offset delta) are read; keys,
values and headers are skipped by the record length.
"""

from __future__ import annotations

import struct

import cramjam

from .batch import HEADER_SIZE, TIMESTAMP_TYPE_LOG_APPEND, BatchHeader, InvalidBatch

NO_COMPRESSION = 0
GZIP = 1
SNAPPY = 2
LZ4 = 3
ZSTD = 4

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
"""Java clients frame snappy data as xerial's snappy-java does; librdkafka sends raw snappy."""
_XERIAL_HEADER_SIZE = 16  # magic, version i32, minimum compatible version i32
_BLOCK_LENGTH = struct.Struct(">i")

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
