"""The Topic controller's decisions: refusals, actions, warnings, replica placement and the
conditions they turn into."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from brook_operator.kafka_admin import PartitionDescription, TopicDescription
from brook_operator.topic_plan import (
    AlterConfigs,
    CreateTopic,
    GrowPartitions,
    ObservedTopic,
    Reassign,
    TopicSpec,
    conditions,
    plan_topic,
    ready_finding,
    replica_targets,
)

BROKERS = [0, 1, 2]


def spec(**fields: Any) -> TopicSpec:
    resource = {"cluster": "kafka", "partitions": 3, "replicationFactor": 3, **fields}
    return TopicSpec.from_resource("orders", resource)


def topic(*replicas: Sequence[int], isr: Sequence[Sequence[int]] | None = None) -> TopicDescription:
    return TopicDescription(
        "orders",
        "5c0b7a4e-0000-0000-0000-000000000001",
        tuple(
            PartitionDescription(
                i, nodes[0], tuple(nodes), tuple(isr[i] if isr is not None else nodes)
            )
            for i, nodes in enumerate(replicas)
        ),
    )


def observed(
    *replicas: Sequence[int],
    overrides: Mapping[str, str] | None = None,
    reassigning: Mapping[int, Sequence[int]] | None = None,
) -> ObservedTopic:
    return ObservedTopic(
        topic(*replicas),
        {"min.insync.replicas": "2"} if overrides is None else overrides,
        reassigning or {},
    )


SETTLED = ([0, 1, 2], [1, 2, 0], [2, 0, 1])


def test_defaults_follow_the_crd() -> None:
    topic_spec = TopicSpec.from_resource("orders", {"cluster": "kafka"})
    assert (
        topic_spec.topic_name,
        topic_spec.partitions,
        topic_spec.replication_factor,
        topic_spec.min_insync_replicas,
        topic_spec.deletion_policy,
    ) == ("orders", 1, 3, 2, "Delete")
    named = TopicSpec.from_resource("orders", {"cluster": "kafka", "topicName": "Orders_v2"})
    assert named.topic_name == "Orders_v2"


def test_a_new_topic_is_created_with_its_configs_and_min_isr() -> None:
    plan = plan_topic(spec(config={"retention.ms": " 60000 "}), BROKERS, None)
    assert plan.actions == (
        CreateTopic(3, 3, {"retention.ms": "60000", "min.insync.replicas": "2"}),
    )
    assert not plan.refused and not plan.warnings


def test_a_topic_that_matches_its_spec_needs_nothing() -> None:
    plan = plan_topic(spec(), BROKERS, observed(*SETTLED))
    assert plan.settled and plan.actions == ()
    assert ready_finding(spec(), plan)[0]


@pytest.mark.parametrize(
    ("fields", "size", "current", "reason", "words"),
    [
        ({"replicationFactor": 5}, 3, None, "ReplicationFactorTooLarge", "5 is more than the 3"),
        ({"minInsyncReplicas": 4}, 3, None, "MinIsrAboveReplicationFactor", "4 is more than"),
        ({"partitions": 2}, 3, SETTLED, "PartitionsCannotShrink", "2 is fewer than the 3"),
        ({"config": {"retention.hours": "1"}}, 3, None, "UnknownConfig", "'retention.hours'"),
        ({"config": {"retention.ms": "soon"}}, 3, None, "InvalidConfig", "retention.ms"),
        ({"config": {"min.insync.replicas": "1"}}, 3, None, "InvalidConfig", "minInsyncReplicas"),
        ({"topicName": "orders/eu"}, 3, None, "InvalidTopicName", "orders/eu"),
    ],
)
def test_refusals_change_nothing_and_say_why(
    fields: dict[str, Any],
    size: int,
    current: Sequence[Sequence[int]] | None,
    reason: str,
    words: str,
) -> None:
    plan = plan_topic(
        spec(**fields), BROKERS[:size], None if current is None else observed(*current)
    )
    assert plan.refused and plan.actions == ()
    assert plan.refusals[0].reason == reason
    assert words in plan.refusals[0].message
    ready, finding = ready_finding(spec(**fields), plan)
    assert not ready and finding.reason == reason and words in finding.message


def test_every_refusal_is_reported() -> None:
    plan = plan_topic(spec(replicationFactor=5, minInsyncReplicas=6), BROKERS, None)
    assert [r.reason for r in plan.refusals] == [
        "ReplicationFactorTooLarge",
        "MinIsrAboveReplicationFactor",
    ]


def test_a_broker_restarting_does_not_refuse_a_valid_spec() -> None:
    """RF 3 on a 3-broker cluster with one broker down: not refused, the existing topic
    is left as it is (its replicas stay), creation waits for the broker."""
    assert plan_topic(spec(), [0, 1], observed(*SETTLED), cluster_size=3).settled
    waiting = plan_topic(spec(), [0, 1], None, cluster_size=3)
    assert not waiting.refused and waiting.actions == () and "2 live now" in waiting.pending[0]
    assert plan_topic(spec(), [0, 1], None).refusals[0].reason == "ReplicationFactorTooLarge"


def test_min_isr_equal_to_rf_is_allowed_with_a_warning() -> None:
    plan = plan_topic(spec(minInsyncReplicas=3), BROKERS, None)
    assert not plan.refused and len(plan.actions) == 1
    assert [w.reason for w in plan.warnings] == ["MinIsrEqualsReplicationFactor"]
    previous: list[dict[str, Any]] = []
    ready, finding = ready_finding(spec(), plan)
    found = conditions(ready, finding, plan.warnings, previous, "2024-01-01T00:00:00Z")
    assert [(c["type"], c["status"], c["reason"]) for c in found] == [
        ("Ready", "False", "Reconciling"),
        ("Warning", "True", "MinIsrEqualsReplicationFactor"),
    ]


def test_partitions_grow() -> None:
    plan = plan_topic(spec(partitions=12), BROKERS, observed(*SETTLED))
    assert plan.actions == (GrowPartitions(3, 12),)


def test_out_of_band_configs_are_brought_back() -> None:
    current = observed(
        *SETTLED,
        overrides={"min.insync.replicas": "1", "retention.ms": "1000", "segment.ms": "500"},
    )
    plan = plan_topic(spec(config={"retention.ms": "60000"}), BROKERS, current)
    assert plan.actions == (
        AlterConfigs({"min.insync.replicas": "2", "retention.ms": "60000"}, ("segment.ms",)),
    )


def test_replication_factor_grows_by_reassignment() -> None:
    plan = plan_topic(spec(minInsyncReplicas=1), BROKERS, observed(*[[0], [1], [2]], overrides={}))
    assert plan.actions[0] == AlterConfigs({"min.insync.replicas": "1"}, ())
    reassign = plan.actions[1]
    assert isinstance(reassign, Reassign) and reassign.replication_factor == 3
    assert [r[0] for r in reassign.targets.values()] == [0, 1, 2]  # kept, first
    assert all(sorted(r) == BROKERS for r in reassign.targets.values())


def test_min_isr_is_raised_only_once_the_replicas_are_there() -> None:
    plan = plan_topic(spec(), BROKERS, observed([0], [1], [2], overrides={}))
    assert plan.actions[0] == AlterConfigs({"min.insync.replicas": "1"}, ())
    assert isinstance(plan.actions[1], Reassign)
    assert any("waits for 3 replicas" in p for p in plan.pending)
    moving = observed(
        [0, 1, 2],
        [1, 0, 2],
        [2, 0, 1],
        overrides={"min.insync.replicas": "1"},
        reassigning={0: [1, 2], 1: [0, 2], 2: [0, 1]},
    )
    during = plan_topic(spec(), BROKERS, moving)
    assert during.actions == () and during.reassigning == (0, 1, 2) and not during.settled
    done = observed(*SETTLED, overrides={"min.insync.replicas": "1"})
    assert plan_topic(spec(), BROKERS, done).actions == (
        AlterConfigs({"min.insync.replicas": "2"}, ()),
    )


def test_nothing_but_configs_changes_while_a_reassignment_runs() -> None:
    moving = observed([0, 1, 2], [1, 2], [2, 0], reassigning={0: [2]})
    plan = plan_topic(spec(partitions=6, config={"retention.ms": "1"}), BROKERS, moving)
    assert plan.actions == (AlterConfigs({"retention.ms": "1"}, ()),)
    assert "reassignment of partitions 0 in progress" in plan.pending[0]


def test_replicas_are_added_and_removed_evenly() -> None:
    # RF 1 -> 3: every broker ends with as many replicas as any other, give or take one.
    for size, partitions in ((3, 3), (4, 6), (5, 12), (6, 6)):
        brokers = list(range(size))
        grown = replica_targets(topic(*[[p % size] for p in range(partitions)]), 3, brokers)
        assert all(grown[p][0] == p % size for p in range(partitions))
        assert all(len(set(r)) == 3 for r in grown.values())
        load = Counter(n for r in grown.values() for n in r)
        assert max(load.values()) - min(load.values()) <= 1, (size, partitions, load)
    # RF 3 -> 2: the first replica stays, removals even the load out.
    shrunk = replica_targets(topic([0, 1, 2], [1, 2, 0], [2, 0, 1]), 2, BROKERS)
    assert [r[0] for r in shrunk.values()] == [0, 1, 2]
    assert Counter(n for r in shrunk.values() for n in r) == {0: 2, 1: 2, 2: 2}
    # Partitions already at the replication factor are left out.
    assert replica_targets(topic([0, 1], [1]), 2, BROKERS) == {1: (1, 2)}


def test_conditions_keep_their_transition_time() -> None:
    plan = plan_topic(spec(), BROKERS, observed(*SETTLED))
    ready, finding = ready_finding(spec(), plan)
    first = conditions(ready, finding, (), [], "2024-01-01T00:00:00Z")
    again = conditions(ready, finding, (), first, "2024-01-01T00:05:00Z")
    assert again[0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert [c["type"] for c in again] == ["Ready"] and again[0]["reason"] == "TopicReady"
    refused = plan_topic(spec(partitions=1), BROKERS, observed(*SETTLED))
    ready, finding = ready_finding(spec(), refused)
    flipped = conditions(ready, finding, (), again, "2024-01-01T00:06:00Z")
    assert flipped[0]["status"] == "False" and flipped[0]["lastTransitionTime"].endswith("06:00Z")
    assert flipped[0]["message"].startswith("refused, nothing changed:")
