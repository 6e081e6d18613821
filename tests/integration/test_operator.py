"""The operator's whole loop in the emulated cluster: ``brook-operator`` turns a Broker into
broker processes run by the pod runner and Topics into topics of that cluster, checked
with a real Kafka client through the bootstrap address the Broker's status gives.

One Broker cluster is shared by the tests of this module (it takes a while to start);
each test works on Topics of its own; the test that restarts a broker, then the one
that deletes the Broker, run last.
"""

from __future__ import annotations

import base64
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from .brokers import free_port, scrape
from .clients import ConfluentDriver, Message
from .kube.harness import Kube
from .kube.operated import (
    BROKERS,
    NS,
    bootstrap,
    condition,
    events,
    operated_broker,
    require_root,
)

BROKER = "demo"
TOPICS = "brook.dev/v1alpha1/topics"
BOOTSTRAP = bootstrap(BROKER)
READY_TIMEOUT_S = 120.0
CHANGE_TIMEOUT_S = 60.0
RACK_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "brook-operator-broker-rack"},
    "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
}
RACK_BINDING = f"brook-rack.{NS}.{BROKER}"
CLUSTER_SECRET = f"{BROKER}-cluster-secret"
PRESET_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": CLUSTER_SECRET, "namespace": NS},
    "data": {"cluster-secret": base64.b64encode(b"chosen before the Broker").decode()},
}
"""A cluster secret made before the Broker (say, by a secret manager): adopted as it is."""
BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"


@dataclass
class Cluster:
    kube: Kube
    admin: AdminClient
    metrics_port: int
    health_port: int

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator's samples now, by name and labels."""
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")
        }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The emulated cluster, the operator, and a Broker of 3 replicas it has made Ready."""
    require_root()
    # Status every second: a restarting broker is away for a few seconds only.
    metrics_port, health_port = free_port(), free_port()
    # Rack-aware, as the chart installs the operator: brokers read their node's zone with
    # their ServiceAccount, which the operator binds to the chart's node-reading role.
    with operated_broker(
        tmp_path_factory.mktemp("operator") / "kube",
        BROKER,
        3,
        settled=broker_ready,
        spec={"rack": {"enabled": True}},
        installed=[RACK_ROLE, PRESET_SECRET],
        operator_env={
            "BROOK_OPERATOR_STATUS_INTERVAL": "1",
            "BROOK_OPERATOR_RACK_CLUSTER_ROLE": RACK_ROLE["metadata"]["name"],
            "BROOK_OPERATOR_METRICS_PORT": str(metrics_port),
            "BROOK_OPERATOR_HEALTH_PORT": str(health_port),
        },
    ) as kube:
        # Without this, librdkafka's metadata requests of an admin client create topics.
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
        yield Cluster(kube, admin, metrics_port, health_port)


# --- reading the resources ----------------------------------------------------------------


def broker_ready(broker: dict[str, Any]) -> bool:
    status = broker.get("status") or {}
    return (
        condition(broker).get("status") == "True"
        and status.get("readyReplicas") == 3
        and status.get("underReplicatedPartitions") == 0
    )


def wait_for_event(
    kube: Kube, kind: str, name: str, type_: str, reason: str, words: str = ""
) -> dict[str, Any]:
    """The latest Event of that type and reason about the object whose message has
    ``words``, once posted (Kopf posts Events in the background)."""

    def posted() -> dict[str, Any] | None:
        found = [
            e
            for e in events(kube, kind, name)
            if e["type"] == type_ and e["reason"] == reason and words in e["message"]
        ]
        return found[-1] if found else None

    return kube.wait_for(
        posted, CHANGE_TIMEOUT_S, f"a {type_} Event {reason} ({words}) about {kind} {name}"
    )


def pod_ordinal(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["name"].rpartition("-")[2])


def zone_of(kube: Kube, node: str) -> str:
    labels = kube.get("v1/nodes", node, None)["metadata"]["labels"]
    return str(labels["topology.kubernetes.io/zone"])


def apply_topic(kube: Kube, name: str, **spec: Any) -> None:
    kube.apply(
        {
            "apiVersion": "brook.dev/v1alpha1",
            "kind": "Topic",
            "metadata": {"name": name},
            "spec": {"cluster": BROKER, **spec},
        }
    )


def wait_topic_ready(kube: Kube, name: str, partitions: int) -> dict[str, Any]:
    """The Topic once Ready for its current generation with ``partitions`` partitions."""

    def ready() -> dict[str, Any] | None:
        topic = kube.get(TOPICS, name)
        status = topic.get("status") or {}
        done = (
            condition(topic).get("status") == "True"
            and status.get("observedGeneration") == topic["metadata"]["generation"]
            and len(status.get("partitions") or ()) == partitions
        )
        return topic if done else None

    return kube.wait_for(
        ready, CHANGE_TIMEOUT_S, f"Topic {name} Ready with {partitions} partitions"
    )


# --- reading the Kafka cluster ------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A topic as a Kafka admin client sees it."""

    replicas: dict[int, tuple[int, ...]]
    leaders: dict[int, int]
    isr: dict[int, tuple[int, ...]]
    configs: dict[str, str | None]
    """Every config DescribeConfigs reports, overrides and defaults alike."""

    @property
    def arrangement(self) -> tuple[dict[int, tuple[int, ...]], dict[str, str | None]]:
        """What a spec change could alter: partitions, their replicas, configs (leaders
        and ISR move on their own)."""
        return self.replicas, self.configs


def layout(admin: AdminClient, topic: str) -> Layout | None:
    """The topic's layout, or None when the cluster has no such topic."""
    metadata = admin.list_topics(topic, timeout=15).topics[topic]
    if metadata.error is not None:
        assert metadata.error.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART, (
            metadata.error
        )
        return None
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=15)
    partitions = metadata.partitions.values()
    return Layout(
        replicas={p.id: tuple(p.replicas) for p in partitions},
        leaders={p.id: p.leader for p in partitions},
        isr={p.id: tuple(sorted(p.isrs)) for p in partitions},
        configs={name: entry.value for name, entry in configs.items()},
    )


def wait_status_lists_cluster(kube: Kube, admin: AdminClient, name: str) -> Layout:
    """The topic's layout once the Topic's status lists each partition's leader, replicas
    and ISR as the cluster has them (the status is refreshed periodically)."""

    def listed() -> Layout | None:
        status = kube.get(TOPICS, name)["status"]
        found = layout(admin, status["topicName"])
        if found is None:
            return None
        partitions = {
            p["partition"]: (tuple(p["replicas"]), p["leader"], tuple(sorted(p["isr"])))
            for p in status["partitions"]
        }
        expected = {
            p: (replicas, found.leaders[p], found.isr[p]) for p, replicas in found.replicas.items()
        }
        return found if partitions == expected else None

    return kube.wait_for(
        listed, CHANGE_TIMEOUT_S, f"the status of Topic {name} to list its partitions"
    )


# --- the scenarios ------------------------------------------------------------------------


def test_broker_becomes_ready_and_serves_a_topic_made_from_its_resource(
    cluster: Cluster,
) -> None:
    kube, admin = cluster.kube, cluster.admin
    broker = kube.get(BROKERS, BROKER)
    status = broker["status"]
    assert status["replicas"] == 3 and status["readyReplicas"] == 3
    assert status["controller"] in (0, 1, 2)
    assert status["bootstrap"] == BOOTSTRAP
    assert condition(broker)["reason"] == "ClusterReady", condition(broker)
    pods = kube.list("v1/pods", NS, f"app.kubernetes.io/instance={BROKER}")
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{BROKER}-{i}" for i in range(3)]
    assert {b.id for b in admin.list_topics(timeout=15).brokers.values()} == {0, 1, 2}
    objects = [
        f"ServiceAccount {BROKER}",
        f"ClusterRoleBinding {RACK_BINDING}",
        f"ConfigMap {BROKER}-config",
        f"Service {BROKER}-brokers",
        f"Service {BROKER}",
        f"StatefulSet {BROKER}",
        f"PodDisruptionBudget {BROKER}",
    ]
    for subject in objects:
        event = wait_for_event(kube, "Broker", BROKER, "Normal", "Created", subject)
        assert event["message"] == f"{subject} created"
    wait_for_event(kube, "Broker", BROKER, "Normal", "ClusterReady")
    # The Secret made beforehand is the Broker's now, with the value it had.
    wait_for_event(kube, "Broker", BROKER, "Normal", "Adopted", f"Secret {CLUSTER_SECRET}")
    secret = kube.get("v1/secrets", CLUSTER_SECRET)
    assert secret["data"] == PRESET_SECRET["data"]
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("Broker", broker["metadata"]["uid"])

    apply_topic(kube, "orders", partitions=6, replicationFactor=3, minInsyncReplicas=2)
    topic = wait_topic_ready(kube, "orders", 6)
    assert topic["status"]["topicName"] == "orders"
    assert topic["status"]["underReplicatedPartitions"] == 0
    found = wait_status_lists_cluster(kube, admin, "orders")
    assert sorted(found.replicas) == list(range(6))
    assert all(len(set(replicas)) == 3 for replicas in found.replicas.values()), found
    # Each broker's rack is its node's zone, and every partition has a replica in each.
    racks = {node.id: node.rack for node in admin.describe_cluster().result(15).nodes}
    zones = {
        pod_ordinal(pod): zone_of(kube, pod["spec"]["nodeName"])
        for pod in kube.list("v1/pods", NS, f"app.kubernetes.io/instance={BROKER}")
    }
    assert racks == zones and len(set(zones.values())) == 3, (racks, zones)
    for replicas in found.replicas.values():
        assert {racks[broker] for broker in replicas} == set(zones.values()), found
    assert all(found.leaders[p] in replicas for p, replicas in found.replicas.items()), found
    assert found.configs["min.insync.replicas"] == "2"
    wait_for_event(kube, "Topic", "orders", "Normal", "TopicCreated", "6 partitions")

    messages = [Message(i % 6, f"k{i}".encode(), f"v{i}".encode()) for i in range(60)]
    driver = ConfluentDriver()
    bootstrap = status["bootstrap"]
    deliveries = driver.produce(bootstrap, "orders", messages, "none", {"acks": "all"})
    assert [d.error for d in deliveries] == [None] * len(messages)
    consumed = driver.consume(bootstrap, "orders", range(6), len(messages))
    assert sorted(c.value for c in consumed) == sorted(m.value for m in messages)


REFUSED_SPECS = [
    ({"partitions": 6}, "PartitionsCannotShrink", "partitions 6 is fewer than the 12"),
    (
        {"replicationFactor": 5},
        "ReplicationFactorTooLarge",
        "replicationFactor 5 is more than the 3 brokers",
    ),
    (
        {"minInsyncReplicas": 4},
        "MinIsrAboveReplicationFactor",
        "minInsyncReplicas 4 is more than replicationFactor 3",
    ),
]


def test_topic_grows_and_refused_specs_change_nothing(cluster: Cluster) -> None:
    kube, admin = cluster.kube, cluster.admin
    valid = {"partitions": 6, "replicationFactor": 3, "minInsyncReplicas": 2}
    apply_topic(kube, "growing", **valid)
    wait_topic_ready(kube, "growing", 6)

    valid["partitions"] = 12
    apply_topic(kube, "growing", **valid)
    wait_topic_ready(kube, "growing", 12)
    grown = wait_status_lists_cluster(kube, admin, "growing")
    assert sorted(grown.replicas) == list(range(12))
    assert all(len(set(replicas)) == 3 for replicas in grown.replicas.values()), grown
    assert grown.configs["min.insync.replicas"] == "2"
    wait_for_event(kube, "Topic", "growing", "Normal", "PartitionsGrown", "from 6 to 12")

    for change, reason, words in REFUSED_SPECS:
        apply_topic(kube, "growing", **{**valid, **change})

        def refused(reason: str = reason) -> dict[str, Any] | None:
            topic = kube.get(TOPICS, "growing")
            ready = condition(topic)
            current = topic["status"].get("observedGeneration") == topic["metadata"]["generation"]
            return ready if current and ready.get("reason") == reason else None

        ready = kube.wait_for(refused, CHANGE_TIMEOUT_S, f"the Topic refused with {reason}")
        assert ready["status"] == "False"
        assert ready["message"].startswith("refused, nothing changed: "), ready
        assert words in ready["message"], ready
        wait_for_event(kube, "Topic", "growing", "Warning", reason, words)
        after = layout(admin, "growing")
        assert after is not None and after.arrangement == grown.arrangement, change

        apply_topic(kube, "growing", **valid)
        wait_topic_ready(kube, "growing", 12)
        wait_for_event(kube, "Topic", "growing", "Normal", "TopicReady", f"no longer {reason}")


def test_metrics_and_health_say_what_the_operator_did(cluster: Cluster) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.health_port}/healthz") as health:
        assert health.status == 200
    found = cluster.metrics()
    broker = (("name", BROKER), ("namespace", NS))
    assert found[("brook_operator_broker_ready", broker)] == 1
    assert found[("brook_operator_broker_ready_brokers", broker)] == 3
    assert found[("brook_operator_broker_under_min_isr_partitions", broker)] == 0
    assert found[("brook_operator_managed_resources", (("kind", "Broker"),))] == 1
    # What the earlier tests of this module made the operator do.
    assert found[("brook_operator_topic_actions_total", (("action", "CreateTopic"),))] >= 1
    assert found[("brook_operator_topic_actions_total", (("action", "GrowPartitions"),))] >= 1
    topic_outcomes = {
        dict(labels)["outcome"]: value
        for (name, labels), value in found.items()
        if name == "brook_operator_reconciliations_total" and ("kind", "Topic") in labels
    }
    assert topic_outcomes.get("refused", 0) >= len(REFUSED_SPECS), topic_outcomes
    assert topic_outcomes.get("applied", 0) >= 1, topic_outcomes


def test_a_deleted_broker_pod_comes_back_and_a_deleted_topic_goes(cluster: Cluster) -> None:
    kube, admin = cluster.kube, cluster.admin
    apply_topic(kube, "restarts", partitions=6, replicationFactor=3, minInsyncReplicas=2)
    wait_topic_ready(kube, "restarts", 6)
    pod = kube.get("v1/pods", f"{BROKER}-1")

    kube.delete("v1/pods", f"{BROKER}-1")
    deleted_at = time.monotonic()

    def under_replicated() -> dict[str, Any] | None:
        status = kube.get(BROKERS, BROKER)["status"]
        return status if status["underReplicatedPartitions"] else None

    status = kube.wait_for(
        under_replicated, CHANGE_TIMEOUT_S, "the Broker status to count under-replicated partitions"
    )
    print(f"{time.monotonic() - deleted_at:.1f} s after the pod was deleted: {status}")
    kube.wait_for(
        lambda: broker_ready(kube.get(BROKERS, BROKER)),
        READY_TIMEOUT_S,
        "the Broker to recover with no under-replicated partitions",
    )
    print(f"Ready again {time.monotonic() - deleted_at:.1f} s after the pod was deleted")
    restarted = kube.get("v1/pods", f"{BROKER}-1")
    assert restarted["metadata"]["uid"] != pod["metadata"]["uid"], "a new pod of that name"
    assert restarted["status"]["podIP"] == pod["status"]["podIP"]
    wait_topic_ready(kube, "restarts", 6)

    kube.delete(TOPICS, "restarts")
    kube.wait_for(
        lambda: kube.find(TOPICS, "restarts") is None,
        CHANGE_TIMEOUT_S,
        "the Topic resource to go once its finalizer ran",
    )
    kube.wait_for(
        lambda: layout(admin, "restarts") is None,
        CHANGE_TIMEOUT_S,
        "the topic to be deleted in the cluster",
    )
    wait_for_event(kube, "Topic", "restarts", "Normal", "TopicDeleted")


def test_a_settled_broker_is_watched_not_read_every_round(cluster: Cluster) -> None:
    """Rounds of a settled Broker read only what the operator may not watch (its cluster
    secret and its cluster-scoped rack binding): the StatefulSet, the pods, the Services
    and the rest come from the operator's watches."""
    kube = cluster.kube
    kube.wait_for(
        lambda: broker_ready(kube.get(BROKERS, BROKER)), READY_TIMEOUT_S, "the Broker to settle"
    )
    seen = len(list(kube.api))
    time.sleep(4.5)  # four or more rounds, one a second
    reads = Counter(
        request.url.path
        for request in list(kube.api)[seen:]
        if request.method.value.upper() == "GET" and request.params.get("watch") is None
    )
    indexed = {"statefulsets", "pods", "configmaps", "services", "serviceaccounts"}
    indexed.add("poddisruptionbudgets")
    assert not [path for path in reads if path.rsplit("/", 2)[-2] in indexed], reads
    secret_reads = reads[f"/api/v1/namespaces/{NS}/secrets/{CLUSTER_SECRET}"]
    assert secret_reads >= 3, reads
    assert reads[f"/apis/{BINDINGS.rsplit('/', 1)[0]}/clusterrolebindings/{RACK_BINDING}"] == (
        secret_reads
    ), reads


def test_deleting_the_broker_removes_its_cluster_wide_binding(cluster: Cluster) -> None:
    kube = cluster.kube
    binding = kube.get(BINDINGS, RACK_BINDING, None)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": BROKER, "namespace": NS}]
    kube.delete(BROKERS, BROKER)
    kube.wait_for(
        lambda: kube.find(BINDINGS, RACK_BINDING, None) is None,
        CHANGE_TIMEOUT_S,
        "the rack ClusterRoleBinding to go with the Broker",
    )
    kube.wait_for(
        lambda: kube.find("v1/secrets", CLUSTER_SECRET) is None,
        CHANGE_TIMEOUT_S,
        "the cluster secret to go with the Broker (its owner)",
    )
