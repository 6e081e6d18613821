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
with its log: built from the log's batch headers when the replica is created, updated
by every append (leader or follower), taken back by truncation. A leader checks producer
batches against it, and answers a retried batch with its original offsets.

As **follower** it keeps what the replica fetcher needs: the leader and epoch to
follow, whether the log must first be truncated (after every change of leader or
epoch), and a pause after an error.

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
from ..storage.log import AppendInfo, PartitionLog
from .producer_state import ProducerStateTable

log = logging.getLogger(__name__)

Submit = Callable[[AlterPartition], Awaitable[PartitionState]]
"""``MetadataQuorum.submit``: applies an ISR change through Raft."""


class Notify(Protocol):
    """Wakes the fetches waiting on a partition (``AppendNotifier.notify``)."""

    def __call__(self, topic: str, partition: int, *, appended: bool) -> None: ...


ISR_RETRY_SECONDS = 1.0
"""After a refused or failed ISR proposal, propose again only after this long or after
the next metadata change, whichever comes first."""
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
        self.producers.load(log.batch_headers())
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
        elif state.leader == NO_LEADER or self.node_id not in state.replicas:
            self._become_idle()
        elif (
            self.role is not Role.FOLLOWER
            or state.leader != self.leader_id
            or state.leader_epoch != self.leader_epoch
        ):
            self._become_follower(state)

    def stop(self) -> None:
        """The replica goes away (deleted or the broker stops)."""
        self._become_idle()
        if self._isr_task is not None:
            self._isr_task.cancel()

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
        info = self.log.append(
            records,
            headers,
            now_ms=now_ms,
            leader_epoch=self.leader_epoch,
            log_append_time=log_append_time,
        )
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
        now = self._clock()
        if now >= self._producer_expiration_due:
            self._producer_expiration_due = now + PRODUCER_EXPIRATION_CHECK_SECONDS
            self.producers.remove_expired(now_ms, self.log.log_start_offset)

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
        for _, future in waiters:
            if not future.done():
                future.set_result(code)

    # --- leader: followers and the high watermark ---------------------------------------

    def follower_fetched(self, replica: int, fetch_offset: int) -> None:
        """A follower asks for ``fetch_offset``: it holds everything below it."""
        progress = self.followers.get(replica)
        if progress is None or fetch_offset > self.log.log_end_offset:
            return
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
        info = self.log.append_as_follower(records, now_ms=now_ms)
        if info.record_count:
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
            self.producers.clear()
            return
        lost = self.producers.truncate(end)
        if lost:
            self.producers.recover(lost, self.log.batch_headers, self.log.log_start_offset, end)

    def restart_at(self, offset: int) -> None:
        """Drop the whole log and continue at ``offset`` (see ``PartitionLog.restart_at``)."""
        self.log.restart_at(offset)
        self.producers.clear()

    def follower_appended(self, leader_high_watermark: int, leader_log_start_offset: int) -> None:
        """After a fetch from the leader: its high watermark, as far as this log has it,
        and its log start offset, which this log follows."""
        self.log.high_watermark = min(leader_high_watermark, self.log.log_end_offset)
        if leader_log_start_offset > self.log.log_start_offset:
            self.log.delete_segments_before(leader_log_start_offset)
