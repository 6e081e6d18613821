"""Safe broker scaling decisions: where partitions go, when a scale-in is refused or done,
which broker a rolling restart may take next, and how many brokers autoscale wants."""

from __future__ import annotations

from collections import Counter

import pytest
from brook_broker.metadata.placement import PlacementBroker, place_partitions
from brook_client.cluster_admin import Reassignment
from brook_operator.broker_scaling import (
    AutoscaleBounds,
    BrokerPod,
    autoscale_replicas,
    balance_plan,
    leaving_brokers,
    next_restart,
    scale_in_refusal,
    undrained,
)
from brook_operator.cluster_view import ClusterView, PartitionView
from hypothesis import given, settings
from hypothesis import strategies as st


def brokers(count: int, racks: int = 0) -> list[PlacementBroker]:
    return [PlacementBroker(n, f"zone-{n % racks}" if racks else None) for n in range(count)]


def topic(
    name: str,
    layout: list[tuple[int, ...]],
    min_isr: int = 2,
    isr: list[tuple[int, ...]] | None = None,
) -> list[PartitionView]:
    return [
        PartitionView(
            topic=name,
            partition=index,
            leader=replicas[0],
            replicas=replicas,
            isr=replicas if isr is None else isr[index],
            min_insync_replicas=min_isr,
        )
        for index, replicas in enumerate(layout)
    ]


def applied(partitions: list[PartitionView], plan: dict) -> dict[tuple[str, int], tuple[int, ...]]:
    return {
        (p.topic, p.partition): plan.get((p.topic, p.partition), p.replicas) for p in partitions
    }


def spread(counts: Counter[int], nodes: range) -> int:
    return max(counts[n] for n in nodes) - min(counts[n] for n in nodes)


# --- scale-out and drains ----------------------------------------------------------------


def test_scale_out_gives_new_brokers_replicas_and_preferred_leaderships() -> None:
    partitions = topic("orders", place_partitions(brokers(3), 6, 3))
    plan = balance_plan(partitions, brokers(5))
    layout = applied(partitions, plan)
    replicas = Counter(node for r in layout.values() for node in r)
    leaders = Counter(r[0] for r in layout.values())
    assert spread(replicas, range(5)) <= 1 and spread(leaders, range(5)) <= 1
    assert replicas[3] >= 3 and replicas[4] >= 3 and leaders[3] >= 1 and leaders[4] >= 1
    # As little as possible: 18 replicas over 5 brokers (4, 4, 4, 3, 3) moves 6.
    moved = sum(
        len(set(new) - set(p.replicas)) for p, new in zip(partitions, layout.values(), strict=True)
    )
    assert moved == replicas[3] + replicas[4] == 6
    assert all(len(set(r)) == 3 for r in layout.values())


def test_each_topic_is_spread_on_its_own() -> None:
    partitions = [
        *topic("big", place_partitions(brokers(3), 30, 3)),
        *topic("small", place_partitions(brokers(3), 3, 3)),
    ]
    layout = applied(partitions, balance_plan(partitions, brokers(6)))
    small = Counter(node for (name, _), r in layout.items() if name == "small" for node in r)
    assert spread(small, range(6)) <= 1


@settings(max_examples=60, deadline=None)
@given(before=st.integers(1, 5), added=st.integers(1, 4), count=st.integers(1, 24), data=st.data())
def test_a_balanced_plan_needs_no_second_round(
    before: int, added: int, count: int, data: st.DataObject
) -> None:
    factor = data.draw(st.integers(1, before))
    racks = data.draw(st.sampled_from([0, 3]))
    partitions = topic("t", place_partitions(brokers(before, racks), count, factor), min_isr=1)
    after = brokers(before + added, racks)
    layout = applied(partitions, balance_plan(partitions, after))
    if racks:  # racks come first: brokers of a crowded rack share its replicas
        assert all(len({n % racks for n in r}) == min(factor, racks) for r in layout.values())
    else:
        replicas = Counter(node for r in layout.values() for node in r)
        assert spread(replicas, range(before + added)) <= 1
        assert spread(Counter(r[0] for r in layout.values()), range(before + added)) <= 1
    again = topic("t", [layout[("t", i)] for i in range(count)], min_isr=1)
    assert balance_plan(again, after) == {}


def test_racks_stay_spread_when_scaling_out() -> None:
    partitions = topic("t", place_partitions(brokers(3, racks=3), 6, 3))
    layout = applied(partitions, balance_plan(partitions, brokers(6, racks=3)))
    assert all(len({n % 3 for n in replicas}) == 3 for replicas in layout.values())


def test_a_drain_moves_every_replica_off_the_leaving_brokers() -> None:
    partitions = topic("t", place_partitions(brokers(5), 8, 3))
    assert leaving_brokers(5, 3) == (3, 4)
    layout = applied(partitions, balance_plan(partitions, brokers(3)))
    assert all(set(r) == {0, 1, 2} for r in layout.values())
    assert spread(Counter(r[0] for r in layout.values()), range(3)) <= 1


# --- scale-in refusals and the drained check ----------------------------------------------


def test_scale_in_below_a_replication_factor_is_refused() -> None:
    partitions = topic("orders", place_partitions(brokers(5), 3, 4))
    refusal = scale_in_refusal(partitions, 5, 3)
    assert refusal is not None and refusal.reason == "ScaleInBelowReplicationFactor"
    assert "orders (4)" in refusal.message
    assert scale_in_refusal(partitions, 5, 4) is None


@pytest.mark.parametrize(("current", "wanted"), [(5, 2), (3, 2), (2, 1)])
def test_scale_in_that_removes_quorum_voters_is_refused(current: int, wanted: int) -> None:
    refusal = scale_in_refusal([], current, wanted)
    assert refusal is not None and refusal.reason == "ScaleInRemovesQuorumVoters"


def test_drained_means_nothing_on_leaving_brokers_and_every_isr_full() -> None:
    on_leaving = topic("t", [(0, 1, 3)])
    assert undrained(on_leaving, {}, (3, 4)) == [("t", 0)]
    moved_but_catching_up = topic("t", [(0, 1, 2)], isr=[(0, 1)])
    assert undrained(moved_but_catching_up, {}, (3, 4)) == [("t", 0)]
    reassigning = {("t", 0): Reassignment("t", 0, (0, 1, 2, 4), (), (4,))}
    assert undrained(topic("t", [(0, 1, 2)]), reassigning, (3, 4)) == [("t", 0)]
    assert undrained(topic("t", [(0, 1, 2), (2, 0, 1)]), {}, (3, 4)) == []


# --- rolling restarts ----------------------------------------------------------------------


def cluster(partitions: list[PartitionView], controller: int = 0, size: int = 3) -> ClusterView:
    return ClusterView(
        brokers=tuple(range(size)), controller=controller, partitions=tuple(partitions)
    )


def pods(outdated: set[int], not_ready: set[int] = frozenset(), size: int = 3) -> list[BrokerPod]:
    return [BrokerPod(n, n not in outdated, n not in not_ready) for n in range(size)]


def test_restarts_go_one_by_one_with_the_controller_last() -> None:
    view = cluster(topic("t", place_partitions(brokers(3), 6, 3)), controller=1)
    order = []
    outdated = {0, 1, 2}
    while outdated:
        step = next_restart(pods(outdated), 3, view, reassigning=False)
        assert step.broker is not None, step.message
        order.append(step.broker)
        outdated.discard(step.broker)
    assert order == [2, 0, 1]
    assert next_restart(pods(set()), 3, view, False).pending == ()


def test_no_restart_while_a_broker_is_away_or_out_of_an_isr() -> None:
    layout = place_partitions(brokers(3), 6, 3)
    view = cluster(topic("t", layout))
    step = next_restart(pods({0, 1}, not_ready={2}), 3, view, False)
    assert step.broker is None and "broker 2 to be ready" in step.message
    catching_up = cluster(topic("t", layout, isr=[r[:2] for r in layout]))
    step = next_restart(pods({0, 1}), 3, catching_up, False)
    assert step.broker is None and "under-replicated" in step.message
    unregistered = ClusterView(brokers=(0, 1), controller=0, partitions=view.partitions)
    assert next_restart(pods({0}), 3, unregistered, False).broker is None
    assert next_restart(pods({0}), 3, view, reassigning=True).broker is None


def test_no_restart_that_takes_a_partition_below_min_isr() -> None:
    view = cluster([*topic("safe", [(0, 1, 2)]), *topic("tight", [(1, 2)], min_isr=2)])
    step = next_restart(pods({1, 2}), 3, view, False)
    assert step.broker is None and step.blocked
    assert "tight-0" in step.message
    assert next_restart(pods({0, 1, 2}), 3, view, False).broker == 0


# --- autoscale ----------------------------------------------------------------------------


def test_autoscale_adds_brokers_for_partitions_within_bounds() -> None:
    bounds = AutoscaleBounds(max_replicas=6, max_partitions_per_broker=100)
    assert autoscale_replicas(3, bounds, 300, None).replicas == 3
    assert autoscale_replicas(3, bounds, 301, None).replicas == 4
    capped = autoscale_replicas(3, bounds, 5000, None)
    assert capped.replicas == 6 and "capped at maxReplicas" in capped.reason


def test_autoscale_bytes_bound_applies_when_sizes_are_known() -> None:
    bounds = AutoscaleBounds(max_replicas=10, max_bytes_per_broker=1000)
    assert autoscale_replicas(3, bounds, 10, 4500).replicas == 5
    assert autoscale_replicas(3, bounds, 10, None).replicas == 3
