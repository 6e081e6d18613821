"""Consumer groups and their lag, read over the Kafka protocol as Kafka's own admin tools
read them: ``brook groups`` prints what this module returns, and the operator scales
consumers on the same numbers.

A group's rows are the partitions it has committed offsets for (OffsetFetch to the
group's coordinator) together with the partitions its members are assigned
(DescribeGroups, decoding the consumer protocol's assignments). Each row gets the
partition's log end offset from the partition's leader: ListOffsets "latest", which is
the high watermark, the next offset a consumer can read. The lag follows the rule of
:mod:`brook_client.lag`; the log start offset is read where that rule needs it (for
partitions without a committed offset, reset to ``earliest``).

Log end offset and lag are None where no leader of the partition could answer (no
leader now, topic deleted).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brook_broker.protocol.client import KafkaConnectionError
from kio.schema.consumer_protocol_assignment.v3.data import ConsumerProtocolAssignment
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from .lag import OffsetReset, PartitionOffsets, TopicPartition, partition_lag
from .session import (
    RETRY_BACKOFF_S,
    Api,
    Broker,
    ClusterSession,
    GroupsError,
    error_name,
    failure_reason,
    metadata_brokers,
)

CONSUMER_PROTOCOL = "consumer"
"""The protocol type of Kafka consumers' groups: only their assignments can be decoded."""

DEAD = "Dead"
"""The state a coordinator gives a group it does not know."""

LATEST = -1
EARLIEST = -2
"""ListOffsets' timestamps of a partition's log end and log start offsets."""

_LEADER_ERRORS = frozenset(
    {
        ErrorCode.leader_not_available,
        ErrorCode.not_leader_or_follower,
        ErrorCode.replica_not_available,
        ErrorCode.fenced_leader_epoch,
        ErrorCode.unknown_leader_epoch,
        ErrorCode.offset_not_available,
        ErrorCode.unknown_topic_or_partition,  # not there yet, or deleted meanwhile
    }
)
"""ListOffsets answers after which the partition's leader is looked up again."""

_LIST_OFFSETS = Api(2, 1, 7)
_OFFSET_FETCH = Api(9, 2, 9)  # 2 is the first that fetches every partition (topics null)
_DESCRIBE_GROUPS = Api(15, 0, 5)
_LIST_GROUPS = Api(16, 0, 4)

_BATCHED_OFFSET_FETCH = 8


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a group: its committed offset, log end offset and lag, and the
    member it is assigned to (None for a partition no member has)."""

    topic: str
    partition: int
    committed_offset: int | None
    log_end_offset: int | None
    lag: int | None
    member_id: str | None = None
    host: str | None = None
    client_id: str | None = None


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    assignment: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class GroupDescription:
    """What a group's coordinator says of it (DescribeGroups)."""

    group_id: str
    state: str
    protocol_type: str
    protocol: str
    coordinator: int
    members: tuple[GroupMember, ...]


@dataclass(frozen=True)
class GroupLag:
    """A group with its lag, one row per partition, sorted by topic and partition."""

    description: GroupDescription
    partitions: tuple[PartitionLag, ...]

    @property
    def total_lag(self) -> int:
        """The sum of the lags that are known."""
        return sum(row.lag for row in self.partitions if row.lag is not None)


class GroupNotFound(GroupsError):
    """The coordinator knows no such group (state Dead) and it has no committed offsets."""


# --- pure parts --------------------------------------------------------------------------


_ASSIGNMENT_VERSION = struct.Struct(">h")
_read_assignment = entity_reader(ConsumerProtocolAssignment)


def decode_assignment(data: bytes) -> tuple[TopicPartition, ...]:
    """The partitions of a consumer protocol assignment: an int16 version, then fields that
    later versions only ever extend at the end (so the newest layout kio knows reads all).
    Empty bytes (a member between rebalances) assign nothing."""
    if not data:
        return ()
    if len(data) < _ASSIGNMENT_VERSION.size or _ASSIGNMENT_VERSION.unpack_from(data)[0] < 0:
        raise ValueError("not a consumer protocol assignment: bad version")
    try:
        assignment, _ = _read_assignment(memoryview(data), _ASSIGNMENT_VERSION.size)
    except Exception as error:  # kio raises a variety of errors on bad bytes
        raise ValueError(f"not a consumer protocol assignment: {error}") from error
    return tuple(
        (str(topic.topic), int(partition))
        for topic in assignment.assigned_partitions
        for partition in topic.partitions
    )


def lag_rows(
    description: GroupDescription,
    committed: Mapping[TopicPartition, int],
    log_start_offsets: Mapping[TopicPartition, int],
    log_end_offsets: Mapping[TopicPartition, int],
    reset: OffsetReset,
) -> tuple[PartitionLag, ...]:
    """Rows for every committed or assigned partition, sorted by topic and partition."""
    owners = {
        topic_partition: member
        for member in description.members
        for topic_partition in member.assignment
    }
    rows = []
    for topic_partition in sorted(committed.keys() | owners.keys()):
        committed_offset = committed.get(topic_partition)
        log_end_offset = log_end_offsets.get(topic_partition)
        owner = owners.get(topic_partition)
        rows.append(
            PartitionLag(
                topic=topic_partition[0],
                partition=topic_partition[1],
                committed_offset=committed_offset,
                log_end_offset=log_end_offset,
                lag=partition_lag(
                    committed_offset,
                    log_start_offsets.get(topic_partition),
                    log_end_offset,
                    reset,
                ),
                member_id=None if owner is None else owner.member_id,
                host=None if owner is None else owner.host,
                client_id=None if owner is None else owner.client_id,
            )
        )
    return tuple(rows)


def _described_group(answer: Any, coordinator: int, assignments: bool) -> GroupDescription:
    decode = assignments and answer.protocol_type == CONSUMER_PROTOCOL
    members = []
    for member in answer.members:
        try:
            assignment = decode_assignment(bytes(member.member_assignment)) if decode else ()
        except ValueError as error:
            raise GroupsError(
                f"group {answer.group_id!r}: member {member.member_id}'s assignment: {error}"
            ) from None
        members.append(
            GroupMember(
                member_id=str(member.member_id),
                group_instance_id=getattr(member, "group_instance_id", None),
                client_id=str(member.client_id),
                host=str(member.client_host),
                assignment=assignment,
            )
        )
    return GroupDescription(
        group_id=str(answer.group_id),
        state=str(answer.group_state),
        protocol_type=str(answer.protocol_type),
        protocol=str(answer.protocol_data),
        coordinator=coordinator,
        members=tuple(members),
    )


def _offset_fetch_error(version: int, response: Any) -> int:
    answer = response.groups[0] if version >= _BATCHED_OFFSET_FETCH else response
    return int(answer.error_code)


# --- the requests --------------------------------------------------------------------------


class GroupAdmin(ClusterSession):
    """The consumer group requests of :class:`brook_client.admin.KafkaAdmin`."""

    async def list_groups(self) -> list[GroupDescription]:
        """Every group any broker coordinates (ListGroups to each broker), each described
        by its coordinator without its members' assignments (a listing must not fail on
        one group whose member sent bytes no consumer protocol reads); sorted by group id."""
        brokers = metadata_brokers(await self._cluster.metadata([]))
        listed = await asyncio.gather(*(self._listed_on(broker) for broker in brokers))
        group_ids = sorted({group_id for groups in listed for group_id in groups})
        described = (self.describe_group(g, assignments=False) for g in group_ids)
        return list(await asyncio.gather(*described))

    async def describe_group(self, group_id: str, *, assignments: bool = True) -> GroupDescription:
        """The group's state and members as its coordinator sees them (state Dead if the
        coordinator does not know the group); each member's assignment decoded unless
        ``assignments`` is false (then empty)."""
        node, _, response = await self._ask_coordinator(
            group_id,
            _DESCRIBE_GROUPS,
            {"groups": [group_id], "include_authorized_operations": False},
            lambda version, response: int(response.groups[0].error_code),
        )
        answer = response.groups[0]
        code = int(answer.error_code)
        if code == ErrorCode.group_id_not_found:
            return GroupDescription(group_id, DEAD, "", "", node, ())
        if code != ErrorCode.none:
            raise GroupsError(f"DescribeGroups of group {group_id!r}: {error_name(code)}")
        return _described_group(answer, node, assignments)

    async def committed_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """Every committed offset of the group (OffsetFetch of all its partitions)."""
        body = {
            "group_id": group_id,
            "topics": None,
            "groups": [{"group_id": group_id, "topics": None}],
            "require_stable": False,
        }
        _, version, response = await self._ask_coordinator(
            group_id, _OFFSET_FETCH, body, _offset_fetch_error
        )
        answer = response.groups[0] if version >= _BATCHED_OFFSET_FETCH else response
        code = int(answer.error_code)
        if code == ErrorCode.group_id_not_found:
            return {}
        if code != ErrorCode.none:
            raise GroupsError(f"OffsetFetch of group {group_id!r}: {error_name(code)}")
        offsets = {}
        for topic in answer.topics:
            for partition in topic.partitions:
                if partition.error_code != ErrorCode.none:
                    raise GroupsError(
                        f"OffsetFetch of group {group_id!r}, {topic.name}-"
                        f"{partition.partition_index}: {error_name(partition.error_code)}"
                    )
                if partition.committed_offset >= 0:
                    offsets[(str(topic.name), int(partition.partition_index))] = int(
                        partition.committed_offset
                    )
        return offsets

    async def group_lag(self, group_id: str, reset: OffsetReset = OffsetReset.LATEST) -> GroupLag:
        """The group with committed offset, log end offset and lag of each of its
        partitions. Raises :class:`GroupNotFound` for a group that does not exist."""
        description = await self.describe_group(group_id)
        committed = await self.committed_offsets(group_id)
        if description.state == DEAD and not committed:
            raise GroupNotFound(
                f"consumer group {group_id!r} does not exist (its coordinator, broker "
                f"{description.coordinator}, describes it as {DEAD})"
            )
        partitions = committed.keys() | {
            topic_partition
            for member in description.members
            for topic_partition in member.assignment
        }
        uncommitted = partitions - committed.keys()
        log_end_offsets = await self.log_offsets(partitions, LATEST)
        log_start_offsets = (
            await self.log_offsets(uncommitted, EARLIEST)
            if reset is OffsetReset.EARLIEST and uncommitted
            else {}
        )
        rows = lag_rows(description, committed, log_start_offsets, log_end_offsets, reset)
        return GroupLag(description, rows)

    async def group_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, PartitionOffsets]:
        """For each of ``partitions``: the group's committed offset and the log start and
        log end offsets, everything the lag rule needs whatever the reset policy."""
        wanted = sorted(set(partitions))
        committed = await self.committed_offsets(group_id)
        log_end = await self.log_offsets(wanted, LATEST)
        log_start = await self.log_offsets(wanted, EARLIEST)
        return {
            topic_partition: PartitionOffsets(
                committed.get(topic_partition),
                log_start.get(topic_partition),
                log_end.get(topic_partition),
            )
            for topic_partition in wanted
        }

    async def log_offsets(
        self, partitions: Iterable[TopicPartition], timestamp: int = LATEST
    ) -> dict[TopicPartition, int]:
        """ListOffsets to each partition's leader (LATEST: log end, EARLIEST: log start).
        Partitions whose leaders cannot answer within ``retry_timeout`` are left out."""
        wanted = set(partitions)
        found: dict[TopicPartition, int] = {}
        deadline = self._deadline()
        while wanted:
            leaders = await self._leaders(sorted({topic for topic, _ in wanted}))
            by_leader: dict[Broker, list[TopicPartition]] = {}
            for topic_partition in sorted(wanted):
                leader = leaders.get(topic_partition)
                if leader is not None:
                    by_leader.setdefault(leader, []).append(topic_partition)
            answers = await asyncio.gather(
                *(self._list_offsets(leader, tps, timestamp) for leader, tps in by_leader.items())
            )
            for answer in answers:
                found.update(answer)
            wanted = {
                topic_partition
                for topic_partition in wanted - found.keys()
                if topic_partition in leaders  # not a deleted topic
            }
            if not wanted or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(RETRY_BACKOFF_S)
        return found

    async def _listed_on(self, broker: Broker) -> list[str]:
        """The ids of the groups ``broker`` coordinates (waits while it loads them)."""
        node, address = broker
        deadline = self._deadline()
        while True:
            try:
                _, response = await self._cluster.request(address, _LIST_GROUPS, {})
            except (KafkaConnectionError, TimeoutError) as error:
                reason = failure_reason(error, address)
                raise GroupsError(f"ListGroups to broker {node}: {reason}") from None
            code = int(response.error_code)
            if code == ErrorCode.none:
                return [str(group.group_id) for group in response.groups]
            if code != ErrorCode.coordinator_load_in_progress:
                raise GroupsError(f"ListGroups to broker {node}: {error_name(code)}")
            if asyncio.get_running_loop().time() > deadline:
                raise GroupsError(
                    f"broker {node} was still loading its groups after {self._retry_timeout:g} s"
                )
            await asyncio.sleep(RETRY_BACKOFF_S)

    async def _list_offsets(
        self, leader: Broker, partitions: Sequence[TopicPartition], timestamp: int
    ) -> dict[TopicPartition, int]:
        """The offsets one leader answers; failed partitions are left out (tried again)."""
        node, address = leader
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        body = {
            "replica_id": -1,
            "isolation_level": 0,
            "topics": [
                {
                    "name": topic,
                    "partitions": [{"partition_index": p, "timestamp": timestamp} for p in indexes],
                }
                for topic, indexes in by_topic.items()
            ],
        }
        try:
            _, response = await self._cluster.request(address, _LIST_OFFSETS, body)
        except (KafkaConnectionError, TimeoutError):
            return {}
        offsets = {}
        for topic in response.topics:
            for answer in topic.partitions:
                code = int(answer.error_code)
                if code == ErrorCode.none:
                    offsets[(str(topic.name), int(answer.partition_index))] = int(answer.offset)
                elif code not in _LEADER_ERRORS:
                    raise GroupsError(
                        f"ListOffsets of {topic.name}-{answer.partition_index} on broker "
                        f"{node}: {error_name(code)}"
                    )
        return offsets
