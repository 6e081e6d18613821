"""The shared batch builder makes valid v2 batches that the broker's header parser reads."""

from __future__ import annotations

import pytest
from brook_broker.storage.batch import parse_header, validate_batches

from tests.support.batches import BASE_TIME_MS, CODECS, make_batch, varint


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
