"""Unmodified Kafka clients produce to a Brook broker and read everything back.

For each of confluent-kafka, aiokafka, kafka-python and kcat, and each compression codec:
10,000 records with keys and headers are produced and then read from the beginning with
an assigned (group-less) consumer; keys, values, headers, timestamps and offsets must all
come back as they went in. The batches are also fetched raw, to see that the broker
stored them with the producer's codec untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator

import aiokafka
import kafka
import pytest
from confluent_kafka import TopicPartition

from tests.support.batches import COMPRESSION_CODECS

from .brokers import BrokerProcess, KafkaConnection, now_ms, running_broker
from .clients import (
    DRIVERS,
    Consumed,
    Delivery,
    Driver,
    Message,
    confluent_consumer,
    create_topic,
    fetch_all,
    run_kcat,
    watermarks,
)

RECORDS = 10_000
PARTITIONS = 2
ONE_MB = 1_000_000
MESSAGE_TOO_LARGE = 10
_topic_numbers = itertools.count()


def fresh_topic(prefix: str) -> str:
    return f"{prefix}-{next(_topic_numbers)}-{os.getpid()}"


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the whole module: every case uses a topic of its own."""
    with running_broker(tmp_path_factory.mktemp("clients")) as broker:
        yield broker
        print(broker.log_tail())


@pytest.fixture(scope="module")
def small_limit_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with running_broker(
        tmp_path_factory.mktemp("limit"), "--message-max-bytes", "100000"
    ) as broker:
        yield broker
        print(broker.log_tail())


def make_messages(driver: Driver, count: int, partitions: int, codec: str) -> list[Message]:
    """Small, compressible records; keys, headers and create times unique per record
    where the client can set them per record."""
    base_timestamp = now_ms() - 3_600_000
    messages = []
    for index in range(count):
        if driver.sets_headers_per_record:
            headers: tuple[tuple[str, bytes], ...] = (
                ("index", str(index).encode()),
                ("parity", b"even" if index % 2 == 0 else b"odd"),
                ("empty", b""),
            )
        else:
            headers = (("client", driver.name.encode()), ("codec", codec.encode()))
        messages.append(
            Message(
                partition=index % partitions,
                key=f"key-{index:05d}".encode(),
                value=f"value-{index:05d}|".encode() + b"abcdefgh" * 12,
                headers=headers,
                timestamp=base_timestamp + index if driver.sets_timestamps else None,
            )
        )
    return messages


def expected_offsets(messages: list[Message]) -> list[int]:
    """Offsets 0..n-1 per partition, in produce order."""
    counters: dict[int, int] = {}
    offsets = []
    for message in messages:
        offsets.append(counters.get(message.partition, 0))
        counters[message.partition] = offsets[-1] + 1
    return offsets


def check_round_trip(
    messages: list[Message],
    deliveries: list[Delivery] | None,
    consumed: list[Consumed],
    produce_window: tuple[int, int],
) -> None:
    offsets = expected_offsets(messages)
    if deliveries is not None:
        errors = [d for d in deliveries if d.error is not None]
        assert not errors, f"{len(errors)} deliveries failed, first: {errors[0]}"
        assert [(d.partition, d.offset) for d in deliveries] == [
            (m.partition, o) for m, o in zip(messages, offsets, strict=True)
        ]
    by_position = {(c.partition, c.offset): c for c in consumed}
    assert len(by_position) == len(consumed), "a record was read twice"
    assert len(consumed) == len(messages), f"read {len(consumed)} of {len(messages)} records"
    for partition in {m.partition for m in messages}:
        read_offsets = [c.offset for c in consumed if c.partition == partition]
        assert read_offsets == sorted(read_offsets), f"partition {partition} out of order"
    start, end = produce_window
    for message, offset in zip(messages, offsets, strict=True):
        record = by_position.get((message.partition, offset))
        assert record is not None, f"missing offset {offset} of partition {message.partition}"
        assert (record.key, record.value, record.headers) == (
            message.key,
            message.value,
            message.headers,
        ), f"offset {offset}"
        if message.timestamp is not None:
            assert record.timestamp == message.timestamp, f"timestamp of offset {offset}"
        else:
            assert start - 1000 <= record.timestamp <= end + 1000, f"timestamp of offset {offset}"


def stored_codecs(broker: BrokerProcess, topic: str, partitions: int) -> set[int]:
    with KafkaConnection(broker.address) as connection:
        return {
            batch.compression
            for partition in range(partitions)
            for batch in fetch_all(connection, topic, partition)[1]
        }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", list(COMPRESSION_CODECS))
@pytest.mark.parametrize("client", list(DRIVERS))
def test_round_trip(shared_broker: BrokerProcess, client: str, codec: str) -> None:
    driver = DRIVERS[client]
    topic = fresh_topic(f"{client}-{codec}")
    create_topic(shared_broker.bootstrap, topic, PARTITIONS)
    messages = make_messages(driver, RECORDS, PARTITIONS, codec)

    started = now_ms()
    deliveries = driver.produce(shared_broker.bootstrap, topic, messages, codec)
    produce_window = (started, now_ms())
    consumed = driver.consume(shared_broker.bootstrap, topic, range(PARTITIONS), RECORDS)

    check_round_trip(messages, deliveries, consumed, produce_window)
    # librdkafka sends a batch uncompressed when it concludes from ApiVersions that the
    # broker cannot take the codec, so this also checks what the broker advertises.
    assert stored_codecs(shared_broker, topic, PARTITIONS) == {COMPRESSION_CODECS[codec]}, (
        f"{client} did not send {codec} batches"
    )
    for partition in range(PARTITIONS):
        assert watermarks(shared_broker.bootstrap, topic, partition) == (0, RECORDS // PARTITIONS)


LARGE_CLIENT_CONFIG = {
    # Each client's own request limit must let a 1 MB record through to the broker.
    "confluent-kafka": {"message.max.bytes": 2_000_000},
    "aiokafka": {"max_request_size": 2_000_000},
    "kafka-python": {"max_request_size": 2_000_000},
    "kcat": {"message.max.bytes": 2_000_000},
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("client", list(DRIVERS))
def test_one_megabyte_record(shared_broker: BrokerProcess, client: str) -> None:
    driver = DRIVERS[client]
    topic = fresh_topic(f"large-{client}")
    create_topic(shared_broker.bootstrap, topic)
    # Printable and line-free so that kcat can send it as one stdin line.
    value = bytes(33 + b % 94 for b in os.urandom(ONE_MB))
    messages = [
        Message(0, b"small-before", b"x", (("h", b"1"),)),
        Message(0, b"large", value, (("h", b"1"),)),
        Message(0, b"small-after", b"y", (("h", b"1"),)),
    ]
    started = now_ms()
    deliveries = driver.produce(
        shared_broker.bootstrap, topic, messages, "none", LARGE_CLIENT_CONFIG[client]
    )
    consumed = driver.consume(shared_broker.bootstrap, topic, [0], len(messages))
    check_round_trip(messages, deliveries, consumed, (started, now_ms()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("client", list(DRIVERS))
def test_record_over_message_max_bytes(small_limit_broker: BrokerProcess, client: str) -> None:
    """The broker (message.max.bytes=100000) refuses a 200 KB batch with MESSAGE_TOO_LARGE;
    the client's own limit is higher, so the error can only come from the broker."""
    driver = DRIVERS[client]
    topic = fresh_topic(f"too-large-{client}")
    bootstrap = small_limit_broker.bootstrap
    create_topic(bootstrap, topic)
    too_large = Message(0, b"too-large", os.urandom(200_000).hex()[:200_000].encode())
    fits = Message(0, b"fits", b"z" * 50_000)

    if client == "kcat":
        # kcat reports a failed delivery on stderr and with its exit code.
        result = run_kcat(
            ["kcat", "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K", r"\t", "-z", "none"],
            too_large.key + b"\t" + too_large.value + b"\n",  # type: ignore[operator]
        )
        assert result.returncode != 0
        assert b"Message size too large" in result.stderr, result.stderr.decode()
    else:
        deliveries = driver.produce(
            bootstrap, topic, [too_large], "none", LARGE_CLIENT_CONFIG[client]
        )
        assert deliveries is not None
        assert deliveries[0].error == MESSAGE_TOO_LARGE, deliveries[0]
        if client == "confluent-kafka":
            assert "Broker: Message size too large" in deliveries[0].reason

    assert watermarks(bootstrap, topic) == (0, 0), "a refused batch was stored"
    started = now_ms()
    deliveries = driver.produce(bootstrap, topic, [fits], "none", LARGE_CLIENT_CONFIG[client])
    consumed = driver.consume(bootstrap, topic, [0], 1)
    check_round_trip([fits], deliveries, consumed, (started, now_ms()))


def test_topics_are_auto_created(shared_broker: BrokerProcess) -> None:
    """A producer writing to an unknown topic gets it created with the broker's defaults."""
    topic = fresh_topic("auto")
    driver = DRIVERS["confluent-kafka"]
    messages = [Message(0, b"k", b"v", (), now_ms())]
    deliveries = driver.produce(shared_broker.bootstrap, topic, messages, "none")
    assert deliveries == [Delivery(0, 0)]
    consumed = driver.consume(shared_broker.bootstrap, topic, [0], 1)
    check_round_trip(messages, deliveries, consumed, (0, 0))


@pytest.mark.timeout(120)
def test_seek_and_offsets_for_times(shared_broker: BrokerProcess) -> None:
    """Each client finds an offset by timestamp (ListOffsets through the time index) and
    reads from an offset in the middle of a compressed batch."""
    bootstrap = shared_broker.bootstrap
    topic = fresh_topic("seek")
    create_topic(bootstrap, topic)
    driver = DRIVERS["confluent-kafka"]
    messages = make_messages(driver, 5_000, 1, "gzip")
    driver.produce(bootstrap, topic, messages, "gzip")
    target = 3_217
    timestamp = messages[target].timestamp
    assert timestamp is not None
    expected = list(range(target, target + 10))

    consumer = confluent_consumer(bootstrap)
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, 0, timestamp)], timeout=10)
        assert found[0].offset == target
        after_last = consumer.offsets_for_times([TopicPartition(topic, 0, now_ms())], timeout=10)
        assert after_last[0].offset == -1  # no record that late: the end (OFFSET_END)
        consumer.assign([TopicPartition(topic, 0, target)])
        read: list[int] = []
        while len(read) < 10:
            read += [m.offset() for m in consumer.consume(10 - len(read), 10) if not m.error()]
        assert read == expected
    finally:
        consumer.close()

    async def with_aiokafka() -> None:
        partition = aiokafka.TopicPartition(topic, 0)
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            found = await consumer.offsets_for_times({partition: timestamp})
            assert found[partition] is not None and found[partition].offset == target
            consumer.assign([partition])
            consumer.seek(partition, target)
            read: list[int] = []
            while len(read) < 10:
                batch = await consumer.getmany(partition, timeout_ms=1_000, max_records=10)
                read += [record.offset for record in batch.get(partition, [])]
            assert read[:10] == expected
        finally:
            await consumer.stop()

    asyncio.run(with_aiokafka())

    kafka_consumer = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    try:
        partition = kafka.TopicPartition(topic, 0)
        found = kafka_consumer.offsets_for_times({partition: timestamp})
        assert found[partition] is not None and found[partition].offset == target
        kafka_consumer.assign([partition])
        kafka_consumer.seek(partition, target)
        read = []
        while len(read) < 10:
            polled = kafka_consumer.poll(timeout_ms=1_000, max_records=10)
            read += [record.offset for record in polled.get(partition, [])]
        assert read[:10] == expected
    finally:
        kafka_consumer.close()
