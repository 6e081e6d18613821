"""The cluster metadata state machine that the Raft quorum replicates.

Every member applies the same commands (``commands``, through ``ClusterState.apply``) in
the same order, so each command is deterministic: time, ids and randomness come in as
its fields, and nothing here does I/O. A command refuses with ``ApiError`` before it
changes anything. The state is plain dicts of the immutable values in ``model``, so it
pickles for Raft snapshots as it is.

Leaders are chosen in replica order among *usable* brokers (registered, unfenced, not in
controlled shutdown). A new leader raises the partition's leader epoch; any change raises
its partition epoch. Besides the commands, reads that the controller, the request
handlers and replication need: ``partition``, ``usable_brokers``, ``is_usable``,
``offline_replicas``, ``partitions_led_by``, ``offline_partitions``,
``preferred_leader_imbalance``, ``reassignments``, ``copy``.

Commands that add partitions carry the ``PartitionLimits`` of the broker that proposed
them and are checked against those before anything is placed, so a member never decides
by its own flags; one logged without limits (by an older version) gets the defaults,
which refuse only what would hold up the member applying it.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from kio.schema.errors import ErrorCode

from .commands import (
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
from .errors import ApiError
from .model import NO_LEADER, BrokerRegistration, PartitionState, TopicState
from .placement import PartitionKey, PlacementBroker, place_partitions
from .topics import PartitionLimits, validate_topic_name

log = logging.getLogger(__name__)

MAX_PRODUCER_ID = 2**63 - 1
UNCLEAN_LEADER_ELECTION = "unclean.leader.election.enable"
PREFERRED = "preferred"
UNCLEAN = "unclean"

_Change = tuple[str, int, PartitionState]
"""A partition's next state before its epochs are raised: (topic, index, state)."""

Result = TypeVar("Result")


@dataclass
class ClusterState:
    brokers: dict[int, BrokerRegistration] = field(default_factory=dict)
    topics: dict[str, TopicState] = field(default_factory=dict)
    next_producer_id: int = 0
    original_replicas: dict[PartitionKey, tuple[int, ...]] = field(default_factory=dict)
    """Replicas before each reassignment in progress, to restore them if it is cancelled."""
    topic_names: dict[uuid.UUID, str] = field(default_factory=dict)
    """Topic name by topic id."""

    # --- reads ---------------------------------------------------------------------------

    def copy(self) -> ClusterState:
        """An independent state to try commands on (validate-only requests); the values are
        immutable, so copying the dicts is enough."""
        return ClusterState(
            dict(self.brokers),
            dict(self.topics),
            self.next_producer_id,
            dict(self.original_replicas),
            dict(self.topic_names),
        )

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicState | None:
        name = self.topic_names.get(topic_id)
        return None if name is None else self.topics[name]

    def partition(self, topic: str, index: int) -> PartitionState | None:
        state = self.topics.get(topic)
        if state is None or not 0 <= index < len(state.partitions):
            return None
        return state.partitions[index]

    def live_brokers(self) -> list[BrokerRegistration]:
        """Registered and unfenced brokers (the ones clients see), by node id."""
        return sorted(
            (broker for broker in self.brokers.values() if not broker.fenced),
            key=lambda broker: broker.node_id,
        )

    def is_usable(self, node_id: int) -> bool:
        """May lead, join an ISR and receive new replicas: live and not shutting down."""
        broker = self.brokers.get(node_id)
        return broker is not None and not broker.fenced and not broker.shutting_down

    def usable_brokers(self) -> list[BrokerRegistration]:
        return [broker for broker in self.live_brokers() if not broker.shutting_down]

    def offline_replicas(self, partition: PartitionState) -> tuple[int, ...]:
        """Replicas on brokers that are fenced or not registered."""
        return tuple(
            node
            for node in partition.replicas
            if node not in self.brokers or self.brokers[node].fenced
        )

    def partitions_led_by(self, node_id: int) -> list[PartitionKey]:
        return [key for key, state in self._partitions() if state.leader == node_id]

    def offline_partitions(self) -> list[PartitionKey]:
        return [key for key, state in self._partitions() if state.leader == NO_LEADER]

    def preferred_leader_imbalance(self) -> list[PartitionKey]:
        """Partitions a preferred election would move: their first replica is usable, in
        the ISR, and not the leader."""
        return [
            key
            for key, state in self._partitions()
            if state.leader != state.replicas[0]
            and state.replicas[0] in state.isr
            and self.is_usable(state.replicas[0])
        ]

    def reassignments(self) -> dict[PartitionKey, PartitionState]:
        """Partitions with a reassignment in progress (``adding``/``removing`` say what)."""
        return {
            key: self.topics[key[0]].partitions[key[1]] for key in sorted(self.original_replicas)
        }

    # --- commands ------------------------------------------------------------------------

    def apply(self, command: Command[Result]) -> Result:
        """Make the change ``command`` names and return its result, or refuse with
        ``ApiError`` having changed nothing."""
        result: object = None
        match command:
            case RegisterBroker():
                result = self._register_broker(command)
            case FenceBroker():
                self._fence_broker(command)
            case UnfenceBroker():
                self._unfence_broker(command)
            case BeginControlledShutdown():
                result = self._begin_controlled_shutdown(command)
            case CreateTopic():
                result = self._create_topic(command)
            case DeleteTopic():
                self._delete_topic(command)
            case CreatePartitions():
                result = self._create_partitions(command)
            case AlterTopicConfigs():
                result = self._alter_topic_configs(command)
            case AlterPartition():
                result = self._alter_partition(command)
            case ElectLeaders():
                result = self._elect_leaders(command)
            case AlterReassignment():
                self._alter_reassignment(command)
            case AllocateProducerIds():
                result = self._allocate_producer_ids(command)
            case _:
                raise TypeError(f"not a metadata command: {command!r}")
        # Each handler returns its command's result type; mypy cannot follow the match.
        return cast(Result, result)

    # --- brokers -------------------------------------------------------------------------

    def _register_broker(self, command: RegisterBroker) -> int:
        """Register a new or returning broker (clients' address, rack, and the internal
        listener's address for other brokers); returns its new broker epoch.

        A broker that registers again without having been fenced restarted within its
        session: its earlier life is fenced first, so it loses its leaderships (with a new
        leader epoch) like any failed broker, and then it comes back like a fenced one.
        """
        node_id = command.node_id
        if node_id < 0:
            raise ApiError(ErrorCode.invalid_request, f"Invalid broker id {node_id}")
        previous = self.brokers.get(node_id)
        if previous is not None and not previous.fenced:
            self.brokers[node_id] = replace(previous, fenced=True, shutting_down=False)
            self._apply_changes(self._departure_changes(node_id))
        epoch = previous.epoch + 1 if previous is not None else 1
        self.brokers[node_id] = BrokerRegistration(
            node_id,
            command.host,
            command.port,
            command.rack,
            epoch,
            internal_host=command.internal_host,
            internal_port=command.internal_port,
        )
        self._apply_changes(self._arrival_changes(node_id))
        return epoch

    def _fence_broker(self, command: FenceBroker) -> None:
        """The broker missed its session: it leaves every ISR it is not the last member of,
        and the partitions it led get new leaders. A stale epoch (an earlier life of the
        broker, which registered again since) is ignored."""
        node_id = command.node_id
        broker = self.brokers.get(node_id)
        if broker is None or broker.epoch != command.epoch or broker.fenced:
            return
        self.brokers[node_id] = replace(broker, fenced=True, shutting_down=False)
        self._apply_changes(self._departure_changes(node_id))

    def _unfence_broker(self, command: UnfenceBroker) -> None:
        """A fenced broker heartbeats again: partitions that lost their leader with it get
        one back (clean when it is in their ISR, unclean only where the topic allows it)."""
        node_id = command.node_id
        broker = self._current_broker(node_id, command.epoch)
        if not broker.fenced:
            return
        self.brokers[node_id] = replace(broker, fenced=False)
        self._apply_changes(self._arrival_changes(node_id))

    def _begin_controlled_shutdown(self, command: BeginControlledShutdown) -> bool:
        """Hand the broker's leaderships to usable ISR members and take it out of the ISRs
        others remain in. True once it leads no partition another live replica could take
        over; while False, a replica still catching up may join the ISR and take over at
        the next call."""
        node_id = command.node_id
        broker = self._current_broker(node_id, command.epoch)
        if broker.fenced:
            return True
        self.brokers[node_id] = replace(broker, shutting_down=True)
        changes = []
        for (name, index), state in self._partitions():
            if state.leader == node_id:
                successor = self._first_usable(state.replicas, state.isr)
                if successor != NO_LEADER:
                    isr = _without(state.isr, node_id)
                    changes.append((name, index, replace(state, leader=successor, isr=isr)))
            elif node_id in state.isr and len(state.isr) > 1:
                changes.append((name, index, replace(state, isr=_without(state.isr, node_id))))
        self._apply_changes(changes)
        return not any(
            self.is_usable(replica)
            for name, index in self.partitions_led_by(node_id)
            for replica in self.topics[name].partitions[index].replicas
        )

    # --- topics --------------------------------------------------------------------------

    def _create_topic(self, command: CreateTopic) -> TopicState:
        """Create a topic with validated config overrides. With ``assignments`` (replica
        lists by partition index) they decide the partition count and replication
        factor; without, replicas are placed over the usable brokers."""
        validate_topic_name(command.name)
        if command.name in self.topics:
            raise ApiError(
                ErrorCode.topic_already_exists, f"Topic '{command.name}' already exists."
            )
        colliding = next(
            (other for other in self.topics if _metric_name(other) == _metric_name(command.name)),
            None,
        )
        if colliding is not None:
            raise ApiError(
                ErrorCode.invalid_topic_exception,
                f"Topic '{command.name}' collides with existing topic: {colliding} "
                "('.' and '_' are the same in metric names)",
            )
        if command.topic_id.int <= 1 or command.topic_id in self.topic_names:
            raise ApiError(ErrorCode.invalid_request, f"Topic id {command.topic_id} cannot be used")
        count = command.partitions if command.assignments is None else len(command.assignments)
        checked = self._check_partition_limits(command.name, count, count, command.limits)
        if command.assignments is None:
            states = self._placed(command.partitions, command.replication_factor, (), checked)
        else:
            states = self._assigned(command.assignments, None, 0)
        self._check_broker_limits(states, checked)
        topic = TopicState(command.name, command.topic_id, tuple(states), dict(command.configs))
        self.topics[command.name] = topic
        self.topic_names[command.topic_id] = command.name
        return topic

    def _delete_topic(self, command: DeleteTopic) -> None:
        topic = self._topic(command.name)
        del self.topics[command.name]
        del self.topic_names[topic.topic_id]
        for key in [key for key in self.original_replicas if key[0] == command.name]:
            del self.original_replicas[key]

    def _create_partitions(self, command: CreatePartitions) -> TopicState:
        """Grow a topic to ``total`` partitions (never shrink); ``assignments`` are the
        replica lists of the new partitions only."""
        topic = self._topic(command.name)
        current = len(topic.partitions)
        if command.total < current:
            raise ApiError(
                ErrorCode.invalid_partitions,
                f"Topic currently has {current} partitions, which is higher than "
                f"the requested {command.total}.",
            )
        if command.total == current:
            raise ApiError(ErrorCode.invalid_partitions, f"Topic already has {current} partitions.")
        checked = self._check_partition_limits(
            command.name, command.total - current, command.total, command.limits
        )
        if command.assignments is None:
            added = self._placed(
                command.total - current,
                topic.replication_factor,
                [state.target_replicas for state in topic.partitions],
                checked,
            )
        else:
            if len(command.assignments) != command.total - current:
                raise ApiError(
                    ErrorCode.invalid_replica_assignment,
                    f"Attempted to add {command.total - current} additional partition(s), but only "
                    f"{len(command.assignments)} assignment(s) were specified.",
                )
            added = self._assigned(command.assignments, topic.replication_factor, current)
        self._check_broker_limits(added, checked)
        updated = replace(topic, partitions=topic.partitions + tuple(added))
        self.topics[command.name] = updated
        return updated

    def _alter_topic_configs(self, command: AlterTopicConfigs) -> TopicState:
        """Replace the topic's config overrides (already validated). Enabling unclean
        leader election elects leaders for its offline partitions at once."""
        updated = replace(self._topic(command.name), configs=dict(command.configs))
        self.topics[command.name] = updated
        self._apply_changes(
            (command.name, index, self._elected(state, _unclean_allowed(updated)))
            for index, state in enumerate(updated.partitions)
            if state.leader == NO_LEADER
        )
        return self.topics[command.name]

    # --- partitions ----------------------------------------------------------------------

    def _alter_partition(self, command: AlterPartition) -> PartitionState:
        """Apply an ISR change proposed by the partition's leader (Kafka's AlterPartition).

        The epochs name the state the leader started from, so a deposed leader or a
        proposal overtaken by another change is refused. When every replica a
        reassignment adds is in the new ISR, the reassignment completes here.
        """
        leader_id = command.leader_id
        _, state = self._partition(command.topic, command.partition)
        where = f"partition {command.topic}-{command.partition}"
        if command.leader_epoch != state.leader_epoch:
            raise ApiError(
                ErrorCode.fenced_leader_epoch,
                f"Leader epoch {command.leader_epoch} of {where} is not the current epoch "
                f"{state.leader_epoch}",
            )
        if leader_id != state.leader:
            raise ApiError(
                ErrorCode.not_leader_or_follower,
                f"Broker {leader_id} is not the leader of {where}; the leader is {state.leader}",
            )
        if command.partition_epoch != state.partition_epoch:
            raise ApiError(
                ErrorCode.invalid_update_version,
                f"Partition epoch {command.partition_epoch} of {where} is not the current epoch "
                f"{state.partition_epoch}",
            )
        isr = tuple(command.new_isr)
        if len(set(isr)) != len(isr):
            raise ApiError(ErrorCode.invalid_request, f"The new ISR {list(isr)} repeats a replica")
        if leader_id not in isr:
            raise ApiError(
                ErrorCode.invalid_request,
                f"The new ISR {list(isr)} of {where} does not include the leader {leader_id}",
            )
        for node in isr:
            if node not in state.replicas:
                raise ApiError(
                    ErrorCode.ineligible_replica,
                    f"Broker {node} is not a replica of {where}",
                )
            if node not in state.isr and not self.is_usable(node):
                raise ApiError(
                    ErrorCode.ineligible_replica,
                    f"Broker {node} is fenced or shutting down and cannot join the ISR of {where}",
                )
        self._apply_changes([(command.topic, command.partition, replace(state, isr=isr))])
        return self.topics[command.topic].partitions[command.partition]

    def _elect_leaders(self, command: ElectLeaders) -> dict[PartitionKey, ApiError | None]:
        """Run a preferred or unclean election for each partition (Kafka's ElectLeaders);
        each partition gets None (elected) or the error that says why not."""
        if command.election not in (PREFERRED, UNCLEAN):
            raise ApiError(ErrorCode.invalid_request, f"Unknown election type {command.election!r}")
        results: dict[PartitionKey, ApiError | None] = {}
        for name, index in command.partitions:
            try:
                if command.election == PREFERRED:
                    self._elect_preferred(name, index)
                else:
                    self._elect_unclean(name, index)
            except ApiError as error:
                results[(name, index)] = error
            else:
                results[(name, index)] = None
        return results

    def _alter_reassignment(self, command: AlterReassignment) -> None:
        """Start (or change) moving a partition to the ``target`` replicas, or cancel the
        reassignment in progress with None. A broker it adds must have room for one more
        replica (``max.broker.partitions`` of ``limits``, the proposer's; not checked for a
        command logged without them).

        While it runs, the replicas are the target followed by the replicas being
        removed; ``adding`` are the target replicas that were not replicas before it
        started. It completes once they are all in the ISR (at once if there are none).
        """
        state_topic, state = self._partition(command.topic, command.partition)
        key = (command.topic, command.partition)
        if command.target is None:
            self._cancel_reassignment(state_topic, key, state)
            return
        wanted = self._checked_replicas(command.target)
        added = [node for node in wanted if node not in state.replicas]
        if command.limits is not None and added:
            held = self._replica_counts()
            for node in added:
                command.limits.check_broker(node, held[node] + 1)
        if not set(wanted) ^ set(state.replicas) and key not in self.original_replicas:
            self._apply_changes(
                [(command.topic, command.partition, replace(state, replicas=wanted))]
            )
            return
        original = self.original_replicas.get(key, state.replicas)
        replicas = wanted + tuple(node for node in state.replicas if node not in wanted)
        self.original_replicas[key] = original
        self._apply_changes(
            [
                (
                    command.topic,
                    command.partition,
                    replace(
                        state,
                        replicas=replicas,
                        adding=tuple(node for node in wanted if node not in original),
                        removing=tuple(node for node in replicas if node not in wanted),
                    ),
                )
            ]
        )

    # --- producer ids --------------------------------------------------------------------

    def _allocate_producer_ids(self, command: AllocateProducerIds) -> int:
        """Reserve ``count`` producer ids; returns the first."""
        if command.count < 1:
            raise ApiError(
                ErrorCode.invalid_request, f"Cannot allocate {command.count} producer ids"
            )
        first = self.next_producer_id
        if first + command.count - 1 > MAX_PRODUCER_ID:
            raise ApiError(ErrorCode.unknown_server_error, "Producer ids are exhausted")
        self.next_producer_id = first + command.count
        return first

    # --- internals -----------------------------------------------------------------------

    def _partitions(self) -> Iterator[tuple[PartitionKey, PartitionState]]:
        for name, topic in self.topics.items():
            for index, state in enumerate(topic.partitions):
                yield (name, index), state

    def _topic(self, name: str) -> TopicState:
        topic = self.topics.get(name)
        if topic is None:
            raise ApiError(
                ErrorCode.unknown_topic_or_partition,
                f"This server does not host this topic: {name}",
            )
        return topic

    def _partition(self, name: str, index: int) -> tuple[TopicState, PartitionState]:
        topic = self._topic(name)
        if not 0 <= index < len(topic.partitions):
            raise ApiError(
                ErrorCode.unknown_topic_or_partition,
                f"Topic {name} has no partition {index}",
            )
        return topic, topic.partitions[index]

    def _current_broker(self, node_id: int, epoch: int) -> BrokerRegistration:
        broker = self.brokers.get(node_id)
        if broker is None:
            raise ApiError(
                ErrorCode.broker_id_not_registered, f"Broker {node_id} is not registered"
            )
        if broker.epoch != epoch:
            raise ApiError(
                ErrorCode.stale_broker_epoch,
                f"Expected broker epoch {broker.epoch} of broker {node_id}, but got {epoch}",
            )
        return broker

    def _first_usable(self, order: Iterable[int], among: Iterable[int]) -> int:
        """The first broker in ``order`` that is in ``among`` and usable, else NO_LEADER."""
        allowed = set(among)
        return next((node for node in order if node in allowed and self.is_usable(node)), NO_LEADER)

    def _elected(self, state: PartitionState, unclean: bool) -> PartitionState:
        """``state`` with a leader from its ISR, or, if none is usable and ``unclean``,
        any usable replica as the sole ISR member; with NO_LEADER otherwise."""
        leader = self._first_usable(state.replicas, state.isr)
        if leader != NO_LEADER:
            return replace(state, leader=leader)
        if unclean:
            leader = self._first_usable(state.replicas, state.replicas)
            if leader != NO_LEADER:
                return replace(state, leader=leader, isr=(leader,))
        return replace(state, leader=NO_LEADER)

    def _departure_changes(self, node_id: int) -> list[_Change]:
        """A fenced broker leaves the ISRs (unless it is the last member) and its
        leaderships pass on."""
        changes = []
        for (name, index), state in self._partitions():
            if node_id not in state.isr and state.leader != node_id:
                continue
            isr = state.isr if state.isr == (node_id,) else _without(state.isr, node_id)
            changed = replace(state, isr=isr)
            if state.leader == node_id:
                changed = self._elected(changed, _unclean_allowed(self.topics[name]))
            changes.append((name, index, changed))
        return changes

    def _arrival_changes(self, node_id: int) -> list[_Change]:
        """Partitions without a leader that the broker holds a replica of may have one now."""
        return [
            (name, index, self._elected(state, _unclean_allowed(self.topics[name])))
            for (name, index), state in self._partitions()
            if state.leader == NO_LEADER and node_id in state.replicas
        ]

    def _apply_changes(self, changes: Iterable[_Change]) -> None:
        """Store the changed partitions, completing reassignments that can complete, and
        raise their epochs."""
        updated: dict[str, list[PartitionState]] = {}
        for name, index, state in changes:
            partitions = updated.setdefault(name, list(self.topics[name].partitions))
            old = partitions[index]
            if (name, index) in self.original_replicas:
                completed = self._completed(state)
                if completed is not None:
                    state = completed
                    del self.original_replicas[(name, index)]
            if state == old:
                continue
            partitions[index] = replace(
                state,
                leader_epoch=old.leader_epoch + (state.leader != old.leader),
                partition_epoch=old.partition_epoch + 1,
            )
        for name, partitions in updated.items():
            self.topics[name] = replace(self.topics[name], partitions=tuple(partitions))

    def _completed(self, state: PartitionState) -> PartitionState | None:
        """The partition after its reassignment, if every added replica is in sync and a
        target replica can lead."""
        if any(node not in state.isr for node in state.adding):
            return None
        target = state.target_replicas
        isr = tuple(node for node in state.isr if node in target)
        leader = state.leader if state.leader in isr else self._first_usable(target, isr)
        if leader == NO_LEADER:
            return None
        return replace(state, replicas=target, isr=isr, leader=leader, adding=(), removing=())

    def _cancel_reassignment(
        self, topic: TopicState, key: PartitionKey, state: PartitionState
    ) -> None:
        original = self.original_replicas.get(key)
        if original is None:
            raise ApiError(
                ErrorCode.no_reassignment_in_progress,
                f"No reassignment is in progress for partition {key[0]}-{key[1]}",
            )
        reverted = replace(
            state,
            replicas=original,
            isr=tuple(node for node in state.isr if node in original),
            adding=(),
            removing=(),
        )
        if not reverted.isr:
            # Only replicas being added are in sync: going back means an unclean election.
            leader = self._first_usable(original, original)
            if leader == NO_LEADER or not _unclean_allowed(topic):
                raise ApiError(
                    ErrorCode.invalid_replica_assignment,
                    f"Unable to revert partition assignment for {key[0]}:{key[1]} because "
                    "it would require an unclean leader election.",
                )
            reverted = replace(reverted, leader=leader, isr=(leader,))
        elif reverted.leader not in reverted.isr:
            reverted = replace(reverted, leader=self._first_usable(original, reverted.isr))
        del self.original_replicas[key]
        self._apply_changes([(key[0], key[1], reverted)])

    def _elect_preferred(self, name: str, index: int) -> None:
        _, state = self._partition(name, index)
        preferred = state.replicas[0]
        if state.leader == preferred:
            raise ApiError(
                ErrorCode.election_not_needed,
                f"The preferred replica {preferred} already leads {name}-{index}",
            )
        if preferred not in state.isr or not self.is_usable(preferred):
            raise ApiError(
                ErrorCode.preferred_leader_not_available,
                f"The preferred replica {preferred} of {name}-{index} is not live and in sync",
            )
        self._apply_changes([(name, index, replace(state, leader=preferred))])

    def _elect_unclean(self, name: str, index: int) -> None:
        _, state = self._partition(name, index)
        if state.leader != NO_LEADER:
            raise ApiError(
                ErrorCode.election_not_needed,
                f"Partition {name}-{index} has a leader: {state.leader}",
            )
        elected = self._elected(state, unclean=True)
        if elected.leader == NO_LEADER:
            raise ApiError(
                ErrorCode.eligible_leaders_not_available,
                f"No replica of {name}-{index} is live: {list(state.replicas)}",
            )
        self._apply_changes([(name, index, elected)])

    def _checked_replicas(
        self, replicas: Sequence[int], replication_factor: int | None = None
    ) -> tuple[int, ...]:
        """Kafka's checks of a replica list given by an operator."""
        if not replicas:
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                "The manual partition assignment includes an empty replica list.",
            )
        seen: set[int] = set()
        for node in sorted(replicas):
            if node not in self.brokers:
                raise ApiError(
                    ErrorCode.invalid_replica_assignment,
                    f"The manual partition assignment includes broker {node}, but no such "
                    "broker is registered.",
                )
            if node in seen:
                raise ApiError(
                    ErrorCode.invalid_replica_assignment,
                    f"The manual partition assignment includes the broker {node} more than once.",
                )
            seen.add(node)
        if replication_factor is not None and len(replicas) != replication_factor:
            raise ApiError(
                ErrorCode.invalid_replica_assignment,
                f"The manual partition assignment includes a partition with {len(replicas)} "
                "replica(s), but this is not consistent with previous partitions, which "
                f"have {replication_factor} replica(s).",
            )
        return tuple(replicas)

    def _assigned(
        self,
        assignments: Sequence[Sequence[int]],
        replication_factor: int | None,
        first_index: int,
    ) -> list[PartitionState]:
        """New partitions on operator-given replicas; the usable ones form the ISR."""
        states = []
        for offset, replicas in enumerate(assignments):
            checked = self._checked_replicas(replicas, replication_factor)
            replication_factor = len(checked)
            isr = tuple(node for node in checked if self.is_usable(node))
            if not isr:
                raise ApiError(
                    ErrorCode.invalid_replica_assignment,
                    "All brokers specified in the manual partition assignment for partition "
                    f"{first_index + offset} are fenced or in controlled shutdown.",
                )
            states.append(PartitionState(checked, isr, isr[0], 0, 0))
        return states

    def _check_partition_limits(
        self, name: str, added: int, total: int, limits: PartitionLimits | None
    ) -> PartitionLimits:
        """Refuse adding ``added`` partitions to topic ``name`` (then ``total``) beyond the
        limits, before anything is placed; returns the limits that apply."""
        checked = limits or PartitionLimits()
        try:
            checked.check_request(added)
            checked.check_topic(name, total)
            checked.check_cluster(added, sum(len(t.partitions) for t in self.topics.values()))
        except ApiError as error:
            if limits is None:
                log.warning(
                    "skipping a metadata command logged by an older version",
                    extra={"topic": name, "error": error.message},
                )
            raise
        return checked

    def _replica_counts(self) -> Counter[int]:
        """Partition replicas each broker holds (or is being given by a reassignment)."""
        return Counter(node for _, state in self._partitions() for node in state.replicas)

    def _check_broker_limits(
        self, added: Iterable[PartitionState], limits: PartitionLimits
    ) -> None:
        new = Counter(node for state in added for node in state.replicas)
        held = self._replica_counts() if new else Counter()
        for node, count in sorted(new.items()):
            limits.check_broker(node, held[node] + count)

    def _placed(
        self,
        count: int,
        replication_factor: int,
        topic_assignments: Iterable[Sequence[int]],
        limits: PartitionLimits,
    ) -> list[PartitionState]:
        """New partitions placed over the usable brokers with room for more replicas
        (``max.broker.partitions``), all replicas in sync."""
        if replication_factor < 1:
            raise ApiError(
                ErrorCode.invalid_replication_factor, "Replication factor must be larger than 0."
            )
        usable = self.usable_brokers()
        if replication_factor > len(usable):
            raise ApiError(
                ErrorCode.invalid_replication_factor,
                f"Unable to replicate the partition {replication_factor} time(s): The target "
                f"replication factor of {replication_factor} cannot be reached because only "
                f"{len(usable)} broker(s) are registered.",
            )
        held = self._replica_counts()
        roomy = [broker for broker in usable if held[broker.node_id] < limits.per_broker]
        if replication_factor > len(roomy):
            raise ApiError(
                ErrorCode.policy_violation,
                f"Unable to place {replication_factor} replica(s) of each new partition: only "
                f"{len(roomy)} of the {len(usable)} usable broker(s) hold fewer than "
                f"{limits.per_broker} partition replicas (max.broker.partitions).",
            )
        placed = place_partitions(
            [PlacementBroker(broker.node_id, broker.rack) for broker in roomy],
            count,
            replication_factor,
            topic_assignments,
            [state.target_replicas for _, state in self._partitions()],
        )
        return [PartitionState(replicas, replicas, replicas[0], 0, 0) for replicas in placed]


def _without(isr: tuple[int, ...], node_id: int) -> tuple[int, ...]:
    return tuple(node for node in isr if node != node_id)


def _unclean_allowed(topic: TopicState) -> bool:
    return topic.configs.get(UNCLEAN_LEADER_ELECTION) == "true"


def _metric_name(name: str) -> str:
    return name.replace(".", "_")
