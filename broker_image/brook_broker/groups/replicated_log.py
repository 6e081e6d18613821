"""``__consumer_offsets`` as the coordinator uses it: the topic's partitions this broker
leads, appends acknowledged once the in-sync replicas hold them, and reads from disk.

The topic is made by the first FindCoordinator for a group (:func:`ensure_topic`),
like Kafka does: ``offsets.topic.num.partitions`` partitions, replication factor
``offsets.topic.replication.factor`` capped at the brokers registered, segments of
100 MiB kept forever (expired offsets are removed by tombstones, not by age).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.quorum import MetadataQuorum
from ..replication import Partition, ReplicaManager
from ..storage.batch import iter_headers, validate_batches
from ..storage.records import build_batch, iter_records
from .offsets_topic import OFFSETS_TOPIC

if TYPE_CHECKING:
    from ..api.context import ApiContext

READ_CHUNK_BYTES = 1024 * 1024
SEGMENT_BYTES = 100 * 1024 * 1024
TOPIC_CONFIGS = {"retention.ms": "-1", "segment.bytes": str(SEGMENT_BYTES)}


class ReplicatedOffsetsLog:
    def __init__(self, config: BrokerConfig, quorum: MetadataQuorum, replicas: ReplicaManager):
        self._config = config
        self._quorum = quorum
        self._replicas = replicas

    def partition_count(self) -> int:
        topic = self._quorum.state.topics.get(OFFSETS_TOPIC)
        return 0 if topic is None else len(topic.partitions)

    def led_partitions(self) -> dict[int, int]:
        """Partition index -> leader epoch of the partitions this broker leads."""
        led = {}
        for index in range(self.partition_count()):
            partition = self._replicas.partition(OFFSETS_TOPIC, index)
            if partition is not None and partition.is_leader:
                led[index] = partition.leader_epoch
        return led

    def _leader(self, index: int) -> Partition:
        partition = self._replicas.partition(OFFSETS_TOPIC, index)
        if partition is None or not partition.is_leader:
            raise ApiError(
                ErrorCode.not_coordinator,
                f"This broker no longer leads partition {index} of {OFFSETS_TOPIC}",
            )
        return partition

    def append(
        self, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> Awaitable[None]:
        leader = self._leader(partition)
        try:
            leader.check_enough_replicas()
        except ApiError as error:
            raise ApiError(ErrorCode.coordinator_not_available, error.message) from None
        now_ms = time.time_ns() // 1_000_000
        batch = build_batch(records, now_ms)
        try:
            appended = leader.append(
                batch, validate_batches(batch), now_ms=now_ms, log_append_time=False
            )
        except OSError as error:
            raise ApiError(ErrorCode.not_coordinator, f"append failed: {error}") from None
        return self._replicated(partition, leader.wait_for_commit(appended.last_offset + 1))

    async def _replicated(self, partition: int, committed: asyncio.Future[ErrorCode]) -> None:
        try:
            async with asyncio.timeout(self._config.offsets_commit_timeout_ms / 1000):
                code = await asyncio.shield(committed)
        except TimeoutError:
            committed.cancel()
            raise ApiError(
                ErrorCode.coordinator_not_available,
                f"The replicas of {OFFSETS_TOPIC}-{partition} did not confirm in time",
            ) from None
        if code == ErrorCode.not_leader_or_follower:
            raise ApiError(
                ErrorCode.not_coordinator, f"Leadership of {OFFSETS_TOPIC}-{partition} moved"
            )
        if code != ErrorCode.none:
            raise ApiError(
                ErrorCode.coordinator_not_available,
                f"Writing to {OFFSETS_TOPIC}-{partition} failed: {code.name}",
            )

    async def read(self, partition: int) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
        log = self._leader(partition).log
        offset = log.log_start_offset
        while offset < log.log_end_offset:
            data = log.read(offset, READ_CHUNK_BYTES, upper_offset=log.log_end_offset)
            if not data:
                return
            for record_offset, key, value in iter_records(data):
                if record_offset >= offset:
                    yield key, value
            offset = max(header.next_offset for _, header in iter_headers(data))
            await asyncio.sleep(0)  # a long partition does not hold up other requests
            self._leader(partition)


async def ensure_topic(context: ApiContext) -> None:
    """Make ``__consumer_offsets`` unless it exists (a concurrent request may make it)."""
    if context.topics.get(OFFSETS_TOPIC) is not None:
        return
    config = context.config
    brokers = sum(1 for broker in context.quorum.state.brokers.values() if not broker.fenced)
    replication_factor = max(1, min(config.offsets_topic_replication_factor, brokers))
    try:
        await context.create_topic(
            OFFSETS_TOPIC,
            config.offsets_topic_num_partitions,
            replication_factor,
            TOPIC_CONFIGS.items(),
        )
    except ApiError as error:
        if error.code != ErrorCode.topic_already_exists:
            raise
