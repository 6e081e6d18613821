"""The group coordinator's protocol, driven request by request with a hand-moved clock
and an in-memory ``__consumer_offsets``: what consumers in a group would see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass

import pytest
from brook_broker.config import BrokerConfig
from brook_broker.groups.coordinator import GroupCoordinator
from brook_broker.groups.group import GroupState, JoinResult
from brook_broker.groups.group_metadata import subscription_topics
from brook_broker.groups.offsets_topic import partition_for
from brook_broker.metadata.errors import ApiError
from kio.schema.errors import ErrorCode

PARTITIONS = 4
SESSION_MS = 10_000
REBALANCE_MS = 20_000


class MemoryOffsetsLog:
    """``__consumer_offsets`` kept in lists; ``failing`` makes appends fail as a lost
    leadership would."""

    def __init__(self) -> None:
        self.records: dict[int, list[tuple[bytes, bytes | None]]] = {
            index: [] for index in range(PARTITIONS)
        }
        self.failing: ErrorCode | None = None

    def partition_count(self) -> int:
        return PARTITIONS

    def led_partitions(self) -> dict[int, int]:
        return dict.fromkeys(range(PARTITIONS), 0)

    def append(
        self, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> Awaitable[None]:
        if self.failing is not None:
            raise ApiError(self.failing, "not the leader any more")
        self.records[partition].extend(records)
        return asyncio.sleep(0)

    async def read(self, partition: int) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
        for record in list(self.records[partition]):
            yield record


@dataclass
class Clock:
    now: float = 1000.0
    wall_ms: int = 1_700_000_000_000

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_ms += int(seconds * 1000)


def subscription(*topics: str) -> bytes:
    """A consumer protocol subscription (v0) as clients send it."""
    out = bytearray((0).to_bytes(2, "big") + len(topics).to_bytes(4, "big"))
    for topic in topics:
        out += len(topic).to_bytes(2, "big") + topic.encode()
    return bytes(out + (-1).to_bytes(4, "big", signed=True))


INITIAL_DELAY_MS = 3000


async def make_coordinator(
    log: MemoryOffsetsLog, clock: Clock, **settings: int
) -> GroupCoordinator:
    config = BrokerConfig(
        group_initial_rebalance_delay_ms=INITIAL_DELAY_MS,
        group_min_session_timeout_ms=1000,
        offsets_retention_minutes=settings.pop("retention_minutes", 60),
        offsets_retention_check_interval_ms=1000,
        **settings,
    )
    coordinator = GroupCoordinator(
        config,
        log,
        lambda topic, index: topic == "orders" and 0 <= index < 6,
        clock=clock,
        wall_clock_ms=lambda: clock.wall_ms,
    )
    coordinator.on_metadata_change()
    await asyncio.sleep(0)  # loading runs as a task
    await asyncio.sleep(0)
    return coordinator


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def offsets_log() -> MemoryOffsetsLog:
    return MemoryOffsetsLog()


@pytest.fixture
async def coordinator(offsets_log: MemoryOffsetsLog, clock: Clock) -> GroupCoordinator:
    return await make_coordinator(offsets_log, clock)


async def join(
    coordinator: GroupCoordinator,
    member_id: str = "",
    *,
    group: str = "g",
    instance: str | None = None,
    protocols: Sequence[tuple[str, bytes]] = (("range", subscription("orders")),),
    session_ms: int = SESSION_MS,
) -> JoinResult:
    return await coordinator.membership.join(
        group,
        member_id,
        instance,
        client_id="client",
        client_host="/127.0.0.1",
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=REBALANCE_MS,
        protocol_type="consumer",
        protocols=protocols,
        require_known_member_id=True,
    )


async def join_new(coordinator: GroupCoordinator, **options: object) -> asyncio.Task[JoinResult]:
    """A new member's join (KIP-394: first asked for its member id), left waiting."""
    first = await join(coordinator, **options)  # type: ignore[arg-type]
    assert first.error == ErrorCode.member_id_required
    task = asyncio.create_task(join(coordinator, first.member_id, **options))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    return task


async def join_together(
    coordinator: GroupCoordinator, clock: Clock, size: int, **options: object
) -> list[JoinResult]:
    """``size`` members join an empty group within its initial rebalance delay."""
    tasks = [await join_new(coordinator, **options) for _ in range(size)]
    clock.advance(INITIAL_DELAY_MS / 1000 + 0.1)
    coordinator.tick()
    return list(await asyncio.gather(*tasks))


async def form_group(
    coordinator: GroupCoordinator, clock: Clock, size: int, **options: object
) -> list[JoinResult]:
    """``size`` members join together and the leader hands out one partition each."""
    results = await join_together(coordinator, clock, size, **options)
    await sync_all(coordinator, results)
    return results


async def sync_all(coordinator: GroupCoordinator, results: Sequence[JoinResult]) -> list[bytes]:
    leader = next(result for result in results if result.members)
    assignments = {
        member_id: f"partition-{index}".encode()
        for index, (member_id, _, _) in enumerate(leader.members)
    }
    answers = await asyncio.gather(
        *(
            coordinator.membership.sync(
                "g",
                result.generation,
                result.member_id,
                None,
                protocol_type="consumer",
                protocol=result.protocol,
                assignments=assignments if result.member_id == result.leader else {},
            )
            for result in results
        )
    )
    assert all(answer.error == ErrorCode.none for answer in answers)
    return [answer.assignment for answer in answers]


def state(coordinator: GroupCoordinator, group: str = "g") -> GroupState:
    described = coordinator.describe(group)
    return GroupState.DEAD if described is None else described.state


# --- joining -------------------------------------------------------------------------------


async def test_members_form_one_generation_and_only_the_leader_sees_the_members(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    results = await form_group(coordinator, clock, 3)
    assert {result.generation for result in results} == {1}
    leaders = [result for result in results if result.members]
    assert len(leaders) == 1
    assert leaders[0].member_id == leaders[0].leader
    assert sorted(member_id for member_id, _, _ in leaders[0].members) == sorted(
        result.member_id for result in results
    )
    assert {result.protocol for result in results} == {"range"}
    assert state(coordinator) is GroupState.STABLE


async def test_each_member_gets_the_assignment_the_leader_made(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    results = await join_together(coordinator, clock, 2)
    assignments = await sync_all(coordinator, results)
    assert sorted(assignments) == [b"partition-0", b"partition-1"]


async def test_the_protocol_all_members_support_wins(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    first = await join_new(coordinator, protocols=(("cooperative-sticky", b"a"), ("range", b"b")))
    second = await join_new(coordinator, protocols=(("range", b"c"),))
    clock.advance(INITIAL_DELAY_MS / 1000 + 0.1)
    coordinator.tick()
    results = await asyncio.gather(first, second)
    assert {result.protocol for result in results} == {"range"}


async def test_a_member_without_a_shared_protocol_is_refused(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    await form_group(coordinator, clock, 1)
    refused = await join(coordinator, protocols=(("roundrobin", b""),))
    assert refused.error == ErrorCode.inconsistent_group_protocol


async def test_a_session_timeout_outside_the_broker_limits_is_refused(
    coordinator: GroupCoordinator,
) -> None:
    refused = await join(coordinator, session_ms=100)
    assert refused.error == ErrorCode.invalid_session_timeout


async def test_the_first_rebalance_waits_for_more_members(
    offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    coordinator = await make_coordinator(offsets_log, clock)
    first = await join_new(coordinator)
    clock.advance(2)
    coordinator.tick()
    second = await join_new(coordinator)
    clock.advance(2)
    coordinator.tick()
    assert not first.done(), "the delay restarts when a member joins"
    clock.advance(1.1)
    coordinator.tick()
    results = await asyncio.gather(first, second)
    assert [result.generation for result in results] == [1, 1]


# --- heartbeats, sessions, leaving ---------------------------------------------------------


async def test_heartbeats_answer_by_generation_and_member(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    assert coordinator.membership.heartbeat("g", 1, member.member_id, None) == ErrorCode.none
    assert (
        coordinator.membership.heartbeat("g", 0, member.member_id, None)
        == ErrorCode.illegal_generation
    )
    assert coordinator.membership.heartbeat("g", 1, "stranger", None) == ErrorCode.unknown_member_id
    assert coordinator.membership.heartbeat("nobody", 1, "x", None) == ErrorCode.unknown_member_id


async def test_a_member_that_stops_heartbeating_loses_its_partitions(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    survivor, silent = await form_group(coordinator, clock, 2)
    for _ in range(3):
        clock.advance(4)
        assert coordinator.membership.heartbeat("g", 1, survivor.member_id, None) == ErrorCode.none
        coordinator.tick()
    # The silent member's session (10 s) is over: a rebalance starts without it.
    assert state(coordinator) is GroupState.PREPARING_REBALANCE
    answer = coordinator.membership.heartbeat("g", 1, survivor.member_id, None)
    assert answer == ErrorCode.rebalance_in_progress
    rejoined = await join(coordinator, survivor.member_id)
    assert rejoined.generation == 2
    assert [member_id for member_id, _, _ in rejoined.members] == [survivor.member_id]
    assert (
        coordinator.membership.heartbeat("g", 1, silent.member_id, None)
        == ErrorCode.unknown_member_id
    )


async def test_a_member_that_does_not_rejoin_in_the_rebalance_timeout_is_dropped(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    first, second = await form_group(coordinator, clock, 2)
    newcomer = await join_new(coordinator)
    rejoin = asyncio.create_task(join(coordinator, first.member_id))
    await asyncio.sleep(0)
    for _ in range(5):  # 20 s rebalance timeout; the second member heartbeats but never rejoins
        clock.advance(4.1)
        coordinator.membership.heartbeat("g", 1, second.member_id, None)
        coordinator.tick()
    results = await asyncio.gather(newcomer, rejoin)
    assert {result.generation for result in results} == {2}
    leader = next(result for result in results if result.members)
    assert second.member_id not in {member_id for member_id, _, _ in leader.members}


async def test_leaving_moves_partitions_at_once_and_the_last_leaves_it_empty(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    first, second = await form_group(coordinator, clock, 2)
    assert coordinator.membership.leave("g", [(second.member_id, None)]) == [ErrorCode.none]
    assert state(coordinator) is GroupState.PREPARING_REBALANCE
    rejoined = await join(coordinator, first.member_id)
    assert rejoined.generation == 2
    assert coordinator.membership.leave("g", [(first.member_id, None)]) == [ErrorCode.none]
    assert state(coordinator) is GroupState.EMPTY
    assert coordinator.membership.leave("g", [("gone", None)]) == [ErrorCode.unknown_member_id]


async def test_a_sync_from_an_old_generation_is_refused(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    answer = await coordinator.membership.sync(
        "g", 0, member.member_id, None, protocol_type=None, protocol=None, assignments={}
    )
    assert answer.error == ErrorCode.illegal_generation


# --- static membership ---------------------------------------------------------------------


async def test_a_restarted_static_member_keeps_its_assignment_without_a_rebalance(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    # Static members (with a group instance id) are not asked for a member id first.
    tasks = [asyncio.create_task(join(coordinator, instance=instance)) for instance in "ab"]
    await asyncio.sleep(0)
    clock.advance(INITIAL_DELAY_MS / 1000 + 0.1)
    coordinator.tick()
    results = list(await asyncio.gather(*tasks))
    assignments = await sync_all(coordinator, results)
    follower = next(result for result in results if not result.members)
    follower_assignment = assignments[results.index(follower)]

    restarted = await join(coordinator, instance="b")
    assert restarted.error == ErrorCode.none
    assert restarted.generation == follower.generation, "no rebalance"
    assert restarted.member_id != follower.member_id
    answer = await coordinator.membership.sync(
        "g",
        restarted.generation,
        restarted.member_id,
        "b",
        protocol_type=None,
        protocol=None,
        assignments={},
    )
    assert answer.assignment == follower_assignment
    fenced = coordinator.membership.heartbeat("g", follower.generation, follower.member_id, "b")
    assert fenced == ErrorCode.fenced_instance_id


# --- offsets -------------------------------------------------------------------------------


async def test_committed_offsets_are_fetched_back(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    codes = await coordinator.offsets.commit(
        "g", 1, member.member_id, None, {("orders", 0): (42, 3, "note"), ("orders", 9): (1, -1, "")}
    )
    assert codes == {
        ("orders", 0): ErrorCode.none,
        ("orders", 9): ErrorCode.unknown_topic_or_partition,
    }
    fetched = coordinator.offsets.fetch("g", [("orders", 0), ("orders", 1)])
    committed = fetched[("orders", 0)]
    assert committed is not None
    assert (committed.offset, committed.leader_epoch, committed.metadata) == (42, 3, "note")
    assert fetched[("orders", 1)] is None


async def test_commits_from_outside_the_generation_are_refused(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    offsets = {("orders", 0): (5, -1, "")}
    for generation, member_id, expected in [
        (0, member.member_id, ErrorCode.illegal_generation),
        (1, "stranger", ErrorCode.unknown_member_id),
        (-1, "", ErrorCode.unknown_member_id),  # a standalone consumer, but the group has members
    ]:
        with pytest.raises(ApiError) as refused:
            await coordinator.offsets.commit("g", generation, member_id, None, offsets)
        assert refused.value.code == expected


async def test_a_standalone_consumer_commits_to_a_group_without_members(
    coordinator: GroupCoordinator,
) -> None:
    codes = await coordinator.offsets.commit("solo", -1, "", None, {("orders", 2): (7, -1, "")})
    assert codes == {("orders", 2): ErrorCode.none}
    listed = {group.group_id: group.state for group in coordinator.list_groups()}
    assert listed == {"solo": GroupState.EMPTY}


async def test_a_failed_write_commits_nothing(
    coordinator: GroupCoordinator, offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    offsets_log.failing = ErrorCode.not_coordinator
    with pytest.raises(ApiError) as refused:
        await coordinator.offsets.commit(
            "g", 1, member.member_id, None, {("orders", 0): (5, -1, "")}
        )
    assert refused.value.code == ErrorCode.not_coordinator
    assert coordinator.offsets.fetch("g", [("orders", 0)]) == {("orders", 0): None}


async def test_a_new_coordinator_loads_offsets_and_membership_from_the_log(
    coordinator: GroupCoordinator, offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    first, second = await form_group(coordinator, clock, 2)
    await coordinator.offsets.commit("g", 1, first.member_id, None, {("orders", 0): (10, 0, "")})
    await coordinator.offsets.commit("g", 1, first.member_id, None, {("orders", 0): (20, 0, "")})
    await coordinator.offsets.commit("g", 1, second.member_id, None, {("orders", 1): (5, 0, "")})

    successor = await make_coordinator(offsets_log, clock)
    fetched = successor.offsets.fetch("g", None)
    assert {key: offset.offset for key, offset in fetched.items() if offset} == {
        ("orders", 0): 20,
        ("orders", 1): 5,
    }
    # The members carry on in their generation: no rebalance after a coordinator failover.
    assert state(successor) is GroupState.STABLE
    assert successor.membership.heartbeat("g", 1, first.member_id, None) == ErrorCode.none
    answer = await successor.membership.sync(
        "g", 1, second.member_id, None, protocol_type=None, protocol=None, assignments={}
    )
    assert answer.assignment in (b"partition-0", b"partition-1")


async def test_requests_wait_while_the_groups_load(
    offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    coordinator = GroupCoordinator(
        BrokerConfig(), offsets_log, lambda topic, index: True, clock=clock
    )
    coordinator.on_metadata_change()
    with pytest.raises(ApiError) as loading:
        coordinator.offsets.fetch("g", None)
    assert loading.value.code == ErrorCode.coordinator_load_in_progress
    await asyncio.sleep(0.01)
    assert coordinator.offsets.fetch("g", None) == {}
    coordinator.on_leadership({})
    with pytest.raises(ApiError) as moved:
        coordinator.offsets.fetch("g", None)
    assert moved.value.code == ErrorCode.not_coordinator


class SlowOffsetsLog(MemoryOffsetsLog):
    """Reads pause after the first record until ``resume`` is set, as a long partition
    would take a while to read."""

    def __init__(self, records: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        super().__init__()
        self.records = records
        self.resume = asyncio.Event()

    async def read(self, partition: int) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
        for index, record in enumerate(list(self.records[partition])):
            if index == 1:
                await self.resume.wait()
            yield record


async def test_restored_members_keep_their_session_while_the_rest_loads(
    coordinator: GroupCoordinator, offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    first, _ = await form_group(coordinator, clock, 2)
    await coordinator.offsets.commit("g", 1, first.member_id, None, {("orders", 0): (10, 0, "")})
    slow = SlowOffsetsLog(offsets_log.records)
    successor = await make_coordinator(slow, clock)  # the membership is read, offsets not yet
    clock.advance(1)
    successor.tick()  # timers leave a partition still loading alone
    slow.resume.set()
    await asyncio.sleep(0.01)
    assert state(successor) is GroupState.STABLE
    assert successor.membership.heartbeat("g", 1, first.member_id, None) == ErrorCode.none
    assert successor.offsets.fetch("g", [("orders", 0)])[("orders", 0)] is not None


async def test_offsets_of_a_group_empty_for_the_retention_time_expire(
    offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    coordinator = await make_coordinator(offsets_log, clock, retention_minutes=1)
    (member,) = await form_group(coordinator, clock, 1)
    await coordinator.offsets.commit("g", 1, member.member_id, None, {("orders", 0): (3, -1, "")})
    clock.advance(120)  # members keep a group's offsets, however old
    coordinator.membership.heartbeat("g", 1, member.member_id, None)
    coordinator.tick()
    assert coordinator.offsets.fetch("g", [("orders", 0)])[("orders", 0)] is not None
    coordinator.membership.leave("g", [(member.member_id, None)])
    clock.advance(59)
    coordinator.tick()
    assert coordinator.offsets.fetch("g", [("orders", 0)])[("orders", 0)] is not None
    clock.advance(2)
    coordinator.tick()
    await asyncio.sleep(0.01)
    assert state(coordinator) is GroupState.DEAD
    reloaded = await make_coordinator(offsets_log, clock)
    assert reloaded.offsets.fetch("g", None) == {}


async def test_only_an_empty_group_is_deleted(
    coordinator: GroupCoordinator, offsets_log: MemoryOffsetsLog, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    await coordinator.offsets.commit("g", 1, member.member_id, None, {("orders", 0): (3, -1, "")})
    with pytest.raises(ApiError) as refused:
        await coordinator.delete_group("g")
    assert refused.value.code == ErrorCode.non_empty_group
    coordinator.membership.leave("g", [(member.member_id, None)])
    await coordinator.delete_group("g")
    with pytest.raises(ApiError) as missing:
        await coordinator.delete_group("g")
    assert missing.value.code == ErrorCode.group_id_not_found
    reloaded = await make_coordinator(offsets_log, clock)
    assert reloaded.describe("g") is None


async def test_offsets_of_a_subscribed_topic_are_not_deleted(
    coordinator: GroupCoordinator, clock: Clock
) -> None:
    (member,) = await form_group(coordinator, clock, 1)
    await coordinator.offsets.commit(
        "g", 1, member.member_id, None, {("orders", 0): (3, -1, ""), ("orders", 1): (4, -1, "")}
    )
    codes = await coordinator.offsets.delete("g", [("orders", 0)])
    assert codes == {("orders", 0): ErrorCode.group_subscribed_to_topic}
    coordinator.membership.leave("g", [(member.member_id, None)])
    assert await coordinator.offsets.delete("g", [("orders", 0)]) == {("orders", 0): ErrorCode.none}
    assert coordinator.offsets.fetch("g", None).keys() == {("orders", 1)}


# --- the offsets topic ---------------------------------------------------------------------


def test_groups_land_on_the_partition_kafka_would_choose() -> None:
    # Java: "abc".hashCode() == 96354, "hello".hashCode() == 99162322
    assert partition_for("abc", 50) == 96354 % 50
    assert partition_for("hello", 7) == 99162322 % 7
    assert all(0 <= partition_for(f"group-{n}", 50) < 50 for n in range(200))


def test_subscribed_topics_are_read_from_consumer_metadata() -> None:
    assert subscription_topics(subscription("a", "bb")) == ["a", "bb"]
    assert subscription_topics(b"\x00") == []
