"""A compacted topic keeps the latest record of each key, so it refuses records without
one: the keys of every batch are read (decompressed first) before anything is stored."""

from __future__ import annotations

import struct

import pytest
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.topic_config import TopicSettings
from brook_broker.replication.appends import check_batches
from brook_broker.storage.batch import parse_header, validate_batches
from brook_broker.storage.log import LogConfig
from brook_broker.storage.records import record_keys
from crc32c import crc32c
from kio.schema.errors import ErrorCode

from tests.support.batches import CODECS, Record, encode_batch

KEYS = [b"alpha", None, b"", b"k" * 3000, None]
"""An empty key is a key; only a null one is missing. A long key spans xerial blocks."""


def settings(cleanup_policy: str) -> TopicSettings:
    return TopicSettings(
        log=LogConfig(cleanup_policy=cleanup_policy),
        max_message_bytes=1_048_588,
        log_append_time=False,
        min_insync_replicas=1,
    )


def batch_of(keys: list[bytes | None], codec: str = "none") -> bytes:
    return encode_batch([Record(key, b"value-%d" % i) for i, key in enumerate(keys)], codec=codec)


def check(data: bytes, cleanup_policy: str) -> None:
    check_batches(data, validate_batches(data), settings(cleanup_policy), "words-3")


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_record_keys_in_every_codec(codec: str) -> None:
    batch = batch_of(KEYS, codec)
    assert list(record_keys(batch, parse_header(batch))) == KEYS


@pytest.mark.parametrize("cleanup_policy", ["compact", "compact,delete"])
@pytest.mark.parametrize("codec", ["none", "zstd", "snappy-xerial"])
def test_compacted_topic_refuses_a_batch_with_a_keyless_record(
    cleanup_policy: str, codec: str
) -> None:
    with pytest.raises(ApiError) as refused:
        check(batch_of([b"a", None, b"b"], codec), cleanup_policy)
    assert refused.value.code == ErrorCode.invalid_record
    assert refused.value.message == (
        "Compacted topic cannot accept message without key in topic partition words-3."
    )


def test_a_keyless_record_in_a_later_batch_of_the_request_is_found() -> None:
    with pytest.raises(ApiError):
        check(batch_of([b"a", b"b"], "gzip") + batch_of([None], "lz4"), "compact")


def test_compacted_topic_accepts_keyed_records_and_empty_keys() -> None:
    check(batch_of([b"a", b""], "gzip") + batch_of([b"b"]), "compact")


def test_delete_topic_takes_keyless_records() -> None:
    check(batch_of([None, None], "zstd"), "delete")


def reseal(batch: bytearray) -> bytes:
    """``batch`` with its CRC32C made right again, as a producer that wrote it would."""
    batch[17:21] = struct.pack(">I", crc32c(bytes(batch[21:])))
    return bytes(batch)


def test_records_that_do_not_decompress_are_refused_as_corrupt_only_when_read() -> None:
    batch = bytearray(batch_of([b"a" * 100], "zstd"))
    batch[70:80] = b"\xff" * 10
    garbled = reseal(batch)
    check(garbled, "delete")
    with pytest.raises(ApiError) as refused:
        check(garbled, "compact")
    assert refused.value.code == ErrorCode.corrupt_message
