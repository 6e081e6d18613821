"""The operator on a real cluster, as a user drives it: the example Broker and Topic
applied, a client producing and consuming in the cluster, the topic grown, specs refused,
a broker pod lost and recovered, the topic deleted. The tests run in order and share one
Broker and one Topic."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from brook_operator.topic_plan import (
    MIN_ISR_ABOVE_REPLICATION_FACTOR,
    PARTITIONS_CANNOT_SHRINK,
    REPLICATION_FACTOR_TOO_LARGE,
)
from kubernetes import client

from tests.e2e.kind import RELEASE, REPOSITORY, Cluster, condition, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

BROKER_READY_TIMEOUT = 300
TOPIC_TIMEOUT = 120


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPOSITORY / "examples" / name).read_text())


BROKER = example("broker.yaml")
# Rack-aware: each broker reads its node's zone with its ServiceAccount, which works only
# through the ClusterRoleBinding the operator makes with the chart's rack role.
BROKER["spec"]["rack"] = {"enabled": True}
TOPIC = example("topic.yaml")
BROKER_NAME, TOPIC_NAME = BROKER["metadata"]["name"], TOPIC["metadata"]["name"]


def ready(resource: dict[str, Any]) -> bool:
    found = condition(resource, "Ready")
    return found is not None and found["status"] == "True"


def ready_reason(resource: dict[str, Any]) -> str | None:
    found = condition(resource, "Ready")
    return found.get("reason") if found else None


def current(resource: dict[str, Any]) -> bool:
    """The status speaks of the latest spec."""
    status = resource.get("status", {})
    return status.get("observedGeneration") == resource["metadata"]["generation"]


def broker_when(cluster: Cluster, wanted: str, test: Any) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        broker = cluster.get("brokers", BROKER_NAME)
        return broker if test(broker) else None

    return wait_for(wanted, probe, BROKER_READY_TIMEOUT)


def topic_when(cluster: Cluster, wanted: str, test: Any) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        topic = cluster.get("topics", TOPIC_NAME)
        return topic if current(topic) and test(topic) else None

    return wait_for(wanted, probe, TOPIC_TIMEOUT)


def healthy(broker: dict[str, Any]) -> bool:
    status = broker.get("status", {})
    return (
        ready(broker)
        and status.get("readyReplicas") == 3
        and not status.get("underReplicatedPartitions")
    )


def shows_a_lost_broker(broker: dict[str, Any]) -> bool:
    status = broker.get("status", {})
    return (status.get("readyReplicas") or 0) < 3 or (
        status.get("underReplicatedPartitions") or 0
    ) > 0


def test_broker_becomes_ready(cluster: Cluster) -> None:
    cluster.apply(BROKER)
    broker = broker_when(cluster, "3 ready brokers", healthy)
    status = broker["status"]
    assert status["replicas"] == 3
    assert status["controller"] in (0, 1, 2)
    assert status["bootstrap"] == f"{BROKER_NAME}.{cluster.namespace}.svc.cluster.local:9092"
    # Ready brokers learnt their rack: the binding that lets them read nodes exists.
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    binding = rbac.read_cluster_role_binding(f"brook-rack.{cluster.namespace}.{BROKER_NAME}")
    assert binding.role_ref.name == f"{RELEASE}-brook-operator-broker-rack"


def test_topic_gets_its_layout(cluster: Cluster) -> None:
    cluster.apply(TOPIC)
    topic = topic_when(cluster, "the topic to be ready", ready)
    partitions = topic["status"]["partitions"]
    assert sorted(p["partition"] for p in partitions) == list(range(6))
    for partition in partitions:
        assert len(partition["replicas"]) == 3
        assert sorted(partition["isr"]) == sorted(partition["replicas"])
        assert partition["leader"] in partition["replicas"]


def test_client_produces_and_consumes_through_the_bootstrap(cluster: Cluster) -> None:
    bootstrap = cluster.get("brokers", BROKER_NAME)["status"]["bootstrap"]
    result = cluster.run_client(
        ["--bootstrap", bootstrap, "produce-consume", "--topic", TOPIC_NAME, "--records", "600"]
    )
    assert (result["produced"], result["consumed"]) == (600, 600)
    assert result["partitions"] == list(range(6))


def test_topic_grows_to_12_partitions(cluster: Cluster) -> None:
    cluster.patch_spec("topics", TOPIC_NAME, {"partitions": 12})
    topic = topic_when(
        cluster, "12 partitions", lambda t: ready(t) and len(t["status"]["partitions"]) == 12
    )
    assert all(len(p["isr"]) == 3 for p in topic["status"]["partitions"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"partitions": 3}, PARTITIONS_CANNOT_SHRINK),
        ({"replicationFactor": 5}, REPLICATION_FACTOR_TOO_LARGE),
        ({"minInsyncReplicas": 4}, MIN_ISR_ABOVE_REPLICATION_FACTOR),
    ],
)
def test_refused_spec_changes_nothing(
    cluster: Cluster, change: dict[str, int], reason: str
) -> None:
    cluster.patch_spec("topics", TOPIC_NAME, change)
    topic = topic_when(cluster, f"the {reason} refusal", lambda t: ready_reason(t) == reason)
    assert condition(topic, "Ready")["status"] == "False"
    partitions = topic["status"]["partitions"]
    assert len(partitions) == 12
    assert all(len(p["replicas"]) == 3 for p in partitions)
    cluster.patch_spec(
        "topics", TOPIC_NAME, {"partitions": 12, "replicationFactor": 3, "minInsyncReplicas": 2}
    )
    topic_when(cluster, "the topic to be ready again", ready)


def test_lost_broker_pod_is_replaced_and_the_cluster_recovers(cluster: Cluster) -> None:
    cluster.core.delete_namespaced_pod(f"{BROKER_NAME}-1", cluster.namespace)
    broker_when(
        cluster,
        "the status to show the lost broker",
        shows_a_lost_broker,
    )
    broker_when(cluster, "all brokers back in sync", healthy)
    topic = topic_when(
        cluster, "every ISR whole again", lambda t: t["status"]["underReplicatedPartitions"] == 0
    )
    assert all(len(p["isr"]) == 3 for p in topic["status"]["partitions"])


def test_deleting_the_topic_deletes_it_in_the_cluster(cluster: Cluster) -> None:
    bootstrap = cluster.get("brokers", BROKER_NAME)["status"]["bootstrap"]
    cluster.delete("topics", TOPIC_NAME)
    wait_for("the Topic to go", lambda: not cluster.exists("topics", TOPIC_NAME), TOPIC_TIMEOUT)
    assert TOPIC_NAME not in cluster.run_client(["--bootstrap", bootstrap, "topics"])["topics"]
