"""The replica manager: the front door of appends and fetches, and the keeper of this
broker's replicas.

**Front door.** ``append_records`` (Produce, and the coordinators' own internal topics)
validates batches, checks producer state, appends on the leader and, with ``acks=all``,
hands back the wait for the high watermark; ``fetch_records`` (consumers and followers)
records follower positions, reads, and holds a fetch that found too little until an
append wakes it (``min_bytes``, ``max_wait``). ``delete_records`` (DeleteRecords) moves
leaders' log start offsets and hands back the wait for the followers to follow.
``leader_partition`` is the check every partition-level request shares. The request
handlers only decode, call and encode.

**Replicas.** It makes this broker's replicas what the cluster metadata says.

On every metadata change it walks the partitions assigned to this broker: a new one gets
its log (and any log left by an earlier topic of the same name is removed), a replica
this broker now leads becomes leader, one another broker leads is handed to the replica
fetcher for that broker, and a replica no longer assigned here (topic deleted,
reassigned away) is stopped and its log deleted. A periodic check proposes removing
lagging followers from the ISRs this broker leads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from .. import metrics
from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.model import TopicState
from ..metadata.quorum import MetadataQuorum
from ..metadata.topic_config import resolve
from ..metadata.topics import INTERNAL_TOPICS
from ..protocol.client import KafkaClient
from ..storage.batch import InvalidBatch, validate_batches
from ..storage.checkpoint import read_high_watermarks, write_high_watermarks
from ..storage.log import LogConfig, wall_clock_ms
from ..storage.manager import LogManager
from ..throttle import TokenBucket
from .appends import AppendResult, PartitionAppend, TopicPartition, check_batches, check_request
from .fetcher import ClientFactory, ReplicaFetcher
from .fetches import FetchedPartition, FetchParams, PartitionFetch, read_partition
from .notifier import AppendNotifier
from .partition import Partition, Role

log = logging.getLogger(__name__)

_MIN_ISR_CHECK_S = 0.01
_MAX_ISR_CHECK_S = 1.0
HIGH_WATERMARK_CHECKPOINT_S = 5.0
"""How often high watermarks are saved (Kafka: replica.high.watermark.checkpoint.interval.ms)."""


@dataclass(slots=True)
class PartitionDeletion:
    """One partition's answer to DeleteRecords (Kafka's DeleteRecordsPartitionResult)."""

    error_code: ErrorCode = ErrorCode.none
    low_watermark: int = -1


@dataclass(slots=True)
class _Replicating:
    answer: PartitionDeletion
    partition: Partition
    low_watermark_reached: asyncio.Future[ErrorCode]


class RecordDeletions:
    """What ``ReplicaManager.delete_records`` did: each partition's answer, in the order
    asked, final once :meth:`replicated` returns (at once unless a follower in the ISR
    still has to move its log start offset)."""

    def __init__(self, timeout_s: float) -> None:
        self.partitions: list[tuple[TopicPartition, PartitionDeletion]] = []
        self._replicating: list[_Replicating] = []
        self._deadline = asyncio.get_running_loop().time() + max(timeout_s, 0)

    @property
    def waiting(self) -> bool:
        return bool(self._replicating)

    def wait_for(self, answer: PartitionDeletion, partition: Partition, offset: int) -> None:
        self._replicating.append(
            _Replicating(answer, partition, partition.wait_for_low_watermark(offset))
        )

    async def replicated(self) -> list[tuple[TopicPartition, PartitionDeletion]]:
        """Wait (at most until the request's timeout) for the low watermarks, then put
        each partition's outcome into its answer: its low watermark then;
        REQUEST_TIMED_OUT with the one it had; NOT_LEADER_OR_FOLLOWER with none."""
        futures = [waiting.low_watermark_reached for waiting in self._replicating]
        if not all(future.done() for future in futures):
            remaining = self._deadline - asyncio.get_running_loop().time()
            await asyncio.wait(futures, timeout=max(remaining, 0))
        for waiting in self._replicating:
            answer, future = waiting.answer, waiting.low_watermark_reached
            if not future.done():
                future.cancel()
                answer.error_code = ErrorCode.request_timed_out
            elif future.result() == ErrorCode.none:
                answer.low_watermark = waiting.partition.low_watermark
            else:
                answer.error_code, answer.low_watermark = future.result(), -1
        self._replicating = []
        return self.partitions


class ReplicaManager:
    def __init__(
        self,
        node_id: int,
        config: BrokerConfig,
        logs: LogManager,
        quorum: MetadataQuorum,
        *,
        connect: ClientFactory = KafkaClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.logs = logs
        self.quorum = quorum
        self.appends = AppendNotifier()
        """Wakes the fetches waiting for data when a partition grows."""
        self._connect = connect
        self._clock = clock
        self.throttle = (
            TokenBucket(config.replication_throttle_bytes, clock)
            if config.replication_throttle_bytes >= 0
            else None
        )
        """Limits what this broker sends to replicas being added by a reassignment."""
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._fetchers: dict[int, ReplicaFetcher] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._checkpointed: dict[tuple[str, int], int] = {}
        """High watermarks saved before this start, for the replicas not hosted yet."""
        self._saved: dict[tuple[str, int], int] = {}
        self._collector = metrics.ReplicationCollector(self._led_partition_sizes)
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the logs of the replicas assigned here (removing the others), then take up
        each replica's role. Call once the metadata quorum has caught up."""
        await asyncio.to_thread(self.logs.open_existing, self._log_config_for)
        self._checkpointed = read_high_watermarks(self.logs.data_dir)
        self._started = True
        self.on_metadata_change()
        self._checkpointed = {}
        metrics.REGISTRY.register(self._collector)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._check_isrs(), name="ISR check"),
            loop.create_task(self._checkpoint_high_watermarks(), name="high watermark checkpoint"),
        ]

    async def stop(self) -> None:
        """Stop fetching and leading (waiting producers get NOT_LEADER_OR_FOLLOWER); the
        logs stay open for the LogManager to close."""
        if not self._started:
            return
        self._started = False
        metrics.REGISTRY.unregister(self._collector)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        try:
            write_high_watermarks(self.logs.data_dir, self._high_watermarks())
        except OSError:
            log.warning("saving the high watermarks failed", exc_info=True)
        for partition in self._partitions.values():
            partition.stop()
        fetchers, self._fetchers = list(self._fetchers.values()), {}
        await asyncio.gather(*(fetcher.stop() for fetcher in fetchers), *self._stopping)

    # --- the front door ------------------------------------------------------------------

    def partition(self, topic: str, index: int) -> Partition | None:
        """The replica of that partition hosted here, if any."""
        return self._partitions.get((topic, index))

    def leader_partition(self, topic: str, index: int, current_leader_epoch: int = -1) -> Partition:
        """The partition's replica here, if this broker leads it in the epoch the client
        believes in (-1: it does not say); else the ApiError that sends the client to
        refresh its metadata, in Kafka's order of checks."""
        if self.quorum.state.partition(topic, index) is None:
            raise ApiError(
                ErrorCode.unknown_topic_or_partition,
                f"This server does not host this topic-partition: {topic}-{index}",
            )
        partition = self._partitions.get((topic, index))
        if partition is None:
            raise ApiError(
                ErrorCode.not_leader_or_follower,
                f"This server is not the leader for {topic}-{index}",
            )
        epoch = partition.state.leader_epoch
        if current_leader_epoch >= 0 and current_leader_epoch != epoch:
            if current_leader_epoch > epoch:
                raise ApiError(
                    ErrorCode.unknown_leader_epoch,
                    f"Leader epoch {current_leader_epoch} of {topic}-{index} is newer than {epoch}",
                )
            raise ApiError(
                ErrorCode.fenced_leader_epoch,
                f"Leader epoch {current_leader_epoch} of {topic}-{index} is older than {epoch}",
            )
        if not partition.is_leader:
            raise ApiError(
                ErrorCode.not_leader_or_follower,
                f"This server is not the leader for {topic}-{index}",
            )
        return partition

    def append_records(
        self,
        entries: Iterable[tuple[TopicPartition, bytes | memoryview | None]],
        *,
        acks: int,
        timeout_s: float,
        transactional_id: str | None = None,
        from_client: bool = True,
    ) -> AppendResult:
        """Append each partition's batches on its leader, now and in the order given (so
        requests on one connection append in order even while earlier ones wait); the
        result's ``committed()`` waits for the in-sync replicas when ``acks`` is -1.

        Batches of idempotent producers are checked against the partition's producer
        state: a retried batch that is already in the log is answered as it was the first
        time (its original base offset), and with ``acks=all`` only once that original is
        committed; a sequence gap is refused with OUT_OF_ORDER_SEQUENCE_NUMBER and a
        fenced producer epoch with INVALID_PRODUCER_EPOCH, nothing appended.
        ``from_client``: counted in the bytes-in and records-in metrics, and refused on
        internal topics with INVALID_TOPIC_EXCEPTION (Kafka's ``internalTopicsAllowed``)."""
        try:
            check_request(acks, transactional_id)
        except ApiError as refused:
            return AppendResult(
                [(key, PartitionAppend(refused.code, refused.message)) for key, _ in entries]
            )
        now_ms = wall_clock_ms()
        result = AppendResult([])
        for key, records in entries:
            try:
                answer = self._append(key, records, acks, now_ms, from_client, result)
            except ApiError as error:
                answer = PartitionAppend(error.code, error.message)
            result.partitions.append((key, answer))
        if result.waiting:
            result.start_timer(timeout_s)
        return result

    def _append(
        self,
        key: TopicPartition,
        records: bytes | memoryview | None,
        acks: int,
        now_ms: int,
        from_client: bool,
        result: AppendResult,
    ) -> PartitionAppend:
        topic, index = key
        if from_client and topic in INTERNAL_TOPICS:
            raise ApiError(
                ErrorCode.invalid_topic_exception, f"Cannot append to internal topic {topic}"
            )
        partition = self.leader_partition(topic, index)
        settings = partition.settings
        data = records if records is not None else b""
        try:
            headers = validate_batches(data)
        except InvalidBatch as invalid:
            raise ApiError(ErrorCode[invalid.error], str(invalid)) from None
        check_batches(data, headers, settings, f"{topic}-{index}")
        if acks == -1:
            partition.check_enough_replicas()
        try:
            appended = partition.append(
                data, headers, now_ms=now_ms, log_append_time=settings.log_append_time
            )
        except OSError as error:
            log.warning(
                "append failed", extra={"partition": f"{topic}-{index}", "error": str(error)}
            )
            raise ApiError(ErrorCode.kafka_storage_error, f"append failed: {error}") from None
        if from_client:
            if appended.record_count:
                metrics.BYTES_IN.labels(topic=topic).inc(len(data))
                metrics.RECORDS_IN.labels(topic=topic).inc(appended.record_count)
            else:  # a retry of a batch already in the log
                metrics.DUPLICATE_BATCHES.labels(topic=topic).inc()
        answer = PartitionAppend(
            base_offset=appended.base_offset,
            log_append_time_ms=appended.log_append_time_ms,
            log_start_offset=partition.log.log_start_offset,
        )
        if acks == -1:
            result.wait_for(answer, partition.wait_for_commit(appended.last_offset + 1))
        return answer

    async def fetch_records(
        self, params: FetchParams, asked: Sequence[PartitionFetch]
    ) -> list[FetchedPartition]:
        """Read the partitions; a fetch that finds fewer than ``min_bytes`` waits, up to
        ``max_wait``, for an append or a move of the high watermark on one of them, then
        reads again. A follower's fetch offsets are its log end offsets: the leader learns
        them first, which moves the high watermark and the ISR; and a follower counts as
        caught up only while it keeps asking within replica.lag.time.max.ms, so its fetch
        is never held for more than half of that. Nor is it held while the follower's log
        start offset is below the leader's: DeleteRecords waits for it to follow."""
        max_wait = params.max_wait_s
        if params.from_follower:
            self._record_follower_positions(params.replica_id, asked)
            max_wait = min(max_wait, self.config.replica_lag_time_max_ms / 2000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            results, total_bytes, failed = self._read(params, asked)
            remaining = deadline - loop.time()
            if (
                total_bytes >= params.min_bytes
                or failed
                or remaining <= 0
                or (params.from_follower and _log_start_moved(asked, results))
            ):
                return results
            await self.appends.wait(
                ((r.topic, r.partition) for r in results),
                remaining,
                follower=params.from_follower,
            )

    def _record_follower_positions(self, replica_id: int, asked: Sequence[PartitionFetch]) -> None:
        for fetch in asked:
            partition = self._partitions.get((fetch.topic, fetch.partition))
            if partition is not None and partition.is_leader:
                partition.follower_fetched(replica_id, fetch.fetch_offset, fetch.log_start_offset)

    def _read(
        self, params: FetchParams, asked: Sequence[PartitionFetch]
    ) -> tuple[list[FetchedPartition], int, bool]:
        """One pass over the requested partitions: results, bytes found, whether any failed."""
        results: list[FetchedPartition] = []
        total_bytes = 0
        failed = False
        for fetch in asked:
            try:
                partition = self.leader_partition(
                    fetch.topic, fetch.partition, fetch.current_leader_epoch
                )
            except ApiError as error:
                result = FetchedPartition(fetch.topic, fetch.partition, error.code)
            else:
                result = read_partition(
                    partition,
                    fetch,
                    params,
                    params.max_bytes - total_bytes,
                    self.throttle,
                    first=total_bytes == 0,
                )
            total_bytes += len(result.records)
            failed = failed or result.error_code != ErrorCode.none
            results.append(result)
        return results, total_bytes, failed

    def delete_records(
        self, offsets: Iterable[tuple[TopicPartition, int]], *, timeout_s: float
    ) -> RecordDeletions:
        """Delete the records below each offset (-1: the high watermark) on the partition's
        leader, now and in the order given, by moving its log start offset (Kafka's
        ``ReplicaManager.deleteRecords``); the result's ``replicated()`` waits, at most
        ``timeout_s``, until the followers in the ISR have moved theirs too.

        Refused per partition: UNKNOWN_TOPIC_OR_PARTITION, INVALID_TOPIC_EXCEPTION on an
        internal topic, NOT_LEADER_OR_FOLLOWER, POLICY_VIOLATION (cleanup.policy without
        ``delete``), OFFSET_OUT_OF_RANGE (above the high watermark), KAFKA_STORAGE_ERROR."""
        result = RecordDeletions(timeout_s)
        for key, offset in offsets:
            answer = PartitionDeletion()
            try:
                partition, required = self._delete_records(key, offset)
            except ApiError as error:
                answer.error_code = error.code
            else:
                answer.low_watermark = partition.low_watermark
                if answer.low_watermark < required:
                    result.wait_for(answer, partition, required)
            result.partitions.append((key, answer))
        return result

    def _delete_records(self, key: TopicPartition, offset: int) -> tuple[Partition, int]:
        topic, index = key
        if self.quorum.state.partition(topic, index) is not None and topic in INTERNAL_TOPICS:
            raise ApiError(
                ErrorCode.invalid_topic_exception,
                f"Cannot delete records of internal topic {topic}",
            )
        partition = self.leader_partition(topic, index)
        try:
            return partition, partition.delete_records(offset)
        except OSError as error:
            log.warning(
                "deleting records failed",
                extra={"partition": f"{topic}-{index}", "error": str(error)},
            )
            raise ApiError(
                ErrorCode.kafka_storage_error, f"deleting records failed: {error}"
            ) from None

    # --- metadata ------------------------------------------------------------------------

    def on_metadata_change(self) -> None:
        """Reconcile the replicas with the metadata; runs on the event loop, never waits."""
        if not self._started:
            return
        state = self.quorum.state
        self._replace_moved_fetchers()
        assigned: set[tuple[str, int]] = set()
        for topic in state.topics.values():
            for index, partition_state in enumerate(topic.partitions):
                if self.node_id not in partition_state.replicas:
                    continue
                key = (topic.name, index)
                partition = self._partitions.get(key)
                if partition is not None and partition.topic_id != topic.topic_id:
                    self._remove(partition)  # the topic was deleted and made again
                    partition = None
                assigned.add(key)
                try:
                    if partition is None:
                        partition = self._host(topic, index)
                    partition.update(partition_state, topic.configs)
                    self._route(partition)
                except Exception:
                    # One replica's trouble (a disk error) must not hold up the others.
                    log.exception("%s-%d: taking up the replica's role failed", *key)
        for key, partition in list(self._partitions.items()):
            if key not in assigned:
                self._remove(partition)
        for leader_id, fetcher in list(self._fetchers.items()):
            if fetcher.partitions:
                fetcher.wake()
            else:
                self._retire(leader_id)

    def _log_config_for(self, topic_name: str, index: int) -> LogConfig | None:
        topic = self.quorum.state.topics.get(topic_name)
        if topic is None or not 0 <= index < len(topic.partitions):
            return None
        if self.node_id not in topic.partitions[index].replicas:
            return None
        return resolve(topic.configs, self.config).log

    def _host(self, topic: TopicState, index: int) -> Partition:
        log_ = self.logs.create(
            topic.name, index, resolve(topic.configs, self.config).log, topic.topic_id
        )
        partition = Partition(
            self.node_id,
            topic.name,
            index,
            log_,
            topic_id=topic.topic_id,
            high_watermark=self._checkpointed.get((topic.name, index), 0),
            config=self.config,
            submit=self.quorum.submit,
            notify=self.appends.notify,
            clock=self._clock,
        )
        self._partitions[(topic.name, index)] = partition
        return partition

    def _remove(self, partition: Partition) -> None:
        """The replica is no longer assigned here: stop it and delete its log."""
        partition.stop()
        for fetcher in self._fetchers.values():
            fetcher.remove(partition)
        del self._partitions[(partition.topic, partition.index)]
        self.logs.delete(partition.topic, partition.index)
        log.info("%s-%d: replica removed from this broker", partition.topic, partition.index)

    def _route(self, partition: Partition) -> None:
        """Put a follower in the fetcher of its leader, and nothing else in any fetcher."""
        leader_id = partition.leader_id if partition.role is Role.FOLLOWER else None
        target = None if leader_id is None else self._fetcher_for(leader_id)
        key = (partition.topic, partition.index)
        if target is not None and target.partitions.get(key) is partition:
            return
        for fetcher in self._fetchers.values():
            fetcher.remove(partition)
        if target is not None:
            target.add(partition)

    def _fetcher_for(self, leader_id: int) -> ReplicaFetcher | None:
        fetcher = self._fetchers.get(leader_id)
        if fetcher is None:
            broker = self.quorum.state.brokers.get(leader_id)
            if broker is None:
                return None  # not registered (yet): the partition waits for metadata
            fetcher = ReplicaFetcher(
                self.node_id,
                leader_id,
                broker.internal_address,
                connect=self._connect,
                clock=self._clock,
            )
            fetcher.start()
            self._fetchers[leader_id] = fetcher
        return fetcher

    def _replace_moved_fetchers(self) -> None:
        """A leader broker that registered again elsewhere gets a new fetcher."""
        brokers = self.quorum.state.brokers
        for leader_id, fetcher in list(self._fetchers.items()):
            broker = brokers.get(leader_id)
            if broker is None or broker.internal_address != fetcher.address:
                for partition in list(fetcher.partitions.values()):
                    fetcher.remove(partition)
                self._retire(leader_id)

    def _retire(self, leader_id: int) -> None:
        fetcher = self._fetchers.pop(leader_id)
        task = asyncio.get_running_loop().create_task(fetcher.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # --- periodic ISR check and metrics --------------------------------------------------

    async def _check_isrs(self) -> None:
        interval = min(
            max(self.config.replica_lag_time_max_ms / 4000, _MIN_ISR_CHECK_S), _MAX_ISR_CHECK_S
        )
        while True:
            await asyncio.sleep(interval)
            for partition in list(self._partitions.values()):
                try:
                    partition.shrink_isr_if_lagging()
                except Exception:
                    log.exception("%s-%d: ISR check failed", partition.topic, partition.index)

    async def _checkpoint_high_watermarks(self) -> None:
        while True:
            await asyncio.sleep(HIGH_WATERMARK_CHECKPOINT_S)
            marks = self._high_watermarks()
            if marks == self._saved:
                continue
            try:
                await asyncio.to_thread(write_high_watermarks, self.logs.data_dir, marks)
            except OSError:
                log.warning("saving the high watermarks failed", exc_info=True)
            else:
                self._saved = marks

    def _high_watermarks(self) -> dict[tuple[str, int], int]:
        return {key: partition.log.high_watermark for key, partition in self._partitions.items()}

    def _led_partition_sizes(self) -> Iterator[tuple[int, int, int]]:
        for partition in list(self._partitions.values()):
            if partition.is_leader:
                state = partition.state
                replicas = len(state.replicas) - len(state.adding)
                yield len(state.isr), replicas, partition.settings.min_insync_replicas


def _log_start_moved(asked: Sequence[PartitionFetch], results: Sequence[FetchedPartition]) -> bool:
    """A follower reported a log start offset below its leader's (moved by DeleteRecords).
    One answer settles it: the follower takes the leader's log start offset, as far as
    its own high watermark, which is past it (its fetch offset is not out of range)."""
    return any(
        0 <= fetch.log_start_offset < result.log_start_offset
        for fetch, result in zip(asked, results, strict=True)
    )
