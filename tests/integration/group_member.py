"""A consumer-group member in a process of its own, so that a test can ``kill -9`` it.

    python -m tests.integration.group_member --client confluent|aiokafka|kafka-python \\
        --bootstrap HOST:PORT --group GROUP --topic TOPIC --out FILE \\
        [--session-timeout-ms MS] [--heartbeat-interval-ms MS] [--commit-delay-ms MS]
        [--record-delay-ms MS] [--skip-commit-partition P]

The member subscribes to the topic (auto.offset.reset=earliest, no auto commit) and keeps
a journal in FILE, one JSON object per line, each written and flushed at once:

    {"at": 812.25, "assigned": [0, 3]}                 its partitions changed
    {"at": 812.31, "record": [0, 17, "value"]}         it processed a record
    {"at": 812.32, "committed": [[0, 18]]}             a synchronous commit succeeded
    {"at": 812.32, "failed": "commit", "reason": ...}  a commit (or a fetch) failed

After processing the records of each poll it commits the next offsets synchronously, so a
record is committed only once processed (at-least-once). ``--record-delay-ms`` is the time
processing one record takes; ``--skip-commit-partition`` never commits that partition (a
consumer wedged on it, as a poison record would). ``at`` is ``time.monotonic()``,
a clock all processes of one Linux machine share. SIGTERM makes the member close its
consumer, which leaves the group; it also stops when the process that started it dies.

``start_member`` starts this program from a test, ``MemberJournal`` reads the journal back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import aiokafka
import aiokafka.errors
import confluent_kafka
import kafka
import kafka.errors

REPOSITORY = Path(__file__).resolve().parents[2]
"""Where ``python -m tests.integration.group_member`` runs."""
POLL_TIMEOUT_S = 0.2
MAX_RECORDS_PER_POLL = 500
CLIENTS = ("confluent", "aiokafka", "kafka-python")


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    value: str | None
    """The value as text (bytes that are not UTF-8 escaped with backslashes)."""


@dataclass(frozen=True)
class MemberSettings:
    bootstrap: str
    group: str
    topic: str
    session_timeout_ms: int
    heartbeat_interval_ms: int
    commit_delay_ms: int = 0
    """A pause between processing and committing: a test can then kill the member while
    it holds records processed but not committed."""
    record_delay_ms: int = 0
    skip_commit_partition: int | None = None


class CommitFailed(Exception):
    """The client refused or failed a synchronous commit (a rebalance, a lost coordinator)."""


# --- the journal, written by the member ------------------------------------------------


class JournalWriter:
    """Appends journal lines to a file; also tracks the member's partitions, since the
    clients report them as partitions gained and lost."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.partitions: set[int] = set()

    def write(self, **entry: Any) -> None:
        self.out.write(json.dumps({"at": round(time.monotonic(), 4), **entry}) + "\n")
        self.out.flush()

    def gained(self, partitions: Iterable[int]) -> None:
        self._own(self.partitions | set(partitions))

    def lost(self, partitions: Iterable[int]) -> None:
        self._own(self.partitions - set(partitions))

    def _own(self, partitions: set[int]) -> None:
        if partitions != self.partitions:
            self.partitions = partitions
            self.write(assigned=sorted(partitions))

    def processed(self, records: Sequence[Record]) -> None:
        for record in records:
            self.write(record=[record.partition, record.offset, record.value])

    def committed(self, offsets: Mapping[int, int]) -> None:
        self.write(committed=sorted(offsets.items()))

    def failed(self, operation: str, reason: str) -> None:
        self.write(failed=operation, reason=reason)


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


# --- one member per client -------------------------------------------------------------


class GroupConsumer(Protocol):
    """A subscribed consumer of one client; it reports partition changes to its journal."""

    def poll(self, timeout_s: float) -> list[Record]: ...

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``offsets`` (partition -> next offset) synchronously; raises CommitFailed."""
        ...

    def close(self) -> None:
        """Close the consumer, which leaves the group."""
        ...


class ConfluentConsumer:
    def __init__(self, settings: MemberSettings, journal: JournalWriter) -> None:
        self.topic = settings.topic
        self.journal = journal
        self.consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": settings.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            }
        )
        # Lost partitions are reported to on_revoke as well.
        self.consumer.subscribe(
            [settings.topic],
            on_assign=lambda _, partitions: journal.gained(p.partition for p in partitions),
            on_revoke=lambda _, partitions: journal.lost(p.partition for p in partitions),
        )

    def poll(self, timeout_s: float) -> list[Record]:
        records = []
        for message in self.consumer.consume(MAX_RECORDS_PER_POLL, timeout_s):
            error = message.error()
            if error is not None:
                self.journal.failed("consume", str(error))
                continue
            records.append(Record(message.partition(), message.offset(), text(message.value())))
        return records

    def commit(self, offsets: Mapping[int, int]) -> None:
        try:
            answer = self.consumer.commit(
                offsets=[
                    confluent_kafka.TopicPartition(self.topic, p, o) for p, o in offsets.items()
                ],
                asynchronous=False,
            )
        except confluent_kafka.KafkaException as error:
            raise CommitFailed(str(error.args[0])) from None
        refused = [f"{p.partition}: {p.error}" for p in answer or () if p.error is not None]
        if refused:
            raise CommitFailed(", ".join(refused))

    def close(self) -> None:
        self.consumer.close()


class RebalanceJournal(kafka.ConsumerRebalanceListener, aiokafka.ConsumerRebalanceListener):
    """The rebalance listener of kafka-python and aiokafka (they share its shape)."""

    def __init__(self, journal: JournalWriter) -> None:
        self.journal = journal

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.journal.lost(p.partition for p in revoked)

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.journal.gained(p.partition for p in assigned)


def python_settings(settings: MemberSettings) -> dict[str, Any]:
    """Settings kafka-python and aiokafka name alike."""
    return {
        "bootstrap_servers": settings.bootstrap,
        "group_id": settings.group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }


def python_records(polled: Mapping[Any, Sequence[Any]]) -> list[Record]:
    """The records of one ``poll`` (kafka-python) or ``getmany`` (aiokafka)."""
    return [
        Record(record.partition, record.offset, text(record.value))
        for records in polled.values()
        for record in records
    ]


class KafkaPythonConsumer:
    def __init__(self, settings: MemberSettings, journal: JournalWriter) -> None:
        self.topic = settings.topic
        self.consumer = kafka.KafkaConsumer(**python_settings(settings))
        self.consumer.subscribe([settings.topic], listener=RebalanceJournal(journal))

    def poll(self, timeout_s: float) -> list[Record]:
        polled = self.consumer.poll(
            timeout_ms=int(timeout_s * 1000), max_records=MAX_RECORDS_PER_POLL
        )
        return python_records(polled)

    def commit(self, offsets: Mapping[int, int]) -> None:
        try:
            self.consumer.commit(
                {
                    kafka.TopicPartition(self.topic, p): kafka.OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                }
            )
        except kafka.errors.KafkaError as error:
            raise CommitFailed(f"{type(error).__name__}: {error}") from None

    def close(self) -> None:
        self.consumer.close()


class AiokafkaConsumer:
    """Runs the asyncio consumer on an event loop of its own, turned only while a call lasts
    (the member spends nearly all its time in ``poll``, so heartbeats keep going)."""

    def __init__(self, settings: MemberSettings, journal: JournalWriter) -> None:
        self.topic = settings.topic
        self.loop = asyncio.new_event_loop()
        self.consumer = self.loop.run_until_complete(self._start(settings, journal))

    @staticmethod
    async def _start(settings: MemberSettings, journal: JournalWriter) -> Any:
        consumer = aiokafka.AIOKafkaConsumer(**python_settings(settings))
        consumer.subscribe([settings.topic], listener=RebalanceJournal(journal))
        await consumer.start()
        return consumer

    def poll(self, timeout_s: float) -> list[Record]:
        polled = self.loop.run_until_complete(
            self.consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=MAX_RECORDS_PER_POLL
            )
        )
        return python_records(polled)

    def commit(self, offsets: Mapping[int, int]) -> None:
        try:
            self.loop.run_until_complete(
                self.consumer.commit(
                    {aiokafka.TopicPartition(self.topic, p): o for p, o in offsets.items()}
                )
            )
        except aiokafka.errors.KafkaError as error:
            raise CommitFailed(f"{type(error).__name__}: {error}") from None

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.consumer.stop())
        finally:
            self.loop.close()


CONSUMERS: dict[str, Callable[[MemberSettings, JournalWriter], GroupConsumer]] = {
    "confluent": ConfluentConsumer,
    "aiokafka": AiokafkaConsumer,
    "kafka-python": KafkaPythonConsumer,
}


def next_offsets(records: Iterable[Record]) -> dict[int, int]:
    """What to commit after processing ``records``: per partition, the offset after the last."""
    offsets: dict[int, int] = {}
    for record in records:
        offsets[record.partition] = max(offsets.get(record.partition, 0), record.offset + 1)
    return offsets


def run(
    consumer: GroupConsumer,
    journal: JournalWriter,
    stopping: threading.Event,
    settings: MemberSettings,
) -> None:
    """Poll, process (journal), commit; until SIGTERM or the parent's death."""
    parent = os.getppid()
    try:
        while not stopping.is_set() and os.getppid() == parent:
            records = consumer.poll(POLL_TIMEOUT_S)
            if not records:
                continue
            for record in records:
                time.sleep(settings.record_delay_ms / 1000)
                journal.processed([record])
            offsets = next_offsets(records)
            if settings.skip_commit_partition is not None:
                offsets.pop(settings.skip_commit_partition, None)
            time.sleep(settings.commit_delay_ms / 1000)
            if not offsets:
                continue
            try:
                consumer.commit(offsets)
            except CommitFailed as error:
                journal.failed("commit", str(error))
            else:
                journal.committed(offsets)
    finally:
        consumer.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    parser.add_argument("--commit-delay-ms", type=int, default=0)
    parser.add_argument("--record-delay-ms", type=int, default=0)
    parser.add_argument("--skip-commit-partition", type=int, default=None)
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    settings = MemberSettings(
        args.bootstrap,
        args.group,
        args.topic,
        args.session_timeout_ms,
        args.heartbeat_interval_ms,
        args.commit_delay_ms,
        args.record_delay_ms,
        args.skip_commit_partition,
    )
    with args.out.open("a", encoding="utf-8") as out:
        journal = JournalWriter(out)
        consumer = CONSUMERS[args.client](settings, journal)
        run(consumer, journal, stopping, settings)


# --- the test side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    at: float
    record: Record


@dataclass
class MemberJournal:
    """A member's journal, read incrementally: ``refresh`` adds the lines written since.
    A last line without its newline (the member was killed mid-write) is left unread."""

    path: Path
    assignments: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    processed: list[Processed] = field(default_factory=list)
    commits: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    _read: int = 0

    def refresh(self) -> MemberJournal:
        try:
            with self.path.open("rb") as journal:
                journal.seek(self._read)
                data = journal.read()
        except FileNotFoundError:
            return self
        complete = data.rfind(b"\n") + 1
        self._read += complete
        for line in data[:complete].splitlines():
            self._add(json.loads(line))
        return self

    def _add(self, entry: dict[str, Any]) -> None:
        at = entry["at"]
        if "assigned" in entry:
            self.assignments.append((at, frozenset(entry["assigned"])))
        elif "record" in entry:
            self.processed.append(Processed(at, Record(*entry["record"])))
        elif "committed" in entry:
            self.commits.append((at, dict(entry["committed"])))
        else:
            self.failures.append((at, entry["failed"], entry["reason"]))

    @property
    def assignment(self) -> frozenset[int]:
        return self.assignments[-1][1] if self.assignments else frozenset()

    @property
    def assigned_at(self) -> float | None:
        return self.assignments[-1][0] if self.assignments else None

    def uncommitted(self) -> list[Record]:
        """Records of the current assignment processed but not yet committed by this member."""
        committed: dict[int, int] = {}
        for _, offsets in self.commits:
            committed.update(offsets)
        since = self.assigned_at
        return [
            processed.record
            for processed in self.processed
            if since is not None
            and processed.at >= since
            and processed.record.partition in self.assignment
            and processed.record.offset >= committed.get(processed.record.partition, 0)
        ]

    def owner_since(self, partition: int, at: float) -> float | None:
        """When the member last gained ``partition`` before ``at`` (None: it did not own it)."""
        since = None
        for changed_at, partitions in self.assignments:
            if changed_at > at:
                break
            if partition not in partitions:
                since = None
            elif since is None:
                since = changed_at
        return since


@dataclass
class MemberProcess:
    name: str
    process: subprocess.Popen[bytes]
    journal: MemberJournal
    log_path: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL, as a crash would: no commit, no LeaveGroup."""
        self.process.kill()
        self.process.wait()

    def leave(self) -> None:
        """SIGTERM: the member closes its consumer, which leaves the group."""
        if self.running:
            self.process.terminate()

    def wait(self, timeout: float) -> int | None:
        """The exit code within ``timeout`` seconds, else SIGKILL and None."""
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_member(
    client: str,
    directory: Path,
    name: str,
    settings: MemberSettings,
) -> MemberProcess:
    """Start a member whose journal and stderr go to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    journal_path = directory / f"{name}.jsonl"
    log_path = directory / f"{name}.log"
    command = [
        sys.executable, "-m", "tests.integration.group_member", "--client", client,
        "--bootstrap", settings.bootstrap, "--group", settings.group, "--topic", settings.topic,
        "--out", str(journal_path),
        "--session-timeout-ms", str(settings.session_timeout_ms),
        "--heartbeat-interval-ms", str(settings.heartbeat_interval_ms),
        "--commit-delay-ms", str(settings.commit_delay_ms),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPOSITORY
        )
    return MemberProcess(name, process, MemberJournal(journal_path), log_path)


if __name__ == "__main__":
    main()
