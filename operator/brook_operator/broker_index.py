"""Kopf indexes of what each Broker owns in Kubernetes: its ServiceAccount, ConfigMap,
Services, StatefulSet, PodDisruptionBudget, and its pods.

Kopf keeps them current from one watch per kind, so a round of the Broker controller
reads its objects from memory instead of asking the API server for each of them every
few seconds. Objects are found by the labels every Broker object carries; the key is the
Broker's (namespace, name). The cluster secret and the rack ClusterRoleBinding are not
indexed: the operator may read them by name only, never list or watch them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .broker_resources import selector_labels
from .resource_index import NamespacedName, index_values, namespaced

INSTANCE_LABEL = "app.kubernetes.io/instance"
REVISION_LABEL = "controller-revision-hash"
_BROKER_LABELS: dict[str, Any] = {**selector_labels(""), INSTANCE_LABEL: kopf.PRESENT}
"""Every Broker's objects: the selector labels with any instance (Broker) name."""

ObjectKey = tuple[str, str]
"""An owned object's (kind, name)."""


@dataclass(frozen=True)
class PodSeen:
    """What a rolling restart needs to know of a broker pod."""

    name: str
    uid: str
    revision: str | None
    """Its ``controller-revision-hash``: the StatefulSet template it was made from."""
    ready: bool
    """Ready and not being deleted."""

    @property
    def ordinal(self) -> int:
        return int(self.name.rsplit("-", 1)[1])


OBJECT_INDEXES = {
    "broker_service_accounts": "ServiceAccount",
    "broker_config_maps": "ConfigMap",
    "broker_services": "Service",
    "broker_stateful_sets": "StatefulSet",
    "broker_disruption_budgets": "PodDisruptionBudget",
}
"""Each index (by its id, the handler's keyword argument) and the kind it holds."""
POD_INDEX = "broker_pods"


@kopf.index("", "v1", "serviceaccounts", id="broker_service_accounts", labels=_BROKER_LABELS)
@kopf.index("", "v1", "configmaps", id="broker_config_maps", labels=_BROKER_LABELS)
@kopf.index("", "v1", "services", id="broker_services", labels=_BROKER_LABELS)
@kopf.index("apps", "v1", "statefulsets", id="broker_stateful_sets", labels=_BROKER_LABELS)
@kopf.index(
    "policy", "v1", "poddisruptionbudgets", id="broker_disruption_budgets", labels=_BROKER_LABELS
)
def owned_object(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[NamespacedName, dict[str, Any]]:
    """The whole object: its fields are compared with the Broker's manifests."""
    return {(namespaced(namespace), labels[INSTANCE_LABEL]): dict(body)}


@kopf.index("", "v1", "pods", id=POD_INDEX, labels=_BROKER_LABELS)
def broker_pod(
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    labels: kopf.Labels,
    status: kopf.Status,
    **_: Any,
) -> dict[NamespacedName, PodSeen]:
    return {(namespaced(namespace), labels[INSTANCE_LABEL]): pod_seen(name, meta, labels, status)}


def pod_seen(
    name: str, meta: Mapping[str, Any], labels: Mapping[str, str], status: Mapping[str, Any]
) -> PodSeen:
    conditions = status.get("conditions") or ()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return PodSeen(
        name=name,
        uid=str(meta.get("uid")),
        revision=labels.get(REVISION_LABEL),
        ready=ready and meta.get("deletionTimestamp") is None,
    )


@dataclass(frozen=True)
class BrokerObjects:
    """One Broker's objects as the indexes hold them now."""

    objects: Mapping[ObjectKey, Mapping[str, Any]]
    pods: tuple[PodSeen, ...]

    @classmethod
    def of(cls, indexes: Mapping[str, Any], namespace: str, name: str) -> BrokerObjects:
        """From a handler's keyword arguments, where Kopf passes each index by its id."""
        key = (namespace, name)
        return cls(
            objects={
                (kind, obj["metadata"]["name"]): obj
                for index, kind in OBJECT_INDEXES.items()
                for obj in index_values(indexes[index], key)
            },
            pods=tuple(sorted(index_values(indexes[POD_INDEX], key), key=lambda pod: pod.ordinal)),
        )

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        return self.objects.get((kind, name))
