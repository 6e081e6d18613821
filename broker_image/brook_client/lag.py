"""The lag of a consumer group on a partition, defined once for ``brook groups`` and the
operator's ConsumerGroup autoscaler.

**Lag** is the records from where the group's consumers read next to the log end offset
(the high watermark, the next offset a consumer can read):

- from the committed offset, but never from below the log start offset: records deleted
  by retention are no lag (a consumer there is reset past them);
- a partition without a committed offset (no member has committed its first offsets yet,
  or partitions were added) is read from where the consumers' ``auto.offset.reset``
  points: ``latest`` (the default, as for Kafka consumers) starts at the log end, lag 0;
  ``earliest`` starts at the log start offset, lag = log end - log start;
- never negative (a committed offset past the log end is reset too), and unknown (None)
  where no leader of the partition answered.

The operator reads every partition's log start offset; ``brook groups``, like Kafka's
``kafka-consumer-groups``, reads it only for partitions without a committed offset (one
ListOffsets per leader fewer), so it counts a committed partition from its committed
offset as it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TopicPartition = tuple[str, int]


class OffsetReset(enum.StrEnum):
    """Where a consumer starts on a partition its group has no committed offset for."""

    EARLIEST = "earliest"
    LATEST = "latest"


@dataclass(frozen=True)
class PartitionOffsets:
    """What a partition's lag is computed from: the group's committed offset (None
    without one), the log start and the log end offsets (None where unknown)."""

    committed_offset: int | None
    log_start_offset: int | None
    log_end_offset: int | None


def partition_lag(
    committed_offset: int | None,
    log_start_offset: int | None,
    log_end_offset: int | None,
    reset: OffsetReset,
) -> int | None:
    """The lag of one partition (see the module docstring for the rule); None if unknown.
    The log start offset may be None for a committed partition: then the committed
    offset is taken as it is."""
    if log_end_offset is None:
        return None
    if committed_offset is None:
        if reset is OffsetReset.LATEST:
            return 0
        if log_start_offset is None:
            return None
        committed_offset = log_start_offset
    elif log_start_offset is not None:
        committed_offset = max(committed_offset, log_start_offset)
    return max(log_end_offset - committed_offset, 0)


def lag_of(offsets: PartitionOffsets, reset: OffsetReset) -> int | None:
    """:func:`partition_lag` of what was read of one partition."""
    return partition_lag(
        offsets.committed_offset, offsets.log_start_offset, offsets.log_end_offset, reset
    )
