"""The replicated cluster state machine: brokers, fencing, topics, ISR changes, elections."""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from brook_broker.metadata.cluster_state import ClusterState
from brook_broker.metadata.commands import (
    AllocateProducerIds,
    AlterPartition,
    AlterReassignment,
    AlterTopicConfigs,
    BeginControlledShutdown,
    Command,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    FenceBroker,
    RegisterBroker,
    UnfenceBroker,
)
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.model import NO_LEADER, PartitionState, TopicState
from brook_broker.metadata.topics import MAX_PARTITIONS_PER_REQUEST, PartitionLimits
from kio.schema.errors import ErrorCode

UNCLEAN = {"unclean.leader.election.enable": "true"}


def topic_id(number: int) -> uuid.UUID:
    return uuid.UUID(int=1000 + number)


def cluster(brokers: int = 3, racks: int = 0) -> ClusterState:
    state = ClusterState()
    for node in range(brokers):
        rack = f"rack{node % racks}" if racks else None
        assert state.apply(RegisterBroker(node, "127.0.0.1", 9092 + node, rack)) == 1
    return state


def with_topic(
    brokers: int = 3,
    assignments: list[list[int]] | None = None,
    configs: dict[str, str] | None = None,
) -> ClusterState:
    """A cluster with topic "t", by default partition 0 on [0, 1, 2]."""
    state = cluster(brokers)
    state.apply(CreateTopic("t", topic_id(0), 0, 0, configs or {}, assignments or [[0, 1, 2]]))
    return state


def part(state: ClusterState, index: int = 0, topic: str = "t") -> PartitionState:
    found = state.partition(topic, index)
    assert found is not None
    return found


def refused(code: ErrorCode, state: ClusterState, command: Callable[..., Any], *args: Any) -> str:
    """Run a command that must be refused, and check that it changed nothing."""
    before = state.copy()
    with pytest.raises(ApiError) as raised:
        command(*args)
    assert raised.value.code == code, raised.value.message
    assert state == before
    return raised.value.message


def shrink(state: ClusterState, isr: list[int], index: int = 0) -> PartitionState:
    current = part(state, index)
    return state.apply(
        AlterPartition(
            "t", index, current.leader, current.leader_epoch, current.partition_epoch, isr
        )
    )


# --- brokers -------------------------------------------------------------------------------


def test_registration_raises_the_epoch_and_keeps_the_latest_address() -> None:
    state = cluster(1)
    assert state.apply(RegisterBroker(0, "10.0.0.1", 9000, "a")) == 2
    broker = state.brokers[0]
    assert (broker.host, broker.port, broker.rack, broker.epoch) == ("10.0.0.1", 9000, "a", 2)
    assert not broker.fenced
    refused(ErrorCode.invalid_request, state, state.apply, RegisterBroker(-1, "h", 1, None))


def test_fencing_moves_leadership_to_the_next_isr_member() -> None:
    state = with_topic(assignments=[[0, 1, 2], [1, 2, 0]])
    state.apply(FenceBroker(0, 1))
    assert state.brokers[0].fenced
    assert [broker.node_id for broker in state.live_brokers()] == [1, 2]
    assert part(state, 0) == PartitionState((0, 1, 2), (1, 2), 1, 1, 1)
    # Not its leader: only the ISR shrinks.
    assert part(state, 1) == PartitionState((1, 2, 0), (1, 2), 1, 0, 1)
    assert state.offline_replicas(part(state, 0)) == (0,)
    assert state.partitions_led_by(1) == [("t", 0), ("t", 1)]


def test_fencing_ignores_stale_epochs_unknown_and_fenced_brokers() -> None:
    state = with_topic()
    state.apply(RegisterBroker(0, "127.0.0.1", 9092, None))  # epoch 2
    before = state.copy()
    state.apply(FenceBroker(0, 1))
    state.apply(FenceBroker(7, 1))
    assert state == before
    state.apply(FenceBroker(0, 2))
    fenced = state.copy()
    state.apply(FenceBroker(0, 2))
    assert state == fenced


def test_the_last_isr_member_keeps_its_place_and_the_partition_goes_offline() -> None:
    state = with_topic()
    shrink(state, [0])
    state.apply(FenceBroker(0, 1))
    assert part(state) == PartitionState((0, 1, 2), (0,), NO_LEADER, 1, 2)
    assert state.offline_partitions() == [("t", 0)]
    # A returning out-of-sync replica cannot lead: only the last ISR member can.
    state.apply(FenceBroker(1, 1))
    state.apply(UnfenceBroker(1, 1))
    assert part(state).leader == NO_LEADER
    state.apply(UnfenceBroker(0, 1))
    assert part(state) == PartitionState((0, 1, 2), (0,), 0, 2, 3)
    assert state.offline_partitions() == []


def test_unclean_topics_elect_a_live_out_of_sync_replica() -> None:
    state = with_topic(configs=UNCLEAN)
    shrink(state, [0])
    state.apply(FenceBroker(0, 1))
    assert part(state) == PartitionState((0, 1, 2), (1,), 1, 1, 2)


def test_unclean_election_waits_for_a_returning_replica() -> None:
    state = with_topic(configs=UNCLEAN)
    shrink(state, [0])
    state.apply(FenceBroker(1, 1))
    state.apply(FenceBroker(2, 1))
    state.apply(FenceBroker(0, 1))
    assert part(state).leader == NO_LEADER
    assert state.apply(RegisterBroker(2, "127.0.0.1", 9094, None)) == 2
    assert part(state).leader == 2
    assert part(state).isr == (2,)


def test_enabling_unclean_election_elects_offline_partitions() -> None:
    state = with_topic()
    shrink(state, [0])
    state.apply(FenceBroker(0, 1))
    topic = state.apply(AlterTopicConfigs("t", UNCLEAN))
    assert topic.configs == UNCLEAN
    assert part(state) == PartitionState((0, 1, 2), (1,), 1, 2, 3)


def test_unfencing_checks_the_broker_epoch() -> None:
    state = with_topic()
    refused(ErrorCode.stale_broker_epoch, state, state.apply, UnfenceBroker(0, 5))
    refused(ErrorCode.broker_id_not_registered, state, state.apply, UnfenceBroker(9, 1))
    before = state.copy()
    state.apply(UnfenceBroker(0, 1))  # not fenced: nothing to do
    assert state == before


def test_a_broker_registering_again_unfenced_loses_its_earlier_life() -> None:
    state = with_topic()
    state.apply(CreateTopic("s", topic_id(1), -1, -1, {}, [[0]]))
    assert state.apply(RegisterBroker(0, "127.0.0.1", 9092, None)) == 2
    # Led with followers in sync: leadership moved on, and it must catch up again.
    assert part(state, 0) == PartitionState((0, 1, 2), (1, 2), 1, 1, 1)
    # It was the only replica: it leads again, but in a new leader epoch.
    assert part(state, 0, "s") == PartitionState((0,), (0,), 0, 2, 2)


def test_controlled_shutdown_hands_over_leadership_and_leaves_isrs() -> None:
    state = with_topic(assignments=[[0, 1, 2], [1, 0, 2]])
    state.apply(CreateTopic("s", topic_id(1), -1, -1, {}, [[0]]))
    assert state.apply(BeginControlledShutdown(0, 1)) is True
    assert state.brokers[0].shutting_down
    assert part(state, 0) == PartitionState((0, 1, 2), (1, 2), 1, 1, 1)
    assert part(state, 1) == PartitionState((1, 0, 2), (1, 2), 1, 0, 1)
    # Nobody else could ever lead the single-replica partition.
    assert part(state, 0, "s").leader == 0
    assert state.partitions_led_by(0) == [("s", 0)]
    refused(ErrorCode.stale_broker_epoch, state, state.apply, BeginControlledShutdown(0, 2))


def test_controlled_shutdown_waits_for_a_catching_up_replica() -> None:
    state = with_topic(assignments=[[0, 1]])
    shrink(state, [0])
    assert state.apply(BeginControlledShutdown(0, 1)) is False
    assert part(state).leader == 0
    shrink(state, [0, 1])  # the follower caught up
    assert state.apply(BeginControlledShutdown(0, 1)) is True
    assert part(state) == PartitionState((0, 1), (1,), 1, 1, 3)
    state.apply(FenceBroker(0, 1))
    assert state.apply(BeginControlledShutdown(0, 1)) is True
    assert not state.brokers[0].shutting_down


def test_brokers_shutting_down_get_no_new_replicas_nor_isr_places() -> None:
    state = with_topic(assignments=[[0, 1, 2]])
    shrink(state, [0, 1])
    state.apply(BeginControlledShutdown(2, 1))
    assert not state.is_usable(2)
    assert [broker.node_id for broker in state.usable_brokers()] == [0, 1]
    refused(ErrorCode.ineligible_replica, state, shrink, state, [0, 1, 2])
    message = refused(
        ErrorCode.invalid_replication_factor,
        state,
        state.apply,
        CreateTopic("u", topic_id(1), 1, 3, {}),
    )
    assert message == (
        "Unable to replicate the partition 3 time(s): The target replication factor of 3 "
        "cannot be reached because only 2 broker(s) are registered."
    )


# --- topics --------------------------------------------------------------------------------


def test_create_topic_places_replicas_evenly_and_all_in_sync() -> None:
    state = cluster(3)
    topic = state.apply(CreateTopic("t", topic_id(0), 6, 3, {"retention.ms": "1000"}))
    assert topic.replication_factor == 3
    assert topic.configs == {"retention.ms": "1000"}
    assert state.topic_by_id(topic_id(0)) == topic
    assert state.topic_by_id(topic_id(9)) is None
    for partition in topic.partitions:
        assert partition.isr == partition.replicas
        assert partition.leader == partition.replicas[0]
        assert (partition.leader_epoch, partition.partition_epoch) == (0, 0)
    assert sorted(partition.leader for partition in topic.partitions) == [0, 0, 1, 1, 2, 2]


def test_create_topic_spreads_over_racks() -> None:
    state = cluster(4, racks=2)
    topic = state.apply(CreateTopic("t", topic_id(0), 8, 2, {}))
    assert all({node % 2 for node in p.replicas} == {0, 1} for p in topic.partitions)


@pytest.mark.parametrize(
    ("name", "partitions", "replication_factor", "code", "message"),
    [
        ("", 1, 1, ErrorCode.invalid_topic_exception, "can't be empty"),
        ("a/b", 1, 1, ErrorCode.invalid_topic_exception, "character other than"),
        ("t", 1, 1, ErrorCode.topic_already_exists, "Topic 't' already exists."),
        ("my_topic", 1, 1, ErrorCode.invalid_topic_exception, "collides with existing topic"),
        ("u", 0, 1, ErrorCode.invalid_partitions, "must be larger than 0"),
        ("u", 2**31, 1, ErrorCode.invalid_partitions, "Excessively large number of partitions"),
        ("u", 1, 0, ErrorCode.invalid_replication_factor, "must be larger than 0"),
        ("u", 1, 4, ErrorCode.invalid_replication_factor, "only 3 broker(s)"),
    ],
)
def test_create_topic_refusals(
    name: str, partitions: int, replication_factor: int, code: ErrorCode, message: str
) -> None:
    state = cluster(3)
    state.apply(CreateTopic("t", topic_id(0), 1, 1, {}))
    state.apply(CreateTopic("my.topic", topic_id(1), 1, 1, {}))
    assert message in refused(
        code, state, state.apply, CreateTopic(name, topic_id(2), partitions, replication_factor, {})
    )


def test_create_topic_refuses_reserved_and_taken_topic_ids() -> None:
    state = cluster(1)
    state.apply(CreateTopic("t", topic_id(0), 1, 1, {}))
    for taken in (uuid.UUID(int=0), uuid.UUID(int=1), topic_id(0)):
        refused(ErrorCode.invalid_request, state, state.apply, CreateTopic("u", taken, 1, 1, {}))


def test_manual_assignments_are_used_and_fenced_replicas_start_out_of_sync() -> None:
    state = cluster(3)
    state.apply(FenceBroker(1, 1))
    topic = state.apply(CreateTopic("t", topic_id(0), -1, -1, {}, [[1, 2], [2, 0]]))
    assert topic.partitions == (
        PartitionState((1, 2), (2,), 2, 0, 0),
        PartitionState((2, 0), (2, 0), 2, 0, 0),
    )


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ([[]], "includes an empty replica list."),
        ([[0, 7]], "includes broker 7, but no such broker is registered."),
        ([[0, 1, 0]], "includes the broker 0 more than once."),
        (
            [[0, 1], [2]],
            "includes a partition with 1 replica(s), but this is not consistent with "
            "previous partitions, which have 2 replica(s).",
        ),
        ([[1]], "for partition 0 are fenced or in controlled shutdown."),
    ],
)
def test_manual_assignment_refusals(assignments: list[list[int]], message: str) -> None:
    state = cluster(3)
    state.apply(FenceBroker(1, 1))
    assert message in refused(
        ErrorCode.invalid_replica_assignment,
        state,
        state.apply,
        CreateTopic("t", topic_id(0), -1, -1, {}, assignments),
    )


def test_an_empty_manual_assignment_has_no_partitions() -> None:
    state = cluster(1)
    refused(
        ErrorCode.invalid_partitions,
        state,
        state.apply,
        CreateTopic("t", topic_id(0), 1, 1, {}, []),
    )


def test_delete_topic_forgets_it_and_its_reassignments() -> None:
    state = with_topic(brokers=4)
    state.apply(AlterReassignment("t", 0, [1, 2, 3]))
    state.apply(DeleteTopic("t"))
    assert state.topics == {}
    assert state.topic_by_id(topic_id(0)) is None
    assert state.reassignments() == {}
    refused(ErrorCode.unknown_topic_or_partition, state, state.apply, DeleteTopic("t"))
    state.apply(CreateTopic("t", topic_id(0), 1, 1, {}))


def test_create_partitions_keeps_the_replication_factor_and_balances_leaders() -> None:
    state = cluster(3)
    state.apply(CreateTopic("t", topic_id(0), 2, 2, {}))
    topic = state.apply(CreatePartitions("t", 3))
    assert len(topic.partitions) == 3
    assert topic.replication_factor == 2
    assert sorted(partition.leader for partition in topic.partitions) == [0, 1, 2]
    assert state.topics["t"] == topic
    topic = state.apply(CreatePartitions("t", 4, [[2, 0]]))
    assert topic.partitions[3] == PartitionState((2, 0), (2, 0), 2, 0, 0)


@pytest.mark.parametrize(
    ("name", "total", "assignments", "code", "message"),
    [
        ("nope", 3, None, ErrorCode.unknown_topic_or_partition, "does not host this topic"),
        ("t", 1, None, ErrorCode.invalid_partitions, "which is higher than the requested 1."),
        ("t", 2, None, ErrorCode.invalid_partitions, "Topic already has 2 partitions."),
        ("t", 4, [[0, 1]], ErrorCode.invalid_replica_assignment, "only 1 assignment(s)"),
        ("t", 3, [[0]], ErrorCode.invalid_replica_assignment, "not consistent"),
    ],
)
def test_create_partitions_refusals(
    name: str, total: int, assignments: list[list[int]] | None, code: ErrorCode, message: str
) -> None:
    state = cluster(3)
    state.apply(CreateTopic("t", topic_id(0), 2, 2, {}))
    assert message in refused(code, state, state.apply, CreatePartitions(name, total, assignments))


def test_alter_topic_configs_replaces_the_overrides() -> None:
    state = with_topic(configs={"retention.ms": "1"})
    assert state.apply(AlterTopicConfigs("t", {"segment.ms": "2"})).configs == {"segment.ms": "2"}
    refused(ErrorCode.unknown_topic_or_partition, state, state.apply, AlterTopicConfigs("u", {}))


# --- ISR changes ---------------------------------------------------------------------------


def test_alter_partition_changes_the_isr_and_raises_the_partition_epoch() -> None:
    state = with_topic()
    assert shrink(state, [0, 2]) == PartitionState((0, 1, 2), (0, 2), 0, 0, 1)
    assert shrink(state, [0, 2, 1]) == PartitionState((0, 1, 2), (0, 2, 1), 0, 0, 2)
    unchanged = state.copy()
    assert shrink(state, [0, 2, 1]).partition_epoch == 2
    assert state == unchanged


@pytest.mark.parametrize(
    ("leader", "leader_epoch", "partition_epoch", "isr", "code"),
    [
        (0, 0, 2, [0, 1], ErrorCode.fenced_leader_epoch),
        (1, 1, 2, [1], ErrorCode.not_leader_or_follower),
        (0, 1, 1, [0], ErrorCode.invalid_update_version),
        (0, 1, 2, [1, 2], ErrorCode.invalid_request),
        (0, 1, 2, [0, 0], ErrorCode.invalid_request),
        (0, 1, 2, [0, 3], ErrorCode.ineligible_replica),
        (0, 1, 2, [0, 2], ErrorCode.ineligible_replica),
    ],
)
def test_alter_partition_refusals(
    leader: int, leader_epoch: int, partition_epoch: int, isr: list[int], code: ErrorCode
) -> None:
    state = with_topic(brokers=4, assignments=[[1, 0, 2]])
    state.apply(FenceBroker(1, 1))  # leader 0 in leader epoch 1
    shrink(state, [0])
    state.apply(FenceBroker(2, 1))
    current = part(state)
    assert (current.leader, current.leader_epoch, current.partition_epoch) == (0, 1, 2)
    refused(
        code, state, state.apply, AlterPartition("t", 0, leader, leader_epoch, partition_epoch, isr)
    )


def test_alter_partition_of_unknown_partitions() -> None:
    state = with_topic()
    for topic, index in (("t", 1), ("t", -1), ("u", 0)):
        refused(
            ErrorCode.unknown_topic_or_partition,
            state,
            state.apply,
            AlterPartition(topic, index, 0, 0, 0, [0]),
        )


# --- elections -----------------------------------------------------------------------------


def test_preferred_election() -> None:
    state = with_topic(assignments=[[0, 1, 2], [1, 2, 0]])
    state.apply(FenceBroker(0, 1))
    assert state.preferred_leader_imbalance() == []
    state.apply(UnfenceBroker(0, 1))
    # Back, but not in sync yet.
    results = state.apply(ElectLeaders("preferred", [("t", 0), ("t", 1), ("t", 5)]))
    assert results[("t", 0)] is not None
    assert results[("t", 0)].code == ErrorCode.preferred_leader_not_available
    assert results[("t", 1)] is not None
    assert results[("t", 1)].code == ErrorCode.election_not_needed
    assert results[("t", 5)] is not None
    assert results[("t", 5)].code == ErrorCode.unknown_topic_or_partition
    shrink(state, [1, 2, 0])
    assert state.preferred_leader_imbalance() == [("t", 0)]
    assert state.apply(ElectLeaders("preferred", [("t", 0)])) == {("t", 0): None}
    assert part(state) == PartitionState((0, 1, 2), (1, 2, 0), 0, 2, 3)
    assert state.preferred_leader_imbalance() == []


def test_unclean_election() -> None:
    state = with_topic(assignments=[[0, 1, 2], [1, 2, 0]])
    shrink(state, [0])
    state.apply(FenceBroker(0, 1))
    results = state.apply(ElectLeaders("unclean", [("t", 0), ("t", 1)]))
    assert results[("t", 0)] is None
    assert part(state, 0) == PartitionState((0, 1, 2), (1,), 1, 2, 3)
    assert results[("t", 1)] is not None
    assert results[("t", 1)].code == ErrorCode.election_not_needed
    refused(ErrorCode.invalid_request, state, state.apply, ElectLeaders("random", [("t", 0)]))


def test_unclean_election_without_live_replicas() -> None:
    state = with_topic(assignments=[[0]])
    state.apply(FenceBroker(0, 1))
    error = state.apply(ElectLeaders("unclean", [("t", 0)]))[("t", 0)]
    assert error is not None
    assert error.code == ErrorCode.eligible_leaders_not_available


# --- reassignments -------------------------------------------------------------------------


def test_reassignment_lifecycle_moves_leadership_off_a_removed_replica() -> None:
    state = with_topic(brokers=4)
    state.apply(AlterReassignment("t", 0, [1, 2, 3]))
    moving = PartitionState((1, 2, 3, 0), (0, 1, 2), 0, 0, 1, adding=(3,), removing=(0,))
    assert part(state) == moving
    assert moving.target_replicas == (1, 2, 3)
    assert state.reassignments() == {("t", 0): moving}
    assert state.topics["t"].replication_factor == 3
    # The new replica catches up: once in sync the reassignment completes.
    assert shrink(state, [0, 1, 2, 3]) == PartitionState((1, 2, 3), (1, 2, 3), 1, 1, 2)
    assert state.reassignments() == {}
    refused(
        ErrorCode.no_reassignment_in_progress, state, state.apply, AlterReassignment("t", 0, None)
    )


def test_reassignment_without_new_replicas_completes_at_once() -> None:
    state = with_topic()
    state.apply(AlterReassignment("t", 0, [2, 1]))
    # The leader was removed: the new preferred replica leads.
    assert part(state) == PartitionState((2, 1), (1, 2), 2, 1, 1)
    assert state.reassignments() == {}
    state.apply(AlterReassignment("t", 0, [1, 2]))  # a new order only
    assert part(state) == PartitionState((1, 2), (1, 2), 2, 1, 2)
    assert state.reassignments() == {}


def test_reassignment_target_refusals() -> None:
    state = with_topic()
    for target, message in (
        ([], "empty replica list"),
        ([0, 9], "broker 9, but no such broker"),
        ([1, 1], "the broker 1 more than once"),
    ):
        assert message in refused(
            ErrorCode.invalid_replica_assignment,
            state,
            state.apply,
            AlterReassignment("t", 0, target),
        )
    refused(
        ErrorCode.unknown_topic_or_partition, state, state.apply, AlterReassignment("t", 3, [0])
    )


def test_cancelling_restores_the_original_replicas() -> None:
    state = with_topic(brokers=5)
    state.apply(AlterReassignment("t", 0, [3, 4, 0]))
    assert part(state).replicas == (3, 4, 0, 1, 2)
    shrink(state, [0, 1, 2, 3])
    state.apply(AlterReassignment("t", 0, None))
    assert part(state) == PartitionState((0, 1, 2), (0, 1, 2), 0, 0, 3)
    assert state.reassignments() == {}


def test_a_new_target_replaces_the_reassignment_in_progress() -> None:
    state = with_topic(brokers=5)
    state.apply(AlterReassignment("t", 0, [1, 2, 3]))
    state.apply(AlterReassignment("t", 0, [1, 2, 4]))
    current = part(state)
    assert current.replicas == (1, 2, 4, 3, 0)
    assert (current.adding, current.removing) == ((4,), (3, 0))
    state.apply(AlterReassignment("t", 0, None))
    assert part(state).replicas == (0, 1, 2)


def test_cancelling_needs_an_original_replica_in_sync_unless_unclean_is_allowed() -> None:
    for configs, code in (({}, ErrorCode.invalid_replica_assignment), (UNCLEAN, None)):
        state = with_topic(brokers=4, assignments=[[0, 1]], configs=configs)
        state.apply(AlterReassignment("t", 0, [2, 3]))
        shrink(state, [0, 2])  # 3 is still catching up
        state.apply(FenceBroker(0, 1))
        assert (part(state).isr, part(state).leader) == ((2,), 2)
        if code is not None:
            assert "unclean leader election" in refused(
                code, state, state.apply, AlterReassignment("t", 0, None)
            )
        else:
            state.apply(AlterReassignment("t", 0, None))
            assert (part(state).replicas, part(state).isr, part(state).leader) == ((0, 1), (1,), 1)


# --- producer ids, determinism, snapshots ----------------------------------------------------


def test_producer_id_blocks() -> None:
    state = ClusterState()
    assert state.apply(AllocateProducerIds(1000)) == 0
    assert state.apply(AllocateProducerIds(10)) == 1000
    assert state.next_producer_id == 1010
    refused(ErrorCode.invalid_request, state, state.apply, AllocateProducerIds(0))
    state.next_producer_id = 2**63 - 5
    refused(ErrorCode.unknown_server_error, state, state.apply, AllocateProducerIds(10))


def script() -> list[Command[object]]:
    """Commands for ``cluster(4, racks=2)``."""
    return [
        CreateTopic("a", topic_id(0), 6, 3, {"min.insync.replicas": "2"}),
        CreateTopic("b", topic_id(1), 3, 2, UNCLEAN),
        FenceBroker(0, 1),
        BeginControlledShutdown(1, 1),
        RegisterBroker(0, "127.0.0.1", 9092, "rack0"),
        CreatePartitions("a", 8),
        AlterReassignment("b", 0, [3, 2]),
        ElectLeaders("preferred", [("a", index) for index in range(8)]),
        AllocateProducerIds(1000),
    ]


def run_script(commands: Iterable[Command[object]] | None = None) -> ClusterState:
    state = cluster(4, racks=2)
    for command in script() if commands is None else commands:
        state.apply(command)
    return state


def test_the_same_commands_give_the_same_state() -> None:
    assert run_script() == run_script()


def test_state_survives_a_pickle_round_trip() -> None:
    state = run_script()
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state
    restored.apply(DeleteTopic("a"))
    assert "a" in state.topics


def test_commands_read_back_from_the_journal_make_the_same_changes() -> None:
    """Raft's journal holds each command pickled; a member that replays it after a restart
    must end where the members that applied the commands as submitted are."""
    commands = [*script(), AlterTopicConfigs("a", {"retention.ms": "1000"}), DeleteTopic("b")]
    journal = [pickle.dumps(command) for command in commands]
    assert run_script(pickle.loads(entry) for entry in journal) == run_script(commands)


def test_copies_are_independent() -> None:
    state = run_script()
    copy = state.copy()
    copy.apply(DeleteTopic("b"))
    copy.apply(FenceBroker(3, 1))
    assert "b" in state.topics
    assert not state.brokers[3].fenced


# --- partition limits ----------------------------------------------------------------------


LIMITS = PartitionLimits(per_request=10, per_topic=12, per_broker=20, per_cluster=25)


@pytest.mark.parametrize(
    ("partitions", "code", "message"),
    [
        (11, ErrorCode.invalid_partitions, "11 requested, but a request may add at most 10"),
        (0, ErrorCode.invalid_partitions, "must be larger than 0"),
    ],
)
def test_create_topic_refuses_partitions_beyond_the_request_limit(
    partitions: int, code: ErrorCode, message: str
) -> None:
    state = cluster(3)
    assert message in refused(
        code, state, state.apply, CreateTopic("u", topic_id(0), partitions, 1, {}, None, LIMITS)
    )


def test_create_partitions_refuses_each_limit_with_its_code_and_message() -> None:
    state = cluster(3)
    state.apply(CreateTopic("t", topic_id(0), 10, 1, {}, None, LIMITS))
    state.apply(CreateTopic("u", topic_id(1), 10, 1, {}, None, LIMITS))
    assert "Topic 't' would have 13 partitions, but a topic may have at most 12" in refused(
        ErrorCode.invalid_partitions, state, state.apply, CreatePartitions("t", 13, None, LIMITS)
    )
    assert "20 requested, but a request may add at most 10" in refused(
        ErrorCode.invalid_partitions, state, state.apply, CreatePartitions("t", 30, None, LIMITS)
    )
    assert "would make 26 partitions in the cluster, but it may have at most 25" in refused(
        ErrorCode.policy_violation,
        state,
        state.apply,
        CreatePartitions(
            "t", 16, None, PartitionLimits(per_request=10, per_topic=100, per_cluster=25)
        ),
    )


def test_max_broker_partitions_keeps_new_replicas_off_full_brokers() -> None:
    state = cluster(3)
    limits = PartitionLimits(per_broker=4)
    state.apply(CreateTopic("full", topic_id(0), 0, 0, {}, [[0], [0], [0], [0]], limits))
    topic = state.apply(CreateTopic("t", topic_id(1), 4, 1, {}, None, limits))
    assert sorted(p.replicas[0] for p in topic.partitions) == [1, 1, 2, 2]
    create = CreateTopic("v", topic_id(2), 1, 3, {}, None, limits)
    assert "only 2 of the 3 usable broker(s) hold fewer than 4" in refused(
        ErrorCode.policy_violation, state, state.apply, create
    )
    assert "Broker 0 would hold 5 partition replicas, but a broker may hold at most 4" in refused(
        ErrorCode.policy_violation, state, state.apply, CreatePartitions("t", 5, [[0]], limits)
    )
    assert "would hold 5 partition replicas" in refused(
        ErrorCode.policy_violation, state, state.apply, CreatePartitions("t", 9, None, limits)
    )
    assert len(state.apply(CreatePartitions("t", 8, None, limits)).partitions) == 8


def test_max_broker_partitions_refuses_a_reassignment_onto_a_full_broker() -> None:
    state = cluster(3)
    limits = PartitionLimits(per_broker=2)
    state.apply(CreateTopic("full", topic_id(0), 0, 0, {}, [[0], [0]], limits))
    state.apply(CreateTopic("t", topic_id(1), 0, 0, {}, [[1], [2]], limits))
    assert "Broker 0 would hold 3 partition replicas, but a broker may hold at most 2" in refused(
        ErrorCode.policy_violation, state, state.apply, AlterReassignment("t", 0, [0], limits)
    )
    assert state.reassignments() == {}
    state.apply(AlterReassignment("t", 0, [1, 2], limits))  # broker 2 has room for one more
    assert state.reassignments() == {("t", 0): part(state)}
    state.apply(AlterReassignment("t", 0, [2, 1], limits))  # replacing it adds no replica
    state.apply(AlterReassignment("t", 0, None))


def test_replication_factor_must_fit_the_usable_brokers() -> None:
    state = cluster(3)
    assert "only 3 broker(s) are registered" in refused(
        ErrorCode.invalid_replication_factor,
        state,
        state.apply,
        CreateTopic("t", topic_id(0), 1, 4, {}, None, LIMITS),
    )


def test_validate_only_on_a_copy_gives_the_same_answer() -> None:
    state = cluster(3)
    state.apply(CreateTopic("t", topic_id(0), 10, 3, {}, None, LIMITS))
    commands: list[Command[TopicState]] = [
        CreateTopic("u", topic_id(1), 11, 1, {}, None, LIMITS),
        CreatePartitions("t", 13, None, LIMITS),
        CreatePartitions("t", 11, None, LIMITS),
    ]
    for command in commands:
        trial, real = state.copy(), state.copy()
        outcomes: list[object] = []
        for target in (trial, real):
            try:
                outcomes.append(target.apply(command))
            except ApiError as error:
                outcomes.append((error.code, error.message))
        assert outcomes[0] == outcomes[1]
        assert trial == real


def test_a_logged_command_that_would_wedge_is_skipped_the_same_way_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An older version logged CreatePartitions to 2**31 - 1 without limits: every member
    refuses it at once, logs it once, changes nothing, and applies what follows."""
    members = [with_topic(), with_topic()]
    for member in members:
        started = time.process_time()
        refused(
            ErrorCode.invalid_partitions, member, member.apply, CreatePartitions("t", 2**31 - 1)
        )
        assert time.process_time() - started < 0.5
        member.apply(CreatePartitions("t", 2))
    assert members[0] == members[1]
    assert len(part(members[0], 1).replicas) == 3
    skipped = [r for r in caplog.records if "logged by an older version" in r.getMessage()]
    assert len(skipped) == 2  # once on each member
    assert all(r.levelname == "WARNING" for r in skipped)


def test_placing_the_largest_allowed_request_is_bounded() -> None:
    """The most one command can add (Kafka's 10,000) on 3 brokers with 3 replicas each;
    about 0.1 s of CPU when measured, bounded here with room for a slow machine."""
    state = cluster(3)
    started = time.process_time()
    topic = state.apply(CreateTopic("t", topic_id(0), MAX_PARTITIONS_PER_REQUEST, 3, {}))
    assert time.process_time() - started < 1.0
    assert len(topic.partitions) == MAX_PARTITIONS_PER_REQUEST
    started = time.process_time()
    refused(
        ErrorCode.invalid_partitions,
        state,
        state.apply,
        CreatePartitions("t", 2 * MAX_PARTITIONS_PER_REQUEST + 1),
    )
    assert time.process_time() - started < 0.5
