"""The metadata quorum on loopback: pysyncobj voters and an observer in one event loop.

Commands submitted on a follower or an observer reach the leader and are applied
everywhere; a refused command raises its Kafka error where it was submitted; a silent
leader is replaced within about a second; a restarted member recovers from its journal
and catches up; voters are added and removed while the others run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from brook_broker.metadata.commands import CreateTopic, DeleteTopic, RegisterBroker
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.quorum import MetadataQuorum
from kio.schema.errors import ErrorCode

from .brokers import free_port

pytestmark = pytest.mark.timeout(120)


class Members:
    """Quorum members by node id, each with its own metadata directory."""

    def __init__(self, root: Path, voters: int) -> None:
        self.root = root
        self.voters = {node: f"127.0.0.1:{free_port()}" for node in range(voters)}
        self.running: dict[int, MetadataQuorum] = {}
        self.changes: dict[int, int] = {}

    def member(self, node: int, voters: dict[int, str] | None = None) -> MetadataQuorum:
        voters = voters or self.voters
        self.changes[node] = 0

        def changed() -> None:
            self.changes[node] += 1

        return MetadataQuorum(node, voters, voters.get(node), self.root / str(node), changed)

    async def start(self, *nodes: int) -> None:
        members = {node: self.member(node) for node in nodes}
        await asyncio.gather(*(member.start() for member in members.values()))
        self.running.update(members)

    def leader(self) -> int:
        return next(node for node, member in self.running.items() if member.is_active_controller)

    def freeze(self, node: int) -> MetadataQuorum:
        """The member goes silent, as a stopped process would: it no longer ticks."""
        member = self.running.pop(node)
        assert member._ticker is not None
        member._ticker.cancel()
        return member

    async def stop(self) -> None:
        for member in self.running.values():
            await member.stop()
        self.running.clear()


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[Members]:
    members = Members(tmp_path, 3)
    yield members
    await members.stop()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def register(member: MetadataQuorum, node: int) -> asyncio.Future[int]:
    return asyncio.ensure_future(member.submit(RegisterBroker(node, "127.0.0.1", 9092, None)))


async def test_commands_from_followers_and_observers_apply_everywhere(members: Members) -> None:
    await members.start(0, 1, 2, 3)  # 3 is not a voter: an observer
    leader = members.leader()
    follower = next(node for node in (0, 1, 2) if node != leader)
    assert all(m.active_controller_id == leader for m in members.running.values())
    assert not members.running[3].is_voter
    assert await register(members.running[follower], 1) == 1
    assert await register(members.running[3], 3) == 1
    with pytest.raises(ApiError) as refused:
        await members.running[3].submit(DeleteTopic("missing"))
    assert refused.value.code == ErrorCode.unknown_topic_or_partition
    await until(lambda: all(members.changes[node] >= 3 for node in members.running))
    assert all(set(m.state.brokers) == {1, 3} for m in members.running.values())


async def test_a_silent_leader_is_replaced_within_about_a_second(members: Members) -> None:
    await members.start(0, 1, 2, 3)
    frozen = members.freeze(members.leader())
    try:
        took = await until(
            lambda: (
                any(m.is_active_controller for m in members.running.values())
                and len({m.active_controller_id for m in members.running.values()}) == 1
            )
        )
        assert took < 1.5
        assert await register(members.running[3], 7) == 1
    finally:
        frozen._require_raft().destroy()


async def test_a_restarted_member_recovers_from_its_journal_and_catches_up(
    members: Members,
) -> None:
    await members.start(0, 1, 2)
    topic_id = uuid.uuid4()
    await register(members.running[0], 0)
    await members.running[1].submit(CreateTopic("t", topic_id, 3, 1, {}, None))
    node = next(node for node in members.running if node != members.leader())
    await members.running.pop(node).stop()
    await register(members.running[members.leader()], 5)  # while it is away
    restarted = members.member(node)
    await restarted.start()
    members.running[node] = restarted
    assert restarted.state.topics["t"].topic_id == topic_id
    await until(lambda: 5 in restarted.state.brokers)
    await members.stop()
    await members.start(0, 1, 2)  # all at once, from disk
    assert all(len(m.state.topics["t"].partitions) == 3 for m in members.running.values())


async def test_voters_are_added_and_removed_while_the_others_run(members: Members) -> None:
    await members.start(0, 1, 2)
    grown = {**members.voters, 3: f"127.0.0.1:{free_port()}"}
    newcomer = members.member(3, grown)
    joining = asyncio.ensure_future(newcomer.start())
    await asyncio.sleep(1.0)
    assert not joining.done(), "a voter nobody added must wait"
    await members.running[members.leader()].add_voter(3, grown[3])
    await asyncio.wait_for(joining, 10)
    members.running[3] = newcomer
    assert set(newcomer.voters) == {0, 1, 2, 3}
    with pytest.raises(ApiError) as duplicate:
        await newcomer.add_voter(3, grown[3])
    assert duplicate.value.code == ErrorCode.duplicate_voter
    leaving = members.leader()
    with pytest.raises(ApiError) as handed_over:
        await members.running[leaving].remove_voter(leaving)
    assert handed_over.value.code == ErrorCode.not_controller
    # As a Kafka client does: ask the active controller again while it answers
    # NOT_CONTROLLER (the leaving voter may win the next election and hand over again).
    for _ in range(5):
        await until(lambda: any(m.is_active_controller for m in members.running.values()))
        try:
            await members.running[members.leader()].remove_voter(leaving)
            break
        except ApiError as error:
            if error.code != ErrorCode.not_controller:
                raise
    else:
        pytest.fail(f"node {leaving} was never removed: the controller kept moving")
    stayed = [node for node in members.running if node != leaving]
    await until(lambda: all(set(members.running[n].voters) == set(stayed) for n in stayed))
    await members.running.pop(leaving).stop()
    # Three voters remain: losing one more still leaves a majority.
    frozen = members.freeze(members.leader())
    try:
        await until(lambda: any(m.is_active_controller for m in members.running.values()))
        assert await register(next(iter(members.running.values())), 9) == 1
    finally:
        frozen._require_raft().destroy()
