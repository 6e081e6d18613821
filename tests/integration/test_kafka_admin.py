"""The operator's admin client and Topic plans against a real three-broker cluster:
every admin request it sends, and plans applied end to end, refused ones changing
nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import confluent_kafka
from brook_client.admin import KafkaAdmin
from brook_client.cluster_admin import TopicDescription
from brook_operator.cluster_view import ClusterReader
from brook_operator.topic import observe_and_plan, run_action
from brook_operator.topic_plan import AlterConfigs, Reassign, TopicPlan, TopicSpec, replica_targets

from .conftest import StartCluster

SETTLE_TIMEOUT_S = 60.0


def overrides(configs: dict[str, Any]) -> dict[str, str | None]:
    return {name: config.value for name, config in configs.items() if config.override}


async def wait_for(admin: KafkaAdmin, topic: str, check: Any, what: str) -> TopicDescription:
    """The topic once ``check`` holds for it (bounded by SETTLE_TIMEOUT_S)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while True:
        description = await admin.describe_topic(topic)
        if description is not None and check(description):
            return description
        assert asyncio.get_running_loop().time() < deadline, f"{topic}: never {what}"
        await asyncio.sleep(0.25)


async def test_admin_requests(start_cluster: StartCluster) -> None:
    cluster = start_cluster(3)
    async with KafkaAdmin(cluster.bootstrap) as admin:
        described = await admin.describe_cluster()
        assert [b.node_id for b in described.brokers] == [0, 1, 2]
        assert described.controller in (0, 1, 2)

        topic_id = await admin.create_topic("orders", 2, 1, {"retention.ms": "60000"})
        orders = await wait_for(admin, "orders", lambda t: len(t.partitions) == 2, "created")
        assert orders.topic_id == topic_id
        assert all(len(p.replicas) == 1 and p.isr == p.replicas for p in orders.partitions)

        await admin.create_partitions("orders", 4)
        orders = await wait_for(admin, "orders", lambda t: len(t.partitions) == 4, "grown")

        await admin.alter_topic_configs("orders", {"segment.ms": "600000"}, ["retention.ms"])
        assert overrides(await admin.describe_topic_configs("orders")) == {"segment.ms": "600000"}

        targets = replica_targets(orders, 3, [0, 1, 2])
        await admin.alter_partition_reassignments("orders", targets)
        orders = await wait_for(
            admin,
            "orders",
            lambda t: all(len(p.replicas) == 3 and len(p.isr) == 3 for p in t.partitions),
            "at 3 in-sync replicas",
        )
        assert {p.partition: p.replicas for p in orders.partitions} == targets
        assert await admin.list_partition_reassignments(["orders"]) == {}

        # Log sizes per broker (DescribeLogDirs), for the bytes bound of broker autoscaling.
        producer = confluent_kafka.Producer({"bootstrap.servers": cluster.bootstrap})
        for index in range(200):
            producer.produce("orders", b"x" * 1000, partition=index % 4)
        assert producer.flush(30) == 0

        def on_disk() -> int:
            return sum(
                segment.stat().st_size
                for broker in cluster.brokers
                for partition in range(4)
                for segment in broker.segments("orders", partition)
            )

        async with ClusterReader(cluster.bootstrap) as reader:
            deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
            while (view := await reader.view()).log_bytes != on_disk():
                assert asyncio.get_running_loop().time() < deadline, (view.log_bytes, on_disk())
                await asyncio.sleep(0.25)
        assert view.log_bytes is not None and view.log_bytes >= 3 * 200 * 1000

        await admin.delete_topic("orders")
        assert await admin.describe_topic("orders") is None


async def apply(admin: KafkaAdmin, spec: TopicSpec) -> TopicPlan:
    """Plan, run the plan's actions; the plan that was run."""
    plan, _ = await observe_and_plan(admin, spec)
    for action in plan.actions:
        await run_action(admin, spec.topic_name, action)
    return plan


async def settle(admin: KafkaAdmin, spec: TopicSpec) -> TopicPlan:
    """Apply plans until one finds nothing to do (reassignments take a few rounds)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while True:
        plan = await apply(admin, spec)
        if plan.settled:
            return plan
        assert not plan.refused, plan.refusals
        assert asyncio.get_running_loop().time() < deadline, f"never settled: {plan}"
        await asyncio.sleep(0.5)


async def test_plans_end_to_end(start_cluster: StartCluster) -> None:
    cluster = start_cluster(3)
    resource = {"cluster": "kafka", "topicName": "payments.v1", "partitions": 3}
    spec = TopicSpec.from_resource("payments", {**resource, "replicationFactor": 2})
    async with KafkaAdmin(cluster.bootstrap) as admin:
        final = await settle(admin, spec)
        assert [w.reason for w in final.warnings] == ["MinIsrEqualsReplicationFactor"]
        created = await admin.describe_topic("payments.v1")
        assert created is not None and [len(p.replicas) for p in created.partitions] == [2] * 3
        configs = overrides(await admin.describe_topic_configs("payments.v1"))
        assert configs == {"min.insync.replicas": "2"}

        for refused, reason in (
            ({"partitions": 2}, "PartitionsCannotShrink"),
            ({"replicationFactor": 5}, "ReplicationFactorTooLarge"),
            ({"minInsyncReplicas": 4}, "MinIsrAboveReplicationFactor"),
            ({"config": {"retention.hours": "1"}}, "UnknownConfig"),
        ):
            plan = await apply(admin, TopicSpec.from_resource("payments", {**resource, **refused}))
            assert [r.reason for r in plan.refusals] == [reason]
        assert await admin.describe_topic("payments.v1") == created
        assert overrides(await admin.describe_topic_configs("payments.v1")) == configs

        # Changed out of band: brought back to the spec.
        await admin.alter_topic_configs("payments.v1", {"retention.ms": "1000"})
        plan = await apply(admin, spec)
        assert plan.actions == (AlterConfigs({}, ("retention.ms",)),)
        assert overrides(await admin.describe_topic_configs("payments.v1")) == configs

        # RF 2 -> 3 and 6 partitions, min ISR 2.
        grown = TopicSpec.from_resource("payments", {**resource, "partitions": 6})
        first = await apply(admin, grown)
        assert any(isinstance(action, Reassign) for action in first.actions)
        await settle(admin, grown)
        topic = await admin.describe_topic("payments.v1")
        assert topic is not None and len(topic.partitions) == 6
        assert all(len(p.replicas) == 3 and len(set(p.replicas)) == 3 for p in topic.partitions)
