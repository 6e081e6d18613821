"""Committed offsets: OffsetCommit, OffsetFetch, OffsetDelete, and their expiry.

Kafka's ``OffsetMetadataManager``. A commit is written to the group's
``__consumer_offsets`` partition and answered once the partition's in-sync replicas
hold it (as ``acks=all``); the broker that takes the partition over reads the commits
back. Whether a member may commit is membership's to say
(:meth:`GroupMetadataManager.group_for_offset_commit`).

Offsets of a group empty for ``offsets.retention.minutes`` (of a group that never had
members, counted from each commit) are removed by tombstones, checked every
``offsets.retention.check.interval.ms``, and the group with them once nothing is left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from kio.schema.errors import ErrorCode

from .. import metrics
from ..config import BrokerConfig
from ..metadata.errors import ApiError
from .coordinated import CoordinatedGroups, Record
from .group import Group, GroupState
from .group_metadata import GroupMetadataManager, group_tombstone
from .offsets_topic import CommittedOffset, OffsetKey, decode_offset_value, offset_key, offset_value

log = logging.getLogger(__name__)

OFFSET_METADATA_MAX_BYTES = 4096
"""Kafka's offset.metadata.max.bytes."""


class OffsetMetadataManager:
    """The committed offsets of the groups of :class:`CoordinatedGroups`."""

    def __init__(
        self,
        config: BrokerConfig,
        coordinated: CoordinatedGroups,
        membership: GroupMetadataManager,
        partition_exists: Callable[[str, int], bool],
        end_offset: Callable[[str, int], int | None],
        *,
        wall_clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._coordinated = coordinated
        self._membership = membership
        self._partition_exists = partition_exists
        self._end_offset = end_offset
        self._wall_clock_ms = wall_clock_ms
        self._next_expiry = 0.0

    # --- loading -------------------------------------------------------------------------

    def replay(self, partition: int, key: OffsetKey, value: bytes | None) -> None:
        """A commit read back (None: its tombstone)."""
        group = self._coordinated.groups.setdefault(key.group_id, Group(key.group_id, partition))
        if value is None:
            group.offsets.pop((key.topic, key.partition), None)
        else:
            group.offsets[(key.topic, key.partition)] = decode_offset_value(value)

    def loaded(self, partition: int, now: float) -> None:
        """Nothing to finish: replayed commits are served as they are."""

    # --- OffsetCommit, OffsetFetch, OffsetDelete -----------------------------------------

    async def commit(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        offsets: Mapping[tuple[str, int], tuple[int, int, str | None]],
    ) -> dict[tuple[str, int], ErrorCode]:
        """Commit ``(topic, partition) -> (offset, leader epoch, metadata)``; an error for
        the whole request is raised, per-partition ones are returned."""
        group = self._membership.group_for_offset_commit(
            group_id, generation, member_id, group_instance_id
        )
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
            await self._coordinated.log.append(
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

    def fetch(
        self, group_id: str, partitions: Iterable[tuple[str, int]] | None
    ) -> dict[tuple[str, int], CommittedOffset | None]:
        """Committed offsets of the given partitions (None: not committed), or of all."""
        group = self._coordinated.group(group_id, create=False)
        offsets = {} if group is None else group.offsets
        if partitions is None:
            return dict(offsets)
        return {key: offsets.get(key) for key in partitions}

    async def delete(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], ErrorCode]:
        """OffsetDelete: allowed for topics no member of the group subscribes to."""
        group = self._coordinated.group(group_id, create=False)
        if group is None:
            raise ApiError(ErrorCode.group_id_not_found, f"Group {group_id} does not exist")
        subscribed = self._membership.subscribed_topics(group)
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
            await self._coordinated.log.append(group.partition, _tombstones(group_id, deleted))
            for key in deleted:
                group.offsets.pop(key, None)
        return results

    def tombstones(self, group: Group) -> list[Record]:
        """The records that delete every offset the group has committed."""
        return _tombstones(group.group_id, group.offsets)

    # --- expiry --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now >= self._next_expiry:
            self._next_expiry = now + self._config.offsets_retention_check_interval_ms / 1000
            self._expire()

    def _expire(self) -> None:
        """Remove the committed offsets of groups empty for ``offsets.retention.minutes``
        (of a group without members ever, counted from each commit), then the groups
        left with nothing."""
        retention_ms = self._config.offsets_retention_minutes * 60_000
        now_ms = self._wall_clock_ms()
        for group in self._coordinated.served():
            if group.state is not GroupState.EMPTY or group.pending_members:
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
            records = _tombstones(group.group_id, expired)
            for key in expired:
                del group.offsets[key]
            if not group.offsets:
                records.append(group_tombstone(group.group_id))
                self._coordinated.drop(group, ErrorCode.coordinator_not_available)
            if records:
                log.info(
                    "group %s: removed %d expired committed offsets", group.group_id, len(expired)
                )
                self._coordinated.write_in_background(group.partition, records)

    # --- metrics -------------------------------------------------------------------------

    def lag(self, group: Group) -> list[tuple[str, int, int]]:
        """(topic, partition, lag) of each committed partition this broker holds a
        replica of, behind that replica's high watermark."""
        lag = []
        for (topic, index), committed in group.offsets.items():
            end = self._end_offset(topic, index)
            if end is not None:
                lag.append((topic, index, max(0, end - committed.offset)))
        return lag


def _tombstones(group_id: str, partitions: Iterable[tuple[str, int]]) -> list[Record]:
    return [(offset_key(OffsetKey(group_id, topic, index)), None) for topic, index in partitions]
