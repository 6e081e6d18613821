"""How fast the log cleaner compacts, and what it costs the producers of a broker.

    python bench/log_cleaner.py [--keys 10000] [--rounds 50] [--record-bytes 100]
                                [--rate 1000] [--rewrite-rate 20000] [--seconds 10]

* cleaning: for each codec, a compacted log of ``--keys`` keys written ``--rounds`` times
  (100 records a batch, 1 MiB segments) is built in a temporary directory and cleaned
  in one run by the broker's ``LogCleaner`` (in a thread) (no I/O throttle, a map large enough for
  every key); printed: MB of segment files read per second of the run (each byte is
  read twice: once to map the keys, once to rewrite), records of the log cleaned per
  second, the size before and after, and the records kept (which must be ``--keys``).
* producers beside the cleaner: one broker, started three times: without the cleaner,
  with it, and with it throttled to 1 MB/s (``--log-cleaner-io-max-bytes-per-second``).
  Each time, a background producer rewrites the keys of a compacted topic at
  ``--rewrite-rate`` records/s (2 MB/s by default, so that, with the cleaner on, it
  always has dirty segments to clean), and meanwhile an acks=all idempotent producer
  sends 1 KB records to another topic, first at ``--rate`` records/s (publish→ack
  p50/p99/max, the first second left out), then as fast as it can for ``--seconds``
  (records/s). Also printed: the MB the cleaner read meanwhile (from ``/metrics``) and
  the broker's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.cleaner import LogCleaner, ThreadWorker
from brook_broker.storage.log import LogConfig, PartitionLog, wall_clock_ms
from brook_broker.storage.records import iter_records
from brook_cli.local import BrokerProcess, plan_cluster, stop_all
from confluent_kafka.admin import AdminClient, NewTopic
from latency import STAMP, Percentiles
from produce_consume import process_cpu_seconds

from tests.integration.brokers import free_cluster_port
from tests.support.batches import Record, encode_batch

BATCH_RECORDS = 100
SEGMENT_BYTES = 1024 * 1024
CODECS = ("none", "lz4", "zstd")
WARM_UP_S = 1.0
CLEANER_MODES = {
    "off": ("--log-cleaner-enable", "false"),
    "on": (),
    "on, 1 MB/s": ("--log-cleaner-io-max-bytes-per-second", "1000000"),
}
"""Broker flags of each run beside the cleaner."""
COMPACTED_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": str(4 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
}


@dataclass(frozen=True)
class Cleaning:
    codec: str
    seconds: float
    bytes_read: int
    bytes_before: int
    bytes_after: int
    records_after: int


def build_compacted_log(directory: Path, options: argparse.Namespace, codec: str) -> PartitionLog:
    config = LogConfig(
        segment_bytes=SEGMENT_BYTES,
        cleanup_policy="compact",
        min_cleanable_dirty_ratio=0.0,
        delete_retention_ms=10**12,
    )
    log = PartitionLog.open(directory, "table", 0, config)
    now_ms = wall_clock_ms()
    padding = b"v" * max(0, options.record_bytes - 16)
    for round_ in range(options.rounds):
        for first in range(0, options.keys, BATCH_RECORDS):
            records = [
                Record(b"key-%08d" % key, b"%06d" % round_ + padding)
                for key in range(first, min(first + BATCH_RECORDS, options.keys))
            ]
            data = encode_batch(records, codec=codec, base_timestamp=now_ms)
            log.append(data, validate_batches(data), now_ms=now_ms, leader_epoch=0)
    log.update_config(dataclasses.replace(config, segment_ms=0))
    log.roll_if_due(wall_clock_ms())  # every record written may be cleaned
    log.update_config(config)
    log.high_watermark = log.log_end_offset
    return log


def log_bytes(log: PartitionLog) -> int:
    return sum(segment.size for segment in log.sealed_segments())


def measure_cleaning(root: Path, options: argparse.Namespace, codec: str) -> Cleaning:
    directory = root / f"table-{codec}"
    log = build_compacted_log(directory, options, codec)
    before = log_bytes(log)
    cleaner = LogCleaner(
        lambda: [log],
        worker=ThreadWorker(),
        dedupe_buffer_size=1 << 30,
        io_max_bytes_per_second=float("inf"),
        backoff_ms=100,
    )
    start = time.perf_counter()
    if not asyncio.run(cleaner.clean_dirtiest()):
        raise RuntimeError(f"{codec}: the cleaner found nothing to clean")
    seconds = time.perf_counter() - start
    records = sum(
        1 for segment in log.sealed_segments() for _ in iter_records(segment.log_path.read_bytes())
    )
    after = log_bytes(log)
    log.close()
    shutil.rmtree(directory)
    return Cleaning(codec, seconds, cleaner.stats.bytes_read, before, after, records)


@dataclass(frozen=True)
class Beside:
    cleaner: str
    publish: Percentiles
    bulk_rate: float
    cleaner_mb_read: float
    broker_cpu_s: float


def metric(http_address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def rewrite_keys(bootstrap: str, topic: str, keys: int, rate: int, stop: threading.Event) -> None:
    """Overwrite the keys of ``topic`` in turn, ``rate`` records a second, until ``stop``."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    value = b"x" * 100
    start = time.monotonic()
    number = 0
    while not stop.is_set():
        while (wait := start + number / rate - time.monotonic()) > 0:
            producer.poll(min(wait, 0.1))
        producer.produce(topic, value, b"key-%08d" % (number % keys))
        number += 1
        if number % 1000 == 0:
            producer.poll(0)
    producer.flush(30)


def publish_latencies(bootstrap: str, topic: str, rate: int, seconds: float) -> list[float]:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 1}
    )
    latencies: list[float] = []
    warm_until = time.time_ns() + int(WARM_UP_S * 1e9)
    padding = b"x" * (1024 - STAMP.size)

    def delivered(
        error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message
    ) -> None:
        if error is not None:
            raise RuntimeError(f"a record failed: {error}")
        (sent,) = STAMP.unpack_from(message.value() or b"\0" * 8)
        if sent >= warm_until:
            latencies.append((time.time_ns() - sent) / 1e6)

    start = time.monotonic()
    for number in range(int(rate * seconds)):
        due = start + number / rate
        while (wait := due - time.monotonic()) > 0:
            producer.poll(wait)
        producer.produce(topic, STAMP.pack(time.time_ns()) + padding, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(30):
        raise RuntimeError("records still unacknowledged after flush")
    return latencies


def bulk_rate(bootstrap: str, topic: str, seconds: float) -> float:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    value = b"x" * 1024
    sent = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        try:
            producer.produce(topic, value)
            sent += 1
        except BufferError:
            producer.poll(0.01)
    if producer.flush(60):
        raise RuntimeError("records still unacknowledged after flush")
    return sent / (time.monotonic() - start)


def measure_beside(root: Path, options: argparse.Namespace, cleaner: str) -> Beside:
    (spec,) = plan_cluster(
        brokers=1,
        data_dir=root / f"cleaner-{len(list(root.glob('cleaner-*')))}",
        host="127.0.0.1",
        port=free_cluster_port(1),
        broker_args=("--log-cleaner-backoff-ms", "100", *CLEANER_MODES[cleaner]),
    )
    with (root / "broker.log").open("ab") as logs:
        broker = BrokerProcess(spec, stderr=logs)
        broker.start()
        try:
            broker.wait_ready(60)
            admin = AdminClient({"bootstrap.servers": spec.kafka_address})
            topics = [
                NewTopic("table", 1, 1, config=COMPACTED_TOPIC_CONFIG),
                NewTopic("orders", 1, 1),
            ]
            for future in admin.create_topics(topics, request_timeout=15).values():
                future.result(timeout=30)
            stop = threading.Event()
            writer = threading.Thread(
                target=rewrite_keys,
                args=(spec.kafka_address, "table", options.keys, options.rewrite_rate, stop),
            )
            writer.start()
            try:
                time.sleep(3)  # the compacted topic fills its first segments
                read_before = metric(spec.http_address, "brook_log_cleaner_bytes_read_total")
                cpu_before = process_cpu_seconds(broker.pid)
                latencies = publish_latencies(
                    spec.kafka_address, "orders", options.rate, options.seconds
                )
                rate = bulk_rate(spec.kafka_address, "orders", options.seconds)
                cpu = process_cpu_seconds(broker.pid) - cpu_before
                read = metric(spec.http_address, "brook_log_cleaner_bytes_read_total") - read_before
            finally:
                stop.set()
                writer.join(timeout=60)
        finally:
            stop_all([broker], timeout=30)
    return Beside(cleaner, Percentiles.of(latencies), rate, read / 1e6, cpu)


def report(options: argparse.Namespace, cleanings: list[Cleaning], besides: list[Beside]) -> None:
    print(
        f"cleaning: {options.keys:,} keys x {options.rounds} rounds, {options.record_bytes}-byte "
        f"records, {BATCH_RECORDS} a batch, {SEGMENT_BYTES // 1024} KiB segments, one run"
    )
    print(
        f"{'codec':<6}{'MB/s':>8}{'records/s':>11}{'seconds':>9}{'MB before':>11}"
        f"{'MB after':>10}{'records kept':>14}"
    )
    for run in cleanings:
        print(
            f"{run.codec:<6}{run.bytes_read / 1e6 / run.seconds:>8.1f}"
            f"{options.keys * options.rounds / run.seconds:>11,.0f}{run.seconds:>9.2f}"
            f"{run.bytes_before / 1e6:>11.1f}{run.bytes_after / 1e6:>10.2f}{run.records_after:>14,}"
        )
    print()
    print(
        f"one broker; a producer rewrites {options.keys:,} keys of a compacted topic meanwhile "
        f"({options.rewrite_rate:,} records/s); "
        f"acks=all idempotent 1 KB records to another topic"
    )
    print(
        f"{'cleaner':<11} | {'at ' + format(options.rate, ',') + '/s publish→ack ms':^31} | "
        f"{'bulk rec/s':>10} | {'cleaner MB read':>15} | broker CPU s"
    )
    print(f"{'':<11} | {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} |")
    for run in besides:
        print(
            f"{run.cleaner:<11} | {run.publish.cells()} | "
            f"{run.bulk_rate:>10,.0f} | {run.cleaner_mb_read:>15.1f} | {run.broker_cpu_s:>12.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000, help="keys of the compacted topic")
    parser.add_argument("--rounds", type=int, default=50, help="times each key is written")
    parser.add_argument("--record-bytes", type=int, default=100, help="bytes per record value")
    parser.add_argument("--rate", type=int, default=1000, help="records/s of the latency run")
    parser.add_argument(
        "--rewrite-rate", type=int, default=20_000, help="records/s rewriting the keys (20,000)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per producer run")
    options = parser.parse_args()
    if (
        min(options.keys, options.rounds, options.rate, options.rewrite_rate) < 1
        or options.seconds <= WARM_UP_S
    ):
        parser.error(f"counts must be >= 1 and --seconds > {WARM_UP_S:g}")
    with tempfile.TemporaryDirectory(prefix="brook-cleaner-") as scratch:
        root = Path(scratch)
        cleanings = [measure_cleaning(root, options, codec) for codec in CODECS]
        for run in cleanings:
            if run.records_after != options.keys:
                print(f"bench: {run.codec}: {run.records_after} records kept", file=sys.stderr)
                return 1
        besides = [measure_beside(root, options, cleaner) for cleaner in CLEANER_MODES]
    report(options, cleanings, besides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
