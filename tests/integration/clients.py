"""The four Kafka clients behind one small interface: produce messages, consume them back.

Each driver uses its client the way an application would: a producer with the given
compression codec that waits for every acknowledgement, and a consumer that is assigned
the partitions and reads them from the beginning (no consumer group). Results are turned
into plain values so that tests compare what went in with what came out.
"""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiokafka
import aiokafka.errors
import confluent_kafka
import kafka
import kafka.errors
from brook_broker.storage.batch import BatchHeader, iter_headers
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)

from .brokers import KafkaConnection

CONSUME_TIMEOUT_S = 60.0
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Message:
    """What a test asks a client to produce."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int | None = None  # producer-given create time; None: the client's clock


@dataclass(frozen=True)
class Delivery:
    """A producer's acknowledgement: the offset assigned, or Kafka's error code."""

    partition: int
    offset: int
    error: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int


class Driver(Protocol):
    name: str
    sets_headers_per_record: bool
    sets_timestamps: bool

    def produce(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        codec: str,
        config: Mapping[str, Any] | None = None,
    ) -> list[Delivery] | None:
        """Deliveries in produce order, or None if the client does not report offsets."""
        ...

    def consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        """Exactly ``count`` records from the beginning of ``partitions``, in fetch order."""
        ...


# --- confluent-kafka -------------------------------------------------------------------


class ConfluentDriver:
    name = "confluent-kafka"
    sets_headers_per_record = True
    sets_timestamps = True

    def produce(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        codec: str,
        config: Mapping[str, Any] | None = None,
    ) -> list[Delivery]:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": codec,
                "linger.ms": 20,
                "acks": "all",
                **(config or {}),
            }
        )
        deliveries: list[Delivery | None] = [None] * len(messages)

        def reporter(index: int) -> Any:
            def report(error: confluent_kafka.KafkaError | None, message: Any) -> None:
                if error is None:
                    deliveries[index] = Delivery(message.partition(), message.offset())
                else:
                    deliveries[index] = Delivery(
                        messages[index].partition, -1, error.code(), error.str()
                    )

            return report

        for index, message in enumerate(messages):
            extra = {} if message.timestamp is None else {"timestamp": message.timestamp}
            while True:
                try:
                    producer.produce(
                        topic,
                        message.value,
                        message.key,
                        partition=message.partition,
                        headers=list(message.headers),
                        on_delivery=reporter(index),
                        **extra,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        remaining = producer.flush(CONSUME_TIMEOUT_S)
        assert remaining == 0, f"{remaining} messages were not delivered in time"
        assert all(delivery is not None for delivery in deliveries)
        return [delivery for delivery in deliveries if delivery is not None]

    def consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        consumer = confluent_consumer(bootstrap)
        try:
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                    for p in partitions
                ]
            )
            consumed: list[Consumed] = []
            deadline = time.monotonic() + CONSUME_TIMEOUT_S
            while len(consumed) < count and time.monotonic() < deadline:
                for message in consumer.consume(num_messages=1000, timeout=0.5):
                    error = message.error()
                    assert error is None, f"consumer error: {error}"
                    timestamp_type, timestamp = message.timestamp()
                    assert timestamp_type == confluent_kafka.TIMESTAMP_CREATE_TIME
                    consumed.append(
                        Consumed(
                            message.partition(),
                            message.offset(),
                            message.key(),
                            message.value(),
                            tuple(message.headers() or ()),
                            timestamp,
                        )
                    )
            return consumed
        finally:
            consumer.close()


def confluent_consumer(bootstrap: str, **config: Any) -> confluent_kafka.Consumer:
    """An assign-only consumer; librdkafka wants a group id even then (never committed)."""
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "brook-integration-tests",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            **{key.replace("_", "."): value for key, value in config.items()},
        }
    )


# --- aiokafka and kafka-python --------------------------------------------------------
#
# The two share setting names and the shapes of record metadata and consumed records.


def python_producer_settings(
    bootstrap: str, codec: str, config: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "compression_type": None if codec == "none" else codec,
        "linger_ms": 20,
        "acks": "all",
        **(config or {}),
    }


def python_send_arguments(message: Message) -> dict[str, Any]:
    return {
        "value": message.value,
        "key": message.key,
        "partition": message.partition,
        "timestamp_ms": message.timestamp,
        "headers": list(message.headers),
    }


PYTHON_CONSUMER_SETTINGS: dict[str, Any] = {
    "group_id": None,
    "enable_auto_commit": False,
    "auto_offset_reset": "none",
}


def python_delivery(
    message: Message,
    metadata: Any,
    error: aiokafka.errors.KafkaError | kafka.errors.KafkaError | None,
) -> Delivery:
    """A delivery from the record metadata a send resolved to, or from the error it raised."""
    if error is not None:
        return Delivery(message.partition, -1, error.errno, str(error))
    return Delivery(metadata.partition, metadata.offset)


def python_consumed(polled: Mapping[Any, Sequence[Any]]) -> list[Consumed]:
    """The records of one ``getmany`` (aiokafka) or ``poll`` (kafka-python)."""
    consumed = []
    for records in polled.values():
        for record in records:
            assert record.timestamp_type == 0, "expected CreateTime"
            consumed.append(
                Consumed(
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    tuple(record.headers),
                    record.timestamp,
                )
            )
    return consumed


class AiokafkaDriver:
    name = "aiokafka"
    sets_headers_per_record = True
    sets_timestamps = True

    def produce(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        codec: str,
        config: Mapping[str, Any] | None = None,
    ) -> list[Delivery]:
        return asyncio.run(
            self._produce(topic, messages, python_producer_settings(bootstrap, codec, config))
        )

    async def _produce(
        self, topic: str, messages: Sequence[Message], settings: dict[str, Any]
    ) -> list[Delivery]:
        producer = aiokafka.AIOKafkaProducer(**settings)
        await producer.start()
        try:
            futures = [
                await producer.send(topic, **python_send_arguments(message)) for message in messages
            ]
            deliveries = []
            for message, future in zip(messages, futures, strict=True):
                try:
                    deliveries.append(python_delivery(message, await future, None))
                except aiokafka.errors.KafkaError as error:
                    deliveries.append(python_delivery(message, None, error))
            return deliveries
        finally:
            await asyncio.wait_for(producer.stop(), CONSUME_TIMEOUT_S)

    def consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        return asyncio.run(self._consume(bootstrap, topic, partitions, count))

    async def _consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap, **PYTHON_CONSUMER_SETTINGS
        )
        await consumer.start()
        try:
            assignment = [aiokafka.TopicPartition(topic, p) for p in partitions]
            consumer.assign(assignment)
            await consumer.seek_to_beginning(*assignment)
            consumed: list[Consumed] = []
            deadline = time.monotonic() + CONSUME_TIMEOUT_S
            while len(consumed) < count and time.monotonic() < deadline:
                consumed += python_consumed(
                    await consumer.getmany(timeout_ms=500, max_records=5000)
                )
            return consumed
        finally:
            await asyncio.wait_for(consumer.stop(), CONSUME_TIMEOUT_S)


class KafkaPythonDriver:
    name = "kafka-python"
    sets_headers_per_record = True
    sets_timestamps = True

    def produce(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        codec: str,
        config: Mapping[str, Any] | None = None,
    ) -> list[Delivery]:
        producer = kafka.KafkaProducer(**python_producer_settings(bootstrap, codec, config))
        try:
            futures = [
                producer.send(topic, **python_send_arguments(message)) for message in messages
            ]
            producer.flush(CONSUME_TIMEOUT_S)
            deliveries = []
            for message, future in zip(messages, futures, strict=True):
                try:
                    deliveries.append(python_delivery(message, future.get(CONSUME_TIMEOUT_S), None))
                except kafka.errors.KafkaError as error:
                    deliveries.append(python_delivery(message, None, error))
            return deliveries
        finally:
            producer.close(timeout=CONSUME_TIMEOUT_S)

    def consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, **PYTHON_CONSUMER_SETTINGS)
        try:
            assignment = [kafka.TopicPartition(topic, p) for p in partitions]
            consumer.assign(assignment)
            consumer.seek_to_beginning(*assignment)
            consumed: list[Consumed] = []
            deadline = time.monotonic() + CONSUME_TIMEOUT_S
            while len(consumed) < count and time.monotonic() < deadline:
                consumed += python_consumed(consumer.poll(timeout_ms=500, max_records=5000))
            return consumed
        finally:
            consumer.close()


# --- kcat ------------------------------------------------------------------------------


class KcatDriver:
    """kcat reads one record per stdin line; its headers (-H) are the same for every record
    of a run, and it cannot set timestamps or report offsets."""

    name = "kcat"
    sets_headers_per_record = False
    sets_timestamps = False
    FORMAT = r"%p\t%o\t%T\t%K\t%k\t%h\t%S\t%s\n"

    def produce(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        codec: str,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        for partition in sorted({message.partition for message in messages}):
            batch = [message for message in messages if message.partition == partition]
            headers = batch[0].headers
            assert all(message.headers == headers for message in batch)
            lines = []
            for message in batch:
                key, value = message.key or b"", message.value or b""
                assert key and value and b"\t" not in key and b"\n" not in key + value
                lines.append(key + b"\t" + value + b"\n")
            settings = {"linger.ms": 20, "acks": "all", **(config or {})}
            command = [
                "kcat", "-b", bootstrap, "-P", "-t", topic, "-p", str(partition), "-K", r"\t",
                "-z", codec,
                *(arg for name, value in settings.items() for arg in ("-X", f"{name}={value}")),
                *(arg for name, value in headers for arg in ("-H", f"{name}={value.decode()}")),
            ]  # fmt: skip
            result = run_kcat(command, b"".join(lines))
            assert result.returncode == 0, f"kcat -P failed: {result.stderr.decode()}"
        return None

    def consume(
        self, bootstrap: str, topic: str, partitions: Sequence[int], count: int
    ) -> list[Consumed]:
        consumed: list[Consumed] = []
        for partition in partitions:
            command = [
                "kcat", "-b", bootstrap, "-C", "-t", topic, "-p", str(partition),
                "-o", "beginning", "-e", "-q", "-f", self.FORMAT,
            ]  # fmt: skip
            result = run_kcat(command, b"")
            assert result.returncode == 0, f"kcat -C failed: {result.stderr.decode()}"
            consumed.extend(self.parse(result.stdout))
        assert len(consumed) == count, f"kcat read {len(consumed)} records, expected {count}"
        return consumed

    @staticmethod
    def parse(output: bytes) -> list[Consumed]:
        """Lines of FORMAT; key and value lengths make the parse exact."""
        consumed = []
        for line in output.split(b"\n")[:-1]:
            fields = line.split(b"\t", 7)
            partition, offset, timestamp, key_length, key, headers, value_length, value = fields
            # kcat gives -1 as the length of a null key or value.
            assert len(key) == max(0, int(key_length)), line[:200]
            assert len(value) == max(0, int(value_length)), line[:200]
            consumed.append(
                Consumed(
                    int(partition),
                    int(offset),
                    None if int(key_length) < 0 else key,
                    None if int(value_length) < 0 else value,
                    parse_kcat_headers(headers),
                    int(timestamp),
                )
            )
        return consumed


def parse_kcat_headers(text: bytes) -> Headers:
    if not text:
        return ()
    pairs = [item.split(b"=", 1) for item in text.split(b",")]
    return tuple((name.decode(), value) for name, value in pairs)


def run_kcat(command: Sequence[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command, input=stdin, capture_output=True, timeout=CONSUME_TIMEOUT_S, check=False
    )


DRIVERS: dict[str, Driver] = {
    driver.name: driver
    for driver in (ConfluentDriver(), AiokafkaDriver(), KafkaPythonDriver(), KcatDriver())
}


# --- administration and direct reads ---------------------------------------------------


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    replication_factor: int = 1,
    replicas: Sequence[Sequence[int]] | None = None,
) -> None:
    """CreateTopics through confluent-kafka's admin client; fails the test on any error.
    ``replicas`` assigns each partition's replicas instead of leaving placement to the broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if replicas is None:
        topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=dict(config or {}),
        )
    else:
        # This client wants the partition count given with an assignment, and no factor.
        topic = NewTopic(
            name,
            num_partitions=len(replicas),
            replica_assignment=[list(r) for r in replicas],
            config=dict(config or {}),
        )
    futures = admin.create_topics([topic], operation_timeout=10, request_timeout=15)
    futures[name].result(timeout=20)


def watermarks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    """(log start offset, high watermark) from ListOffsets earliest and latest."""
    consumer = confluent_consumer(bootstrap)
    try:
        low, high = consumer.get_watermark_offsets(
            confluent_kafka.TopicPartition(topic, partition), timeout=10, cached=False
        )
        return int(low), int(high)
    finally:
        consumer.close()


def list_offset(connection: KafkaConnection, topic: str, partition: int, timestamp: int) -> Any:
    """The ListOffsets v7 answer for one partition (-2 earliest, -1 latest, or a time)."""
    response = connection.request(
        ListOffsetsRequest(
            replica_id=-1,
            isolation_level=0,
            topics=(
                ListOffsetsTopic(
                    name=topic,
                    partitions=(
                        ListOffsetsPartition(partition_index=partition, timestamp=timestamp),
                    ),
                ),
            ),
        )
    )
    return response.topics[0].partitions[0]


def fetch(
    connection: KafkaConnection,
    topic: str,
    partition: int,
    offset: int,
    max_bytes: int = 8 * 1024 * 1024,
) -> Any:
    """One Fetch v12 without waiting; returns the partition's part of the response."""
    response = connection.request(
        FetchRequest(
            max_wait=datetime.timedelta(0),
            min_bytes=0,
            max_bytes=max_bytes,
            topics=(
                FetchTopic(
                    topic=topic,
                    partitions=(
                        FetchPartition(
                            partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes
                        ),
                    ),
                ),
            ),
            forgotten_topics_data=(),
        )
    )
    return response.responses[0].partitions[0]


def fetch_all(
    connection: KafkaConnection, topic: str, partition: int = 0, start: int | None = None
) -> tuple[bytes, list[BatchHeader]]:
    """Every stored batch of a partition as raw bytes, read with Fetch up to the high watermark."""
    offset = start if start is not None else list_offset(connection, topic, partition, -2).offset
    chunks: list[bytes] = []
    while True:
        answer = fetch(connection, topic, partition, offset)
        assert answer.error_code == 0, f"fetch at {offset}: {answer.error_code}"
        records = bytes(answer.records or b"")
        batches = list(iter_headers(records))
        if not batches:
            assert offset >= answer.high_watermark, f"no whole batch at {offset}"
            break
        position, last = batches[-1]
        chunks.append(records[: position + last.size])
        offset = last.next_offset
    data = b"".join(chunks)
    return data, [header for _, header in iter_headers(data)]
