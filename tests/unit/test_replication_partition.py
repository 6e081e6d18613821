"""Partition as leader and follower, without sockets: the high watermark over the ISR,
acks=all waits, the min ISR rule, ISR shrink and expand proposals (with a fake quorum),
leadership changes, and the replication throttle."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from brook_broker import metrics
from brook_broker.config import BrokerConfig
from brook_broker.metadata.commands import AlterPartition
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.model import PartitionState
from brook_broker.replication.partition import ISR_RETRY_SECONDS, Partition, Role
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.log import LogConfig, PartitionLog
from brook_broker.throttle import TokenBucket
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS, make_batch

LAG_MS = 10_000
TOPIC_ID = uuid.UUID(int=7)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeQuorum:
    """Applies AlterPartition like the controller would, or refuses with ``refusal``."""

    def __init__(self) -> None:
        self.calls: list[AlterPartition] = []
        self.refusal: ApiError | None = None
        self.partition: Partition | None = None

    async def submit(self, command: AlterPartition) -> PartitionState:
        self.calls.append(command)
        await asyncio.sleep(0)
        if self.refusal is not None:
            raise self.refusal
        assert self.partition is not None
        state = self.partition.state
        assert command.partition_epoch == state.partition_epoch
        return replace(
            state, isr=tuple(command.new_isr), partition_epoch=command.partition_epoch + 1
        )


class Harness:
    def __init__(self, tmp_path: Path, node_id: int = 0, min_isr: int = 1) -> None:
        self.clock = Clock()
        self.quorum = FakeQuorum()
        self.notified: list[tuple[str, int]] = []
        self.log = PartitionLog.open(tmp_path / "orders-0", "orders", 0, LogConfig())
        self.partition = Partition(
            node_id,
            "orders",
            0,
            self.log,
            topic_id=TOPIC_ID,
            config=BrokerConfig(replica_lag_time_max_ms=LAG_MS),
            submit=self.quorum.submit,
            notify=lambda topic, index, appended: self.notified.append((topic, index)),
            clock=self.clock,
        )
        self.quorum.partition = self.partition
        self.configs = {"min.insync.replicas": str(min_isr)}

    def set_state(self, **fields: Any) -> PartitionState:
        state = replace(self.partition.state, **fields)
        self.partition.update(state, self.configs)
        return state

    def lead(self, replicas: tuple[int, ...] = (0, 1, 2), epoch: int = 3) -> None:
        self.set_state(
            replicas=replicas,
            isr=replicas,
            leader=self.partition.node_id,
            leader_epoch=epoch,
            partition_epoch=10,
        )

    def produce(self, count: int = 2) -> int:
        """Append one batch of ``count`` records as leader; returns the next offset."""
        batch = make_batch([b"v%d" % i for i in range(count)])
        info = self.partition.append(
            batch, validate_batches(batch), now_ms=BASE_TIME_MS, log_append_time=False
        )
        return info.last_offset + 1

    def seconds(self, seconds: float) -> None:
        self.clock.now += seconds


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_sole_replica_commits_what_it_appends(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead(replicas=(0,))
    assert h.partition.role is Role.LEADER
    assert h.log.leader_epochs.entries == [(3, 0)]
    end = h.produce()
    assert h.log.high_watermark == end == 2
    assert await h.partition.wait_for_commit(end) == ErrorCode.none
    assert ("orders", 0) in h.notified


async def test_the_high_watermark_is_the_lowest_log_end_offset_in_the_isr(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead()
    end = h.produce(3)
    waiter = h.partition.wait_for_commit(end)
    h.partition.follower_fetched(1, end)
    assert h.log.high_watermark == 0  # broker 2 has not fetched in this epoch
    h.partition.follower_fetched(2, 1)
    assert h.log.high_watermark == 1 and not waiter.done()
    h.partition.follower_fetched(2, end)
    assert h.log.high_watermark == end
    assert waiter.result() == ErrorCode.none
    h.partition.follower_fetched(2, 1)  # an old fetch arriving late: never backwards
    assert h.log.high_watermark == end
    h.partition.follower_fetched(1, end + 5)  # beyond the log end: not believed
    assert h.partition.followers[1].log_end_offset == end


async def test_acks_all_is_refused_when_too_few_replicas_are_caught_up(tmp_path: Path) -> None:
    h = Harness(tmp_path, min_isr=2)
    h.lead()
    h.partition.check_enough_replicas()  # a new leader gives its ISR a lag period
    end = h.produce()
    h.seconds(LAG_MS / 1000 + 1)
    with pytest.raises(ApiError) as refused:
        h.partition.check_enough_replicas()
    assert refused.value.code == ErrorCode.not_enough_replicas
    h.partition.follower_fetched(2, end)
    h.partition.check_enough_replicas()  # itself and broker 2


async def test_lagging_followers_leave_the_isr_and_waiters_are_answered(tmp_path: Path) -> None:
    h = Harness(tmp_path, min_isr=2)
    h.lead()
    shrinks = metrics.ISR_SHRINKS._value.get()
    end = h.produce()
    h.partition.follower_fetched(1, end)
    waiter = h.partition.wait_for_commit(end)
    h.seconds(5)
    h.partition.shrink_isr_if_lagging()
    assert h.quorum.calls == []  # not lagging for long enough yet
    h.seconds(LAG_MS / 1000)
    h.partition.follower_fetched(1, end)  # broker 1 keeps up; broker 2 is silent
    h.partition.shrink_isr_if_lagging()
    h.partition.shrink_isr_if_lagging()  # one proposal at a time
    await settle()
    assert h.quorum.calls == [AlterPartition("orders", 0, 0, 3, 10, [0, 1])]
    assert h.partition.state.isr == (0, 1)
    assert metrics.ISR_SHRINKS._value.get() == shrinks + 1
    assert waiter.result() == ErrorCode.none
    # Down to the leader alone: a write reaches the high watermark but is not enough.
    h.seconds(LAG_MS / 1000 + 1)
    end = h.produce()
    waiter = h.partition.wait_for_commit(end)
    h.partition.shrink_isr_if_lagging()
    await settle()
    assert h.partition.state.isr == (0,)
    assert waiter.result() == ErrorCode.not_enough_replicas_after_append


async def test_a_caught_up_follower_rejoins_the_isr(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead()
    h.set_state(isr=(0, 1), partition_epoch=11)
    expands = metrics.ISR_EXPANDS._value.get()
    end = h.produce(4)
    h.partition.follower_fetched(1, end)
    assert h.log.high_watermark == end
    h.produce(1)
    h.partition.follower_fetched(2, end - 1)  # below the high watermark: not yet
    assert h.quorum.calls == []
    h.partition.follower_fetched(2, end)
    await settle()
    assert h.quorum.calls == [AlterPartition("orders", 0, 0, 3, 11, [0, 1, 2])]
    assert h.partition.state.isr == (0, 1, 2)
    assert metrics.ISR_EXPANDS._value.get() == expands + 1


async def test_a_follower_must_reach_the_start_of_the_leaders_epoch(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for _ in range(3):
        batch = make_batch([b"old"])
        h.log.append(batch, validate_batches(batch), now_ms=BASE_TIME_MS, leader_epoch=1)
    h.lead(replicas=(0, 1))
    h.set_state(isr=(0,), partition_epoch=11)
    assert h.log.high_watermark == 3
    h.log.high_watermark = 0  # as if this leader had not yet learnt the old high watermark
    h.partition.follower_fetched(1, 2)
    assert h.quorum.calls == []
    h.partition.follower_fetched(1, 3)
    await settle()
    assert h.partition.state.isr == (0, 1)


async def test_refused_proposals_wait_for_new_metadata_or_a_while(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead()
    h.quorum.refusal = ApiError(ErrorCode.invalid_update_version, "stale")
    h.seconds(LAG_MS / 1000 + 1)
    h.partition.shrink_isr_if_lagging()
    await settle()
    assert len(h.quorum.calls) == 1 and h.partition.state.isr == (0, 1, 2)
    h.partition.shrink_isr_if_lagging()
    await settle()
    assert len(h.quorum.calls) == 1
    h.seconds(ISR_RETRY_SECONDS)
    h.partition.shrink_isr_if_lagging()
    await settle()
    assert len(h.quorum.calls) == 2
    h.partition.update(h.partition.state, h.configs)  # any metadata change: try again
    h.quorum.refusal = None
    h.partition.shrink_isr_if_lagging()
    await settle()
    assert h.partition.state.isr == (0,)


async def test_losing_leadership_answers_waiters_and_starts_following(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead()
    end = h.produce()
    waiter = h.partition.wait_for_commit(end)
    generation = h.partition.follow_generation
    h.set_state(leader=1, leader_epoch=4, isr=(1, 2), partition_epoch=11)
    assert waiter.result() == ErrorCode.not_leader_or_follower
    assert h.partition.role is Role.FOLLOWER
    assert (h.partition.leader_id, h.partition.leader_epoch) == (1, 4)
    assert h.partition.needs_truncation
    assert h.partition.follow_generation > generation
    assert (await h.partition.wait_for_commit(end)) == ErrorCode.not_leader_or_follower
    h.partition.needs_truncation = False
    h.set_state(isr=(1,), partition_epoch=12)  # the ISR changes, not the leadership
    assert not h.partition.needs_truncation
    h.set_state(leader=-1, leader_epoch=5, partition_epoch=13)
    assert h.partition.role is Role.IDLE


async def test_a_new_epoch_for_the_same_leader_keeps_its_waiters(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.lead(replicas=(0, 1))
    end = h.produce()
    waiter = h.partition.wait_for_commit(end)
    h.set_state(leader_epoch=4, partition_epoch=11)
    assert h.log.leader_epochs.entries == [(3, 0), (4, end)]
    assert not waiter.done()
    h.partition.follower_fetched(1, end)
    assert waiter.result() == ErrorCode.none


def test_a_follower_takes_the_leaders_high_watermark_and_log_start(tmp_path: Path) -> None:
    h = Harness(tmp_path, node_id=1)
    h.set_state(replicas=(0, 1), isr=(0, 1), leader=0, leader_epoch=2, partition_epoch=1)
    for _ in range(4):
        batch = make_batch([b"x" * 2000])
        h.log.append(batch, validate_batches(batch), now_ms=BASE_TIME_MS, leader_epoch=2)
    h.partition.follower_appended(leader_high_watermark=10, leader_log_start_offset=0)
    assert h.log.high_watermark == 4  # never beyond its own log
    h.partition.follower_appended(leader_high_watermark=3, leader_log_start_offset=0)
    assert h.log.high_watermark == 3


def test_the_saved_high_watermark_is_where_a_restarted_replica_starts(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "orders-0", "orders", 0, LogConfig())
    for _ in range(3):
        batch = make_batch([b"x", b"y"])
        log.append(batch, validate_batches(batch), now_ms=BASE_TIME_MS, leader_epoch=0)

    def replica(high_watermark: int) -> int:
        Partition(
            0,
            "orders",
            0,
            log,
            topic_id=TOPIC_ID,
            high_watermark=high_watermark,
            config=BrokerConfig(),
            submit=FakeQuorum().submit,
            notify=lambda topic, index, appended: None,
        )
        return log.high_watermark

    assert replica(4) == 4
    assert replica(99) == 6  # never beyond the log (a tail lost in a crash)
    assert replica(0) == 0


def test_the_token_bucket_holds_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.available() == 1000
    bucket.take(2500)  # a whole batch beyond what is left: a debt
    assert bucket.available() == 0
    clock.now += 1.0
    assert bucket.available() == 0
    clock.now += 1.0
    assert bucket.available() == 500
    clock.now += 60
    assert bucket.available() == 1000  # at most one second saved up
    with pytest.raises(ValueError):
        TokenBucket(-1)
