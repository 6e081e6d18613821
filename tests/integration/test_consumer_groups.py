"""Consumer groups with confluent-kafka, aiokafka and kafka-python members.

Three members of one group, each a process of its own, subscribe to a topic of six
partitions while numbered records are produced (acks=all) all along. They must split
the partitions, one owner each. Then one member is killed with SIGKILL: once the session
times out, the two others must own all six. Then one of those closes its consumer, which
leaves the group: the last one must own all six promptly, well before a session timeout.
Members commit synchronously after processing each poll, so every acknowledged record
must be processed; the records the killed member had processed but not committed must be
processed again, and no record may be processed again that a commit made before it was
handed over covered (that would mean the committed offset was not honoured).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from .brokers import wait_until
from .clients import create_topic
from .cluster import Ack, SequenceProducer, sequence_value
from .conftest import StartBroker, StartCluster
from .group_member import CLIENTS, MemberJournal, MemberProcess, MemberSettings, start_member

PARTITIONS = 6
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
GROUP_BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "1000")
RECORDS_PER_SECOND = 200
VICTIM_COMMIT_DELAY_MS = 1000
"""The member to be killed waits this long between processing and committing, so that it
dies holding processed records that it has not committed."""

JOIN_TIMEOUT_S = 30.0
CRASH_HANDOVER_LIMIT_S = SESSION_TIMEOUT_MS / 1000 + 10.0
"""The session timeout, then a rebalance; generous, as this machine is noisy."""
LEAVE_HANDOVER_LIMIT_S = SESSION_TIMEOUT_MS / 1000 / 2
"""A member that leaves is replaced at once, not after a session timeout."""
PROGRESS_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

StartMember = Callable[[str, str, MemberSettings], MemberProcess]


@pytest.fixture
def start_members(tmp_path: Path) -> Iterator[StartMember]:
    """Start group members; at teardown those still running are asked to leave, then
    killed if they have not exited within a bounded time."""
    started: list[MemberProcess] = []

    def start(client: str, name: str, settings: MemberSettings) -> MemberProcess:
        member = start_member(client, tmp_path / "members", name, settings)
        started.append(member)
        return member

    yield start
    for member in started:
        member.leave()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for member in started:
        member.wait(deadline - time.monotonic())
        print(f"--- log of {member.name}\n{member.log_tail()}")


def split_among(members: Sequence[MemberProcess]) -> float | None:
    """When the members' latest assignments were made, if those give every partition
    exactly one owner and every member some partition; None otherwise."""
    for member in members:
        assert member.running, f"{member.name} exited ({member.process.returncode}):\n" + (
            member.log_tail()
        )
    journals = [member.journal.refresh() for member in members]
    owned = [journal.assignment for journal in journals]
    if not all(owned) or sum(map(len, owned)) != PARTITIONS:
        return None
    if frozenset().union(*owned) != frozenset(range(PARTITIONS)):
        return None
    return max(journal.assigned_at or 0.0 for journal in journals)


def wait_for_split(members: Sequence[MemberProcess], what: str, timeout: float) -> float:
    names = ", ".join(member.name for member in members)
    try:
        return float(
            wait_until(
                lambda: split_among(members),
                timeout,
                message=f"{what}: {names} to own the {PARTITIONS} partitions, one owner each",
            )
        )
    except AssertionError as error:
        latest = {member.name: sorted(member.journal.assignment) for member in members}
        raise AssertionError(f"{error}; their latest assignments: {latest}") from None


def has_committed_since_assigned(member: MemberProcess) -> bool:
    """The member processed and committed records of its current assignment."""
    journal = member.journal.refresh()
    assigned_at = journal.assigned_at
    return assigned_at is not None and any(at > assigned_at for at, _ in journal.commits)


def processed_positions(journals: Sequence[MemberJournal]) -> set[tuple[int, int]]:
    return {
        (processed.record.partition, processed.record.offset)
        for journal in journals
        for processed in journal.refresh().processed
    }


@dataclass(frozen=True)
class Duplicate:
    partition: int
    offset: int
    member: str
    """Who processed the record again."""


def check_processed_at_least_once(
    acked: Mapping[int, Ack], journals: Mapping[str, MemberJournal]
) -> list[Duplicate]:
    """Assert that every acknowledged record was processed, with its value, and that a
    record processed again was not below the group's committed offset of its partition
    when its new owner got the partition. Returns the records processed again."""
    copies: dict[tuple[int, int], list[tuple[float, str, str | None]]] = defaultdict(list)
    for name, journal in journals.items():
        for processed in journal.processed:
            record = processed.record
            copies[record.partition, record.offset].append((processed.at, name, record.value))
    missing = sorted(s for s, ack in acked.items() if (ack.partition, ack.offset) not in copies)
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged records were never processed, e.g. "
        f"{[(s, acked[s]) for s in missing[:10]]}"
    )
    wrong = [
        (sequence, ack, value)
        for sequence, ack in acked.items()
        for _, _, value in copies[ack.partition, ack.offset]
        if value != sequence_value(sequence).decode()
    ]
    assert not wrong, f"records processed with other values than produced: {wrong[:10]}"

    commits = sorted(
        (at, name, partition, offset)
        for name, journal in journals.items()
        for at, offsets in journal.commits
        for partition, offset in offsets.items()
    )
    duplicates = []
    for (partition, offset), found in sorted(copies.items()):
        for at, name, _ in sorted(found)[1:]:
            since = journals[name].owner_since(partition, at)
            assert since is not None, (
                f"{name} processed offset {offset} of partition {partition} at {at:.3f} "
                "without owning the partition"
            )
            before = [c for c in commits if c[2] == partition and c[0] < since]
            if before:
                committed_at, committer, _, committed = before[-1]
                assert committed <= offset, (
                    f"{name} processed offset {offset} of partition {partition} again, having "
                    f"owned the partition since {since:.3f}, although {committer} had "
                    f"committed offset {committed} at {committed_at:.3f}"
                )
            duplicates.append(Duplicate(partition, offset, name))
    return duplicates


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.timeout(180)
def test_members_split_partitions_and_take_over_from_killed_and_leaving_ones(
    client: str, start_broker: StartBroker, start_members: StartMember
) -> None:
    broker = start_broker(*GROUP_BROKER_ARGS)
    topic = f"events-{client}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    run_scenario(client, broker.bootstrap, topic, start_members)


@pytest.mark.timeout(240)
def test_members_take_over_on_three_brokers(
    start_cluster: StartCluster, start_members: StartMember
) -> None:
    """The same with replicated partitions and committed offsets (RF 3)."""
    cluster = start_cluster(3, *GROUP_BROKER_ARGS)
    topic = "events-replicated"
    create_topic(cluster.bootstrap, topic, PARTITIONS, replication_factor=3)
    cluster.wait_for_full_isr(topic, PARTITIONS)
    run_scenario("confluent", cluster.bootstrap, topic, start_members)


def run_scenario(client: str, bootstrap: str, topic: str, start_members: StartMember) -> None:
    """Three members while records are produced; one killed, one leaving; then the checks."""
    settings = MemberSettings(
        bootstrap, f"workers-{client}", topic, SESSION_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS
    )
    started_at = time.monotonic()
    victim = start_members(
        client, "member-0", replace(settings, commit_delay_ms=VICTIM_COMMIT_DELAY_MS)
    )
    leaver, last = (start_members(client, f"member-{index}", settings) for index in (1, 2))
    members = [victim, leaver, last]
    producer = SequenceProducer(bootstrap, topic, range(PARTITIONS))
    producer.run_in_background(per_second=RECORDS_PER_SECOND)
    try:
        split_at = wait_for_split(members, "after start", JOIN_TIMEOUT_S)
        wait_until(
            lambda: has_committed_since_assigned(victim) and victim.journal.uncommitted(),
            PROGRESS_TIMEOUT_S,
            message=f"{victim.name} to commit, then process records it has not committed yet",
        )
        victim.kill9()
        killed_at = time.monotonic()
        victim_owned = sorted(victim.journal.refresh().assignment)
        pending = victim.journal.uncommitted()
        assert pending, f"{victim.name} committed all it processed before it was killed"
        taken_over_at = wait_for_split(
            [leaver, last], f"after {victim.name} was killed", CRASH_HANDOVER_LIMIT_S + 10
        )
        crash_handover = taken_over_at - killed_at
        wait_until(lambda: has_committed_since_assigned(leaver), PROGRESS_TIMEOUT_S)

        leaver.leave()
        left_at = time.monotonic()
        handed_over_at = wait_for_split(
            [last], f"after {leaver.name} left", LEAVE_HANDOVER_LIMIT_S + 10
        )
        leave_handover = handed_over_at - left_at
        leaver_exit = leaver.wait(STOP_TIMEOUT_S)
        time.sleep(1.0)  # the last member works alone for a while
    finally:
        producer.stop()
    assert not producer.failed, f"writes failed: {dict(list(producer.failed.items())[:10])}"

    journals = {member.name: member.journal for member in members}
    wanted = {(ack.partition, ack.offset) for ack in producer.acked.values()}
    wait_until(
        lambda: wanted <= processed_positions(list(journals.values())),
        DRAIN_TIMEOUT_S,
        message=f"{last.name} to process every acknowledged record",
    )
    last.leave()
    last_exit = last.wait(STOP_TIMEOUT_S)
    for journal in journals.values():
        journal.refresh()
    duplicates = check_processed_at_least_once(producer.acked, journals)
    processed_again = {(d.partition, d.offset) for d in duplicates if d.member != victim.name}
    not_again = [r for r in pending if (r.partition, r.offset) not in processed_again]
    assert not not_again, (
        f"records {victim.name} processed but did not commit before it was killed were not "
        f"processed again: {not_again[:10]}"
    )

    processed = sum(len(journal.processed) for journal in journals.values())
    failures = [
        f"{name} {operation}: {reason}"
        for name, journal in journals.items()
        for _, operation, reason in journal.failures
    ]
    print(
        f"{client}: 3 members split {PARTITIONS} partitions {split_at - started_at:.1f} s "
        f"after start; {victim.name} (partitions {victim_owned}) killed, the other two own "
        f"all after {crash_handover:.1f} s (session timeout {SESSION_TIMEOUT_MS} ms); "
        f"{leaver.name} left, {last.name} owns all after {leave_handover:.2f} s; "
        f"{len(producer.acked)} records acknowledged, {processed} processed, "
        f"{len(duplicates)} processed again, {len(pending)} of them processed but not "
        f"committed by {victim.name} "
        f"({ {name: sum(d.member == name for d in duplicates) for name in journals} }); "
        f"{len(failures)} failures reported by members"
    )
    for failure in failures[:20]:
        print(f"  {failure}")
    assert crash_handover <= CRASH_HANDOVER_LIMIT_S
    assert leave_handover <= LEAVE_HANDOVER_LIMIT_S
    assert leaver_exit == 0, f"{leaver.name} exited with {leaver_exit}:\n{leaver.log_tail()}"
    assert last_exit == 0, f"{last.name} exited with {last_exit}:\n{last.log_tail()}"
