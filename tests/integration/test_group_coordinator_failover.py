"""Coordinator failover: ``kill -9`` the broker that coordinates a group. The group's
committed offsets live in the replicated ``__consumer_offsets`` topic, so the broker that
takes over its partition answers OffsetFetch with exactly them, and a consumer that joins
the group again resumes from them: nothing below them is delivered again, nothing after
them is skipped."""

from __future__ import annotations

import asyncio
import time

import confluent_kafka
from brook_client.admin import KafkaAdmin
from brook_client.group_admin import GroupDescription
from brook_client.lag import TopicPartition

from .brokers import KafkaConnection
from .clients import create_topic
from .cluster import SequenceProducer
from .conftest import StartCluster
from .groups import (
    GROUP_BROKER_ARGS,
    committed,
    describe_group,
    find_coordinator,
    group_consumer,
    wait_for_assignment,
)

TOPIC = "orders"
PARTITIONS = 3
RECORDS = 300
GROUP = "failover-readers"
COMMITS = {0: 23, 1: 41, 2: 67}
"""Committed offsets in the middle of each partition (100 records each)."""
SESSION_TIMEOUT_S = 6.0
"""The consumers' ``session.timeout.ms`` (``groups.group_consumer``)."""


async def read_group(bootstrap: str) -> tuple[dict[TopicPartition, int], GroupDescription]:
    """OffsetFetch and DescribeGroups through whichever broker coordinates the group now
    (found again for as long as the failover takes, up to 30 s)."""
    async with KafkaAdmin(bootstrap, retry_timeout=30.0) as reader:
        return await reader.committed_offsets(GROUP), await reader.describe_group(GROUP)


def test_committed_offsets_survive_a_coordinator_kill(start_cluster: StartCluster) -> None:
    cluster = start_cluster(3, *GROUP_BROKER_ARGS, "--offsets-topic-num-partitions", "6")
    create_topic(cluster.bootstrap, TOPIC, PARTITIONS, replication_factor=3)
    producer = SequenceProducer(cluster.bootstrap, TOPIC, range(PARTITIONS))
    producer.produce_all(RECORDS)
    ends = {
        partition: 1
        + max(ack.offset for ack in producer.acked.values() if ack.partition == partition)
        for partition in range(PARTITIONS)
    }
    assert ends == {partition: RECORDS // PARTITIONS for partition in range(PARTITIONS)}

    consumer = group_consumer(cluster.bootstrap, GROUP, auto_offset_reset="earliest")
    consumer.subscribe([TOPIC])
    try:
        wait_for_assignment(consumer, PARTITIONS)
        consumer.commit(
            offsets=[confluent_kafka.TopicPartition(TOPIC, p, o) for p, o in COMMITS.items()],
            asynchronous=False,
        )
        assert committed(consumer, TOPIC, range(PARTITIONS)) == COMMITS
    finally:
        consumer.close()  # leaves the group: it is Empty, with its offsets

    with KafkaConnection(cluster[0].address) as connection:
        error, coordinator = find_coordinator(connection, GROUP)
    assert (error, coordinator in range(3)) == (0, True)
    survivors = [node for node in range(3) if node != coordinator]
    killed_at = time.monotonic()
    cluster[coordinator].kill9()

    # (a) The new coordinator answers OffsetFetch with exactly the committed offsets.
    offsets, description = asyncio.run(read_group(cluster.bootstrap))
    failover_s = time.monotonic() - killed_at
    assert description.coordinator in survivors
    assert offsets == {(TOPIC, partition): offset for partition, offset in COMMITS.items()}
    # The leave is answered before the record of the group gone Empty is replicated (as in
    # Kafka): a kill that beats it leaves the new coordinator the member, which it expires
    # after the session timeout.
    deadline = time.monotonic() + SESSION_TIMEOUT_S + 10
    while (description.state, description.members) != ("Empty", ()):
        assert time.monotonic() < deadline, f"not Empty after the session timeout: {description}"
        time.sleep(0.5)
        offsets, description = asyncio.run(read_group(cluster.bootstrap))
    assert offsets == {(TOPIC, partition): offset for partition, offset in COMMITS.items()}
    print(f"group Empty at its new coordinator {time.monotonic() - killed_at:.1f} s after the kill")
    with KafkaConnection(cluster[survivors[0]].address) as connection:
        assert find_coordinator(connection, GROUP) == (0, description.coordinator)
    rows, _ = describe_group(cluster.bootstrap, GROUP)
    assert [(row.partition, row.current_offset, row.log_end_offset, row.lag) for row in rows] == [
        (p, COMMITS[p], ends[p], ends[p] - COMMITS[p]) for p in range(PARTITIONS)
    ]
    print(
        f"coordinator broker {coordinator} killed; broker {description.coordinator} served "
        f"the offsets after {failover_s:.1f} s"
    )

    # (b) A consumer joining the group again resumes from them. With no reset policy, a
    # partition without its committed offset would be an error, not a silent restart.
    resumed = group_consumer(cluster.bootstrap_of(survivors), GROUP, auto_offset_reset="error")
    resumed.subscribe([TOPIC])
    received: dict[int, list[int]] = {partition: [] for partition in range(PARTITIONS)}
    deadline = time.monotonic() + 60
    try:
        while any(len(received[p]) < ends[p] - COMMITS[p] for p in range(PARTITIONS)):
            assert time.monotonic() < deadline, f"received only {received}"
            for message in resumed.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, f"consumer error: {message.error()}"
                received[message.partition()].append(message.offset())
        time.sleep(0.5)
        extra = resumed.consume(num_messages=1000, timeout=0.5)
    finally:
        resumed.close()
    assert extra == [], "records beyond the log end"
    for partition, offsets_received in received.items():
        assert offsets_received == list(range(COMMITS[partition], ends[partition])), partition
