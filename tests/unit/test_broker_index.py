"""The Broker controller's view of its objects from Kopf's indexes, and the diff that
spares the API server a request when an indexed object already matches its manifest."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from brook_operator.broker_index import (
    OBJECT_INDEXES,
    POD_INDEX,
    BrokerObjects,
    PodSeen,
    broker_pod,
    owned_object,
)
from brook_operator.broker_resources import BrokerSpec, broker_env, labels, manifests
from brook_operator.owned_objects import UNCHANGED, apply_object
from kubernetes import client
from urllib3.exceptions import MaxRetryError

IMAGE = "registry.example/brook-broker:1.0"


def broker_manifests(name: str = "kafka", replicas: int = 3) -> dict[str, dict[str, Any]]:
    spec = BrokerSpec.parse({"replicas": replicas}, IMAGE)
    return {
        f"{obj['kind']}/{obj['metadata']['name']}": obj
        for obj in manifests(name, "prod", spec, broker_env(spec))
    }


def as_served(manifest: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server keeps it: with fields of its own."""
    served = copy.deepcopy(manifest)
    served["metadata"].update(uid="u-1", resourceVersion="7", generation=1)
    served["status"] = {"observedGeneration": 1}
    return served


def pod(name: str, revision: str, *, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "prod", "uid": f"uid-{name}"}
    meta["labels"] = {**labels("kafka"), "controller-revision-hash": revision}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T21:00:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def index_pod(raw: dict[str, Any]) -> dict[tuple[str, str], PodSeen]:
    meta = raw["metadata"]
    return broker_pod(
        name=meta["name"],
        namespace=meta["namespace"],
        meta=meta,
        labels=meta["labels"],
        status=raw["status"],
    )


def test_owned_objects_are_indexed_whole_under_their_broker() -> None:
    stateful_set = as_served(broker_manifests()["StatefulSet/kafka"])
    indexed = owned_object(
        body=kopf.Body(stateful_set), namespace="prod", labels=stateful_set["metadata"]["labels"]
    )
    assert indexed == {("prod", "kafka"): stateful_set}


def test_a_pod_is_ready_only_with_its_ready_condition_and_not_being_deleted() -> None:
    assert index_pod(pod("kafka-2", "r2", ready=True)) == {
        ("prod", "kafka"): PodSeen("kafka-2", "uid-kafka-2", "r2", ready=True)
    }
    [seen] = index_pod(pod("kafka-2", "r1", ready=True, deleting=True)).values()
    assert (seen.ready, seen.revision, seen.ordinal) == (False, "r1", 2)
    [seen] = index_pod(pod("kafka-0", "r2", ready=False)).values()
    assert not seen.ready


def test_a_broker_sees_only_its_own_objects_and_pods_in_ordinal_order() -> None:
    mine, other = broker_manifests("kafka"), broker_manifests("other")
    indexes: dict[str, dict[tuple[str, str], list[Any]]] = {index: {} for index in OBJECT_INDEXES}
    for owner, found in (("kafka", mine), ("other", other)):
        for obj in found.values():
            index = next(i for i, kind in OBJECT_INDEXES.items() if kind == obj["kind"])
            indexes[index].setdefault(("prod", owner), []).append(as_served(obj))
    pods = [index_pod(pod(f"kafka-{n}", "r1", ready=True)) for n in (10, 2, 0)]
    indexes[POD_INDEX] = {("prod", "kafka"): [p[("prod", "kafka")] for p in pods]}

    seen = BrokerObjects.of(indexes, "prod", "kafka")
    assert sorted(f"{kind}/{name}" for kind, name in seen.objects) == sorted(mine)
    assert seen.get("Service", "kafka-brokers") == as_served(mine["Service/kafka-brokers"])
    assert seen.get("StatefulSet", "other") is None
    assert [p.name for p in seen.pods] == ["kafka-0", "kafka-2", "kafka-10"]
    # Another namespace's Broker of the same name has nothing yet.
    assert BrokerObjects.of(indexes, "staging", "kafka") == BrokerObjects({}, ())


@pytest.fixture
def unreachable_api_server() -> Iterator[None]:
    """Any request the client makes fails: a port nothing listens on."""
    before = client.Configuration.get_default_copy()
    configuration = client.Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    client.Configuration.set_default(configuration)
    yield
    client.Configuration.set_default(before)


def test_an_indexed_object_that_matches_costs_no_request(unreachable_api_server: None) -> None:
    for manifest in broker_manifests().values():
        outcome = apply_object(manifest, as_served(manifest))
        assert (outcome.action, outcome.kept) == (UNCHANGED, ())


def test_an_immutable_field_that_differs_is_reported_without_a_request(
    unreachable_api_server: None,
) -> None:
    manifest = broker_manifests()["StatefulSet/kafka"]
    served = as_served(manifest)
    served["spec"]["serviceName"] = "renamed"
    outcome = apply_object(manifest, served)
    assert (outcome.action, outcome.kept) == (UNCHANGED, ("spec.serviceName",))


@pytest.mark.parametrize("change", ["scaled", "missing"])
def test_an_object_that_looks_changed_or_missing_is_read_before_it_is_written(
    unreachable_api_server: None, change: str
) -> None:
    manifest = broker_manifests(replicas=4)["StatefulSet/kafka"]
    cached = None if change == "missing" else as_served(broker_manifests()["StatefulSet/kafka"])
    # The object's own URL (a create would post to the collection's).
    with pytest.raises(
        MaxRetryError, match=r"url: /apis/apps/v1/namespaces/prod/statefulsets/kafka "
    ):
        apply_object(manifest, cached)
