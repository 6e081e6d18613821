"""Replica placement: racks spread, counts even, deterministic; rebalancing moves little."""

from __future__ import annotations

from collections import Counter

import pytest
from brook_broker.metadata.placement import PlacementBroker, place_partitions, rebalance
from hypothesis import given, settings
from hypothesis import strategies as st


def brokers(count: int, racks: int = 0) -> list[PlacementBroker]:
    return [
        PlacementBroker(node, f"rack{node % racks}" if racks else None) for node in range(count)
    ]


def spread(counts: Counter[int], nodes: list[int]) -> int:
    return max(counts[node] for node in nodes) - min(counts[node] for node in nodes)


@settings(max_examples=200, deadline=None)
@given(
    broker_count=st.integers(1, 9),
    data=st.data(),
)
def test_replicas_and_leaders_are_even_without_racks(
    broker_count: int, data: st.DataObject
) -> None:
    replication_factor = data.draw(st.integers(1, broker_count))
    count = data.draw(st.integers(1, 40))
    nodes = list(range(broker_count))
    placed = place_partitions(brokers(broker_count), count, replication_factor)
    assert len(placed) == count
    assert all(len(set(replicas)) == replication_factor == len(replicas) for replicas in placed)
    assert spread(Counter(node for replicas in placed for node in replicas), nodes) <= 1
    assert spread(Counter(replicas[0] for replicas in placed), nodes) <= 1


@settings(max_examples=200, deadline=None)
@given(
    racks=st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=9),
    data=st.data(),
)
def test_racks_are_spread_first(racks: list[str | None], data: st.DataObject) -> None:
    members = [PlacementBroker(node * 3 + 1, rack) for node, rack in enumerate(racks)]
    replication_factor = data.draw(st.integers(1, len(members)))
    count = data.draw(st.integers(1, 20))
    placed = place_partitions(members, count, replication_factor)
    domains = {broker.node_id: broker.failure_domain for broker in members}
    available = len(set(domains.values()))
    for replicas in placed:
        assert len(set(replicas)) == replication_factor
        assert set(replicas) <= set(domains)
        assert len({domains[node] for node in replicas}) == min(replication_factor, available)
    assert placed == place_partitions(list(reversed(members)), count, replication_factor)


def test_even_racks_give_even_counts_and_one_replica_per_rack() -> None:
    placed = place_partitions(brokers(6, racks=3), 12, 3)
    assert all(len({node % 3 for node in replicas}) == 3 for replicas in placed)
    assert Counter(node for replicas in placed for node in replicas) == dict.fromkeys(range(6), 6)
    assert Counter(replicas[0] for replicas in placed) == dict.fromkeys(range(6), 2)


def test_follower_positions_rotate_so_failover_spreads_leadership() -> None:
    assert place_partitions(brokers(3), 3, 3) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]


def test_existing_topic_partitions_and_cluster_load_steer_new_replicas() -> None:
    # The topic already has two partitions led by 0 and 1: the next one is led by 2.
    assert place_partitions(brokers(3), 1, 1, topic_assignments=[(0,), (1,)]) == [(2,)]
    # The cluster is loaded on 0 and 1, so a new topic starts on the empty broker 2.
    loaded = [(0, 1)] * 5
    assert place_partitions(brokers(3), 1, 2, cluster_assignments=loaded)[0][0] == 2


def test_placement_needs_enough_brokers() -> None:
    with pytest.raises(ValueError):
        place_partitions(brokers(2), 1, 3)


def partitions_of(placed: list[tuple[int, ...]]) -> dict[tuple[str, int], tuple[int, ...]]:
    return {("t", index): replicas for index, replicas in enumerate(placed)}


@settings(max_examples=150, deadline=None)
@given(
    before=st.integers(1, 6),
    after=st.integers(1, 8),
    data=st.data(),
)
def test_rebalance_evens_counts_and_leaves_removed_brokers(
    before: int, after: int, data: st.DataObject
) -> None:
    replication_factor = data.draw(st.integers(1, min(before, after)))
    count = data.draw(st.integers(1, 30))
    assignments = partitions_of(place_partitions(brokers(before), count, replication_factor))
    first = data.draw(st.integers(0, 3))
    members = [PlacementBroker(node) for node in range(first, first + after)]
    moves = rebalance(assignments, members)
    result = {**assignments, **moves}
    nodes = [broker.node_id for broker in members]
    for key, replicas in result.items():
        assert len(set(replicas)) == replication_factor == len(replicas)
        assert set(replicas) <= set(nodes)
        if key in moves:
            assert moves[key] != assignments[key]
    assert spread(Counter(node for replicas in result.values() for node in replicas), nodes) <= 1
    assert rebalance(result, members) == {}


def test_rebalance_onto_a_new_broker_moves_only_its_share() -> None:
    assignments = partitions_of(place_partitions(brokers(3), 6, 3))
    moves = rebalance(assignments, brokers(4))
    moved = sum(len(set(target) - set(assignments[key])) for key, target in moves.items())
    assert moved == 4  # 18 replicas over 4 brokers: the new one takes 4
    for key, target in moves.items():
        kept = [a == b for a, b in zip(target, assignments[key], strict=True)]
        assert kept.count(False) == 1


def test_rebalance_keeps_racks_spread() -> None:
    racked = brokers(4, racks=2)
    assignments = partitions_of(place_partitions(racked[:2], 4, 2))
    result = {**assignments, **rebalance(assignments, racked)}
    assert all(len({node % 2 for node in replicas}) == 2 for replicas in result.values())
    counts = Counter(node for replicas in result.values() for node in replicas)
    assert spread(counts, [0, 1, 2, 3]) <= 1


def test_rebalance_refuses_impossible_targets() -> None:
    assignments = {("t", 0): (0, 1, 2)}
    with pytest.raises(ValueError):
        rebalance(assignments, brokers(2))
