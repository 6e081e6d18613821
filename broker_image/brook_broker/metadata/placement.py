"""Where partition replicas go: racks first, then even replica and leader counts.

Pure and deterministic (ties go to the lower node id), because every member of the
metadata quorum computes placement itself while applying the same command.

A broker without a rack counts as a rack of its own, so a cluster without racks is
simply spread over brokers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

PartitionKey = tuple[str, int]
"""(topic, partition index)"""


@dataclass(frozen=True)
class PlacementBroker:
    node_id: int
    rack: str | None = None

    @property
    def failure_domain(self) -> tuple[str, str | int]:
        """The rack, or the broker itself when it has none."""
        return ("rack", self.rack) if self.rack is not None else ("broker", self.node_id)


class _Load:
    """Replica and leader (first replica) counts per broker."""

    def __init__(self, assignments: Iterable[Sequence[int]]) -> None:
        self.replicas: Counter[int] = Counter()
        self.leaders: Counter[int] = Counter()
        for replicas in assignments:
            self.add(replicas)

    def add(self, replicas: Sequence[int]) -> None:
        self.replicas.update(replicas)
        if replicas:
            self.leaders[replicas[0]] += 1


def place_partitions(
    brokers: Sequence[PlacementBroker],
    count: int,
    replication_factor: int,
    topic_assignments: Iterable[Sequence[int]] = (),
    cluster_assignments: Iterable[Sequence[int]] = (),
) -> list[tuple[int, ...]]:
    """Replica lists (preferred leader first) for ``count`` new partitions of a topic.

    Each partition is led by the broker leading the fewest of the topic's partitions;
    followers come from unused racks, then from the brokers with the fewest replicas
    (among those, the ones that already lead more: the others get a replica when their
    turn to lead comes). Balance within the topic (``topic_assignments``: its existing
    partitions) comes first; the whole cluster's load (``cluster_assignments``) breaks
    ties, so new topics lean towards emptier brokers without piling onto them. The
    caller checks that ``replication_factor`` does not exceed ``len(brokers)``.
    """
    if not 1 <= replication_factor <= len(brokers):
        raise ValueError(f"cannot place {replication_factor} replicas on {len(brokers)} brokers")
    ordered = sorted(brokers, key=lambda broker: broker.node_id)
    ring = {broker.node_id: position for position, broker in enumerate(ordered)}
    topic = _Load(topic_assignments)
    cluster = _Load(cluster_assignments)
    positions: list[Counter[int]] = [Counter() for _ in range(replication_factor)]
    placed = []
    for _ in range(count):
        leader = min(
            ordered,
            key=lambda broker: (
                topic.leaders[broker.node_id],
                topic.replicas[broker.node_id],
                cluster.leaders[broker.node_id],
                cluster.replicas[broker.node_id],
                broker.node_id,
            ),
        )
        followers = _spread(
            ordered,
            replication_factor,
            leader,
            lambda node: (topic.replicas[node], -topic.leaders[node], cluster.replicas[node]),
        )[1:]
        replicas = [leader.node_id]
        for position in range(1, replication_factor):
            # Spreading the second, third... positions too spreads the leaderships a
            # failure hands over; ties go to the next broker after the leader on the ring.
            follower = min(
                followers,
                key=lambda node: (
                    positions[position][node],
                    (ring[node] - ring[leader.node_id]) % len(ordered),
                ),
            )
            followers.remove(follower)
            replicas.append(follower)
        for position, node in enumerate(replicas):
            positions[position][node] += 1
        topic.add(replicas)
        cluster.add(replicas)
        placed.append(tuple(replicas))
    return placed


def _spread(
    brokers: Sequence[PlacementBroker],
    replication_factor: int,
    leader: PlacementBroker,
    load: Callable[[int], tuple[int, ...]],
) -> list[int]:
    """Add followers to ``leader`` one at a time: from an unused rack while any remains,
    then the least loaded."""
    chosen = [leader.node_id]
    domains = {leader.failure_domain}
    while len(chosen) < replication_factor:
        candidates = [broker for broker in brokers if broker.node_id not in chosen]
        fresh = [broker for broker in candidates if broker.failure_domain not in domains]
        pick = min(fresh or candidates, key=lambda broker: (load(broker.node_id), broker.node_id))
        chosen.append(pick.node_id)
        domains.add(pick.failure_domain)
    return chosen


def rebalance(
    assignments: Mapping[PartitionKey, Sequence[int]], brokers: Sequence[PlacementBroker]
) -> dict[PartitionKey, tuple[int, ...]]:
    """Targets for the partitions whose replicas should move so that ``brokers`` (and only
    they) hold even replica counts, moving as few replicas as possible.

    A replica on a broker outside ``brokers`` always moves; otherwise one replica at a
    time moves from the most to the least loaded broker while they differ by more than
    one. A moved replica keeps its position, so preferred leaders stay where they were
    unless their broker leaves. Racks stay spread where they were.
    """
    by_id = {broker.node_id: broker for broker in brokers}
    if not by_id:
        raise ValueError("no brokers to place replicas on")
    targets = {key: list(replicas) for key, replicas in assignments.items()}
    keys = sorted(targets)
    load: Counter[int] = Counter({node: 0 for node in by_id})
    for replicas in targets.values():
        load.update(node for node in replicas if node in by_id)

    def move(key: PartitionKey, position: int, donor_load: int | None) -> bool:
        """Move one replica to the least loaded broker that fits; False if none does."""
        replicas = targets[key]
        others = [node for index, node in enumerate(replicas) if index != position]
        used = {by_id[node].failure_domain for node in others if node in by_id}
        candidates = [
            broker
            for broker in by_id.values()
            if broker.node_id not in others
            and (donor_load is None or load[broker.node_id] < donor_load - 1)
        ]
        fresh = [broker for broker in candidates if broker.failure_domain not in used]
        if not fresh and (candidates and len(used) < len({b.failure_domain for b in brokers})):
            return False
        pool = fresh or candidates
        if not pool:
            return False
        receiver = min(pool, key=lambda broker: (load[broker.node_id], broker.node_id)).node_id
        donor = replicas[position]
        if donor in by_id:
            load[donor] -= 1
        load[receiver] += 1
        replicas[position] = receiver
        return True

    for key in keys:
        for position, node in enumerate(targets[key]):
            if node not in by_id and not move(key, position, None):
                raise ValueError(f"no broker can take replica {node} of {key!r}")
    moved = True
    while moved:
        moved = False
        for donor in sorted(load, key=lambda node: (-load[node], node)):
            if load[donor] - min(load.values()) <= 1:
                break
            # Followers move before preferred leaders, so leadership stays put if it can.
            held = sorted(
                (targets[key].index(donor) == 0, key) for key in keys if donor in targets[key]
            )
            moved = any(move(key, targets[key].index(donor), load[donor]) for _, key in held)
            if moved:
                break
    return {
        key: tuple(replicas)
        for key, replicas in targets.items()
        if tuple(replicas) != tuple(assignments[key])
    }
