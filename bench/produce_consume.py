"""Produce and consume throughput of one broker, with kcat as the client.

    python bench/produce_consume.py [--records 1000000] [--record-bytes 100]

Starts a broker on free loopback ports with a temporary data directory, creates two
one-partition topics, then measures, each phase against a fresh topic or the data just
written:

* produce with acks=1, then with acks=all: kcat reads pre-generated records (one per
  line) from a file on stdin and sends them in large batches;
* consume: kcat reads the acks=1 topic from the beginning to its end.

For each phase it prints records/s, MB/s of record values, and the CPU seconds the
broker (and kcat) spent per million records, read from /proc and getrusage. kcat is
the client because it is written in C: a Python producer would be the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from brook_cli.local import BrokerFailed, BrokerProcess, BrokerSpec, stop_all
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.brokers import free_port

PRODUCER_SETTINGS = (
    "linger.ms=100",
    "batch.size=1000000",
    "batch.num.messages=100000",
    "queue.buffering.max.messages=2000000",
    "queue.buffering.max.kbytes=2000000",
    "compression.codec=none",
)
CONSUMER_SETTINGS = (
    # librdkafka stops fetching while 100,000 records wait in its queue, and its fetcher
    # thread then sleeps up to fetch.wait.max.ms before it looks again: let it run ahead.
    "queued.min.messages=1000000",
    "queued.max.messages.kbytes=1000000",
    "fetch.max.bytes=52428800",
    "max.partition.fetch.bytes=10485760",
)
GOALS = {"produce": 1_500_000, "consume": 2_000_000}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Phase:
    name: str
    records: int
    seconds: float
    broker_cpu: float
    client_cpu: float

    def row(self, record_bytes: int) -> str:
        per_million = 1_000_000 / self.records
        return (
            f"{self.name:<17}{self.records:>10,}{self.seconds:>9.2f}"
            f"{self.records / self.seconds:>13,.0f}"
            f"{self.records * record_bytes / 1e6 / self.seconds:>9.1f}"
            f"{self.broker_cpu * per_million:>14.2f}{self.client_cpu * per_million:>12.2f}"
        )


HEADER = (
    f"{'phase':<17}{'records':>10}{'seconds':>9}{'records/s':>13}{'MB/s':>9}"
    f"{'broker CPU':>14}{'kcat CPU':>12}"
)
UNITS = f"{'':<58}{'s/M records':>14}{'s/M records':>12}"


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_records(path: Path, count: int, record_bytes: int) -> None:
    """Random hex values, one per line: incompressible and free of the line delimiter."""
    chunk = 100_000
    with path.open("wb") as output:
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            text = os.urandom(n * record_bytes // 2 + 1).hex().encode()
            lines = [text[i * record_bytes : (i + 1) * record_bytes] for i in range(n)]
            output.write(b"\n".join(lines) + b"\n")


def kcat_settings(settings: Sequence[str]) -> list[str]:
    return [argument for setting in settings for argument in ("-X", setting)]


def log_end_offset(kcat: str, bootstrap: str, topic: str) -> int:
    """Ask the broker (ListOffsets, latest) where partition 0 of ``topic`` ends."""
    output = subprocess.run(
        [kcat, "-Q", "-b", bootstrap, "-t", f"{topic}:0:-1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    # "<topic> [0] offset <N>"
    return int(output.split("offset")[-1].split()[0])


class Bench:
    def __init__(self, kcat: str, broker: BrokerProcess, records: int, timeout: float) -> None:
        self.kcat = kcat
        self.broker = broker
        self.bootstrap = broker.spec.kafka_address
        self.records = records
        self.timeout = timeout

    def _measure(self, name: str, work: Callable[[], int]) -> Phase:
        """Run ``work`` (which returns the records it moved) and take its time and CPU."""
        broker_before = process_cpu_seconds(self.broker.pid)
        client_before = children_cpu_seconds()
        started = time.perf_counter()
        records = work()
        seconds = time.perf_counter() - started
        code = self.broker.exit_code()
        if code is not None:
            raise BrokerFailed(f"broker exited with code {code} during {name}")
        return Phase(
            name=name,
            records=records,
            seconds=seconds,
            broker_cpu=process_cpu_seconds(self.broker.pid) - broker_before,
            client_cpu=children_cpu_seconds() - client_before,
        )

    def _send(self, command: list[str], records_path: Path) -> int:
        """kcat exits once the broker acknowledged every record."""
        with records_path.open("rb") as records:
            subprocess.run(
                command, stdin=records, stdout=subprocess.DEVNULL, check=True, timeout=self.timeout
            )
        return self.records

    def _receive(self, command: list[str]) -> int:
        """Run a kcat consumer and count the records it prints, one per line."""
        lines = 0
        with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as kcat:
            watchdog = threading.Timer(self.timeout, kcat.kill)
            watchdog.start()
            try:
                assert kcat.stdout is not None
                while chunk := kcat.stdout.read1(1 << 20):
                    lines += chunk.count(b"\n")
            finally:
                watchdog.cancel()
        if kcat.returncode == -signal.SIGKILL:
            raise TimeoutError(f"consume did not finish within {self.timeout:g} s")
        if kcat.returncode != 0:
            raise subprocess.CalledProcessError(kcat.returncode, command)
        return lines

    def _partition(self, topic: str) -> list[str]:
        return ["-b", self.bootstrap, "-t", topic, "-p", "0"]

    def produce(self, topic: str, acks: str, records_path: Path) -> Phase:
        settings = kcat_settings((*PRODUCER_SETTINGS, f"acks={acks}"))
        command = [self.kcat, "-P", *self._partition(topic), *settings]
        phase = self._measure(f"produce acks={acks}", lambda: self._send(command, records_path))
        stored = log_end_offset(self.kcat, self.bootstrap, topic)
        if stored != self.records:
            raise RuntimeError(f"{topic}: log end offset {stored}, expected {self.records}")
        return phase

    def consume(self, topic: str) -> Phase:
        settings = kcat_settings(CONSUMER_SETTINGS)
        # Exit after the last record (-c) rather than on reaching the end (-e alone), which
        # takes one more fetch that the broker holds for fetch.wait.max.ms.
        stop = ["-c", str(self.records), "-e"]
        # One newline per record: the count is all we need, and printing 100 MB of values
        # through a pipe would measure kcat's stdout rather than the broker.
        command = [self.kcat, "-C", *self._partition(topic), "-o", "beginning", *stop, "-q"]
        command += ["-f", "\\n", *settings]
        phase = self._measure("consume", lambda: self._receive(command))
        if phase.records != self.records:
            raise RuntimeError(f"{topic}: read {phase.records} records, expected {self.records}")
        return phase


def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, 1, 1) for name in names], request_timeout=15)
    for future in futures.values():
        future.result(timeout=30)


@contextlib.contextmanager
def workspace(options: argparse.Namespace) -> Iterator[tuple[str, Path, Path]]:
    """kcat's path, a scratch directory, and the file of records kcat produces from."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise SystemExit("bench: kcat not found; run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="brook-bench-") as scratch:
        root = Path(scratch)
        records_path = root / "records.txt"
        write_records(records_path, options.records, options.record_bytes)
        yield kcat, root, records_path


def run(options: argparse.Namespace) -> int:
    with workspace(options) as (kcat, root, records_path):
        spec = BrokerSpec(
            node_id=0,
            data_dir=root / "broker-0",
            host="127.0.0.1",
            kafka_port=free_port(),
            http_port=free_port(),
        )
        broker_log_path = root / "broker.log"
        with broker_log_path.open("wb") as broker_log:
            broker = BrokerProcess(spec, stderr=broker_log)
            try:
                broker.start()
                broker.wait_ready(timeout=30)
                create_topics(spec.kafka_address, ["bench-acks-1", "bench-acks-all"])
                bench = Bench(kcat, broker, options.records, options.timeout)
                phases = [
                    bench.produce("bench-acks-1", "1", records_path),
                    bench.produce("bench-acks-all", "all", records_path),
                    bench.consume("bench-acks-1"),
                ]
            except (BrokerFailed, RuntimeError, OSError, subprocess.SubprocessError) as error:
                print(f"bench: {error}", file=sys.stderr)
                print(broker_log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                return 1
            finally:
                if stop_all([broker], timeout=30):
                    print(
                        "bench: the broker did not stop within 30 s and was killed", file=sys.stderr
                    )
    print(f"{options.records:,} records of {options.record_bytes} bytes, one partition")
    print(f"kcat producer: {' '.join(PRODUCER_SETTINGS)}")
    print(f"kcat consumer: {' '.join(CONSUMER_SETTINGS)}")
    print(HEADER)
    print(UNITS)
    for phase in phases:
        print(phase.row(options.record_bytes))
    best_produce = max(phase.records / phase.seconds for phase in phases[:2])
    consume = phases[2].records / phases[2].seconds
    print(
        f"goal: produce >= {GOALS['produce']:,} records/s "
        f"({best_produce / GOALS['produce']:.0%} of it), "
        f"consume >= {GOALS['consume']:,} records/s ({consume / GOALS['consume']:.0%})"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per phase")
    parser.add_argument("--record-bytes", type=int, default=100, help="bytes per record value")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds any one phase may take (600)"
    )
    options = parser.parse_args()
    if options.records < 1 or options.record_bytes < 1:
        parser.error("--records and --record-bytes must be >= 1")
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
