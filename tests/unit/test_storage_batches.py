"""Builders of v2 record batches for the storage tests, and checks that they are batches.

Compression uses libraries independent of the broker's decoder (cramjam): gzip from the
standard library, snappy in xerial framing as kafka-python's (Java-compatible) codec
writes it and raw as librdkafka sends it, LZ4 frames from ``lz4``, zstd from
``zstandard``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Sequence

import lz4.frame
import pytest
import snappy
import zstandard
from brook_broker.storage.batch import (
    TIMESTAMP_TYPE_LOG_APPEND,
    iter_headers,
    parse_header,
    validate_batches,
)
from crc32c import crc32c
from kafka.codec import snappy_encode

BASE_TIME_MS = 1_700_000_000_000

_AFTER_CRC = struct.Struct(">hiqqqhii")
_BEFORE_CRC = struct.Struct(">qiibI")

CODECS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "none": (0, lambda data: data),
    "gzip": (1, gzip.compress),
    "snappy-xerial": (
        2,
        lambda data: snappy_encode(data, xerial_compatible=True, xerial_blocksize=4096),
    ),
    "snappy-raw": (2, snappy.compress),
    "lz4": (3, lz4.frame.compress),
    "zstd": (4, lambda data: zstandard.ZstdCompressor().compress(data)),
}


def varint(value: int) -> bytes:
    """Kafka's zigzag varint (varlong for large values)."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value & ~0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(data: bytes | None) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


def encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes | None]] = (),
) -> bytes:
    body = (
        b"\x00"
        + varint(timestamp_delta)
        + varint(offset_delta)
        + _field(key)
        + _field(value)
        + varint(len(headers))
        + b"".join(_field(name) + _field(data) for name, data in headers)
    )
    return varint(len(body)) + body


def make_batch(
    values: Sequence[bytes],
    *,
    timestamps: Sequence[int] | None = None,
    codec: str = "none",
    base_offset: int = 0,
    log_append_time: bool = False,
) -> bytes:
    """One v2 batch of ``values`` (keyed ``k<i>``, one header each) as a producer sends it."""
    if timestamps is None:
        timestamps = [BASE_TIME_MS + index for index in range(len(values))]
    compression, compress = CODECS[codec]
    base_timestamp = timestamps[0]
    records = b"".join(
        encode_record(index, timestamp - base_timestamp, b"k%d" % index, value, [(b"h", b"v")])
        for index, (value, timestamp) in enumerate(zip(values, timestamps, strict=True))
    )
    attributes = compression | (TIMESTAMP_TYPE_LOG_APPEND if log_append_time else 0)
    after_crc = _AFTER_CRC.pack(
        attributes, len(values) - 1, base_timestamp, max(timestamps), -1, -1, -1, len(values)
    ) + compress(records)
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, the rest
    return _BEFORE_CRC.pack(base_offset, batch_length, 0, 2, crc32c(after_crc)) + after_crc


def payload(batch: bytes | memoryview) -> bytes:
    """A batch without its base offset: what must come back unchanged from the log."""
    return bytes(batch[8:])


def split_batches(data: bytes) -> list[tuple[int, bytes]]:
    """``(base offset, payload)`` of each batch in ``data``, which must be whole batches."""
    found = [
        (header.base_offset, payload(data[position : position + header.size]))
        for position, header in iter_headers(data)
    ]
    assert sum(len(body) + 8 for _, body in found) == len(data)
    return found


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_built_batches_are_valid_v2_batches(codec: str) -> None:
    batch = make_batch([b"a" * 100, b"b", b""], codec=codec)
    (header,) = validate_batches(batch)
    assert header.records_count == 3
    assert header.last_offset_delta == 2
    assert header.compression == CODECS[codec][0]
    assert header.max_timestamp == BASE_TIME_MS + 2


def test_varint_matches_kafka_examples() -> None:
    assert varint(0) == b"\x00"
    assert varint(-1) == b"\x01"
    assert varint(1) == b"\x02"
    assert varint(-64) == b"\x7f"
    assert varint(64) == b"\x80\x01"
    assert parse_header(make_batch([b"x"], base_offset=7)).base_offset == 7
