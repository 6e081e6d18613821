"""The group coordinator: Kafka's classic group protocol for the groups this broker holds.

A broker coordinates the groups whose ``__consumer_offsets`` partition it leads. When it
becomes leader of such a partition it reads the partition from the start (requests for
its groups meanwhile get COORDINATOR_LOAD_IN_PROGRESS) and rebuilds each group's
committed offsets and last membership; members of a group that was stable carry on
without a rebalance as long as they heartbeat within their session timeout. When it
stops leading, the partition's groups are dropped here (NOT_COORDINATOR) and clients
look the coordinator up again.

Offset commits and each new generation's membership are written to that partition and
acknowledged once replicated to its in-sync replicas (as ``acks=all``).

Timers (session timeouts, the join and sync phases, expired offsets) are deadlines
checked by :meth:`GroupCoordinator.tick`, which the broker runs every
``TICK_SECONDS``; tests call it with their own clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kio.schema.consumer_protocol_subscription.v0.data import ConsumerProtocolSubscription
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from .. import metrics
from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.quorum import MetadataQuorum
from ..replication import ReplicaManager
from .group import Group, GroupState, JoinResult, Member, SyncResult
from .offsets_topic import (
    CommittedOffset,
    GroupKey,
    OffsetKey,
    StoredGroup,
    UnknownRecord,
    decode_group_value,
    decode_key,
    decode_offset_value,
    group_key,
    group_value,
    offset_key,
    offset_value,
    partition_for,
)
from .replicated_log import ReplicatedOffsetsLog

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
OFFSET_METADATA_MAX_BYTES = 4096
"""Kafka's offset.metadata.max.bytes."""

Record = tuple[bytes, bytes | None]


class OffsetsLog(Protocol):
    """The replicated ``__consumer_offsets`` topic, as the coordinator writes and reads it."""

    def partition_count(self) -> int:
        """Partitions of the topic; 0 while it does not exist."""
        ...

    def led_partitions(self) -> dict[int, int]:
        """Partition index -> leader epoch of the partitions this broker leads."""
        ...

    def append(self, partition: int, records: Sequence[Record]) -> Awaitable[None]:
        """Append at once (so writes land in the order they are made) and return what
        to await until the in-sync replicas have it. Both raise :class:`ApiError` with a
        coordinator error (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, …)."""
        ...

    def read(self, partition: int) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
        """Every record of the partition, oldest first."""
        ...


class GroupCoordinator:
    def __init__(
        self,
        config: BrokerConfig,
        offsets_log: OffsetsLog,
        partition_exists: Callable[[str, int], bool],
        end_offset: Callable[[str, int], int | None] = lambda topic, index: None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._config = config
        self._log = offsets_log
        self._partition_exists = partition_exists
        self._end_offset = end_offset
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._groups: dict[str, Group] = {}
        self._led: dict[int, int] = {}
        """``__consumer_offsets`` partitions this broker leads -> leader epoch."""
        self._loading: dict[int, asyncio.Task[None]] = {}
        self._next_expiry = 0.0
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def for_broker(
        cls, config: BrokerConfig, quorum: MetadataQuorum, replicas: ReplicaManager
    ) -> GroupCoordinator:
        """The coordinator of a broker: offsets in its replicas of ``__consumer_offsets``,
        commits accepted for the partitions the metadata knows, lag measured against the
        replicas hosted here."""

        def high_watermark(topic: str, index: int) -> int | None:
            replica = replicas.partition(topic, index)
            return None if replica is None else replica.log.high_watermark

        return cls(
            config,
            ReplicatedOffsetsLog(config, quorum, replicas),
            lambda topic, index: quorum.state.partition(topic, index) is not None,
            high_watermark,
        )

    # --- leadership of __consumer_offsets partitions -------------------------------------

    def on_metadata_change(self) -> None:
        self.on_leadership(self._log.led_partitions())

    def on_leadership(self, led: Mapping[int, int]) -> None:
        """The partitions of ``__consumer_offsets`` this broker now leads, with their
        leader epochs: load the new ones, drop the groups of those it no longer leads."""
        for partition, epoch in list(self._led.items()):
            if led.get(partition) != epoch:
                self._unload(partition)
        for partition, epoch in led.items():
            if self._led.get(partition) != epoch:
                self._led[partition] = epoch
                self._loading[partition] = asyncio.get_running_loop().create_task(
                    self._load(partition), name=f"loading groups of partition {partition}"
                )

    def _unload(self, partition: int) -> None:
        del self._led[partition]
        task = self._loading.pop(partition, None)
        if task is not None:
            task.cancel()
        for group in [group for group in self._groups.values() if group.partition == partition]:
            self._drop(group, ErrorCode.not_coordinator)
        log.info("no longer coordinating the groups of partition %d", partition)

    async def _load(self, partition: int) -> None:
        started = self._clock()
        stored: dict[str, StoredGroup | None] = {}
        offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        records = 0
        try:
            async for key, value in self._log.read(partition):
                records += 1
                if key is None:
                    continue
                try:
                    decoded = decode_key(key)
                    if isinstance(decoded, OffsetKey):
                        group_offsets = offsets.setdefault(decoded.group_id, {})
                        if value is None:
                            group_offsets.pop((decoded.topic, decoded.partition), None)
                        else:
                            group_offsets[(decoded.topic, decoded.partition)] = decode_offset_value(
                                value
                            )
                    else:
                        stored[decoded.group_id] = (
                            None if value is None else decode_group_value(value)
                        )
                except UnknownRecord as error:
                    log.warning("skipped a record of %s: %s", "__consumer_offsets", error)
        except ApiError as error:
            log.warning("loading groups of partition %d failed: %s", partition, error.message)
            self._loading.pop(partition, None)
            self._led.pop(partition, None)  # loaded again on the next metadata change
            return
        now = self._clock()
        for group_id in stored.keys() | offsets.keys():
            group = self._restore(group_id, partition, stored.get(group_id), now)
            group.offsets = {key: offset for key, offset in offsets.get(group_id, {}).items()}
            if group.members or group.offsets or group.protocol_type is not None:
                self._groups[group_id] = group
        self._loading.pop(partition, None)
        log.info(
            "coordinating the groups of partition %d: %d groups from %d records in %.2f s",
            partition,
            sum(1 for group in self._groups.values() if group.partition == partition),
            records,
            now - started,
        )

    def _restore(
        self, group_id: str, partition: int, stored: StoredGroup | None, now: float
    ) -> Group:
        group = Group(group_id, partition)
        if stored is None:
            return group
        group.generation = stored.generation
        group.protocol_type = stored.protocol_type or None
        group.protocol = stored.protocol
        group.leader_id = stored.leader
        group.state_timestamp_ms = stored.state_timestamp_ms
        for entry in stored.members:
            member = Member(
                member_id=entry.member_id,
                group_instance_id=entry.group_instance_id,
                client_id=entry.client_id,
                client_host=entry.client_host,
                session_timeout_s=entry.session_timeout_ms / 1000,
                rebalance_timeout_s=entry.rebalance_timeout_ms / 1000,
                protocols=((stored.protocol or "", entry.subscription),),
                assignment=entry.assignment,
                heartbeat_deadline=now + entry.session_timeout_ms / 1000,
            )
            group.members[member.member_id] = member
            if member.group_instance_id is not None:
                group.static_members[member.group_instance_id] = member.member_id
        group.state = GroupState.STABLE if group.members else GroupState.EMPTY
        return group

    # --- looking groups up ---------------------------------------------------------------

    def partition_of(self, group_id: str) -> int | None:
        count = self._log.partition_count()
        return partition_for(group_id, count) if count else None

    def _group(self, group_id: str, *, create: bool) -> Group | None:
        """The group if this broker coordinates it (created empty if ``create``), else
        the ApiError that sends the client elsewhere or asks it to wait."""
        if not group_id:
            raise ApiError(ErrorCode.invalid_group_id, "The group id is empty")
        partition = self.partition_of(group_id)
        if partition is None:
            raise ApiError(
                ErrorCode.coordinator_not_available,
                "__consumer_offsets does not exist yet: ask FindCoordinator",
            )
        if partition not in self._led:
            raise ApiError(
                ErrorCode.not_coordinator, f"This broker does not coordinate group {group_id}"
            )
        if partition in self._loading:
            raise ApiError(
                ErrorCode.coordinator_load_in_progress,
                f"The offsets of group {group_id} are still being loaded",
            )
        group = self._groups.get(group_id)
        if group is None and create:
            group = Group(group_id, partition, state_timestamp_ms=self._wall_clock_ms())
            self._groups[group_id] = group
        return group

    # --- JoinGroup -----------------------------------------------------------------------

    async def join(
        self,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        *,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Sequence[tuple[str, bytes]],
        require_known_member_id: bool,
    ) -> JoinResult:
        config = self._config
        group = self._group(group_id, create=True)
        assert group is not None
        offered = tuple(protocols)
        if not (
            config.group_min_session_timeout_ms
            <= session_timeout_ms
            <= config.group_max_session_timeout_ms
        ):
            return self._refuse(group, JoinResult(ErrorCode.invalid_session_timeout, member_id))
        if not protocol_type or not offered or not group.supports(protocol_type, offered):
            return self._refuse(group, JoinResult(ErrorCode.inconsistent_group_protocol, member_id))
        now = self._clock()
        settings = {
            "client_id": client_id,
            "client_host": client_host,
            "session_timeout_s": session_timeout_ms / 1000,
            "rebalance_timeout_s": rebalance_timeout_ms / 1000,
            "protocols": offered,
        }
        if not member_id:
            if group_instance_id is not None and group_instance_id in group.static_members:
                return await self._rejoin_static(group, group_instance_id, settings)
            if len(group.members) + len(group.pending_members) >= config.group_max_size:
                return JoinResult(ErrorCode.group_max_size_reached)
            new_id = f"{group_instance_id or client_id}-{uuid.uuid4()}"
            if require_known_member_id and group_instance_id is None:
                group.pending_members[new_id] = now + session_timeout_ms / 1000
                return JoinResult(ErrorCode.member_id_required, new_id)
            return await self._add_member(group, new_id, group_instance_id, settings, protocol_type)
        if member_id in group.pending_members:
            del group.pending_members[member_id]
            return await self._add_member(
                group, member_id, group_instance_id, settings, protocol_type
            )
        member = group.members.get(member_id)
        if member is None:
            return JoinResult(ErrorCode.unknown_member_id, member_id)
        if self._fenced(group, member_id, group_instance_id):
            return JoinResult(ErrorCode.fenced_instance_id, member_id)
        changed = member.protocols != offered
        for name, value in settings.items():
            setattr(member, name, value)
        member.heartbeat_deadline = now + member.session_timeout_s
        if group.state is GroupState.COMPLETING_REBALANCE and not changed:
            return self._join_result(group, member)  # a repeated join: the same answer
        if group.state is GroupState.STABLE and not changed and member_id != group.leader_id:
            return self._join_result(group, member)
        return await self._await_join(group, member, f"member {member_id} rejoined")

    def _refuse(self, group: Group, result: JoinResult) -> JoinResult:
        if group.is_empty and group.state is GroupState.EMPTY and not group.offsets:
            self._groups.pop(group.group_id, None)  # made only for this join
        return result

    def _fenced(self, group: Group, member_id: str, group_instance_id: str | None) -> bool:
        """A static member's instance id now belongs to a newer member id."""
        return (
            group_instance_id is not None
            and group.static_members.get(group_instance_id, member_id) != member_id
        )

    async def _add_member(
        self,
        group: Group,
        member_id: str,
        group_instance_id: str | None,
        settings: Mapping[str, object],
        protocol_type: str,
    ) -> JoinResult:
        member = Member(member_id=member_id, group_instance_id=group_instance_id, **settings)  # type: ignore[arg-type]
        member.heartbeat_deadline = self._clock() + member.session_timeout_s
        if not group.members:
            group.protocol_type = protocol_type
        group.members[member_id] = member
        if group_instance_id is not None:
            group.static_members[group_instance_id] = member_id
        if group.leader_id is None or group.leader_id not in group.members:
            group.leader_id = member_id
        return await self._await_join(group, member, f"member {member_id} joined")

    async def _rejoin_static(
        self, group: Group, group_instance_id: str, settings: Mapping[str, object]
    ) -> JoinResult:
        """A static member restarted (same instance id, no member id): it takes a new
        member id and, in a stable group whose subscriptions did not change, its old
        assignment, without a rebalance. The old member id is fenced from now on."""
        old_id = group.static_members[group_instance_id]
        old = group.members.pop(old_id)
        old.answer_join(JoinResult(ErrorCode.fenced_instance_id, old_id))
        old.answer_sync(SyncResult(ErrorCode.fenced_instance_id))
        new_id = f"{group_instance_id}-{uuid.uuid4()}"
        member = Member(
            member_id=new_id,
            group_instance_id=group_instance_id,
            assignment=old.assignment,
            **settings,  # type: ignore[arg-type]
        )
        member.heartbeat_deadline = self._clock() + member.session_timeout_s
        group.members[new_id] = member
        group.static_members[group_instance_id] = new_id
        was_leader = group.leader_id == old_id
        if was_leader:
            group.leader_id = new_id
        unchanged = member.protocols == old.protocols
        if group.state is GroupState.STABLE and unchanged and not was_leader:
            self._store_group(group)
            return self._join_result(group, member)
        return await self._await_join(group, member, f"static member {group_instance_id} rejoined")

    async def _await_join(self, group: Group, member: Member, reason: str) -> JoinResult:
        loop = asyncio.get_running_loop()
        if member.join_waiter is not None and not member.join_waiter.done():
            member.join_waiter.set_result(JoinResult(ErrorCode.rebalance_in_progress))
        waiter: asyncio.Future[JoinResult] = loop.create_future()
        member.join_waiter = waiter
        if group.state is GroupState.PREPARING_REBALANCE and group.initial_join:
            group.join_deadline = min(
                self._clock() + self._config.group_initial_rebalance_delay_ms / 1000,
                group.join_deadline_limit,
            )
        elif group.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(group, reason)
        self._maybe_complete_join(group)
        return await waiter

    def _join_result(self, group: Group, member: Member) -> JoinResult:
        is_leader = member.member_id == group.leader_id
        return JoinResult(
            ErrorCode.none,
            member.member_id,
            group.generation,
            group.protocol_type,
            group.protocol,
            group.leader_id or "",
            tuple(
                (other.member_id, other.group_instance_id, other.metadata(group.protocol))
                for other in group.members.values()
            )
            if is_leader
            else (),
        )

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        now = self._clock()
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                member.answer_sync(SyncResult(ErrorCode.rebalance_in_progress))
        initial = group.state is GroupState.EMPTY
        group.transition(GroupState.PREPARING_REBALANCE, self._wall_clock_ms())
        rebalance_timeout = group.rebalance_timeout_s()
        group.initial_join = initial and self._config.group_initial_rebalance_delay_ms > 0
        if group.initial_join:
            group.join_deadline_limit = now + max(
                rebalance_timeout, self._config.group_initial_rebalance_delay_ms / 1000
            )
            group.join_deadline = min(
                now + self._config.group_initial_rebalance_delay_ms / 1000,
                group.join_deadline_limit,
            )
        else:
            group.join_deadline = now + rebalance_timeout
        log.info(
            "group %s: preparing a rebalance in generation %d: %s",
            group.group_id,
            group.generation,
            reason,
        )

    def _maybe_complete_join(self, group: Group) -> None:
        if (
            group.state is GroupState.PREPARING_REBALANCE
            and not group.initial_join
            and group.all_rejoined()
        ):
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        """End the join phase: members that did not rejoin are dropped, the rest form
        the next generation; the leader gets everyone's metadata to assign from."""
        group.initial_join = False
        for member in [m for m in group.members.values() if m.join_waiter is None]:
            self._forget_member(group, member)
            log.info("group %s: member %s did not rejoin in time", group.group_id, member.member_id)
        group.generation += 1
        now_ms = self._wall_clock_ms()
        if not group.members:
            group.protocol = None
            group.leader_id = None
            group.transition(GroupState.EMPTY, now_ms)
            self._store_group(group)
            log.info("group %s: empty in generation %d", group.group_id, group.generation)
            return
        group.protocol = group.select_protocol()
        if group.leader_id not in group.members:
            group.leader_id = next(iter(group.members))
        group.transition(GroupState.COMPLETING_REBALANCE, now_ms)
        now = self._clock()
        group.sync_deadline = now + group.rebalance_timeout_s()
        metrics.GROUP_REBALANCES.inc()
        for member in group.members.values():
            member.heartbeat_deadline = now + member.session_timeout_s
            member.answer_join(self._join_result(group, member))
        log.info(
            "group %s: generation %d with %d members, protocol %s",
            group.group_id,
            group.generation,
            len(group.members),
            group.protocol,
        )

    # --- SyncGroup -----------------------------------------------------------------------

    async def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        *,
        protocol_type: str | None,
        protocol: str | None,
        assignments: Mapping[str, bytes],
    ) -> SyncResult:
        group = self._group(group_id, create=False)
        error = self._check_member(group, generation, member_id, group_instance_id)
        if error is not None:
            return SyncResult(error)
        assert group is not None
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol is not None and protocol != group.protocol
        ):
            return SyncResult(ErrorCode.inconsistent_group_protocol)
        member = group.members[member_id]
        member.heartbeat_deadline = self._clock() + member.session_timeout_s
        if group.state is GroupState.PREPARING_REBALANCE:
            return SyncResult(ErrorCode.rebalance_in_progress)
        if group.state is GroupState.STABLE:
            return self._sync_result(group, member)
        waiter: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        member.answer_sync(SyncResult(ErrorCode.rebalance_in_progress))
        member.sync_waiter = waiter
        if member_id == group.leader_id:
            await self._complete_sync(group, assignments)
        return await waiter

    async def _complete_sync(self, group: Group, assignments: Mapping[str, bytes]) -> None:
        """Store the leader's assignment with the generation, then hand it out."""
        generation = group.generation
        for member in group.members.values():
            member.assignment = assignments.get(member.member_id, b"")
        try:
            await self._log.append(group.partition, [_membership_record(group)])
        except ApiError as error:
            if group.state is GroupState.COMPLETING_REBALANCE and group.generation == generation:
                for member in group.members.values():
                    member.assignment = b""
                    member.answer_sync(SyncResult(error.code))
                self._prepare_rebalance(group, f"storing the assignment failed: {error.message}")
            return
        if group.state is not GroupState.COMPLETING_REBALANCE or group.generation != generation:
            return  # a member left or joined meanwhile: the next generation takes over
        group.transition(GroupState.STABLE, self._wall_clock_ms())
        for member in group.members.values():
            member.answer_sync(self._sync_result(group, member))

    def _sync_result(self, group: Group, member: Member) -> SyncResult:
        return SyncResult(ErrorCode.none, group.protocol_type, group.protocol, member.assignment)

    def _check_member(
        self, group: Group | None, generation: int, member_id: str, group_instance_id: str | None
    ) -> ErrorCode | None:
        """Kafka's order of checks for a request from a member of a generation."""
        if group is None or member_id not in group.members:
            if group is not None and self._fenced(group, member_id, group_instance_id):
                return ErrorCode.fenced_instance_id
            return ErrorCode.unknown_member_id
        if self._fenced(group, member_id, group_instance_id):
            return ErrorCode.fenced_instance_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        return None

    # --- Heartbeat and LeaveGroup ---------------------------------------------------------

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, group_instance_id: str | None
    ) -> ErrorCode:
        group = self._group(group_id, create=False)
        error = self._check_member(group, generation, member_id, group_instance_id)
        if error is not None:
            return error
        assert group is not None
        member = group.members[member_id]
        member.heartbeat_deadline = self._clock() + member.session_timeout_s
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(self, group_id: str, members: Sequence[tuple[str, str | None]]) -> list[ErrorCode]:
        """Remove each ``(member id, group instance id)``; one error code per member."""
        group = self._group(group_id, create=False)
        if group is None:
            return [ErrorCode.unknown_member_id for _ in members]
        errors = []
        left = []
        for member_id, group_instance_id in members:
            if group_instance_id is not None:
                current = group.static_members.get(group_instance_id)
                if current is None:
                    errors.append(ErrorCode.unknown_member_id)
                    continue
                if member_id and member_id != current:
                    errors.append(ErrorCode.fenced_instance_id)
                    continue
                member_id = current
            if group.pending_members.pop(member_id, None) is not None:
                errors.append(ErrorCode.none)
                continue
            member = group.members.get(member_id)
            if member is None:
                errors.append(ErrorCode.unknown_member_id)
                continue
            errors.append(ErrorCode.none)
            left.append(member)
        for member in left:
            self._remove_member(group, member, f"member {member.member_id} left the group")
        if not left and group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(group)
        return errors

    def _forget_member(self, group: Group, member: Member) -> None:
        del group.members[member.member_id]
        if member.group_instance_id is not None:
            group.static_members.pop(member.group_instance_id, None)
        member.answer_join(JoinResult(ErrorCode.unknown_member_id, member.member_id))
        member.answer_sync(SyncResult(ErrorCode.unknown_member_id))

    def _remove_member(self, group: Group, member: Member, reason: str) -> None:
        self._forget_member(group, member)
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, reason)
        self._maybe_complete_join(group)

    # --- timers --------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire sessions, end join and sync phases whose time is up, and now and then
        remove expired offsets."""
        now = self._clock()
        for group in list(self._groups.values()):
            for member_id, deadline in list(group.pending_members.items()):
                if now > deadline:
                    del group.pending_members[member_id]
            for member in list(group.members.values()):
                waiting = member.join_waiter is not None or member.sync_waiter is not None
                if not waiting and now > member.heartbeat_deadline:
                    self._remove_member(
                        group, member, f"member {member.member_id} missed its session timeout"
                    )
            if group.state is GroupState.PREPARING_REBALANCE:
                if now >= group.join_deadline:
                    self._complete_join(group)
                else:
                    self._maybe_complete_join(group)
            elif group.state is GroupState.COMPLETING_REBALANCE and now >= group.sync_deadline:
                for member in [m for m in group.members.values() if m.sync_waiter is None]:
                    self._forget_member(group, member)
                self._prepare_rebalance(group, "members did not sync in time")
                self._maybe_complete_join(group)
        if now >= self._next_expiry:
            self._next_expiry = now + self._config.offsets_retention_check_interval_ms / 1000
            self.expire_offsets()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick()
            except Exception:
                log.exception("group coordinator tick failed")

    # --- offsets -------------------------------------------------------------------------

    async def commit_offsets(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        offsets: Mapping[tuple[str, int], tuple[int, int, str | None]],
    ) -> dict[tuple[str, int], ErrorCode]:
        """Commit ``(topic, partition) -> (offset, leader epoch, metadata)``; an error for
        the whole request is raised, per-partition ones are returned."""
        simple = generation < 0 and not member_id
        group = self._group(group_id, create=simple)
        if simple:
            assert group is not None
            if group.members:
                raise ApiError(
                    ErrorCode.unknown_member_id,
                    f"Group {group_id} has members: commit as one of them",
                )
        else:
            if group is not None and group.state is GroupState.COMPLETING_REBALANCE:
                raise ApiError(ErrorCode.rebalance_in_progress, "The group is rebalancing")
            error = self._check_member(group, generation, member_id, group_instance_id)
            if error is not None:
                raise ApiError(error, _MEMBER_ERRORS[error])
            assert group is not None
            member = group.members[member_id]
            member.heartbeat_deadline = self._clock() + member.session_timeout_s
        now_ms = self._wall_clock_ms()
        results: dict[tuple[str, int], ErrorCode] = {}
        committed: dict[tuple[str, int], CommittedOffset] = {}
        for (topic, partition), (offset, leader_epoch, metadata) in offsets.items():
            if metadata is not None and len(metadata.encode()) > OFFSET_METADATA_MAX_BYTES:
                results[(topic, partition)] = ErrorCode.offset_metadata_too_large
            elif not self._partition_exists(topic, partition):
                results[(topic, partition)] = ErrorCode.unknown_topic_or_partition
            else:
                committed[(topic, partition)] = CommittedOffset(
                    offset, leader_epoch, metadata or "", now_ms
                )
        if committed:
            await self._log.append(
                group.partition,
                [
                    (offset_key(OffsetKey(group_id, topic, partition)), offset_value(offset))
                    for (topic, partition), offset in committed.items()
                ],
            )
            group.offsets.update(committed)
            metrics.OFFSET_COMMITS.inc(len(committed))
            results.update((key, ErrorCode.none) for key in committed)
        return results

    def fetch_offsets(
        self, group_id: str, partitions: Iterable[tuple[str, int]] | None
    ) -> dict[tuple[str, int], CommittedOffset | None]:
        """Committed offsets of the given partitions (None: not committed), or of all."""
        group = self._group(group_id, create=False)
        offsets = {} if group is None else group.offsets
        if partitions is None:
            return dict(offsets)
        return {key: offsets.get(key) for key in partitions}

    async def delete_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], ErrorCode]:
        """OffsetDelete: allowed for topics no member of the group subscribes to."""
        group = self._group(group_id, create=False)
        if group is None:
            raise ApiError(ErrorCode.group_id_not_found, f"Group {group_id} does not exist")
        subscribed = self._subscribed_topics(group)
        results = {}
        deleted = []
        for key in partitions:
            if key[0] in subscribed:
                results[key] = ErrorCode.group_subscribed_to_topic
            else:
                results[key] = ErrorCode.none
                if key in group.offsets:
                    deleted.append(key)
        if deleted:
            await self._log.append(
                group.partition,
                [(offset_key(OffsetKey(group_id, topic, index)), None) for topic, index in deleted],
            )
            for key in deleted:
                group.offsets.pop(key, None)
        return results

    def _subscribed_topics(self, group: Group) -> set[str]:
        if group.state is GroupState.EMPTY:
            return set()
        if group.protocol_type != "consumer":
            raise ApiError(ErrorCode.non_empty_group, f"Group {group.group_id} is not empty")
        topics: set[str] = set()
        for member in group.members.values():
            topics.update(subscription_topics(member.metadata(group.protocol)))
        return topics

    def expire_offsets(self) -> None:
        """Remove the committed offsets of groups empty for ``offsets.retention.minutes``
        (of a group without members ever, counted from each commit), then the groups
        left with nothing."""
        retention_ms = self._config.offsets_retention_minutes * 60_000
        now_ms = self._wall_clock_ms()
        for group in list(self._groups.values()):
            if group.state is not GroupState.EMPTY or group.pending_members:
                continue
            if group.partition in self._loading:
                continue
            if group.protocol_type is None:
                expired = [
                    key
                    for key, offset in group.offsets.items()
                    if now_ms - offset.commit_timestamp_ms >= retention_ms
                ]
            elif now_ms - group.state_timestamp_ms >= retention_ms:
                expired = list(group.offsets)
            else:
                continue
            records: list[Record] = [
                (offset_key(OffsetKey(group.group_id, topic, index)), None)
                for topic, index in expired
            ]
            for key in expired:
                del group.offsets[key]
            if not group.offsets:
                records.append((group_key(GroupKey(group.group_id)), None))
                self._drop(group, ErrorCode.coordinator_not_available)
            if records:
                log.info(
                    "group %s: removed %d expired committed offsets", group.group_id, len(expired)
                )
                self._write_in_background(group.partition, records)

    # --- listing, describing, deleting ---------------------------------------------------

    def list_groups(self) -> list[Group]:
        """The groups this broker coordinates (others are listed by their coordinators)."""
        return [
            group
            for group in self._groups.values()
            if group.partition in self._led and group.partition not in self._loading
        ]

    def describe(self, group_id: str) -> Group | None:
        return self._group(group_id, create=False)

    async def delete_group(self, group_id: str) -> None:
        group = self._group(group_id, create=False)
        if group is None or group.state is GroupState.DEAD:
            raise ApiError(ErrorCode.group_id_not_found, f"Group {group_id} does not exist")
        if not group.is_empty or group.state is not GroupState.EMPTY:
            raise ApiError(ErrorCode.non_empty_group, f"Group {group_id} still has members")
        records: list[Record] = [
            (offset_key(OffsetKey(group_id, topic, index)), None) for topic, index in group.offsets
        ]
        records.append((group_key(GroupKey(group_id)), None))
        await self._log.append(group.partition, records)
        self._drop(group, ErrorCode.coordinator_not_available)

    def _drop(self, group: Group, code: ErrorCode) -> None:
        group.transition(GroupState.DEAD, self._wall_clock_ms())
        for member in group.members.values():
            member.answer_join(JoinResult(code, member.member_id))
            member.answer_sync(SyncResult(code))
        if self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    # --- persistence ---------------------------------------------------------------------

    def _store_group(self, group: Group) -> None:
        """Write the group's membership without making a request wait for it."""
        self._write_in_background(group.partition, [_membership_record(group)])

    def _write_in_background(self, partition: int, records: Sequence[Record]) -> None:
        try:
            replicated = self._log.append(partition, records)
        except ApiError as error:
            log.info("writing to partition %d failed: %s", partition, error.message)
            return
        task = asyncio.get_running_loop().create_task(self._replicated(partition, replicated))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _replicated(self, partition: int, replicated: Awaitable[None]) -> None:
        try:
            await replicated
        except ApiError as error:
            log.info("writing to partition %d failed: %s", partition, error.message)

    async def stop(self) -> None:
        for task in self._loading.values():
            task.cancel()
        for group in list(self._groups.values()):
            self._drop(group, ErrorCode.not_coordinator)
        await asyncio.gather(*self._loading.values(), *self._writes, return_exceptions=True)
        self._loading = {}
        self._led = {}

    # --- metrics -------------------------------------------------------------------------

    def lag_snapshot(self) -> list[GroupLagView]:
        """Each group's state, members and, where this broker holds a replica of a
        committed partition, its lag behind that replica's high watermark."""
        views = []
        for group in self.list_groups():
            lag = []
            for (topic, index), committed in group.offsets.items():
                end = self._end_offset(topic, index)
                if end is not None:
                    lag.append((topic, index, max(0, end - committed.offset)))
            views.append(GroupLagView(group.group_id, group.state.value, len(group.members), lag))
        return views


@dataclass(frozen=True, slots=True)
class GroupLagView:
    group_id: str
    state: str
    members: int
    lag: list[tuple[str, int, int]]


def _membership_record(group: Group) -> Record:
    return group_key(GroupKey(group.group_id)), group_value(group.stored())


_MEMBER_ERRORS = {
    ErrorCode.unknown_member_id: "The member id is not known to the group coordinator",
    ErrorCode.illegal_generation: "The generation id is not the group's current one",
    ErrorCode.fenced_instance_id: "Another member took over this group instance id",
}


def subscription_topics(metadata: bytes) -> list[str]:
    """The topics of a consumer protocol subscription: an int16 version, then fields that
    every version starts with the same way (so the v0 schema reads them all)."""
    try:
        subscription, _ = _read_subscription(memoryview(metadata).toreadonly(), 2)
    except Exception:
        return []
    return list(subscription.topics)


_read_subscription = entity_reader(ConsumerProtocolSubscription)
