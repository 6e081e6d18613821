"""The frame check before kio: huge counts and nulls where Kafka allows none are refused
(kio would reserve gigabytes for the one, and hand handlers ``None`` for the other),
while every well-formed request of every version the broker advertises still decodes."""

from __future__ import annotations

import struct

import pytest
from brook_broker.api.api_versions import SUPPORTED_VERSIONS
from brook_broker.protocol.codec import MalformedRequest, decode_request
from brook_broker.protocol.request_check import check_request

from tests.support.sample_requests import full_request

PRODUCE, LIST_OFFSETS, METADATA, OFFSET_COMMIT, JOIN_GROUP, CREATE_TOPICS, FETCH = (
    0, 2, 3, 8, 11, 19, 1,
)  # fmt: skip
MAX_VARINT = bytes.fromhex("ffffffff0f")
ALL_VERSIONS = [
    (api_key, version)
    for api_key, (low, high) in SUPPORTED_VERSIONS.items()
    for version in range(low, high + 1)
]


def frame(api_key: int, version: int, body: bytes, *, flexible: bool) -> memoryview:
    """A request header (client id "c", no tagged fields) followed by ``body``."""
    header = struct.pack(">hhih", api_key, version, 7, 1) + b"c"
    return memoryview(header + (b"\x00" if flexible else b"") + body)


def refused(request: memoryview) -> str:
    with pytest.raises(MalformedRequest) as caught:
        decode_request(request, SUPPORTED_VERSIONS)
    assert caught.value.api_key == struct.unpack_from(">h", request)[0]
    return str(caught.value)


# The 17-byte frames of the issue: without the check kio asks for 32 GiB and aborts.
HUGE_COUNTS = {
    "Metadata v12 topics": frame(METADATA, 12, MAX_VARINT + b"\x01\x00\x00", flexible=True),
    "CreateTopics v5 topics": frame(CREATE_TOPICS, 5, MAX_VARINT + b"\x00\x00", flexible=True),
    "Produce v9 topic_data": frame(
        PRODUCE, 9, b"\x00" + b"\xff\xff" + b"\x00\x00\x03\xe8" + MAX_VARINT, flexible=True
    ),
    "Metadata v4 topics (legacy count 2^31-1)": frame(
        METADATA, 4, b"\x7f\xff\xff\xff\x01", flexible=False
    ),
    "Produce v3 topic_data (legacy)": frame(
        PRODUCE, 3, b"\xff\xff\xff\xff\x03\xe8" + b"\x00\x00\x00\x00" + b"\x7f\xff\xff\xff",
        flexible=False,
    ),
    "header tagged field count": memoryview(
        struct.pack(">hhih", METADATA, 12, 7, 1) + b"c" + MAX_VARINT + b"\x01\x01\x00\x00"
    ),
    "header tagged field size": memoryview(
        struct.pack(">hhih", METADATA, 12, 7, 1) + b"c" + b"\x01\x05" + MAX_VARINT + b"\x00"
    ),
    "Produce v9 records length": frame(
        PRODUCE, 9,
        b"\x00\xff\xff\x00\x00\x03\xe8" + b"\x02\x02t" + b"\x02\x00\x00\x00\x00" + MAX_VARINT,
        flexible=True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", HUGE_COUNTS)
def test_a_count_beyond_the_frame_is_refused_before_kio_reads_it(name: str) -> None:
    assert "beyond the end of the frame" in refused(HUGE_COUNTS[name])


NON_NULLABLE_NULLS = {
    "Produce v9 topic_data": frame(
        PRODUCE, 9, b"\x00\xff\xff\x00\x00\x03\xe8\x00\x00", flexible=True
    ),
    "Produce v3 topic_data": frame(
        PRODUCE, 3, b"\xff\xff\xff\xff\x00\x00\x03\xe8\xff\xff\xff\xff", flexible=False
    ),
    "ListOffsets v5 topics": frame(
        LIST_OFFSETS, 5, b"\xff\xff\xff\xff\x00\xff\xff\xff\xff", flexible=False
    ),
    "OffsetCommit v8 topics": frame(
        OFFSET_COMMIT, 8, b"\x02g\xff\xff\xff\xff\x02m\x00\x00\x00", flexible=True
    ),
    "OffsetCommit v8 group_id": frame(
        OFFSET_COMMIT, 8, b"\x00\xff\xff\xff\xff\x02m\x00\x01\x00", flexible=True
    ),
    "JoinGroup v5 protocols": frame(
        JOIN_GROUP, 5,
        b"\x00\x01g" + b"\x00\x00\x00\x0a" + b"\x00\x00\x00\x0a" + b"\x00\x00" + b"\xff\xff"
        + b"\x00\x08consumer" + b"\xff\xff\xff\xff",
        flexible=False,
    ),
    "Metadata v4 topics count -2": frame(METADATA, 4, b"\xff\xff\xff\xfe\x01", flexible=False),
}  # fmt: skip


@pytest.mark.parametrize("name", NON_NULLABLE_NULLS)
def test_null_in_a_non_nullable_field_is_refused(name: str) -> None:
    assert "non-nullable" in refused(NON_NULLABLE_NULLS[name])


def test_null_in_a_nullable_field_is_accepted() -> None:
    all_topics = decode_request(
        frame(METADATA, 12, b"\x00\x01\x00\x00", flexible=True), SUPPORTED_VERSIONS
    )
    assert all_topics.body.topics is None
    legacy_all_topics = decode_request(
        frame(METADATA, 4, b"\xff\xff\xff\xff\x01", flexible=False), SUPPORTED_VERSIONS
    )
    assert legacy_all_topics.body.topics is None
    no_transaction = decode_request(
        frame(
            PRODUCE,
            9,
            b"\x00\xff\xff\x00\x00\x03\xe8" + b"\x02\x02t\x02\x00\x00\x00\x00\x00\x00\x00\x00",
            flexible=True,
        ),
        SUPPORTED_VERSIONS,
    )
    assert no_transaction.body.transactional_id is None
    assert no_transaction.body.topic_data[0].partition_data[0].records is None
    anonymous = decode_request(
        memoryview(struct.pack(">hhih", METADATA, 4, 7, -1) + b"\x00\x00\x00\x00\x01"),
        SUPPORTED_VERSIONS,
    )
    assert anonymous.client_id is None  # fmt: skip


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
def test_every_well_formed_request_passes_and_the_walk_ends_where_kio_ends(
    api_key: int, version: int
) -> None:
    request = memoryview(full_request(api_key, version))
    assert check_request(request, api_key, version) == len(request)
    decoded = decode_request(request, SUPPORTED_VERSIONS)
    assert (decoded.api_key, decoded.api_version) == (api_key, version)


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
def test_every_truncation_of_a_well_formed_request_is_refused_cleanly(
    api_key: int, version: int
) -> None:
    request = full_request(api_key, version)
    for end in range(8, len(request)):
        with pytest.raises(MalformedRequest):
            decode_request(memoryview(request[:end]), SUPPORTED_VERSIONS)


def test_a_tagged_field_must_fill_the_size_it_announces() -> None:
    request = bytearray(full_request(FETCH, 12))
    # FetchRequest v12 ends with its tagged fields: cluster_id (tag 0) = "x".
    assert request[-5:] == b"\x01\x00\x02\x02x"
    request[-3] = 3  # size 3 around a 2-byte field
    assert "does not fill" in refused(memoryview(bytes(request) + b"\x00"))
