"""What the coordinator writes to ``__consumer_offsets`` reads back the same, in Kafka's
layout, through the batches the broker builds and parses."""

from __future__ import annotations

import struct

import pytest
from brook_broker.groups.offsets_topic import (
    CommittedOffset,
    GroupKey,
    OffsetKey,
    StoredGroup,
    StoredMember,
    UnknownRecord,
    decode_group_value,
    decode_key,
    decode_offset_value,
    group_key,
    group_value,
    offset_key,
    offset_value,
)
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.records import build_batch, iter_records

from tests.support.batches import CODECS, Record, encode_batch


def test_an_offset_commit_reads_back() -> None:
    key = OffsetKey("group-1", "orders", 7)
    value = CommittedOffset(12345, 3, "processed by worker 2", 1_700_000_000_000)
    assert decode_key(offset_key(key)) == key
    assert decode_offset_value(offset_value(value)) == value


def test_the_offset_key_is_kafkas_layout() -> None:
    encoded = offset_key(OffsetKey("g", "t", 2))
    assert encoded == struct.pack(">hh1sh1si", 1, 1, b"g", 1, b"t", 2)


def test_a_group_membership_reads_back() -> None:
    member = StoredMember("m-1", "instance-a", "client", "/127.0.0.1", 30000, 10000, b"sub", b"")
    group = StoredGroup("consumer", 4, "range", "m-1", 1_700_000_000_000, (member,))
    assert decode_key(group_key(GroupKey("group-1"))) == GroupKey("group-1")
    assert decode_group_value(group_value(group)) == group


def test_an_unknown_or_cut_record_is_refused() -> None:
    with pytest.raises(UnknownRecord):
        decode_key(struct.pack(">h", 9) + b"\x00\x01g")
    with pytest.raises(UnknownRecord):
        decode_offset_value(offset_value(CommittedOffset(1, 1, "", 1))[:-3])


def test_built_batches_are_valid_and_read_back_with_tombstones() -> None:
    records = [(b"k1", b"v1"), (b"k2", None), (b"k3", b"x" * 1000)]
    batch = build_batch(records, 1_700_000_000_000)
    (header,) = validate_batches(batch)
    assert (header.records_count, header.producer_id) == (3, -1)
    assert [(key, value) for _, key, value in iter_records(batch)] == records


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_records_of_client_batches_read_back_whatever_the_codec(codec: str) -> None:
    records = [Record(b"key-%d" % n, b"value-%d" % n) for n in range(5)]
    batch = encode_batch(records, codec=codec, base_offset=40)
    read = list(iter_records(batch))
    assert read == [(40 + n, b"key-%d" % n, b"value-%d" % n) for n in range(5)]
