"""The CRDs in crds/ and the examples in examples/: what the API server accepts, what it
fills in, and what it refuses before the operator sees anything."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from brook_broker.metadata.topic_config import BROKER_SETTINGS, TOPIC_CONFIGS

from tests.support.crds import (
    EXAMPLES_DIRECTORY,
    Schema,
    admitted,
    apply_defaults,
    cel_errors,
    crd_files,
    load_crds,
    served_schema,
    strict_json_schema,
    validation_errors,
    walk,
)

CRDS = load_crds()
OLDEST_KUBERNETES = "1.29"  # Chart.yaml's kubeVersion: CEL validation rules are GA there
NEWEST_KUBERNETES = kubernetes_validate.latest_version()

EXPECTED_NAMES = {
    "Broker": ("brokers", "broker", ["brk"]),
    "Topic": ("topics", "topic", ["kt"]),
    "ConsumerGroup": ("consumergroups", "consumergroup", ["kcg"]),
}

# Keywords a structural schema may not use (apiextensions.k8s.io/v1 refuses them).
FORBIDDEN_KEYWORDS = {"$ref", "definitions", "dependencies", "patternProperties", "id", "$schema"}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES_DIRECTORY / name).read_text())


def resource(kind: str, spec: dict[str, Any], name: str = "sample") -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def test_one_file_per_kind_named_after_the_crd() -> None:
    assert sorted(path.name for path in crd_files()) == [
        "brokers.brook.dev.yaml",
        "consumergroups.brook.dev.yaml",
        "topics.brook.dev.yaml",
    ]
    for path in crd_files():
        crd = yaml.safe_load(path.read_text())
        assert path.name == f"{crd['metadata']['name']}.yaml"


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("path", crd_files(), ids=lambda path: path.name)
def test_crd_is_a_valid_apiextensions_v1_object(path: Path, version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_names_group_and_scope(kind: str) -> None:
    crd = CRDS[kind]
    plural, singular, short_names = EXPECTED_NAMES[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.brook.dev"
    assert spec["group"] == "brook.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": short_names,
        "categories": ["brook"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def structural_problems(schema: Schema) -> list[str]:
    problems = []
    for path, node in walk(schema):
        keeps_anything = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        if "type" not in node and not keeps_anything:
            problems.append(f"{path or '.'}: no type")
        if forbidden := FORBIDDEN_KEYWORDS & node.keys():
            problems.append(f"{path}: uses {sorted(forbidden)}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("uniqueItems"):
            problems.append(f"{path}: uniqueItems is refused; use x-kubernetes-list-type: set")
        if node.get("type") == "object" and "items" in node:
            problems.append(f"{path}: an object with items")
        if path.startswith(".metadata") and (path != ".metadata" or set(node) != {"type"}):
            problems.append(f"{path}: metadata may only be declared as type: object")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys", [])
            required = node.get("items", {}).get("required", [])
            if not keys or not set(keys) <= set(required):
                problems.append(f"{path}: list-map keys {keys} must be required item fields")
    return problems


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_schema_is_structural(kind: str) -> None:
    assert structural_problems(served_schema(CRDS[kind])) == []


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_every_default_is_valid_for_its_own_field(kind: str) -> None:
    """The API server refuses a CRD whose defaults fail their own schema."""
    for path, node in walk(served_schema(CRDS[kind])):
        if "default" in node:
            defaulted = apply_defaults(node, node["default"])
            validator = jsonschema.Draft7Validator(strict_json_schema(node))
            assert [e.message for e in validator.iter_errors(defaulted)] == [], path


def schema_at(schema: Schema, json_path: str) -> Schema | None:
    node: Schema | None = schema
    for part in re.findall(r"\.([A-Za-z]+)(\[[^\]]*\])?", json_path):
        name, index = part
        node = (node or {}).get("properties", {}).get(name)
        if node is not None and index:
            node = node.get("items")
    return node


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_printer_columns_show_declared_fields_of_their_type(kind: str) -> None:
    """A column on a misspelled path stays blank in ``kubectl get`` without any error."""
    schema = served_schema(CRDS[kind])
    [version] = CRDS[kind]["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        field = schema_at(schema, column["jsonPath"])
        assert field is not None, f"{column['name']}: {column['jsonPath']} is not in the schema"
        assert field["type"] == column["type"], column["name"]


def test_printer_columns_of_the_contract() -> None:
    def names(kind: str) -> list[str]:
        [version] = CRDS[kind]["spec"]["versions"]
        return [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]

    assert names("Broker") == ["Replicas", "Ready", "Controller", "Under-Replicated", "Age"]
    assert names("Topic") == ["Cluster", "Topic", "Partitions", "RF", "Min-ISR", "Ready", "Age"]
    assert names("ConsumerGroup") == ["Cluster", "Group", "Lag", "Replicas", "Desired", "Age"]


@pytest.mark.parametrize(
    ("file", "kind"),
    [("broker.yaml", "Broker"), ("topic.yaml", "Topic"), ("consumergroup.yaml", "ConsumerGroup")],
)
def test_example_is_admitted(file: str, kind: str) -> None:
    manifest = example(file)
    assert manifest["kind"] == kind
    assert manifest["apiVersion"] == "brook.dev/v1alpha1"
    admitted(CRDS[kind], manifest)


def test_examples_are_the_cluster_topic_and_group_of_the_readme() -> None:
    broker = admitted(CRDS["Broker"], example("broker.yaml"))
    topic = admitted(CRDS["Topic"], example("topic.yaml"))
    group = admitted(CRDS["ConsumerGroup"], example("consumergroup.yaml"))
    assert broker["spec"]["replicas"] == 3
    assert (
        topic["spec"]["partitions"],
        topic["spec"]["replicationFactor"],
        topic["spec"]["minInsyncReplicas"],
    ) == (6, 3, 2)
    assert topic["spec"]["cluster"] == group["spec"]["cluster"] == broker["metadata"]["name"]
    assert group["spec"]["topics"] == [topic["metadata"]["name"]]


def test_example_configs_use_names_the_broker_knows() -> None:
    broker_names = {setting.name for setting in BROKER_SETTINGS}
    assert set(example("broker.yaml")["spec"]["config"]) <= broker_names
    assert set(example("topic.yaml")["spec"]["config"]) <= set(TOPIC_CONFIGS)


def test_broker_defaults() -> None:
    broker = admitted(CRDS["Broker"], resource("Broker", {}))
    assert broker["spec"] == {
        "replicas": 3,
        "storage": {"size": "10Gi"},
        "rack": {"enabled": False, "topologyKey": "topology.kubernetes.io/zone"},
        "podDisruptionBudget": {"maxUnavailable": 1},
    }


def test_broker_spec_may_be_left_out() -> None:
    manifest = resource("Broker", {})
    del manifest["spec"]
    assert admitted(CRDS["Broker"], manifest)["spec"]["replicas"] == 3


def test_topic_defaults() -> None:
    topic = admitted(CRDS["Topic"], resource("Topic", {"cluster": "demo"}))
    assert topic["spec"] == {
        "cluster": "demo",
        "partitions": 1,
        "replicationFactor": 3,
        "minInsyncReplicas": 2,
        "deletionPolicy": "Delete",
    }


def test_consumer_group_defaults() -> None:
    spec = {"cluster": "demo", "groupId": "g", "topics": ["t"], "scaleTargetRef": {"name": "w"}}
    group = admitted(CRDS["ConsumerGroup"], resource("ConsumerGroup", {**spec, "maxReplicas": 4}))
    assert group["spec"] == {
        **spec,
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 4,
        "minReplicas": 1,
        "lagPerReplica": 1000,
        "offsetReset": "latest",
        "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 300,
        "intervalSeconds": 10,
        "cooldownSeconds": 30,
        "stuckPartitionSeconds": 300,
        "scaleToZero": False,
    }


def test_topic_specs_the_operator_judges_are_admitted() -> None:
    """min ISR above RF and RF above the broker count are refused by the operator, with a
    condition saying why, not by the API server."""
    spec = {"cluster": "demo", "partitions": 6, "replicationFactor": 5, "minInsyncReplicas": 6}
    admitted(CRDS["Topic"], resource("Topic", spec))


def test_topic_name_may_use_kafka_characters() -> None:
    spec = {"cluster": "demo", "topicName": "Orders_v2.eu-west"}
    admitted(CRDS["Topic"], resource("Topic", spec))


REFUSED = [
    ("Broker", {"replicas": 0}, "$.spec.replicas: 0 is less than the minimum of 1"),
    ("Broker", {"replica": 3}, "$.spec: Additional properties are not allowed ('replica'"),
    ("Broker", {"storage": {"size": "ten gigs"}}, "$.spec.storage.size: 'ten gigs' does not"),
    ("Broker", {"config": {"num.partitions": 3}}, "$.spec.config['num.partitions']: 3 is not of"),
    ("Broker", {"podDisruptionBudget": {"maxUnavailable": -1}}, "maxUnavailable: -1 is less"),
    ("Broker", {"rack": {"enabled": "yes"}}, "$.spec.rack.enabled: 'yes' is not of type"),
    ("Topic", {"partitions": 6}, "$.spec: 'cluster' is a required property"),
    ("Topic", {"cluster": "demo", "partitions": 0}, "$.spec.partitions: 0 is less than"),
    ("Topic", {"cluster": "demo", "replicationFactor": 0}, "replicationFactor: 0 is less"),
    ("Topic", {"cluster": "demo", "minInsyncReplicas": 0}, "minInsyncReplicas: 0 is less"),
    ("Topic", {"cluster": "demo", "topicName": "a/b"}, "$.spec.topicName: 'a/b' does not match"),
    ("Topic", {"cluster": "demo", "topicName": "x" * 250}, "$.spec.topicName: 'xxxx"),
    ("Topic", {"cluster": "demo", "deletionPolicy": "Keep"}, "'Keep' is not one of"),
    ("Topic", {"cluster": "demo", "config": {"retention.ms": 1}}, "['retention.ms']: 1 is not of"),
    (
        "ConsumerGroup",
        {"cluster": "demo", "groupId": "g", "topics": ["t"], "scaleTargetRef": {"name": "w"}},
        "$.spec: 'maxReplicas' is a required property",
    ),
    (
        "ConsumerGroup",
        {
            "cluster": "demo",
            "groupId": "g",
            "topics": [],
            "scaleTargetRef": {"name": "w"},
            "maxReplicas": 2,
            "offsetReset": "middle",
        },
        "'middle' is not one of ['latest', 'earliest']",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "error"), REFUSED, ids=range(len(REFUSED)))
def test_refused_by_the_api_server(kind: str, spec: dict[str, Any], error: str) -> None:
    errors = validation_errors(CRDS[kind], resource(kind, spec))
    assert any(error in message for message in errors), errors


def test_empty_topic_list_is_refused() -> None:
    spec = {
        "cluster": "demo",
        "groupId": "g",
        "topics": [],
        "scaleTargetRef": {"name": "w"},
        "maxReplicas": 2,
    }
    errors = validation_errors(CRDS["ConsumerGroup"], resource("ConsumerGroup", spec))
    assert errors == ["$.spec.topics: [] should be non-empty"]


def test_status_holds_what_the_operator_reports() -> None:
    """Status fields the schema does not declare would be dropped silently on write."""
    broker = resource("Broker", {})
    broker["status"] = {
        "replicas": 3,
        "readyReplicas": 2,
        "controller": None,
        "bootstrap": "demo.default.svc.cluster.local:9092",
        "underReplicatedPartitions": 4,
        "underMinIsrPartitions": 0,
        "offlinePartitions": 0,
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "BrokersStarting",
                "message": "2 of 3 brokers are ready",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        ],
    }
    topic = resource("Topic", {"cluster": "demo"})
    topic["status"] = {
        "topicName": "sample",
        "topicId": "0jWj0ya1SxGgCeCq8OB8QA",
        "partitions": [
            {"partition": 0, "leader": 1, "replicas": [1, 2, 0], "isr": [1, 2]},
            {"partition": 1, "leader": None, "replicas": [2, 0, 1], "isr": []},
        ],
        "underReplicatedPartitions": 2,
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Reconciled", "message": ""},
            {"type": "Warning", "status": "True", "reason": "MinIsrEqualsReplicationFactor"},
        ],
    }
    group = resource(
        "ConsumerGroup",
        {"cluster": "d", "groupId": "g", "topics": ["t"], "scaleTargetRef": {"name": "w"}},
    )
    group["spec"]["maxReplicas"] = 3
    group["status"] = {
        "partitions": [
            {"topic": "t", "partition": 0, "committedOffset": None, "logEndOffset": 9, "lag": 9}
        ],
        "totalLag": 9,
        "lagGrowthPerSecond": -1.5,
        "replicas": 1,
        "desiredReplicas": 2,
        "lastScaleTime": "2025-01-01T00:00:00Z",
        "observedGeneration": 1,
        "conditions": [],
    }
    for manifest in (broker, topic, group):
        assert admitted(CRDS[manifest["kind"]], manifest)["status"] == manifest["status"]


def test_unknown_status_fields_are_refused_here_as_the_server_would_drop_them() -> None:
    topic = resource("Topic", {"cluster": "demo"})
    topic["status"] = {"leaders": [1, 2]}
    assert validation_errors(CRDS["Topic"], topic) == [
        "$.status: Additional properties are not allowed ('leaders' was unexpected)"
    ]


def test_defaults_do_not_overwrite_given_values() -> None:
    spec = {"replicas": 5, "rack": {"enabled": True}, "storage": {"size": "1Ti"}}
    broker = admitted(CRDS["Broker"], resource("Broker", copy.deepcopy(spec)))
    assert broker["spec"]["replicas"] == 5
    assert broker["spec"]["rack"] == {"enabled": True, "topologyKey": "topology.kubernetes.io/zone"}
    assert broker["spec"]["storage"] == {"size": "1Ti"}


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    environment = celpy.Environment()
    for kind, crd in CRDS.items():
        for path, node in walk(served_schema(crd)):
            for rule in node.get("x-kubernetes-validations", []):
                environment.compile(rule["rule"])
                assert rule["message"].strip(), f"{kind} {path}: {rule['rule']}"


@pytest.mark.parametrize(
    ("name", "refused"),
    [("demo", False), ("a" * 52, False), ("a" * 53, True), ("Demo", True), ("1demo", True)],
)
def test_broker_name_must_fit_its_statefulset_and_services(name: str, refused: bool) -> None:
    errors = cel_errors(CRDS["Broker"], resource("Broker", {}, name=name))
    assert bool(errors) == refused, errors
    if refused:
        assert "at most 52 characters" in errors[0]


def test_long_topic_resource_name_needs_a_topic_name() -> None:
    long_name = "t" * 250
    errors = cel_errors(CRDS["Topic"], resource("Topic", {"cluster": "demo"}, name=long_name))
    assert errors == [
        ".: a Kafka topic name has at most 249 characters: set spec.topicName or use a "
        "shorter metadata.name"
    ]
    named = resource("Topic", {"cluster": "demo", "topicName": "t"}, name=long_name)
    assert cel_errors(CRDS["Topic"], named) == []


@pytest.mark.parametrize("topic_name", [".", ".."])
def test_dot_topic_names_are_refused(topic_name: str) -> None:
    topic = resource("Topic", {"cluster": "demo", "topicName": topic_name})
    assert cel_errors(CRDS["Topic"], topic) == [
        ".spec.topicName: Kafka does not allow the topic names '.' and '..'"
    ]


@pytest.mark.parametrize(
    ("kind", "old_spec", "new_spec", "message"),
    [
        (
            "Topic",
            {"cluster": "demo"},
            {"cluster": "other"},
            ".spec.cluster: cluster cannot change; create a Topic in the other cluster instead",
        ),
        (
            "Topic",
            {"cluster": "demo", "topicName": "a"},
            {"cluster": "demo", "topicName": "b"},
            ".spec.topicName: topicName cannot change; Kafka topics cannot be renamed",
        ),
        (
            "Broker",
            {"storage": {"size": "10Gi"}},
            {"storage": {"size": "20Gi"}},
            ".spec.storage: storage cannot change once the Broker exists: a StatefulSet's volume"
            " claim templates are immutable",
        ),
    ],
)
def test_fields_fixed_at_creation_refuse_updates(
    kind: str, old_spec: dict[str, Any], new_spec: dict[str, Any], message: str
) -> None:
    old, new = resource(kind, old_spec), resource(kind, new_spec)
    assert cel_errors(CRDS[kind], new, old=old) == [message]
    assert cel_errors(CRDS[kind], new) == []  # creating with those values is fine
    assert cel_errors(CRDS[kind], old, old=old) == []  # re-applying the same spec too


def test_topic_growth_and_replication_changes_pass_the_rules() -> None:
    old = resource("Topic", {"cluster": "demo", "partitions": 6})
    new = resource("Topic", {"cluster": "demo", "partitions": 12, "replicationFactor": 2})
    assert cel_errors(CRDS["Topic"], new, old=old) == []


@pytest.mark.parametrize(
    ("minimum", "maximum", "refused"), [(1, 4, False), (4, 4, False), (5, 4, True)]
)
def test_consumer_group_replica_bounds(minimum: int, maximum: int, refused: bool) -> None:
    spec = {
        "cluster": "demo",
        "groupId": "g",
        "topics": ["t"],
        "scaleTargetRef": {"name": "w"},
        "minReplicas": minimum,
        "maxReplicas": maximum,
    }
    errors = cel_errors(CRDS["ConsumerGroup"], resource("ConsumerGroup", spec))
    assert errors == ([".spec: minReplicas must not exceed maxReplicas"] if refused else [])


@pytest.mark.parametrize("file", ["broker.yaml", "topic.yaml", "consumergroup.yaml"])
def test_examples_pass_the_rules(file: str) -> None:
    manifest = example(file)
    assert cel_errors(CRDS[manifest["kind"]], manifest, old=manifest) == []
