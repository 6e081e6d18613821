"""The operator's admin client against a scripted cluster (no sockets): what it asks,
what it makes of the answers, and the errors it raises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from brook_client.admin import KafkaAdmin
from brook_client.cluster_admin import ConfigValue, PartitionDescription, Reassignment
from brook_client.session import KafkaAdminError
from kio.schema.errors import ErrorCode

from .test_groups_cli import FakeCluster

VERSIONS = {
    3: (1, 12),
    18: (0, 3),
    19: (2, 7),
    20: (1, 6),
    32: (1, 4),
    37: (0, 3),
    44: (0, 1),
    45: (0, 0),
    46: (0, 0),
    60: (0, 1),
}
TOPIC_ID = "7b3f1a52-2c8e-4c55-9a3e-3b0f4d2f9e11"


def admin(cluster: FakeCluster, **options: Any) -> KafkaAdmin:
    return KafkaAdmin("b0:9092,b1:9092", connect=cluster.connect, **options)


def scripted(*answers: Mapping[str, Any]) -> Any:
    """Answers in turn (the last from then on), keeping every request body."""
    bodies: list[Mapping[str, Any]] = []
    remaining = list(answers)

    def answer(node: int, version: int, body: Mapping[str, Any]) -> Any:
        bodies.append(body)
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    answer.bodies = bodies  # type: ignore[attr-defined]
    return answer


def created(code: int = 0, message: str | None = None) -> dict[str, Any]:
    return {
        "topics": [
            {"name": "orders", "topic_id": TOPIC_ID, "error_code": code, "error_message": message}
        ]
    }


async def test_create_topic_is_sent_again_while_the_controller_moves() -> None:
    create = scripted(created(ErrorCode.not_controller, "moving"), created())
    cluster = FakeCluster(VERSIONS, {19: create})
    async with admin(cluster) as kafka:
        topic_id = await kafka.create_topic("orders", 6, 3, {"retention.ms": "60000"})
    assert topic_id == TOPIC_ID
    assert len(create.bodies) == 2
    sent = create.bodies[0]["topics"][0]
    assert (sent["num_partitions"], sent["replication_factor"], sent["configs"]) == (
        6,
        3,
        [{"name": "retention.ms", "value": "60000"}],
    )


async def test_refusals_carry_the_kafka_error_code_and_message() -> None:
    refusal = created(ErrorCode.invalid_replication_factor, "Replication factor: 5 larger than 3")
    cluster = FakeCluster(VERSIONS, {19: scripted(refusal)})
    async with admin(cluster) as kafka:
        with pytest.raises(KafkaAdminError) as raised:
            await kafka.create_topic("orders", 1, 5)
    error = raised.value
    assert error.code == ErrorCode.invalid_replication_factor
    assert str(error) == (
        "CreateTopics of topic 'orders': INVALID_REPLICATION_FACTOR: "
        "Replication factor: 5 larger than 3"
    )
    assert len(cluster.asked(19)) == 1  # not a reason to ask again


async def test_the_controller_that_never_settles_fails_after_the_retry_timeout() -> None:
    create = scripted(created(ErrorCode.not_controller, "no quorum"))
    async with admin(FakeCluster(VERSIONS, {19: create}), retry_timeout=0.3) as kafka:
        with pytest.raises(KafkaAdminError, match="NOT_CONTROLLER: no quorum"):
            await kafka.create_topic("orders", 1, 1)
    assert 2 <= len(create.bodies) < 10


async def test_describe_topics() -> None:
    metadata = {
        "brokers": [{"node_id": n, "host": f"b{n}", "port": 9092} for n in range(3)],
        "topics": [
            {
                "name": "orders",
                "topic_id": TOPIC_ID,
                "error_code": 0,
                "partitions": [
                    {
                        "partition_index": 1,
                        "leader_id": -1,
                        "replica_nodes": [1, 2],
                        "isr_nodes": [],
                        "offline_replicas": [1, 2],
                        "error_code": ErrorCode.leader_not_available,
                    },
                    {
                        "partition_index": 0,
                        "leader_id": 2,
                        "replica_nodes": [2, 0],
                        "isr_nodes": [2],
                        "error_code": 0,
                    },
                ],
            },
            {"name": "gone", "error_code": ErrorCode.unknown_topic_or_partition, "partitions": []},
        ],
    }
    async with admin(FakeCluster(VERSIONS, {3: scripted(metadata)})) as kafka:
        found = await kafka.describe_topics(["orders", "gone"])
    assert found["gone"] is None
    orders = found["orders"]
    assert orders is not None and orders.topic_id == TOPIC_ID
    assert orders.partitions == (
        PartitionDescription(0, 2, (2, 0), (2,)),
        PartitionDescription(1, None, (1, 2), (), (1, 2)),
    )
    assert [p.under_replicated for p in orders.partitions] == [True, True]


async def test_topic_configs_tell_overrides_from_defaults() -> None:
    configs = {
        "results": [
            {
                "error_code": 0,
                "resource_type": 2,
                "resource_name": "orders",
                "configs": [
                    {"name": "retention.ms", "value": "60000", "config_source": 1},
                    {"name": "segment.bytes", "value": "1073741824", "config_source": 5},
                ],
            }
        ]
    }
    async with admin(FakeCluster(VERSIONS, {32: scripted(configs)})) as kafka:
        found = await kafka.describe_topic_configs("orders")
    assert found == {
        "retention.ms": ConfigValue("60000", override=True),
        "segment.bytes": ConfigValue("1073741824", override=False),
    }


async def test_configs_are_set_and_deleted_in_one_request() -> None:
    alter = scripted(
        {"responses": [{"error_code": 0, "resource_type": 2, "resource_name": "orders"}]}
    )
    async with admin(FakeCluster(VERSIONS, {44: alter})) as kafka:
        await kafka.alter_topic_configs("orders", {"retention.ms": "1"}, ["segment.ms"])
    assert alter.bodies[0]["resources"][0]["configs"] == [
        {"name": "retention.ms", "config_operation": 0, "value": "1"},
        {"name": "segment.ms", "config_operation": 1, "value": None},
    ]


async def test_reassignments() -> None:
    failed = {
        "error_code": 0,
        "responses": [
            {
                "name": "orders",
                "partitions": [
                    {"partition_index": 0, "error_code": 0},
                    {
                        "partition_index": 1,
                        "error_code": ErrorCode.invalid_replica_assignment,
                        "error_message": "Broker 7 is not registered",
                    },
                ],
            }
        ],
    }
    listed = {
        "error_code": 0,
        "topics": [
            {
                "name": name,
                "partitions": [
                    {
                        "partition_index": 0,
                        "replicas": [0, 1, 2],
                        "adding_replicas": [1, 2],
                        "removing_replicas": [],
                    }
                ],
            }
            for name in ("orders", "audit")
        ],
    }
    cluster = FakeCluster(VERSIONS, {45: scripted(failed), 46: scripted(listed)})
    async with admin(cluster) as kafka:
        with pytest.raises(KafkaAdminError, match=r"orders-1: INVALID_REPLICA_ASSIGNMENT"):
            await kafka.alter_partition_reassignments("orders", {0: [0, 1, 2], 1: [7]})
        ongoing = await kafka.list_partition_reassignments(["orders"])
    assert ongoing == {("orders", 0): Reassignment("orders", 0, (0, 1, 2), (1, 2), ())}


async def test_describe_cluster() -> None:
    described = {
        "error_code": 0,
        "cluster_id": "ns.kafka",
        "controller_id": 1,
        "brokers": [
            {"broker_id": n, "host": f"b{n}", "port": 9092, "rack": None} for n in (2, 0, 1)
        ],
    }
    async with admin(FakeCluster(VERSIONS, {60: scripted(described)})) as kafka:
        cluster = await kafka.describe_cluster()
    assert cluster.controller == 1 and cluster.cluster_id == "ns.kafka"
    assert [b.node_id for b in cluster.brokers] == [0, 1, 2]
