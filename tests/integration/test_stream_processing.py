"""A stream-processing framework whose state lives in compacted changelog topics runs on
Brook: a quixstreams word count (``word_count.py``) is killed with ``kill -9``, loses its
local state directory, and on restart takes its counts back from the changelog topic it
created (cleanup.policy=compact), so the counts go on from where they were.

Processing is at-least-once, so the application is killed only once its output shows the
counts and its group's committed offset has reached the end of the input: nothing is
processed twice and the counts are exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from .brokers import wait_until
from .clients import ConfluentDriver, Message, confluent_consumer, create_topic, watermarks
from .cluster import Cluster
from .conftest import StartCluster
from .group_member import REPOSITORY
from .groups import GROUP_BROKER_ARGS

CLUSTER_SIZE = 3
"""The brokers of the cluster, and so the replication factor of every topic (the
changelog topic takes its input topic's)."""
GROUP = "word-count"
SENTENCES = "sentences"
COUNTS = "word-counts"
BEFORE = ["brook is a broker", "brook speaks kafka", "kafka clients talk to brook"]
AFTER = ["brook keeps counting", "brook compacts"]
APP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CONFLUENT = ConfluentDriver()


class WordCounts:
    """The application processes, started by the test and stopped at teardown."""

    def __init__(self, bootstrap: str, directory: Path) -> None:
        self.bootstrap = bootstrap
        self.state_dir = directory / "state"
        self.log = directory / "word-count.log"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """One more application process; its output is appended to ``log``."""
        command = [
            sys.executable, "-m", "tests.integration.word_count",
            "--bootstrap", self.bootstrap, "--group", GROUP,
            "--input", SENTENCES, "--output", COUNTS, "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        with self.log.open("ab") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPOSITORY
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    return start_cluster(CLUSTER_SIZE, *GROUP_BROKER_ARGS)


@pytest.fixture
def word_counts(cluster: Cluster, tmp_path: Path) -> Iterator[WordCounts]:
    apps = WordCounts(cluster.bootstrap, tmp_path)
    yield apps
    apps.stop_all()
    if apps.log.exists():
        print(f"--- log of the word count\n{apps.log.read_text(errors='replace')[-6000:]}")


class OutputReader:
    """Reads the output topic from its beginning: every ``(word, count)`` in order."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = confluent_consumer(bootstrap)
        self.consumer.assign(
            [confluent_kafka.TopicPartition(COUNTS, 0, confluent_kafka.OFFSET_BEGINNING)]
        )
        self.counted: list[tuple[str, int]] = []

    def read(self) -> dict[str, int]:
        """Each word's latest count, after taking in what is there now."""
        for message in self.consumer.consume(num_messages=1000, timeout=0.2):
            assert message.error() is None, message.error()
            self.counted.extend(json.loads(message.value()).items())
        return dict(self.counted)

    def close(self) -> None:
        self.consumer.close()


def word_totals(*sentences: Sequence[str]) -> dict[str, int]:
    return dict(Counter(word for batch in sentences for text in batch for word in text.split()))


def produce_sentences(bootstrap: str, sentences: Sequence[str]) -> None:
    messages = [Message(0, b"doc", text.encode()) for text in sentences]
    deliveries = CONFLUENT.produce(bootstrap, SENTENCES, messages, "none")
    assert all(delivery.error is None for delivery in deliveries), deliveries


def committed_offset(bootstrap: str) -> int:
    """The group's committed offset of the input partition (-1001 when none)."""
    consumer = confluent_consumer(bootstrap, group_id=GROUP)
    try:
        [position] = consumer.committed([confluent_kafka.TopicPartition(SENTENCES, 0)], timeout=5)
        return int(position.offset)
    finally:
        consumer.close()


def changelog_cleanup_policy(bootstrap: str) -> tuple[str, str]:
    """The name of the changelog topic quixstreams made (one partition, as its input, on
    every broker), and its cleanup.policy."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = admin.list_topics(timeout=10).topics
    [changelog] = [name for name in topics if name.startswith("changelog__")]
    [partition] = topics[changelog].partitions.values()
    assert len(partition.replicas) == CLUSTER_SIZE
    resource = ConfigResource(ResourceType.TOPIC, changelog)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    return changelog, configs["cleanup.policy"].value


def test_word_counts_come_back_from_the_changelog_after_kill_9(
    cluster: Cluster, word_counts: WordCounts
) -> None:
    bootstrap = cluster.bootstrap
    for topic in (SENTENCES, COUNTS):
        create_topic(bootstrap, topic, replication_factor=CLUSTER_SIZE)
    output = OutputReader(bootstrap)
    try:
        first = word_counts.start()
        produce_sentences(bootstrap, BEFORE)
        before = word_totals(BEFORE)
        assert before["brook"] == 3
        wait_until(lambda: output.read() == before, APP_TIMEOUT_S, message="first counts")
        wait_until(
            lambda: committed_offset(bootstrap) == len(BEFORE),
            APP_TIMEOUT_S,
            message="the group's commit of the first sentences",
        )
        first.kill()
        first.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(word_counts.state_dir)

        changelog, policy = changelog_cleanup_policy(bootstrap)
        assert policy == "compact", changelog
        assert watermarks(bootstrap, changelog)[1] >= len(before), "counts in the changelog"

        counted_before = len(output.counted)
        word_counts.start()
        produce_sentences(bootstrap, AFTER)
        after = word_totals(BEFORE, AFTER)
        assert after["brook"] == 5
        wait_until(lambda: output.read() == after, APP_TIMEOUT_S, message="counts after restart")
        # Counted on from the changelog: nothing started from zero, nothing was counted twice.
        recounted = output.counted[counted_before:]
        assert [count for word, count in recounted if word == "brook"] == [4, 5]
        assert len(recounted) == sum(len(text.split()) for text in AFTER)
    finally:
        output.close()
