"""The group coordinator: the groups whose ``__consumer_offsets`` partition this broker leads.

When the broker becomes leader of such a partition the coordinator reads the partition
from the start (requests for its groups meanwhile get COORDINATOR_LOAD_IN_PROGRESS) and
hands each record to the manager of its kind, which rebuilds its state; when it stops
leading, the partition's groups are dropped here (NOT_COORDINATOR) and clients look the
coordinator up again.

The kinds of state, each a manager with the same lifecycle
(:class:`~.coordinated.StateManager`), as Kafka splits its group coordinator:

- ``membership``, :class:`GroupMetadataManager`: the classic protocol (JoinGroup,
  SyncGroup, Heartbeat, LeaveGroup) and its timers;
- ``offsets``, :class:`OffsetMetadataManager`: OffsetCommit, OffsetFetch, OffsetDelete
  and the expiry of committed offsets.

Request handlers call the manager of their request; what spans kinds (listing,
describing and deleting groups, lag) is here. Timers are deadlines checked by
:meth:`GroupCoordinator.tick`, which the broker runs every ``TICK_SECONDS``; tests call
it with their own clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.quorum import MetadataQuorum
from ..replication import ReplicaManager
from .coordinated import CoordinatedGroups, OffsetsLog, StateManager
from .group import Group
from .group_metadata import GroupMetadataManager, group_tombstone
from .offset_metadata import OffsetMetadataManager
from .offsets_topic import GroupKey, OffsetKey, UnknownRecord, decode_key
from .replicated_log import ReplicatedOffsetsLog

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1


class GroupCoordinator:
    """Composes the managers of each kind of state over the groups this broker
    coordinates, and owns what they share: loading and unloading with the leadership of
    ``__consumer_offsets`` partitions, timers, and stopping."""

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
        self._clock = clock
        self._coordinated = CoordinatedGroups(offsets_log, wall_clock_ms)
        self.membership = GroupMetadataManager(
            config, self._coordinated, clock=clock, wall_clock_ms=wall_clock_ms
        )
        self.offsets = OffsetMetadataManager(
            config,
            self._coordinated,
            self.membership,
            partition_exists,
            end_offset,
            wall_clock_ms=wall_clock_ms,
        )
        self._managers: tuple[StateManager[OffsetKey] | StateManager[GroupKey], ...] = (
            self.membership,
            self.offsets,
        )
        """In the order their timers run: sessions end before offsets expire."""

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
        self.on_leadership(self._coordinated.log.led_partitions())

    def on_leadership(self, led: Mapping[int, int]) -> None:
        """The partitions of ``__consumer_offsets`` this broker now leads, with their
        leader epochs: load the new ones, drop the groups of those it no longer leads."""
        coordinated = self._coordinated
        for partition, epoch in list(coordinated.led.items()):
            if led.get(partition) != epoch:
                self._unload(partition)
        for partition, epoch in led.items():
            if coordinated.led.get(partition) != epoch:
                coordinated.led[partition] = epoch
                coordinated.loading[partition] = asyncio.get_running_loop().create_task(
                    self._load(partition), name=f"loading groups of partition {partition}"
                )

    def _unload(self, partition: int) -> None:
        coordinated = self._coordinated
        del coordinated.led[partition]
        task = coordinated.loading.pop(partition, None)
        if task is not None:
            task.cancel()
        coordinated.drop_partition(partition, ErrorCode.not_coordinator)
        log.info("no longer coordinating the groups of partition %d", partition)

    async def _load(self, partition: int) -> None:
        """Read the partition from its start, each record to the manager of its kind."""
        coordinated = self._coordinated
        started = self._clock()
        records = 0
        try:
            async for key, value in coordinated.log.read(partition):
                records += 1
                if key is None:
                    continue
                try:
                    decoded = decode_key(key)
                    if isinstance(decoded, OffsetKey):
                        self.offsets.replay(partition, decoded, value)
                    else:
                        self.membership.replay(partition, decoded, value)
                except UnknownRecord as error:
                    log.warning("skipped a record of %s: %s", "__consumer_offsets", error)
        except ApiError as error:
            log.warning("loading groups of partition %d failed: %s", partition, error.message)
            coordinated.loading.pop(partition, None)
            coordinated.led.pop(partition, None)  # loaded again on the next metadata change
            coordinated.drop_partition(partition, ErrorCode.not_coordinator)
            return
        now = self._clock()
        for manager in self._managers:
            manager.loaded(partition, now)
        log.info(
            "coordinating the groups of partition %d: %d groups from %d records in %.2f s",
            partition,
            coordinated.serve(partition),
            records,
            now - started,
        )

    # --- what spans the kinds of state ---------------------------------------------------

    def list_groups(self) -> list[Group]:
        """The groups this broker coordinates (others are listed by their coordinators)."""
        return self._coordinated.served()

    def describe(self, group_id: str) -> Group | None:
        return self._coordinated.group(group_id, create=False)

    async def delete_group(self, group_id: str) -> None:
        """DeleteGroups: an empty group's committed offsets and membership go together."""
        group = self.membership.deletable(group_id)
        records = self.offsets.tombstones(group)
        records.append(group_tombstone(group_id))
        await self._coordinated.log.append(group.partition, records)
        self._coordinated.drop(group, ErrorCode.coordinator_not_available)

    def lag_snapshot(self) -> list[GroupLagView]:
        """Each group's state, members and, where this broker holds a replica of a
        committed partition, its lag behind that replica's high watermark."""
        return [
            GroupLagView(
                group.group_id, group.state.value, len(group.members), self.offsets.lag(group)
            )
            for group in self.list_groups()
        ]

    # --- timers and stopping -------------------------------------------------------------

    def tick(self) -> None:
        """Run each manager's timers: sessions, join and sync phases, offset expiry."""
        now = self._clock()
        for manager in self._managers:
            manager.tick(now)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick()
            except Exception:
                log.exception("group coordinator tick failed")

    async def stop(self) -> None:
        await self._coordinated.stop()


@dataclass(frozen=True, slots=True)
class GroupLagView:
    group_id: str
    state: str
    members: int
    lag: list[tuple[str, int, int]]
