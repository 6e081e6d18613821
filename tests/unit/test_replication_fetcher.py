"""The replica fetcher against a scripted leader: truncation by leader epochs (one or more
rounds), a log ahead of or behind the leader's, errors that pause a partition, and a
partition added while a fetch waits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from brook_broker.config import BrokerConfig
from brook_broker.metadata.model import PartitionState
from brook_broker.protocol.client import KafkaConnectionError
from brook_broker.replication.fetcher import (
    FETCH,
    LONG_PAUSE_S,
    OFFSET_FOR_LEADER_EPOCH,
    SHORT_PAUSE_S,
    ReplicaFetcher,
    truncate_to_leader,
)
from brook_broker.replication.partition import Partition
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.log import LogConfig, PartitionLog
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS, make_batch
from tests.support.entities import build

LEADER = 1


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def follower(
    tmp_path: Path, name: str = "orders", epochs: tuple[tuple[int, int], ...] = ()
) -> Partition:
    """A replica following broker 1 in epoch 9, with a batch of two records per epoch
    start given as (epoch, batches)."""
    log = PartitionLog.open(tmp_path / f"{name}-0", name, 0, LogConfig())
    for epoch, batches in epochs:
        for _ in range(batches):
            batch = make_batch([b"x", b"y"])
            log.append(batch, validate_batches(batch), now_ms=BASE_TIME_MS, leader_epoch=epoch)
    partition = Partition(
        2,
        name,
        0,
        log,
        topic_id=uuid.uuid4(),
        config=BrokerConfig(),
        submit=_no_submit,
        notify=lambda topic, index, appended: None,
        clock=Clock(),
    )
    partition.update(
        PartitionState(
            replicas=(1, 2), isr=(1, 2), leader=LEADER, leader_epoch=9, partition_epoch=1
        ),
        {},
    )
    return partition


async def _no_submit(*args: Any) -> Any:
    raise AssertionError("a follower proposes nothing")


def test_truncation_when_the_leader_has_the_same_latest_epoch(tmp_path: Path) -> None:
    partition = follower(tmp_path, epochs=((1, 5), (3, 5), (5, 5)))  # epochs at 0, 10, 20
    assert partition.log.leader_epochs.entries == [(1, 0), (3, 10), (5, 20)]
    truncate_to_leader(partition, 5, 26)
    assert partition.log.log_end_offset == 26
    assert not partition.needs_truncation
    truncate_to_leader(partition, 5, 99)  # the leader has more: nothing to cut
    assert partition.log.log_end_offset == 26


def test_truncation_over_several_rounds_when_the_leader_took_another_path(
    tmp_path: Path,
) -> None:
    partition = follower(tmp_path, epochs=((1, 5), (3, 5), (5, 5)))
    truncate_to_leader(partition, 4, 25)  # the leader never saw epoch 5, but has an epoch 4
    assert partition.log.log_end_offset == 20  # the end of epoch 3 here
    assert partition.needs_truncation  # ask again, now for epoch 3
    truncate_to_leader(partition, 3, 16)
    assert partition.log.log_end_offset == 16
    assert not partition.needs_truncation
    assert partition.log.leader_epochs.entries == [(1, 0), (3, 10)]


def test_truncation_to_an_epoch_below_everything_here_or_none_at_all(tmp_path: Path) -> None:
    partition = follower(tmp_path, epochs=((3, 5),))
    # The leader's epoch 2 ended at 4, but everything here was written in epoch 3 from 0
    # on: the logs part at 0.
    truncate_to_leader(partition, 2, 4)
    assert partition.log.log_end_offset == 0
    assert not partition.needs_truncation
    other = follower(tmp_path, "payments", epochs=((3, 5),))
    truncate_to_leader(other, -1, -1)  # the leader knows no epoch of ours
    assert other.log.log_end_offset == 0


class ScriptedLeader:
    """Answers each request with the next scripted body (or exception), recording them."""

    def __init__(self, answers: list[tuple[int, Mapping[str, Any] | Exception]]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, Mapping[str, Any]]] = []
        self.exhausted = asyncio.Event()
        self.disconnects = 0
        self._waiting: asyncio.Future[None] | None = None

    async def request(
        self, api_key: int, api_version: int, body: Mapping[str, Any], *, timeout: float | None
    ) -> Any:
        self.requests.append((api_key, body))
        if not self.answers:
            self.exhausted.set()
            self._waiting = asyncio.get_running_loop().create_future()
            await self._waiting  # a long poll that only a disconnect ends
            raise KafkaConnectionError("disconnected")
        expected_key, answer = self.answers.pop(0)
        assert api_key == expected_key
        await asyncio.sleep(0)
        if isinstance(answer, Exception):
            raise answer
        return build(load_response_schema(api_key, api_version), answer)

    def disconnect(self, reason: str) -> None:
        self.disconnects += 1
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def close(self) -> None:
        self.disconnect("closed")


def fetch_answer(partition: int, **fields: Any) -> dict[str, Any]:
    return {
        "responses": [{"topic": "orders", "partitions": [{"partition_index": partition, **fields}]}]
    }


def epoch_answer(**fields: Any) -> dict[str, Any]:
    return {"topics": [{"topic": "orders", "partitions": [{"partition": 0, **fields}]}]}


async def run_until_exhausted(fetcher: ReplicaFetcher, leader: ScriptedLeader) -> None:
    fetcher.start()
    try:
        async with asyncio.timeout(5):
            await leader.exhausted.wait()
    finally:
        await fetcher.stop()


async def test_a_log_ahead_of_the_leader_is_truncated_again(tmp_path: Path) -> None:
    partition = follower(tmp_path, epochs=((0, 5),))
    leader_batch = make_batch([b"leader"])
    leader = ScriptedLeader(
        [
            (OFFSET_FOR_LEADER_EPOCH, epoch_answer(leader_epoch=0, end_offset=10)),
            (FETCH, fetch_answer(0, error_code=ErrorCode.offset_out_of_range, log_start_offset=0)),
            (OFFSET_FOR_LEADER_EPOCH, epoch_answer(leader_epoch=0, end_offset=6)),
            (
                FETCH,
                fetch_answer(0, high_watermark=7, log_start_offset=0, records=_at(6, leader_batch)),
            ),
        ]
    )
    fetcher = ReplicaFetcher(2, LEADER, ("leader", 1), connect=lambda *_: leader)
    fetcher.add(partition)
    await run_until_exhausted(fetcher, leader)
    assert [key for key, _ in leader.requests] == [23, 1, 23, 1, 1]
    first_fetch = leader.requests[1][1]["topics"][0]["partitions"][0]
    assert (first_fetch["fetch_offset"], first_fetch["current_leader_epoch"]) == (10, 9)
    assert leader.requests[3][1]["topics"][0]["partitions"][0]["fetch_offset"] == 6
    assert partition.log.log_end_offset == 7
    assert partition.log.high_watermark == 7


async def test_errors_pause_the_partition_and_connection_errors_back_off(
    tmp_path: Path,
) -> None:
    partition = follower(tmp_path)
    leader = ScriptedLeader(
        [
            (FETCH, KafkaConnectionError("refused")),
            (FETCH, fetch_answer(0, error_code=ErrorCode.unknown_leader_epoch)),
        ]
    )
    clock = Clock()
    fetcher = ReplicaFetcher(2, LEADER, ("leader", 1), connect=lambda *_: leader, clock=clock)
    fetcher.add(partition)
    partition.needs_truncation = False
    fetcher.start()
    try:
        async with asyncio.timeout(5):
            while leader.answers:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        assert partition.paused_until == pytest.approx(clock.now + SHORT_PAUSE_S)
        assert len(leader.requests) == 2  # paused: nothing else is asked
        partition.paused_until = 0
        leader.answers.append((FETCH, fetch_answer(0, error_code=ErrorCode.fenced_leader_epoch)))
        fetcher.wake()
        async with asyncio.timeout(5):
            while leader.answers:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        assert partition.paused_until == pytest.approx(clock.now + LONG_PAUSE_S)
    finally:
        await fetcher.stop()


async def test_a_partition_added_during_a_long_poll_is_fetched_at_once(tmp_path: Path) -> None:
    first = follower(tmp_path, "orders")
    first.needs_truncation = False
    leader = ScriptedLeader([])
    fetcher = ReplicaFetcher(2, LEADER, ("leader", 1), connect=lambda *_: leader)
    fetcher.add(first)
    fetcher.start()
    try:
        async with asyncio.timeout(5):
            await leader.exhausted.wait()  # the fetch of "orders" waits on the leader
            leader.exhausted.clear()
            second = follower(tmp_path, "payments")
            second.needs_truncation = False
            fetcher.add(second)
            await leader.exhausted.wait()
        assert leader.disconnects == 1
        topics = {topic["topic"] for topic in leader.requests[-1][1]["topics"]}
        assert topics == {"orders", "payments"}
    finally:
        await fetcher.stop()


def _at(offset: int, batch: bytes) -> bytes:
    """``batch`` with its base offset set, as the leader's log holds it."""
    return offset.to_bytes(8, "big", signed=True) + batch[8:]
