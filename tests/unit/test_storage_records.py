"""Record-level reading of batches: every codec producers use, and broken input."""

from __future__ import annotations

import struct

import pytest
from brook_broker.storage.batch import InvalidBatch, parse_header, set_log_append_time
from brook_broker.storage.records import decompress, first_record_at_or_after, read_varint

from tests.support.batches import (
    BASE_TIME_MS,
    CODECS,
    Record,
    encode_record,
    make_batch,
    varint,
)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_first_record_at_or_after_in_every_codec(codec: str) -> None:
    timestamps = [BASE_TIME_MS + delta for delta in (5, 1, 9, 9, 20)]
    # Large values so that compressed data spans several xerial blocks.
    values = [bytes([index]) * 3000 for index in range(len(timestamps))]
    batch = make_batch(values, timestamps=timestamps, codec=codec, base_offset=100)
    header = parse_header(batch)
    assert first_record_at_or_after(batch, header, BASE_TIME_MS) == (100, BASE_TIME_MS + 5)
    assert first_record_at_or_after(batch, header, BASE_TIME_MS + 6) == (102, BASE_TIME_MS + 9)
    assert first_record_at_or_after(batch, header, BASE_TIME_MS + 9) == (102, BASE_TIME_MS + 9)
    assert first_record_at_or_after(batch, header, BASE_TIME_MS + 10) == (104, BASE_TIME_MS + 20)
    assert first_record_at_or_after(batch, header, BASE_TIME_MS + 21) is None


def test_log_append_time_batch_answers_with_its_first_record() -> None:
    batch = bytearray(make_batch([b"a", b"b"], base_offset=10))
    header = parse_header(batch)
    set_log_append_time(batch, 0, header, BASE_TIME_MS + 500)
    stamped = parse_header(batch)
    assert first_record_at_or_after(batch, stamped, BASE_TIME_MS + 500) == (10, BASE_TIME_MS + 500)
    assert first_record_at_or_after(batch, stamped, BASE_TIME_MS + 501) is None


def test_corrupt_compressed_records_raise_invalid_batch() -> None:
    batch = bytearray(make_batch([b"a" * 100], codec="zstd"))
    batch[70:80] = b"\xff" * 10
    with pytest.raises(InvalidBatch):
        first_record_at_or_after(batch, parse_header(batch), 0)


def test_cut_xerial_block_raises_invalid_batch() -> None:
    framed = CODECS["snappy-xerial"][1](b"x" * 10000)
    with pytest.raises(InvalidBatch):
        decompress(2, framed[:-3])


def test_unknown_codec_raises_invalid_batch() -> None:
    with pytest.raises(InvalidBatch, match="codec 5"):
        decompress(5, b"abc")


def _with_records(records: bytes, count: int) -> bytes:
    """A batch header (from the builder) followed by hand-made records."""
    header = bytearray(make_batch([b"a"])[:61])
    struct.pack_into(">i", header, 8, len(header) + len(records) - 12)
    struct.pack_into(">i", header, 57, count)
    return bytes(header) + records


def test_record_longer_than_its_batch_raises_invalid_batch() -> None:
    record = encode_record(Record(None, b"a" * 50), 0)
    batch = _with_records(varint(len(record) + 100) + record[1:], 1)
    with pytest.raises(InvalidBatch):
        first_record_at_or_after(batch, parse_header(batch), BASE_TIME_MS + 1)


def test_fewer_records_than_counted_raise_invalid_batch() -> None:
    batch = _with_records(encode_record(Record(None, b"a"), 0), 2)
    assert first_record_at_or_after(batch, parse_header(batch), BASE_TIME_MS) == (0, BASE_TIME_MS)
    with pytest.raises(InvalidBatch):
        first_record_at_or_after(batch, parse_header(batch), BASE_TIME_MS + 1)


@pytest.mark.parametrize(
    "value", [0, 1, -1, 63, -64, 64, 300, -300, 2**31 - 1, -(2**31), 2**62, -(2**63)]
)
def test_read_varint_round_trips(value: int) -> None:
    encoded = b"\xaa" + varint(value) + b"\xbb"
    assert read_varint(encoded, 1) == (value, len(encoded) - 1)


def test_read_varint_rejects_endless_varint() -> None:
    with pytest.raises(InvalidBatch):
        read_varint(b"\xff" * 11, 0)
    with pytest.raises(IndexError):
        read_varint(b"\x80", 0)


def test_batch_header_fields_from_builder_match_layout() -> None:
    batch = make_batch([b"a"], timestamps=[BASE_TIME_MS + 3])
    assert struct.unpack_from(">q", batch, 27)[0] == BASE_TIME_MS + 3
