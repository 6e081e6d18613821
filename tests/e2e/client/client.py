"""Produce and consume through a Brook cluster's bootstrap address, or list its topics;
prints one JSON line for the e2e tests to read from the pod's log.

``produce`` writes numbered records (value and key: the record's number) with acks=all
and says which were acknowledged; ``verify`` reads a topic from its start and says which
numbers are missing; ``consume-group`` is a consumer-group member for a Deployment, which
runs until SIGTERM and sends the number of each record it has processed to a receipts
topic before committing, so that what was consumed outlives its pod.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

PRODUCER_RETRIES = 30


def produce_and_consume(bootstrap: str, topic: str, records: int, timeout: float) -> dict:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10)
    for index in range(records):
        producer.send(topic, key=f"k{index}".encode(), value=f"record {index}".encode())
    producer.flush(timeout=timeout)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"e2e-{time.time_ns()}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(timeout * 1000),
    )
    values, partitions = set(), set()
    for message in consumer:
        values.add(message.value.decode())
        partitions.add(message.partition)
        if len(values) == records:
            break
    consumer.close()
    return {"produced": records, "consumed": len(values), "partitions": sorted(partitions)}


def list_topics(bootstrap: str) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    topics = sorted(consumer.topics())
    consumer.close()
    return {"topics": topics}


def produce(
    bootstrap: str, topic: str, first: int, records: int, rate: float, timeout: float
) -> dict:
    """Records ``first`` to ``first + records - 1`` at ``rate`` records a second (0: as
    fast as possible); how many the cluster acknowledged and which failed, and why."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", retries=PRODUCER_RETRIES, retry_backoff_ms=500
    )
    acked: list[int] = []
    failed: list[tuple[int, str]] = []
    started = time.monotonic()
    for number in range(first, first + records):
        if rate:
            time.sleep(max(0.0, started + (number - first) / rate - time.monotonic()))
        payload = str(number).encode()
        try:
            future = producer.send(topic, key=payload, value=payload)
        except KafkaError as error:
            failed.append((number, repr(error)))
            continue
        future.add_callback(lambda _metadata, number=number: acked.append(number))
        future.add_errback(lambda error, number=number: failed.append((number, repr(error))))
    producer.flush(timeout=timeout)
    producer.close()
    return {"acked": len(acked), "failures": len(failed), "failed": failed[:20]}


def verify(bootstrap: str, topic: str, first: int, records: int, timeout: float) -> dict:
    """Read every partition of ``topic`` from its start to its current end, without a
    group; which of the numbers ``first`` to ``first + records - 1`` are not there."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(consumer.position(p) < end[p] for p in partitions):
        for batch in consumer.poll(timeout_ms=1000).values():
            seen.update(int(record.value) for record in batch)
    consumer.close()
    missing = sorted(set(range(first, first + records)) - seen)
    return {"found": records - len(missing), "missingCount": len(missing), "missing": missing[:50]}


def consume_group(
    bootstrap: str,
    topic: str,
    group: str,
    receipts: str,
    record_delay_ms: float,
    skip_commit_partition: int | None,
) -> dict:
    """A member of ``group`` until SIGTERM. Processing a record takes ``record_delay_ms``;
    its number then goes to ``receipts`` (acks=all), and once a poll's records are all
    processed and their receipts acknowledged the offsets are committed (at-least-once).
    ``skip_commit_partition`` is read but never committed: a wedged partition."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=50,
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", retries=PRODUCER_RETRIES, retry_backoff_ms=500
    )
    processed = 0
    while not stopping.is_set():
        offsets = {}
        for partition, batch in consumer.poll(timeout_ms=500).items():
            for record in batch:
                time.sleep(record_delay_ms / 1000)
                producer.send(receipts, value=record.value)
                processed += 1
            if partition.partition != skip_commit_partition:
                offsets[partition] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
        producer.flush()
        if offsets:
            # A rebalance fails the commit: the records come again, here or to another member.
            with contextlib.suppress(CommitFailedError):
                consumer.commit(offsets)
    consumer.close()
    producer.close()
    return {"processed": processed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    both = commands.add_parser("produce-consume")
    both.add_argument("--topic", required=True)
    both.add_argument("--records", type=int, default=1000)
    both.add_argument("--timeout", type=float, default=60.0)
    commands.add_parser("topics")
    for name in ("produce", "verify"):
        numbered = commands.add_parser(name)
        numbered.add_argument("--topic", required=True)
        numbered.add_argument("--first", type=int, default=0)
        numbered.add_argument("--records", type=int, default=1000)
        numbered.add_argument("--timeout", type=float, default=120.0)
        if name == "produce":
            numbered.add_argument("--rate", type=float, default=0.0, help="records a second")
    member = commands.add_parser("consume-group")
    member.add_argument("--topic", required=True)
    member.add_argument("--group", required=True)
    member.add_argument("--receipts", required=True)
    member.add_argument("--record-delay-ms", type=float, default=0.0)
    member.add_argument("--skip-commit-partition", type=int)
    arguments = parser.parse_args()
    if arguments.command == "topics":
        result = list_topics(arguments.bootstrap)
    elif arguments.command == "produce":
        result = produce(
            arguments.bootstrap,
            arguments.topic,
            arguments.first,
            arguments.records,
            arguments.rate,
            arguments.timeout,
        )
    elif arguments.command == "verify":
        result = verify(
            arguments.bootstrap,
            arguments.topic,
            arguments.first,
            arguments.records,
            arguments.timeout,
        )
    elif arguments.command == "consume-group":
        result = consume_group(
            arguments.bootstrap,
            arguments.topic,
            arguments.group,
            arguments.receipts,
            arguments.record_delay_ms,
            arguments.skip_commit_partition,
        )
    else:
        result = produce_and_consume(
            arguments.bootstrap, arguments.topic, arguments.records, arguments.timeout
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
