"""Decisions of safe broker scaling, from what the cluster reports: no API calls here.

Scale-out and drains use the broker's own placement (:func:`rebalance`, topic by topic, so
every topic gets onto new brokers), then even out the preferred leaders by reordering
replicas, which moves no data. A scale-in is refused when a topic's replication factor
would exceed the brokers left or when it would remove metadata quorum voters; otherwise
the leaving brokers (the highest ordinals) are drained, and the StatefulSet may shrink
once nothing is on them and every ISR is full. A rolling restart takes one broker at a
time, the active controller last, and only while every partition it hosts keeps
``min.insync.replicas`` in sync without it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from brook_broker.metadata.placement import PartitionKey, PlacementBroker, rebalance
from brook_client.cluster_admin import Reassignment

from .broker_resources import MAX_VOTERS
from .broker_status import Refusal
from .cluster_view import ClusterView, PartitionView

IDLE = "Idle"
REASSIGNING = "Reassigning"
DRAINING = "Draining"
RESTARTING = "Restarting"


# --- moving replicas ---------------------------------------------------------------------


def balance_plan(
    partitions: Iterable[PartitionView], brokers: Sequence[PlacementBroker]
) -> dict[PartitionKey, tuple[int, ...]]:
    """Target replicas (preferred leader first) of the partitions that should change so
    that each topic's replicas and preferred leaders are even over ``brokers`` (and only
    them); partitions already right are left out."""
    by_topic: dict[str, dict[PartitionKey, tuple[int, ...]]] = defaultdict(dict)
    for partition in partitions:
        by_topic[partition.topic][(partition.topic, partition.partition)] = partition.replicas
    nodes = sorted(broker.node_id for broker in brokers)
    targets: dict[PartitionKey, tuple[int, ...]] = {}
    for current in by_topic.values():
        layout = {**current, **rebalance(current, brokers)}
        layout = _balance_leaders(layout, nodes)
        targets.update(
            {key: replicas for key, replicas in layout.items() if replicas != current[key]}
        )
    return targets


def _balance_leaders(
    layout: Mapping[PartitionKey, tuple[int, ...]], nodes: Sequence[int]
) -> dict[PartitionKey, tuple[int, ...]]:
    """Reorder replicas (no data moves) until preferred leaderships differ by at most one
    between brokers, where the replicas allow it: each step hands one leadership from the
    broker leading the most down a chain of partitions to a broker leading two fewer."""
    result = {key: list(replicas) for key, replicas in layout.items()}
    leaders: Counter[int] = Counter(dict.fromkeys(nodes, 0))
    leaders.update(replicas[0] for replicas in result.values() if replicas)
    while True:
        for donor in sorted(nodes, key=lambda node: (-leaders[node], node)):
            chain = _leadership_chain(result, leaders, donor)
            if chain:
                for key, taker in chain:
                    replicas = result[key]
                    position = replicas.index(taker)
                    replicas[0], replicas[position] = taker, replicas[0]
                leaders[donor] -= 1
                leaders[chain[-1][1]] += 1
                break
        else:
            return {key: tuple(replicas) for key, replicas in result.items()}


def _leadership_chain(
    layout: Mapping[PartitionKey, list[int]], leaders: Counter[int], donor: int
) -> list[tuple[PartitionKey, int]]:
    """The shortest chain of (partition, its new preferred leader) from ``donor`` to a
    broker leading at least two fewer; every broker in between keeps its count."""
    led: dict[int, list[PartitionKey]] = defaultdict(list)
    for key in sorted(layout):
        if layout[key]:
            led[layout[key][0]].append(key)
    came_from: dict[int, tuple[int, PartitionKey]] = {}
    queue = [donor]
    for node in queue:
        for key in led[node]:
            for taker in layout[key][1:]:
                if taker == donor or taker in came_from or taker not in leaders:
                    continue
                came_from[taker] = (node, key)
                if leaders[taker] < leaders[donor] - 1:
                    chain = []
                    while taker != donor:
                        giver, through = came_from[taker]
                        chain.append((through, taker))
                        taker = giver
                    return chain[::-1]
                queue.append(taker)
    return []


# --- scale-in ----------------------------------------------------------------------------


def leaving_brokers(current: int, wanted: int) -> tuple[int, ...]:
    """The brokers a scale-in removes: the StatefulSet's highest ordinals."""
    return tuple(range(wanted, current))


def scale_in_refusal(
    partitions: Iterable[PartitionView], current: int, wanted: int
) -> Refusal | None:
    """Why shrinking from ``current`` to ``wanted`` brokers is refused, or None."""
    voters = min(current, MAX_VOTERS)
    if min(wanted, MAX_VOTERS) < voters:
        return Refusal(
            "ScaleInRemovesQuorumVoters",
            f"scaling in from {current} to {wanted} brokers would remove voters of the "
            f"metadata quorum (brokers 0 to {voters - 1}); keep at least {voters} brokers",
        )
    factors: dict[str, int] = {}
    for partition in partitions:
        factors[partition.topic] = max(factors.get(partition.topic, 0), len(partition.replicas))
    too_wide = sorted(topic for topic, factor in factors.items() if factor > wanted)
    if too_wide:
        named = ", ".join(f"{topic} ({factors[topic]})" for topic in too_wide[:5])
        more = f" and {len(too_wide) - 5} more" if len(too_wide) > 5 else ""
        return Refusal(
            "ScaleInBelowReplicationFactor",
            f"scaling in to {wanted} brokers would leave fewer brokers than the replication "
            f"factor of topics {named}{more}; nothing was changed",
        )
    return None


def undrained(
    partitions: Iterable[PartitionView],
    reassignments: Mapping[PartitionKey, Reassignment],
    leaving: Collection[int],
) -> list[PartitionKey]:
    """Partitions that stop the leaving brokers from going: a replica (or a reassignment
    in progress) on one of them, or an ISR short of the replicas anywhere."""
    gone = set(leaving)
    found = {
        (p.topic, p.partition)
        for p in partitions
        if gone & set(p.replicas) or not set(p.replicas) <= set(p.isr)
    }
    found |= {
        key
        for key, moving_now in reassignments.items()
        if gone & {*moving_now.replicas, *moving_now.adding, *moving_now.removing}
    }
    return sorted(found)


# --- rolling restarts --------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerPod:
    ordinal: int
    updated: bool
    """Runs the StatefulSet's current pod template."""
    ready: bool


@dataclass(frozen=True)
class RestartStep:
    broker: int | None
    """The broker to restart now; None when none may (``message`` says why) or none must."""
    pending: tuple[int, ...]
    """Brokers still running an older pod template."""
    message: str
    blocked: bool = False
    """No broker may restart because some partition would fall below min ISR."""


def next_restart(
    pods: Sequence[BrokerPod],
    replicas: int,
    view: ClusterView | None,
    reassigning: bool,
) -> RestartStep:
    """Which outdated broker may restart now: every broker up, registered and in every
    ISR, no reassignment running, and each partition on it keeping min ISR without it;
    the active controller goes last."""
    pending = tuple(sorted(pod.ordinal for pod in pods if not pod.updated))
    if not pending:
        return RestartStep(None, (), "every broker runs the current pod template")

    def wait(message: str) -> RestartStep:
        return RestartStep(None, pending, message)

    starting = sorted(set(range(replicas)) - {pod.ordinal for pod in pods if pod.ready})
    if starting:
        return wait(f"waiting for broker {', '.join(map(str, starting))} to be ready")
    if view is None:
        return wait("waiting for the cluster to answer")
    unregistered = sorted(set(range(replicas)) - set(view.brokers))
    if unregistered:
        return wait(f"waiting for broker {', '.join(map(str, unregistered))} to register")
    if reassigning:
        return wait("waiting for partition reassignments to finish")
    lagging = [p for p in view.partitions if not set(p.replicas) <= set(p.isr)]
    if lagging:
        return wait(
            f"waiting for {len(lagging)} under-replicated partitions (e.g. "
            f"{_name(lagging[0])}) to have every replica in sync"
        )
    order = sorted(pending, key=lambda node: (node == view.controller, -node))
    blocked: list[str] = []
    for broker in order:
        short = [
            p
            for p in view.partitions
            if broker in p.replicas and len(set(p.isr) - {broker}) < p.min_insync_replicas
        ]
        if not short:
            return RestartStep(broker, pending, f"restarting broker {broker}")
        blocked.append(
            f"restarting broker {broker} would leave {len(short)} partitions (e.g. "
            f"{_name(short[0])}: {len(short[0].replicas)} replicas, min.insync.replicas "
            f"{short[0].min_insync_replicas}) below min ISR"
        )
    return RestartStep(None, pending, "; ".join(blocked), blocked=True)


def _name(partition: PartitionView) -> str:
    return f"{partition.topic}-{partition.partition}"


# --- autoscale ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoscaleBounds:
    max_replicas: int
    max_partitions_per_broker: int | None = None
    """Partition replicas a broker may hold."""
    max_bytes_per_broker: int | None = None


@dataclass(frozen=True)
class AutoscaleDecision:
    replicas: int
    reason: str


def autoscale_replicas(
    minimum: int,
    bounds: AutoscaleBounds,
    partition_replicas: int,
    log_bytes: int | None,
) -> AutoscaleDecision:
    """Brokers needed so that none holds more than the bounds allow, at least
    ``minimum`` and at most ``max_replicas``; ``log_bytes`` is the size of every replica
    of every partition (None when it could not be read: the bytes bound is not applied)."""
    needs = [(minimum, f"spec.replicas is {minimum}")]
    if bounds.max_partitions_per_broker:
        needs.append(
            (
                math.ceil(partition_replicas / bounds.max_partitions_per_broker),
                f"{partition_replicas} partition replicas at most "
                f"{bounds.max_partitions_per_broker} per broker",
            )
        )
    if bounds.max_bytes_per_broker and log_bytes is not None:
        needs.append(
            (
                math.ceil(log_bytes / bounds.max_bytes_per_broker),
                f"{log_bytes} bytes of logs at most {bounds.max_bytes_per_broker} per broker",
            )
        )
    wanted, reason = max(needs, key=lambda need: need[0])
    if wanted > bounds.max_replicas:
        return AutoscaleDecision(
            bounds.max_replicas, f"{reason} needs {wanted} brokers; capped at maxReplicas"
        )
    return AutoscaleDecision(wanted, f"{reason} needs {wanted} brokers")
