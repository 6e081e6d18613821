"""The active controller: sessions, fencing, unfencing, controlled shutdown, rebalance.

Driven on a quorum of one without Raft, with a clock the test moves; the controller's
own timers run on the event loop as in a broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from brook_broker import metrics
from brook_broker.config import BrokerConfig
from brook_broker.controller.controller import Controller
from brook_broker.metadata.commands import (
    AlterPartition,
    CreateTopic,
    FenceBroker,
    RegisterBroker,
    UnfenceBroker,
)
from kio.schema.errors import ErrorCode

from tests.support.quorum import LocalQuorum

INTERVAL_MS, SESSION_MS = 20, 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quorum() -> LocalQuorum:
    return LocalQuorum(0)


@pytest.fixture
async def controller(quorum: LocalQuorum, clock: Clock) -> AsyncIterator[Controller]:
    config = BrokerConfig(
        broker_heartbeat_interval_ms=INTERVAL_MS,
        broker_session_timeout_ms=SESSION_MS,
        auto_leader_rebalance=True,
    )
    controller = Controller(quorum, config, clock)  # type: ignore[arg-type]
    quorum.on_change = controller.on_metadata_change
    await controller.start()
    yield controller
    await controller.stop()


async def register(quorum: LocalQuorum, *nodes: int) -> dict[int, int]:
    return {
        node: await quorum.submit(RegisterBroker(node, "127.0.0.1", 9092 + node, None))
        for node in nodes
    }


async def settle() -> None:
    """Let the controller's sweep (every 50 ms) and the commands it spawns run."""
    await asyncio.sleep(0.15)


async def advance(clock: Clock, seconds: float) -> None:
    """Move the clock in steps the controller sweeps in between, as time passes."""
    steps = max(1, round(seconds / 0.1))
    for _ in range(steps):
        clock.now += seconds / steps
        await asyncio.sleep(0.06)


async def test_only_the_active_controller_answers(
    controller: Controller, quorum: LocalQuorum
) -> None:
    epochs = await register(quorum, 1)
    quorum.is_active_controller = False
    answer = await controller.heartbeat(1, epochs[1], False)
    assert answer.error == ErrorCode.not_controller


async def test_unknown_brokers_and_stale_epochs_are_refused(
    controller: Controller, quorum: LocalQuorum
) -> None:
    epochs = await register(quorum, 1)
    assert (await controller.heartbeat(7, 1, False)).error == ErrorCode.broker_id_not_registered
    stale = await controller.heartbeat(1, epochs[1] - 1, False)
    assert stale.error == ErrorCode.stale_broker_epoch
    answer = await controller.heartbeat(1, epochs[1], False)
    assert (answer.error, answer.is_fenced, answer.should_shut_down) == (
        ErrorCode.none,
        False,
        False,
    )


async def test_a_silent_broker_is_fenced_and_unfenced_when_it_heartbeats_again(
    controller: Controller, quorum: LocalQuorum, clock: Clock
) -> None:
    epochs = await register(quorum, 0, 1)
    for node in (0, 1):
        await controller.heartbeat(node, epochs[node], False)
    await advance(clock, 0.5)
    await controller.heartbeat(0, epochs[0], False)
    await settle()
    assert not quorum.state.brokers[1].fenced
    await advance(clock, 0.6)  # broker 1: 1.1 s silent; broker 0: 0.6 s
    await settle()
    assert quorum.state.brokers[1].fenced and not quorum.state.brokers[0].fenced
    answer = await controller.heartbeat(1, epochs[1], False)
    assert answer.error == ErrorCode.none and not answer.is_fenced
    assert not quorum.state.brokers[1].fenced


async def test_a_new_controller_gives_brokers_a_few_intervals_to_find_it(
    controller: Controller, quorum: LocalQuorum, clock: Clock
) -> None:
    epochs = await register(quorum, 0, 1)
    quorum.is_active_controller = False
    await settle()
    quorum.is_active_controller = True
    await settle()
    await controller.heartbeat(0, epochs[0], False)
    await advance(clock, 0.1)
    await settle()
    assert quorum.state.brokers[1].fenced and not quorum.state.brokers[0].fenced


async def test_a_new_controller_fences_an_unreachable_voter_after_one_interval(
    controller: Controller, quorum: LocalQuorum, clock: Clock
) -> None:
    epochs = await register(quorum, 0, 1, 2)
    quorum.is_active_controller = False
    await settle()
    quorum.unreachable_voters = {2}
    quorum.is_active_controller = True
    await settle()
    for node in (0, 1):
        await controller.heartbeat(node, epochs[node], False)
    await advance(clock, 2 * INTERVAL_MS / 1000)
    await settle()
    assert [quorum.state.brokers[node].fenced for node in (0, 1, 2)] == [False, False, True]


async def test_a_stalled_controller_blames_nobody_for_its_own_silence(
    controller: Controller, quorum: LocalQuorum, clock: Clock
) -> None:
    epochs = await register(quorum, 1)
    await controller.heartbeat(1, epochs[1], False)
    clock.now += 5.0  # the event loop (or the whole process) stood still
    await settle()
    assert not quorum.state.brokers[1].fenced
    await advance(clock, 0.2)
    assert quorum.state.brokers[1].fenced


async def test_a_closed_heartbeat_connection_fences_unless_the_broker_comes_back(
    controller: Controller, quorum: LocalQuorum, clock: Clock
) -> None:
    epochs = await register(quorum, 1, 2)
    for node in (1, 2):
        await controller.heartbeat(node, epochs[node], False)
        controller.heartbeat_connection_closed(node, epochs[node])
    clock.now += 0.001
    await controller.heartbeat(2, epochs[2], False)  # reconnected at once
    await asyncio.sleep(3 * INTERVAL_MS / 1000)
    assert quorum.state.brokers[1].fenced and not quorum.state.brokers[2].fenced


async def test_controlled_shutdown_moves_leadership_first(
    controller: Controller, quorum: LocalQuorum
) -> None:
    epochs = await register(quorum, 1, 2)
    await quorum.submit(CreateTopic("t", uuid.uuid4(), 1, 2, {}, [(1, 2)]))
    answer = await controller.heartbeat(1, epochs[1], True)
    assert answer.error == ErrorCode.none and answer.should_shut_down
    partition = quorum.state.topics["t"].partitions[0]
    assert (partition.leader, partition.isr) == (2, (2,))


async def test_leadership_returns_to_preferred_replicas(
    controller: Controller, quorum: LocalQuorum, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("brook_broker.controller.controller.REBALANCE_SECONDS", 0.0)
    epochs = await register(quorum, 1, 2)
    await quorum.submit(CreateTopic("t", uuid.uuid4(), 1, 2, {}, [(1, 2)]))
    elections = metrics.REGISTRY.get_sample_value("brook_leader_elections_total")
    await quorum.submit(FenceBroker(1, epochs[1]))
    assert quorum.state.topics["t"].partitions[0].leader == 2
    await quorum.submit(UnfenceBroker(1, epochs[1]))
    state = quorum.state.topics["t"].partitions[0]
    await quorum.submit(
        AlterPartition("t", 0, 2, state.leader_epoch, state.partition_epoch, (2, 1))
    )
    await settle()
    assert quorum.state.topics["t"].partitions[0].leader == 1
    after = metrics.REGISTRY.get_sample_value("brook_leader_elections_total")
    assert after == (elections or 0) + 2


async def test_offline_partitions_are_counted_on_the_active_controller_only(
    controller: Controller, quorum: LocalQuorum
) -> None:
    epochs = await register(quorum, 1)
    await quorum.submit(CreateTopic("t", uuid.uuid4(), 2, 1, {}, None))
    await quorum.submit(FenceBroker(1, epochs[1]))
    assert controller.offline_partition_count() == 2
    quorum.is_active_controller = False
    assert controller.offline_partition_count() == 0


async def test_a_stopped_controller_fences_nobody(
    controller: Controller, quorum: LocalQuorum
) -> None:
    epochs = await register(quorum, 1)
    await controller.heartbeat(1, epochs[1], False)
    await controller.stop()
    controller.heartbeat_connection_closed(1, epochs[1])  # its listener closed them all
    await asyncio.sleep(3 * INTERVAL_MS / 1000)
    assert not quorum.state.brokers[1].fenced
    assert not controller.is_active
