"""``brook groups describe`` and ``brook groups list`` against a running broker, run as a
user runs them, while a real consumer group reads: the lag they print is checked against
what the consumer's own client reports."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import confluent_kafka
import pytest

from .brokers import BrokerProcess
from .clients import create_topic
from .cluster import SequenceProducer
from .conftest import StartBroker
from .groups import (
    GROUP_BROKER_ARGS,
    LagRow,
    committed,
    describe_group,
    group_consumer,
    run_brook,
    wait_for_assignment,
)

TOPIC = "orders"
PARTITIONS = 3
PRODUCE_PER_S = 200
CONSUME_PER_S = 40
SLOW_GROUP = "slow-readers"
CLIENT_ID = "slow-reader"


@pytest.fixture
def group_broker(start_broker: StartBroker) -> BrokerProcess:
    broker = start_broker(*GROUP_BROKER_ARGS, "--offsets-topic-num-partitions", "4")
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    return broker


@dataclass
class SlowConsumer:
    """A consumer in a group that reads at most ``per_second`` records a second and
    commits the next offsets it has read synchronously, every ``commit_every`` records."""

    consumer: confluent_kafka.Consumer
    positions: dict[int, int] = field(default_factory=dict)

    def consume_for(self, seconds: float, per_second: float | None, commit_every: int = 10) -> None:
        deadline = time.monotonic() + seconds
        uncommitted = 0
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.1)
            if message is None:
                continue
            assert message.error() is None, f"consumer error: {message.error()}"
            self.positions[message.partition()] = message.offset() + 1
            uncommitted += 1
            if uncommitted >= commit_every:
                self.commit()
                uncommitted = 0
            if per_second is not None:
                time.sleep(1 / per_second)
        self.commit()

    def commit(self) -> None:
        if self.positions:
            self.consumer.commit(
                offsets=[
                    confluent_kafka.TopicPartition(TOPIC, partition, offset)
                    for partition, offset in self.positions.items()
                ],
                asynchronous=False,
            )

    def log_ends(self) -> dict[int, int]:
        """High watermarks as the client's own ListOffsets reads them."""
        return {
            partition: self.consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(TOPIC, partition), timeout=10, cached=False
            )[1]
            for partition in range(PARTITIONS)
        }


@pytest.fixture
def slow_consumer(group_broker: BrokerProcess) -> Iterator[SlowConsumer]:
    consumer = group_consumer(
        group_broker.bootstrap,
        SLOW_GROUP,
        client_id=CLIENT_ID,
        auto_offset_reset="earliest",
        # Small fetches, so that the slow reader moves on every partition, not one at a time.
        max_partition_fetch_bytes=4096,
    )
    consumer.subscribe([TOPIC])
    try:
        yield SlowConsumer(consumer)
    finally:
        consumer.close()


def checked_describe(bootstrap: str, reader: SlowConsumer) -> list[LagRow]:
    """``brook groups describe``, each row checked against the consumer's own view: the
    committed offset the client fetches, the log end offset between the high watermarks
    the client reads just before and just after, and lag = log end - committed."""
    before = reader.log_ends()
    rows, state = describe_group(bootstrap, SLOW_GROUP)
    after = reader.log_ends()
    by_client = committed(reader.consumer, TOPIC, range(PARTITIONS))
    assert [(row.group, row.topic, row.partition) for row in rows] == [
        (SLOW_GROUP, TOPIC, partition) for partition in range(PARTITIONS)
    ]
    for row in rows:
        assert row.current_offset == by_client[row.partition] == reader.positions[row.partition]
        assert row.log_end_offset is not None
        assert before[row.partition] <= row.log_end_offset <= after[row.partition]
        assert row.lag == row.log_end_offset - row.current_offset
        assert (row.consumer_id, row.client_id) == (reader.consumer.memberid(), CLIENT_ID)
        assert row.host is not None and "127.0.0.1" in row.host
    assert state.startswith(f"Group '{SLOW_GROUP}' is Stable with 1 member (coordinator: broker 0)")
    assert state.endswith(f"total lag {sum(row.lag or 0 for row in rows)}.")
    return rows


def test_describe_shows_lag_while_a_slow_consumer_falls_behind(
    group_broker: BrokerProcess, slow_consumer: SlowConsumer
) -> None:
    bootstrap = group_broker.bootstrap
    producer = SequenceProducer(bootstrap, TOPIC, range(PARTITIONS))
    producer.run_in_background(per_second=PRODUCE_PER_S)
    started = time.monotonic()
    try:
        # Until the reader has committed on every partition.
        deadline = started + 30
        while len(slow_consumer.positions) < PARTITIONS:
            assert time.monotonic() < deadline, f"read only {sorted(slow_consumer.positions)}"
            slow_consumer.consume_for(1.0, CONSUME_PER_S)
        totals = []
        for _ in range(3):
            slow_consumer.consume_for(2.0, CONSUME_PER_S)
            rows = checked_describe(bootstrap, slow_consumer)
            totals.append(sum(row.lag or 0 for row in rows))
            print(f"{time.monotonic() - started:5.1f} s: lag {[row.lag for row in rows]}")
        assert all(a < b for a, b in itertools.pairwise(totals)), f"lag did not grow: {totals}"
    finally:
        producer.stop()
    assert not producer.failed, f"{len(producer.failed)} records were not acknowledged"

    # The producer stopped: the reader catches up at full speed, and the lag goes to 0.
    ends = slow_consumer.log_ends()
    deadline = time.monotonic() + 60
    while any(slow_consumer.positions.get(p, 0) < end for p, end in ends.items()):
        assert time.monotonic() < deadline, f"stuck at {slow_consumer.positions}, ends {ends}"
        slow_consumer.consume_for(0.5, None, commit_every=1000)
    rows = checked_describe(bootstrap, slow_consumer)
    assert [(row.current_offset, row.lag) for row in rows] == [(ends[p], 0) for p in ends]
    print(f"{time.monotonic() - started:5.1f} s: caught up at {ends}, lag {[r.lag for r in rows]}")

    listed = run_brook("groups", "list", "--bootstrap", bootstrap)
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["GROUP", "STATE", "MEMBERS", "ASSIGNMENT-STRATEGY", "COORDINATOR"]
    assert [line.split()[:3] for line in lines] == [[SLOW_GROUP, "Stable", "1"]]


def test_lag_without_committed_offsets_follows_the_reset_policy(
    group_broker: BrokerProcess,
) -> None:
    """A member that has its partitions but has committed nothing: CURRENT-OFFSET "-",
    LAG 0 for --reset latest and log end - log start for --reset earliest."""
    bootstrap = group_broker.bootstrap
    producer = SequenceProducer(bootstrap, TOPIC, range(PARTITIONS))
    producer.produce_all(30)
    consumer = group_consumer(bootstrap, "idle-readers", client_id="idle-reader")
    consumer.subscribe([TOPIC])
    try:
        wait_for_assignment(consumer, PARTITIONS)
        latest, state = describe_group(bootstrap, "idle-readers")
        earliest, _ = describe_group(bootstrap, "idle-readers", "--reset", "earliest")
    finally:
        consumer.close()
    assert [(r.partition, r.current_offset, r.log_end_offset, r.lag) for r in latest] == [
        (p, None, 10, 0) for p in range(PARTITIONS)
    ]
    assert [(r.partition, r.current_offset, r.log_end_offset, r.lag) for r in earliest] == [
        (p, None, 10, 10) for p in range(PARTITIONS)
    ]
    assert all(row.client_id == "idle-reader" for row in latest)
    assert "Partitions without a committed offset count lag from --reset latest." in state


def test_errors_are_one_line_and_exit_non_zero(group_broker: BrokerProcess) -> None:
    bootstrap = group_broker.bootstrap
    unknown = run_brook("groups", "describe", "no-such-group", "--bootstrap", bootstrap)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == (
        "brook: consumer group 'no-such-group' does not exist (its coordinator, broker 0, "
        "describes it as Dead)\n"
    )
    # A dead address first in the list is passed over; then none that answers at all.
    listed = run_brook("groups", "list", "--bootstrap", f"127.0.0.1:1,{bootstrap}")
    assert listed.returncode == 0, listed.stderr
    unreachable = run_brook("groups", "list", "--bootstrap", "127.0.0.1:1")
    assert (unreachable.returncode, unreachable.stdout) == (1, "")
    assert unreachable.stderr.startswith("brook: no broker answered ApiVersions: cannot connect")
    assert unreachable.stderr.count("\n") == 1
