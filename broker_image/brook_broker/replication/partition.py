"""One partition replica hosted by this broker: as leader, as follower, or idle.

As **leader** (the metadata names this broker, in some leader epoch) it appends producer
batches stamped with its epoch, tracks each follower's log end offset from the offsets
its fetches ask for, and moves the high watermark to the lowest log end offset in the
ISR, never backwards. ``acks=all`` producers wait for the high watermark to pass their
batch. A follower that has not caught up with the log end offset for
``replica.lag.time.max.ms`` is proposed for removal from the ISR; a follower outside
the ISR that reached the high watermark (and the start of this leader's epoch) is
proposed for addition. Proposals go to the metadata quorum (``AlterPartition``), one
at a time; while one is in flight the high watermark counts both ISRs, so it is safe
whichever way the proposal ends.

In every role the replica keeps its idempotent producers' state (``producers``) in step
with its log: loaded when the replica is created from the newest snapshot and the batch
headers after it, updated by every append (leader or follower), taken back by
truncation, and snapshotted whenever the log rolls a segment and when the replica stops.
A leader checks producer batches against it, and answers a retried batch with its
original offsets.

As **follower** it keeps what the replica fetcher needs: the leader and epoch to
follow, whether the log must first be truncated (after every change of leader or
epoch), and a pause after an error. Its log start offset follows the leader's.

**DeleteRecords** moves the leader's log start offset; the answer waits until the low
watermark (the lowest log start offset of the leader and the followers in the ISR, as
their fetches report it) has followed.

Idle means no leader, or leadership that moved and has not reached this broker's
metadata yet: nothing is served or fetched.

Everything runs on the event loop; the clock is monotonic seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from kio.schema.errors import ErrorCode

from .. import metrics
from ..config import BrokerConfig
from ..metadata.commands import AlterPartition
from ..metadata.errors import ApiError
from ..metadata.model import NO_LEADER, PartitionState
from ..metadata.topic_config import TopicSettings, resolve
from ..storage.batch import BatchHeader, iter_headers
from ..storage.log import AppendInfo, OffsetOutOfRange, PartitionLog
from .producer_state import ProducerStateTable, delete_snapshots

log = logging.getLogger(__name__)

Submit = Callable[[AlterPartition], Awaitable[PartitionState]]
"""``MetadataQuorum.submit``: applies an ISR change through Raft."""


class Notify(Protocol):
    """Wakes the fetches waiting on a partition (``AppendNotifier.notify``)."""

    def __call__(self, topic: str, partition: int, *, appended: bool) -> None: ...


ISR_RETRY_SECONDS = 1.0
"""After a refused or failed ISR proposal, propose again only after this long or after
the next metadata change, whichever comes first."""
HIGH_WATERMARK = -1
"""DeleteRecords' offset meaning "everything below the high watermark"."""
PRODUCER_EXPIRATION_CHECK_SECONDS = 600.0
"""Kafka's ``producer.id.expiration.check.interval.ms`` default: how often appends look
for producers to forget."""


_ROUTINE_REFUSALS = frozenset(
    {
        ErrorCode.ineligible_replica,
        ErrorCode.invalid_update_version,
        ErrorCode.fenced_leader_epoch,
        ErrorCode.not_leader_or_follower,
    }
)


class Role(enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    IDLE = "idle"


@dataclass(slots=True)
class FollowerProgress:
    """The leader's view of one follower, from the fetches it sends (Kafka's Replica)."""

    log_end_offset: int = -1
    """-1 until the follower fetches from this leader."""
    last_caught_up: float = 0.0
    """When the follower last had everything the leader had (monotonic seconds)."""
    last_fetch: float = 0.0
    last_fetch_leader_end_offset: int = -1
    log_start_offset: int = -1
    """-1 until the follower reports it in a fetch to this leader."""


class Partition:
    def __init__(
        self,
        node_id: int,
        topic: str,
        index: int,
        log: PartitionLog,
        *,
        topic_id: uuid.UUID,
        high_watermark: int = 0,
        config: BrokerConfig,
        submit: Submit,
        notify: Notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.topic = topic
        self.index = index
        self.topic_id = topic_id
        self.log = log
        self._config = config
        self._submit = submit
        self._notify = notify
        self._clock = clock
        self._lag_seconds = config.replica_lag_time_max_ms / 1000
        self.state = PartitionState(
            replicas=(), isr=(), leader=NO_LEADER, leader_epoch=-1, partition_epoch=-1
        )
        self.settings: TopicSettings = resolve({}, config)
        self._configs: Mapping[str, str] | None = None
        self.role = Role.IDLE
        self.leader_epoch = -1
        """The epoch this replica leads or follows in (-1 while idle)."""
        # Leader state.
        self.followers: dict[int, FollowerProgress] = {}
        self._epoch_start_offset = 0
        self._waiters: deque[tuple[int, asyncio.Future[ErrorCode]]] = deque()
        self._deletions: list[tuple[int, asyncio.Future[ErrorCode]]] = []
        """DeleteRecords answers waiting for the low watermark to reach their offset."""
        self._pending_isr: tuple[int, ...] | None = None
        self._isr_task: asyncio.Task[None] | None = None
        self._isr_retry_at = 0.0
        # Follower state.
        self.leader_id = NO_LEADER
        self.needs_truncation = False
        self.follow_generation = 0
        """Raised on every change of what this replica follows, so a fetch answer that
        was asked for under an older one is dropped."""
        self.paused_until = 0.0
        self.producers = ProducerStateTable(f"{topic}-{index}")
        self._snapshot_offset = self.producers.load_snapshot(
            log.directory, log.log_start_offset, log.log_end_offset
        )
        """Where a restart would start reading batch headers: the newest snapshot's offset
        (or the log start offset)."""
        self.producers.load(log.batch_headers(self._snapshot_offset))
        self._active_segment = log.active_segment_base_offset
        self._producer_expiration_due = clock() + PRODUCER_EXPIRATION_CHECK_SECONDS
        # The log may hold uncommitted data beyond what was committed when this broker
        # last saved its high watermarks (``high_watermark``): the rest is committed once
        # the leader says so (or, as leader, once the ISR has it).
        log.high_watermark = max(log.log_start_offset, min(high_watermark, log.log_end_offset))

    # --- metadata ------------------------------------------------------------------------

    def update(self, state: PartitionState, configs: Mapping[str, str]) -> None:
        """Apply the partition's state and topic configs from the metadata."""
        if configs is not self._configs:
            self._configs = configs
            self.settings = resolve(configs, self._config)
            self.log.update_config(self.settings.log)
        self.paused_until = 0.0
        self._isr_retry_at = 0.0
        if state is not self.state:
            self._apply(state)

    def _apply(self, state: PartitionState) -> None:
        self.state = state
        if state.leader == self.node_id:
            if self.role is not Role.LEADER or state.leader_epoch != self.leader_epoch:
                self._become_leader(state)
            else:
                self._track_followers(state)
                self._advance_high_watermark()
                self._complete_deletions()  # the ISR may have lost a follower still behind
        elif state.leader == NO_LEADER or self.node_id not in state.replicas:
            self._become_idle()
        elif (
            self.role is not Role.FOLLOWER
            or state.leader != self.leader_id
            or state.leader_epoch != self.leader_epoch
        ):
            self._become_follower(state)

    def stop(self) -> None:
        """The replica goes away (deleted or the broker stops): a snapshot of its producers
        spares the next start reading the batch headers since the last one."""
        self._become_idle()
        if self._isr_task is not None:
            self._isr_task.cancel()
        end = self.log.log_end_offset
        if end > max(self._snapshot_offset, self.log.log_start_offset):
            self._write_snapshot(end)

    def _become_leader(self, state: PartitionState) -> None:
        now = self._clock()
        self.role = Role.LEADER
        self.leader_id = self.node_id
        self.leader_epoch = state.leader_epoch
        self.follow_generation += 1
        self.needs_truncation = False
        epochs = self.log.leader_epochs
        if state.leader_epoch > epochs.latest_epoch:
            epochs.assign(state.leader_epoch, self.log.log_end_offset)
        self._epoch_start_offset = self.log.log_end_offset
        # Followers in the ISR get a full lag period to show up before they count as lagging.
        self.followers = {
            replica: FollowerProgress(last_caught_up=now if replica in state.isr else 0.0)
            for replica in state.replicas
            if replica != self.node_id
        }
        log.info(
            "%s-%d: leading in epoch %d from offset %d, ISR %s",
            self.topic,
            self.index,
            state.leader_epoch,
            self._epoch_start_offset,
            list(state.isr),
        )
        self._advance_high_watermark()

    def _become_follower(self, state: PartitionState) -> None:
        self._fail_waiters(ErrorCode.not_leader_or_follower)
        self.role = Role.FOLLOWER
        self.leader_id = state.leader
        self.leader_epoch = state.leader_epoch
        self.followers = {}
        self.follow_generation += 1
        self.needs_truncation = True
        log.info(
            "%s-%d: following broker %d in epoch %d",
            self.topic,
            self.index,
            state.leader,
            state.leader_epoch,
        )

    def _become_idle(self) -> None:
        self._fail_waiters(ErrorCode.not_leader_or_follower)
        if self.role is not Role.IDLE:
            log.info("%s-%d: neither leading nor following", self.topic, self.index)
        self.role = Role.IDLE
        self.leader_id = NO_LEADER
        self.leader_epoch = -1
        self.followers = {}
        self.follow_generation += 1

    def _track_followers(self, state: PartitionState) -> None:
        """Replicas added or removed (a reassignment) while this broker keeps leading."""
        for replica in state.replicas:
            if replica != self.node_id and replica not in self.followers:
                self.followers[replica] = FollowerProgress()
        for replica in [replica for replica in self.followers if replica not in state.replicas]:
            del self.followers[replica]

    # --- leader: produce -----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def _in_sync_count(self) -> int:
        """ISR members that are caught up as this leader sees them, itself included."""
        now = self._clock()
        count = 0
        for replica in self.state.isr:
            if replica == self.node_id:
                count += 1
                continue
            progress = self.followers.get(replica)
            if progress is not None and self._caught_up(progress, now):
                count += 1
        return count

    def check_enough_replicas(self) -> None:
        """acks=all: refuse (before appending) when too few replicas are in sync."""
        needed = self.settings.min_insync_replicas
        in_sync = self._in_sync_count()
        if in_sync < needed:
            raise ApiError(
                ErrorCode.not_enough_replicas,
                f"The size of the current ISR {in_sync} is insufficient to satisfy the "
                f"min.isr requirement of {needed} for partition {self.topic}-{self.index}",
            )

    def append(
        self,
        records: bytes | memoryview,
        headers: Sequence[BatchHeader],
        *,
        now_ms: int,
        log_append_time: bool,
    ) -> AppendInfo:
        """Append producer batches as leader; followers waiting for data are woken.

        A batch an idempotent producer already wrote (a retry) is not appended again:
        the original batch's offsets come back, with a record count of 0. Sequence gaps
        and fenced producer epochs raise ApiError, with nothing appended."""
        duplicate = self.producers.check(headers)
        if duplicate is not None:
            return AppendInfo(
                duplicate.first_offset,
                duplicate.last_offset,
                0,
                duplicate.timestamp if log_append_time else -1,
            )
        end = self.log.log_end_offset
        info = self.log.append(
            records,
            headers,
            now_ms=now_ms,
            leader_epoch=self.leader_epoch,
            log_append_time=log_append_time,
        )
        self._snapshot_if_rolled(end)
        offset = info.base_offset
        for header in headers:
            timestamp = now_ms if log_append_time else header.max_timestamp
            self.producers.record(header, offset, timestamp)
            offset += header.last_offset_delta + 1
        self._expire_producers(now_ms)
        self._notify(self.topic, self.index, appended=True)
        self._advance_high_watermark()
        return info

    def _expire_producers(self, now_ms: int) -> None:
        """Now and then forget expired producers, and the snapshots that retention or
        DeleteRecords left below the log start offset."""
        now = self._clock()
        if now >= self._producer_expiration_due:
            self._producer_expiration_due = now + PRODUCER_EXPIRATION_CHECK_SECONDS
            start = self.log.log_start_offset
            self.producers.remove_expired(now_ms, start)
            self._delete_snapshots(lambda snapshot: snapshot < start)

    def _snapshot_if_rolled(self, end_offset: int) -> None:
        """After an append that went into a new active segment: snapshot the producers as
        they were before it, at ``end_offset`` (the log end offset then, which is the new
        segment's base offset), as Kafka does at each roll."""
        active = self.log.active_segment_base_offset
        if active != self._active_segment:
            self._active_segment = active
            self._write_snapshot(end_offset)

    def _write_snapshot(self, offset: int) -> None:
        """A snapshot only saves reading the log: one that fails is worth a warning."""
        try:
            self.producers.write_snapshot(self.log.directory, offset, self.log.log_start_offset)
        except OSError:
            log.warning(
                "%s-%d: writing the producer snapshot at offset %d failed",
                self.topic,
                self.index,
                offset,
                exc_info=True,
            )
        else:
            self._snapshot_offset = offset

    def _delete_snapshots(self, doomed: Callable[[int], bool]) -> None:
        try:
            delete_snapshots(self.log.directory, doomed)
        except OSError:
            log.warning(
                "%s-%d: deleting producer snapshots failed", self.topic, self.index, exc_info=True
            )

    def wait_for_commit(self, offset: int) -> asyncio.Future[ErrorCode]:
        """A future that resolves once the high watermark reaches ``offset``: to
        ``ErrorCode.none``, or to why the write is not acknowledged (this broker stopped
        leading; the ISR shrank below min.insync.replicas on the way)."""
        future: asyncio.Future[ErrorCode] = asyncio.get_running_loop().create_future()
        if not self.is_leader:
            future.set_result(ErrorCode.not_leader_or_follower)
        elif self.log.high_watermark >= offset:
            future.set_result(self._commit_outcome())
        else:
            # In offset order, which a retried batch (waiting for its original's offset,
            # below later batches') would break: each wait ends once the mark passes it.
            bisect.insort(self._waiters, (offset, future), key=itemgetter(0))
        return future

    def _commit_outcome(self) -> ErrorCode:
        if len(self.state.isr) < self.settings.min_insync_replicas:
            return ErrorCode.not_enough_replicas_after_append
        return ErrorCode.none

    def _fail_waiters(self, code: ErrorCode) -> None:
        waiters, self._waiters = self._waiters, deque()
        deletions, self._deletions = self._deletions, []
        for _, future in (*waiters, *deletions):
            if not future.done():
                future.set_result(code)

    # --- leader: deleting records -------------------------------------------------------

    def delete_records(self, offset: int) -> int:
        """DeleteRecords as leader: records below ``offset`` (-1: the high watermark) are
        deleted by moving the log start offset there. Returns that offset, which the low
        watermark must reach before the deletion is answered.

        Refused (ApiError) with POLICY_VIOLATION on a topic whose cleanup.policy lacks
        ``delete``, and with OFFSET_OUT_OF_RANGE below 0 or above the high watermark."""
        name = f"{self.topic}-{self.index}"
        if not self.settings.log.delete:
            raise ApiError(
                ErrorCode.policy_violation,
                f"Records of partition {name} can not be deleted due to the configured policy",
            )
        requested = self.log.high_watermark if offset == HIGH_WATERMARK else offset
        if requested < 0:
            raise ApiError(
                ErrorCode.offset_out_of_range,
                f"The offset {requested} for partition {name} is not valid",
            )
        try:
            self.log.increment_log_start_offset(requested, "records deleted by a client")
        except OffsetOutOfRange:
            raise ApiError(
                ErrorCode.offset_out_of_range,
                f"Cannot increment the log start offset to {requested} of partition {name} "
                f"since it is larger than the high watermark {self.log.high_watermark}",
            ) from None
        # Followers' waiting fetches wake too: they have a log start offset to take.
        self._notify(self.topic, self.index, appended=True)
        self._complete_deletions()
        return requested

    @property
    def low_watermark(self) -> int:
        """As leader: the lowest log start offset of this replica and of the followers in
        the ISR (-1 while one of them has not reported its own). Kafka counts every replica
        on a live broker; a follower outside the ISR may be down for good, and once it
        fetches again its log start offset follows this one anyway."""
        low = self.log.log_start_offset
        for replica in self.state.isr:
            if replica != self.node_id:
                progress = self.followers.get(replica)
                low = min(low, -1 if progress is None else progress.log_start_offset)
        return low

    def wait_for_low_watermark(self, offset: int) -> asyncio.Future[ErrorCode]:
        """A future that resolves once the low watermark reaches ``offset``: to
        ``ErrorCode.none``, or to NOT_LEADER_OR_FOLLOWER if this broker stops leading."""
        future: asyncio.Future[ErrorCode] = asyncio.get_running_loop().create_future()
        if not self.is_leader:
            future.set_result(ErrorCode.not_leader_or_follower)
        elif self.low_watermark >= offset:
            future.set_result(ErrorCode.none)
        else:
            self._deletions.append((offset, future))
        return future

    def _complete_deletions(self) -> None:
        """Answer the deletions whose offset the low watermark reached (or gave up on)."""
        if not self._deletions or not self.is_leader:
            return
        low = self.low_watermark
        waiting = []
        for offset, future in self._deletions:
            if future.done():
                continue
            if low >= offset:
                future.set_result(ErrorCode.none)
            else:
                waiting.append((offset, future))
        self._deletions = waiting

    # --- leader: followers and the high watermark ---------------------------------------

    def follower_fetched(self, replica: int, fetch_offset: int, log_start_offset: int = -1) -> None:
        """A follower asks for ``fetch_offset``: it holds everything below it, from
        ``log_start_offset`` (-1: a fetch version that does not say)."""
        progress = self.followers.get(replica)
        if progress is None or fetch_offset > self.log.log_end_offset:
            return
        progress.log_start_offset = log_start_offset
        self._complete_deletions()
        now = self._clock()
        leader_end = self.log.log_end_offset
        if fetch_offset >= leader_end:
            progress.last_caught_up = max(progress.last_caught_up, now)
        elif fetch_offset >= progress.last_fetch_leader_end_offset:
            progress.last_caught_up = max(progress.last_caught_up, progress.last_fetch)
        progress.last_fetch_leader_end_offset = leader_end
        progress.last_fetch = now
        progress.log_end_offset = fetch_offset
        if (
            replica not in self.state.isr
            and fetch_offset >= self.log.high_watermark
            and fetch_offset >= self._epoch_start_offset
            and self._may_propose(now)
        ):
            self._propose_isr((*self.state.isr, replica))
        self._advance_high_watermark()

    def _caught_up(self, progress: FollowerProgress, now: float) -> bool:
        """Had everything this leader had within replica.lag.time.max.ms. A live follower
        of an idle partition still asks at least every fetch max_wait, so (unlike
        Kafka, which also counts a follower at the log end offset as caught up) one that
        stopped is noticed even when nothing is being written."""
        return now - progress.last_caught_up <= self._lag_seconds

    def shrink_isr_if_lagging(self) -> None:
        """Propose removing the ISR members that are not caught up (checked periodically)."""
        if not self.is_leader:
            return
        now = self._clock()
        if not self._may_propose(now):
            return
        lagging = {
            replica
            for replica in self.state.isr
            if replica != self.node_id
            and not self._caught_up(self.followers.get(replica, FollowerProgress()), now)
        }
        if lagging:
            self._propose_isr(tuple(r for r in self.state.isr if r not in lagging))

    def _may_propose(self, now: float) -> bool:
        return self.is_leader and self._pending_isr is None and now >= self._isr_retry_at

    def _propose_isr(self, isr: tuple[int, ...]) -> None:
        self._pending_isr = isr
        self._isr_task = asyncio.get_running_loop().create_task(
            self._alter_isr(self.state, isr), name=f"ISR change of {self.topic}-{self.index}"
        )

    async def _alter_isr(self, start: PartitionState, isr: tuple[int, ...]) -> None:
        shrink = len(isr) < len(start.isr)
        try:
            result = await self._submit(
                AlterPartition(
                    self.topic,
                    self.index,
                    self.node_id,
                    start.leader_epoch,
                    start.partition_epoch,
                    list(isr),
                )
            )
        except ApiError as error:
            # Refusals that the next metadata explains (a follower not yet unfenced, a
            # change that overtook this one) are routine; anything else is worth a look.
            log.log(
                logging.INFO if error.code in _ROUTINE_REFUSALS else logging.WARNING,
                "%s-%d: ISR change %s -> %s refused: %s",
                self.topic,
                self.index,
                list(start.isr),
                list(isr),
                error.message,
            )
            self._isr_retry_at = self._clock() + ISR_RETRY_SECONDS
        else:
            (metrics.ISR_SHRINKS if shrink else metrics.ISR_EXPANDS).inc()
            log.info(
                "%s-%d: ISR %s -> %s", self.topic, self.index, list(start.isr), list(result.isr)
            )
            if result.partition_epoch > self.state.partition_epoch:
                self._apply(result)
        finally:
            self._pending_isr = None
            self._isr_task = None
        self._advance_high_watermark()

    def _advance_high_watermark(self) -> None:
        """High watermark := the lowest log end offset in the ISR (and any ISR being
        proposed), if that is higher; then acknowledge the writes it passed."""
        if not self.is_leader:
            return
        high_watermark = self.log.log_end_offset
        members = (
            self.state.isr
            if self._pending_isr is None
            else (
                *self.state.isr,
                *self._pending_isr,
            )
        )
        for replica in members:
            if replica == self.node_id:
                continue
            progress = self.followers.get(replica)
            if progress is None or progress.log_end_offset < 0:
                return  # not heard from in this epoch: nothing more is known to be committed
            high_watermark = min(high_watermark, progress.log_end_offset)
        if high_watermark <= self.log.high_watermark:
            return
        self.log.high_watermark = high_watermark
        self._notify(self.topic, self.index, appended=False)
        if self._waiters:
            outcome = self._commit_outcome()
            while self._waiters and self._waiters[0][0] <= high_watermark:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(outcome)

    # --- follower ------------------------------------------------------------------------

    def append_as_follower(self, records: bytes | memoryview, *, now_ms: int) -> AppendInfo:
        """Append batches fetched from the leader, and record their producers' batches."""
        self._start_at_first_batch(records)
        end = self.log.log_end_offset
        info = self.log.append_as_follower(records, now_ms=now_ms)
        self._snapshot_if_rolled(end)
        # Every batch counts, even one without records: the cleaner keeps a producer's
        # last batch, emptied, for its sequence number.
        for _, header in iter_headers(records):
            if header.base_offset > info.last_offset:
                break
            self.producers.record(header, header.base_offset, header.max_timestamp)
        self._expire_producers(now_ms)
        return info

    def truncate_to(self, offset: int) -> None:
        """Cut the log at ``offset`` (see ``PartitionLog.truncate_to``); the producers'
        state goes back with it, from the batches it kept or else from the log."""
        before = self.log.log_end_offset
        self.log.truncate_to(offset)
        end = self.log.log_end_offset
        if end == before:
            return
        if end == self.log.log_start_offset:
            self._forget_producers()
            return
        self._active_segment = self.log.active_segment_base_offset
        self._snapshot_offset = min(self._snapshot_offset, end)
        self._delete_snapshots(lambda snapshot: snapshot > end)
        lost = self.producers.truncate(end)
        if lost:
            self.producers.recover(lost, self.log.batch_headers, self.log.log_start_offset, end)

    def restart_at(self, offset: int) -> None:
        """Drop the whole log and continue at ``offset`` (see ``PartitionLog.restart_at``)."""
        self.log.restart_at(offset)
        self._forget_producers()

    def _forget_producers(self) -> None:
        """The log holds no batch any more: no producer, no snapshot."""
        self.producers.clear()
        self._delete_snapshots(lambda snapshot: True)
        self._active_segment = self.log.active_segment_base_offset
        self._snapshot_offset = self.log.log_start_offset

    def _start_at_first_batch(self, records: bytes | memoryview) -> None:
        """An empty log that starts at the leader's log start offset, where that lies
        inside a batch (after DeleteRecords), gets that whole batch from the leader: the
        log restarts at the batch's base offset, and its log start offset moves up to
        the leader's again once the batch is in (``follower_appended``)."""
        log_ = self.log
        if log_.log_end_offset != log_.log_start_offset:
            return
        for _, header in iter_headers(records):
            if header.base_offset < log_.log_end_offset <= header.last_offset:
                log.info(
                    "%s-%d: the leader's first batch starts at offset %d, below this log's "
                    "start %d: starting the log there",
                    self.topic,
                    self.index,
                    header.base_offset,
                    log_.log_end_offset,
                )
                self.restart_at(header.base_offset)
            return

    def follower_appended(self, leader_high_watermark: int, leader_log_start_offset: int) -> None:
        """After a fetch from the leader: its high watermark, as far as this log has it,
        and its log start offset, which this log follows (even to inside a segment), as
        far as this replica's high watermark."""
        self.log.high_watermark = min(leader_high_watermark, self.log.log_end_offset)
        self.log.increment_log_start_offset(
            min(leader_log_start_offset, self.log.high_watermark), "the leader's log start offset"
        )
