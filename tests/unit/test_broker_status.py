"""A Broker's status and Ready condition from its StatefulSet and its cluster."""

from __future__ import annotations

from typing import Any

from brook_operator.broker_status import (
    Observed,
    Refusal,
    broker_status,
    partition_counts,
    ready_condition,
    status_changes,
)
from brook_operator.cluster_view import ClusterView, PartitionView

BOOTSTRAP = "kafka.prod.svc.cluster.local:9092"


def partition(
    index: int,
    leader: int | None,
    replicas: tuple[int, ...],
    isr: tuple[int, ...],
    min_isr: int = 2,
) -> PartitionView:
    return PartitionView("orders", index, leader, replicas, isr, min_isr)


HEALTHY = ClusterView(
    brokers=(0, 1, 2),
    controller=1,
    partitions=(partition(0, 0, (0, 1, 2), (0, 1, 2)), partition(1, 1, (1, 2, 0), (1, 2, 0))),
)


def status(
    observed: Observed, previous: dict[str, Any] | None = None, now: str = "T2"
) -> dict[str, Any]:
    return broker_status(
        observed, bootstrap=BOOTSTRAP, observed_generation=4, previous=previous or {}, now=now
    )


def test_a_healthy_cluster_is_ready() -> None:
    reported = status(Observed(replicas=3, ready_replicas=3, cluster=HEALTHY))
    assert reported == {
        "replicas": 3,
        "readyReplicas": 3,
        "controller": 1,
        "bootstrap": BOOTSTRAP,
        "underReplicatedPartitions": 0,
        "underMinIsrPartitions": 0,
        "offlinePartitions": 0,
        "observedGeneration": 4,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ClusterReady",
                "message": "3 of 3 brokers ready; broker 1 is the controller",
                "lastTransitionTime": "T2",
            }
        ],
    }


def test_counts_of_partitions_short_of_replicas() -> None:
    counts = partition_counts(
        (
            partition(0, 0, (0, 1, 2), (0, 1)),  # under-replicated, ISR still at min
            partition(1, 1, (1, 2, 0), (1,)),  # under-replicated and under min ISR
            partition(2, None, (2, 0, 1), (2,)),  # offline
            partition(3, 0, (0,), (0,), min_isr=1),
        )
    )
    assert (counts.under_replicated, counts.under_min_isr, counts.offline) == (3, 2, 1)


def test_reasons_why_not_ready() -> None:
    def reason(**observed: Any) -> tuple[bool, str, str]:
        return ready_condition(Observed(**{"replicas": 3, "ready_replicas": 3, **observed}))

    assert reason(ready_replicas=2, cluster=None) == (
        False,
        "BrokersStarting",
        "2 of 3 brokers ready",
    )
    assert reason(cluster=None, cluster_error="no answer from x: refused") == (
        False,
        "ClusterUnreachable",
        "no answer from x: refused",
    )
    no_controller = ClusterView(brokers=(0, 1, 2), controller=None, partitions=())
    assert reason(cluster=no_controller)[1] == "NoController"
    missing = ClusterView(brokers=(0, 2), controller=0, partitions=())
    assert reason(cluster=missing) == (
        False,
        "BrokersNotRegistered",
        "2 of 3 brokers registered with the controller; missing: 1",
    )
    offline = ClusterView((0, 1, 2), 0, (partition(0, None, (0, 1), (0,)),))
    assert reason(cluster=offline) == (False, "PartitionsOffline", "1 partitions have no leader")
    refused = Refusal("InvalidConfig", "bogus is not a broker setting Brook knows")
    assert reason(cluster=HEALTHY, refusal=refused) == (
        False,
        "InvalidConfig",
        "bogus is not a broker setting Brook knows",
    )


def test_scaling_out_waits_for_the_new_brokers() -> None:
    assert ready_condition(Observed(replicas=5, ready_replicas=3, cluster=HEALTHY))[1] == (
        "BrokersStarting"
    )
    registered = ClusterView((0, 1, 2, 3), 0, ())
    assert ready_condition(Observed(replicas=5, ready_replicas=5, cluster=registered))[2] == (
        "4 of 5 brokers registered with the controller; missing: 4"
    )


def test_unknown_counts_are_cleared_while_the_cluster_is_unreachable() -> None:
    reported = status(Observed(replicas=3, ready_replicas=0, cluster=None))
    assert reported["controller"] is None
    assert reported["underReplicatedPartitions"] is None
    assert reported["readyReplicas"] == 0


def test_transition_time_moves_only_when_ready_flips() -> None:
    first = status(Observed(replicas=3, ready_replicas=1, cluster=None), now="T1")
    starting = status(Observed(replicas=3, ready_replicas=2, cluster=None), first, now="T2")
    assert starting["conditions"][0]["lastTransitionTime"] == "T1"
    assert starting["conditions"][0]["message"] == "2 of 3 brokers ready"
    ready = status(Observed(replicas=3, ready_replicas=3, cluster=HEALTHY), starting, now="T3")
    assert ready["conditions"][0]["lastTransitionTime"] == "T3"


def test_an_unchanged_status_is_not_written() -> None:
    observed = Observed(replicas=3, ready_replicas=3, cluster=HEALTHY)
    first = status(observed, now="T1")
    assert status_changes(first, status(observed, first, now="T9")) == {}
    degraded = ClusterView(HEALTHY.brokers, 1, (partition(0, 0, (0, 1, 2), (0, 1)),))
    changes = status_changes(first, status(Observed(3, 3, degraded), first, now="T9"))
    assert changes == {"underReplicatedPartitions": 1}
