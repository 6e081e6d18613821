"""The Topic controller's decisions: refusals, actions, warnings, replica placement and the
conditions they turn into; and when partitionAutoscale grows a topic."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from brook_client.cluster_admin import PartitionDescription, TopicDescription
from brook_operator.topic_plan import (
    AlterConfigs,
    CreateTopic,
    GroupSignal,
    GrowPartitions,
    ObservedTopic,
    PartitionAutoscale,
    Reassign,
    TopicSpec,
    autoscale_status,
    conditions,
    groups_reading,
    plan_partition_growth,
    plan_topic,
    ready_finding,
    ready_partition_count,
    replica_targets,
)

from tests.support.crds import cel_errors, load_crds, validation_errors

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


def test_a_compacted_topic_is_created_with_kafkas_spelling_of_its_policy() -> None:
    config = {"cleanup.policy": "delete, compact", "min.cleanable.dirty.ratio": "0.1"}
    plan = plan_topic(spec(config=config), BROKERS, None)
    (create,) = plan.actions
    assert isinstance(create, CreateTopic)
    assert create.configs["cleanup.policy"] == "compact,delete"
    assert create.configs["min.cleanable.dirty.ratio"] == "0.1"


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
        ({"config": {"cleanup.policy": "compacted"}}, 3, None, "InvalidConfig", "cleanup.policy"),
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


# --- partitionAutoscale -------------------------------------------------------------------

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
POLICY = PartitionAutoscale(enabled=True, max_partitions=12, step=3, after_seconds=60)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def capped(name: str = "workers", rate: float = 40.0, since: float | None = None) -> GroupSignal:
    return GroupSignal(name, True, rate, None if since is None else at(since))


def test_partition_autoscale_follows_the_crd_defaults() -> None:
    assert spec().partition_autoscale == PartitionAutoscale(False, 0, None, 300)
    policy = spec(partitionAutoscale={"enabled": True, "maxPartitions": 24}).partition_autoscale
    assert (policy.enabled, policy.max_partitions, policy.step, policy.after_seconds) == (
        True,
        24,
        None,
        300,
    )


def test_a_capped_group_with_growing_lag_grows_the_topic_after_the_wait() -> None:
    first = plan_partition_growth(POLICY, 3, None, [capped()], at(0))
    assert (first.count, first.capped_since, first.reason) == (None, at(0), "CappedByPartitions")
    assert "'workers' is capped by partitions with lag growing 40/s, for 0 s of" in first.message

    waiting = plan_partition_growth(POLICY, 3, first.capped_since, [capped()], at(59))
    assert (waiting.count, waiting.capped_since) == (None, at(0))

    grown = plan_partition_growth(POLICY, 3, waiting.capped_since, [capped()], at(61))
    assert grown.count == 6 and grown.reason == "PartitionsAutoscaled"
    assert grown.message.startswith("grow partitions from 3 to 6 (step 3, maxPartitions 12): ")
    assert "for 61 s (afterSeconds 60)" in grown.message
    # The wait starts again at the growth: the group gets time to use the new partitions.
    assert grown.capped_since == at(61)
    again = plan_partition_growth(POLICY, 6, grown.capped_since, [capped()], at(91))
    assert again.count is None


def test_growth_stops_at_max_partitions() -> None:
    last = plan_partition_growth(POLICY, 10, at(0), [capped()], at(60))
    assert last.count == 12 and last.capped_since is None
    at_max = plan_partition_growth(POLICY, 12, None, [capped()], at(120))
    assert at_max.count is None and at_max.reason == "AtMaxPartitions"
    assert at_max.message == "the topic has 12 partitions, maxPartitions is 12"


def test_without_a_step_the_count_doubles() -> None:
    doubling = PartitionAutoscale(enabled=True, max_partitions=100, after_seconds=0)
    assert plan_partition_growth(doubling, 6, None, [capped()], at(0)).count == 12


@pytest.mark.parametrize(
    ("groups", "words"),
    [
        ([], "no ConsumerGroup reads the topic"),
        ([GroupSignal("workers", False, 40.0)], "'workers' is not capped by partitions"),
        ([capped(rate=-5.0)], "'workers' is capped by partitions with lag not growing (-5/s)"),
        ([capped(rate=0.0)], "lag not growing (0/s)"),
        ([GroupSignal("workers", True, None)], "with no lag growth reported"),
    ],
)
def test_no_group_wanting_partitions_forgets_the_wait(
    groups: list[GroupSignal], words: str
) -> None:
    decision = plan_partition_growth(POLICY, 3, at(0), groups, at(600))
    assert (decision.count, decision.capped_since, decision.reason) == (
        None,
        None,
        "NotCappedByPartitions",
    )
    assert words in decision.message


def test_one_group_wanting_partitions_is_enough() -> None:
    groups = [GroupSignal("audit", False, 0.0), capped("billing")]
    decision = plan_partition_growth(POLICY, 3, at(0), groups, at(60))
    assert decision.count == 6
    assert "'billing'" in decision.message and "'audit'" not in decision.message


def test_a_topic_not_ready_does_not_grow_and_keeps_the_wait() -> None:
    decision = plan_partition_growth(POLICY, None, at(0), [capped()], at(600))
    assert (decision.count, decision.capped_since, decision.reason) == (
        None,
        at(0),
        "TopicNotReady",
    )


def test_a_group_capped_again_between_two_looks_starts_the_wait_again() -> None:
    # Seen capped since 0, but the group's condition says it turned capped at 50.
    decision = plan_partition_growth(POLICY, 3, at(0), [capped(since=50)], at(70))
    assert (decision.count, decision.capped_since) == (None, at(50))
    # A condition older than the first look does not shorten the wait.
    decision = plan_partition_growth(POLICY, 3, None, [capped(since=-600)], at(0))
    assert (decision.count, decision.capped_since) == (None, at(0))


def group_resource(
    name: str,
    *,
    cluster: str = "kafka",
    topics: Sequence[str] = ("orders",),
    generation: int = 1,
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation},
        "spec": {"cluster": cluster, "topics": list(topics)},
        "status": status,
    }


def test_groups_reading_the_topic_in_its_cluster_count() -> None:
    transition = {
        "type": "CappedByPartitions",
        "status": "True",
        "lastTransitionTime": "2025-01-01T00:00:50Z",
    }
    resources = [
        group_resource(
            "workers",
            topics=["audit", "orders"],
            cappedByPartitions=True,
            lagGrowthPerSecond=12,
            observedGeneration=1,
            conditions=[{"type": "Ready", "status": "True"}, transition],
        ),
        group_resource("elsewhere", cluster="other", cappedByPartitions=True),
        group_resource("unrelated", topics=["audit"], cappedByPartitions=True),
        group_resource("edited", generation=2, observedGeneration=1, cappedByPartitions=True),
        group_resource("new"),
    ]
    assert groups_reading(resources, "kafka", "orders") == [
        GroupSignal("new", False, None),
        GroupSignal("workers", True, 12.0, at(50)),
    ]


def ready_status(partitions: int, generation: int = 2, ready: str = "True") -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "partitions": [{"partition": p} for p in range(partitions)],
        "conditions": [{"type": "Ready", "status": ready}],
    }


def test_growth_starts_from_the_partitions_of_a_ready_topic() -> None:
    assert ready_partition_count(ready_status(6), 2) == 6
    assert ready_partition_count(ready_status(6, ready="False"), 2) is None
    assert ready_partition_count(ready_status(6, generation=1), 2) is None
    assert ready_partition_count({}, 1) is None


def test_autoscale_status_records_the_wait_and_the_last_growth() -> None:
    waiting = plan_partition_growth(POLICY, 3, None, [capped()], at(0))
    status = autoscale_status(waiting, {"lastGrowthTime": "2024-12-31T00:00:00Z"}, at(0))
    assert status == {
        "reason": "CappedByPartitions",
        "message": waiting.message,
        "cappedSince": "2025-01-01T00:00:00Z",
        "lastGrowthTime": "2024-12-31T00:00:00Z",
    }
    grown = plan_partition_growth(POLICY, 3, at(0), [capped()], at(90))
    status = autoscale_status(grown, status, at(90))
    assert (status["cappedSince"], status["lastGrowthTime"]) == (
        "2025-01-01T00:01:30Z",
        "2025-01-01T00:01:30Z",
    )


TOPIC_CRD = load_crds()["Topic"]


def topic_resource(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "Topic",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {"cluster": "kafka", "partitions": 6, **fields},
    }


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"enabled": True}, ".spec.partitionAutoscale: partitionAutoscale.maxPartitions is "),
        ({"maxPartitions": 4}, ".spec: partitionAutoscale.maxPartitions must be at least "),
        ({"enabled": True, "maxPartitions": 6}, None),
        ({"enabled": False}, None),
    ],
)
def test_the_api_server_checks_the_policy_bounds(
    policy: dict[str, Any], message: str | None
) -> None:
    manifest = topic_resource(partitionAutoscale=policy)
    assert validation_errors(TOPIC_CRD, manifest) == []
    errors = cel_errors(TOPIC_CRD, manifest)
    assert [e.startswith(message) for e in errors] == ([True] if message else [])


def test_the_api_server_refuses_a_step_of_zero() -> None:
    manifest = topic_resource(partitionAutoscale={"enabled": True, "maxPartitions": 8, "step": 0})
    assert validation_errors(TOPIC_CRD, manifest) == [
        "$.spec.partitionAutoscale.step: 0 is less than the minimum of 1"
    ]
