"""The emulated API server's object rules, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.kube.pods import expand
from tests.integration.kube.store import (
    JSON_PATCH,
    ApiError,
    ResourceType,
    Store,
    apply_defaults,
    json_patch,
    label_selector_matcher,
    merge_patch,
)

CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True)
WIDGETS = ResourceType(
    "example.dev",
    "v1",
    "widgets",
    "Widget",
    namespaced=True,
    subresources=frozenset({"status"}),
    schema={
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "default": {},
                "properties": {"size": {"type": "integer", "minimum": 1, "default": 3}},
            }
        },
    },
)


@pytest.fixture
def store() -> Store:
    store = Store(history_size=5)
    store.register(CONFIGMAPS)
    store.register(WIDGETS)
    return store


def owner_ref(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": obj["metadata"]["uid"]}]


def test_label_selectors_follow_kubernetes_syntax() -> None:
    matches = label_selector_matcher("app=web, tier in (a, b), !legacy, env!=prod")
    assert matches({"app": "web", "tier": "b"})
    assert not matches({"app": "web", "tier": "c"})
    assert not matches({"app": "web", "tier": "a", "legacy": "1"})
    assert not matches({"app": "web", "tier": "a", "env": "prod"})


def test_json_patch_applies_operations_and_refuses_a_failed_test() -> None:
    document = {"a": {"b": [1, 2]}, "c": "x"}
    patched = json_patch(
        document,
        [
            {"op": "test", "path": "/c", "value": "x"},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "move", "from": "/c", "path": "/d"},
        ],
    )
    assert patched == {"a": {"b": [1, 2, 3]}, "d": "y"}
    assert document == {"a": {"b": [1, 2]}, "c": "x"}, "the original is untouched"


def test_merge_patch_removes_nulls_and_replaces_lists() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]}) == {
        "a": {"c": 2},
        "l": [3],
    }


def test_schema_defaults_fill_absent_fields_only() -> None:
    assert apply_defaults({}, WIDGETS.schema or {}) == {"spec": {"size": 3}}
    assert apply_defaults({"spec": {"size": 7}}, WIDGETS.schema or {}) == {"spec": {"size": 7}}


def test_variables_expand_as_in_a_pod_spec() -> None:
    variables = {"POD_IP": "127.1.0.2"}
    assert expand("$(POD_IP):9092", variables) == "127.1.0.2:9092"
    assert expand("$(UNKNOWN) $$(POD_IP) $$ $", variables) == "$(UNKNOWN) $(POD_IP) $ $"


def test_generation_counts_spec_changes_and_status_stays_apart(store: Store) -> None:
    widget = store.create(WIDGETS, "ns", {"metadata": {"name": "w"}, "status": {"x": 1}})
    assert "status" not in widget and widget["spec"] == {"size": 3}
    store.patch(WIDGETS, "ns", "w", JSON_PATCH, [{"op": "add", "path": "/status", "value": {}}])
    assert "status" not in store.get(WIDGETS, "ns", "w"), "the main resource ignores status"
    store.patch(WIDGETS, "ns", "w", "application/merge-patch+json", {"status": {"x": 2}}, "status")
    assert store.get(WIDGETS, "ns", "w")["metadata"]["generation"] == 1
    store.patch(WIDGETS, "ns", "w", "application/merge-patch+json", {"spec": {"size": 4}})
    assert store.get(WIDGETS, "ns", "w")["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as refused:
        store.patch(WIDGETS, "ns", "w", "application/merge-patch+json", {"spec": {"size": 0}})
    assert refused.value.code == 422


def test_orphaning_delete_unlinks_dependents_and_a_shared_dependent_waits(store: Store) -> None:
    first = store.create(CONFIGMAPS, "ns", {"metadata": {"name": "first"}})
    second = store.create(CONFIGMAPS, "ns", {"metadata": {"name": "second"}})
    refs = owner_ref(first) + owner_ref(second)
    store.create(CONFIGMAPS, "ns", {"metadata": {"name": "shared", "ownerReferences": refs}})
    store.delete(CONFIGMAPS, "ns", "first")
    shared = store.get(CONFIGMAPS, "ns", "shared")
    assert shared["metadata"]["ownerReferences"] == owner_ref(second)
    store.delete(CONFIGMAPS, "ns", "second", propagation="Orphan")
    assert "ownerReferences" not in store.get(CONFIGMAPS, "ns", "shared")


def test_a_watch_from_a_version_older_than_the_history_is_gone(store: Store) -> None:
    for index in range(8):
        store.create(CONFIGMAPS, "ns", {"metadata": {"name": f"c{index}"}})
    assert [e.object["metadata"]["name"] for e in store.events_since(store.revision - 2)] == [
        "c6",
        "c7",
    ]
    with pytest.raises(ApiError) as gone:
        store.events_since(1)
    assert gone.value.code == 410
