"""The ConsumerGroup autoscaler's whole loop in the emulated cluster: a backlog in a topic
of six partitions, a Deployment whose pods are real consumer processes of one group
(committing after processing, each record taking a fixed time), and ``brook-operator``
scaling that Deployment by the group's lag.

One Broker (a single broker keeps it cheap) is shared by the tests of this module; each
test has its own topic, group and Deployment (or StatefulSet: the same scaling, through
its scale subresource).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from .group_member import REPOSITORY, MemberJournal
from .kube.harness import Kube
from .kube.operated import condition, operated_broker, require_root
from .test_operator import BOOTSTRAP, BROKER, apply_topic, wait_for_event, wait_topic_ready

GROUPS = "brook.dev/v1alpha1/consumergroups"
DEPLOYMENTS = "apps/v1/deployments"
STATEFUL_SETS = "apps/v1/statefulsets"
PARTITIONS = 6
SCALE_DOWN_WINDOW_S = 20
INTERVAL_S = 2


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The emulated cluster, the operator, and a Broker of one broker it has made Ready."""
    require_root()
    with operated_broker(tmp_path_factory.mktemp("autoscaling") / "kube", BROKER, 1) as kube:
        yield kube


# --- the workload --------------------------------------------------------------------------


def produce(topic: str, count: int) -> set[str]:
    """``count`` numbered records spread evenly over the partitions, all acknowledged."""
    producer = confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all"})
    failed: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    values = [f"{topic}-{number}" for number in range(count)]
    for number, value in enumerate(values):
        producer.produce(
            topic, value.encode(), partition=number % PARTITIONS, on_delivery=delivered
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failed == []
    return set(values)


def topic_with_backlog(
    kube: Kube, topic: str, records: int, tmp_path: Path
) -> tuple[set[str], Path]:
    """A Topic of ``PARTITIONS`` partitions holding ``records`` numbered records (their
    values), and an empty directory for the consumers' journals."""
    apply_topic(kube, topic, partitions=PARTITIONS, replicationFactor=1, minInsyncReplicas=1)
    wait_topic_ready(kube, topic, PARTITIONS)
    produced = produce(topic, records)
    journals = tmp_path / "journals"
    journals.mkdir()
    return produced, journals


def consumer_deployment(
    name: str,
    topic: str,
    journals: Path,
    record_delay_ms: int,
    *extra: str,
    kind: str = "Deployment",
) -> dict[str, Any]:
    """A Deployment (or StatefulSet) of group members (``group_member.py``), one journal
    per pod."""
    command = [
        sys.executable, "-m", "tests.integration.group_member", "--client", "confluent",
        "--bootstrap", BOOTSTRAP, "--group", name, "--topic", topic,
        "--out", f"{journals}/$(POD_NAME).jsonl",
        "--record-delay-ms", str(record_delay_ms), *extra,
    ]  # fmt: skip
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            **({"serviceName": name} if kind == "StatefulSet" else {}),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": "member",
                            "image": "brook-test-consumer",
                            "command": command,
                            "env": [
                                {"name": "PYTHONPATH", "value": str(REPOSITORY)},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                        }
                    ],
                },
            },
        },
    }


def consumer_group(name: str, topic: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "ConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "cluster": BROKER,
            "groupId": name,
            "topics": [topic],
            "scaleTargetRef": {"name": name},
            "offsetReset": "earliest",
            "intervalSeconds": INTERVAL_S,
            **spec,
        },
    }


def consumed(journals: Path) -> set[str]:
    """Every record value any member journaled as processed."""
    return {
        processed.record.value
        for path in journals.glob("*.jsonl")
        for processed in MemberJournal(path).refresh().processed
        if processed.record.value is not None
    }


@dataclass
class Watch:
    """The Deployment's replica count and the ConsumerGroup's status, sampled from a thread
    of their own every 0.2 s: each change of the count, and what the status said."""

    kube: Kube
    name: str
    changes: list[tuple[float, int]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            deployment = self.kube.find(DEPLOYMENTS, self.name)
            if deployment is None:
                return  # deleted at the end of the test: nothing more to sample
            replicas = int(deployment["spec"]["replicas"])
            if not self.changes or self.changes[-1][1] != replicas:
                self.changes.append((time.monotonic(), replicas))
            group = self.kube.find(GROUPS, self.name)
            if group is not None and group.get("status"):
                self.statuses.append(group["status"])

    @property
    def replicas(self) -> int:
        return self.changes[-1][1] if self.changes else 0

    @property
    def status(self) -> dict[str, Any]:
        return self.statuses[-1] if self.statuses else {}


def start_watch(kube: Kube, name: str) -> tuple[Watch, threading.Thread]:
    watch = Watch(kube, name)
    thread = threading.Thread(target=watch.run, name=f"watch-{name}", daemon=True)
    thread.start()
    return watch, thread


@pytest.fixture
def watch_of(kube: Kube) -> Iterator[Any]:
    """``watch_of(name)`` starts a :class:`Watch`; every watch stops at the end of the test."""
    started: list[tuple[Watch, threading.Thread]] = []

    def start(name: str) -> Watch:
        started.append(start_watch(kube, name))
        return started[-1][0]

    yield start
    for watch, thread in started:
        watch.stop.set()
        thread.join(5)


# --- the must-show scenarios -----------------------------------------------------------------


@pytest.mark.slow
def test_backlog_scales_consumers_up_to_the_partitions_drains_and_scales_down(
    kube: Kube, watch_of: Any, tmp_path: Path
) -> None:
    name = topic = "backlog"
    produced, journals = topic_with_backlog(kube, topic, 6000, tmp_path)
    # 10 ms a record: one consumer needs a minute for the backlog.
    kube.apply(consumer_deployment(name, topic, journals, 10))
    kube.wait_ready_pods(f"app={name}", 1)
    watch = watch_of(name)
    # 6000 records at 500 per replica want 12 replicas: more than the maximum (10), and more
    # than the 6 partitions, which cap them.
    kube.apply(
        consumer_group(
            name,
            topic,
            minReplicas=1,
            maxReplicas=10,
            lagPerReplica=500,
            scaleUpStabilizationSeconds=0,
            scaleDownStabilizationSeconds=SCALE_DOWN_WINDOW_S,
            cooldownSeconds=4,
        )
    )
    kube.wait_for(lambda: watch.replicas > 1, 30, "a scale-up")
    kube.wait_for(
        lambda: watch.status.get("totalLag") == 0 and consumed(journals) >= produced,
        90,
        "the backlog to drain",
    )
    kube.wait_for(lambda: watch.replicas == 1, SCALE_DOWN_WINDOW_S + 30, "the scale-down to 1")

    assert consumed(journals) >= produced  # every record, at least once
    counts = [replicas for _, replicas in watch.changes]
    assert max(counts) == PARTITIONS, watch.changes
    # Up, then down: no oscillation at all...
    peak = counts.index(max(counts))
    assert counts[: peak + 1] == sorted(counts[: peak + 1]), watch.changes
    assert counts[peak:] == sorted(counts[peak:], reverse=True), watch.changes
    # ...and the first step down comes a whole scale-down window after the last step up
    # (less the sampling of this test and of the operator).
    ups = [at for (_, before), (at, after) in pairwise(watch.changes) if after > before]
    downs = [at for (_, before), (at, after) in pairwise(watch.changes) if after < before]
    assert downs[0] - ups[-1] >= SCALE_DOWN_WINDOW_S - INTERVAL_S, watch.changes
    capped = [s for s in watch.statuses if s.get("cappedByPartitions")]
    assert capped, "the cap by partitions was never reported"
    assert capped[0]["desiredReplicas"] == PARTITIONS
    assert any(
        c["type"] == "CappedByPartitions"
        and c["status"] == "True"
        and "12 replicas wanted" in c["message"]
        and "capped at the 6 partitions" in c["message"]
        for s in capped
        for c in s["conditions"]
    )
    wait_for_event(kube, "ConsumerGroup", name, "Normal", "ScaledUp", "to 6")
    wait_for_event(kube, "ConsumerGroup", name, "Normal", "ScaledDown", "to 1")
    final = kube.get(GROUPS, name)["status"]
    assert (final["replicas"], final["totalLag"], final["stuckPartitions"]) == (1, 0, [])
    assert {p["partition"]: p["lag"] for p in final["partitions"]} == dict.fromkeys(
        range(PARTITIONS), 0
    )
    kube.delete(DEPLOYMENTS, name)


@pytest.mark.slow
def test_a_stuck_partition_is_reported_and_does_not_scale_the_consumers(
    kube: Kube, watch_of: Any, tmp_path: Path
) -> None:
    name = topic = "poison"
    stuck = 2
    _, journals = topic_with_backlog(kube, topic, 1200, tmp_path)
    kube.apply(consumer_deployment(name, topic, journals, 2, "--skip-commit-partition", str(stuck)))
    kube.wait_ready_pods(f"app={name}", 1)
    watch = watch_of(name)
    # New records keep coming: the stuck partition's lag grows without end, the others'
    # stay small. Counting it, 100 records per replica would soon ask for the maximum.
    stop = threading.Event()
    producer = threading.Thread(target=lambda: trickle(topic, stop), daemon=True)
    producer.start()
    try:
        kube.apply(
            consumer_group(
                name,
                topic,
                minReplicas=1,
                maxReplicas=PARTITIONS,
                lagPerReplica=100,
                scaleUpStabilizationSeconds=15,
                scaleDownStabilizationSeconds=SCALE_DOWN_WINDOW_S,
                cooldownSeconds=4,
                stuckPartitionSeconds=6,
            )
        )
        event = wait_for_event(
            kube, "ConsumerGroup", name, "Warning", "PartitionStuck", f"{topic}-{stuck}:"
        )
        assert "does not drive scaling" in event["message"]
        reported = kube.wait_for(
            lambda: watch.status.get("stuckPartitions") and watch.status, 30, "stuck in status"
        )
        assert [(s["topic"], s["partition"]) for s in reported["stuckPartitions"]] == [
            (topic, stuck)
        ]
        # Well past the scale-up window, with the stuck partition's lag growing.
        time.sleep(25)
        status = watch.status
    finally:
        stop.set()
        producer.join(10)
    assert condition({"status": status}, "StuckPartitions")["status"] == "True"
    assert f"{topic}-{stuck}" in condition({"status": status}, "StuckPartitions")["message"]
    rows = {p["partition"]: p for p in status["partitions"]}
    assert rows[stuck]["stuck"] and rows[stuck]["committedOffset"] is None
    assert rows[stuck]["lag"] >= 100 * 4  # counted, it alone would ask for 4 replicas or more
    assert not any(row["stuck"] for partition, row in rows.items() if partition != stuck)
    assert watch.changes and {replicas for _, replicas in watch.changes} == {1}, watch.changes
    assert status["desiredReplicas"] == 1
    kube.delete(DEPLOYMENTS, name)


@pytest.mark.slow
def test_a_stateful_set_of_consumers_is_scaled_the_same_way(kube: Kube, tmp_path: Path) -> None:
    name = topic = "ledger"
    produced, journals = topic_with_backlog(kube, topic, 3000, tmp_path)
    kube.apply(consumer_deployment(name, topic, journals, 10, kind="StatefulSet"))
    kube.wait_ready_pods(f"app={name}", 1)
    target = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
    kube.apply(
        consumer_group(
            name,
            topic,
            scaleTargetRef=target,
            minReplicas=1,
            maxReplicas=3,
            lagPerReplica=500,
            scaleUpStabilizationSeconds=0,
            cooldownSeconds=4,
        )
    )
    kube.wait_for(
        lambda: kube.get(STATEFUL_SETS, name)["spec"]["replicas"] == 3,
        30,
        "the StatefulSet scaled to its maximum of 3",
    )
    pods = kube.wait_ready_pods(f"app={name}", 3)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-{i}" for i in range(3)]
    wait_for_event(kube, "ConsumerGroup", name, "Normal", "ScaledUp", "to 3")
    kube.wait_for(lambda: consumed(journals) >= produced, 90, "the backlog consumed")
    kube.delete(STATEFUL_SETS, name)


def trickle(topic: str, stop: threading.Event, per_second: int = 60) -> None:
    """Records to every partition at a steady rate until ``stop``."""
    producer = confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    number = 0
    while not stop.wait(1 / per_second):
        producer.produce(topic, f"more-{number}".encode(), partition=number % PARTITIONS)
        producer.poll(0)
        number += 1
    producer.flush(10)
