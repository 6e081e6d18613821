"""Record-level reading and writing of v2 batches, for the few places that need it.

Produce and fetch never look inside a batch. Three things do: ListOffsets by timestamp
(each record's leading varints are read; keys, values and headers are skipped by the
record length), the broker's own internal topic ``__consumer_offsets``, whose batches
the group coordinator writes and reads back (uncompressed, no headers), and the log
cleaner, which keeps some records of a batch and writes them back with the same codec.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import cramjam
from crc32c import crc32c

from .batch import (
    COMPRESSION_MASK,
    DELETE_HORIZON_FLAG,
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

_XERIAL_BLOCK_SIZE = 32 * 1024
_COMPRESSORS: dict[int, Callable[[bytes], cramjam.Buffer]] = {
    GZIP: cramjam.gzip.compress,
    LZ4: cramjam.lz4.compress,
    ZSTD: cramjam.zstd.compress,
}
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


def compress(compression: int, data: bytes, *, xerial: bool = False) -> bytes:
    """``data`` compressed as a batch with ``compression`` holds it; snappy in xerial's
    framing when ``xerial`` (for batches that came framed so)."""
    if compression == NO_COMPRESSION:
        return data
    if compression == SNAPPY:
        if not xerial:
            return bytes(cramjam.snappy.compress_raw(data))
        framed = bytearray(_XERIAL_MAGIC + struct.pack(">ii", 1, 1))
        for start in range(0, len(data), _XERIAL_BLOCK_SIZE):
            block = bytes(cramjam.snappy.compress_raw(data[start : start + _XERIAL_BLOCK_SIZE]))
            framed += _BLOCK_LENGTH.pack(len(block)) + block
        return bytes(framed)
    compressor = _COMPRESSORS.get(compression)
    if compressor is None:
        raise InvalidBatch(f"unknown compression codec {compression}")
    return bytes(compressor(data))


def first_record_at_or_after(
    batch: bytes | memoryview, header: BatchHeader, timestamp_ms: int, from_offset: int = 0
) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the batch's first record at ``from_offset`` or later
    with a timestamp >= ``timestamp_ms``.

    ``batch`` is the whole batch as stored (its header is ``header``). Raises
    :class:`InvalidBatch` if the records cannot be read.
    """
    if header.attributes & TIMESTAMP_TYPE_LOG_APPEND:
        # Every record of a LogAppendTime batch carries the batch's timestamp.
        if header.max_timestamp >= timestamp_ms:
            return max(header.base_offset, from_offset), header.max_timestamp
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
            if timestamp >= timestamp_ms and header.base_offset + offset_delta >= from_offset:
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


class RecordView(NamedTuple):
    """One record of a batch as the cleaner judges it; ``raw`` is the whole record,
    its length prefix included, exactly as stored."""

    offset: int
    timestamp: int
    key: bytes | None
    is_tombstone: bool
    raw: memoryview


def record_views(batch: bytes | memoryview, header: BatchHeader) -> list[RecordView]:
    """Every record of the whole batch ``batch`` (its header is ``header``), decompressed.
    Raises :class:`InvalidBatch` if the records cannot be read."""
    records = memoryview(
        decompress(header.compression, memoryview(batch)[HEADER_SIZE : header.size])
    )
    views: list[RecordView] = []
    cursor = 0
    try:
        for _ in range(header.records_count):
            start = cursor
            length, cursor = read_varint(records, cursor)
            end = cursor + length
            if length < 0 or end > len(records):
                raise InvalidBatch("record length does not fit its batch")
            timestamp_delta, cursor = read_varint(records, cursor + 1)  # after attributes
            offset_delta, cursor = read_varint(records, cursor)
            key, cursor = _read_field(records, cursor)
            value_length, _ = read_varint(records, cursor)
            views.append(
                RecordView(
                    header.base_offset + offset_delta,
                    header.base_timestamp + timestamp_delta,
                    key,
                    value_length < 0,
                    records[start:end],
                )
            )
            cursor = end
    except IndexError as error:
        raise InvalidBatch("record is cut off") from error
    return views


def rebuild_batch(
    batch: bytes | memoryview,
    header: BatchHeader,
    kept: Sequence[RecordView],
    delete_horizon_ms: int | None = None,
) -> bytes:
    """The batch with only the ``kept`` records (in order), as Kafka's cleaner writes it:
    the same base offset and last offset delta (so an idempotent producer's last sequence
    number survives), producer id, epoch, base sequence, leader epoch and codec; the CRC,
    record count and, under CreateTime, the largest timestamp follow the kept records.
    With nothing kept it is an empty batch, uncompressed, which only carries the
    producer's state. A ``delete_horizon_ms`` is written as Kafka does (KIP-534): the
    delete horizon flag set, the horizon as base timestamp, each record's timestamp delta
    taken from it (so every record keeps its timestamp)."""
    view = memoryview(batch)
    attributes = header.attributes
    base_timestamp = header.base_timestamp
    records: list[bytes | memoryview] = [record.raw for record in kept]
    if delete_horizon_ms is not None:
        attributes |= DELETE_HORIZON_FLAG
        base_timestamp = delete_horizon_ms
        records = [_rebased(record, base_timestamp) for record in kept]
    if kept:
        original = view[HEADER_SIZE : header.size]
        xerial = header.compression == SNAPPY and original[: len(_XERIAL_MAGIC)] == _XERIAL_MAGIC
        body = compress(header.compression, b"".join(records), xerial=xerial)
    else:
        attributes &= ~COMPRESSION_MASK
        body = b""
    if attributes & TIMESTAMP_TYPE_LOG_APPEND:
        max_timestamp = header.max_timestamp
    else:
        max_timestamp = max((record.timestamp for record in kept), default=header.max_timestamp)
    after_crc = _AFTER_CRC.pack(
        attributes,
        header.last_offset_delta,
        base_timestamp,
        max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        len(kept),
    )
    crc = crc32c(body, crc32c(after_crc))
    before_crc = _BEFORE_CRC.pack(
        header.base_offset,
        HEADER_SIZE - LOG_OVERHEAD + len(body),
        header.partition_leader_epoch,
        2,
    )
    return before_crc + _CRC.pack(crc) + after_crc + body


def _rebased(record: RecordView, base_timestamp: int) -> bytes:
    """``record`` with its timestamp delta taken from ``base_timestamp``."""
    raw = record.raw
    _, attributes_at = read_varint(raw, 0)
    _, rest_at = read_varint(raw, attributes_at + 1)
    body = bytearray(raw[attributes_at : attributes_at + 1])
    write_varint(record.timestamp - base_timestamp, body)
    body += raw[rest_at:]
    framed = bytearray()
    write_varint(len(body), framed)
    return bytes(framed + body)


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


def record_keys(batch: bytes | memoryview, header: BatchHeader) -> Iterator[bytes | None]:
    """The key of each record of ``batch`` (whole, as ``header`` describes it), None for a
    record without one: a compacted topic keeps only records it can compact by key.
    Raises :class:`InvalidBatch` if the records cannot be read."""
    records = decompress(header.compression, memoryview(batch)[HEADER_SIZE : header.size])
    cursor = 0
    try:
        for _ in range(header.records_count):
            length, cursor = read_varint(records, cursor)
            end = cursor + length
            if length < 0 or end > len(records):
                raise InvalidBatch("record length does not fit its batch")
            _, cursor = read_varint(records, cursor + 1)  # timestamp delta, after attributes
            _, cursor = read_varint(records, cursor)  # offset delta
            key, _ = _read_field(records, cursor)
            yield key
            cursor = end
    except IndexError as error:
        raise InvalidBatch("record is cut off") from error
