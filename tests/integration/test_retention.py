"""Retention deletes whole old segments in the background and moves the log start offset.

Segments are small (16 KiB) and retention runs every 200 ms. A consumer asking for an
offset below the new log start offset gets OFFSET_OUT_OF_RANGE, and one that is allowed
to reset (auto.offset.reset=earliest) continues from the log start offset.
"""

from __future__ import annotations

import asyncio
import time

import aiokafka
import aiokafka.errors
import confluent_kafka
import pytest

from .brokers import BrokerProcess, KafkaConnection, now_ms, wait_until
from .clients import (
    ConfluentDriver,
    Message,
    confluent_consumer,
    create_topic,
    fetch,
    fetch_all,
    watermarks,
)
from .conftest import StartBroker

SEGMENT_BYTES = 16_384
OFFSET_OUT_OF_RANGE = 1
CONFLUENT = ConfluentDriver()
RETENTION_FLAGS = (
    "--log-retention-check-interval-ms", "200",
    "--log-segment-bytes", str(SEGMENT_BYTES),
)  # fmt: skip


def produce_batches(
    broker: BrokerProcess, topic: str, batches: int, per_batch: int, timestamp: int, first: int
) -> int:
    """Batches of ~4 KiB records with the given create time; returns the next index."""
    index = first
    for _ in range(batches):
        messages = [
            Message(0, f"key-{i}".encode(), f"value-{i}-".encode() + b"r" * 200, (), timestamp)
            for i in range(index, index + per_batch)
        ]
        deliveries = CONFLUENT.produce(broker.bootstrap, topic, messages, "none")
        assert all(d.error is None for d in deliveries), deliveries[0]
        index += per_batch
    return index


def segment_bases(broker: BrokerProcess, topic: str) -> list[int]:
    return [int(path.stem) for path in broker.segments(topic)]


def assert_no_orphan_index_files(broker: BrokerProcess, topic: str) -> None:
    """A deleted segment takes its offset and time index with it."""
    logs = {path.stem for path in broker.segments(topic)}
    for path in broker.partition_dir(topic).iterdir():
        if path.stem.isdigit() and len(path.stem) == 20:
            assert path.stem in logs, f"{path.name} outlived its segment"


def assert_out_of_range_then_reset(broker: BrokerProcess, topic: str, log_start: int) -> None:
    """Below the log start offset: Kafka's error, then a reset to the log start offset."""
    _, high_watermark = watermarks(broker.bootstrap, topic)
    with KafkaConnection(broker.address) as connection:
        answer = fetch(connection, topic, 0, 0)
        assert answer.error_code == OFFSET_OUT_OF_RANGE
        assert answer.log_start_offset == log_start
        answer = fetch(connection, topic, 0, log_start - 1)
        assert answer.error_code == OFFSET_OUT_OF_RANGE
        # What is left is whole batches from the log start offset to the high watermark.
        _, batches = fetch_all(connection, topic, 0, start=log_start)
        assert batches[0].base_offset == log_start
        assert batches[-1].next_offset == high_watermark

    assert (
        confluent_error_below_start(broker, topic) == confluent_kafka.KafkaError._AUTO_OFFSET_RESET
    )
    assert confluent_offsets_after_reset(broker, topic) == list(range(log_start, high_watermark))
    asyncio.run(aiokafka_out_of_range_then_reset(broker, topic, log_start, high_watermark))


def confluent_error_below_start(broker: BrokerProcess, topic: str) -> int:
    consumer = confluent_consumer(broker.bootstrap, auto_offset_reset="error")
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        deadline = now_ms() + 20_000
        while now_ms() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            assert error is not None, f"read offset {message.offset()} below the log start"
            assert "Offset out of range" in error.str(), error.str()
            return int(error.code())
        raise AssertionError("no error for an offset below the log start offset")
    finally:
        consumer.close()


def confluent_offsets_after_reset(broker: BrokerProcess, topic: str) -> list[int]:
    consumer = confluent_consumer(broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        _, high_watermark = watermarks(broker.bootstrap, topic)
        offsets: list[int] = []
        deadline = now_ms() + 20_000
        while (not offsets or offsets[-1] < high_watermark - 1) and now_ms() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                offsets.append(message.offset())
        return offsets
    finally:
        consumer.close()


async def aiokafka_out_of_range_then_reset(
    broker: BrokerProcess, topic: str, log_start: int, high_watermark: int
) -> None:
    partition = aiokafka.TopicPartition(topic, 0)
    for reset in ("none", "earliest"):
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset=reset,
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([partition])
            consumer.seek(partition, 0)
            if reset == "none":
                with pytest.raises(aiokafka.errors.OffsetOutOfRangeError):
                    await asyncio.wait_for(consumer.getmany(timeout_ms=10_000), 20)
            else:
                offsets: list[int] = []
                while not offsets or offsets[-1] < high_watermark - 1:
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1_000), 20)
                    offsets += [record.offset for records in batch.values() for record in records]
                assert offsets == list(range(log_start, high_watermark))
        finally:
            await asyncio.wait_for(consumer.stop(), 20)


@pytest.mark.timeout(120)
def test_retention_ms_deletes_old_segments(start_broker: StartBroker) -> None:
    broker = start_broker(*RETENTION_FLAGS)
    topic = "retention-time"
    create_topic(broker.bootstrap, topic, config={"retention.ms": "600000"})  # ten minutes
    a_day_ago = now_ms() - 24 * 3_600_000
    first_new = produce_batches(broker, topic, 40, 20, a_day_ago, first=0)
    end = produce_batches(broker, topic, 5, 20, now_ms(), first=first_new)

    def retention_done() -> bool:
        bases = segment_bases(broker, topic)
        return len(bases) > 0 and bases[0] > 0 and watermarks(broker.bootstrap, topic)[0] > 0

    wait_until(retention_done, timeout=20, message="no old segment was deleted")
    # Let any further due deletion happen, then look at a settled log.
    wait_until(lambda: stable_segments(broker, topic), timeout=20)
    log_start, high_watermark = watermarks(broker.bootstrap, topic)
    bases = segment_bases(broker, topic)
    assert high_watermark == end
    assert bases[0] == log_start, "the log start offset is not the first segment's base"
    # Every segment holding only old records is gone; the one holding the first new record
    # (and everything after it) is kept.
    assert 0 < log_start <= first_new
    assert len(bases) == 1 or bases[1] > first_new, f"old segments left: {bases}"
    assert_no_orphan_index_files(broker, topic)
    assert_out_of_range_then_reset(broker, topic, log_start)
    # The moved log start offset is where a restarted broker begins too.
    broker.restart()
    assert watermarks(broker.bootstrap, topic) == (log_start, high_watermark)


def stable_segments(broker: BrokerProcess, topic: str, pause_s: float = 1.0) -> bool:
    before = segment_bases(broker, topic)
    time.sleep(pause_s)
    return segment_bases(broker, topic) == before


@pytest.mark.timeout(120)
def test_retention_bytes_deletes_oldest_segments(start_broker: StartBroker) -> None:
    broker = start_broker(*RETENTION_FLAGS)
    topic = "retention-size"
    retention_bytes = 40_000
    create_topic(broker.bootstrap, topic, config={"retention.bytes": str(retention_bytes)})
    end = produce_batches(broker, topic, 50, 20, now_ms(), first=0)  # ~230 KB

    wait_until(
        lambda: watermarks(broker.bootstrap, topic)[0] > 0, timeout=20,
        message="retention.bytes deleted nothing",
    )  # fmt: skip
    wait_until(lambda: stable_segments(broker, topic), timeout=20)
    log_start, high_watermark = watermarks(broker.bootstrap, topic)
    assert high_watermark == end
    assert segment_bases(broker, topic)[0] == log_start
    sizes = [path.stat().st_size for path in broker.segments(topic)]
    # Kafka deletes the oldest segments while the rest still hold retention.bytes or more.
    assert sum(sizes) >= retention_bytes, f"deleted more than needed: {sizes}"
    assert sum(sizes) - sizes[0] < retention_bytes, f"kept more than needed: {sizes}"
    assert_no_orphan_index_files(broker, topic)
    assert_out_of_range_then_reset(broker, topic, log_start)
