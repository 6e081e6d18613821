"""Kopf indexes of Brook's own resources, for the controllers that look them up: each
Broker by its (namespace, name), each ConsumerGroup by (namespace, the Broker it reads).

A Topic round needs its Broker (whether it exists, how many brokers it asks for) and,
with ``partitionAutoscale``, the ConsumerGroups of its cluster; a ConsumerGroup round
needs to know its Broker exists. Kopf keeps these current from the watches it runs for
the controllers anyway, so no round asks the API server for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .broker_resources import GROUP, VERSION

BROKER_INDEX = "brokers"
CONSUMER_GROUP_INDEX = "consumer_groups"
DEFAULT_REPLICAS = 3
"""A Broker's ``spec.replicas`` when it gives none (the CRD's default)."""

NamespacedName = tuple[str, str]
"""A resource's (namespace, name), or a ConsumerGroup's (namespace, cluster)."""


@dataclass(frozen=True)
class BrokerSeen:
    """What other controllers need of a Broker."""

    replicas: int
    """The brokers its spec asks for."""


def namespaced(namespace: str | None) -> str:
    """The namespace Kopf passes for a namespaced object, which always has one."""
    if namespace is None:
        raise kopf.PermanentError("a namespaced object came without its namespace")
    return namespace


@kopf.index(GROUP, VERSION, "brokers", id=BROKER_INDEX)
def broker(
    name: str, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[NamespacedName, BrokerSeen]:
    replicas = int(spec.get("replicas", DEFAULT_REPLICAS))
    return {(namespaced(namespace), name): BrokerSeen(replicas)}


@kopf.index(GROUP, VERSION, "consumergroups", id=CONSUMER_GROUP_INDEX)
def consumer_group(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[NamespacedName, dict[str, Any]]:
    """The whole resource: its status tells how far behind the group is."""
    return {(namespaced(namespace), str(spec.get("cluster", ""))): dict(body)}


def broker_seen(indexes: Mapping[str, Any], namespace: str, name: str) -> BrokerSeen | None:
    """The Broker from a handler's keyword arguments (Kopf passes each index by its id);
    None when there is none of that name."""
    found: list[BrokerSeen] = index_values(indexes[BROKER_INDEX], (namespace, name))
    return found[0] if found else None


def consumer_groups(
    indexes: Mapping[str, Any], namespace: str, cluster: str
) -> list[dict[str, Any]]:
    """The ConsumerGroups of ``namespace`` that read Broker ``cluster``."""
    return index_values(indexes[CONSUMER_GROUP_INDEX], (namespace, cluster))


def index_values(index: Mapping[NamespacedName, Iterable[Any]], key: NamespacedName) -> list[Any]:
    """What a Kopf index holds under ``key``; none when no object gave that key."""
    return list(index[key]) if key in index else []
