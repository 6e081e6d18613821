"""Idempotent producers as one partition replica knows them (Kafka's ProducerStateManager).

Per producer id the table keeps its epoch and the last ``NUM_BATCHES_TO_RETAIN`` batches
it wrote: first and last sequence number, first and last offset, timestamp. The leader
checks each new batch against it before appending: a batch that repeats one of those is
a retry whose answer got lost, and is answered with the original offsets instead of
being written again; a batch that does not follow the last sequence leaves a gap
(OUT_OF_ORDER_SEQUENCE_NUMBER); an epoch older than the last one belongs to a fenced
producer (INVALID_PRODUCER_EPOCH).

Followers record every batch they replicate, so a new leader already knows what its
producers wrote; a broker that starts rebuilds the table from the batch headers of its
log, and a log cut back by truncation takes the table back with it.

Sequence numbers run to 2**31 - 1 and continue at 0, as Kafka's do. As in Kafka before
transactions v2, a producer the table does not know (its batches expired or were
deleted by retention) may continue at any sequence number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..storage.batch import BatchHeader

NUM_BATCHES_TO_RETAIN = 5
"""Clients keep at most five requests in flight per partition with idempotence on, so
a retried batch is always one of a producer's last five."""
PRODUCER_ID_EXPIRATION_MS = 24 * 60 * 60 * 1000
"""Kafka's ``producer.id.expiration.ms`` default: a producer that has not written for
this long (by its batches' timestamps) is forgotten."""
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
MAX_SEQUENCE = 2**31 - 1
RECOVERY_WINDOW_OFFSETS = 1024
"""How far back from a truncation ``recover`` reads first; each further window is
``RECOVERY_WINDOW_GROWTH`` times longer."""
RECOVERY_WINDOW_GROWTH = 8


def last_sequence(header: BatchHeader) -> int:
    """The sequence number of a batch's last record, wrapping past 2**31 - 1 to 0."""
    return (header.base_sequence + header.last_offset_delta) % (MAX_SEQUENCE + 1)


def in_sequence(last: int, following: int) -> bool:
    return following == last + 1 or (following == 0 and last == MAX_SEQUENCE)


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    first_sequence: int
    last_sequence: int
    first_offset: int
    last_offset: int
    timestamp: int
    """The batch's largest timestamp: its log append time when the topic uses that."""


@dataclass(slots=True)
class ProducerEntry:
    """One producer's epoch and its last batches (never empty), oldest first."""

    epoch: int
    batches: deque[BatchMetadata] = field(
        default_factory=lambda: deque(maxlen=NUM_BATCHES_TO_RETAIN)
    )

    @property
    def last(self) -> BatchMetadata:
        return self.batches[-1]

    def add(self, epoch: int, batch: BatchMetadata) -> None:
        """A new epoch starts the producer afresh: its earlier batches cannot be retried."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches.clear()
        self.batches.append(batch)

    def duplicate_of(self, header: BatchHeader) -> BatchMetadata | None:
        if header.producer_epoch != self.epoch:
            return None
        first, last = header.base_sequence, last_sequence(header)
        for batch in self.batches:
            if batch.first_sequence == first and batch.last_sequence == last:
                return batch
        return None


class ProducerStateTable:
    def __init__(self, partition: str) -> None:
        self.partition = partition
        """``topic-index``, for error messages."""
        self.producers: dict[int, ProducerEntry] = {}

    def check(self, headers: Sequence[BatchHeader]) -> BatchMetadata | None:
        """Check batches a leader is about to append, in order, as Kafka does: the first
        that repeats a batch already written is returned (then nothing is to be
        appended); a batch out of sequence or of a fenced epoch raises ApiError. Batches
        without a producer id pass."""
        staged: dict[int, tuple[int, int]] = {}
        """Producer id -> (epoch, last sequence) after the earlier batches of this append."""
        for header in headers:
            producer_id = header.producer_id
            if producer_id == NO_PRODUCER_ID:
                continue
            entry = self.producers.get(producer_id)
            if entry is not None:
                duplicate = entry.duplicate_of(header)
                if duplicate is not None:
                    return duplicate
            known_epoch = NO_PRODUCER_EPOCH if entry is None else entry.epoch
            epoch, last = staged.get(
                producer_id, (known_epoch, -1 if entry is None else entry.last.last_sequence)
            )
            self._check_epoch(header, epoch)
            self._check_sequence(header, epoch, last, known=known_epoch != NO_PRODUCER_EPOCH)
            staged[producer_id] = (header.producer_epoch, last_sequence(header))
        return None

    def _check_epoch(self, header: BatchHeader, epoch: int) -> None:
        if header.producer_epoch < epoch:
            raise ApiError(
                ErrorCode.invalid_producer_epoch,
                f"Epoch of producer {header.producer_id} in {self.partition} is "
                f"{header.producer_epoch}, which is smaller than the last seen epoch {epoch}",
            )

    def _check_sequence(self, header: BatchHeader, epoch: int, last: int, *, known: bool) -> None:
        first = header.base_sequence
        if header.producer_epoch != epoch:
            if first != 0 and epoch != NO_PRODUCER_EPOCH:
                raise ApiError(
                    ErrorCode.out_of_order_sequence_number,
                    f"Invalid sequence number for new epoch of producer {header.producer_id} "
                    f"in {self.partition}: {header.producer_epoch} (request epoch), {first} "
                    f"(seq. number), {epoch} (current producer epoch)",
                )
        elif known and not in_sequence(last, first):
            raise ApiError(
                ErrorCode.out_of_order_sequence_number,
                f"Out of order sequence number for producer {header.producer_id} in "
                f"{self.partition}: {first} (incoming seq. number), {last} (current end "
                f"sequence number)",
            )

    def record(self, header: BatchHeader, first_offset: int, timestamp: int) -> None:
        """A batch is in the log at ``first_offset`` (appended by the leader or a follower,
        or found by a scan), unchecked: what the log holds is the truth."""
        if header.producer_id == NO_PRODUCER_ID:
            return
        batch = BatchMetadata(
            header.base_sequence,
            last_sequence(header),
            first_offset,
            first_offset + header.last_offset_delta,
            timestamp,
        )
        entry = self.producers.get(header.producer_id)
        if entry is None:
            entry = self.producers[header.producer_id] = ProducerEntry(header.producer_epoch)
        entry.add(header.producer_epoch, batch)

    def load(self, headers: Iterable[BatchHeader]) -> None:
        """Record stored batches, oldest first (headers as the log holds them)."""
        for header in headers:
            self.record(header, header.base_offset, header.max_timestamp)

    def truncate(self, end_offset: int) -> set[int]:
        """The log was cut at ``end_offset``: forget the batches reaching it. Returns the
        producers left with no batch known, who may still have older ones in the log
        (see ``recover``)."""
        lost = set()
        for producer_id, entry in list(self.producers.items()):
            batches = entry.batches
            while batches and batches[-1].last_offset >= end_offset:
                batches.pop()
            if not batches:
                del self.producers[producer_id]
                lost.add(producer_id)
        return lost

    def recover(
        self,
        lost: set[int],
        headers: Callable[[int, int], Iterable[BatchHeader]],
        log_start_offset: int,
        end_offset: int,
    ) -> None:
        """Find the ``lost`` producers' latest batches in the log below ``end_offset``,
        reading ``headers(start, end)`` in windows that go back and grow from there, and
        stopping once all are found. A producer whose remembered batches were all cut
        was writing just before them, so the first window usually finds it, without a
        scan of the whole log. A producer keeps the batches of the window it is found
        in, its latest ones; one found nowhere stays unknown."""
        wanted = set(lost)
        upper = end_offset
        window = RECOVERY_WINDOW_OFFSETS
        while wanted and upper > log_start_offset:
            lower = max(upper - window, log_start_offset)
            found = ProducerStateTable(self.partition)
            found.load(header for header in headers(lower, upper) if header.producer_id in wanted)
            self.producers.update(found.producers)
            wanted -= found.producers.keys()
            upper = lower
            window *= RECOVERY_WINDOW_GROWTH

    def remove_expired(self, now_ms: int, log_start_offset: int) -> int:
        """Forget producers silent for ``PRODUCER_ID_EXPIRATION_MS`` and those whose
        batches retention deleted; returns how many."""
        expired = [
            producer_id
            for producer_id, entry in self.producers.items()
            if entry.last.last_offset < log_start_offset
            or now_ms - entry.last.timestamp >= PRODUCER_ID_EXPIRATION_MS
        ]
        for producer_id in expired:
            del self.producers[producer_id]
        return len(expired)

    def clear(self) -> None:
        self.producers.clear()
