"""The Kubernetes API calls of the Broker controller: create a Broker's objects that are
missing, patch those that differ from their manifests, adopt the cluster secret, delete
a pod or the rack binding, write the status.

Diffs start from the object the indexes hold (:mod:`brook_operator.broker_index`): one
equal to its manifest costs no request. One that looks missing or changed is read again
before it is written, so an index a moment behind a write of ours (the watch event not
in yet) sends neither a second patch nor a second event. The calls block: the controller
runs them in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .broker_resources import (
    GROUP,
    VERSION,
    adopt_cluster_secret,
    immutable_changes,
    needs_update,
    rack_binding_name,
    update_patch,
)

MERGE_PATCH = "application/merge-patch+json"
CREATED, UPDATED, ADOPTED, UNCHANGED = "created", "updated", "adopted", "unchanged"


@dataclass(frozen=True)
class Outcome:
    action: str
    """CREATED, UPDATED, ADOPTED (the cluster secret) or UNCHANGED."""
    live: Mapping[str, Any] | None = None
    """The object as it was before an update."""
    kept: tuple[str, ...] = ()
    """Fields that differ but cannot change on an existing object."""


@dataclass(frozen=True)
class _Calls:
    """One kind's read, create and merge patch, each taking (name, namespace) first as
    namespaced objects do; a cluster-scoped kind ignores the namespace."""

    read: Callable[[str, str], Any]
    create: Callable[[str, Any], Any]
    patch: Callable[[str, str, Any], Any]
    serialize: Callable[[Any], Any]


_Call = Callable[..., Any]
_Core, _Apps, _Policy = client.CoreV1Api, client.AppsV1Api, client.PolicyV1Api
_NAMESPACED: dict[str, tuple[type[Any], _Call, _Call, _Call]] = {
    # kind: (API, read, create, patch)
    "ServiceAccount": (_Core, _Core.read_namespaced_service_account,
                       _Core.create_namespaced_service_account,
                       _Core.patch_namespaced_service_account),
    "ConfigMap": (_Core, _Core.read_namespaced_config_map, _Core.create_namespaced_config_map,
                  _Core.patch_namespaced_config_map),
    "Service": (_Core, _Core.read_namespaced_service, _Core.create_namespaced_service,
                _Core.patch_namespaced_service),
    "StatefulSet": (_Apps, _Apps.read_namespaced_stateful_set,
                    _Apps.create_namespaced_stateful_set, _Apps.patch_namespaced_stateful_set),
    "PodDisruptionBudget": (_Policy, _Policy.read_namespaced_pod_disruption_budget,
                            _Policy.create_namespaced_pod_disruption_budget,
                            _Policy.patch_namespaced_pod_disruption_budget),
}  # fmt: skip


def _calls(kind: str) -> _Calls:
    if kind == "ClusterRoleBinding":
        rbac = client.RbacAuthorizationV1Api()
        return _Calls(
            read=lambda name, _: rbac.read_cluster_role_binding(name),
            create=lambda _, body: rbac.create_cluster_role_binding(body),
            patch=lambda name, _, body: rbac.patch_cluster_role_binding(
                name, body, _content_type=MERGE_PATCH
            ),
            serialize=rbac.api_client.sanitize_for_serialization,
        )
    if kind not in _NAMESPACED:
        raise ValueError(f"a Broker owns no {kind}")
    api_class, read, create, patch = _NAMESPACED[kind]
    api = api_class()
    return _Calls(
        read=lambda name, namespace: read(api, name, namespace),
        create=lambda namespace, body: create(api, namespace, body),
        patch=lambda name, namespace, body: patch(
            api, name, namespace, body, _content_type=MERGE_PATCH
        ),
        serialize=api.api_client.sanitize_for_serialization,
    )


def apply_object(manifest: Mapping[str, Any], cached: Mapping[str, Any] | None) -> Outcome:
    """Create the object, or patch it where it differs from the manifest; ``cached`` is
    the object as the index holds it (None: not there)."""
    if cached is not None and not needs_update(cached, manifest):
        return Outcome(UNCHANGED, cached, tuple(immutable_changes(cached, manifest)))
    calls = _calls(manifest["kind"])
    name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace", "")
    try:
        live = calls.serialize(calls.read(name, namespace))
    except ApiException as error:
        if error.status != 404:
            raise
        calls.create(namespace, dict(manifest))
        return Outcome(CREATED)
    kept = tuple(immutable_changes(live, manifest))
    if not needs_update(live, manifest):
        return Outcome(UNCHANGED, live, kept)
    calls.patch(name, namespace, update_patch(live, manifest))
    return Outcome(UPDATED, live, kept)


def apply_cluster_secret(desired: Any) -> Outcome:
    """Create the cluster secret with ``desired``'s fresh value, or adopt the one that
    exists (its value kept: see ``adopt_cluster_secret``). Read every time: the operator
    may not watch secrets. ``desired`` is a manifest (the client takes plain dicts)."""
    api = client.CoreV1Api()
    name, namespace = desired["metadata"]["name"], desired["metadata"]["namespace"]
    try:
        found = api.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        try:
            api.create_namespaced_secret(namespace, desired)
            return Outcome(CREATED)
        except ApiException as conflict:
            if conflict.status != 409:  # made meanwhile by someone else: adopt it
                raise
            found = api.read_namespaced_secret(name, namespace)
    live = api.api_client.sanitize_for_serialization(found)
    patch = adopt_cluster_secret(live, desired)
    if patch is None:
        return Outcome(UNCHANGED, live)
    api.patch_namespaced_secret(name, namespace, patch, _content_type=MERGE_PATCH)
    return Outcome(ADOPTED, live)


def delete_rack_binding(name: str, namespace: str) -> bool:
    """Whether there was one to delete."""
    try:
        client.RbacAuthorizationV1Api().delete_cluster_role_binding(
            rack_binding_name(name, namespace)
        )
    except ApiException as error:
        if error.status != 404:
            raise
        return False
    return True


def delete_pod(name: str, namespace: str) -> None:
    client.CoreV1Api().delete_namespaced_pod(name, namespace)


def patch_status(plural: str, name: str, namespace: str, changes: Mapping[str, Any]) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": changes}, _content_type=MERGE_PATCH
    )
