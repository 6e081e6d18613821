"""Three brokers in one process, replicating through their real request handlers.

Each broker has its own logs, ReplicaManager, ApiContext and Dispatcher; they share one
ClusterState (as if Raft had applied every change everywhere at once), and their replica
fetchers reach each other through a loopback client that encodes each request, hands it
to the other broker's dispatcher and decodes the answer, so every byte goes through the
same codec as on the wire, with no sockets. A "network" between two brokers can be cut.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from brook_broker.api.api_versions import SUPPORTED_VERSIONS
from brook_broker.api.context import ApiContext
from brook_broker.api.dispatcher import Dispatcher
from brook_broker.config import BrokerConfig
from brook_broker.groups.coordinator import GroupCoordinator
from brook_broker.metadata.cluster_state import ClusterState
from brook_broker.metadata.commands import (
    AlterReassignment,
    Command,
    CreateTopic,
    DeleteTopic,
    FenceBroker,
    RegisterBroker,
    UnfenceBroker,
)
from brook_broker.protocol import codec
from brook_broker.protocol.client import KafkaConnectionError, decode_response, encode_request
from brook_broker.replication import ReplicaManager, Role
from brook_broker.storage.batch import iter_headers
from brook_broker.storage.log import PartitionLog
from brook_broker.storage.manager import LogManager
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.support.batches import make_batch
from tests.support.dispatch import answer_of
from tests.support.entities import build

PORT_BASE = 9000
LAG_MS = 400
TOPIC = "orders"
Result = TypeVar("Result")


class SharedMetadata:
    """One ClusterState for every broker; each change is seen by all at once."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.listeners: list[Callable[[], None]] = []

    async def submit(self, command: Command[Result], *, timeout: float = 10.0) -> Result:
        try:
            return self.state.apply(command)
        finally:
            for listener in list(self.listeners):
                listener()


class MemberQuorum:
    """A broker's view of the shared metadata, with MetadataQuorum's reads and submit."""

    def __init__(self, node_id: int, metadata: SharedMetadata) -> None:
        self.node_id = node_id
        self._metadata = metadata
        self.active_controller_id = 0
        self.is_active_controller = node_id == 0

    @property
    def state(self) -> ClusterState:
        return self._metadata.state

    async def submit(self, command: Command[Result], *, timeout: float = 10.0) -> Result:
        return await self._metadata.submit(command, timeout=timeout)


class LoopbackClient:
    """KafkaClient's interface, delivering to another broker's dispatcher in-process."""

    def __init__(self, cluster: Cluster, source: int, target: int) -> None:
        self._cluster = cluster
        self._source = source
        self._target = target
        self._dropped: set[asyncio.Future[None]] = set()
        self._ids = itertools.count(1)

    async def request(
        self, api_key: int, api_version: int, body: Mapping[str, Any], *, timeout: float | None
    ) -> Any:
        if not self._cluster.reachable(self._source, self._target):
            await asyncio.sleep(0.01)
            raise KafkaConnectionError(f"broker {self._target} cannot be reached")
        frame = encode_request(api_key, api_version, next(self._ids), "loopback", body)
        request = codec.decode_request(memoryview(frame)[4:], SUPPORTED_VERSIONS)
        handling = asyncio.ensure_future(
            answer_of(self._cluster.dispatchers[self._target], request)
        )
        dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dropped.add(dropped)
        try:
            done, _ = await asyncio.wait(
                {handling, dropped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._dropped.discard(dropped)
            if not handling.done():
                handling.cancel()
        if dropped in done:
            raise KafkaConnectionError("disconnected")
        if not done:
            raise TimeoutError
        if not self._cluster.reachable(self._source, self._target):
            raise KafkaConnectionError(f"broker {self._target} cannot be reached")
        answer = handling.result()
        return decode_response(api_key, api_version, codec.encode_response(request, answer)[4:])

    def disconnect(self, reason: str) -> None:
        for dropped in self._dropped:
            if not dropped.done():
                dropped.set_result(None)

    async def close(self) -> None:
        self.disconnect("closed")


class Cluster:
    def __init__(self, tmp_path: Path, size: int, throttle: int = -1) -> None:
        self.tmp_path = tmp_path
        self.size = size
        self.throttle = throttle
        self.metadata = SharedMetadata()
        self.replicas: dict[int, ReplicaManager] = {}
        self.dispatchers: dict[int, Dispatcher] = {}
        self.cut: set[frozenset[int]] = set()

    async def start(self) -> None:
        for node in range(self.size):
            await self.metadata.submit(RegisterBroker(node, "loopback", PORT_BASE + node, None))
        for node in range(self.size):
            config = BrokerConfig(
                node_id=node,
                data_dir=self.tmp_path / f"broker-{node}",
                replica_lag_time_max_ms=LAG_MS,
                replication_throttle_bytes=self.throttle,
            )
            quorum = MemberQuorum(node, self.metadata)
            logs = LogManager(config.data_dir)
            replicas = ReplicaManager(
                node,
                config,
                logs,
                quorum,  # type: ignore[arg-type]
                connect=lambda host, port, client_id, source=node: LoopbackClient(
                    self, source, port - PORT_BASE
                ),
            )
            await replicas.start()
            self.metadata.listeners.append(replicas.on_metadata_change)
            groups = GroupCoordinator.for_broker(config, quorum, replicas)  # type: ignore[arg-type]
            context = ApiContext(config, quorum, logs, replicas, groups)  # type: ignore[arg-type]
            self.replicas[node] = replicas
            # Followers fetch from the leaders' internal listeners.
            self.dispatchers[node] = Dispatcher(context, internal=True)

    async def stop(self) -> None:
        for replicas in self.replicas.values():
            await replicas.stop()
            replicas.logs.close()

    def reachable(self, source: int, target: int) -> bool:
        return frozenset((source, target)) not in self.cut

    def log(self, node: int, partition: int = 0) -> PartitionLog:
        found = self.replicas[node].partition(TOPIC, partition)
        assert found is not None
        return found.log

    def partition_state(self, partition: int = 0) -> Any:
        return self.metadata.state.topics[TOPIC].partitions[partition]

    async def create_topic(self, partitions: int = 1, **configs: str) -> None:
        await self.metadata.submit(
            CreateTopic(TOPIC, uuid.uuid4(), partitions, 3, dict(configs), None)
        )

    async def call(self, node: int, api_key: int, version: int, body: dict[str, Any]) -> Any:
        request_type = load_request_schema(api_key, version)
        request = codec.Request(api_key, version, 1, "test", build(request_type, body))
        answer = await answer_of(self.dispatchers[node], request)
        frame = codec.encode_response(request, answer)
        return decode_response(api_key, version, frame[4:])

    async def fetch(
        self, node: int, offset: int, *, replica_id: int = -1, current_leader_epoch: int = -1
    ) -> Any:
        response = await self.call(
            node,
            1,
            12,
            {
                "replica_id": replica_id,
                "max_wait": 0,
                "min_bytes": 0,
                "topics": [
                    {
                        "topic": TOPIC,
                        "partitions": [
                            {
                                "partition": 0,
                                "fetch_offset": offset,
                                "current_leader_epoch": current_leader_epoch,
                                "partition_max_bytes": 1 << 20,
                            }
                        ],
                    }
                ],
            },
        )
        return response.responses[0].partitions[0]

    async def list_offset(self, node: int, timestamp: int, *, replica_id: int = -1) -> Any:
        response = await self.call(
            node,
            2,
            7,
            {
                "replica_id": replica_id,
                "topics": [
                    {"name": TOPIC, "partitions": [{"partition_index": 0, "timestamp": timestamp}]}
                ],
            },
        )
        return response.topics[0].partitions[0]

    async def produce(
        self, node: int, values: list[bytes], *, acks: int = -1, partition: int = 0
    ) -> Any:
        response = await self.call(
            node,
            0,
            9,
            {
                "acks": acks,
                "timeout": 5000,
                "topic_data": [
                    {
                        "name": TOPIC,
                        "partition_data": [{"index": partition, "records": make_batch(values)}],
                    }
                ],
            },
        )
        return response.responses[0].partition_responses[0]


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, 3, **getattr(request, "param", {}))
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def everything(log: PartitionLog, upper: int | None = None) -> bytes:
    """The log's batches below ``upper`` (default: its log end offset)."""
    upper = log.log_end_offset if upper is None else upper
    data = b""
    offset = log.log_start_offset
    while chunk := log.read(offset, 1 << 30, upper_offset=upper):
        data += chunk
        offset = list(iter_headers(chunk))[-1][1].next_offset
    return data


async def test_acks_all_is_answered_once_every_isr_member_has_the_batch(cluster: Cluster) -> None:
    await cluster.create_topic(**{"min.insync.replicas": "2"})
    leader = cluster.partition_state().leader
    await eventually(lambda: cluster.replicas[leader].partition(TOPIC, 0) is not None)
    for round_ in range(5):
        answer = await cluster.produce(leader, [b"r%d-%d" % (round_, i) for i in range(10)])
        assert answer.error_code == ErrorCode.none
        assert answer.base_offset == round_ * 10
        for node in range(3):  # committed means: in every ISR member's log
            assert cluster.log(node).log_end_offset >= (round_ + 1) * 10
    assert cluster.log(leader).high_watermark == 50
    await eventually(lambda: all(cluster.log(n).high_watermark == 50 for n in range(3)))
    assert everything(cluster.log(0)) == everything(cluster.log(1)) == everything(cluster.log(2))
    for node in range(3):
        assert cluster.log(node).leader_epochs.entries == [(0, 0)]
    follower = next(n for n in range(3) if n != leader)
    refused = await cluster.produce(follower, [b"x"])
    assert refused.error_code == ErrorCode.not_leader_or_follower


async def test_a_deposed_leaders_divergent_tail_is_truncated(cluster: Cluster) -> None:
    await cluster.create_topic(**{"min.insync.replicas": "2"})
    old = cluster.partition_state().leader
    await eventually(lambda: cluster.replicas[old].partition(TOPIC, 0) is not None)
    assert (await cluster.produce(old, [b"committed"])).error_code == ErrorCode.none
    others = [n for n in range(3) if n != old]
    for node in others:
        cluster.cut.add(frozenset((old, node)))
    for _ in range(3):  # acks=1: only the cut-off leader has these
        assert (await cluster.produce(old, [b"divergent"] * 4, acks=1)).error_code == 0
    divergent_end = cluster.log(old).log_end_offset
    assert divergent_end == 13
    epoch = cluster.metadata.state.brokers[old].epoch
    await cluster.metadata.submit(FenceBroker(old, epoch))  # its session expired
    new = cluster.partition_state().leader
    assert new in others and cluster.partition_state().leader_epoch == 1
    deposed = cluster.replicas[old].partition(TOPIC, 0)
    assert deposed is not None and deposed.role is Role.FOLLOWER  # fenced, it still follows
    assert (await cluster.produce(old, [b"late"], acks=1)).error_code == (
        ErrorCode.not_leader_or_follower
    )
    answer = await cluster.produce(new, [b"new-leader"] * 2)
    assert answer.error_code == ErrorCode.none and answer.base_offset == 1
    cluster.cut.clear()
    await cluster.metadata.submit(UnfenceBroker(old, epoch))
    await eventually(lambda: old in cluster.partition_state().isr)
    high_watermark = cluster.log(new).high_watermark
    assert high_watermark == 3
    expected = everything(cluster.log(new))
    for node in range(3):
        assert everything(cluster.log(node)) == expected
        assert cluster.log(node).leader_epochs.entries == [(0, 0), (1, 1)]


async def test_a_follower_behind_the_leaders_log_start_starts_over_there(
    cluster: Cluster,
) -> None:
    await cluster.create_topic(
        **{"min.insync.replicas": "1", "segment.bytes": "300", "retention.bytes": "600"}
    )
    leader = cluster.partition_state().leader
    await eventually(lambda: cluster.replicas[leader].partition(TOPIC, 0) is not None)
    lagging = next(n for n in range(3) if n != leader)
    cluster.cut.add(frozenset((leader, lagging)))
    for round_ in range(20):
        answer = await cluster.produce(leader, [b"%03d" % round_ * 20])
        assert answer.error_code == ErrorCode.none
    await eventually(lambda: lagging not in cluster.partition_state().isr)
    now_ms = time.time_ns() // 1_000_000
    cluster.log(leader).enforce_retention(now_ms)
    log_start = cluster.log(leader).log_start_offset
    assert log_start > cluster.log(lagging).log_end_offset
    cluster.cut.clear()
    await eventually(lambda: lagging in cluster.partition_state().isr)
    assert cluster.log(lagging).log_start_offset == log_start
    assert everything(cluster.log(lagging)) == everything(cluster.log(leader))


async def test_replicas_follow_reassignment_and_topic_deletion(cluster: Cluster) -> None:
    await cluster.metadata.submit(CreateTopic(TOPIC, uuid.uuid4(), 1, 2, {}, [(0, 1)]))
    await eventually(lambda: cluster.replicas[0].partition(TOPIC, 0) is not None)
    assert cluster.replicas[2].partition(TOPIC, 0) is None
    assert (await cluster.produce(0, [b"a", b"b"])).error_code == ErrorCode.none
    await cluster.metadata.submit(AlterReassignment(TOPIC, 0, [1, 2]))
    await eventually(lambda: cluster.partition_state().replicas == (1, 2), timeout=10)
    await eventually(lambda: cluster.replicas[0].partition(TOPIC, 0) is None)
    assert not (cluster.tmp_path / "broker-0" / f"{TOPIC}-0").exists()
    assert everything(cluster.log(2)) == everything(cluster.log(1))
    await cluster.metadata.submit(DeleteTopic(TOPIC))
    for node in range(3):
        assert cluster.replicas[node].partition(TOPIC, 0) is None
        assert not (cluster.tmp_path / f"broker-{node}" / f"{TOPIC}-0").exists()


async def test_consumers_read_below_the_high_watermark_and_followers_up_to_the_end(
    cluster: Cluster,
) -> None:
    await cluster.create_topic(**{"min.insync.replicas": "1"})
    leader = cluster.partition_state().leader
    await eventually(lambda: cluster.replicas[leader].partition(TOPIC, 0) is not None)
    led = cluster.replicas[leader].partition(TOPIC, 0)
    assert led is not None
    # Both followers have fetched in this epoch; then the leader is cut off from them.
    await eventually(lambda: all(p.log_end_offset == 0 for p in led.followers.values()))
    follower = next(n for n in range(3) if n != leader)
    for node in range(3):
        if node != leader:
            cluster.cut.add(frozenset((leader, node)))
    answer = await cluster.produce(leader, [b"a", b"b", b"c"], acks=1)
    assert answer.error_code == ErrorCode.none
    consumer = await cluster.fetch(leader, 0)
    assert (consumer.error_code, consumer.high_watermark) == (0, 0)
    assert not consumer.records
    assert (await cluster.list_offset(leader, -1)).offset == 0
    assert (await cluster.list_offset(leader, -1, replica_id=follower)).offset == 3
    assert (await cluster.list_offset(leader, -2)).offset == 0
    as_replica = await cluster.fetch(leader, 0, replica_id=follower)
    assert [h.base_offset for _, h in iter_headers(as_replica.records)] == [0]
    epochs = await cluster.call(
        leader,
        23,
        4,
        {
            "replica_id": -1,
            "topics": [{"topic": TOPIC, "partitions": [{"partition": 0, "leader_epoch": 0}]}],
        },
    )
    answer = epochs.topics[0].partitions[0]
    assert (answer.error_code, answer.leader_epoch, answer.end_offset) == (0, 0, 3)
    newer = await cluster.fetch(leader, 0, current_leader_epoch=3)
    assert newer.error_code == ErrorCode.unknown_leader_epoch
    not_leader = await cluster.fetch(follower, 0)
    assert not_leader.error_code == ErrorCode.not_leader_or_follower
    unknown = await cluster.call(
        leader,
        1,
        12,
        {
            "max_wait": 0,
            "min_bytes": 0,
            "topics": [
                {
                    "topic": "nope",
                    "partitions": [{"partition": 0, "fetch_offset": 0, "partition_max_bytes": 100}],
                }
            ],
        },
    )
    assert unknown.responses[0].partitions[0].error_code == ErrorCode.unknown_topic_or_partition
    # The ISR shrinks to the leader alone (min ISR 1): the high watermark catches up.
    await eventually(lambda: cluster.partition_state().isr == (leader,))
    assert (await cluster.fetch(leader, 0)).high_watermark == 3
    # Fenced one by one, the replicas go offline, and the last ISR member's partition has
    # no leader at all.
    for node in [n for n in range(3) if n != leader] + [leader]:
        epoch = cluster.metadata.state.brokers[node].epoch
        await cluster.metadata.submit(FenceBroker(node, epoch))
    stale = await cluster.fetch(leader, 0, current_leader_epoch=0)
    assert stale.error_code == ErrorCode.fenced_leader_epoch
    metadata = await cluster.call(follower, 3, 12, {"topics": [{"name": TOPIC}]})
    assert metadata.brokers == ()
    partition = metadata.topics[0].partitions[0]
    assert partition.error_code == ErrorCode.leader_not_available
    assert partition.leader_id == -1 and partition.leader_epoch == 1
    assert sorted(partition.offline_replicas) == [0, 1, 2]
    assert partition.isr_nodes == (leader,)


@pytest.mark.parametrize("cluster", [{"throttle": 20_000}], indirect=True)
async def test_replicas_being_added_are_throttled(cluster: Cluster) -> None:
    await cluster.metadata.submit(CreateTopic(TOPIC, uuid.uuid4(), 1, 2, {}, [(0, 1)]))
    await eventually(lambda: cluster.replicas[0].partition(TOPIC, 0) is not None)
    for round_ in range(6):
        answer = await cluster.produce(0, [b"%d" % round_ * 2000] * 5)
        assert answer.error_code == ErrorCode.none  # the in-sync follower is not throttled
    size = cluster.log(0).size_bytes
    assert size > 50_000
    started = time.monotonic()
    await cluster.metadata.submit(AlterReassignment(TOPIC, 0, [0, 1, 2]))
    await eventually(lambda: cluster.partition_state().adding == (), timeout=10)
    elapsed = time.monotonic() - started
    # 20 kB saved up, then 20 kB/s, and a batch is sent whole (its overdraft paid off
    # afterwards): the copy of the six batches takes at least (size - 20 kB - one batch)
    # / 20 kB/s.
    one_batch = size / 6
    assert elapsed >= (size - 20_000 - one_batch) / 20_000 * 0.95
    assert everything(cluster.log(2)) == everything(cluster.log(0))
