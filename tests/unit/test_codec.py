"""build and encode_response: one plain mapping serves every version of a message."""

from __future__ import annotations

import datetime
import struct
import uuid
from typing import Any

import pytest
from brook_broker.protocol import codec
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_reader, entity_writer

from tests.support.entities import build

METADATA, PRODUCE, FETCH, CREATE_TOPICS, DESCRIBE_CONFIGS = 3, 0, 1, 19, 32


def round_trip(api_key: int, version: int, body: dict[str, Any]) -> Any:
    """Encode ``body`` as a response frame, then decode it back with kio's own reader."""
    request = codec.Request(api_key, version, 1234, "test", None)
    frame = codec.encode_response(request, body)
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    response_type = load_response_schema(api_key, version)
    flexible = response_type.__flexible__ and api_key != 18
    header_type = ResponseHeaderV1 if flexible else ResponseHeaderV0
    view = memoryview(frame[4:]).toreadonly()
    header, offset = entity_reader(header_type)(view, 0)
    assert header.correlation_id == 1234
    decoded, used = entity_reader(response_type)(view, offset)
    assert offset + used == len(view)
    return decoded


METADATA_BODY = {
    "brokers": [{"node_id": 7, "host": "broker-7", "port": 9092, "rack": None}],
    "cluster_id": "brook",
    "controller_id": 7,
    "topics": [
        {
            "error_code": 0,
            "name": "events",
            "topic_id": uuid.UUID(int=42),
            "partitions": [
                {
                    "error_code": ErrorCode.none,
                    "partition_index": 0,
                    "leader_id": 7,
                    "leader_epoch": 0,
                    "replica_nodes": [7],
                    "isr_nodes": [7],
                }
            ],
        }
    ],
}


@pytest.mark.parametrize("version", range(1, 13))
def test_metadata_round_trips_in_every_version(version: int) -> None:
    decoded = round_trip(METADATA, version, METADATA_BODY)
    assert decoded.brokers[0].host == "broker-7"
    assert decoded.controller_id == 7
    partition = decoded.topics[0].partitions[0]
    assert (partition.leader_id, partition.replica_nodes, partition.isr_nodes) == (7, (7,), (7,))
    if version >= 2:
        assert decoded.cluster_id == "brook"
    if version >= 7:
        assert partition.leader_epoch == 0
    if version >= 10:
        assert decoded.topics[0].topic_id == uuid.UUID(int=42)


@pytest.mark.parametrize("version", [3, 5, 8, 9])
def test_produce_response_drops_fields_older_versions_lack(version: int) -> None:
    appended_at = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)
    body = {
        "responses": [
            {
                "name": "events",
                "partition_responses": [
                    {
                        "index": 3,
                        "error_code": ErrorCode.message_too_large,
                        "base_offset": 100,
                        "log_append_time": appended_at,
                        "log_start_offset": 5,
                        "error_message": "too large",
                    }
                ],
            }
        ]
    }
    partition = round_trip(PRODUCE, version, body).responses[0].partition_responses[0]
    assert partition.error_code == ErrorCode.message_too_large
    assert partition.base_offset == 100
    assert partition.log_append_time == appended_at
    if version >= 5:
        assert partition.log_start_offset == 5
    if version >= 8:
        assert partition.error_message == "too large"


@pytest.mark.parametrize("version", [4, 7, 11, 12])
def test_fetch_response_carries_records_untouched(version: int) -> None:
    records = bytes(range(256)) * 10
    body = {
        "error_code": 0,
        "session_id": 0,
        "responses": [
            {
                "topic": "events",
                "partitions": [
                    {
                        "partition_index": 0,
                        "error_code": 0,
                        "high_watermark": 10,
                        "last_stable_offset": 10,
                        "log_start_offset": 0,
                        "aborted_transactions": None,
                        "records": records,
                    }
                ],
            }
        ],
    }
    partition = round_trip(FETCH, version, body).responses[0].partitions[0]
    assert partition.records == records
    assert partition.high_watermark == 10


@pytest.mark.parametrize("version", [2, 5, 7])
def test_nullable_array_of_entities_is_built(version: int) -> None:
    """CreateTopics v5+ has a nullable ``configs`` array of entities: both forms encode."""
    body = {
        "topics": [
            {
                "name": "with-configs",
                "error_code": 0,
                "num_partitions": 3,
                "replication_factor": 1,
                "configs": [
                    {
                        "name": "retention.ms",
                        "value": "1000",
                        "read_only": False,
                        "config_source": 1,
                        "is_sensitive": False,
                    }
                ],
            },
            {
                "name": "failed",
                "error_code": ErrorCode.invalid_config,
                "error_message": "no",
                "configs": None,
            },
        ]
    }
    decoded = round_trip(CREATE_TOPICS, version, body)
    assert [topic.name for topic in decoded.topics] == ["with-configs", "failed"]
    assert decoded.topics[1].error_message == "no"
    if version >= 5:
        assert decoded.topics[0].configs[0].value == "1000"
        assert decoded.topics[1].configs is None


def test_missing_fields_get_kafka_zero_values() -> None:
    body = {"results": [{"resource_type": 2, "resource_name": "events", "configs": []}]}
    result = round_trip(DESCRIBE_CONFIGS, 4, body).results[0]
    assert result.error_code == ErrorCode.none
    assert result.error_message is None


def test_build_accepts_kio_request_entities_for_handlers() -> None:
    """Tests build requests the same way: a dict in, the version's dataclass out."""
    request_type = load_request_schema(METADATA, 4)
    request = build(request_type, {"topics": [{"name": "a"}]})
    written: list[bytes] = []

    class Sink:
        write = written.append

    entity_writer(request_type)(Sink, request)
    decoded, _ = entity_reader(request_type)(memoryview(b"".join(written)).toreadonly(), 0)
    assert decoded.topics[0].name == "a"
    assert decoded.allow_auto_topic_creation is True
