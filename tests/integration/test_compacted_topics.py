"""A compacted topic (cleanup.policy=compact) keeps the latest record of each key, so,
as in Kafka, it refuses records without a key: the producer gets INVALID_RECORD and
nothing of that partition's data in the request is stored, while keyed records and
other partitions are taken as usual."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from brook_broker.storage.batch import BatchHeader, iter_headers
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support.batches import Record, encode_batch

from .brokers import BrokerProcess, KafkaConnection, now_ms, wait_until
from .clients import (
    DRIVERS,
    ConfluentDriver,
    Message,
    confluent_consumer,
    create_topic,
    watermarks,
)
from .conftest import StartBroker

INVALID_RECORD = 87
CONFLUENT = ConfluentDriver()
COMPACT = {"cleanup.policy": "compact"}


def test_confluent_producer_gets_invalid_record_for_a_keyless_record(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, "profiles", config=COMPACT)
    [refused] = CONFLUENT.produce(broker.bootstrap, "profiles", [Message(0, None, b"x")], "lz4")
    assert refused.error == INVALID_RECORD, refused
    [keyed] = CONFLUENT.produce(
        broker.bootstrap, "profiles", [Message(0, b"user-1", b"ada")], "lz4"
    )
    assert (keyed.error, keyed.offset) == (None, 0)
    consumed = CONFLUENT.consume(broker.bootstrap, "profiles", [0], 1)
    assert [(record.key, record.value) for record in consumed] == [(b"user-1", b"ada")]
    assert watermarks(broker.bootstrap, "profiles") == (0, 1)
    # A topic that only deletes by retention takes records without a key.
    create_topic(broker.bootstrap, "events")
    [taken] = CONFLUENT.produce(broker.bootstrap, "events", [Message(0, None, b"x")], "lz4")
    assert (taken.error, taken.offset) == (None, 0)


def produce_to_partitions(broker: BrokerProcess, topic: str, records: list[bytes]) -> list[Any]:
    """One Produce v9 with ``records[i]`` for partition ``i``; each partition's answer."""
    with KafkaConnection(broker.address) as connection:
        response = connection.request(
            ProduceRequest(
                transactional_id=None,
                acks=-1,
                timeout=datetime.timedelta(seconds=10),
                topic_data=(
                    TopicProduceData(
                        name=topic,
                        partition_data=tuple(
                            PartitionProduceData(index=index, records=data)
                            for index, data in enumerate(records)
                        ),
                    ),
                ),
            )
        )
    return sorted(response.responses[0].partition_responses, key=lambda answer: answer.index)


def test_a_keyless_record_refuses_all_of_its_partitions_data_with_kafkas_message(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, "accounts", partitions=2, config=COMPACT)

    def batch(*keys: bytes | None) -> bytes:
        records = [Record(key, b"balance") for key in keys]
        return encode_batch(records, base_timestamp=now_ms(), codec="zstd")

    refused, taken = produce_to_partitions(
        broker, "accounts", [batch(b"a", b"b") + batch(b"c", None), batch(b"d")]
    )
    assert refused.error_code == INVALID_RECORD
    assert refused.error_message == (
        "Compacted topic cannot accept message without key in topic partition accounts-0."
    )
    assert (taken.error_code, taken.base_offset) == (0, 0)
    # The keyed batch that came before the refused one in the same request is not stored.
    assert watermarks(broker.bootstrap, "accounts", 0) == (0, 0)
    assert watermarks(broker.bootstrap, "accounts", 1) == (0, 1)


def live_children(pid: int) -> set[int]:
    """Processes (not zombies) whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if int(parent) == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_broker_stopped_while_compacting_leaves_no_process_behind(
    start_broker: StartBroker, stop: str
) -> None:
    """The broker compacts in a child process: a clean stop still exits 0 and a kill -9
    takes the child along (left running, it would write into the restarted broker's log);
    the restarted broker serves the latest value of every key."""
    broker = start_broker(
        "--log-cleaner-backoff-ms", "100",
        "--log-cleaner-io-max-bytes-per-second", "20000",  # the run lasts half a minute
    )  # fmt: skip
    config = {"segment.bytes": "65536", "min.cleanable.dirty.ratio": "0.01"}
    # Nothing is cleaned until all is written: the first run has all of it to read.
    create_topic(
        broker.bootstrap, "table", config={**COMPACT, **config, "min.compaction.lag.ms": "3000"}
    )
    messages = [Message(0, b"key-%d" % (n % 100), b"value-%d" % n) for n in range(10_000)]
    assert all(
        result.error is None
        for result in CONFLUENT.produce(broker.bootstrap, "table", messages, "none")
    )
    children = wait_until(
        lambda: len(live_children(broker.pid)) >= 2 and live_children(broker.pid),
        timeout=30,
        message="the compaction process and its resource tracker",
    )
    if stop == "SIGTERM":
        assert broker.stop() == 0
    else:
        broker.kill9()
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=10, message="children gone")
    broker.start()
    latest = {message.key: message.value for message in messages}
    assert latest_values(broker.bootstrap, "table") == latest


def latest_values(bootstrap: str, topic: str) -> dict[bytes | None, bytes | None]:
    """Each key's last value, read with a consumer from the start to the high watermark."""
    _, high = watermarks(bootstrap, topic)
    consumer = confluent_consumer(bootstrap)
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    values: dict[bytes | None, bytes | None] = {}
    offset = -1
    deadline = time.monotonic() + 30
    try:
        while offset < high - 1 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            offset = message.offset()
            values[message.key()] = message.value()
    finally:
        consumer.close()
    assert offset == high - 1, f"read up to {offset} of {high}"
    return values


def stored_headers(broker: BrokerProcess, topic: str) -> list[BatchHeader]:
    return [
        header for path in broker.segments(topic) for _, header in iter_headers(path.read_bytes())
    ]


def test_every_client_reads_a_cleaned_tombstone_with_its_timestamp(
    start_broker: StartBroker,
) -> None:
    """The cleaner rewrites a batch that keeps a tombstone with Kafka's delete horizon: the
    horizon becomes the batch's base timestamp and the records' timestamps are kept by
    their deltas. Every client must read the same keys, values and timestamps."""
    broker = start_broker(
        "--log-cleaner-backoff-ms", "100", "--log-retention-check-interval-ms", "100"
    )  # fmt: skip
    create_topic(
        broker.bootstrap,
        "table",
        config={**COMPACT, "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.01"},
    )
    written_ms = now_ms() - 3_600_000
    messages = [
        Message(0, b"a", b"1", timestamp=written_ms),
        Message(0, b"b", b"1", timestamp=written_ms + 1),
        Message(0, b"a", None, timestamp=written_ms + 2),
    ]
    results = CONFLUENT.produce(broker.bootstrap, "table", messages, "zstd")
    assert [result.offset for result in results] == [0, 1, 2]
    wait_until(
        lambda: any(header.delete_horizon_ms for header in stored_headers(broker, "table")),
        timeout=60,
        message="the tombstone's batch cleaned",
    )
    for driver in DRIVERS.values():
        consumed = driver.consume(broker.bootstrap, "table", [0], 2)
        assert [(r.offset, r.key, r.value, r.timestamp) for r in consumed] == [
            (1, b"b", b"1", written_ms + 1),
            (2, b"a", None, written_ms + 2),
        ], driver.name
