"""Acknowledged data survives restarts, and a damaged segment tail is recovered on start.

A crash can leave the active segment ending in a torn batch (cut mid-write) or in bytes
that were never a batch. On start the broker must truncate the log to the end of the last
whole batch with a valid CRC: the log end offset becomes that batch's next offset,
everything before it reads back intact, and new records continue from there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from brook_broker.storage.batch import BatchHeader, crc_matches, iter_headers

from .brokers import BrokerProcess, KafkaConnection, now_ms
from .clients import (
    ConfluentDriver,
    Consumed,
    Delivery,
    Message,
    create_topic,
    fetch,
    list_offset,
    watermarks,
)
from .conftest import StartBroker

OFFSET_OUT_OF_RANGE = 1
CONFLUENT = ConfluentDriver()


def make_messages(count: int, first: int = 0) -> list[Message]:
    base_timestamp = now_ms() - 600_000
    return [
        Message(
            0,
            f"key-{index}".encode(),
            f"value-{index}-".encode() + bytes([index % 251]) * (index % 300),
            (("index", str(index).encode()),),
            base_timestamp + index,
        )
        for index in range(first, first + count)
    ]


def produce_in_batches(
    broker: BrokerProcess,
    topic: str,
    messages: Sequence[Message],
    per_batch: int,
    acks: str = "all",
) -> list[Delivery]:
    """One producer flush per chunk, so that the log holds many separate batches."""
    deliveries: list[Delivery] = []
    for start in range(0, len(messages), per_batch):
        chunk = messages[start : start + per_batch]
        deliveries += CONFLUENT.produce(broker.bootstrap, topic, chunk, "none", {"acks": acks})
    assert [d.error for d in deliveries] == [None] * len(messages), deliveries[:3]
    return deliveries


def read_back(broker: BrokerProcess, topic: str, count: int) -> list[Consumed]:
    return CONFLUENT.consume(broker.bootstrap, topic, [0], count)


def assert_same(messages: Sequence[Message], consumed: Sequence[Consumed]) -> None:
    assert len(consumed) == len(messages), f"read {len(consumed)}, expected {len(messages)}"
    for offset, (message, record) in enumerate(zip(messages, consumed, strict=True)):
        assert record.offset == offset
        assert (record.key, record.value, record.headers, record.timestamp) == (
            message.key,
            message.value,
            message.headers,
            message.timestamp,
        ), f"offset {offset}"


@pytest.mark.timeout(120)
def test_data_survives_clean_stop(broker: BrokerProcess) -> None:
    topic = "clean-stop"
    create_topic(broker.bootstrap, topic)
    messages = make_messages(5_000)
    produce_in_batches(broker, topic, messages, per_batch=500)

    assert broker.stop() == 0, f"SIGTERM did not stop the broker cleanly\n{broker.log_tail()}"
    broker.start()

    assert watermarks(broker.bootstrap, topic) == (0, len(messages))
    assert_same(messages, read_back(broker, topic, len(messages)))
    more = make_messages(100, first=len(messages))
    deliveries = produce_in_batches(broker, topic, more, per_batch=100)
    assert deliveries[0].offset == len(messages)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("acks", ["all", "1"])
def test_acknowledged_data_survives_kill9(broker: BrokerProcess, acks: str) -> None:
    topic = f"kill9-acks-{acks}"
    create_topic(broker.bootstrap, topic)
    messages = make_messages(5_000)
    produce_in_batches(broker, topic, messages, per_batch=1_000, acks=acks)

    broker.kill9()
    broker.start()

    assert watermarks(broker.bootstrap, topic) == (0, len(messages))
    assert_same(messages, read_back(broker, topic, len(messages)))
    more = make_messages(10, first=len(messages))
    assert produce_in_batches(broker, topic, more, per_batch=10)[0].offset == len(messages)


def last_batch(data: bytes) -> tuple[int, BatchHeader]:
    """Position and header of the last whole batch in ``data``."""
    return list(iter_headers(data))[-1]


def cut_mid_batch(segment: Path, data: bytes) -> int:
    position, last = last_batch(data)
    os.truncate(segment, position + last.size // 2)
    return last.base_offset


def garbage_over_tail(segment: Path, data: bytes) -> int:
    """The last batch keeps its length but its last bytes are random: its CRC fails."""
    position, last = last_batch(data)
    size = min(64, last.size - 61)
    with segment.open("r+b") as file:
        file.seek(position + last.size - size)
        file.write(os.urandom(size))
    return last.base_offset


def garbage_over_header(segment: Path, data: bytes) -> int:
    """The last batch's header, its length field included, is random."""
    position, last = last_batch(data)
    with segment.open("r+b") as file:
        file.seek(position)
        file.write(os.urandom(61))
    return last.base_offset


def garbage_appended(segment: Path, data: bytes) -> int:
    with segment.open("ab") as file:
        file.write(os.urandom(700))
    return last_batch(data)[1].next_offset


def zeros_appended(segment: Path, data: bytes) -> int:
    """As a file system can leave after a crash: the file grew, the data never landed."""
    with segment.open("ab") as file:
        file.write(bytes(4096))
    return last_batch(data)[1].next_offset


DAMAGES = {
    f.__name__: f
    for f in (
        cut_mid_batch,
        garbage_over_tail,
        garbage_over_header,
        garbage_appended,
        zeros_appended,
    )
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_tail_is_recovered(start_broker: StartBroker, damage: str, stop: str) -> None:
    # A small index interval puts many offset and time index entries past the cut, which
    # recovery must drop too.
    broker = start_broker("--log-index-interval-bytes", "256")
    topic = "damaged"
    create_topic(broker.bootstrap, topic)
    messages = make_messages(2_000)
    produce_in_batches(broker, topic, messages, per_batch=100)
    if stop == "sigterm":
        assert broker.stop() == 0
    else:
        broker.kill9()

    segment = broker.segments(topic)[-1]
    data = segment.read_bytes()
    batches = list(iter_headers(data))
    assert batches, "segment does not end with a whole batch"
    position, last = batches[-1]
    assert position + last.size == len(data), "segment does not end with a whole batch"
    assert all(crc_matches(data, header, position) for position, header in batches)
    assert last.next_offset == len(messages)
    log_end_offset = DAMAGES[damage](segment, data)

    broker.start()

    assert watermarks(broker.bootstrap, topic) == (0, log_end_offset)
    kept = messages[:log_end_offset]
    assert_same(kept, read_back(broker, topic, len(kept)))
    with KafkaConnection(broker.address) as connection:
        # Nothing of the dropped records is left in the offset or time index.
        assert fetch(connection, topic, 0, log_end_offset).records in (None, b"")
        assert fetch(connection, topic, 0, log_end_offset + 1).error_code == OFFSET_OUT_OF_RANGE
        last_kept = fetch(connection, topic, 0, log_end_offset - 1)
        assert last_kept.error_code == 0
        assert last_batch(bytes(last_kept.records))[1].next_offset == log_end_offset
        if log_end_offset < len(messages):
            dropped_time = messages[log_end_offset].timestamp
            assert list_offset(connection, topic, 0, dropped_time).offset == -1
        kept_time = messages[log_end_offset - 1].timestamp
        assert list_offset(connection, topic, 0, kept_time).offset == log_end_offset - 1

    more = make_messages(50, first=10_000)
    deliveries = produce_in_batches(broker, topic, more, per_batch=50)
    assert [d.offset for d in deliveries] == list(range(log_end_offset, log_end_offset + 50))
    assert_same(kept + more, read_back(broker, topic, len(kept) + len(more)))
