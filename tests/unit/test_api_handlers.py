"""Request handlers against real topic metadata and partition logs in a temporary directory.

Each call goes through the dispatcher, and every response is encoded in the version that
was asked for and decoded back with kio, so a field a version lacks or a wrong type in a
handler's answer fails here rather than on a client.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brook_broker.api.context import ApiContext
from brook_broker.api.dispatcher import Dispatcher
from brook_broker.config import BrokerConfig
from brook_broker.controller.controller import Controller
from brook_broker.groups.coordinator import GroupCoordinator
from brook_broker.metadata.commands import (
    AlterPartition,
    FenceBroker,
    RegisterBroker,
    UnfenceBroker,
)
from brook_broker.metadata.topics import PartitionLimits
from brook_broker.protocol import codec
from brook_broker.replication import ReplicaManager
from brook_broker.storage.batch import parse_header
from brook_broker.storage.manager import LogManager
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_reader

from tests.support.batches import BASE_TIME_MS, encode_batch, payload, timed_records
from tests.support.dispatch import answer_of
from tests.support.entities import build
from tests.support.quorum import LocalQuorum

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS = 0, 1, 2, 3, 18
CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID, DESCRIBE_CONFIGS = 19, 20, 22, 32
CREATE_PARTITIONS, ELECT_LEADERS, INCREMENTAL_ALTER_CONFIGS = 37, 43, 44
ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS = 45, 46
DESCRIBE_CLUSTER, BROKER_HEARTBEAT, DESCRIBE_LOG_DIRS = 60, 63, 35
NODE = 5


# --- record batches --------------------------------------------------------------------


def batch(
    values: Sequence[bytes],
    timestamps: Sequence[int] | None = None,
    *,
    magic: int = 2,
    attributes: int = 0,
) -> bytes:
    """An uncompressed v2 record batch of unkeyed values, as a producer would send it."""
    timestamps = list(timestamps or [BASE_TIME_MS] * len(values))
    return encode_batch(
        timed_records(values, timestamps),
        base_timestamp=timestamps[0],
        magic=magic,
        attributes=attributes,
    )


# --- harness ---------------------------------------------------------------------------


@dataclass
class Broker:
    context: ApiContext
    dispatcher: Dispatcher
    logs: LogManager
    quorum: LocalQuorum
    internal_dispatcher: Dispatcher

    async def call(
        self, api_key: int, version: int, body: dict[str, Any], *, internal: bool = False
    ) -> Any:
        """Through the client listener's dispatcher, or the internal listener's."""
        request_type = load_request_schema(api_key, version)
        request = codec.Request(api_key, version, 7, "test", build(request_type, body))
        dispatcher = self.internal_dispatcher if internal else self.dispatcher
        answer = await answer_of(dispatcher, request)
        if answer is None:
            return None
        frame = codec.encode_response(request, answer)
        response_type = load_response_schema(api_key, version)
        flexible = response_type.__flexible__ and api_key != API_VERSIONS
        view = memoryview(frame[4:]).toreadonly()
        _, offset = entity_reader(ResponseHeaderV1 if flexible else ResponseHeaderV0)(view, 0)
        decoded, _ = entity_reader(response_type)(view, offset)
        return decoded

    async def produce(
        self, topic: str, partition: int, records: bytes, *, acks: int = 1, version: int = 9
    ) -> Any:
        response = await self.call(
            PRODUCE,
            version,
            {
                "acks": acks,
                "timeout": 1000,
                "topic_data": [
                    {"name": topic, "partition_data": [{"index": partition, "records": records}]}
                ],
            },
        )
        return None if response is None else response.responses[0].partition_responses[0]

    async def fetch(
        self,
        partitions: list[tuple[str, int, int]],
        *,
        version: int = 12,
        max_wait_ms: int = 0,
        min_bytes: int = 0,
        max_bytes: int = 10**8,
        partition_max_bytes: int = 10**7,
    ) -> list[Any]:
        topics: dict[str, list[dict[str, Any]]] = {}
        for topic, partition, offset in partitions:
            topics.setdefault(topic, []).append(
                {
                    "partition": partition,
                    "fetch_offset": offset,
                    "partition_max_bytes": partition_max_bytes,
                }
            )
        response = await self.call(
            FETCH,
            version,
            {
                "max_wait": max_wait_ms,
                "min_bytes": min_bytes,
                "max_bytes": max_bytes,
                "topics": [{"topic": t, "partitions": p} for t, p in topics.items()],
            },
        )
        assert getattr(response, "error_code", ErrorCode.none) == ErrorCode.none
        return [p for topic in response.responses for p in topic.partitions]

    async def create(self, name: str, partitions: int = 1, **extra: Any) -> Any:
        response = await self.call(
            CREATE_TOPICS,
            7,
            {
                "topics": [
                    {
                        "name": name,
                        "num_partitions": partitions,
                        "replication_factor": 1,
                        "assignments": [],
                        "configs": [],
                        **extra,
                    }
                ]
            },
        )
        return response.topics[0]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = BrokerConfig(
        node_id=NODE,
        data_dir=tmp_path,
        listen="127.0.0.1:9092",
        auto_create_topics=True,
        num_partitions=2,
        message_max_bytes=10_000,
    )
    quorum = LocalQuorum(NODE)
    await quorum.submit(RegisterBroker(NODE, "127.0.0.1", 9092, None))
    logs = LogManager(tmp_path)
    replicas = ReplicaManager(NODE, config, logs, quorum)  # type: ignore[arg-type]
    quorum.on_change = replicas.on_metadata_change
    await replicas.start()
    controller = Controller(quorum, config)  # type: ignore[arg-type]
    groups = GroupCoordinator.for_broker(config, quorum, replicas)  # type: ignore[arg-type]
    context = ApiContext(config, quorum, logs, replicas, groups, controller)  # type: ignore[arg-type]
    yield Broker(context, Dispatcher(context), logs, quorum, Dispatcher(context, internal=True))
    await replicas.stop()
    logs.close()


# --- ApiVersions and Metadata ----------------------------------------------------------


@pytest.mark.parametrize("version", range(4))
async def test_api_versions(broker: Broker, version: int) -> None:
    response = await broker.call(API_VERSIONS, version, {})
    keys = {key.api_key: (key.min_version, key.max_version) for key in response.api_keys}
    assert keys[METADATA] == (1, 12) and keys[FETCH] == (4, 12)


@pytest.mark.parametrize("version", [1, 4, 9, 12])
async def test_metadata_auto_creates_and_describes_this_broker(
    broker: Broker, version: int
) -> None:
    response = await broker.call(METADATA, version, {"topics": [{"name": "auto"}]})
    assert [(b.node_id, b.host, b.port) for b in response.brokers] == [(NODE, "127.0.0.1", 9092)]
    assert response.controller_id == NODE
    topic = response.topics[0]
    assert (topic.error_code, topic.name) == (ErrorCode.none, "auto")
    assert [p.partition_index for p in topic.partitions] == [0, 1]
    assert all(p.leader_id == NODE and p.isr_nodes == (NODE,) for p in topic.partitions)
    assert broker.logs.get("auto", 1) is not None
    if version >= 10:
        again = await broker.call(METADATA, version, {"topics": None})
        assert topic.topic_id.int != 0 and again.topics[0].topic_id == topic.topic_id


async def test_metadata_refuses_what_it_cannot_create(broker: Broker) -> None:
    response = await broker.call(
        METADATA,
        9,
        {
            "topics": [{"name": "no-auto"}, {"name": "bad name"}],
            "allow_auto_topic_creation": False,
        },
    )
    assert [t.error_code for t in response.topics] == [
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.invalid_topic_exception,
    ]
    assert broker.context.topics.get("no-auto") is None


async def test_metadata_by_topic_id(broker: Broker) -> None:
    created = await broker.create("by-id")
    response = await broker.call(
        METADATA,
        12,
        {
            "topics": [
                {"topic_id": created.topic_id, "name": None},
                {"topic_id": uuid.uuid4(), "name": None},
            ]
        },
    )
    assert response.topics[0].name == "by-id"
    assert response.topics[1].error_code == ErrorCode.unknown_topic_id


@pytest.mark.parametrize("version", [10, 11])
async def test_metadata_before_v12_refuses_a_topic_without_a_name(
    broker: Broker, version: int
) -> None:
    """These versions carry a topic id but cannot answer with a null name (found by the
    fuzzer: the response failed to encode)."""
    await broker.create("by-id")
    response = await broker.call(
        METADATA, version, {"topics": [{"topic_id": uuid.uuid4(), "name": None}]}
    )
    assert [(t.error_code, t.name) for t in response.topics] == [(ErrorCode.invalid_request, "")]


# --- Produce and Fetch -----------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 5, 9])
async def test_produce_then_fetch_returns_the_batches(broker: Broker, version: int) -> None:
    await broker.create("t")
    first = batch([b"a", b"b", b"c"])
    second = batch([b"d"])
    answers = [await broker.produce("t", 0, data, version=version) for data in (first, second)]
    assert [(a.error_code, a.base_offset) for a in answers] == [(0, 0), (0, 3)]
    if version >= 5:
        assert answers[1].log_start_offset == 0
    assert answers[0].log_append_time is None
    for fetch_version in (4, 7, 11, 12):
        [partition] = await broker.fetch([("t", 0, 0)], version=fetch_version)
        assert partition.high_watermark == 4
        assert partition.last_stable_offset == 4
        records = partition.records
        assert len(records) == len(first) + len(second)
        assert struct.unpack_from(">q", records, len(first))[0] == 3  # offset assigned
        assert payload(records[: len(first)]) == payload(first)
        assert parse_header(records).partition_leader_epoch == 0  # stamped by the leader


async def test_log_append_time_is_reported(broker: Broker) -> None:
    await broker.create(
        "stamped", configs=[{"name": "message.timestamp.type", "value": "LogAppendTime"}]
    )
    before = time.time()
    answer = await broker.produce("stamped", 0, batch([b"x"]))
    assert answer.error_code == ErrorCode.none
    assert before - 1 <= answer.log_append_time.timestamp() <= time.time() + 1


@pytest.mark.parametrize(
    ("records", "error"),
    [
        (batch([b"x"])[:-1], ErrorCode.corrupt_message),
        (batch([b"x"])[:-1] + b"y", ErrorCode.corrupt_message),
        (batch([b"x"], magic=1), ErrorCode.unsupported_for_message_format),
        (batch([b"x" * 20_000]), ErrorCode.message_too_large),
        (batch([b"x"], attributes=0x20), ErrorCode.invalid_record),
    ],
)
async def test_bad_batches_are_refused_and_nothing_is_stored(
    broker: Broker, records: bytes, error: ErrorCode
) -> None:
    await broker.create("t")
    answer = await broker.produce("t", 0, records)
    assert answer.error_code == error
    assert answer.error_message
    assert answer.base_offset == -1
    log = broker.logs.get("t", 0)
    assert log is not None and log.log_end_offset == 0


async def test_produce_errors(broker: Broker) -> None:
    await broker.create("t")
    data = batch([b"x"])
    assert (await broker.produce("missing", 0, data)).error_code == (
        ErrorCode.unknown_topic_or_partition
    )
    assert (await broker.produce("t", 1, data)).error_code == ErrorCode.unknown_topic_or_partition
    assert (await broker.produce("t", 0, data, acks=2)).error_code == (
        ErrorCode.invalid_required_acks
    )
    assert await broker.produce("t", 0, data, acks=0) is None
    await broker.create("strict", configs=[{"name": "min.insync.replicas", "value": "2"}])
    assert (await broker.produce("strict", 0, data, acks=-1)).error_code == (
        ErrorCode.not_enough_replicas
    )
    assert (await broker.produce("strict", 0, data, acks=1)).error_code == ErrorCode.none
    log = broker.logs.get("t", 0)
    assert log is not None and log.log_end_offset == 1  # only the acks=0 batch


async def test_fetch_waits_for_an_append(broker: Broker) -> None:
    await broker.create("t")
    started = time.monotonic()
    waiting = asyncio.ensure_future(broker.fetch([("t", 0, 0)], max_wait_ms=5000, min_bytes=1))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await broker.produce("t", 0, batch([b"late"]))
    [partition] = await asyncio.wait_for(waiting, 2)
    assert partition.records and time.monotonic() - started < 2


async def test_fetch_gives_up_after_max_wait(broker: Broker) -> None:
    await broker.create("t")
    started = time.monotonic()
    [partition] = await broker.fetch([("t", 0, 0)], max_wait_ms=200, min_bytes=1)
    assert partition.error_code == ErrorCode.none and not partition.records
    assert 0.15 < time.monotonic() - started < 2


async def test_fetch_errors_answer_at_once(broker: Broker) -> None:
    await broker.create("t")
    await broker.produce("t", 0, batch([b"x"]))
    started = time.monotonic()
    partitions = await broker.fetch(
        [("t", 0, 5), ("t", 7, 0), ("missing", 0, 0)], max_wait_ms=5000, min_bytes=1
    )
    assert [p.error_code for p in partitions] == [
        ErrorCode.offset_out_of_range,
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.unknown_topic_or_partition,
    ]
    assert partitions[0].high_watermark == 1 and partitions[0].log_start_offset == 0
    assert time.monotonic() - started < 1


async def test_fetch_byte_limits_follow_kip_74(broker: Broker) -> None:
    await broker.create("t", partitions=2)
    big = batch([b"x" * 3000])
    for partition in (0, 1):
        await broker.produce("t", partition, big)
        await broker.produce("t", partition, big)
    # The first partition with data returns its first batch even above the limits...
    first, second = await broker.fetch(
        [("t", 0, 0), ("t", 1, 0)], max_bytes=100, partition_max_bytes=100
    )
    assert len(first.records) == len(big)
    assert second.records in (b"", None) and second.high_watermark == 2
    # ...and the response limit is shared between partitions.
    first, second = await broker.fetch([("t", 0, 0), ("t", 1, 0)], max_bytes=len(big) * 3)
    assert len(first.records) == 2 * len(big) and len(second.records) == len(big)


# --- ListOffsets -----------------------------------------------------------------------


async def test_list_offsets(broker: Broker) -> None:
    await broker.create("t")
    await broker.produce("t", 0, batch([b"a", b"b"], [1000, 3000]))
    await broker.produce("t", 0, batch([b"c", b"d"], [5000, 2000]))

    async def offsets(version: int, timestamp: int) -> tuple[int, int]:
        response = await broker.call(
            LIST_OFFSETS,
            version,
            {
                "replica_id": -1,
                "topics": [
                    {
                        "name": "t",
                        "partitions": [
                            {
                                "partition_index": 0,
                                "timestamp": timestamp,
                                "current_leader_epoch": -1,
                            }
                        ],
                    }
                ],
            },
        )
        answer = response.topics[0].partitions[0]
        assert answer.error_code == ErrorCode.none
        return answer.offset, answer.timestamp

    for version in (1, 2, 7):
        assert (await offsets(version, -2))[0] == 0
        assert (await offsets(version, -1))[0] == 4
        assert await offsets(version, 2500) == (1, 3000)
        assert await offsets(version, 9999) == (-1, -1)
    assert await offsets(7, -3) == (2, 5000)


async def test_list_offsets_errors(broker: Broker) -> None:
    await broker.create("t")
    response = await broker.call(
        LIST_OFFSETS,
        7,
        {
            "replica_id": -1,
            "topics": [
                {
                    "name": "t",
                    "partitions": [
                        {"partition_index": 3, "timestamp": -1},
                        {"partition_index": 0, "timestamp": -1, "current_leader_epoch": 9},
                    ],
                }
            ],
        },
    )
    assert [p.error_code for p in response.topics[0].partitions] == [
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.unknown_leader_epoch,
    ]


# --- topics ----------------------------------------------------------------------------


async def test_create_topics_reports_the_result(broker: Broker) -> None:
    topic = await broker.create("new", 3, configs=[{"name": "retention.ms", "value": "100"}])
    assert topic.error_code == ErrorCode.none and topic.topic_id.int != 0
    assert (topic.num_partitions, topic.replication_factor) == (3, 1)
    configs = {c.name: (c.value, c.config_source) for c in topic.configs}
    assert configs["retention.ms"] == ("100", 1)
    assert configs["segment.bytes"][1] == 5
    log = broker.logs.get("new", 2)
    assert log is not None and log.config.retention_ms == 100


async def test_create_topics_errors(broker: Broker) -> None:
    await broker.create("exists")

    async def error(**topic: Any) -> tuple[ErrorCode, str]:
        body = {
            "name": "x",
            "num_partitions": 1,
            "replication_factor": 1,
            "assignments": [],
            "configs": [],
            **topic,
        }
        for version in (2, 7):
            response = await broker.call(CREATE_TOPICS, version, {"topics": [body]})
            result = response.topics[0]
        return result.error_code, result.error_message

    assert (await error(name="exists"))[0] == ErrorCode.topic_already_exists
    assert (await error(num_partitions=0))[0] == ErrorCode.invalid_partitions
    code, message = await error(replication_factor=3)
    assert code == ErrorCode.invalid_replication_factor and "only 1 broker(s)" in message
    assert (await error(name="bad/name"))[0] == ErrorCode.invalid_topic_exception
    code, message = await error(configs=[{"name": "cleanup.policy", "value": "shrink"}])
    assert code == ErrorCode.invalid_config and "must be one of: compact, delete" in message
    assert (
        await error(
            num_partitions=-1,
            replication_factor=-1,
            assignments=[{"partition_index": 0, "broker_ids": [NODE + 1]}],
        )
    )[0] == (ErrorCode.invalid_replica_assignment)
    assert broker.context.topics.get("x") is None


async def test_create_topics_with_assignments_and_defaults(broker: Broker) -> None:
    response = await broker.call(
        CREATE_TOPICS,
        7,
        {
            "topics": [
                {
                    "name": "assigned",
                    "num_partitions": -1,
                    "replication_factor": -1,
                    "configs": [],
                    "assignments": [{"partition_index": i, "broker_ids": [NODE]} for i in range(3)],
                },
                {
                    "name": "defaults",
                    "num_partitions": -1,
                    "replication_factor": -1,
                    "configs": [],
                    "assignments": [],
                },
            ]
        },
    )
    assert [(t.error_code, t.num_partitions) for t in response.topics] == [(0, 3), (0, 2)]


async def test_create_topics_validate_only(broker: Broker) -> None:
    response = await broker.call(
        CREATE_TOPICS,
        7,
        {
            "validate_only": True,
            "topics": [
                {
                    "name": "dry",
                    "num_partitions": 4,
                    "replication_factor": 1,
                    "assignments": [],
                    "configs": [],
                }
            ],
        },
    )
    assert response.topics[0].error_code == ErrorCode.none
    assert response.topics[0].num_partitions == 4
    assert broker.context.topics.get("dry") is None and broker.logs.get("dry", 0) is None


async def test_delete_topics_by_name_and_id(broker: Broker) -> None:
    await broker.create("one")
    two = await broker.create("two")
    response = await broker.call(
        DELETE_TOPICS, 1, {"topic_names": ["one", "missing"], "timeout": 1000}
    )
    assert [r.error_code for r in response.responses] == [
        ErrorCode.none,
        ErrorCode.unknown_topic_or_partition,
    ]
    response = await broker.call(
        DELETE_TOPICS,
        6,
        {
            "timeout": 1000,
            "topics": [
                {"name": None, "topic_id": two.topic_id},
                {"name": None, "topic_id": uuid.uuid4()},
            ],
        },
    )
    assert [(r.name, r.error_code) for r in response.responses] == [
        ("two", ErrorCode.none),
        (None, ErrorCode.unknown_topic_id),
    ]
    assert broker.context.topics.list_topics() == []
    assert broker.logs.get("one", 0) is None and broker.logs.get("two", 0) is None


async def test_create_partitions(broker: Broker) -> None:
    await broker.create("t", 2)

    async def grow(
        count: int, assignments: list[list[int]] | None = None, validate_only: bool = False
    ) -> Any:
        response = await broker.call(
            CREATE_PARTITIONS,
            3,
            {
                "timeout": 1000,
                "validate_only": validate_only,
                "topics": [
                    {
                        "name": "t",
                        "count": count,
                        "assignments": None
                        if assignments is None
                        else [{"broker_ids": ids} for ids in assignments],
                    }
                ],
            },
        )
        return response.results[0]

    assert (await grow(4, validate_only=True)).error_code == ErrorCode.none
    assert broker.logs.get("t", 2) is None
    shrink = await grow(1)
    assert shrink.error_code == ErrorCode.invalid_partitions and "higher than" in (
        shrink.error_message
    )
    assert (await grow(4, [[NODE]])).error_code == ErrorCode.invalid_replica_assignment
    assert (await grow(4, [[NODE], [NODE]])).error_code == ErrorCode.none
    assert broker.logs.get("t", 3) is not None
    assert (await grow(4)).error_code == ErrorCode.invalid_partitions


# --- configs ---------------------------------------------------------------------------


async def test_describe_configs(broker: Broker) -> None:
    await broker.create("t", configs=[{"name": "retention.ms", "value": "1000"}])
    for version in (1, 4):
        response = await broker.call(
            DESCRIBE_CONFIGS,
            version,
            {
                "include_synonyms": True,
                "include_documentation": True,
                "resources": [
                    {"resource_type": 2, "resource_name": "t", "configuration_keys": None},
                    {
                        "resource_type": 2,
                        "resource_name": "t",
                        "configuration_keys": ["segment.ms"],
                    },
                    {"resource_type": 4, "resource_name": str(NODE), "configuration_keys": None},
                    {"resource_type": 2, "resource_name": "missing", "configuration_keys": None},
                    {"resource_type": 4, "resource_name": "99", "configuration_keys": None},
                ],
            },
        )
        everything, one, node, missing, other_node = response.results
        retention = next(c for c in everything.configs if c.name == "retention.ms")
        assert (retention.value, retention.config_source, retention.read_only) == ("1000", 1, False)
        assert [s.name for s in retention.synonyms] == ["retention.ms", "log.retention.ms"]
        assert [c.name for c in one.configs] == ["segment.ms"]
        broker_configs = {c.name: c for c in node.configs}
        assert broker_configs["node.id"].value == str(NODE)
        assert broker_configs["message.max.bytes"].config_source == 4
        assert all(c.read_only for c in node.configs)
        assert missing.error_code == ErrorCode.unknown_topic_or_partition
        assert other_node.error_code == ErrorCode.invalid_request
        if version >= 3:
            assert retention.config_type == 5 and retention.documentation


async def test_incremental_alter_configs(broker: Broker) -> None:
    await broker.create("t", configs=[{"name": "retention.ms", "value": "1000"}])

    async def alter(
        *configs: tuple[str, int, str | None], validate_only: bool = False, resource_type: int = 2
    ) -> tuple[ErrorCode, str | None]:
        response = await broker.call(
            INCREMENTAL_ALTER_CONFIGS,
            1,
            {
                "validate_only": validate_only,
                "resources": [
                    {
                        "resource_type": resource_type,
                        "resource_name": "t",
                        "configs": [
                            {"name": n, "config_operation": op, "value": v} for n, op, v in configs
                        ],
                    }
                ],
            },
        )
        result = response.responses[0]
        return result.error_code, result.error_message

    assert (await alter(("retention.bytes", 0, "5000"), validate_only=True))[0] == 0
    topic = broker.context.topics.get("t")
    assert topic is not None and "retention.bytes" not in topic.configs
    assert await alter(("retention.bytes", 0, "5000"), ("retention.ms", 1, None)) == (0, None)
    topic = broker.context.topics.get("t")
    assert topic is not None and dict(topic.configs) == {"retention.bytes": "5000"}
    log = broker.logs.get("t", 0)
    assert log is not None and log.config.retention_bytes == 5000
    assert log.config.retention_ms == broker.context.config.log_retention_ms
    assert (await alter(("cleanup.policy", 2, "delete")))[0] == ErrorCode.none
    assert await alter(("cleanup.policy", 2, "delete,compact")) == (ErrorCode.none, None)
    assert log.config.cleanup_policy == "compact,delete"
    code, message = await alter(("cleanup.policy", 2, "compact,shrink"))
    assert code == ErrorCode.invalid_config and "compact, delete" in (message or "")
    code, message = await alter(("retention.ms", 2, "5"))
    assert code == ErrorCode.invalid_config and "append is not allowed" in (message or "")
    assert (await alter(("cleanup.policy", 3, "delete")))[0] == ErrorCode.none
    assert log.config.cleanup_policy == "compact"
    assert (await alter(("cleanup.policy", 3, "compact")))[0] == ErrorCode.invalid_config
    assert (await alter(("nonsense", 0, "1")))[0] == ErrorCode.invalid_config
    assert (await alter(("segment.bytes", 0, "1")))[0] == ErrorCode.invalid_config
    assert (await alter(("retention.ms", 9, "1")))[0] == ErrorCode.invalid_request
    assert (await alter(("log.retention.ms", 0, "1"), resource_type=4))[0] == (
        ErrorCode.invalid_request
    )
    topic = broker.context.topics.get("t")
    assert topic is not None and dict(topic.configs) == {
        "retention.bytes": "5000",
        "cleanup.policy": "compact",
    }


# --- InitProducerId --------------------------------------------------------------------


async def test_init_producer_id(broker: Broker) -> None:
    ids = []
    for version in range(5):
        response = await broker.call(
            INIT_PRODUCER_ID, version, {"transactional_id": None, "transaction_timeout": 60000}
        )
        assert response.error_code == ErrorCode.none and response.producer_epoch == 0
        ids.append(response.producer_id)
    assert len(set(ids)) == 5
    response = await broker.call(
        INIT_PRODUCER_ID, 4, {"transactional_id": "tx", "transaction_timeout": 60000}
    )
    assert response.error_code == ErrorCode.transactional_id_authorization_failed


# --- the cluster: DescribeCluster, BrokerHeartbeat, ElectLeaders, reassignments --------


async def register(broker: Broker, *nodes: int) -> None:
    for node in nodes:
        await broker.quorum.submit(RegisterBroker(node, "127.0.0.1", 9092 + node, "r1"))


@pytest.mark.parametrize("version", [0, 1])
async def test_describe_cluster(broker: Broker, version: int) -> None:
    await register(broker, 7)
    response = await broker.call(DESCRIBE_CLUSTER, version, {"endpoint_type": 1})
    assert response.error_code == ErrorCode.none
    assert (response.cluster_id, response.controller_id) == ("brook", NODE)
    assert [(b.broker_id, b.port, b.rack) for b in response.brokers] == [
        (NODE, 9092, None),
        (7, 9099, "r1"),
    ]
    if version == 1:
        other = await broker.call(DESCRIBE_CLUSTER, 1, {"endpoint_type": 2})
        assert other.error_code == ErrorCode.unsupported_endpoint_type


@pytest.mark.parametrize("version", [1, 4])
async def test_describe_log_dirs_reports_each_replica_size(broker: Broker, version: int) -> None:
    await broker.create("t", partitions=2)
    records = batch([b"x" * 100, b"y" * 100])
    await broker.produce("t", 0, records)
    every = await broker.call(DESCRIBE_LOG_DIRS, version, {"topics": None})
    [result] = every.results
    assert result.error_code == ErrorCode.none
    sizes = {
        (topic.name, partition.partition_index): partition.partition_size
        for topic in result.topics
        for partition in topic.partitions
    }
    assert sizes[("t", 0)] == len(records)
    assert sizes[("t", 1)] == 0
    asked = await broker.call(
        DESCRIBE_LOG_DIRS, version, {"topics": [{"topic": "t", "partitions": [1]}]}
    )
    assert [
        (t.name, [p.partition_index for p in t.partitions]) for t in asked.results[0].topics
    ] == [("t", [1])]
    if version == 4:
        assert 0 < result.usable_bytes <= result.total_bytes


@pytest.mark.parametrize("version", [0, 1])
async def test_broker_heartbeat(broker: Broker, version: int) -> None:
    epoch = broker.quorum.state.brokers[NODE].epoch
    body = {"broker_id": NODE, "broker_epoch": epoch, "current_metadata_offset": 0}
    answer = await broker.call(BROKER_HEARTBEAT, version, body, internal=True)
    assert (answer.error_code, answer.is_fenced, answer.should_shut_down) == (0, False, False)
    stale = await broker.call(
        BROKER_HEARTBEAT, version, {**body, "broker_epoch": epoch + 1}, internal=True
    )
    assert stale.error_code == ErrorCode.stale_broker_epoch
    broker.quorum.is_active_controller = False
    elsewhere = await broker.call(BROKER_HEARTBEAT, version, body, internal=True)
    assert elsewhere.error_code == ErrorCode.not_controller


async def test_broker_only_requests_are_refused_on_the_client_listener(broker: Broker) -> None:
    epoch = broker.quorum.state.brokers[NODE].epoch
    heartbeat = {"broker_id": NODE, "broker_epoch": epoch, "want_shut_down": True}
    refused = await broker.call(BROKER_HEARTBEAT, 1, heartbeat)
    assert refused.error_code == ErrorCode.cluster_authorization_failed
    assert not broker.quorum.state.brokers[NODE].shutting_down
    for api_key in (80, 81):  # AddRaftVoter, RemoveRaftVoter
        voter = {"cluster_id": "brook", "voter_id": 5, "voter_directory_id": uuid.uuid4()}
        answer = await broker.call(api_key, 0, {**voter, "timeout": 1000, "listeners": []})
        assert answer.error_code == ErrorCode.cluster_authorization_failed
    await broker.call(METADATA, 12, {"topics": [{"name": "t"}]})
    partition = {"partition": 0, "fetch_offset": 10**6, "partition_max_bytes": 1000}
    fetch = {
        "replica_id": 1,
        "max_bytes": 1000,
        "topics": [{"topic": "t", "partitions": [partition]}],
    }
    for version in (4, 12):
        answer = await broker.call(FETCH, version, fetch)
        assert [p.error_code for t in answer.responses for p in t.partitions] == [
            ErrorCode.cluster_authorization_failed
        ]
    listed = await broker.call(
        LIST_OFFSETS,
        7,
        {
            "replica_id": 1,
            "topics": [{"name": "t", "partitions": [{"partition_index": 0, "timestamp": -1}]}],
        },
    )
    assert listed.topics[0].partitions[0].error_code == ErrorCode.cluster_authorization_failed
    # A consumer's fetch is served as before.
    answer = await broker.call(FETCH, 12, {**fetch, "replica_id": -1})
    assert answer.responses[0].partitions[0].error_code == ErrorCode.offset_out_of_range


async def test_api_versions_of_each_listener(broker: Broker) -> None:
    def listed(response: Any) -> set[int]:
        return {key.api_key for key in response.api_keys}

    client = listed(await broker.call(API_VERSIONS, 3, {}))
    internal = listed(await broker.call(API_VERSIONS, 3, {}, internal=True))
    assert BROKER_HEARTBEAT not in client and {80, 81} <= client
    assert internal == client | {BROKER_HEARTBEAT}


async def test_elect_leaders(broker: Broker) -> None:
    await register(broker, 7)
    await broker.call(
        CREATE_TOPICS,
        7,
        {
            "topics": [
                {
                    "name": "e",
                    "num_partitions": -1,
                    "replication_factor": -1,
                    "configs": [],
                    "assignments": [{"partition_index": 0, "broker_ids": [7, NODE]}],
                }
            ]
        },
    )
    state = broker.quorum.state
    epoch = state.brokers[7].epoch
    await broker.quorum.submit(FenceBroker(7, epoch))
    await broker.quorum.submit(UnfenceBroker(7, epoch))
    partition = state.topics["e"].partitions[0]
    assert partition.leader == NODE
    await broker.quorum.submit(
        AlterPartition("e", 0, NODE, partition.leader_epoch, partition.partition_epoch, (NODE, 7)),
    )
    for version in (0, 2):
        response = await broker.call(
            ELECT_LEADERS,
            version,
            {
                "election_type": 0,
                "topic_partitions": [{"topic": "e", "partitions": [0, 4]}],
                "timeout": 1000,
            },
        )
        [result] = response.replica_election_results
        assert [(p.partition_id, p.error_code) for p in result.partition_result] == [
            (0, ErrorCode.none if version == 0 else ErrorCode.election_not_needed),
            (4, ErrorCode.unknown_topic_or_partition),
        ]
    assert state.topics["e"].partitions[0].leader == 7
    unclean = await broker.call(
        ELECT_LEADERS, 1, {"election_type": 1, "topic_partitions": None, "timeout": 1000}
    )
    assert unclean.error_code == ErrorCode.none and unclean.replica_election_results == ()


async def test_reassignments(broker: Broker) -> None:
    await register(broker, 7)
    await broker.create("r", 2)
    response = await broker.call(
        ALTER_PARTITION_REASSIGNMENTS,
        0,
        {
            "timeout": 1000,
            "topics": [
                {
                    "name": "r",
                    "partitions": [
                        {"partition_index": 0, "replicas": [7]},
                        {"partition_index": 1, "replicas": [NODE, NODE]},
                        {"partition_index": 5, "replicas": [7]},
                    ],
                }
            ],
        },
    )
    [topic] = response.responses
    assert [(p.partition_index, p.error_code) for p in topic.partitions] == [
        (0, ErrorCode.none),
        (1, ErrorCode.invalid_replica_assignment),
        (5, ErrorCode.unknown_topic_or_partition),
    ]
    listed = await broker.call(LIST_PARTITION_REASSIGNMENTS, 0, {"timeout": 1000, "topics": None})
    [ongoing] = listed.topics
    assert ongoing.name == "r"
    assert [
        (p.partition_index, p.replicas, p.adding_replicas, p.removing_replicas)
        for p in ongoing.partitions
    ] == [(0, (7, NODE), (7,), (NODE,))]
    filtered = await broker.call(
        LIST_PARTITION_REASSIGNMENTS,
        0,
        {"timeout": 1000, "topics": [{"name": "r", "partition_indexes": [1]}]},
    )
    assert filtered.topics == ()
    cancel = await broker.call(
        ALTER_PARTITION_REASSIGNMENTS,
        0,
        {
            "timeout": 1000,
            "topics": [{"name": "r", "partitions": [{"partition_index": 0, "replicas": None}]}],
        },
    )
    assert cancel.responses[0].partitions[0].error_code == ErrorCode.none
    assert broker.quorum.state.topics["r"].partitions[0].replicas == (NODE,)


# --- partition limits --------------------------------------------------------------------


async def test_partition_limits_refuse_before_anything_is_proposed(broker: Broker) -> None:
    """Over-limit requests are answered by the receiving broker: the quorum sees nothing,
    and validate_only gives the same answer as the real request."""
    await broker.create("t", 2)
    proposed = broker.quorum.applied_offset
    topics = [
        {"name": name, "num_partitions": 600, "replication_factor": 1, "assignments": []}
        for name in ("a", "b")
    ]
    for validate_only in (True, False):
        response = await broker.call(
            CREATE_TOPICS,
            7,
            {"validate_only": validate_only, "topics": [{**t, "configs": []} for t in topics]},
        )
        assert [(t.error_code, t.error_message) for t in response.topics] == [
            (
                ErrorCode.invalid_partitions,
                "Excessively large number of partitions per request: 1200 requested, but a "
                "request may add at most 1000 (max.partitions.per.request).",
            )
        ] * 2
        response = await broker.call(
            CREATE_PARTITIONS,
            3,
            {
                "timeout": 1000,
                "validate_only": validate_only,
                "topics": [{"name": "t", "count": 2**31 - 1, "assignments": None}],
            },
        )
        result = response.results[0]
        assert result.error_code == ErrorCode.invalid_partitions
        assert "2147483645 requested" in result.error_message
    assert broker.quorum.applied_offset == proposed
    assert broker.context.topics.get("a") is None
    assert len(broker.context.topics.get("t").partitions) == 2


async def test_auto_created_topics_are_held_to_the_limits(broker: Broker) -> None:
    broker.context.partition_limits = PartitionLimits(per_topic=1)
    response = await broker.call(METADATA, 12, {"topics": [{"name": "auto"}]})
    assert response.topics[0].error_code == ErrorCode.invalid_partitions
    assert broker.context.topics.get("auto") is None
