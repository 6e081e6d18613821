"""Three brokers, RF 3, min ISR 2, and one failure at a time: two brokers killed, a
follower frozen with SIGSTOP, the active controller killed."""

from __future__ import annotations

import time

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

from .clients import create_topic
from .cluster import Cluster, SequenceProducer, check_acknowledged, read_back
from .conftest import StartCluster

MIN_ISR_2 = {"min.insync.replicas": "2"}


def create_replicated_topic(cluster: Cluster, topic: str, partitions: int) -> None:
    create_topic(cluster.bootstrap, topic, partitions, MIN_ISR_2, replication_factor=3)
    cluster.wait_for_full_isr(topic, partitions)


def disk_log_end_offset(cluster: Cluster, node_id: int, topic: str, partition: int) -> int:
    batches = cluster.stored_batches(node_id, topic, partition)
    return batches[-1][1].next_offset if batches else 0


# --- two of three brokers killed ------------------------------------------------------

LAG_MS = 2000


@pytest.mark.timeout(240)
def test_two_brokers_killed_acks_all_refused_then_resumes(start_cluster: StartCluster) -> None:
    topic, partitions = "two-down", 3
    cluster = start_cluster(3, "--replica-lag-time-max-ms", str(LAG_MS))
    create_replicated_topic(cluster, topic, partitions)
    before = SequenceProducer(cluster.bootstrap, topic, range(partitions))
    before.produce_all(300)
    assert not before.failed, f"writes failed with every broker up: {before.failed}"

    survivor = cluster.partition(topic, 0).leader
    killed = [node for node in range(3) if node != survivor]
    for node in killed:
        cluster[node].kill9()
    # Once the followers' last fetch is older than replica.lag.time.max.ms, the leader
    # itself refuses acks=all writes (no controller is left to shrink the ISR).
    time.sleep(LAG_MS / 1000 + 1.5)
    view = cluster.view(topic, via=survivor)
    led_by_survivor = [p for p, found in view.topics[topic].items() if found.leader == survivor]
    assert 0 in led_by_survivor
    ends = {p: disk_log_end_offset(cluster, survivor, topic, p) for p in range(partitions)}

    refused = SequenceProducer(
        cluster[survivor].bootstrap,
        topic,
        range(partitions),
        {"message.send.max.retries": 0, "message.timeout.ms": 8000, "request.timeout.ms": 5000},
        first_sequence=before.next_sequence,
    )
    refused.produce_all(30)
    assert not refused.acked, f"acknowledged with two of three brokers down: {refused.acked}"
    for sequence, partition in refused.sent_to.items():
        if partition in led_by_survivor:
            assert refused.failed[sequence].code() == confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS
    assert {p: disk_log_end_offset(cluster, survivor, topic, p) for p in range(partitions)} == ends

    for node in killed:
        cluster[node].launch()
    for node in killed:
        cluster[node].wait_ready()
    after = SequenceProducer(
        cluster.bootstrap, topic, range(partitions), first_sequence=refused.next_sequence
    )
    after.produce_all(300)
    assert not after.failed, f"writes failed after the restart: {after.failed}"

    log = read_back(cluster.bootstrap, topic, range(partitions))
    check_acknowledged({**before.acked, **after.acked}, log)
    stored = {sequence for records in log.values() for _, sequence in records}
    assert not stored & set(refused.sent_to), "a refused write was stored"


# --- a frozen follower ----------------------------------------------------------------

FROZEN_LAG_MS = 3000


@pytest.mark.timeout(180)
def test_frozen_follower_leaves_the_isr_and_rejoins(start_cluster: StartCluster) -> None:
    """The session timeout is long, so the controller does not fence the frozen broker:
    it is the leader that sees the follower fall behind and shrinks the ISR."""
    topic, partitions = "frozen", 3
    cluster = start_cluster(
        3,
        "--replica-lag-time-max-ms", str(FROZEN_LAG_MS),
        "--broker-session-timeout-ms", "60000",
    )  # fmt: skip
    create_replicated_topic(cluster, topic, partitions)
    controller = cluster.active_controller()
    found = cluster.partition(topic, 0)
    follower = next(r for r in found.replicas if r not in (found.leader, controller))
    followed = [
        p
        for p, partition in cluster.view(topic).topics[topic].items()
        if partition.leader != follower
    ]
    leaders = {cluster.partition(topic, p).leader for p in followed}
    shrinks = sum(cluster.metric(node, "brook_isr_shrinks_total") for node in leaders)
    expands = sum(cluster.metric(node, "brook_isr_expands_total") for node in leaders)

    producer = SequenceProducer(cluster.bootstrap, topic, followed)
    producer.run_in_background(per_second=500)
    try:
        time.sleep(1.0)
        cluster[follower].pause()
        paused_at = time.monotonic()
        cluster.wait_for_isr(
            topic,
            lambda p: follower not in p.isr,
            followed,
            f"broker {follower} out of the ISR of {followed}",
        )
        left_after = time.monotonic() - paused_at
        under_replicated = sum(
            cluster.metric(node, "brook_under_replicated_partitions") for node in leaders
        )
        cluster[follower].resume()
        resumed_at = time.monotonic()
        cluster.wait_for_isr(
            topic,
            lambda p: follower in p.isr,
            followed,
            f"broker {follower} back in the ISR of {followed}",
        )
        rejoined_after = time.monotonic() - resumed_at
        time.sleep(1.0)
    finally:
        producer.stop()
    print(
        f"broker {follower} left the ISR {left_after:.2f} s after SIGSTOP "
        f"(replica.lag.time.max.ms {FROZEN_LAG_MS}), rejoined {rejoined_after:.2f} s "
        f"after SIGCONT"
    )
    # Kafka checks for lagging followers every replica.lag.time.max.ms / 2.
    assert left_after <= 1.5 * FROZEN_LAG_MS / 1000 + 1.0
    assert not producer.failed, f"writes failed: {producer.failed}"
    check_acknowledged(producer.acked, read_back(cluster.bootstrap, topic, followed))
    assert under_replicated == len(followed)
    after_shrinks = sum(cluster.metric(node, "brook_isr_shrinks_total") for node in leaders)
    after_expands = sum(cluster.metric(node, "brook_isr_expands_total") for node in leaders)
    assert after_shrinks - shrinks >= len(followed)
    assert after_expands - expands >= len(followed)


# --- the active controller killed -----------------------------------------------------


def described_controller(bootstrap: str) -> int:
    """The active controller as DescribeCluster reports it to a real admin client."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return int(admin.describe_cluster(request_timeout=10).result(timeout=15).controller.id)


@pytest.mark.timeout(240)
def test_killed_controller_is_replaced_and_the_cluster_keeps_working(
    start_cluster: StartCluster,
) -> None:
    topic, partitions = "before", 3
    cluster = start_cluster(3)
    create_replicated_topic(cluster, topic, partitions)
    controller = described_controller(cluster.bootstrap)
    assert controller == cluster.active_controller()
    led = [
        p for p, found in cluster.view(topic).topics[topic].items() if found.leader == controller
    ]
    assert cluster.metric(controller, "brook_active_controller") == 1

    cluster[controller].kill9()
    others = [node for node in range(3) if node != controller]
    survivors = cluster.bootstrap_of(others)
    successor = cluster.wait_for(
        lambda view: view.controller_id if view.controller_id in others else None,
        message=f"a controller other than {controller}",
    )
    assert described_controller(survivors) == successor
    assert cluster.metric(successor, "brook_active_controller") == 1
    # The partitions the old controller led got leaders from their ISR.
    for partition in led:
        cluster.wait_for_leader(topic, partition, excluding={controller})
    cluster.wait_for_brokers(set(others))

    create_topic(survivors, "after", 2, MIN_ISR_2, replication_factor=2)
    for partition in range(2):
        cluster.wait_for_leader("after", partition)
    producer = SequenceProducer(survivors, "after", range(2))
    producer.produce_all(100)
    assert not producer.failed

    cluster.restart(controller)
    cluster.wait_for_full_isr(topic, partitions)
    leader = cluster.partition(topic, 0).leader
    staying = [node for node in range(3) if node != leader]
    elections = sum(cluster.metric(node, "brook_leader_elections_total") for node in staying)
    cluster[leader].kill9()
    new_leader = cluster.wait_for_leader(topic, 0, excluding={leader})
    assert sum(cluster.metric(node, "brook_leader_elections_total") for node in staying) > elections
    print(
        f"controller {controller} killed, {successor} took over; then leader {leader} of "
        f"{topic}-0 killed, {new_leader} elected"
    )
    check_acknowledged(producer.acked, read_back(survivors, "after", range(2)))
