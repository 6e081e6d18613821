"""fetch.max.bytes: the broker bounds each Fetch answer, whatever the request asks.

A Fetch answer is built whole and held until the client has taken it. Before the bound,
a client asking for 100 MB of a partition holding 30 MB made the broker hold ~45 MB per
connection that did not read; a few hundred such connections exhausted its memory.
"""

from __future__ import annotations

import datetime
import socket
import struct
import time

import confluent_kafka
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

from .brokers import BrokerProcess, KafkaConnection, decode_response, encode_request
from .clients import create_topic
from .conftest import StartBroker
from .test_connection_limits import rss_mb

MB = 1024 * 1024
CAP = 256 * 1024
FETCH_KEY, FETCH_VERSION = 1, 12
RESPONSE_OVERHEAD = 1024
"""Bytes of a one-partition Fetch answer besides its records."""


def store(
    broker: BrokerProcess, topic: str, record_bytes: int, records: int, batch_size: int = 100_000
) -> None:
    """``records`` records of ``record_bytes`` zero bytes in partition 0 of a new ``topic``."""
    create_topic(broker.bootstrap, topic)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "batch.size": batch_size}
    )
    for _ in range(records):
        producer.produce(topic, bytes(record_bytes), partition=0)
        producer.poll(0)
    assert producer.flush(30) == 0


def fetch_everything(topic: str, correlation_id: int = 1) -> bytes:
    """A size-prefixed Fetch v12 of ``topic`` asking for 100 MB in all and per partition."""
    partition = FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=100 * MB)
    request = FetchRequest(
        replica_id=-1,
        max_wait=datetime.timedelta(0),
        min_bytes=1,
        max_bytes=100 * MB,
        topics=(FetchTopic(topic=topic, partitions=(partition,)),),
        forgotten_topics_data=(),
    )
    frame = encode_request(request, correlation_id)
    return struct.pack(">i", len(frame)) + frame


def fetched_batches(broker: BrokerProcess, topic: str) -> list[int]:
    """The sizes of the record batches one such fetch returns."""
    with KafkaConnection(broker.address) as connection:
        connection.send_raw(fetch_everything(topic))
        response = decode_response(FETCH_KEY, FETCH_VERSION, connection.read_frame(), 1)
    (answer,) = response.responses[0].partitions
    assert answer.error_code == 0
    records = bytes(answer.records or b"")
    sizes = []
    while records:
        (length,) = struct.unpack_from(">i", records, 8)
        sizes.append(12 + length)
        records = records[12 + length :]
    return sizes


def test_a_fetch_gets_at_most_fetch_max_bytes(start_broker: StartBroker) -> None:
    broker = start_broker("--fetch-max-bytes", str(CAP))
    store(broker, "small-batches", 10_000, 200)  # about 2 MB in batches of about 100 KB
    batches = fetched_batches(broker, "small-batches")
    assert len(batches) > 1
    assert sum(batches) <= CAP, batches


def test_a_first_batch_larger_than_fetch_max_bytes_is_still_returned(
    start_broker: StartBroker,
) -> None:
    broker = start_broker("--fetch-max-bytes", str(CAP))
    store(broker, "large-batches", 3 * CAP // 2, 3)  # one record per batch, each over the cap
    batches = fetched_batches(broker, "large-batches")
    assert len(batches) == 1, batches
    assert batches[0] > CAP


def test_unread_fetch_answers_hold_at_most_the_cap(start_broker: StartBroker) -> None:
    readers_count, cap = 20, 2 * MB
    broker = start_broker("--fetch-max-bytes", str(cap))
    store(broker, "large", 100_000, 150)  # about 15 MB
    time.sleep(1)
    before = rss_mb(broker.pid)
    readers = []
    try:
        for correlation_id in range(readers_count):
            reader = socket.create_connection(broker.address, timeout=10.0)
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(fetch_everything("large", correlation_id))
            readers.append(reader)
        for reader in readers:  # each answer is built; its size is the first thing sent
            (size,) = struct.unpack(">i", reader.recv(4, socket.MSG_WAITALL))
            assert size <= cap + RESPONSE_OVERHEAD
        time.sleep(1)
        growth = rss_mb(broker.pid) - before
        # Without the cap each unread answer held the whole 15 MB (300 MB in all).
        assert growth < readers_count * cap * 2 / MB, f"{growth:.0f} MB"
    finally:
        for reader in readers:
            reader.close()
