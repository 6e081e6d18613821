"""A cluster of brokers as processes, and the clients cluster tests drive against it.

Every broker is a voter of the metadata quorum (``--controller-quorum`` names them all),
listens on its own free ports (Kafka, internal, HTTP, Raft), shares the cluster secret
in ``cluster.secret`` and keeps its own data directory; brokers can be killed,
stopped, paused (SIGSTOP) and restarted one at a time. What the cluster says about itself
is read with Metadata requests to one chosen broker, so a test knows whose view it sees.

``SequenceProducer`` writes records that carry increasing sequence numbers and records
every delivery report; ``read_back`` and ``check_acknowledged`` then prove that what was
acknowledged is in the log, at the acknowledged offset, in order.
``write_while_killing_leaders`` runs such a producer while leaders are killed with
SIGKILL again and again, and reads the log back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import confluent_kafka
from brook_broker.storage.batch import BatchHeader, iter_headers
from brook_cli import local
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

from .brokers import BrokerProcess, KafkaConnection, free_port, stop_brokers, wait_until
from .clients import confluent_consumer, create_topic

READY_TIMEOUT_S = 60.0
"""A broker of a quorum is ready once the quorum has a leader and the broker registered."""

CHANGE_TIMEOUT_S = 30.0
"""How long tests wait for the cluster to act: elections, ISR changes, reassignments."""


# --- what a broker says about the cluster ----------------------------------------------


@dataclass(frozen=True)
class PartitionView:
    error_code: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline: tuple[int, ...]


@dataclass(frozen=True)
class ClusterView:
    """One Metadata answer: the brokers it lists (the unfenced ones), the active
    controller, and the partitions of the topics asked for."""

    node_id: int
    controller_id: int
    brokers: frozenset[int]
    topics: Mapping[str, Mapping[int, PartitionView]]

    def partition(self, topic: str, partition: int) -> PartitionView | None:
        return self.topics.get(topic, {}).get(partition)


def describe(connection: KafkaConnection, node_id: int, topics: Sequence[str]) -> ClusterView:
    """Metadata v12 for ``topics`` (all topics if empty), without creating any."""
    response = connection.request(
        MetadataRequest(
            topics=tuple(MetadataRequestTopic(topic_id=None, name=name) for name in topics)
            if topics
            else None,
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    )
    return ClusterView(
        node_id=node_id,
        controller_id=int(response.controller_id),
        brokers=frozenset(int(broker.node_id) for broker in response.brokers),
        topics={
            str(topic.name): {
                int(p.partition_index): PartitionView(
                    error_code=int(p.error_code),
                    leader=int(p.leader_id),
                    leader_epoch=int(p.leader_epoch),
                    replicas=tuple(int(r) for r in p.replica_nodes),
                    isr=tuple(int(r) for r in p.isr_nodes),
                    offline=tuple(int(r) for r in p.offline_replicas),
                )
                for p in topic.partitions
            }
            for topic in response.topics
            if topic.error_code == 0
        },
    )


# --- the cluster -------------------------------------------------------------------------


@dataclass
class Cluster:
    """``size`` brokers with node ids 0..size-1, all of them voters.

    ``hosts`` (default: all on loopback) and ``namespaces`` (default: none) place broker i
    on ``hosts[i]``, inside network namespace ``namespaces[i]``."""

    directory: Path
    size: int = 3
    extra_args: Sequence[str] = ()
    hosts: Sequence[str] | None = None
    namespaces: Sequence[str | None] | None = None
    brokers: list[BrokerProcess] = field(init=False)

    def __post_init__(self) -> None:
        hosts = list(self.hosts or ["127.0.0.1"] * self.size)
        namespaces = list(self.namespaces or [None] * self.size)
        raft = [f"{host}:{free_port()}" for host in hosts]
        quorum = ",".join(f"{node}@{address}" for node, address in enumerate(raft))
        self.brokers = [
            BrokerProcess(
                self.directory / f"broker-{node}",
                [
                    "--controller-quorum",
                    quorum,
                    "--controller-listen",
                    raft[node],
                    *self.extra_args,
                ],
                node_id=node,
                host=hosts[node],
                namespace=namespaces[node],
                cluster_secret_file=self.secret_file,
            )
            for node in range(self.size)
        ]

    @property
    def secret_file(self) -> Path:
        """Made with the first start (``brook_cli.local.ensure_cluster_secret``)."""
        return self.directory / local.CLUSTER_SECRET_FILE

    def __getitem__(self, node_id: int) -> BrokerProcess:
        return self.brokers[node_id]

    @property
    def bootstrap(self) -> str:
        """Every broker: clients find the ones that are up."""
        return ",".join(broker.bootstrap for broker in self.brokers)

    def bootstrap_of(self, nodes: Iterable[int]) -> str:
        return ",".join(self.brokers[node].bootstrap for node in nodes)

    def live(self) -> list[BrokerProcess]:
        """Brokers that run and are not paused."""
        return [broker for broker in self.brokers if broker.running and not broker.paused]

    # -- processes

    def start(self) -> None:
        """Start every broker at once (a quorum needs a majority to elect a leader), then
        wait until each is ready and every broker sees all of them registered."""
        for broker in self.brokers:
            broker.launch()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for broker in self.brokers:
            broker.wait_ready(max(1.0, deadline - time.monotonic()))
        self.wait_for_brokers(set(range(self.size)))

    def restart(self, node_id: int) -> None:
        """Start a stopped or killed broker again, on its data directory and ports."""
        broker = self.brokers[node_id]
        broker.launch()
        broker.wait_ready(READY_TIMEOUT_S)

    def stop(self) -> None:
        stop_brokers(self.brokers)

    def log_tails(self, lines: int = 80) -> str:
        return "\n".join(
            f"--- log of broker {broker.node_id} ({broker.directory})\n{broker.log_tail(lines)}"
            for broker in self.brokers
        )

    # -- what the cluster says

    def view(self, *topics: str, via: int | None = None) -> ClusterView:
        """Metadata from broker ``via``, or else from the first live broker that answers."""
        candidates = [self.brokers[via]] if via is not None else self.live()
        failures = []
        for broker in candidates:
            try:
                with KafkaConnection(broker.address, timeout=5.0) as connection:
                    return describe(connection, broker.node_id, topics)
            except OSError as error:
                failures.append(f"broker {broker.node_id}: {error}")
        raise AssertionError(f"no broker answered Metadata: {failures}")

    def wait_for(
        self,
        condition: Callable[[ClusterView], Any],
        *topics: str,
        via: int | None = None,
        timeout: float = CHANGE_TIMEOUT_S,
        message: str = "",
    ) -> Any:
        """Ask for Metadata until ``condition(view)`` returns something other than None or
        False (a node id 0 counts); returns that."""

        def check() -> tuple[Any] | None:
            try:
                value = condition(self.view(*topics, via=via))
            except (AssertionError, OSError):
                return None
            return None if value is None or value is False else (value,)

        try:
            (value,) = wait_until(check, timeout, interval=0.1, message=message)
            return value
        except AssertionError:
            try:
                last = repr(self.view(*topics, via=via))
            except (AssertionError, OSError) as error:
                last = f"(no Metadata: {error})"
            raise AssertionError(f"timed out after {timeout} s: {message}; last: {last}") from None

    def wait_for_brokers(self, nodes: set[int], via: int | None = None) -> None:
        """Until Metadata lists exactly ``nodes`` (the registered, unfenced brokers)."""
        self.wait_for(
            lambda view: view.brokers == nodes,
            via=via,
            timeout=READY_TIMEOUT_S,
            message=f"brokers {sorted(nodes)} registered",
        )

    def partition(self, topic: str, partition: int, via: int | None = None) -> PartitionView:
        found = self.view(topic, via=via).partition(topic, partition)
        assert found is not None, f"{topic}-{partition} is not in Metadata"
        return found

    def wait_for_leader(
        self, topic: str, partition: int, excluding: Iterable[int] = (), via: int | None = None
    ) -> int:
        """The partition's leader, once it has one that is not in ``excluding``."""
        excluded = set(excluding)

        def leader(view: ClusterView) -> int | None:
            found = view.partition(topic, partition)
            if found is None or found.leader < 0 or found.leader in excluded:
                return None
            return found.leader

        return int(
            self.wait_for(
                leader,
                topic,
                via=via,
                message=f"{topic}-{partition} has a leader not in {sorted(excluded)}",
            )
        )

    def wait_for_isr(
        self,
        topic: str,
        condition: Callable[[PartitionView], bool],
        partitions: Iterable[int],
        message: str,
        via: int | None = None,
        timeout: float = CHANGE_TIMEOUT_S,
    ) -> ClusterView:
        """Until ``condition`` holds for each of ``partitions`` of ``topic``."""
        wanted = list(partitions)

        def holds(view: ClusterView) -> ClusterView | None:
            found = [view.partition(topic, p) for p in wanted]
            ok = all(p is not None and condition(p) for p in found)
            return view if ok else None

        return self.wait_for(holds, topic, via=via, timeout=timeout, message=message)

    def wait_for_full_isr(
        self, topic: str, partitions: int, via: int | None = None, timeout: float = 60.0
    ) -> None:
        """Until every replica of every partition is in the ISR again."""
        self.wait_for_isr(
            topic,
            lambda p: p.leader >= 0 and set(p.isr) == set(p.replicas),
            range(partitions),
            f"every replica of {topic} in the ISR",
            via=via,
            timeout=timeout,
        )

    def active_controller(self, via: int | None = None) -> int:
        return int(
            self.wait_for(
                lambda view: view.controller_id if view.controller_id >= 0 else None,
                via=via,
                message="an active controller",
            )
        )

    # -- on each broker

    def metric(self, node_id: int, name: str) -> float:
        """The sum of a metric's samples on one broker (0 if it has none)."""
        return self.brokers[node_id].metric(name)

    def stored_batches(
        self, node_id: int, topic: str, partition: int
    ) -> list[tuple[bytes, BatchHeader]]:
        """Every whole batch in the replica's segment files, as raw bytes and header."""
        batches = []
        for segment in self.brokers[node_id].segments(topic, partition):
            data = segment.read_bytes()
            batches += [
                (data[position : position + header.size], header)
                for position, header in iter_headers(data)
            ]
        return batches


# --- producing with sequence numbers ---------------------------------------------------

VALUE_BYTES = 100
SEQUENCE_DIGITS = 12

ACKS_ALL_WITH_RETRIES = {
    "acks": "all",
    # Duplicates from retries are expected; the idempotent producer is not under test.
    "enable.idempotence": False,
    "message.send.max.retries": 1_000_000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 500,
    # Without idempotence, only one request in flight keeps a retried batch in its place.
    "max.in.flight.requests.per.connection": 1,
    "linger.ms": 5,
    "request.timeout.ms": 15_000,
    "message.timeout.ms": 120_000,
    "topic.metadata.refresh.interval.ms": 1000,
}
"""A producer that keeps trying until a record is acknowledged by all in-sync replicas."""


def sequence_value(sequence: int, tag: bytes = b"") -> bytes:
    head = str(sequence).rjust(SEQUENCE_DIGITS).encode() + tag
    return head + b"." * (VALUE_BYTES - len(head))


def value_sequence(value: bytes) -> int:
    return int(value[:SEQUENCE_DIGITS])


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int


class SequenceProducer:
    """A confluent-kafka producer that writes sequence numbers 0, 1, 2, ... round robin
    over the partitions and keeps every delivery report: ``acked`` maps a sequence number
    to its partition and offset, ``failed`` to the error (a ``KafkaError``).

    ``run_in_background`` produces at a steady rate from a thread until ``stop``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: Sequence[int],
        config: Mapping[str, Any] | None = None,
        first_sequence: int = 0,
    ) -> None:
        self.topic = topic
        self.partitions = list(partitions)
        self.producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, **ACKS_ALL_WITH_RETRIES, **(config or {})}
        )
        self.next_sequence = first_sequence
        self.acked: dict[int, Ack] = {}
        self.failed: dict[int, confluent_kafka.KafkaError] = {}
        self.sent_to: dict[int, int] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _report(self, sequence: int) -> Callable[[Any, Any], None]:
        def report(error: confluent_kafka.KafkaError | None, message: Any) -> None:
            if error is None:
                self.acked[sequence] = Ack(message.partition(), message.offset())
            else:
                self.failed[sequence] = error

        return report

    def send(self, count: int, partitions: Sequence[int] | None = None) -> list[int]:
        """Queue ``count`` records (round robin over ``partitions``); returns their numbers."""
        targets = list(partitions or self.partitions)
        sequences = []
        for _ in range(count):
            sequence = self.next_sequence
            self.next_sequence += 1
            partition = targets[sequence % len(targets)]
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        sequence_value(sequence),
                        partition=partition,
                        on_delivery=self._report(sequence),
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.sent_to[sequence] = partition
            sequences.append(sequence)
        self.producer.poll(0)
        return sequences

    def flush(self, timeout: float = 150.0) -> None:
        """Wait for a delivery report of every record sent (bounded)."""
        remaining = self.producer.flush(timeout)
        assert remaining == 0, f"{remaining} records without a delivery report after {timeout} s"

    def produce_all(self, count: int, partitions: Sequence[int] | None = None) -> list[int]:
        sequences = self.send(count, partitions)
        self.flush()
        return sequences

    def run_in_background(self, per_second: int = 1000, backlog: int = 5000) -> None:
        """Send ``per_second`` records a second (fewer while ``backlog`` await a report)."""

        def run() -> None:
            started = time.monotonic()
            sent = 0
            try:
                while not self._stopping.is_set():
                    due = int((time.monotonic() - started) * per_second) - sent
                    if due > 0 and len(self.producer) < backlog:
                        self.send(due)
                        sent += due
                    self.producer.poll(0.005)
            except BaseException as error:  # re-raised by stop()
                self._error = error

        self._thread = threading.Thread(target=run, name="sequence-producer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 150.0) -> None:
        """Stop a background run and wait for every delivery report."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._error is not None:
            raise self._error
        self.flush(timeout)

    @property
    def sent(self) -> int:
        return len(self.sent_to)


def read_back(
    bootstrap: str, topic: str, partitions: Iterable[int], timeout: float = 120.0
) -> dict[int, list[tuple[int, int]]]:
    """Every record of each partition from the log start to the high watermark, as
    (offset, sequence number) pairs in log order."""
    deadline = time.monotonic() + timeout
    consumer = confluent_consumer(bootstrap, fetch_wait_max_ms=100)
    try:
        ends = {p: high_watermark(consumer, topic, p, deadline) for p in partitions}
        records: dict[int, list[tuple[int, int]]] = {p: [] for p in ends}
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p, high in ends.items()
                if high > 0
            ]
        )

        def position(partition: int) -> int:
            found = records[partition]
            return found[-1][0] + 1 if found else 0

        while any(position(p) < high for p, high in ends.items()):
            assert time.monotonic() < deadline, (
                f"read back stopped short of the high watermarks {ends}: "
                f"{ {p: position(p) for p in ends} }"
            )
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                error = message.error()
                assert error is None, f"consumer error: {error}"
                records[message.partition()].append(
                    (message.offset(), value_sequence(message.value()))
                )
        return records
    finally:
        consumer.close()


def high_watermark(
    consumer: confluent_kafka.Consumer, topic: str, partition: int, deadline: float
) -> int:
    """ListOffsets (latest) for one partition, tried again while the client reports errors
    (right after failures it may still be connecting or learning who leads)."""
    while True:
        try:
            _, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, partition), timeout=10, cached=False
            )
            return int(high)
        except confluent_kafka.KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class LogCheck(NamedTuple):
    duplicates: int
    """Copies of a record beyond its first (retries without idempotence)."""
    reordered: int


def check_acknowledged(
    acked: Mapping[int, Ack], log: Mapping[int, Sequence[tuple[int, int]]]
) -> LogCheck:
    """Assert that every acknowledged record is in the log at its acknowledged offset; count
    the duplicate copies, and the acknowledged records whose first copy comes after that of
    a later-numbered acknowledged one.

    Order is counted, not asserted: without idempotence, librdkafka's one request in flight
    holds per connection, so a batch retried after a leader move can land behind a later
    one sent to the new leader meanwhile. The idempotent producer's test asserts order."""
    at_offset = {
        partition: dict(records) for partition, records in log.items()
    }  # partition -> offset -> sequence
    missing = {
        sequence: ack
        for sequence, ack in acked.items()
        if at_offset.get(ack.partition, {}).get(ack.offset) != sequence
    }
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged records are not at their offsets, "
        f"e.g. {sorted(missing.items())[:10]}"
    )
    duplicates = reordered = 0
    for records in log.values():
        seen: set[int] = set()
        last_acked = -1
        for _, sequence in records:
            if sequence in seen:
                duplicates += 1
                continue
            seen.add(sequence)
            if sequence in acked:
                reordered += sequence < last_acked
                last_acked = max(last_acked, sequence)
    return LogCheck(duplicates, reordered)


# --- writing while leaders are killed ---------------------------------------------------


@dataclass(frozen=True)
class Kill:
    partition: int
    broker: int
    failover_seconds: float
    """From the kill until another broker led the partition."""


@dataclass
class ChaosRun:
    producer: SequenceProducer
    kills: list[Kill]
    seconds: float
    log: dict[int, list[tuple[int, int]]]
    """What ``read_back`` found afterwards."""

    def summary(self) -> str:
        failovers = ", ".join(
            f"p{kill.partition}/b{kill.broker} {kill.failover_seconds:.2f}s" for kill in self.kills
        )
        return (
            f"{self.seconds:.0f} s, {len(self.kills)} leaders killed (partition/broker, "
            f"seconds to a new leader: {failovers}); {self.producer.sent} records sent, "
            f"{len(self.producer.acked)} acknowledged, {len(self.producer.failed)} failed; "
            f"{sum(map(len, self.log.values()))} records in the log"
        )


def kill_leaders(
    cluster: Cluster,
    topic: str,
    partitions: int,
    until: float,
    *,
    between_seconds: float = 2.0,
    down_seconds: float = 1.0,
) -> list[Kill]:
    """kill -9 the leader of partition 0, 1, 2, ... in turn, restart it a moment later,
    and wait until every replica is back in the ISR before the next kill (so that at most
    one broker is down at a time: RF 3 with min ISR 2 promises that much).

    Runs on the main thread: a broker started from a thread would be sent SIGTERM when
    that thread ends (Linux's parent-death signal follows the thread that forked)."""
    kills = []
    partition = 0
    while time.monotonic() < until:
        time.sleep(between_seconds)
        leader = cluster.wait_for_leader(topic, partition)
        cluster[leader].kill9()
        killed_at = time.monotonic()
        cluster.wait_for_leader(topic, partition, excluding={leader})
        kills.append(Kill(partition, leader, time.monotonic() - killed_at))
        time.sleep(down_seconds)
        cluster.restart(leader)
        cluster.wait_for_full_isr(topic, partitions)
        partition = (partition + 1) % partitions
    return kills


def write_while_killing_leaders(
    cluster: Cluster,
    topic: str,
    partitions: int,
    seconds: float,
    producer_config: Mapping[str, Any] | None = None,
    per_second: int = 2000,
) -> ChaosRun:
    """Create ``topic`` (RF 3, min ISR 2), write sequence numbers to it at ``per_second``
    for ``seconds`` while ``kill_leaders`` runs, wait for every delivery report, and read
    every partition back."""
    create_topic(
        cluster.bootstrap,
        topic,
        partitions,
        {"min.insync.replicas": "2"},
        replication_factor=3,
    )
    cluster.wait_for_full_isr(topic, partitions)
    producer = SequenceProducer(cluster.bootstrap, topic, range(partitions), producer_config)
    started = time.monotonic()
    producer.run_in_background(per_second=per_second)
    try:
        kills = kill_leaders(cluster, topic, partitions, until=started + seconds)
    finally:
        producer.stop()
    elapsed = time.monotonic() - started
    return ChaosRun(
        producer, kills, elapsed, read_back(cluster.bootstrap, topic, range(partitions))
    )
