"""DeleteRecords on a three-broker cluster, through the admin clients of confluent-kafka
and kafka-python: consumers from the earliest offset start where the records were
deleted, on every replica and after leaders change, and the refusals carry Kafka's
error codes."""

from __future__ import annotations

import time

import confluent_kafka
import kafka.errors
import pytest
from brook_broker.storage.log import LOG_START_OFFSET_FILE
from confluent_kafka.admin import AdminClient
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from .brokers import KafkaConnection, wait_until
from .clients import ConfluentDriver, Message, create_topic, fetch, watermarks
from .cluster import Cluster
from .conftest import StartCluster

TOPIC = "deletions"
RECORDS = 100
DELETED = 40


def produce(bootstrap: str, topic: str, count: int) -> None:
    deliveries = ConfluentDriver().produce(
        bootstrap,
        topic,
        [Message(0, b"k%d" % number, b"v%d" % number) for number in range(count)],
        "none",
    )
    assert [delivery.offset for delivery in deliveries] == list(range(count))


def offsets_from_earliest(bootstrap: str, count: int) -> list[int]:
    """The offsets a consumer reads from the beginning of the partition."""
    return [record.offset for record in ConfluentDriver().consume(bootstrap, TOPIC, [0], count)]


def watermarks_after_failover(bootstrap: str) -> tuple[int, int]:
    """(log start offset, high watermark), once the client has found the new leader (its
    first tries may still go to the broker that was killed)."""

    def ask() -> tuple[int, int] | None:
        try:
            return watermarks(bootstrap, TOPIC)
        except confluent_kafka.KafkaException:
            return None

    return wait_until(ask, 30, interval=0.2, message="ListOffsets answered by the new leader")


def stored_log_start(cluster: Cluster, node_id: int) -> int:
    """The log start offset a replica has checkpointed in its partition directory."""
    text = (cluster[node_id].partition_dir(TOPIC) / LOG_START_OFFSET_FILE).read_text()
    return int(text.split()[1])


def delete_with_confluent(bootstrap: str, offset: int) -> int:
    """DeleteRecords through confluent-kafka; returns the answered low watermark."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partition = confluent_kafka.TopicPartition(TOPIC, 0, offset)
    futures = admin.delete_records([partition], request_timeout=20, operation_timeout=10)
    return int(futures[partition].result(timeout=30).low_watermark)


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    cluster = start_cluster(3)
    create_topic(cluster.bootstrap, TOPIC, replication_factor=3)
    cluster.wait_for_full_isr(TOPIC, 1)
    produce(cluster.bootstrap, TOPIC, RECORDS)
    return cluster


@pytest.mark.timeout(240)
def test_deleted_records_are_gone_on_every_replica_and_after_leader_changes(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    assert delete_with_confluent(cluster.bootstrap, DELETED) == DELETED
    print(f"DeleteRecords answered in {(time.monotonic() - started) * 1000:.0f} ms")
    # The answer waits for the followers in the ISR: each has moved its log start too.
    assert [stored_log_start(cluster, node) for node in range(3)] == [DELETED] * 3
    assert watermarks(cluster.bootstrap, TOPIC) == (DELETED, RECORDS)
    assert offsets_from_earliest(cluster.bootstrap, RECORDS - DELETED) == list(
        range(DELETED, RECORDS)
    )
    leader = cluster.wait_for_leader(TOPIC, 0)
    with KafkaConnection(cluster[leader].address) as connection:
        assert fetch(connection, TOPIC, 0, DELETED - 1).error_code == 1  # OFFSET_OUT_OF_RANGE

    # Two changes of leader: each new leader starts the log where the first one did.
    for _ in range(2):
        cluster[leader].kill9()
        leader = cluster.wait_for_leader(TOPIC, 0, excluding=[leader])
        live = [broker.node_id for broker in cluster.live()]
        assert watermarks_after_failover(cluster.bootstrap_of(live)) == (DELETED, RECORDS)
        assert offsets_from_earliest(cluster.bootstrap_of(live), RECORDS - DELETED) == list(
            range(DELETED, RECORDS)
        )
        stopped = next(broker.node_id for broker in cluster.brokers if not broker.running)
        cluster.restart(stopped)
        cluster.wait_for_full_isr(TOPIC, 1)

    # -1 deletes everything below the high watermark.
    assert delete_with_confluent(cluster.bootstrap, confluent_kafka.OFFSET_END) == RECORDS
    assert watermarks(cluster.bootstrap, TOPIC) == (RECORDS, RECORDS)
    assert [stored_log_start(cluster, node) for node in range(3)] == [RECORDS] * 3


@pytest.mark.timeout(180)
def test_refusals_carry_kafkas_error_codes(cluster: Cluster) -> None:
    create_topic(
        cluster.bootstrap, "keyed", replication_factor=3, config={"cleanup.policy": "compact"}
    )
    # A committed offset makes the broker create its internal topic __consumer_offsets.
    committer = confluent_kafka.Consumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": "deleters"}
    )
    try:
        committer.commit(offsets=[confluent_kafka.TopicPartition(TOPIC, 0, 10)], asynchronous=False)
    finally:
        committer.close()
    leader = cluster.wait_for_leader(TOPIC, 0)
    follower = next(node for node in range(3) if node != leader)
    partition = TopicPartition(TOPIC, 0)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=20_000)
    try:
        with pytest.raises(kafka.errors.OffsetOutOfRangeError):
            admin.delete_records({partition: RECORDS + 1})
        with pytest.raises(kafka.errors.PolicyViolationError):
            admin.delete_records({TopicPartition("keyed", 0): 0})
        with pytest.raises(kafka.errors.NotLeaderForPartitionError):
            admin.delete_records({partition: 10}, partition_leader_id=follower)
        with pytest.raises(kafka.errors.UnknownTopicOrPartitionError):
            admin.delete_records({TopicPartition("nowhere", 0): 0}, partition_leader_id=leader)
        with pytest.raises(kafka.errors.InvalidTopicError):
            admin.delete_records({TopicPartition("__consumer_offsets", 0): 0})
        assert watermarks(cluster.bootstrap, TOPIC) == (0, RECORDS)  # nothing was deleted
        answer = admin.delete_records({partition: 10})
        assert answer[partition]["low_watermark"] == 10
    finally:
        admin.close()
    assert watermarks(cluster.bootstrap, TOPIC) == (10, RECORDS)
