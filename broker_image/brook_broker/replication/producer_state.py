"""Idempotent producers as one partition replica knows them (Kafka's ProducerStateManager).

Per producer id the table keeps its epoch and the last ``NUM_BATCHES_TO_RETAIN`` batches
it wrote: first and last sequence number, first and last offset, timestamp. The leader
checks each new batch against it before appending: a batch that repeats one of those is
a retry whose answer got lost, and is answered with the original offsets instead of
being written again; a batch that does not follow the last sequence leaves a gap
(OUT_OF_ORDER_SEQUENCE_NUMBER); an epoch older than the last one belongs to a fenced
producer (INVALID_PRODUCER_EPOCH).

Followers record every batch they replicate, so a new leader already knows what its
producers wrote; a log cut back by truncation takes the table back with it.

A broker that starts rebuilds the table from its log. Reading every batch header of a
long log takes seconds, so, as Kafka does, the table is saved as a snapshot
``<offset>.snapshot`` in the partition directory whenever the log rolls a segment and
when the replica stops: the table as of ``offset``, the log end offset at that moment. A
restart loads the newest valid snapshot and reads only the batch headers after it. A
snapshot carries a version and a CRC32C, so a torn or corrupt one is noticed, deleted and
passed over for an older one, or for a scan of the whole log.

Sequence numbers run to 2**31 - 1 and continue at 0, as Kafka's do. As in Kafka before
transactions v2, a producer the table does not know (its batches expired or were
deleted by retention) may continue at any sequence number.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crc32c import crc32c
from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..storage.batch import BatchHeader
from ..storage.checkpoint import write_atomically
from ..storage.segment import segment_file

logger = logging.getLogger(__name__)

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
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOTS_RETAINED = 2
"""The newest snapshots kept: the one before the latest is the fallback if the latest
turns out corrupt."""
_SNAPSHOT_VERSION = 1
_SNAPSHOT_NAME = re.compile(r"^(\d{20})\.snapshot$")
_BATCH_FIELDS = 5
"""Numbers per BatchMetadata in a snapshot line."""


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

    def write_snapshot(self, directory: Path, offset: int, log_start_offset: int) -> None:
        """Save the table as the producers' state of the log below ``offset``, crash-safely;
        of the older snapshots only the newest ones at or above ``log_start_offset`` stay.

        A snapshot is text: a line ``<version> <crc32c of the rest>``, then a line per
        producer, ``<id> <epoch>`` followed by five numbers per remembered batch (first
        and last sequence, first and last offset, timestamp), oldest first."""
        lines = (
            " ".join(map(str, (producer_id, entry.epoch, *_batch_numbers(entry))))
            for producer_id, entry in self.producers.items()
        )
        body = "".join(line + "\n" for line in lines)
        write_atomically(
            snapshot_file(directory, offset),
            f"{_SNAPSHOT_VERSION} {crc32c(body.encode())}\n{body}",
        )
        newest = set(snapshot_offsets(directory)[-SNAPSHOTS_RETAINED:])
        delete_snapshots(
            directory, lambda snapshot: snapshot not in newest or snapshot < log_start_offset
        )

    def load_snapshot(self, directory: Path, log_start_offset: int, log_end_offset: int) -> int:
        """Replace the table by the newest valid snapshot between the log start and end
        offsets, and return its offset: the log's batches from there on are still to be
        recorded (all of them, from ``log_start_offset``, if there is no snapshot).

        Snapshots outside that range are deleted: those above were left by a tail cut
        since (a crash or truncation), those below by deleted records. Batches below the
        log start offset are left out, as a scan of the log would not find them."""
        self.clear()
        delete_snapshots(
            directory, lambda snapshot: not log_start_offset <= snapshot <= log_end_offset
        )
        for offset in reversed(snapshot_offsets(directory)):
            path = snapshot_file(directory, offset)
            try:
                self.producers = _read_snapshot(path, log_start_offset)
            except (OSError, ValueError) as error:
                logger.warning(
                    "%s: ignoring %s, which cannot be read: %s", self.partition, path, error
                )
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            logger.info(
                "%s: loaded %d producers from the snapshot at offset %d",
                self.partition,
                len(self.producers),
                offset,
            )
            return offset
        return log_start_offset


def snapshot_file(directory: Path, offset: int) -> Path:
    return segment_file(directory, offset, SNAPSHOT_SUFFIX)


def snapshot_offsets(directory: Path) -> list[int]:
    """Offsets of the snapshots in ``directory``, ascending."""
    return sorted(
        int(match.group(1))
        for match in map(_SNAPSHOT_NAME.match, (path.name for path in directory.iterdir()))
        if match is not None
    )


def delete_snapshots(directory: Path, doomed: Callable[[int], bool]) -> None:
    """Delete the snapshots whose offsets are ``doomed``, without syncing the directory:
    the log syncs it after a truncation, and a crash before that undoes the truncation
    too (a snapshot above the log end offset is then deleted again on load)."""
    for offset in snapshot_offsets(directory):
        if doomed(offset):
            snapshot_file(directory, offset).unlink(missing_ok=True)


def _batch_numbers(entry: ProducerEntry) -> Iterable[int]:
    """A snapshot line's numbers for each batch, in BatchMetadata's field order."""
    for batch in entry.batches:
        yield batch.first_sequence
        yield batch.last_sequence
        yield batch.first_offset
        yield batch.last_offset
        yield batch.timestamp


def _read_snapshot(path: Path, log_start_offset: int) -> dict[int, ProducerEntry]:
    """The producers a snapshot holds, without batches below ``log_start_offset``; raises
    ValueError if it is not a whole snapshot of this version."""
    head, _, body = path.read_text().partition("\n")
    version, crc = map(int, head.split())
    if version != _SNAPSHOT_VERSION:
        raise ValueError(f"version {version} is not {_SNAPSHOT_VERSION}")
    if crc32c(body.encode()) != crc:
        raise ValueError("its CRC does not match its contents")
    producers: dict[int, ProducerEntry] = {}
    for line in body.splitlines():
        producer_id, epoch, *numbers = map(int, line.split())
        if not numbers or len(numbers) % _BATCH_FIELDS:
            raise ValueError(f"producer {producer_id} has {len(numbers)} batch numbers")
        entry = ProducerEntry(epoch)
        for start in range(0, len(numbers), _BATCH_FIELDS):
            batch = BatchMetadata(*numbers[start : start + _BATCH_FIELDS])
            if batch.last_offset >= log_start_offset:
                entry.batches.append(batch)
        if entry.batches:
            producers[producer_id] = entry
    return producers
