"""One consumer group as its coordinator holds it: members, generation, state, offsets.

The states are Kafka's classic ones. A group is **Empty** with no members (it may still
hold committed offsets), **PreparingRebalance** while members (re)join, which ends once
every member has rejoined or the rebalance timeout passes; **CompletingRebalance** once
the JoinGroup answers are out and the leader's assignment is awaited in SyncGroup; and
**Stable** once the assignment is handed out. **Dead** is a group deleted or unloaded.

This module holds data and the choices that follow from it alone (protocol vote, who
leads); the protocol's flows, timers and persistence are in ``group_metadata`` and
``offset_metadata``.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from .offsets_topic import CommittedOffset, StoredGroup, StoredMember


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a JoinGroup is answered with; only the leader gets the members' metadata."""

    error: ErrorCode
    member_id: str = ""
    generation: int = -1
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()
    """(member id, group instance id, metadata for the chosen protocol) of every member."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: ErrorCode
    protocol_type: str | None = None
    protocol: str | None = None
    assignment: bytes = b""


@dataclass(eq=False)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_s: float
    rebalance_timeout_s: float
    protocols: tuple[tuple[str, bytes], ...]
    """(protocol name, member metadata) in the member's order of preference."""
    assignment: bytes = b""
    heartbeat_deadline: float = 0.0
    join_waiter: asyncio.Future[JoinResult] | None = None
    sync_waiter: asyncio.Future[SyncResult] | None = None

    def metadata(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def answer_join(self, result: JoinResult) -> None:
        waiter, self.join_waiter = self.join_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def answer_sync(self, result: SyncResult) -> None:
        waiter, self.sync_waiter = self.sync_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def stored(self, protocol: str | None) -> StoredMember:
        return StoredMember(
            member_id=self.member_id,
            group_instance_id=self.group_instance_id,
            client_id=self.client_id,
            client_host=self.client_host,
            rebalance_timeout_ms=int(self.rebalance_timeout_s * 1000),
            session_timeout_ms=int(self.session_timeout_s * 1000),
            subscription=self.metadata(protocol),
            assignment=self.assignment,
        )


@dataclass(eq=False)
class Group:
    group_id: str
    partition: int
    """The ``__consumer_offsets`` partition that holds it."""
    state: GroupState = GroupState.EMPTY
    state_timestamp_ms: int = 0
    """When the group last changed state (wall clock): offsets of an empty group expire
    counting from when it became empty."""
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)
    """Group instance id -> the member id it currently has."""
    pending_members: dict[str, float] = field(default_factory=dict)
    """Member ids handed out with MEMBER_ID_REQUIRED -> when they lapse if not used."""
    offsets: dict[tuple[str, int], CommittedOffset] = field(default_factory=dict)
    join_deadline: float = 0.0
    """PreparingRebalance: when the join phase ends whoever has rejoined."""
    join_deadline_limit: float = 0.0
    initial_join: bool = False
    """The first rebalance of an empty group, held back for more members to join."""
    sync_deadline: float = 0.0
    """CompletingRebalance: when members that have not sent SyncGroup are dropped."""

    def transition(self, state: GroupState, now_ms: int) -> None:
        self.state = state
        self.state_timestamp_ms = now_ms

    @property
    def is_empty(self) -> bool:
        return not self.members and not self.pending_members

    def supports(self, protocol_type: str, protocols: tuple[tuple[str, bytes], ...]) -> bool:
        """A joining member fits a group with members if it speaks the group's protocol
        type and shares at least one protocol with every member."""
        if not self.members:
            return True
        if protocol_type != self.protocol_type:
            return False
        names = {name for name, _ in protocols}
        return bool(names & self.common_protocols())

    def common_protocols(self) -> set[str]:
        members = iter(self.members.values())
        common = {name for name, _ in next(members).protocols}
        for member in members:
            common &= {name for name, _ in member.protocols}
        return common

    def select_protocol(self) -> str:
        """Each member votes for the first protocol it lists that all members support;
        the most votes win, ties going to the earliest in the leader's preference."""
        common = self.common_protocols()
        votes = Counter(
            next(name for name, _ in member.protocols if name in common)
            for member in self.members.values()
        )
        leader = self.members.get(self.leader_id or "") or next(iter(self.members.values()))
        preference = [name for name, _ in leader.protocols if name in common]
        return max(preference, key=lambda name: (votes[name], -preference.index(name)))

    def rebalance_timeout_s(self) -> float:
        return max((member.rebalance_timeout_s for member in self.members.values()), default=0)

    def all_rejoined(self) -> bool:
        return not self.pending_members and all(
            member.join_waiter is not None for member in self.members.values()
        )

    def stored(self) -> StoredGroup:
        return StoredGroup(
            protocol_type=self.protocol_type or "",
            generation=self.generation,
            protocol=self.protocol,
            leader=self.leader_id,
            state_timestamp_ms=self.state_timestamp_ms,
            members=tuple(member.stored(self.protocol) for member in self.members.values()),
        )
