"""Classic group membership: JoinGroup, SyncGroup, Heartbeat, LeaveGroup and their timers.

Kafka's ``GroupMetadataManager`` for the classic protocol. Each new generation's
membership (with the leader's assignment) is written to the group's
``__consumer_offsets`` partition and read back when another broker takes the partition
over: members of a group that was stable carry on without a rebalance as long as they
heartbeat within their session timeout.

Timers (session timeouts, the join and sync phases) are deadlines checked by
:meth:`GroupMetadataManager.tick`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence

from kio.schema.consumer_protocol_subscription.v0.data import ConsumerProtocolSubscription
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from .. import metrics
from ..config import BrokerConfig
from ..metadata.errors import ApiError
from .coordinated import CoordinatedGroups, Record
from .group import Group, GroupState, JoinResult, Member, SyncResult
from .offsets_topic import GroupKey, StoredGroup, decode_group_value, group_key, group_value

log = logging.getLogger(__name__)


class GroupMetadataManager:
    """The classic protocol for the groups of :class:`CoordinatedGroups`."""

    def __init__(
        self,
        config: BrokerConfig,
        coordinated: CoordinatedGroups,
        *,
        clock: Callable[[], float],
        wall_clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._coordinated = coordinated
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms

    # --- loading -------------------------------------------------------------------------

    def replay(self, partition: int, key: GroupKey, value: bytes | None) -> None:
        """A membership record read back: the group's membership is the stored one (none
        after a tombstone); its committed offsets stay."""
        previous = self._coordinated.groups.get(key.group_id)
        group = Group(key.group_id, partition)
        if previous is not None:
            group.offsets = previous.offsets
        if value is not None:
            _restore(group, decode_group_value(value))
        self._coordinated.groups[key.group_id] = group

    def loaded(self, partition: int, now: float) -> None:
        """Restored members' sessions start now: they have a session timeout to find
        this coordinator and heartbeat."""
        for group in self._coordinated.of_partition(partition):
            for member in group.members.values():
                member.heartbeat_deadline = now + member.session_timeout_s

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
        group = self._coordinated.group(group_id, create=True)
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
            self._coordinated.groups.pop(group.group_id, None)  # made only for this join
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
            self._store(group)
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
            self._store(group)
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
        group = self._coordinated.group(group_id, create=False)
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
            await self._coordinated.log.append(group.partition, [_membership_record(group)])
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

    # --- Heartbeat and LeaveGroup --------------------------------------------------------

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, group_instance_id: str | None
    ) -> ErrorCode:
        group = self._coordinated.group(group_id, create=False)
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
        group = self._coordinated.group(group_id, create=False)
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

    def tick(self, now: float) -> None:
        """Expire sessions and end join and sync phases whose time is up."""
        for group in self._coordinated.served():
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

    # --- what offsets and deletion ask of membership -------------------------------------

    def group_for_offset_commit(
        self, group_id: str, generation: int, member_id: str, group_instance_id: str | None
    ) -> Group:
        """The group an OffsetCommit may write to, made empty for a consumer outside any
        generation (a generation below 0 and no member id) if need be; a commit from a
        member counts as its heartbeat. Raises the ApiError that refuses the commit."""
        simple = generation < 0 and not member_id
        group = self._coordinated.group(group_id, create=simple)
        if simple:
            assert group is not None
            if group.members:
                raise ApiError(
                    ErrorCode.unknown_member_id,
                    f"Group {group_id} has members: commit as one of them",
                )
            return group
        if group is not None and group.state is GroupState.COMPLETING_REBALANCE:
            raise ApiError(ErrorCode.rebalance_in_progress, "The group is rebalancing")
        error = self._check_member(group, generation, member_id, group_instance_id)
        if error is not None:
            raise ApiError(error, _MEMBER_ERRORS[error])
        assert group is not None
        member = group.members[member_id]
        member.heartbeat_deadline = self._clock() + member.session_timeout_s
        return group

    def subscribed_topics(self, group: Group) -> set[str]:
        """The topics the group's members consume (OffsetDelete refuses those)."""
        if group.state is GroupState.EMPTY:
            return set()
        if group.protocol_type != "consumer":
            raise ApiError(ErrorCode.non_empty_group, f"Group {group.group_id} is not empty")
        topics: set[str] = set()
        for member in group.members.values():
            topics.update(subscription_topics(member.metadata(group.protocol)))
        return topics

    def deletable(self, group_id: str) -> Group:
        """The group DeleteGroups may delete: it exists and has no members."""
        group = self._coordinated.group(group_id, create=False)
        if group is None or group.state is GroupState.DEAD:
            raise ApiError(ErrorCode.group_id_not_found, f"Group {group_id} does not exist")
        if not group.is_empty or group.state is not GroupState.EMPTY:
            raise ApiError(ErrorCode.non_empty_group, f"Group {group_id} still has members")
        return group

    def _store(self, group: Group) -> None:
        """Write the group's membership without making a request wait for it."""
        self._coordinated.write_in_background(group.partition, [_membership_record(group)])


def _restore(group: Group, stored: StoredGroup) -> None:
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
        )
        group.members[member.member_id] = member
        if member.group_instance_id is not None:
            group.static_members[member.group_instance_id] = member.member_id
    group.state = GroupState.STABLE if group.members else GroupState.EMPTY


def _membership_record(group: Group) -> Record:
    return group_key(GroupKey(group.group_id)), group_value(group.stored())


def group_tombstone(group_id: str) -> Record:
    """The record that deletes a group's membership from ``__consumer_offsets``."""
    return group_key(GroupKey(group_id)), None


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
