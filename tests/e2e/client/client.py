"""Produce and consume through a Brook cluster's bootstrap address, or list its topics;
prints one JSON line for the e2e tests to read from the pod's log."""

from __future__ import annotations

import argparse
import json
import time

from kafka import KafkaConsumer, KafkaProducer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    both = commands.add_parser("produce-consume")
    both.add_argument("--topic", required=True)
    both.add_argument("--records", type=int, default=1000)
    both.add_argument("--timeout", type=float, default=60.0)
    commands.add_parser("topics")
    arguments = parser.parse_args()
    if arguments.command == "topics":
        result = list_topics(arguments.bootstrap)
    else:
        result = produce_and_consume(
            arguments.bootstrap, arguments.topic, arguments.records, arguments.timeout
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
