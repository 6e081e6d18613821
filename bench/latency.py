"""What a user of a three-broker cluster waits for: latency percentiles at a fixed rate.

    python bench/latency.py [--rates 1000,10000] [--seconds 10] [--partitions 6]

Starts three brokers the way ``brook local up --brokers 3`` does, then for each rate runs
three producers one after another, each against a fresh topic (``--partitions``
partitions, replication factor 3, min.insync.replicas 2):

* ``acks=all idempotent`` — what every guide recommends (``enable.idempotence=true``);
* ``acks=all``            — without idempotence (librdkafka's default in-flight limit);
* ``acks=1``              — the leader alone.

A confluent-kafka producer sends 1 KB records at the fixed rate with ``linger.ms=1``;
each record carries its send time. A group consumer in another process reads them.
Publish→ack is the time from ``produce()`` to the delivery report, end-to-end the time
from ``produce()`` to the consumer holding the record (same machine, same clock). The
first second of each run is left out (connections, metadata, group join).

Printed per run: p50, p99, p99.9 and max of both, in milliseconds, the rate reached, and
the CPU time the three brokers spent per 1,000 records (a figure that stays meaningful on
a machine busy with other work, where the percentiles do not).
Goal at 10,000 records/s on a 2-core machine shared by client and brokers: acks=all
p99 publish→ack <= 10 ms and end-to-end <= 15 ms; p50 <= 3 ms at 1,000 records/s.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
from replicated import Cluster, running_cluster

STAMP = struct.Struct(">q")
"""The send time (time.time_ns) at the start of each record value."""
WARM_UP_S = 1.0
DRAIN_TIMEOUT_S = 30.0
GOALS = {"publish_p99": 10.0, "end_to_end_p99": 15.0, "publish_p50": 3.0}


@dataclass(frozen=True)
class Producer:
    name: str
    settings: dict[str, str | int | bool]


PRODUCERS = (
    Producer("acks=all idempotent", {"acks": "all", "enable.idempotence": True}),
    Producer("acks=all", {"acks": "all", "enable.idempotence": False}),
    Producer("acks=1", {"acks": "1", "enable.idempotence": False}),
)
COMMON_SETTINGS: dict[str, str | int | bool] = {"linger.ms": 1, "compression.type": "none"}


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Percentiles:
        if not samples_ms:
            return cls(math.nan, math.nan, math.nan, math.nan)
        ordered = sorted(samples_ms)

        def rank(fraction: float) -> float:
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

        return cls(rank(0.50), rank(0.99), rank(0.999), ordered[-1])

    def cells(self) -> str:
        return f"{self.p50:7.1f} {self.p99:7.1f} {self.p999:7.1f} {self.max:7.1f}"


@dataclass(frozen=True)
class Run:
    producer: str
    rate: int
    sent_rate: float
    publish: Percentiles
    end_to_end: Percentiles
    failed: int
    broker_cpu_ms: float
    """CPU time of the three brokers per 1,000 records sent."""


def produce_at_rate(
    bootstrap: str, topic: str, producer: Producer, rate: int, seconds: float, record_bytes: int
) -> tuple[list[float], float, int]:
    """Send ``rate`` records/s for ``seconds``; publish→ack latencies (ms) after warm-up,
    the rate reached, and how many records failed."""
    client = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, **COMMON_SETTINGS, **producer.settings}
    )
    padding = b"x" * (record_bytes - STAMP.size)
    latencies: list[float] = []
    failed = 0
    warm_until = time.time_ns() + int(WARM_UP_S * 1e9)

    def delivered(
        error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message
    ) -> None:
        nonlocal failed
        now = time.time_ns()
        if error is not None:
            failed += 1
            return
        (sent,) = STAMP.unpack_from(message.value() or b"\0" * 8)
        if sent >= warm_until:
            latencies.append((now - sent) / 1e6)

    interval = 1.0 / rate
    total = int(rate * seconds)
    start = time.monotonic()
    for number in range(total):
        due = start + number * interval
        while (wait := due - time.monotonic()) > 0:
            client.poll(wait)  # serves delivery reports as they come, so their times are exact
        client.produce(topic, STAMP.pack(time.time_ns()) + padding, on_delivery=delivered)
        client.poll(0)
    sent_rate = total / (time.monotonic() - start)
    if client.flush(DRAIN_TIMEOUT_S):
        raise RuntimeError(f"{producer.name}: records still unacknowledged after flush")
    return latencies, sent_rate, failed


def start_consumer(bootstrap: str, topic: str, expected: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--consume",
            topic,
            "--bootstrap",
            bootstrap,
            "--expected",
            str(expected),
        ],
        stdout=subprocess.PIPE,
    )


def consume(bootstrap: str, topic: str, expected: int) -> None:
    """The consumer process: read ``expected`` records and print their end-to-end
    latencies (ms, after warm-up) as JSON; prints "ready" once it has its partitions."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"latency-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    assigned = False

    def on_assign(
        _: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]
    ) -> None:
        nonlocal assigned
        assigned = bool(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    latencies: list[float] = []
    received = 0
    first_stamp: int | None = None
    deadline = time.monotonic() + 120
    while received < expected and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if assigned:
            print("ready", flush=True)
            assigned = False
        if message is None or message.error() is not None:
            continue
        now = time.time_ns()
        (sent,) = STAMP.unpack_from(message.value() or b"\0" * 8)
        received += 1
        if first_stamp is None:
            first_stamp = sent
        if sent >= first_stamp + WARM_UP_S * 1e9:
            latencies.append((now - sent) / 1e6)
    consumer.close()
    print(json.dumps({"received": received, "latencies": latencies}), flush=True)


def measure(
    cluster: Cluster, producer: Producer, rate: int, options: argparse.Namespace, number: int
) -> Run:
    topic = f"latency-{number}"
    cluster.create_topic(topic, options.partitions)
    total = int(rate * options.seconds)
    reader = start_consumer(cluster.bootstrap, topic, total)
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != b"ready":
        raise RuntimeError("the consumer did not join its group")
    try:
        cpu_before = cluster.cpu_seconds()
        publish, sent_rate, failed = produce_at_rate(
            cluster.bootstrap, topic, producer, rate, options.seconds, options.record_bytes
        )
        output, _ = reader.communicate(timeout=DRAIN_TIMEOUT_S + 120)
        cpu_s = cluster.cpu_seconds() - cpu_before
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    consumed = json.loads(output.decode().splitlines()[-1])
    if consumed["received"] < total - failed:
        raise RuntimeError(f"{producer.name}: consumer read {consumed['received']} of {total}")
    cluster.check_running(f"{producer.name} at {rate}/s")
    return Run(
        producer.name,
        rate,
        sent_rate,
        Percentiles.of(publish),
        Percentiles.of(consumed["latencies"]),
        failed,
        cpu_s * 1000 / (total / 1000),
    )


def report(options: argparse.Namespace, runs: Sequence[Run]) -> None:
    print(
        f"3 brokers; topics of {options.partitions} partitions, replication factor 3, "
        f"min.insync.replicas 2; {options.record_bytes}-byte records, linger.ms=1, "
        f"{options.seconds:g} s per run (first {WARM_UP_S:g} s left out)"
    )
    print(
        f"{'producer':<22}{'rate/s':>8}{'sent/s':>9} | {'publish→ack ms':^31} | "
        f"{'end-to-end ms':^31} | broker CPU"
    )
    print(
        f"{'':<39} | {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} | "
        f"{'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} | ms/1k rec"
    )
    for run in runs:
        failed = f"  ({run.failed} failed)" if run.failed else ""
        print(
            f"{run.producer:<22}{run.rate:>8,}{run.sent_rate:>9,.0f} | {run.publish.cells()} | "
            f"{run.end_to_end.cells()} | {run.broker_cpu_ms:9.0f}{failed}"
        )
    for run in runs:
        if run.producer == PRODUCERS[0].name and run.rate == max(options.rates):
            print(
                f"goal at {run.rate:,}/s, {run.producer}: publish→ack p99 "
                f"{run.publish.p99:.1f} ms (<= {GOALS['publish_p99']:g}), end-to-end p99 "
                f"{run.end_to_end.p99:.1f} ms (<= {GOALS['end_to_end_p99']:g})"
            )
        if run.producer == PRODUCERS[0].name and run.rate == min(options.rates):
            print(
                f"goal at {run.rate:,}/s, {run.producer}: publish→ack p50 "
                f"{run.publish.p50:.1f} ms (<= {GOALS['publish_p50']:g})"
            )


def run(options: argparse.Namespace) -> int:
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="brook-latency-") as scratch,
        running_cluster(Path(scratch)) as cluster,
    ):
        for rate in options.rates:
            for producer in PRODUCERS:
                runs.append(measure(cluster, producer, rate, options, len(runs)))
    report(options, runs)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,10000", help="records/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (6)")
    parser.add_argument("--record-bytes", type=int, default=1024, help="bytes per record (1024)")
    parser.add_argument("--consume", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.consume:
        consume(options.bootstrap, options.consume, options.expected)
        return 0
    options.rates = [int(rate) for rate in options.rates.split(",")]
    if min(*options.rates, options.partitions) < 1 or options.seconds <= WARM_UP_S:
        parser.error(f"rates and partitions must be >= 1, --seconds > {WARM_UP_S:g}")
    if options.record_bytes < STAMP.size:
        parser.error(f"--record-bytes must be >= {STAMP.size}")
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
