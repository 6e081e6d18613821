"""Compacted topics with real clients: the cleaner bounds a changelog and __consumer_offsets.

A producer writes 1,000 keys 100 times each to a compacted topic replicated on three
brokers while a consumer reads it from the start over and over; once cleaned, every
replica holds the latest record of each key and nothing else, a replica rebuilt from
nothing copies the compacted log (offsets with gaps) from its leader, and the reader saw
no error and no offset going backwards. A consumer group's 200,000 offset commits leave
``__consumer_offsets`` within a bound of its segment size.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import confluent_kafka
import pytest
from brook_broker.storage.records import iter_records

from .brokers import BrokerProcess, wait_until
from .clients import create_topic, watermarks
from .cluster import Cluster
from .conftest import StartBroker, StartCluster

KEYS = 1_000
ROUNDS = 100
COMMITS = 200_000
COMMITS_IN_FLIGHT = 1_000
OFFSETS_SEGMENT_BYTES = 256 * 1024
CLEANER_FLAGS = (
    "--log-cleaner-backoff-ms", "200",
    "--log-retention-check-interval-ms", "200",  # segment.ms rolls are checked this often
)  # fmt: skip
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": str(64 * 1024),
    "segment.ms": "3000",
    "min.cleanable.dirty.ratio": "0.01",
}

pytestmark = pytest.mark.slow


def stored_records(cluster: Cluster, node_id: int, topic: str) -> list[tuple[int, bytes, bytes]]:
    """``(offset, key, value)`` of every record in a replica's segment files."""
    records = []
    for data, _ in cluster.stored_batches(node_id, topic, 0):
        records += [(offset, key or b"", value or b"") for offset, key, value in iter_records(data)]
    return records


@dataclass
class Reader:
    """Reads a topic from the start to its high watermark again and again."""

    bootstrap: str
    topic: str
    errors: list[str] = field(default_factory=list)
    backwards: list[tuple[int, int]] = field(default_factory=list)
    passes: int = 0
    records: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "compaction-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            while not self.stop.is_set():
                self._read_once(consumer)
        except Exception as error:  # a dead reader must fail the test, not go quiet
            self.errors.append(f"reader died: {error!r}")
        finally:
            consumer.close()

    def _read_once(self, consumer: confluent_kafka.Consumer) -> None:
        try:
            _, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(self.topic, 0), timeout=5
            )
        except confluent_kafka.KafkaException:  # no leader known yet: not a read error
            time.sleep(0.2)
            return
        consumer.assign(
            [confluent_kafka.TopicPartition(self.topic, 0, confluent_kafka.OFFSET_BEGINNING)]
        )
        last = -1
        deadline = time.monotonic() + 60
        while last < high - 1 and time.monotonic() < deadline and not self.stop.is_set():
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                self.errors.append(str(message.error()))
                continue
            offset = message.offset()
            if offset <= last:
                self.backwards.append((last, offset))
            last = offset
            self.records += 1
        self.passes += 1


@contextmanager
def reading(bootstrap: str, topic: str) -> Iterator[Reader]:
    reader = Reader(bootstrap, topic)
    thread = threading.Thread(target=reader.run, name="compacted reader", daemon=True)
    thread.start()
    try:
        yield reader
    finally:
        reader.stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the reader did not stop"


def produce_rounds(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """1,000 keys, 100 values each; returns the latest value of each key."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    failures: list[str] = []

    def report(error: confluent_kafka.KafkaError | None, _: object) -> None:
        if error is not None:
            failures.append(str(error))

    latest: dict[bytes, bytes] = {}
    for round_ in range(ROUNDS):
        for key in range(KEYS):
            name, value = b"key-%d" % key, b"value-%d-%d" % (key, round_)
            producer.produce(topic, value, name, partition=0, on_delivery=report)
            latest[name] = value
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []
    return latest


def test_a_compacted_topic_keeps_the_latest_record_of_each_key_on_every_replica(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3, *CLEANER_FLAGS)
    create_topic(cluster.bootstrap, "table", config=COMPACTED, replication_factor=3)
    with reading(cluster.bootstrap, "table") as reader:
        latest = produce_rounds(cluster.bootstrap, "table")
        _, high = watermarks(cluster.bootstrap, "table")
        assert high == KEYS * ROUNDS

        def compacted(node_id: int) -> list[tuple[int, bytes, bytes]] | None:
            records = stored_records(cluster, node_id, "table")
            return records if len(records) == KEYS else None

        for node_id in (0, 1, 2):
            wait_until(
                lambda n=node_id: compacted(n), timeout=90, message=f"broker {node_id} compacted"
            )
        wait_until(lambda: reader.passes >= 3 or reader.errors, timeout=60, message="three reads")
    assert reader.errors == []
    assert reader.backwards == []
    expected = {key: value for key, value in latest.items()}
    for node_id in (0, 1, 2):
        records = stored_records(cluster, node_id, "table")
        assert {key: value for _, key, value in records} == expected
        offsets = [offset for offset, _, _ in records]
        assert offsets == sorted(offsets) and offsets[-1] == KEYS * ROUNDS - 1

    # A replica rebuilt from nothing copies the compacted log, gaps and all.
    leader = cluster.partition("table", 0).leader
    follower = next(node for node in (0, 1, 2) if node != leader)
    cluster[follower].stop()
    shutil.rmtree(cluster[follower].partition_dir("table"))
    cluster[follower].start()
    cluster.wait_for_full_isr("table", 1)
    rebuilt = stored_records(cluster, follower, "table")
    assert {key: value for _, key, value in rebuilt} == expected
    assert len(rebuilt) <= KEYS * 2  # its own cleaner may not have run yet: at most a copy
    assert cluster.metric(leader, "brook_log_cleaner_runs_total") >= 1
    assert cluster.metric(leader, "brook_log_cleaner_uncleanable_partitions") == 0


def offsets_topic_bytes(broker: BrokerProcess) -> int:
    return sum(path.stat().st_size for path in broker.segments("__consumer_offsets"))


@pytest.mark.timeout(600)
def test_offset_commits_leave_consumer_offsets_bounded(start_broker: StartBroker) -> None:
    """The bound once the cleaner has caught up: the active segment, one sealed segment
    waiting for the cleaner, and the cleaned records of the live keys (one group, one
    partition): 2 * segment.bytes + 64 KiB. While commits pour in (thousands a second)
    a few more sealed segments wait for their run: at most 6 * segment.bytes + 64 KiB.
    Neither depends on the number of commits; uncompacted, they would take about 20 MB."""
    broker = start_broker(
        *CLEANER_FLAGS,
        "--offsets-topic-num-partitions", "1",
        "--offsets-topic-replication-factor", "1",
        "--offsets-topic-segment-bytes", str(OFFSETS_SEGMENT_BYTES),
    )  # fmt: skip
    bound = 2 * OFFSETS_SEGMENT_BYTES + 64 * 1024
    peak_bound = 6 * OFFSETS_SEGMENT_BYTES + 64 * 1024
    create_topic(broker.bootstrap, "orders")
    failures: list[str] = []
    answered = 0

    def on_commit(error: confluent_kafka.KafkaError | None, _: object) -> None:
        nonlocal answered
        answered += 1
        if error is not None:
            failures.append(str(error))

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "committer",
            "enable.auto.commit": False,
            "on_commit": on_commit,
        }
    )
    largest = 0
    try:
        for offset in range(1, COMMITS + 1):
            consumer.commit(
                offsets=[confluent_kafka.TopicPartition("orders", 0, offset)], asynchronous=True
            )
            # Unanswered commits pile up in the client (gigabytes at 200,000): keep a window.
            while offset - answered >= COMMITS_IN_FLIGHT:
                consumer.poll(0.01)
            if offset % 2_000 == 0:
                largest = max(largest, offsets_topic_bytes(broker))
        consumer.commit(
            offsets=[confluent_kafka.TopicPartition("orders", 0, COMMITS)], asynchronous=False
        )
        committed = consumer.committed([confluent_kafka.TopicPartition("orders", 0)], timeout=10)
    finally:
        consumer.close()
    assert failures == []
    assert committed[0].offset == COMMITS
    uncompacted = COMMITS * 100  # an offset commit record takes about 100 bytes
    assert largest <= peak_bound < uncompacted // 10, (largest, peak_bound)
    wait_until(
        lambda: offsets_topic_bytes(broker) <= bound, timeout=60, message=f"within {bound} bytes"
    )
    assert broker.metric("brook_log_cleaner_runs_total") >= 2  # it kept cleaning as commits came
