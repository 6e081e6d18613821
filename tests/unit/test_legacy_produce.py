"""Produce v0-2 requests decode into the same request type as v3, and answer in their format."""

from __future__ import annotations

import struct

import pytest
from brook_broker.protocol import codec


def v0_2_request(version: int, records: bytes) -> memoryview:
    client_id = b"kcat"
    topic = b"events"
    frame = (
        struct.pack(">hhih", 0, version, 77, len(client_id)) + client_id
        + struct.pack(">hi", -1, 1500)  # acks, timeout
        + struct.pack(">ih", 1, len(topic)) + topic
        + struct.pack(">iii", 1, 3, len(records)) + records
    )  # fmt: skip
    return memoryview(frame)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_v0_2_request_reads_like_v3(version: int) -> None:
    request = codec.decode_request(v0_2_request(version, b"batch-bytes"), {0: (0, 9)})
    assert (request.api_version, request.correlation_id, request.client_id) == (version, 77, "kcat")
    assert request.body.acks == -1
    assert request.body.timeout.total_seconds() == 1.5
    assert request.body.transactional_id is None
    (topic,) = request.body.topic_data
    (partition,) = topic.partition_data
    assert (topic.name, partition.index, partition.records) == ("events", 3, b"batch-bytes")


def test_truncated_v0_request_is_malformed() -> None:
    frame = v0_2_request(0, b"batch-bytes")[:-4]
    with pytest.raises(codec.MalformedRequest):
        codec.decode_request(frame, {0: (0, 9)})


@pytest.mark.parametrize("version", [0, 1, 2])
def test_v0_2_response_layout(version: int) -> None:
    request = codec.decode_request(v0_2_request(version, b"x"), {0: (0, 9)})
    body = {
        "responses": [
            {
                "name": "events",
                "partition_responses": [
                    {"index": 3, "error_code": 0, "base_offset": 42, "log_append_time": None}
                ],
            }
        ]
    }
    frame = codec.encode_response(request, body)
    expected = (
        struct.pack(">ii", 77, 1) + struct.pack(">h", 6) + b"events"
        + struct.pack(">iihq", 1, 3, 0, 42)
        + (struct.pack(">q", -1) if version >= 2 else b"")
        + (struct.pack(">i", 0) if version >= 1 else b"")
    )  # fmt: skip
    assert frame == struct.pack(">i", len(expected)) + expected
