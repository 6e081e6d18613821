"""The active controller frozen with SIGSTOP for 5 s, again and again, under an acks=all
idempotent producer and a stream of metadata changes: nothing acknowledged is lost, every
broker ends up holding the same metadata (equal applied index and state digest in
``/metrics``), and no broker logs at level critical.

The metadata changes (topic config updates, several a second) keep the Raft leader
appending while the paused member catches up, which is when it used to receive entries it
already held and delete them ("truncating already-applied log entries ... state machine
may have diverged").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from .brokers import scrape
from .clients import create_topic
from .cluster import Cluster, SequenceProducer, check_acknowledged, read_back
from .conftest import StartCluster

TOPIC = "paused-controller"
PARTITIONS = 3
PAUSES = 3
PAUSE_SECONDS = 5.0
CHURN_TOPIC = "metadata-churn"
AGREEMENT_TIMEOUT_S = 30.0


class MetadataChurn:
    """Changes ``retention.ms`` of a topic every ``interval`` seconds from a thread, each
    change one metadata command; failures (while the controller is paused) are counted."""

    def __init__(self, bootstrap: str, topic: str, interval: float = 0.05) -> None:
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._topic = topic
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-churn", daemon=True)
        self.changed = self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            value = str(3_600_000 + self.changed + self.failed)
            entry = ConfigEntry("retention.ms", value, incremental_operation=AlterConfigOpType.SET)
            resource = ConfigResource("topic", self._topic, incremental_configs=[entry])
            try:
                self._admin.incremental_alter_configs([resource])[resource].result(timeout=10)
                self.changed += 1
            except KafkaException:
                self.failed += 1


def metadata_of(cluster: Cluster) -> dict[int, tuple[int, int]]:
    """(applied index, state digest) of each broker, as its /metrics says."""
    found = {}
    for broker in cluster.brokers:
        samples = {
            sample.name: int(sample.value)
            for sample in scrape(f"http://{broker.http_address}/metrics")
            if sample.name in ("brook_metadata_applied_index", "brook_metadata_state_digest")
        }
        found[broker.node_id] = (
            samples["brook_metadata_applied_index"],
            samples["brook_metadata_state_digest"],
        )
    return found


def wait_for_equal_applied_index(cluster: Cluster) -> dict[int, tuple[int, int]]:
    """Until every broker has applied the same last entry (bounded); their metadata then."""
    deadline = time.monotonic() + AGREEMENT_TIMEOUT_S
    while True:
        found = metadata_of(cluster)
        if len({index for index, _ in found.values()}) == 1:
            return found
        assert time.monotonic() < deadline, f"applied indexes still differ: {found}"
        time.sleep(0.2)


def critical_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "level=critical" in line or "diverged" in line
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_paused_controller_leaves_every_broker_with_the_same_metadata(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    create_topic(
        cluster.bootstrap, TOPIC, PARTITIONS, {"min.insync.replicas": "2"}, replication_factor=3
    )
    create_topic(cluster.bootstrap, CHURN_TOPIC, 1, replication_factor=3)
    cluster.wait_for_full_isr(TOPIC, PARTITIONS)
    producer = SequenceProducer(
        cluster.bootstrap,
        TOPIC,
        range(PARTITIONS),
        {"enable.idempotence": True, "max.in.flight.requests.per.connection": 5},
    )
    churn = MetadataChurn(cluster.bootstrap, CHURN_TOPIC)
    producer.run_in_background(per_second=500)
    churn.start()
    paused = []
    try:
        for _ in range(PAUSES):
            time.sleep(1.5)
            controller = cluster.active_controller()
            paused.append(controller)
            cluster[controller].pause()
            time.sleep(PAUSE_SECONDS)
            cluster[controller].resume()
            cluster.wait_for_full_isr(TOPIC, PARTITIONS)
        time.sleep(2.0)  # go on producing and changing metadata for a while
    finally:
        churn.stop()
        producer.stop()
    print(
        f"paused controllers {paused}; {producer.sent} records sent, "
        f"{len(producer.acked)} acknowledged; {churn.changed} metadata changes "
        f"({churn.failed} refused while the controller was paused)"
    )

    assert not producer.failed, f"writes failed: {producer.failed}"
    check_acknowledged(producer.acked, read_back(cluster.bootstrap, TOPIC, range(PARTITIONS)))
    metadata = wait_for_equal_applied_index(cluster)
    assert len(set(metadata.values())) == 1, f"brokers hold different metadata: {metadata}"
    critical = {broker.node_id: critical_lines(broker.log_path) for broker in cluster.brokers}
    assert not any(critical.values()), f"critical log lines: {critical}"
