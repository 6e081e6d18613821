"""The replica manager: makes this broker's replicas what the cluster metadata says.

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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .. import metrics
from ..config import BrokerConfig
from ..metadata.model import TopicState
from ..metadata.topic_config import resolve
from ..protocol.client import KafkaClient
from ..storage.checkpoint import read_high_watermarks, write_high_watermarks
from ..storage.log import LogConfig
from ..storage.manager import LogManager
from .fetcher import ClientFactory, ReplicaFetcher
from .partition import Partition, Role
from .throttle import TokenBucket

if TYPE_CHECKING:
    from ..api.context import AppendNotifier
    from ..metadata.quorum import MetadataQuorum

log = logging.getLogger(__name__)

_MIN_ISR_CHECK_S = 0.01
_MAX_ISR_CHECK_S = 1.0
HIGH_WATERMARK_CHECKPOINT_S = 5.0
"""How often high watermarks are saved (Kafka: replica.high.watermark.checkpoint.interval.ms)."""


class ReplicaManager:
    def __init__(
        self,
        node_id: int,
        config: BrokerConfig,
        logs: LogManager,
        quorum: MetadataQuorum,
        appends: AppendNotifier,
        *,
        connect: ClientFactory = KafkaClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.logs = logs
        self.quorum = quorum
        self.appends = appends
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

    # --- reads ---------------------------------------------------------------------------

    def partition(self, topic: str, index: int) -> Partition | None:
        """The replica of that partition hosted here, if any."""
        return self._partitions.get((topic, index))

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
