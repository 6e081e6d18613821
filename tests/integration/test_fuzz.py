"""Mutated request frames against one broker and a 3-broker cluster.

Seeds are the frames real clients sent in a session of producing, consuming in a group,
committing and administering topics, and a frame with every field present for each API
key and version the broker advertises (see ``fuzzing.py``). Workers send mutations of
them for ``FUZZ_SECONDS`` per target, each from ``random.Random(SEED + worker)``, so a
run can be repeated. Afterwards no broker may have died or stopped answering, none may
have logged a traceback, a topic written before (by a real client, acks=all, and named by
no seed) must read back unchanged, and each broker's RSS must have stayed under
``RSS_BOUND``.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

from .brokers import BrokerProcess, KafkaConnection
from .clients import ConfluentDriver, Consumed, Message, create_topic
from .conftest import StartBroker, StartCluster
from .fuzzing import (
    ANSWERED,
    CLOSED,
    Mutator,
    capture_client_frames,
    exchange,
    rss_bytes,
    schema_frames,
)

SEED = 20261204
FUZZ_SECONDS = 60.0
WORKERS = 4
EXCHANGE_TIMEOUT_S = 1.0
PROMPT_S = 2.0
RSS_BOUND = 256 * 1024 * 1024  # about 3x a broker's RSS (80 MiB) in these runs
GUARDED = "guarded-by-fuzz-test"
BROKER_FLAGS = ("--auto-create-topics", "false")


@pytest.fixture(scope="module")
def client_frames(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    frames = capture_client_frames(tmp_path_factory.mktemp("capture"), "seed")
    assert len({frame[:4] for frame in frames}) >= 20, "too few kinds of requests captured"
    return frames


@dataclass
class FuzzRun:
    frames: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    peak_rss: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        peaks = {node: f"{rss / 2**20:.0f} MiB" for node, rss in self.peak_rss.items()}
        return (
            f"{self.frames} frames in {self.seconds:.0f} s ({rate:.0f}/s), "
            f"outcomes {dict(self.outcomes)}, peak RSS {peaks}"
        )


def write_guarded(brokers: Sequence[BrokerProcess]) -> list[Consumed]:
    bootstrap = ",".join(broker.bootstrap for broker in brokers)
    create_topic(bootstrap, GUARDED, partitions=2, replication_factor=len(brokers))
    messages = [
        Message(i % 2, f"key-{i}".encode(), f"value-{i}".encode() * 5, (("h", b"v"),), None)
        for i in range(200)
    ]
    deliveries = ConfluentDriver().produce(bootstrap, GUARDED, messages, "none", {"acks": "all"})
    assert all(delivery.error is None for delivery in deliveries)
    return read_guarded(brokers)


def read_guarded(brokers: Sequence[BrokerProcess]) -> list[Consumed]:
    bootstrap = ",".join(broker.bootstrap for broker in brokers)
    consumed = ConfluentDriver().consume(bootstrap, GUARDED, [0, 1], 200)
    return sorted(consumed, key=lambda record: (record.partition, record.offset))


def advertised(broker: BrokerProcess) -> dict[int, tuple[int, int]]:
    with KafkaConnection(broker.address) as connection:
        response = connection.request(
            ApiVersionsRequest(client_software_name="fuzz", client_software_version="1")
        )
    return {key.api_key: (key.min_version, key.max_version) for key in response.api_keys}


def fuzz(brokers: Sequence[BrokerProcess], seeds: Sequence[bytes]) -> FuzzRun:
    """Send mutations from WORKERS threads, spread over ``brokers``, for FUZZ_SECONDS."""
    run = FuzzRun()
    lock = threading.Lock()
    deadline = time.monotonic() + FUZZ_SECONDS
    stopped = threading.Event()

    def worker(index: int) -> None:
        mutator = Mutator(seeds, random.Random(SEED + index))
        address = brokers[index % len(brokers)].address
        while time.monotonic() < deadline and not stopped.is_set():
            kind, frame = mutator.mutate()
            try:
                outcome = exchange(address, frame, EXCHANGE_TIMEOUT_S)
            except OSError as error:  # no connection: the checks afterwards say why
                with lock:
                    run.outcomes[f"unreachable ({type(error).__name__})"] += 1
                stopped.set()
                return
            with lock:
                run.frames += 1
                run.outcomes[outcome] += 1
                run.kinds[kind] += 1

    def sample_rss() -> None:
        while not stopped.wait(0.5):
            for broker in brokers:
                if broker.running:
                    rss = rss_bytes(broker.pid)
                    run.peak_rss[broker.node_id] = max(run.peak_rss.get(broker.node_id, 0), rss)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    sampler = threading.Thread(target=sample_rss)
    for thread in [*threads, sampler]:
        thread.start()
    for thread in threads:
        thread.join(timeout=FUZZ_SECONDS + 30)
    stopped.set()
    sampler.join(timeout=5)
    run.seconds = time.monotonic() - started
    return run


def assert_unharmed(
    brokers: Sequence[BrokerProcess], guarded: list[Consumed], run: FuzzRun
) -> None:
    print(run.summary())
    assert not [outcome for outcome in run.outcomes if outcome.startswith("unreachable")], (
        f"a broker stopped accepting connections: {run.summary()}"
    )
    for broker in brokers:
        assert broker.running, f"broker {broker.node_id} died\n{broker.log_tail()}"
        started = time.monotonic()
        with KafkaConnection(broker.address, timeout=PROMPT_S) as connection:
            connection.request(
                ApiVersionsRequest(client_software_name="fuzz", client_software_version="1")
            )
            metadata = connection.request(
                MetadataRequest(
                    topics=(MetadataRequestTopic(topic_id=None, name=GUARDED),),
                    allow_auto_topic_creation=False,
                    include_topic_authorized_operations=False,
                )
            )
        assert time.monotonic() - started < PROMPT_S
        assert metadata.topics[0].error_code == 0
        log = broker.log_path.read_text(errors="replace")
        tracebacks = [line for line in log.splitlines() if "Traceback" in line]
        assert not tracebacks, (
            f"broker {broker.node_id} logged {len(tracebacks)} tracebacks; the first:\n"
            + tracebacks[0].replace("\\n", "\n")
        )
    assert read_guarded(brokers) == guarded, "the guarded topic changed"
    for node, peak in run.peak_rss.items():
        assert peak < RSS_BOUND, f"broker {node} reached {peak / 2**20:.0f} MiB RSS"
    assert run.outcomes[ANSWERED] and run.outcomes[CLOSED], run.outcomes
    assert run.frames > 1000, run.summary()
    refused = sum(broker.metric("brook_malformed_requests_total") for broker in brokers)
    print(f"refused as malformed (brook_malformed_requests_total): {refused:.0f}")
    assert refused > 0


def seeds_for(broker: BrokerProcess, client_frames: list[bytes]) -> list[bytes]:
    seeds = client_frames + schema_frames(advertised(broker))
    assert not any(GUARDED.encode() in seed for seed in seeds)
    return seeds


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzed_requests_against_one_broker(
    start_broker: StartBroker, client_frames: list[bytes]
) -> None:
    broker = start_broker(*BROKER_FLAGS)
    guarded = write_guarded([broker])
    run = fuzz([broker], seeds_for(broker, client_frames))
    assert_unharmed([broker], guarded, run)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzed_requests_against_a_three_broker_cluster(
    start_cluster: StartCluster, client_frames: list[bytes]
) -> None:
    cluster = start_cluster(3, *BROKER_FLAGS)
    guarded = write_guarded(cluster.brokers)
    run = fuzz(cluster.brokers, seeds_for(cluster[0], client_frames))
    assert_unharmed(cluster.brokers, guarded, run)


def test_mutations_are_repeatable_from_the_seed() -> None:
    corpus = schema_frames({0: (3, 9), 3: (1, 12), 19: (2, 7)})
    first, second = Mutator(corpus, random.Random(SEED)), Mutator(corpus, random.Random(SEED))
    assert [first.mutate() for _ in range(200)] == [second.mutate() for _ in range(200)]
