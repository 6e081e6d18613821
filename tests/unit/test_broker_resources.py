"""A Broker's objects as the pod contract and the CRD describe them, and the broker
settings the operator accepts or refuses."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from brook_broker.config import load_config
from brook_operator.broker_resources import (
    CONFIG_HASH_ANNOTATION,
    BrokerSpec,
    InvalidSpec,
    adopt_cluster_secret,
    broker_env,
    cluster_secret,
    immutable_changes,
    manifests,
    needs_update,
    update_patch,
)

IMAGE = "registry.example/brook-broker:1.0"


def objects(
    spec: dict[str, Any] | None = None,
    name: str = "kafka",
    namespace: str = "prod",
    rack_role: str | None = None,
):
    parsed = BrokerSpec.parse(spec or {}, IMAGE)
    return {
        obj["kind"] + "/" + obj["metadata"]["name"]: obj
        for obj in manifests(name, namespace, parsed, broker_env(parsed), rack_role)
    }


def pod_spec(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return objects(spec)["StatefulSet/kafka"]["spec"]["template"]["spec"]


def container_env(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {item["name"]: item for item in pod_spec(spec)["containers"][0]["env"]}


def test_objects_are_named_labelled_and_ownerless() -> None:
    found = objects()
    assert list(found) == [
        "ServiceAccount/kafka",
        "ConfigMap/kafka-config",
        "Service/kafka-brokers",
        "Service/kafka",
        "StatefulSet/kafka",
        "PodDisruptionBudget/kafka",
    ]
    for obj in found.values():
        assert obj["metadata"]["namespace"] == "prod"
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/name": "brook-broker",
            "app.kubernetes.io/instance": "kafka",
            "app.kubernetes.io/managed-by": "brook-operator",
            "app.kubernetes.io/component": "broker",
        }
        assert "ownerReferences" not in obj["metadata"]


def test_services_address_the_brokers() -> None:
    found = objects()
    headless = found["Service/kafka-brokers"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in headless["ports"]} == {
        "kafka": 9092,
        "controller": 9093,
        "internal": 9094,
        "http": 9644,
    }
    client = found["Service/kafka"]["spec"]
    assert client["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"]) for p in client["ports"]] == [(9092, 9092)]
    pods = found["StatefulSet/kafka"]["spec"]["template"]["metadata"]["labels"]
    for selector in (headless["selector"], client["selector"]):
        assert selector.items() <= pods.items()


def test_env_is_ordered_for_variable_expansion() -> None:
    env = pod_spec()["containers"][0]["env"]
    names = [item["name"] for item in env]
    for position, item in enumerate(env):
        for used in re.findall(r"\$\((\w+)\)", item.get("value", "")):
            assert used in names[:position], f"{item['name']} uses {used} before it is set"
    by_name = {item["name"]: item for item in env}
    assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert by_name["BROOK_ADVERTISED_LISTENER"]["value"] == (
        "$(POD_NAME).kafka-brokers.$(POD_NAMESPACE).svc.cluster.local:9092"
    )
    assert by_name["BROOK_DATA_DIR"]["value"] == "/var/lib/brook"
    assert by_name["BROOK_CLUSTER_ID"]["value"] == "prod.kafka"


@pytest.mark.parametrize(
    ("replicas", "voters"), [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (5, [0, 1, 2])]
)
def test_voters_are_the_first_three_pods_at_most(replicas: int, voters: list[int]) -> None:
    quorum = container_env({"replicas": replicas})["BROOK_CONTROLLER_QUORUM"]["value"]
    assert quorum == ",".join(
        f"{n}@kafka-{n}.kafka-brokers.prod.svc.cluster.local:9093" for n in voters
    )
    # The broker itself accepts it.
    assert sorted(load_config([], {"BROOK_CONTROLLER_QUORUM": quorum}).voters) == voters


def test_node_id_is_the_pod_ordinal() -> None:
    container = pod_spec()["containers"][0]
    assert container["command"] == [
        "sh",
        "-c",
        "export BROOK_NODE_ID=${POD_NAME##*-}; exec brook-broker",
    ]
    assert container["envFrom"] == [{"configMapRef": {"name": "kafka-config"}}]
    assert container["image"] == IMAGE
    assert pod_spec({"image": "other:2"})["containers"][0]["image"] == "other:2"


def test_stateful_set_contract() -> None:
    stateful_set = objects({"replicas": 5})["StatefulSet/kafka"]["spec"]
    assert stateful_set["replicas"] == 5
    assert stateful_set["serviceName"] == "kafka-brokers"
    assert stateful_set["podManagementPolicy"] == "Parallel"
    pod = stateful_set["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9644}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9644}
    assert container["volumeMounts"][0] == {"name": "data", "mountPath": "/var/lib/brook"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "kafka"
    assert pod["automountServiceAccountToken"] is False
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_brokers_meet_on_the_internal_listener_with_the_cluster_secret() -> None:
    pod = pod_spec()
    container = pod["containers"][0]
    env = container_env()
    assert env["BROOK_INTERNAL_LISTEN"]["value"] == "$(POD_IP):9094"
    assert env["BROOK_INTERNAL_ADVERTISED_LISTENER"]["value"] == (
        "$(POD_NAME).kafka-brokers.$(POD_NAMESPACE).svc.cluster.local:9094"
    )
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["internal"] == 9094
    # The secret's file is a key of the Broker's Secret, mounted read-only (no env value
    # that `kubectl describe` or a process listing would show).
    secret = cluster_secret("kafka", "prod", "s3cret")
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] == "kafka-cluster-secret"
    assert volume["secret"]["defaultMode"] == 0o440
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    [key] = secret["data"]
    assert env["BROOK_CLUSTER_SECRET_FILE"]["value"] == f"{mount['mountPath']}/{key}"
    assert base64.b64decode(secret["data"][key]) == b"s3cret"
    assert not any("secretKeyRef" in item.get("valueFrom", {}) for item in env.values())
    # The broker itself accepts the addresses, once the pod's variables are expanded.
    pod_values = {"POD_IP": "10.0.0.7", "POD_NAME": "kafka-1", "POD_NAMESPACE": "prod"}
    internal = {}
    for variable in ("BROOK_INTERNAL_LISTEN", "BROOK_INTERNAL_ADVERTISED_LISTENER"):
        internal[variable] = re.sub(
            r"\$\((\w+)\)", lambda m: pod_values[m[1]], env[variable]["value"]
        )
    config = load_config([], internal)
    assert config.internal_address == ("10.0.0.7", 9094)
    assert config.internal_advertised_listener == (
        "kafka-1.kafka-brokers.prod.svc.cluster.local:9094"
    )


OWNER = {"apiVersion": "brook.dev/v1alpha1", "kind": "Broker", "name": "kafka", "uid": "b1"}


def owned_secret(value: str) -> dict[str, Any]:
    """The cluster secret as the operator creates it (owner reference added)."""
    secret = cluster_secret("kafka", "prod", value)
    secret["metadata"]["ownerReferences"] = [{**OWNER, "controller": True}]
    return secret


def test_the_operators_own_cluster_secret_is_left_alone() -> None:
    live = served(owned_secret("first"))
    assert adopt_cluster_secret(live, owned_secret("second")) is None


def test_an_existing_cluster_secret_is_adopted_with_its_value() -> None:
    live = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kafka-cluster-secret", "namespace": "prod", "uid": "s1"},
        "data": {"cluster-secret": base64.b64encode(b"chosen").decode()},
    }
    patch = adopt_cluster_secret(live, owned_secret("generated"))
    assert patch is not None
    assert "data" not in patch
    assert patch["metadata"]["ownerReferences"] == [{**OWNER, "controller": True}]
    assert patch["metadata"]["labels"]["app.kubernetes.io/instance"] == "kafka"
    adopted = {**live, "metadata": {**live["metadata"], **patch["metadata"]}}
    assert adopt_cluster_secret(adopted, owned_secret("again")) is None


def test_a_cluster_secret_without_a_value_gets_one_and_keeps_its_owners() -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "o1", "controller": True}
    live = served(owned_secret("unused"))
    live["metadata"]["ownerReferences"] = [other]
    live["data"] = {"cluster-secret": ""}
    patch = adopt_cluster_secret(live, owned_secret("generated"))
    assert patch is not None
    assert base64.b64decode(patch["data"]["cluster-secret"]) == b"generated"
    # One controller at most: the Broker is added as a plain owner.
    assert patch["metadata"]["ownerReferences"] == [other, {**OWNER, "controller": False}]


def test_volume_claims_take_size_and_storage_class() -> None:
    claim = objects()["StatefulSet/kafka"]["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in claim["spec"]
    claim = objects({"storage": {"size": "50Gi", "storageClassName": "fast"}})["StatefulSet/kafka"]
    claim_spec = claim["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim_spec["resources"]["requests"]["storage"] == "50Gi"
    assert claim_spec["storageClassName"] == "fast"


def test_rack_adds_the_node_name_and_a_zone_spread() -> None:
    env = container_env({"rack": {"enabled": True, "topologyKey": "example.com/rack"}})
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["BROOK_RACK_TOPOLOGY_KEY"]["value"] == "example.com/rack"
    pod = pod_spec({"rack": {"enabled": True}})
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert pod["automountServiceAccountToken"] is True
    assert "NODE_NAME" not in container_env()


def test_a_rack_aware_brokers_account_is_bound_to_read_nodes() -> None:
    rack = {"rack": {"enabled": True}}
    found = objects(rack, rack_role="brook-broker-rack")
    binding = found.pop("ClusterRoleBinding/brook-rack.prod.kafka")
    assert "namespace" not in binding["metadata"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "brook-broker-rack",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kafka", "namespace": "prod"}]
    assert list(found) == list(objects())
    # Without a role to bind, or without rack awareness, nothing cluster-scoped is made.
    assert list(objects(rack)) == list(objects())
    assert list(objects(rack_role="brook-broker-rack")) == list(objects())


def test_pod_disruption_budget_and_resources() -> None:
    found = objects(
        {"podDisruptionBudget": {"maxUnavailable": 0}, "resources": {"limits": {"memory": "1Gi"}}}
    )
    assert found["PodDisruptionBudget/kafka"]["spec"]["maxUnavailable"] == 0
    assert found["StatefulSet/kafka"]["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "1Gi"}
    }


# --- broker settings ------------------------------------------------------------------------


def test_config_becomes_broker_variables_the_broker_reads() -> None:
    spec = BrokerSpec.parse(
        {
            "config": {
                "log.retention.ms": " 3600000",
                "num.partitions": "6",
                "auto.create.topics.enable": "FALSE",
                "min.insync.replicas": "2",
                "log.cleanup.policy": "compact, delete",
            }
        },
        IMAGE,
    )
    env = broker_env(spec)
    assert env == {
        "BROOK_LOG_RETENTION_MS": "3600000",
        "BROOK_NUM_PARTITIONS": "6",
        "BROOK_AUTO_CREATE_TOPICS": "false",
        "BROOK_MIN_INSYNC_REPLICAS": "2",
        "BROOK_LOG_CLEANUP_POLICY": "compact,delete",
    }
    config = load_config([], env)
    assert config.log_cleanup_policy == "compact,delete"
    assert (config.log_retention_ms, config.num_partitions) == (3600000, 6)
    assert (config.auto_create_topics, config.min_insync_replicas) == (False, 2)
    assert objects({"config": {"num.partitions": "6"}})["ConfigMap/kafka-config"]["data"] == {
        "BROOK_NUM_PARTITIONS": "6"
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"log.retention.hours": "1"}, "log.retention.hours is not a broker setting Brook knows"),
        ({"node.id": "3"}, "node.id is set by the operator for each broker"),
        ({"listeners": "PLAINTEXT://:9092"}, "listeners is set by the operator"),
        ({"num.partitions": "many"}, "invalid value 'many' for num.partitions: not a number"),
        ({"num.partitions": "0"}, "invalid value '0' for num.partitions: expected a number"),
        ({"log.retention.ms": "-2"}, "invalid value '-2' for log.retention.ms"),
        ({"auto.create.topics.enable": "yes please"}, "expected true or false"),
        ({"log.cleanup.policy": "shrink"}, "Every policy must be one of: compact, delete"),
        ({"compression.type": "gzip"}, "only producer is supported"),
        ({"default.replication.factor": "5"}, "default.replication.factor 5 is above the 3"),
    ],
)
def test_refused_config_says_why(config: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        broker_env(BrokerSpec.parse({"config": config}, IMAGE))
    assert refused.value.reason == "InvalidConfig"
    assert message in refused.value.message


def test_every_refused_setting_is_named_at_once() -> None:
    spec = BrokerSpec.parse({"config": {"bogus.one": "1", "num.partitions": "x"}}, IMAGE)
    with pytest.raises(InvalidSpec) as refused:
        broker_env(spec)
    assert "bogus.one" in refused.value.message
    assert "num.partitions" in refused.value.message


def test_spec_defaults_and_refusals() -> None:
    spec = BrokerSpec.parse({}, IMAGE)
    assert (spec.replicas, spec.storage_size, spec.max_unavailable) == (3, "10Gi", 1)
    with pytest.raises(InvalidSpec, match="replicas must be at least 1"):
        BrokerSpec.parse({"replicas": 0}, IMAGE)
    with pytest.raises(InvalidSpec, match="replicas must be a whole number"):
        BrokerSpec.parse({"replicas": "three"}, IMAGE)


def test_a_config_change_rolls_the_pods() -> None:
    def config_hash(config: dict[str, str]) -> str:
        template = objects({"config": config})["StatefulSet/kafka"]["spec"]["template"]
        return template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    assert config_hash({"num.partitions": "3"}) == config_hash({"num.partitions": " 3"})
    assert config_hash({"num.partitions": "3"}) != config_hash({"num.partitions": "4"})


# --- updates -------------------------------------------------------------------------------


def served(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server returns it: with fields of its own."""
    live = {**obj, "metadata": {**obj["metadata"], "uid": "u1", "resourceVersion": "7"}}
    if obj["kind"] == "Service":
        live["spec"] = {**obj["spec"], "clusterIP": obj["spec"].get("clusterIP", "10.0.0.9")}
        live["spec"]["ports"] = [{**port, "nodePort": None} for port in obj["spec"]["ports"]]
    return live


def test_an_object_as_served_needs_no_update() -> None:
    for obj in objects().values():
        assert not needs_update(served(obj), obj), obj["kind"]


def test_scaling_patches_the_replicas() -> None:
    live = served(objects()["StatefulSet/kafka"])
    wanted = objects({"replicas": 5})["StatefulSet/kafka"]
    assert needs_update(live, wanted)
    patch = update_patch(live, wanted)
    assert patch["spec"]["replicas"] == 5
    assert "volumeClaimTemplates" not in patch["spec"]
    assert "serviceName" not in patch["spec"]
    assert immutable_changes(live, wanted) == []


def test_storage_changes_are_reported_not_patched() -> None:
    live = served(objects()["StatefulSet/kafka"])
    wanted = objects({"storage": {"size": "20Gi"}})["StatefulSet/kafka"]
    assert immutable_changes(live, wanted) == ["spec.volumeClaimTemplates"]
    assert not needs_update(live, wanted)


def test_removed_settings_leave_the_config_map() -> None:
    live = served(
        objects({"config": {"num.partitions": "3", "log.retention.ms": "1000"}})[
            "ConfigMap/kafka-config"
        ]
    )
    wanted = objects({"config": {"num.partitions": "3"}})["ConfigMap/kafka-config"]
    assert needs_update(live, wanted)
    assert update_patch(live, wanted)["data"] == {
        "BROOK_NUM_PARTITIONS": "3",
        "BROOK_LOG_RETENTION_MS": None,
    }
