"""A replica fetcher: follows every partition this broker replicates from one leader broker.

One task and one connection per leader broker, to its internal listener (authenticated
with the cluster secret: the client listener refuses follower fetches). Each round it
first truncates the partitions that just started following (or found their log ahead
of the leader's):
OffsetForLeaderEpoch tells where this replica's latest leader epoch ends in the
leader's log, and everything from there on is cut. Then one Fetch (v12, with this
broker's id as ``replica_id``) asks for all the other partitions from their log end
offsets; the leader answers with whole batches up to its log end offset, or after
``max_wait`` if nothing came. Fetched batches are appended as they are, offsets
included; the leader's high watermark and log start offset follow.

Errors that metadata will resolve (another leader, another epoch) pause the partition
until the next metadata change, or briefly when the leader is only a little behind
this broker's view; a lost connection pauses everything with a growing back-off.

A partition added while a fetch waits on the leader (up to ``max_wait``) would wait
for it, which after a leader change is failover time; the connection is dropped
instead, and the next round, on a new connection, includes the partition at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from kio.schema.errors import ErrorCode

from ..protocol.client import KafkaClient, KafkaConnectionError, KafkaProtocolError
from ..storage.batch import InvalidBatch
from ..storage.log import wall_clock_ms
from .partition import Partition

log = logging.getLogger(__name__)

FETCH = 1
OFFSET_FOR_LEADER_EPOCH = 23
FETCH_VERSION = 12
OFFSET_FOR_LEADER_EPOCH_VERSION = 4

MAX_WAIT_MS = 500
RESPONSE_MAX_BYTES = 32 * 1024 * 1024
PARTITION_MAX_BYTES = 8 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
"""Beyond ``max_wait``: a leader that answers nothing for this long (stopped, cut off)
loses the connection, and the fetcher starts over."""
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0
SHORT_PAUSE_S = 0.1
"""The leader has not applied the metadata this broker has: ask again soon."""
LONG_PAUSE_S = 1.0
"""This broker's metadata is behind, or something else is wrong: wait for new
metadata (which ends the pause at once), or ask again after this long."""


class LeaderClient(Protocol):
    """What a fetcher needs of its connection to the leader (a KafkaClient)."""

    async def request(
        self, api_key: int, api_version: int, body: Mapping[str, Any], *, timeout: float | None
    ) -> Any: ...

    def disconnect(self, reason: str) -> None: ...

    async def close(self) -> None: ...


ClientFactory = Callable[[str, int, str], LeaderClient]
"""Makes the connection to a leader from its host, port and a client id."""

_SHORT_PAUSE_ERRORS = frozenset(
    {
        ErrorCode.unknown_leader_epoch,
        ErrorCode.not_leader_or_follower,
        ErrorCode.unknown_topic_or_partition,
    }
)


class ReplicaFetcher:
    def __init__(
        self,
        node_id: int,
        leader_id: int,
        address: tuple[str, int],
        *,
        connect: ClientFactory = KafkaClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        self.address = address
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._client = connect(*address, f"brook-replica-fetcher-{node_id}")
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fetching: set[tuple[str, int]] = set()
        """The partitions of the fetch in flight (empty when none is)."""
        self._interrupted = False

    def add(self, partition: Partition) -> None:
        key = (partition.topic, partition.index)
        self.partitions[key] = partition
        self._wakeup.set()
        if self._fetching and key not in self._fetching and not self._interrupted:
            self._interrupted = True
            self._client.disconnect("a partition to follow was added")

    def remove(self, partition: Partition) -> None:
        key = (partition.topic, partition.index)
        if self.partitions.get(key) is partition:
            del self.partitions[key]

    def wake(self) -> None:
        """Pauses may have ended (new metadata): look at every partition again."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"replica fetcher for broker {self.leader_id}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._client.close()

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        failing = False
        while True:
            try:
                worked = await self._round()
            except (KafkaConnectionError, KafkaProtocolError, TimeoutError) as error:
                if self._interrupted:
                    self._interrupted = False
                    continue
                if not failing:
                    log.warning(
                        "fetching from broker %d at %s:%d failed: %s",
                        self.leader_id,
                        *self.address,
                        str(error) or "timed out",
                    )
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except Exception:
                log.exception("replica fetcher for broker %d failed", self.leader_id)
                await asyncio.sleep(MAX_BACKOFF_S)
                continue
            if failing:
                log.info("fetching from broker %d again", self.leader_id)
            failing = False
            backoff = MIN_BACKOFF_S
            if not worked:
                await self._idle()

    async def _round(self) -> bool:
        """Truncate where needed, then fetch; False if no partition could do either."""
        self._wakeup.clear()
        self._interrupted = False
        now = self._clock()
        ready = [p for p in self.partitions.values() if p.paused_until <= now]
        truncating = [p for p in ready if p.needs_truncation]
        if truncating:
            await self._truncate(truncating)
        now = self._clock()
        fetching = [
            p for p in self.partitions.values() if p.paused_until <= now and not p.needs_truncation
        ]
        if fetching:
            await self._fetch(fetching)
        return bool(truncating or fetching)

    async def _idle(self) -> None:
        """Wait for a new partition, new metadata or the end of the first pause."""
        now = self._clock()
        pauses = [p.paused_until - now for p in self.partitions.values() if p.paused_until > now]
        try:
            async with asyncio.timeout(min(pauses) if pauses else None):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    # --- truncation ----------------------------------------------------------------------

    async def _truncate(self, partitions: list[Partition]) -> None:
        asking = []
        for partition in partitions:
            log_ = partition.log
            if log_.leader_epochs.latest_epoch >= 0:
                asking.append(partition)
                continue
            # No epoch recorded: nothing can be matched with the leader's log, so
            # whatever is here goes and the log is fetched again.
            if log_.log_end_offset > log_.log_start_offset:
                partition.truncate_to(log_.log_start_offset)
            partition.needs_truncation = False
        if not asking:
            return
        generations = {(p.topic, p.index): p.follow_generation for p in asking}
        response = await self._client.request(
            OFFSET_FOR_LEADER_EPOCH,
            OFFSET_FOR_LEADER_EPOCH_VERSION,
            {
                "replica_id": self.node_id,
                "topics": [
                    {
                        "topic": topic,
                        "partitions": [
                            {
                                "partition": p.index,
                                "current_leader_epoch": p.leader_epoch,
                                "leader_epoch": p.log.leader_epochs.latest_epoch,
                            }
                            for p in members
                        ],
                    }
                    for topic, members in _by_topic(asking).items()
                ],
            },
            timeout=REQUEST_TIMEOUT_S,
        )
        for topic in response.topics:
            for answer in topic.partitions:
                answered = self._current(topic.topic, answer.partition, generations)
                if answered is None:
                    continue
                if answer.error_code != ErrorCode.none:
                    self._pause(answered, answer.error_code, "OffsetForLeaderEpoch")
                    continue
                truncate_to_leader(answered, answer.leader_epoch, answer.end_offset)

    # --- fetching ------------------------------------------------------------------------

    async def _fetch(self, partitions: list[Partition]) -> None:
        generations = {(p.topic, p.index): p.follow_generation for p in partitions}
        self._fetching = set(generations)
        try:
            response = await self._fetch_request(partitions)
        finally:
            self._fetching = set()
        if response.error_code != ErrorCode.none:
            for partition in partitions:
                self._pause(partition, response.error_code, "Fetch")
            return
        for topic in response.responses:
            for answer in topic.partitions:
                answered = self._current(topic.topic, answer.partition_index, generations)
                if answered is not None:
                    self._fetched(answered, answer)

    async def _fetch_request(self, partitions: list[Partition]) -> Any:
        return await self._client.request(
            FETCH,
            FETCH_VERSION,
            {
                "replica_id": self.node_id,
                "max_wait": MAX_WAIT_MS,
                "min_bytes": 1,
                "max_bytes": RESPONSE_MAX_BYTES,
                "session_epoch": -1,
                "topics": [
                    {
                        "topic": topic,
                        "partitions": [
                            {
                                "partition": p.index,
                                "current_leader_epoch": p.leader_epoch,
                                "fetch_offset": p.log.log_end_offset,
                                "log_start_offset": p.log.log_start_offset,
                                "partition_max_bytes": PARTITION_MAX_BYTES,
                            }
                            for p in members
                        ],
                    }
                    for topic, members in _by_topic(partitions).items()
                ],
            },
            timeout=MAX_WAIT_MS / 1000 + REQUEST_TIMEOUT_S,
        )

    def _fetched(self, partition: Partition, answer: Any) -> None:
        code = answer.error_code
        log_ = partition.log
        if code == ErrorCode.offset_out_of_range:
            if log_.log_end_offset < answer.log_start_offset:
                log.info(
                    "%s-%d: behind the leader's log start offset %d",
                    partition.topic,
                    partition.index,
                    answer.log_start_offset,
                )
                partition.restart_at(answer.log_start_offset)
            else:
                partition.needs_truncation = True  # ahead of the leader
            return
        if code != ErrorCode.none:
            self._pause(partition, code, "Fetch")
            return
        if answer.records:
            try:
                partition.append_as_follower(answer.records, now_ms=wall_clock_ms())
            except InvalidBatch as error:
                log.warning("%s; truncating again", error)
                partition.needs_truncation = True
                return
            except OSError as error:
                log.warning("%s-%d: append failed: %s", partition.topic, partition.index, error)
                partition.paused_until = self._clock() + LONG_PAUSE_S
                return
        partition.follower_appended(answer.high_watermark, answer.log_start_offset)

    # --- helpers -------------------------------------------------------------------------

    def _current(
        self, topic: str, index: int, generations: dict[tuple[str, int], int]
    ) -> Partition | None:
        """The partition an answer is for, unless it changed since the request was sent."""
        key = (topic, index)
        partition = self.partitions.get(key)
        if partition is None or generations.get(key) != partition.follow_generation:
            return None
        return partition

    def _pause(self, partition: Partition, code: ErrorCode, api: str) -> None:
        pause = SHORT_PAUSE_S if code in _SHORT_PAUSE_ERRORS else LONG_PAUSE_S
        partition.paused_until = self._clock() + pause
        log.debug(
            "%s-%d: %s from broker %d answered %s; pausing %.1f s",
            partition.topic,
            partition.index,
            api,
            self.leader_id,
            code.name,
            pause,
        )


def truncate_to_leader(partition: Partition, leader_epoch: int, end_offset: int) -> None:
    """Cut the log where it leaves the leader's, as OffsetForLeaderEpoch answered for this
    log's latest epoch: ``leader_epoch`` is the largest epoch the leader has at or below
    it, ``end_offset`` where that epoch ends in the leader's log."""
    log_ = partition.log
    epochs = log_.leader_epochs
    if end_offset < 0:
        # The leader knows no epoch this log has: start again from its log start.
        partition.truncate_to(log_.log_start_offset)
        partition.needs_truncation = False
        return
    if leader_epoch == epochs.latest_epoch:
        partition.truncate_to(min(end_offset, log_.log_end_offset))
        partition.needs_truncation = False
        return
    own_epoch, own_end = epochs.end_offset_for(leader_epoch, log_.log_end_offset)
    if own_end < 0:
        partition.truncate_to(log_.log_start_offset)
        partition.needs_truncation = False
    elif own_epoch == leader_epoch:
        partition.truncate_to(min(own_end, end_offset))
        partition.needs_truncation = False
    else:
        # This log does not have the leader's epoch: cut back to the end of the epochs it
        # has below it and ask again for the one that is then the latest.
        partition.truncate_to(min(own_end, log_.log_end_offset))


def _by_topic(partitions: Iterable[Partition]) -> dict[str, list[Partition]]:
    topics: dict[str, list[Partition]] = {}
    for partition in partitions:
        topics.setdefault(partition.topic, []).append(partition)
    return topics
