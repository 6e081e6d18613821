"""Appends as the replica manager answers them: one partition's outcome, and the wait of
``acks=all`` for the high watermark.

Only v2 batches with a valid CRC32C are stored; each batch must fit the topic's
``max.message.bytes``. The broker never rewrites records: the leader assigns offsets
and stamps its leader epoch by patching each batch's header. It reads (and decompresses)
records only on a compacted topic, where every record must have a key.

With ``acks=all`` a partition is refused (NOT_ENOUGH_REPLICAS, nothing appended) when
fewer than ``min.insync.replicas`` replicas are in sync as the leader sees them;
otherwise its answer waits until the high watermark passes the appended batches, at
most the request's timeout (REQUEST_TIMED_OUT), and fails if leadership moves first.
All partitions of a request are appended before any wait, so they replicate together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..metadata.topic_config import TopicSettings
from ..storage.batch import TRANSACTIONAL_FLAG, BatchHeader, InvalidBatch
from ..storage.records import record_keys
from .producer_state import NO_PRODUCER_ID

TopicPartition = tuple[str, int]
VALID_ACKS = (0, 1, -1)


@dataclass(slots=True)
class PartitionAppend:
    """One partition's answer to an append (Kafka's PartitionResponse)."""

    error_code: ErrorCode = ErrorCode.none
    error_message: str | None = None
    base_offset: int = -1
    log_append_time_ms: int = -1
    """-1 unless the topic stamps LogAppendTime."""
    log_start_offset: int = -1


@dataclass(slots=True)
class _Commit:
    answer: PartitionAppend
    committed: asyncio.Future[ErrorCode]


class AppendResult:
    """What ``ReplicaManager.append_records`` did: each partition's answer, in the order
    asked, final once :meth:`committed` returns (at once unless ``acks=all`` waits)."""

    def __init__(self, partitions: list[tuple[TopicPartition, PartitionAppend]]) -> None:
        self.partitions = partitions
        self._commits: list[_Commit] = []
        self._deadline = 0.0

    @property
    def waiting(self) -> bool:
        """Some partition waits for its in-sync replicas."""
        return bool(self._commits)

    def wait_for(self, answer: PartitionAppend, committed: asyncio.Future[ErrorCode]) -> None:
        self._commits.append(_Commit(answer, committed))

    def start_timer(self, timeout_s: float) -> None:
        """The request's timeout counts from the append, not from the first await."""
        self._deadline = asyncio.get_running_loop().time() + max(timeout_s, 0)

    async def committed(self) -> list[tuple[TopicPartition, PartitionAppend]]:
        """Wait (at most until the request's timeout) until every appended batch is
        committed, then put each partition's outcome into its answer."""
        futures = [commit.committed for commit in self._commits]
        if not all(future.done() for future in futures):
            remaining = self._deadline - asyncio.get_running_loop().time()
            await asyncio.wait(futures, timeout=max(remaining, 0))
        for commit in self._commits:
            if commit.committed.done():
                code = commit.committed.result()
            else:
                commit.committed.cancel()
                code = ErrorCode.request_timed_out
            if code != ErrorCode.none:
                commit.answer.error_code = code
                commit.answer.error_message = COMMIT_ERRORS[code]
        self._commits = []
        return self.partitions


COMMIT_ERRORS = {
    ErrorCode.request_timed_out: "The in-sync replicas did not all have the records in time",
    ErrorCode.not_leader_or_follower: "Leadership moved before the records were committed",
    ErrorCode.not_enough_replicas_after_append: (
        "The records were written, but the ISR shrank below min.insync.replicas meanwhile"
    ),
}


def check_request(acks: int, transactional_id: str | None) -> None:
    """What refuses every partition of a produce request alike."""
    if acks not in VALID_ACKS:
        raise ApiError(ErrorCode.invalid_required_acks, f"acks={acks} is not one of 0, 1, -1 (all)")
    if transactional_id is not None:
        raise ApiError(
            ErrorCode.transactional_id_authorization_failed, "transactions are not supported"
        )


def check_batches(
    data: bytes | memoryview,
    headers: Sequence[BatchHeader],
    settings: TopicSettings,
    partition: str,
) -> None:
    """Refuse batches this leader must not store: too large, control batches (the broker
    writes those), transactional ones, producer batches without a sequence, and on a
    compacted topic any batch holding a record without a key (Kafka's LogValidator)."""
    position = 0
    for header in headers:
        if header.size > settings.max_message_bytes:
            raise ApiError(
                ErrorCode.message_too_large,
                f"The record batch of {header.size} bytes for {partition} is larger than "
                f"max.message.bytes ({settings.max_message_bytes})",
            )
        if header.is_control:
            raise ApiError(
                ErrorCode.invalid_record, "control batches are written by the broker only"
            )
        if header.attributes & TRANSACTIONAL_FLAG:
            raise ApiError(ErrorCode.invalid_txn_state, "transactional batches are not supported")
        if header.producer_id != NO_PRODUCER_ID and header.base_sequence < 0:
            raise ApiError(
                ErrorCode.invalid_record,
                f"Invalid sequence number {header.base_sequence} in a record batch of "
                f"producer {header.producer_id} for {partition}",
            )
        if settings.log.compact:
            _check_keys(memoryview(data)[position : position + header.size], header, partition)
        position += header.size


def _check_keys(batch: memoryview, header: BatchHeader, partition: str) -> None:
    """Compaction keeps the latest record of each key: a record without one cannot be
    compacted, so the whole batch is refused."""
    try:
        keyless = any(key is None for key in record_keys(batch, header))
    except InvalidBatch as invalid:
        raise ApiError(ErrorCode[invalid.error], str(invalid)) from None
    if keyless:
        raise ApiError(
            ErrorCode.invalid_record,
            f"Compacted topic cannot accept message without key in topic partition {partition}.",
        )
