"""Record batches as clients send them, built for tests: v2 batches with any codec and a
correct CRC32C, and pre-0.11 (magic 0 and 1) message sets.

The encoder is written independently of the broker, which only reads batch headers (tests
read them with ``brook_broker.storage.batch``). Compression uses libraries independent of
the broker's decoder (cramjam): gzip from the standard library, snappy in xerial framing
as kafka-python's (Java-compatible) codec writes it and raw as librdkafka sends it, LZ4
frames from ``lz4``, zstd from ``zstandard``.
"""

from __future__ import annotations

import gzip
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lz4.frame
import snappy
import zstandard
from brook_broker.storage.batch import TIMESTAMP_TYPE_LOG_APPEND, iter_headers
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
"""Codec name -> (compression id in a batch's attributes, compressor)."""

COMPRESSION_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""The ``compression.type`` names clients take, and the compression id each one stores."""


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_delta: int = 0


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


def encode_record(record: Record, offset_delta: int) -> bytes:
    body = b"".join(
        [
            b"\x00",  # attributes
            varint(record.timestamp_delta),
            varint(offset_delta),
            _field(record.key),
            _field(record.value),
            varint(len(record.headers)),
            *(_field(name.encode()) + _field(value) for name, value in record.headers),
        ]
    )
    return varint(len(body)) + body


def encode_batch(
    records: Sequence[Record],
    *,
    base_timestamp: int = BASE_TIME_MS,
    codec: str = "none",
    base_offset: int = 0,
    magic: int = 2,
    attributes: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """A v2 batch with a correct CRC32C (callers corrupt it on purpose); ``codec`` sets the
    compression bits of ``attributes`` and compresses the records."""
    compression, compress = CODECS[codec]
    payload = compress(
        b"".join(encode_record(record, delta) for delta, record in enumerate(records))
    )
    max_timestamp = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    after_crc = (
        _AFTER_CRC.pack(
            attributes | compression,
            len(records) - 1,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
        + payload
    )
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, the rest
    return _BEFORE_CRC.pack(base_offset, batch_length, -1, magic, crc32c(after_crc)) + after_crc


def timed_records(
    values: Sequence[bytes], timestamps: Sequence[int], keyed: bool = False
) -> list[Record]:
    """One record per value, with timestamps relative to the first; ``keyed``: key ``k<i>``
    and one header each."""
    return [
        Record(
            b"k%d" % index if keyed else None,
            value,
            (("h", b"v"),) if keyed else (),
            timestamp - timestamps[0],
        )
        for index, (value, timestamp) in enumerate(zip(values, timestamps, strict=True))
    ]


def make_batch(
    values: Sequence[bytes],
    *,
    timestamps: Sequence[int] | None = None,
    codec: str = "none",
    base_offset: int = 0,
    log_append_time: bool = False,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """One v2 batch of ``values`` (keyed ``k<i>``, one header each) as a producer sends it;
    timestamps default to one millisecond apart from BASE_TIME_MS. An idempotent
    producer's batch carries its ``producer_id``, ``producer_epoch`` and ``base_sequence``."""
    if timestamps is None:
        timestamps = [BASE_TIME_MS + index for index in range(len(values))]
    return encode_batch(
        timed_records(values, timestamps, keyed=True),
        base_timestamp=timestamps[0],
        codec=codec,
        base_offset=base_offset,
        attributes=TIMESTAMP_TYPE_LOG_APPEND if log_append_time else 0,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


def encode_legacy_message_set(value: bytes, *, magic: int, key: bytes | None = None) -> bytes:
    """A one-message message set in the pre-0.11 format (magic 0 or 1, CRC32)."""
    timestamp = struct.pack(">q", int(time.time() * 1000)) if magic == 1 else b""
    body = struct.pack(">bb", magic, 0) + timestamp + _bytes32(key) + _bytes32(value)
    message = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", 0, len(message)) + message


def _bytes32(data: bytes | None) -> bytes:
    return struct.pack(">i", -1) if data is None else struct.pack(">i", len(data)) + data


def payload(batch: bytes | memoryview) -> bytes:
    """A batch without its base offset and partition leader epoch, which the leader
    stamps: what must come back unchanged from the log."""
    return bytes(batch[8:12]) + bytes(batch[16:])


def split_batches(data: bytes) -> list[tuple[int, bytes]]:
    """``(base offset, payload)`` of each batch in ``data``, which must be whole batches."""
    found = [
        (header.base_offset, payload(data[position : position + header.size]))
        for position, header in iter_headers(data)
    ]
    assert sum(len(body) + 12 for _, body in found) == len(data)
    return found
