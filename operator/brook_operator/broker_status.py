"""A Broker's status from what was observed: its StatefulSet and its cluster.

``Ready`` is about the brokers: all replicas ready, every one of them registered with an
active controller, and no partition without a leader. Under-replicated (ISR smaller than
the replicas) and under-min-ISR (ISR smaller than the topic's ``min.insync.replicas``:
``acks=all`` producers are refused) partitions are reported as counts, since they come
and go while a broker restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .cluster_view import ClusterView, PartitionView
from .conditions import condition

READY = "Ready"


@dataclass(frozen=True)
class Refusal:
    """The last spec the operator refused: the condition says why until it is fixed."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    replicas: int
    """The replicas the spec asks for."""
    ready_replicas: int
    cluster: ClusterView | None
    cluster_error: str | None = None
    """Why the cluster could not be read (when ``cluster`` is None)."""
    refusal: Refusal | None = None


@dataclass(frozen=True)
class PartitionCounts:
    under_replicated: int
    under_min_isr: int
    offline: int


def partition_counts(partitions: tuple[PartitionView, ...]) -> PartitionCounts:
    return PartitionCounts(
        under_replicated=sum(len(p.isr) < len(p.replicas) for p in partitions),
        under_min_isr=sum(len(p.isr) < p.min_insync_replicas for p in partitions),
        offline=sum(p.leader is None for p in partitions),
    )


def ready_condition(observed: Observed) -> tuple[bool, str, str]:
    """Ready's status, reason and message."""
    if observed.refusal is not None:
        return False, observed.refusal.reason, observed.refusal.message
    wanted, ready = observed.replicas, observed.ready_replicas
    if ready < wanted:
        return False, "BrokersStarting", f"{ready} of {wanted} brokers ready"
    cluster = observed.cluster
    if cluster is None:
        return False, "ClusterUnreachable", observed.cluster_error or "the cluster did not answer"
    if cluster.controller is None:
        return False, "NoController", "the metadata quorum has no active controller"
    missing = sorted(set(range(wanted)) - set(cluster.brokers))
    if missing:
        return (
            False,
            "BrokersNotRegistered",
            f"{wanted - len(missing)} of {wanted} brokers registered with the controller; "
            f"missing: {', '.join(map(str, missing))}",
        )
    offline = partition_counts(cluster.partitions).offline
    if offline:
        return False, "PartitionsOffline", f"{offline} partitions have no leader"
    return (
        True,
        "ClusterReady",
        f"{wanted} of {wanted} brokers ready; broker {cluster.controller} is the controller",
    )


def broker_status(
    observed: Observed,
    *,
    bootstrap: str,
    observed_generation: int | None,
    previous: Mapping[str, Any],
    now: str,
    scaling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole status; the condition's lastTransitionTime moves only when its status
    flips. Counts the cluster could not tell are None (removed by a merge patch).
    ``scaling`` adds the progress of scaling and rolling restarts (``scaling``,
    ``rollingRestart``, ``autoscale``)."""
    ready, reason, message = ready_condition(observed)
    counts = partition_counts(observed.cluster.partitions) if observed.cluster else None
    return {
        "replicas": observed.replicas,
        "readyReplicas": observed.ready_replicas,
        "controller": observed.cluster.controller if observed.cluster else None,
        "bootstrap": bootstrap,
        "underReplicatedPartitions": counts.under_replicated if counts else None,
        "underMinIsrPartitions": counts.under_min_isr if counts else None,
        "offlinePartitions": counts.offline if counts else None,
        "observedGeneration": observed_generation,
        **(scaling or {}),
        "conditions": [
            condition(READY, ready, reason, message, previous.get("conditions") or (), now)
        ],
    }


def status_changes(previous: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``status`` that differ from ``previous``: empty when nothing changed,
    so that an unchanged status is not written."""
    return {key: value for key, value in status.items() if previous.get(key) != value}
