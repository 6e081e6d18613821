"""Replicated produce throughput and leader failover time of a three-broker cluster.

    python bench/replicated.py [--records 1000000] [--record-bytes 100] [--partitions 3]
                               [--failovers 3]

Starts three brokers the way ``brook local up --brokers 3`` does (every broker a voter
of the metadata quorum, default settings otherwise), then measures:

* produce: kcat sends pre-generated records in large batches with acks=all to a topic
  with replication factor 3 and min.insync.replicas 2; records/s, MB/s, and the CPU
  seconds all brokers together (and kcat) spent per million records;
* failover: a producer writes small acks=all batches to a one-partition topic (RF 3,
  min ISR 2) in a loop; the partition's leader is killed with SIGKILL, and the time from
  the kill until a batch sent after it is acknowledged is taken. The killed broker is
  restarted and back in the ISR before the next round.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import confluent_kafka
from brook_cli.local import (
    BrokerFailed,
    BrokerProcess,
    BrokerSpec,
    bootstrap_servers,
    plan_cluster,
    stop_all,
)
from confluent_kafka.admin import AdminClient, NewTopic
from produce_consume import (
    PRODUCER_SETTINGS,
    children_cpu_seconds,
    kcat_settings,
    process_cpu_seconds,
    workspace,
)

from tests.integration.brokers import free_cluster_port

BROKERS = 3
GOALS = {"produce": 600_000, "failover": 2.0}
READY_TIMEOUT_S = 60.0
FAILOVER_TIMEOUT_S = 30.0
TOPIC_CONFIG = {"min.insync.replicas": "2"}


class Cluster:
    """Three broker processes on consecutive free ports, as ``brook local up`` plans them."""

    def __init__(self, root: Path, logs: IO[bytes]) -> None:
        self.logs = logs
        self.specs = self._plan(root)
        self.brokers = [BrokerProcess(spec, stderr=logs) for spec in self.specs]
        self.bootstrap = bootstrap_servers(self.specs)

    @staticmethod
    def _plan(root: Path) -> list[BrokerSpec]:
        return plan_cluster(
            brokers=BROKERS, data_dir=root, host="127.0.0.1", port=free_cluster_port(BROKERS)
        )

    def start(self) -> None:
        for broker in self.brokers:
            broker.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for broker in self.brokers:
            broker.wait_ready(max(1.0, deadline - time.monotonic()))

    def restart(self, node_id: int) -> None:
        broker = BrokerProcess(self.specs[node_id], stderr=self.logs)
        self.brokers[node_id] = broker
        broker.start()
        broker.wait_ready(READY_TIMEOUT_S)

    def live_bootstrap(self) -> str:
        return bootstrap_servers([b.spec for b in self.brokers if b.is_running()])

    def check_running(self, during: str) -> None:
        for broker in self.brokers:
            code = broker.exit_code()
            if code is not None:
                raise BrokerFailed(f"broker {broker.spec.node_id} exited ({code}) during {during}")

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(broker.pid) for broker in self.brokers)

    def metadata(self, topic: str) -> confluent_kafka.admin.ClusterMetadata:
        admin = AdminClient({"bootstrap.servers": self.live_bootstrap()})
        return admin.list_topics(topic, timeout=10)

    def partition(self, topic: str, partition: int) -> confluent_kafka.admin.PartitionMetadata:
        return self.metadata(topic).topics[topic].partitions[partition]

    def wait(
        self, predicate: Callable[[], object], what: str, timeout: float = FAILOVER_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def create_topic(self, name: str, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = NewTopic(name, partitions, BROKERS, config=TOPIC_CONFIG)
        admin.create_topics([topic], request_timeout=15)[name].result(timeout=30)
        for index in range(partitions):
            self.wait(
                lambda index=index: self.fully_replicated(name, index),
                f"{name}-{index} to have every replica in sync",
            )

    def fully_replicated(self, topic: str, partition: int) -> bool:
        found = self.partition(topic, partition)
        return found.leader >= 0 and sorted(found.isrs) == sorted(found.replicas)


# --- produce throughput ------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    records: int
    seconds: float
    broker_cpu: float
    client_cpu: float


def produce(
    cluster: Cluster, kcat: str, topic: str, records_path: Path, records: int, timeout: float
) -> Throughput:
    """kcat sends every line of ``records_path`` with acks=all and exits once all are
    acknowledged; the partitions' high watermarks must then add up to ``records``."""
    command = [
        kcat, "-P", "-b", cluster.bootstrap, "-t", topic,
        *kcat_settings((*PRODUCER_SETTINGS, "acks=all")),
    ]  # fmt: skip
    broker_before = cluster.cpu_seconds()
    client_before = children_cpu_seconds()
    started = time.perf_counter()
    with records_path.open("rb") as lines:
        subprocess.run(command, stdin=lines, stdout=subprocess.DEVNULL, check=True, timeout=timeout)
    seconds = time.perf_counter() - started
    cluster.check_running("produce")
    result = Throughput(
        records=records,
        seconds=seconds,
        broker_cpu=cluster.cpu_seconds() - broker_before,
        client_cpu=children_cpu_seconds() - client_before,
    )
    stored = high_watermarks(cluster.bootstrap, topic)
    if stored != records:
        raise RuntimeError(f"{topic}: high watermarks add up to {stored}, expected {records}")
    return result


def high_watermarks(bootstrap: str, topic: str) -> int:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, index), timeout=10, cached=False
            )[1]
            for index in partitions
        )
    finally:
        consumer.close()


# --- failover ----------------------------------------------------------------------------


class BatchLoop:
    """Writes batches of ``size`` records to partition 0 with acks=all, one after the
    other, and notes when each was sent and when it was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, size: int = 10) -> None:
        self.topic = topic
        self.size = size
        self.producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0}
        )
        self.acknowledged: list[tuple[float, float]] = []  # (sent, acknowledged)
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="batch-loop", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.failures = 0
            sent = time.monotonic()
            for _ in range(self.size):
                self.producer.produce(self.topic, b"x" * 100, partition=0, on_delivery=self._report)
            if self.producer.flush(FAILOVER_TIMEOUT_S) == 0 and not self.failures:
                self.acknowledged.append((sent, time.monotonic()))

    def _report(self, error: confluent_kafka.KafkaError | None, _: object) -> None:
        if error is not None:
            self.failures += 1

    def first_sent_after(self, moment: float) -> float | None:
        """When the first batch sent after ``moment`` was acknowledged."""
        return next((done for sent, done in self.acknowledged if sent >= moment), None)

    def last_before(self, moment: float) -> float | None:
        return max((done for _, done in self.acknowledged if done <= moment), default=None)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=FAILOVER_TIMEOUT_S * 2)


@dataclass(frozen=True)
class Failover:
    node_id: int
    was_controller: bool
    elected: float  # kill -> Metadata names another leader
    recovery: float  # kill -> first acknowledged batch sent after the kill
    gap: float  # last acknowledged batch before the kill -> that one


def failovers(cluster: Cluster, topic: str, rounds: int) -> list[Failover]:
    loop = BatchLoop(cluster.bootstrap, topic)
    loop.thread.start()
    results = []
    try:
        for _ in range(rounds):
            time.sleep(2.0)
            metadata = cluster.metadata(topic)
            leader = metadata.topics[topic].partitions[0].leader
            cluster.brokers[leader].kill()
            killed_at = time.monotonic()
            cluster.wait(
                lambda killed=leader: cluster.partition(topic, 0).leader not in (-1, killed),
                "a new leader",
            )
            elected = time.monotonic() - killed_at
            cluster.wait(
                lambda moment=killed_at: loop.first_sent_after(moment) is not None,
                "writes to resume",
            )
            recovered = loop.first_sent_after(killed_at)
            before = loop.last_before(killed_at)
            assert recovered is not None and before is not None
            results.append(
                Failover(
                    node_id=leader,
                    was_controller=metadata.controller_id == leader,
                    elected=elected,
                    recovery=recovered - killed_at,
                    gap=recovered - before,
                )
            )
            cluster.restart(leader)
            cluster.wait(lambda: cluster.fully_replicated(topic, 0), "the ISR to be whole again")
    finally:
        loop.stop()
    return results


# --- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """Three started brokers, stopped on the way out. A failure of the bench ends the
    program (exit status 1) with the end of the brokers' log."""
    log_path = root / "brokers.log"
    with log_path.open("wb") as logs:
        cluster = Cluster(root, logs)
        try:
            cluster.start()
            yield cluster
        except (BrokerFailed, RuntimeError, OSError, subprocess.SubprocessError) as error:
            print(f"bench: {error}", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            if stop_all(cluster.brokers, timeout=30):
                print("bench: brokers did not stop within 30 s and were killed", file=sys.stderr)


def run(options: argparse.Namespace) -> int:
    with workspace(options) as (kcat, root, records_path), running_cluster(root) as cluster:
        cluster.create_topic("bench-rf3", options.partitions)
        cluster.create_topic("bench-failover", 1)
        throughput = produce(
            cluster, kcat, "bench-rf3", records_path, options.records, options.timeout
        )
        rounds = failovers(cluster, "bench-failover", options.failovers)
    report(options, throughput, rounds)
    return 0


def report(options: argparse.Namespace, throughput: Throughput, rounds: Sequence[Failover]) -> None:
    per_million = 1_000_000 / throughput.records
    rate = throughput.records / throughput.seconds
    print(
        f"{BROKERS} brokers, topic with {options.partitions} partitions, replication factor "
        f"{BROKERS}, min.insync.replicas 2"
    )
    print(f"kcat producer: acks=all {' '.join(PRODUCER_SETTINGS)}")
    print(
        f"produce acks=all: {throughput.records:,} records of {options.record_bytes} bytes in "
        f"{throughput.seconds:.2f} s: {rate:,.0f} records/s, "
        f"{throughput.records * options.record_bytes / 1e6 / throughput.seconds:.1f} MB/s; "
        f"CPU per million records: brokers {throughput.broker_cpu * per_million:.2f} s, "
        f"kcat {throughput.client_cpu * per_million:.2f} s"
    )
    for number, failover in enumerate(rounds, 1):
        role = " (the active controller)" if failover.was_controller else ""
        print(
            f"failover {number}: leader {failover.node_id}{role} killed; Metadata names a new "
            f"leader after {failover.elected:.2f} s; writes acknowledged again after "
            f"{failover.recovery:.2f} s (gap between acknowledgements {failover.gap:.2f} s)"
        )
    worst = max(failover.recovery for failover in rounds)
    median = statistics.median(failover.recovery for failover in rounds)
    print(
        f"goal: produce >= {GOALS['produce']:,} records/s ({rate / GOALS['produce']:.0%} of it); "
        f"failover <= {GOALS['failover']:g} s (median {median:.2f} s, worst {worst:.2f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records to produce")
    parser.add_argument("--record-bytes", type=int, default=100, help="bytes per record value")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the topic (3)")
    parser.add_argument("--failovers", type=int, default=3, help="leaders to kill (3)")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds the produce phase may take (600)"
    )
    options = parser.parse_args()
    if min(options.records, options.record_bytes, options.partitions, options.failovers) < 1:
        parser.error("--records, --record-bytes, --partitions and --failovers must be >= 1")
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
