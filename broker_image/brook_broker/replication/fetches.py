"""Fetches as the replica manager answers them: what is asked of one partition, and what
one pass over it finds.

Consumers read below the high watermark; followers (``replica_id`` >= 0) read up to the
log end offset. Replicas that a reassignment is adding are served within the
replication throttle. Byte limits follow KIP-74: the first batch of the first partition
that has data is returned whole even when it is larger than the limits, so a consumer
can always make progress; later partitions only get what still fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from ..storage.log import OffsetOutOfRange
from ..throttle import TokenBucket
from .partition import Partition


@dataclass(frozen=True, slots=True)
class FetchParams:
    """What applies to the whole fetch (Kafka's FetchParams)."""

    replica_id: int
    """-1 for consumers; a follower's broker id."""
    max_wait_s: float
    min_bytes: int
    max_bytes: int
    """Already capped by the broker's fetch.max.bytes."""

    @property
    def from_follower(self) -> bool:
        return self.replica_id >= 0


@dataclass(frozen=True, slots=True)
class PartitionFetch:
    """What a fetch asks of one partition."""

    topic: str
    partition: int
    fetch_offset: int
    partition_max_bytes: int
    current_leader_epoch: int = -1
    log_start_offset: int = -1
    """A follower's own log start offset (-1: a consumer, or a version without it)."""


@dataclass(slots=True)
class FetchedPartition:
    """What one partition answers (Kafka's FetchPartitionData)."""

    topic: str
    partition: int
    error_code: ErrorCode
    high_watermark: int = -1
    log_start_offset: int = -1
    records: bytes = b""


def read_partition(
    partition: Partition,
    asked: PartitionFetch,
    params: FetchParams,
    response_bytes_left: int,
    throttle: TokenBucket | None,
    *,
    first: bool,
) -> FetchedPartition:
    """One read of a partition this broker leads; ``throttle`` limits what replicas
    being added by a reassignment get, ``first``: nothing was found before it."""
    partition_log = partition.log
    result = FetchedPartition(
        asked.topic,
        asked.partition,
        ErrorCode.none,
        partition_log.high_watermark,
        partition_log.log_start_offset,
    )
    limit = min(asked.partition_max_bytes, response_bytes_left)
    if params.replica_id not in partition.state.adding:
        throttle = None
    if throttle is not None:
        limit = min(limit, throttle.available())
        if limit <= 0:
            return result  # within the throttle, this replica gets nothing for now
    if limit <= 0 and not first:
        return result  # the response is full; the client asks again
    upper = partition_log.log_end_offset if params.from_follower else partition_log.high_watermark
    try:
        records = partition_log.read(asked.fetch_offset, max(limit, 0), upper_offset=upper)
    except OffsetOutOfRange:
        result.error_code = ErrorCode.offset_out_of_range
        return result
    if len(records) <= limit or first:
        result.records = records
        if throttle is not None:
            throttle.take(len(records))
    return result
