"""Scaling on a real cluster: a consumer Deployment autoscaled from its backlog (never
beyond the partitions, back down after the stabilization window, every record consumed),
a stuck partition reported without driving replicas to the maximum, brokers scaled out
3 -> 5 and in 5 -> 3 and rolled one at a time under an acks=all producer that loses
nothing and never sees a partition under min ISR.

The tests run in order in one namespace and share its Broker (``examples/broker.yaml``).
Consumers and producers are the e2e client image (``client/client.py``): a consumer sends
the number of each record it has processed to a receipts topic before committing, so the
check record by record still works after the autoscaler has removed its pod.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.kind import CLIENT_IMAGE, REPOSITORY, Cluster, condition, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

BROKER = yaml.safe_load((REPOSITORY / "examples" / "broker.yaml").read_text())
BROKER_NAME = BROKER["metadata"]["name"]
BROKER_TIMEOUT = 600
TOPIC_TIMEOUT = 120
SAMPLE_INTERVAL = 1.0

BACKLOG = 6000
RECORD_DELAY_MS = 20  # 50 records a second per consumer: 2 minutes of backlog for one
LAG_PER_REPLICA = 300  # 6000 / 300 = 20 replicas wanted, capped by the 6 partitions
SCALE_DOWN_WINDOW_S = 60
PRODUCED_UNDER_SCALING = 6000
PRODUCER_RATE = 50  # records a second: two minutes of writes around each operation
STUCK_PRODUCER_RATE = 10  # a fifth of what one consumer processes


@pytest.fixture(scope="module")
def bootstrap(cluster: Cluster) -> str:
    """The Broker of the example, Ready with 3 brokers in sync; its bootstrap address."""
    cluster.apply(BROKER)
    broker = broker_when(cluster, "3 brokers in sync", lambda b: in_sync(b, 3))
    return str(broker["status"]["bootstrap"])


# --- resources ------------------------------------------------------------------------------


def topic(name: str, partitions: int) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "Topic",
        "metadata": {"name": name},
        "spec": {
            "cluster": BROKER_NAME,
            "partitions": partitions,
            "replicationFactor": 3,
            "minInsyncReplicas": 2,
        },
    }


def create_topics(cluster: Cluster, *topics: tuple[str, int]) -> None:
    for name, partitions in topics:
        cluster.apply(topic(name, partitions))
    for name, partitions in topics:
        wait_for(
            f"Topic {name} Ready with {partitions} partitions",
            lambda name=name, partitions=partitions: topic_ready(
                cluster.get("topics", name), partitions
            ),
            TOPIC_TIMEOUT,
        )


def consumers(
    cluster: Cluster,
    name: str,
    bootstrap: str,
    topic_name: str,
    receipts: str,
    *extra: str,
) -> None:
    """A Deployment of one consumer of group ``name``; the operator scales it."""
    labels = {"app.kubernetes.io/name": name}
    arguments = [
        "--bootstrap",
        bootstrap,
        "consume-group",
        "--topic",
        topic_name,
        "--group",
        name,
        "--receipts",
        receipts,
        "--record-delay-ms",
        str(RECORD_DELAY_MS),
        *extra,
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "containers": [
                        {
                            "name": "consumer",
                            "image": CLIENT_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": arguments,
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }
    cluster.apps.create_namespaced_deployment(cluster.namespace, deployment)


def consumer_group(name: str, topic_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "ConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "cluster": BROKER_NAME,
            "groupId": name,
            "topics": [topic_name],
            "scaleTargetRef": {"name": name},
            "intervalSeconds": 5,
            "cooldownSeconds": 10,
            **spec,
        },
    }


# --- reading the cluster ----------------------------------------------------------------


def broker_when(
    cluster: Cluster, wanted: str, test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        broker = cluster.get("brokers", BROKER_NAME)
        return broker if test(broker) else None

    return wait_for(wanted, probe, BROKER_TIMEOUT)


def in_sync(broker: dict[str, Any], replicas: int) -> bool:
    """Ready with ``replicas`` brokers, all partitions in sync, no scaling underway."""
    status = broker.get("status", {})
    ready = condition(broker, "Ready")
    return (
        ready is not None
        and ready["status"] == "True"
        and status.get("observedGeneration") == broker["metadata"]["generation"]
        and status.get("replicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("underReplicatedPartitions") == 0
        and (status.get("scaling") or {}).get("phase", "Idle") == "Idle"
    )


def topic_ready(resource: dict[str, Any], partitions: int) -> bool:
    ready = condition(resource, "Ready")
    status = resource.get("status", {})
    return (
        ready is not None
        and ready["status"] == "True"
        and status.get("observedGeneration") == resource["metadata"]["generation"]
        and len(status.get("partitions") or ()) == partitions
    )


def replica_placement(cluster: Cluster) -> dict[int, int]:
    """Replicas per broker over every Topic of the namespace, as their statuses list them."""
    counts: dict[int, int] = {}
    for resource in cluster.custom.list_namespaced_custom_object(
        "brook.dev", "v1alpha1", cluster.namespace, "topics"
    )["items"]:
        for partition in resource.get("status", {}).get("partitions") or ():
            for node in partition["replicas"]:
                counts[node] = counts.get(node, 0) + 1
    return counts


def deployment_replicas(cluster: Cluster, name: str) -> int:
    return int(cluster.apps.read_namespaced_deployment_scale(name, cluster.namespace).spec.replicas)


def broker_pods(cluster: Cluster) -> dict[str, str]:
    """Broker pod name -> uid."""
    pods = cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector=f"app.kubernetes.io/instance={BROKER_NAME}"
    ).items
    return {pod.metadata.name: pod.metadata.uid for pod in pods}


@dataclass
class Samples:
    """What the test saw of the cluster once a second while something ran."""

    replicas: list[tuple[float, int]] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)
    under_min_isr: list[tuple[float, int]] = field(default_factory=list)
    not_ready: list[tuple[float, int]] = field(default_factory=list)

    def replica_changes(self) -> list[tuple[float, int]]:
        """The replica counts in order, each with when it was first seen."""
        changes: list[tuple[float, int]] = []
        for at, count in self.replicas:
            if not changes or changes[-1][1] != count:
                changes.append((at, count))
        return changes


def sample_until(what: str, sample: Callable[[], bool], timeout: float) -> None:
    """Call ``sample`` once a second until it returns True."""
    deadline = time.monotonic() + timeout
    while not sample():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(SAMPLE_INTERVAL)


def producer(
    cluster: Cluster, bootstrap: str, topic_name: str, first: int, rate: int = PRODUCER_RATE
) -> str:
    """A client pod writing ``PRODUCED_UNDER_SCALING`` numbered records with acks=all."""
    return cluster.start_client(
        [
            "--bootstrap",
            bootstrap,
            "produce",
            "--topic",
            topic_name,
            "--first",
            str(first),
            "--records",
            str(PRODUCED_UNDER_SCALING),
            "--rate",
            str(rate),
        ]
    )


def assert_every_record_there(
    cluster: Cluster, bootstrap: str, topic_name: str, first: int, records: int
) -> None:
    found = cluster.run_client(
        [
            "--bootstrap",
            bootstrap,
            "verify",
            "--topic",
            topic_name,
            "--first",
            str(first),
            "--records",
            str(records),
        ]
    )
    assert found["missingCount"] == 0, found


def assert_no_write_failed(cluster: Cluster, pod: str, rate: int = PRODUCER_RATE) -> None:
    result = cluster.client_result(pod, timeout=PRODUCED_UNDER_SCALING / rate + 300)
    assert (result["acked"], result["failures"]) == (PRODUCED_UNDER_SCALING, 0), result


@pytest.fixture
def deployments(cluster: Cluster) -> Iterator[list[str]]:
    """Names of the consumer Deployments a test made, deleted with their groups after it."""
    made: list[str] = []
    yield made
    for name in made:
        if cluster.exists("consumergroups", name):
            cluster.delete("consumergroups", name)
        cluster.apps.delete_namespaced_deployment(name, cluster.namespace)


# --- the scenarios --------------------------------------------------------------------------


def test_consumers_scale_up_to_the_partitions_drain_the_backlog_and_scale_down(
    cluster: Cluster, bootstrap: str, deployments: list[str]
) -> None:
    create_topics(cluster, ("backlog", 6), ("backlog-receipts", 3))
    produced = cluster.run_client(
        ["--bootstrap", bootstrap, "produce", "--topic", "backlog", "--records", str(BACKLOG)]
    )
    assert (produced["acked"], produced["failures"]) == (BACKLOG, 0), produced
    consumers(cluster, "workers", bootstrap, "backlog", "backlog-receipts")
    deployments.append("workers")
    cluster.apply(
        consumer_group(
            "workers",
            "backlog",
            minReplicas=1,
            maxReplicas=10,
            lagPerReplica=LAG_PER_REPLICA,
            scaleUpStabilizationSeconds=0,
            scaleDownStabilizationSeconds=SCALE_DOWN_WINDOW_S,
        )
    )

    samples = Samples()
    drained_at: list[float] = []

    def sample() -> bool:
        now = time.monotonic()
        replicas = deployment_replicas(cluster, "workers")
        samples.replicas.append((now, replicas))
        group = cluster.get("consumergroups", "workers")
        capped = condition(group, "CappedByPartitions")
        if capped is not None and capped["status"] == "True":
            samples.capped.append(capped.get("message", ""))
        status = group.get("status", {})
        if not drained_at and status.get("totalLag") == 0 and "partitions" in status:
            drained_at.append(now)
        return bool(drained_at) and replicas == 1 and max(r for _, r in samples.replicas) > 1

    sample_until("the backlog drained and the consumers back to 1", sample, 1200)

    changes = samples.replica_changes()
    counts = [count for _, count in changes]
    peak = counts.index(max(counts))
    assert max(counts) == 6, f"scaled up to the 6 partitions, never beyond: {changes}"
    assert counts[: peak + 1] == sorted(counts[: peak + 1]), f"up, then down only: {changes}"
    assert counts[peak:] == sorted(counts[peak:], reverse=True), f"no oscillation: {changes}"
    assert samples.capped, "the cap by partitions is reported in a CappedByPartitions condition"
    assert "6" in samples.capped[0], samples.capped[0]
    first_down = changes[peak + 1][0]
    assert first_down - changes[peak][0] >= SCALE_DOWN_WINDOW_S - 2 * SAMPLE_INTERVAL, changes
    assert_every_record_there(cluster, bootstrap, "backlog-receipts", 0, BACKLOG)


def test_a_stuck_partition_is_reported_and_does_not_scale_to_the_maximum(
    cluster: Cluster, bootstrap: str, deployments: list[str]
) -> None:
    create_topics(cluster, ("poison", 3), ("poison-receipts", 1))
    # Records keep coming to every partition, slowly enough for one consumer, so the
    # group keeps committing on the others while partition 0's committed offset stays
    # where it is.
    writer = producer(cluster, bootstrap, "poison", 0, rate=STUCK_PRODUCER_RATE)
    consumers(
        cluster, "wedged", bootstrap, "poison", "poison-receipts", "--skip-commit-partition", "0"
    )
    deployments.append("wedged")
    cluster.apply(
        consumer_group(
            "wedged",
            "poison",
            minReplicas=1,
            maxReplicas=3,
            lagPerReplica=20,
            scaleUpStabilizationSeconds=0,
            stuckPartitionSeconds=30,
            offsetReset="earliest",
        )
    )

    def stuck() -> dict[str, Any] | None:
        group = cluster.get("consumergroups", "wedged")
        found = condition(group, "StuckPartitions")
        return group if found is not None and found["status"] == "True" else None

    group = wait_for("partition 0 reported stuck", stuck, 180)
    stuck_partitions = group["status"]["stuckPartitions"]
    assert [(s["topic"], s["partition"]) for s in stuck_partitions] == [("poison", 0)]
    assert "poison" in condition(group, "StuckPartitions")["message"]
    events = cluster.core.list_namespaced_event(
        cluster.namespace, field_selector="involvedObject.name=wedged"
    ).items
    assert any("poison-0" in (event.message or "") for event in events if event.type == "Warning")

    # Partition 0's lag grows for as long as records come; the replicas stay below the
    # maximum all along.
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(deployment_replicas(cluster, "wedged"))
        time.sleep(SAMPLE_INTERVAL)
    assert max(seen) < 3, seen
    assert_no_write_failed(cluster, writer, rate=STUCK_PRODUCER_RATE)


def test_brokers_scale_out_and_back_in_under_acks_all_writes(
    cluster: Cluster, bootstrap: str
) -> None:
    create_topics(cluster, ("ledger", 6))
    writer = producer(cluster, bootstrap, "ledger", 0)
    cluster.patch_spec("brokers", BROKER_NAME, {"replicas": 5})
    broker_when(cluster, "5 brokers in sync", lambda b: in_sync(b, 5))
    # Topic statuses are refreshed periodically: the new layout shows there soon after.
    placement = wait_for(
        "replicas on the new brokers 3 and 4 in the Topic statuses",
        lambda: (p := replica_placement(cluster)).get(3) and p.get(4) and p,
        TOPIC_TIMEOUT,
    )
    # Each topic spreads its replicas evenly (give or take one per broker).
    topics = len(
        cluster.custom.list_namespaced_custom_object(
            "brook.dev", "v1alpha1", cluster.namespace, "topics"
        )["items"]
    )
    assert max(placement.values()) - min(placement.values()) <= topics, placement
    assert_no_write_failed(cluster, writer)
    assert_every_record_there(cluster, bootstrap, "ledger", 0, PRODUCED_UNDER_SCALING)

    writer = producer(cluster, bootstrap, "ledger", PRODUCED_UNDER_SCALING)
    cluster.patch_spec("brokers", BROKER_NAME, {"replicas": 3})
    broker_when(cluster, "3 brokers in sync", lambda b: in_sync(b, 3))
    wait_for(
        "only the pods of brokers 0-2 left",
        lambda: sorted(broker_pods(cluster)) == [f"{BROKER_NAME}-{i}" for i in range(3)],
        TOPIC_TIMEOUT,
    )
    wait_for(
        "every replica on brokers 0-2 in the Topic statuses",
        lambda: set(replica_placement(cluster)) == {0, 1, 2},
        TOPIC_TIMEOUT,
    )
    assert_no_write_failed(cluster, writer)
    assert_every_record_there(cluster, bootstrap, "ledger", 0, 2 * PRODUCED_UNDER_SCALING)


def test_a_rolling_restart_keeps_min_isr_and_every_write(cluster: Cluster, bootstrap: str) -> None:
    create_topics(cluster, ("journal", 6))
    before = broker_pods(cluster)
    writer = producer(cluster, bootstrap, "journal", 0)
    config = {**BROKER["spec"]["config"], "log.retention.ms": "259200000"}
    cluster.patch_spec("brokers", BROKER_NAME, {"config": config})

    samples = Samples()

    def sample() -> bool:
        now = time.monotonic()
        broker = cluster.get("brokers", BROKER_NAME)
        status = broker.get("status", {})
        samples.under_min_isr.append((now, status.get("underMinIsrPartitions") or 0))
        samples.not_ready.append((now, 3 - (status.get("readyReplicas") or 0)))
        pods = broker_pods(cluster)
        restarted = len(pods) == 3 and all(pods[name] != uid for name, uid in before.items())
        return restarted and in_sync(broker, 3)

    sample_until("every broker restarted and back in sync", sample, BROKER_TIMEOUT)
    assert [n for _, n in samples.under_min_isr if n] == [], "a partition went under min ISR"
    assert max(n for _, n in samples.not_ready) <= 1, "one broker at a time"
    assert_no_write_failed(cluster, writer)
    assert_every_record_there(cluster, bootstrap, "journal", 0, PRODUCED_UNDER_SCALING)
