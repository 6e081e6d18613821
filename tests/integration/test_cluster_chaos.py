"""Leaders killed with SIGKILL, again and again, under a steady acks=all load: every
acknowledged record survives, at its acknowledged offset and in order."""

from __future__ import annotations

import time

import pytest

from .clients import create_topic
from .cluster import Cluster, SequenceProducer, check_acknowledged, read_back
from .conftest import StartCluster

TOPIC = "chaos"
PARTITIONS = 6
PRODUCE_SECONDS = 35.0
DOWN_SECONDS = 1.0
BETWEEN_KILLS_SECONDS = 2.0


def kill_leaders(cluster: Cluster, until: float) -> list[tuple[int, int, float]]:
    """kill -9 the leader of partition 0, 1, 2, ... in turn, restart it a moment later,
    and wait until every replica is back in the ISR before the next kill (so that at most
    one broker is down at a time: RF 3 with min ISR 2 promises that much). Returns
    (partition, broker, seconds until another broker led the partition) per kill.

    Runs on the main thread: a broker started from a thread would be sent SIGTERM when
    that thread ends (Linux's parent-death signal follows the thread that forked)."""
    kills = []
    partition = 0
    while time.monotonic() < until:
        time.sleep(BETWEEN_KILLS_SECONDS)
        leader = cluster.wait_for_leader(TOPIC, partition)
        cluster[leader].kill9()
        killed_at = time.monotonic()
        cluster.wait_for_leader(TOPIC, partition, excluding={leader})
        kills.append((partition, leader, time.monotonic() - killed_at))
        time.sleep(DOWN_SECONDS)
        cluster.restart(leader)
        cluster.wait_for_full_isr(TOPIC, PARTITIONS)
        partition = (partition + 1) % PARTITIONS
    return kills


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_acknowledged_records_survive_leaders_killed_every_few_seconds(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    create_topic(
        cluster.bootstrap,
        TOPIC,
        PARTITIONS,
        {"min.insync.replicas": "2"},
        replication_factor=3,
    )
    cluster.wait_for_full_isr(TOPIC, PARTITIONS)
    producer = SequenceProducer(cluster.bootstrap, TOPIC, range(PARTITIONS))
    started = time.monotonic()
    producer.run_in_background(per_second=2000)
    try:
        kills = kill_leaders(cluster, until=started + PRODUCE_SECONDS)
    finally:
        producer.stop()
    elapsed = time.monotonic() - started
    failovers = ", ".join(f"p{p}/b{b} {s:.2f}s" for p, b, s in kills)
    print(
        f"chaos: {elapsed:.0f} s, {len(kills)} leaders killed (partition/broker, "
        f"seconds to a new leader: {failovers}); {producer.sent} records sent, "
        f"{len(producer.acked)} acknowledged, {len(producer.failed)} failed"
    )
    log = read_back(cluster.bootstrap, TOPIC, range(PARTITIONS))
    duplicates = check_acknowledged(producer.acked, log)
    print(f"chaos: {sum(map(len, log.values()))} records in the log, {duplicates} duplicates")
    assert len(kills) >= 5, f"only {len(kills)} leaders were killed"
    assert len(producer.acked) > producer.sent // 2, "most records should be acknowledged"
