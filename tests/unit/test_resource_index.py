"""What the Topic and ConsumerGroup controllers look up in Kopf's indexes of Brokers and
ConsumerGroups instead of asking the API server at every tick."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from brook_operator.resource_index import (
    BROKER_INDEX,
    CONSUMER_GROUP_INDEX,
    BrokerSeen,
    broker,
    broker_seen,
    consumer_group,
    consumer_groups,
    namespaced,
)


def group(name: str, cluster: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "prod", "generation": 1},
        "spec": {"cluster": cluster, "topics": ["orders"]},
        "status": {"lagGrowthPerSecond": 4.0},
    }


def handler_kwargs() -> dict[str, Any]:
    """A handler's keyword arguments with both indexes as Kopf fills them."""
    brokers: dict[tuple[str, str], list[BrokerSeen]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for namespace, name, spec in [("prod", "main", {"replicas": 5}), ("dev", "main", {})]:
        body = kopf.Body({"spec": spec})
        for key, seen in broker(name=name, namespace=namespace, spec=body.spec).items():
            brokers.setdefault(key, []).append(seen)
    for raw in [group("payments", "main"), group("audit", "main"), group("other", "side")]:
        body = kopf.Body(raw)
        for key, found in consumer_group(body=body, namespace="prod", spec=body.spec).items():
            groups.setdefault(key, []).append(found)
    return {BROKER_INDEX: brokers, CONSUMER_GROUP_INDEX: groups, "logger": None}


def test_a_broker_is_found_by_namespace_and_name_with_the_brokers_it_asks_for() -> None:
    indexes = handler_kwargs()
    assert broker_seen(indexes, "prod", "main") == BrokerSeen(replicas=5)
    assert broker_seen(indexes, "dev", "main") == BrokerSeen(replicas=3)
    assert broker_seen(indexes, "prod", "missing") is None


def test_consumer_groups_are_found_by_the_cluster_they_read_with_their_status() -> None:
    indexes = handler_kwargs()
    found = consumer_groups(indexes, "prod", "main")
    assert sorted(g["metadata"]["name"] for g in found) == ["audit", "payments"]
    assert all(g["status"]["lagGrowthPerSecond"] == 4.0 for g in found)
    assert consumer_groups(indexes, "dev", "main") == []


def test_a_namespaced_object_without_its_namespace_is_a_permanent_error() -> None:
    assert namespaced("prod") == "prod"
    with pytest.raises(kopf.PermanentError):
        namespaced(None)
