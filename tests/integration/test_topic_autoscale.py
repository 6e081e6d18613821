"""A Topic's partitionAutoscale in the emulated cluster: the signal is a ConsumerGroup's
status (capped by partitions, lag growing), written here through the status subresource
as the group's controller would write it; the growth is checked in the Kafka cluster with
a real admin client.

Three topics share one Broker and one run of the operator, since each step waits for the
Topic controller's next look (every ``RECONCILE_INTERVAL_S``): ``orders`` grows by its
step up to its maximum, ``ledger`` has no policy, and ``events`` sees its group stop
falling behind before its ``afterSeconds`` are up.
"""

from __future__ import annotations

from typing import Any

import pytest
from brook_operator.topic import RECONCILE_INTERVAL_S
from confluent_kafka.admin import AdminClient

from . import test_operator
from .kube.harness import Kube
from .kube.operated import BROKERS, bootstrap, condition, events
from .kube.operator import OperatorProcess
from .test_operator import (
    READY_TIMEOUT_S,
    TOPICS,
    broker_ready,
    wait_for_event,
    wait_topic_ready,
)

BROKER = "backlog"
BOOTSTRAP = bootstrap(BROKER)
GROUPS = "brook.dev/v1alpha1/consumergroups"
GROWTH_TIMEOUT_S = 3 * RECONCILE_INTERVAL_S
STEP, MAX_PARTITIONS = 2, 6
POLICY = {"enabled": True, "maxPartitions": MAX_PARTITIONS, "step": STEP, "afterSeconds": 1}


def apply_topic(kube: Kube, name: str, **spec: Any) -> None:
    """A Topic of this module's Broker."""
    test_operator.apply_topic(kube, name, cluster=BROKER, **spec)


def apply_group(kube: Kube, name: str, topics: list[str]) -> None:
    """A ConsumerGroup reading ``topics``. Its Deployment does not exist, so a group
    controller running in the operator cannot complete a look and overwrite the status
    this test writes."""
    kube.apply(
        {
            "apiVersion": "brook.dev/v1alpha1",
            "kind": "ConsumerGroup",
            "metadata": {"name": name},
            "spec": {
                "cluster": BROKER,
                "groupId": name,
                "topics": topics,
                "scaleTargetRef": {"name": f"{name}-absent"},
                "maxReplicas": 2,
            },
        }
    )


def report(kube: Kube, name: str, capped: bool, lag_growth_per_second: float) -> None:
    """The group's status after a look of its controller."""
    generation = kube.get(GROUPS, name)["metadata"]["generation"]
    status = {
        "observedGeneration": generation,
        "cappedByPartitions": capped,
        "lagGrowthPerSecond": lag_growth_per_second,
    }
    kube.patch(GROUPS, name, {"status": status}, subresource="status")


def autoscale_status(kube: Kube, name: str) -> dict[str, Any]:
    return (kube.get(TOPICS, name).get("status") or {}).get("partitionAutoscale") or {}


def partition_count(admin: AdminClient, topic: str) -> int:
    metadata = admin.list_topics(topic, timeout=15).topics[topic]
    assert metadata.error is None, metadata.error
    return len(metadata.partitions)


@pytest.mark.slow
def test_partitions_grow_by_step_while_a_group_is_capped_up_to_the_maximum(
    kube: Kube, operator_process: OperatorProcess
) -> None:
    kube.apply(
        {
            "apiVersion": "brook.dev/v1alpha1",
            "kind": "Broker",
            "metadata": {"name": BROKER},
            "spec": {"replicas": 3},
        }
    )
    kube.wait_for(
        lambda: broker_ready(kube.get(BROKERS, BROKER)), READY_TIMEOUT_S, "the Broker Ready"
    )
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
    apply_group(kube, "workers", ["orders", "ledger"])
    report(kube, "workers", capped=True, lag_growth_per_second=25.0)
    apply_group(kube, "stalling", ["events"])
    report(kube, "stalling", capped=True, lag_growth_per_second=25.0)
    apply_topic(kube, "orders", partitions=2, partitionAutoscale=POLICY)
    apply_topic(kube, "ledger", partitions=2)
    apply_topic(kube, "events", partitions=2, partitionAutoscale={**POLICY, "afterSeconds": 5})

    # events: the policy has seen its group capped; before the next look (10 s on, past
    # afterSeconds) the group's lag stops growing.
    kube.wait_for(
        lambda: autoscale_status(kube, "events").get("cappedSince"),
        GROWTH_TIMEOUT_S,
        "Topic events to see its group capped",
    )
    report(kube, "stalling", capped=True, lag_growth_per_second=-3.0)

    # orders: 2 -> 4 -> 6 partitions in the cluster, one step per look, then no further.
    for count in range(2 + STEP, MAX_PARTITIONS + 1, STEP):
        kube.wait_for(
            lambda count=count: partition_count(admin, "orders") >= count,
            GROWTH_TIMEOUT_S,
            f"topic orders to have {count} partitions",
        )
        assert partition_count(admin, "orders") == count
        event = wait_for_event(
            kube, "Topic", "orders", "Normal", "PartitionsAutoscaled", f"to {count} "
        )
        assert event["message"].startswith(
            f"grow partitions from {count - STEP} to {count} (step {STEP}, maxPartitions "
            f"{MAX_PARTITIONS}): ConsumerGroup 'workers' is capped by partitions with lag "
            "growing 25/s, for "
        ), event["message"]
    kube.wait_for(
        lambda: autoscale_status(kube, "orders").get("reason") == "AtMaxPartitions",
        GROWTH_TIMEOUT_S,
        "Topic orders to stop at maxPartitions",
    )
    orders = wait_topic_ready(kube, "orders", MAX_PARTITIONS)
    assert orders["spec"]["partitions"] == 2
    assert orders["status"]["autoscaledPartitions"] == MAX_PARTITIONS
    assert partition_count(admin, "orders") == MAX_PARTITIONS
    growths = [e for e in events(kube, "Topic", "orders") if e["reason"] == "PartitionsAutoscaled"]
    assert len({e["message"].split(":")[0] for e in growths}) == 2, growths

    # events: the wait was forgotten at the look after the lag stopped growing.
    stopped = kube.wait_for(
        lambda: (
            (s := autoscale_status(kube, "events")).get("reason") == "NotCappedByPartitions" and s
        ),
        GROWTH_TIMEOUT_S,
        "Topic events to see its group no longer behind",
    )
    assert "cappedSince" not in stopped
    assert "lag not growing (-3/s)" in stopped["message"], stopped
    assert partition_count(admin, "events") == 2
    assert "autoscaledPartitions" not in kube.get(TOPICS, "events")["status"]

    # ledger: read by the same capped group, but without a policy.
    ledger = kube.get(TOPICS, "ledger")
    assert partition_count(admin, "ledger") == 2
    assert "partitionAutoscale" not in ledger["status"] and condition(ledger)["status"] == "True"
    assert not [e for e in events(kube, "Topic", "ledger") if e["reason"] == "PartitionsAutoscaled"]

    # The original manifest applied again, policy off: the topic keeps its 6 partitions,
    # Ready, with no refusal to shrink.
    apply_topic(kube, "orders", partitions=2, partitionAutoscale={**POLICY, "enabled": False})
    orders = wait_topic_ready(kube, "orders", MAX_PARTITIONS)
    assert condition(orders)["reason"] == "TopicReady", condition(orders)
    assert f"has {MAX_PARTITIONS} partitions" in condition(orders)["message"]
    assert "partitionAutoscale" not in orders["status"]
    assert partition_count(admin, "orders") == MAX_PARTITIONS
