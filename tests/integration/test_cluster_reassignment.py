"""A partition moved from brokers {0, 1, 2} to {1, 2, 3} while a producer writes to it
with acks=all: every write is acknowledged and every acknowledged record stays."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from .brokers import wait_until
from .clients import create_topic
from .cluster import SequenceProducer, check_acknowledged, read_back
from .conftest import StartCluster

TOPIC = "moving"


@pytest.mark.timeout(240)
def test_reassignment_while_producing_loses_nothing(start_cluster: StartCluster) -> None:
    cluster = start_cluster(4)
    create_topic(
        cluster.bootstrap, TOPIC, config={"min.insync.replicas": "2"}, replicas=[[0, 1, 2]]
    )
    cluster.wait_for_full_isr(TOPIC, 1)
    producer = SequenceProducer(cluster.bootstrap, TOPIC, [0])
    producer.run_in_background(per_second=1000)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=15_000)
    try:
        time.sleep(2.0)
        partition = TopicPartition(TOPIC, 0)
        answer = admin.alter_partition_reassignments({partition: [1, 2, 3]}, timeout_ms=10_000)
        assert answer == {partition: None}, answer
        started = time.monotonic()
        cluster.wait_for_isr(
            TOPIC,
            lambda p: sorted(p.replicas) == [1, 2, 3] and sorted(p.isr) == [1, 2, 3],
            [0],
            "replicas and ISR {1, 2, 3}",
            timeout=60,
        )
        wait_until(
            lambda: admin.list_partition_reassignments([partition]) == {},
            timeout=30,
            message="no reassignment pending",
        )
        moved_after = time.monotonic() - started
        time.sleep(2.0)
    finally:
        admin.close()
        producer.stop()
    print(
        f"reassigned to {{1, 2, 3}} in {moved_after:.2f} s; {len(producer.acked)} records "
        f"acknowledged, {len(producer.failed)} failed"
    )
    assert cluster.partition(TOPIC, 0).leader in (1, 2, 3)
    assert not producer.failed, f"writes failed during the reassignment: {producer.failed}"
    check_acknowledged(producer.acked, read_back(cluster.bootstrap, TOPIC, [0]))
    wait_until(
        lambda: not cluster[0].partition_dir(TOPIC, 0).exists(),
        timeout=10,
        message="broker 0 deletes the replica it no longer hosts",
    )
