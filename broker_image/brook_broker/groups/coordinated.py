"""What the group coordinator's managers share: the groups this broker coordinates.

A broker coordinates the groups whose ``__consumer_offsets`` partition it leads. This
module keeps those partitions (and which of them are still loading), the groups read from
them or made since, and the writes to them. Each kind of state the coordinator keeps —
classic membership and committed offsets today — is a :class:`StateManager` on top of it,
as Kafka's ``GroupMetadataManager`` and ``OffsetMetadataManager`` sit behind its group
coordinator; a new kind is one more manager with the same lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from .group import Group, GroupState, JoinResult, SyncResult
from .offsets_topic import GroupKey, OffsetKey, partition_for

log = logging.getLogger(__name__)

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


Key = TypeVar("Key", bound=OffsetKey | GroupKey, contravariant=True)
"""The record key of one kind of state."""


class StateManager(Protocol[Key]):
    """The lifecycle every kind of coordinator state has: rebuilt record by record when
    its partition is loaded, finished once the partition is read, kept by timers."""

    def replay(self, partition: int, key: Key, value: bytes | None) -> None:
        """Apply one record of this kind read back from ``partition`` (None: a tombstone)."""
        ...

    def loaded(self, partition: int, now: float) -> None:
        """``partition`` is read to its end; its groups are served from now on."""
        ...

    def tick(self, now: float) -> None:
        """Act on the deadlines that have passed."""
        ...


class CoordinatedGroups:
    """The ``__consumer_offsets`` partitions this broker leads, their groups, and writes."""

    def __init__(self, offsets_log: OffsetsLog, wall_clock_ms: Callable[[], int]) -> None:
        self.log = offsets_log
        self._wall_clock_ms = wall_clock_ms
        self.groups: dict[str, Group] = {}
        """Every group held here, those of partitions still loading included."""
        self.led: dict[int, int] = {}
        """``__consumer_offsets`` partitions this broker leads -> leader epoch."""
        self.loading: dict[int, asyncio.Task[None]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def group(self, group_id: str, *, create: bool) -> Group | None:
        """The group if this broker coordinates it (created empty if ``create``), else
        the ApiError that sends the client elsewhere or asks it to wait."""
        if not group_id:
            raise ApiError(ErrorCode.invalid_group_id, "The group id is empty")
        count = self.log.partition_count()
        if not count:
            raise ApiError(
                ErrorCode.coordinator_not_available,
                "__consumer_offsets does not exist yet: ask FindCoordinator",
            )
        partition = partition_for(group_id, count)
        if partition not in self.led:
            raise ApiError(
                ErrorCode.not_coordinator, f"This broker does not coordinate group {group_id}"
            )
        if partition in self.loading:
            raise ApiError(
                ErrorCode.coordinator_load_in_progress,
                f"The offsets of group {group_id} are still being loaded",
            )
        group = self.groups.get(group_id)
        if group is None and create:
            group = Group(group_id, partition, state_timestamp_ms=self._wall_clock_ms())
            self.groups[group_id] = group
        return group

    def served(self) -> list[Group]:
        """The groups of the partitions led and loaded: those requests may reach."""
        return [
            group
            for group in self.groups.values()
            if group.partition in self.led and group.partition not in self.loading
        ]

    def drop(self, group: Group, code: ErrorCode) -> None:
        """The group is gone (deleted, expired, or no longer coordinated here): members
        waiting for a join or sync answer get ``code``."""
        group.transition(GroupState.DEAD, self._wall_clock_ms())
        for member in group.members.values():
            member.answer_join(JoinResult(code, member.member_id))
            member.answer_sync(SyncResult(code))
        if self.groups.get(group.group_id) is group:
            del self.groups[group.group_id]

    def of_partition(self, partition: int) -> list[Group]:
        return [group for group in self.groups.values() if group.partition == partition]

    def drop_partition(self, partition: int, code: ErrorCode) -> None:
        for group in self.of_partition(partition):
            self.drop(group, code)

    def serve(self, partition: int) -> int:
        """``partition`` is read to its end: the groups its records left with nothing
        (no members, offsets or protocol) are forgotten, the others served. Returns how
        many groups it holds."""
        served = 0
        for group in self.of_partition(partition):
            if group.members or group.offsets or group.protocol_type is not None:
                served += 1
            else:
                del self.groups[group.group_id]
        del self.loading[partition]
        return served

    def write_in_background(self, partition: int, records: Sequence[Record]) -> None:
        """Write without making a request wait for it; a failure is logged."""
        try:
            replicated = self.log.append(partition, records)
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
        """Drop every group and wait for the loads and writes under way to end."""
        for task in self.loading.values():
            task.cancel()
        for group in list(self.groups.values()):
            self.drop(group, ErrorCode.not_coordinator)
        await asyncio.gather(*self.loading.values(), *self._writes, return_exceptions=True)
        self.loading = {}
        self.led = {}
