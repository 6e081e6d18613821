"""``__consumer_offsets`` as the coordinator uses it: the topic's partitions this broker
leads, appends through the replica manager's front door (acknowledged once the in-sync
replicas hold them), and reads from disk.

The topic is made by the first FindCoordinator for a group, like Kafka does:
``offsets.topic.num.partitions`` partitions, replication factor
``offsets.topic.replication.factor`` capped at the brokers registered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.quorum import MetadataQuorum
from ..replication import Partition, ReplicaManager
from ..replication.appends import AppendResult
from ..storage.batch import iter_headers
from ..storage.records import build_batch, iter_records
from .offsets_topic import OFFSETS_TOPIC

READ_CHUNK_BYTES = 1024 * 1024
ACKS_ALL = -1

_AS_COORDINATOR = {
    ErrorCode.not_leader_or_follower: ErrorCode.not_coordinator,
    ErrorCode.unknown_topic_or_partition: ErrorCode.not_coordinator,
    ErrorCode.kafka_storage_error: ErrorCode.not_coordinator,
}
"""How a failed append is told to the group's members (as Kafka's group coordinator
does): a lost leadership sends them to find the coordinator again; anything else
(too few in-sync replicas, a timeout) is a coordinator not available for now."""


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
        """Append now (so appends are in call order); the awaitable ends once the in-sync
        replicas hold the records, or raises the ApiError to answer the members."""
        self._leader(partition)
        appended = self._replicas.append_records(
            [((OFFSETS_TOPIC, partition), build_batch(records, time.time_ns() // 1_000_000))],
            acks=ACKS_ALL,
            timeout_s=self._config.offsets_commit_timeout_ms / 1000,
            from_client=False,
        )
        if not appended.waiting:  # refused before appending
            _raise_for(partition, appended)
        return self._replicated(partition, appended)

    async def _replicated(self, partition: int, appended: AppendResult) -> None:
        await appended.committed()
        _raise_for(partition, appended)

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


def _raise_for(partition: int, appended: AppendResult) -> None:
    ((_, answer),) = appended.partitions
    if answer.error_code == ErrorCode.none:
        return
    raise ApiError(
        _AS_COORDINATOR.get(answer.error_code, ErrorCode.coordinator_not_available),
        f"Writing to {OFFSETS_TOPIC}-{partition} failed: {answer.error_message}",
    )
